//! One file per Kafka API, and the table they are served from. ApiVersions answers from
//! the same table, so what we advertise is exactly what a handler exists for.

pub mod alter_configs;
pub mod api_versions;
pub mod configs;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod fetch;
pub mod incremental_alter_configs;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::protocol::{decode_body, encode_response, ProtocolError, Request};
use crate::shard::Shard;

/// An API we serve and the versions of it we serve.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub api: ApiKey,
    pub min: i16,
    pub max: i16,
}

/// Every API we serve. Versions end where a newer one needs something we do not have yet
/// (Produce v13 and Fetch v13+ address topics by id only).
pub const SERVED: &[Served] = &[
    Served { api: ApiKey::Produce, min: 3, max: 12 },
    Served { api: ApiKey::Fetch, min: 4, max: 12 },
    Served { api: ApiKey::ListOffsets, min: 1, max: 10 },
    Served { api: ApiKey::Metadata, min: 0, max: 12 },
    Served { api: ApiKey::ApiVersions, min: 0, max: 4 },
    Served { api: ApiKey::CreateTopics, min: 2, max: 7 },
    Served { api: ApiKey::DeleteTopics, min: 1, max: 6 },
    Served { api: ApiKey::DeleteRecords, min: 0, max: 2 },
    Served { api: ApiKey::OffsetForLeaderEpoch, min: 2, max: 4 },
    Served { api: ApiKey::DescribeConfigs, min: 1, max: 4 },
    Served { api: ApiKey::AlterConfigs, min: 0, max: 2 },
    Served { api: ApiKey::CreatePartitions, min: 0, max: 3 },
    Served { api: ApiKey::IncrementalAlterConfigs, min: 0, max: 1 },
    Served { api: ApiKey::DescribeCluster, min: 0, max: 2 },
];

pub fn served(api: ApiKey) -> Option<Served> {
    SERVED.iter().copied().find(|s| s.api == api)
}

/// Decodes the request body, runs its handler, encodes the response frame. `Ok(None)`
/// when the request gets no response (Produce with acks=0).
pub async fn handle(shard: &Rc<Shard>, request: Request) -> Result<Option<Bytes>, ProtocolError> {
    let api = request.api;
    let version = request.header.request_api_version;
    let correlation_id = request.header.correlation_id;
    let body = &request.body;
    macro_rules! serve {
        ($module:ident) => {{
            let decoded = decode_body(api, version, body)?;
            let response = $module::handle(shard, decoded, version).await;
            encode_response(api, version, correlation_id, &response).map(Some)
        }};
    }
    match api {
        ApiKey::ApiVersions => serve!(api_versions),
        ApiKey::Metadata => serve!(metadata),
        ApiKey::Fetch => serve!(fetch),
        ApiKey::ListOffsets => serve!(list_offsets),
        ApiKey::CreateTopics => serve!(create_topics),
        ApiKey::DeleteTopics => serve!(delete_topics),
        ApiKey::DeleteRecords => serve!(delete_records),
        ApiKey::OffsetForLeaderEpoch => serve!(offset_for_leader_epoch),
        ApiKey::DescribeConfigs => serve!(describe_configs),
        ApiKey::AlterConfigs => serve!(alter_configs),
        ApiKey::CreatePartitions => serve!(create_partitions),
        ApiKey::IncrementalAlterConfigs => serve!(incremental_alter_configs),
        ApiKey::DescribeCluster => serve!(describe_cluster),
        ApiKey::Produce => {
            let decoded = decode_body(api, version, body)?;
            match produce::handle(shard, decoded, version).await {
                Some(response) => {
                    encode_response(api, version, correlation_id, &response).map(Some)
                }
                None => Ok(None),
            }
        }
        _ => Err(ProtocolError::UnknownApiKey { api_key: api as i16 }),
    }
}

/// A request's topics in order, each with its partitions in order and, per partition, the
/// index of its result in the scattered results (`None` for a partition no shard can own,
/// such as a negative index). Responses are rebuilt from it in request order.
pub(crate) type Layout = Vec<(String, Vec<(i32, Option<usize>)>)>;

pub(crate) fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

pub(crate) fn topic_name(text: &str) -> TopicName {
    TopicName(str_bytes(text))
}

pub(crate) fn uuid(bytes: [u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(bytes)
}
