//! One file per Kafka API, and the table they are served from. ApiVersions answers from
//! the same table, so what we advertise is exactly what a handler exists for.

pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_configs;
pub mod api_versions;
pub mod configs;
pub mod context;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_producers;
pub mod describe_transactions;
pub mod end_txn;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;
pub mod txn_offset_commit;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, TopicName};
use kafka_protocol::protocol::StrBytes;

use sluice_engine::checkpoint::TopicPartition;

use crate::error::KafkaError;
use crate::protocol::{self, decode_body, encode_response, FixedHeader, ProtocolError, Request};
use crate::zerocopy::Frame;
pub use context::RequestContext;

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
    Served { api: ApiKey::FindCoordinator, min: 0, max: 5 },
    Served { api: ApiKey::JoinGroup, min: 0, max: 9 },
    Served { api: ApiKey::SyncGroup, min: 0, max: 5 },
    Served { api: ApiKey::Heartbeat, min: 0, max: 4 },
    Served { api: ApiKey::LeaveGroup, min: 0, max: 5 },
    Served { api: ApiKey::OffsetCommit, min: 2, max: 9 },
    Served { api: ApiKey::OffsetFetch, min: 1, max: 9 },
    Served { api: ApiKey::OffsetDelete, min: 0, max: 0 },
    Served { api: ApiKey::ListGroups, min: 0, max: 5 },
    Served { api: ApiKey::DescribeGroups, min: 0, max: 6 },
    Served { api: ApiKey::DeleteGroups, min: 0, max: 2 },
    Served { api: ApiKey::InitProducerId, min: 0, max: 5 },
    Served { api: ApiKey::AddPartitionsToTxn, min: 0, max: 3 },
    Served { api: ApiKey::AddOffsetsToTxn, min: 0, max: 4 },
    Served { api: ApiKey::EndTxn, min: 0, max: 4 },
    Served { api: ApiKey::TxnOffsetCommit, min: 0, max: 4 },
    Served { api: ApiKey::DescribeProducers, min: 0, max: 0 },
    Served { api: ApiKey::DescribeTransactions, min: 0, max: 0 },
    Served { api: ApiKey::ListTransactions, min: 0, max: 0 },
];

/// The lowest Produce version ApiVersions advertises, below the v3 we serve: Kafka 4.0
/// does the same (KAFKA-18659). librdkafka before its fix of librdkafka#4956 (Debian's 2.0.2,
/// under kcat, is one) compresses with gzip, snappy or lz4 only for a broker that lists
/// Produce v0, and sends those batches uncompressed otherwise. Clients use the highest
/// version both sides speak, so none sends v0-2; one that does is refused as any version we
/// do not serve (the connection closes).
pub const PRODUCE_ADVERTISED_MIN: i16 = 0;

/// The (min, max) versions ApiVersions lists for `served`.
pub fn advertised(served: Served) -> (i16, i16) {
    match served.api {
        ApiKey::Produce => (PRODUCE_ADVERTISED_MIN, served.max),
        _ => (served.min, served.max),
    }
}

pub fn served(api: ApiKey) -> Option<Served> {
    SERVED.iter().copied().find(|s| s.api == api)
}

