//! DescribeCluster (key 60): the cluster id, the controller and the registered brokers.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::str_bytes;
use super::RequestContext;
use crate::error::code;

/// Kafka's `EndpointType` ids (v1+).
pub const ENDPOINT_BROKER: i8 = 1;
pub const ENDPOINT_CONTROLLER: i8 = 2;

/// Kafka's answer for "not asked" in `cluster_authorized_operations`.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// Without an authorizer Kafka reports every operation the cluster resource supports, as
/// a bit field of `AclOperation` codes: CREATE 5, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9,
/// DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12.
const CLUSTER_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

pub async fn handle(
    ctx: &RequestContext,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let shard = &ctx.shard;
    let config = &shard.config;
    let mut response = DescribeClusterResponse::default();
    // v0 has no endpoint type on the wire; the decoder leaves the default, broker.
    match request.endpoint_type {
        ENDPOINT_BROKER => {}
        ENDPOINT_CONTROLLER => {
            // Kafka's broker answers so (AuthHelper.computeDescribeClusterResponse): the
            // controller endpoint is a different listener, which we do not have.
            response.error_code = code::MISMATCHED_ENDPOINT_TYPE;
            response.error_message = Some(str_bytes(
                "the request was sent to a broker endpoint, but asks for controllers",
            ));
            return response;
        }
        other => {
            response.error_code = code::UNSUPPORTED_ENDPOINT_TYPE;
            response.error_message = Some(str_bytes(&format!("unsupported endpoint type {other}")));
            return response;
        }
    }
    // Fenced brokers only when asked for (v2+), as Kafka's MetadataCache answers.
    response.brokers = super::cluster_brokers(shard)
        .into_iter()
        .filter(|b| request.include_fenced_brokers || !b.fenced || b.id == config.node_id)
        .map(|b| {
            let mut broker = DescribeClusterBroker::default();
            broker.broker_id = BrokerId(b.id);
            broker.host = str_bytes(&b.host);
            broker.port = b.port;
            broker.rack = b.rack.as_deref().map(str_bytes);
            broker.is_fenced = b.fenced && b.id != config.node_id;
            broker
        })
        .collect();
    response.cluster_id = str_bytes(&config.cluster_id);
    response.controller_id = BrokerId(config.node_id);
    response.endpoint_type = ENDPOINT_BROKER;
    response.cluster_authorized_operations = if request.include_cluster_authorized_operations {
        CLUSTER_OPERATIONS
    } else {
        AUTHORIZED_OPERATIONS_OMITTED
    };
    response
}