/// Decodes the request body, runs its handler, encodes the response frame. `Ok(None)`
/// when the request gets no response (Produce with acks=0).
pub async fn handle(ctx: &RequestContext, body: Bytes) -> Result<Option<Frame>, ProtocolError> {
    let api = ctx.api;
    let version = ctx.version;
    let correlation_id = ctx.correlation_id;
    macro_rules! serve {
        ($module:ident) => {{
            let decoded = decode_body(api, version, &body)?;
            let response = $module::handle(ctx, decoded).await;
            encode_response(api, version, correlation_id, &response).map(|b| Some(b.into()))
        }};
    }
    match api {
        ApiKey::ApiVersions => serve!(api_versions),
        ApiKey::Metadata => serve!(metadata),
        ApiKey::Fetch => {
            let decoded = decode_body(api, version, &body)?;
            let answer = fetch::handle(ctx, decoded).await;
            Ok(Some(fetch::encode(version, correlation_id, answer)))
        }
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
        ApiKey::FindCoordinator => serve!(find_coordinator),
        ApiKey::JoinGroup => serve!(join_group),
        ApiKey::SyncGroup => serve!(sync_group),
        ApiKey::Heartbeat => serve!(heartbeat),
        ApiKey::LeaveGroup => serve!(leave_group),
        ApiKey::OffsetCommit => serve!(offset_commit),
        ApiKey::OffsetFetch => serve!(offset_fetch),
        ApiKey::OffsetDelete => serve!(offset_delete),
        ApiKey::ListGroups => serve!(list_groups),
        ApiKey::DescribeGroups => serve!(describe_groups),
        ApiKey::DeleteGroups => serve!(delete_groups),
        ApiKey::InitProducerId => serve!(init_producer_id),
        ApiKey::AddPartitionsToTxn => serve!(add_partitions_to_txn),
        ApiKey::AddOffsetsToTxn => serve!(add_offsets_to_txn),
        ApiKey::EndTxn => serve!(end_txn),
        ApiKey::TxnOffsetCommit => serve!(txn_offset_commit),
        ApiKey::DescribeProducers => serve!(describe_producers),
        ApiKey::DescribeTransactions => serve!(describe_transactions),
        ApiKey::ListTransactions => serve!(list_transactions),
        ApiKey::Produce => {
            // The context keeps nothing of the frame (its header was consumed when the
            // context was made), so once decoded the body alone refers to it and the
            // record bytes can be taken over in place.
            let decoded = decode_body(api, version, &body)?;
            match produce::handle(ctx, decoded, body).await {
                Some(response) => {
                    encode_response(api, version, correlation_id, &response).map(|b| Some(b.into()))
                }
                None => Ok(None),
            }
        }
        _ => Err(ProtocolError::UnknownApiKey { api_key: api as i16 }),
    }
}

/// A partitioned request flattened for `Shard::scatter`: the parts to run, and the
/// request's topics and partitions in order, so the response is rebuilt in request order.
/// A negative partition index, which no shard can own, gets no part.
pub(crate) struct Layout<P> {
    parts: Vec<P>,
    topics: Vec<(String, Vec<PartitionSlot>)>,
}

/// A partition of a request: its index and the position of its part, if it has one.
type PartitionSlot = (i32, Option<usize>);

impl<P> Layout<P> {
    pub(crate) fn new() -> Self {
        Self { parts: Vec::new(), topics: Vec::new() }
    }

    /// Starts the next topic of the request.
    pub(crate) fn topic(&mut self, name: &str) {
        self.topics.push((name.to_string(), Vec::new()));
    }

    /// Adds a partition of the current topic; `make` builds its part.
    pub(crate) fn partition(&mut self, index: i32, make: impl FnOnce(TopicPartition) -> P) {
        let (name, partitions) = self.topics.last_mut().expect("topic() before partition()");
        if index < 0 {
            partitions.push((index, None));
            return;
        }
        partitions.push((index, Some(self.parts.len())));
        self.parts.push(make(TopicPartition::new(name.clone(), index)));
    }

    /// The parts, in request order, for `Shard::scatter`.
    pub(crate) fn take_parts(&mut self) -> Vec<P> {
        std::mem::take(&mut self.parts)
    }

    /// Pairs the scattered results (one per part, in order) back with the request's
    /// topics and partitions; a partition without a part gets `negative()`.
    pub(crate) fn answers<R>(
        self,
        results: Vec<R>,
        negative: impl Fn() -> R,
    ) -> Vec<(String, Vec<(i32, R)>)> {
        let mut results: Vec<Option<R>> = results.into_iter().map(Some).collect();
        self.topics
            .into_iter()
            .map(|(name, partitions)| {
                let answers = partitions
                    .into_iter()
                    .map(|(index, at)| {
                        let result = at.and_then(|at| results.get_mut(at).and_then(Option::take));
                        (index, result.unwrap_or_else(&negative))
                    })
                    .collect();
                (name, answers)
            })
            .collect()
    }
}

/// The keys that appear more than once (Kafka refuses every entry of a resource or topic
/// named twice in one request).
pub(crate) fn named_twice<K: Eq + std::hash::Hash + Clone>(
    keys: impl IntoIterator<Item = K>,
) -> std::collections::HashSet<K> {
    let mut seen = std::collections::HashSet::new();
    keys.into_iter().filter(|key| !seen.insert(key.clone())).collect()
}

/// The error for a partition index no shard owns.
pub(crate) fn negative_partition() -> KafkaError {
    KafkaError::new(crate::error::code::UNKNOWN_TOPIC_OR_PARTITION, "negative partition index")
}

/// A request frame checked against what we serve.
#[derive(Debug)]
pub enum Parsed {
    Request(Request),
    /// ApiVersions at a version we do not serve: answered in v0 with UNSUPPORTED_VERSION.
    ApiVersionsFallback {
        correlation_id: i32,
    },
}

/// Checks a request frame (the bytes after the size prefix): a known API we serve, at a
/// version we serve, with a header that decodes. Sans-I/O.
pub fn parse(frame: Bytes) -> Result<Parsed, ProtocolError> {
    let fixed = FixedHeader::peek(&frame)
        .ok_or(ProtocolError::FrameTooShort { size: frame.len() as i64 })?;
    let api = ApiKey::try_from(fixed.api_key)
        .map_err(|_| ProtocolError::UnknownApiKey { api_key: fixed.api_key })?;
    let served = served(api).ok_or(ProtocolError::UnknownApiKey { api_key: fixed.api_key })?;
    if fixed.api_version < served.min || fixed.api_version > served.max {
        if api == ApiKey::ApiVersions {
            return Ok(Parsed::ApiVersionsFallback { correlation_id: fixed.correlation_id });
        }
        return Err(ProtocolError::UnsupportedVersion {
            api,
            version: fixed.api_version,
            min: served.min,
            max: served.max,
        });
    }
    protocol::decode_header(api, fixed.api_version, frame).map(Parsed::Request)
}

/// Parses a frame and decodes its body into the request type of its API, without running
/// it: the whole untrusted-input surface of the server, for the fuzz target and tests.
pub fn decode_request(frame: Bytes) -> Result<ApiKey, ProtocolError> {
    use kafka_protocol::messages as m;
    let request = match parse(frame)? {
        Parsed::Request(request) => request,
        Parsed::ApiVersionsFallback { .. } => return Ok(ApiKey::ApiVersions),
    };
    let api = request.api;
    let version = request.header.request_api_version;
    let body = &request.body;
    macro_rules! decode {
        ($type:ty) => {
            decode_body::<$type>(api, version, body).map(|_| api)
        };
    }
    match api {
        ApiKey::Produce => decode!(m::ProduceRequest),
        ApiKey::Fetch => decode!(m::FetchRequest),
        ApiKey::ListOffsets => decode!(m::ListOffsetsRequest),
        ApiKey::Metadata => decode!(m::MetadataRequest),
        ApiKey::ApiVersions => decode!(m::ApiVersionsRequest),
        ApiKey::CreateTopics => decode!(m::CreateTopicsRequest),
        ApiKey::DeleteTopics => decode!(m::DeleteTopicsRequest),
        ApiKey::DeleteRecords => decode!(m::DeleteRecordsRequest),
        ApiKey::OffsetForLeaderEpoch => decode!(m::OffsetForLeaderEpochRequest),
        ApiKey::DescribeConfigs => decode!(m::DescribeConfigsRequest),
        ApiKey::AlterConfigs => decode!(m::AlterConfigsRequest),
        ApiKey::CreatePartitions => decode!(m::CreatePartitionsRequest),
        ApiKey::IncrementalAlterConfigs => decode!(m::IncrementalAlterConfigsRequest),
        ApiKey::DescribeCluster => decode!(m::DescribeClusterRequest),
        ApiKey::FindCoordinator => decode!(m::FindCoordinatorRequest),
        ApiKey::JoinGroup => decode!(m::JoinGroupRequest),
        ApiKey::SyncGroup => decode!(m::SyncGroupRequest),
        ApiKey::Heartbeat => decode!(m::HeartbeatRequest),
        ApiKey::LeaveGroup => decode!(m::LeaveGroupRequest),
        ApiKey::OffsetCommit => decode!(m::OffsetCommitRequest),
        ApiKey::OffsetFetch => decode!(m::OffsetFetchRequest),
        ApiKey::OffsetDelete => decode!(m::OffsetDeleteRequest),
        ApiKey::ListGroups => decode!(m::ListGroupsRequest),
        ApiKey::DescribeGroups => decode!(m::DescribeGroupsRequest),
        ApiKey::DeleteGroups => decode!(m::DeleteGroupsRequest),
        ApiKey::InitProducerId => decode!(m::InitProducerIdRequest),
        ApiKey::AddPartitionsToTxn => decode!(m::AddPartitionsToTxnRequest),
        ApiKey::AddOffsetsToTxn => decode!(m::AddOffsetsToTxnRequest),
        ApiKey::EndTxn => decode!(m::EndTxnRequest),
        ApiKey::TxnOffsetCommit => decode!(m::TxnOffsetCommitRequest),
        ApiKey::DescribeProducers => decode!(m::DescribeProducersRequest),
        ApiKey::DescribeTransactions => decode!(m::DescribeTransactionsRequest),
        ApiKey::ListTransactions => decode!(m::ListTransactionsRequest),
        _ => Err(ProtocolError::UnknownApiKey { api_key: api as i16 }),
    }
}

pub(crate) fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

pub(crate) fn topic_name(text: &str) -> TopicName {
    TopicName(str_bytes(text))
}

pub(crate) fn uuid(bytes: [u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_served_api_has_a_decoder_and_a_handler() {
        use kafka_protocol::protocol::Encodable;
        // An empty ApiVersions body at each version decodes; every served API key is
        // known to decode_request (an unknown one would come back as UnknownApiKey).
        for served in SERVED {
            let mut frame = Vec::new();
            frame.extend_from_slice(&(served.api as i16).to_be_bytes());
            frame.extend_from_slice(&served.max.to_be_bytes());
            frame.extend_from_slice(&7i32.to_be_bytes());
            let result = decode_request(Bytes::from(frame));
            assert!(
                !matches!(result, Err(ProtocolError::UnknownApiKey { .. })),
                "{:?}",
                served.api
            );
        }
        let mut body = bytes::BytesMut::new();
        kafka_protocol::messages::ApiVersionsRequest::default().encode(&mut body, 0).unwrap();
        let mut frame = vec![0, 18, 0, 0, 0, 0, 0, 9, 0xff, 0xff];
        frame.extend_from_slice(&body);
        assert_eq!(decode_request(Bytes::from(frame)).unwrap(), ApiKey::ApiVersions);
    }

    #[test]
    fn layout_puts_results_back_in_request_order() {
        let mut layout = Layout::new();
        layout.topic("a");
        layout.partition(1, |tp| tp);
        layout.partition(-1, |tp| tp);
        layout.topic("b");
        layout.partition(0, |tp| tp);
        let parts = layout.take_parts();
        assert_eq!(parts, vec![TopicPartition::new("a", 1), TopicPartition::new("b", 0)]);
        let answers = layout.answers(vec!["a1", "b0"], || "negative");
        assert_eq!(
            answers,
            vec![
                ("a".to_string(), vec![(1, "a1"), (-1, "negative")]),
                ("b".to_string(), vec![(0, "b0")]),
            ]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// The server's decoding never panics (nor aborts on a huge length) on any bytes
        /// behind a served API key and version.
        #[test]
        fn decoding_arbitrary_bodies_never_panics(
            api in prop::sample::select(SERVED.to_vec()),
            version_offset in 0i16..20,
            body in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let version = api.min + version_offset % (api.max - api.min + 1);
            let mut frame = Vec::new();
            frame.extend_from_slice(&(api.api as i16).to_be_bytes());
            frame.extend_from_slice(&version.to_be_bytes());
            frame.extend_from_slice(&1i32.to_be_bytes());
            frame.extend_from_slice(&body);
            let _ = decode_request(Bytes::from(frame));
        }
    }
}
