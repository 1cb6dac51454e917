//! AlterPartitionReassignments (key 45): start (target replicas) or cancel (null) the
//! reassignment of partitions, forwarded to the active controller. The replicas being
//! added join the ISR once they have caught up (through replication), and the old ones
//! are then removed; ListPartitionReassignments shows those in progress.

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
};
use sluice_cluster::controller::rpc::Intent;

use super::{str_bytes, RequestContext};
use crate::error::code;

pub async fn handle(
    ctx: &RequestContext,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let mut response = AlterPartitionReassignmentsResponse::default();
    response.allow_replication_factor_change = request.allow_replication_factor_change;
    let mut intents = Vec::new();
    for topic in &request.topics {
        for partition in &topic.partitions {
            intents.push(Intent::Reassign {
                topic: topic.name.0.to_string(),
                partition: partition.partition_index,
                target: partition.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect()),
            });
        }
    }
    let outcomes = match ctx.shard.controller_write(intents, false).await {
        Ok((outcomes, _)) => outcomes,
        Err(error) => {
            response.error_code = error.code;
            response.error_message = Some(str_bytes(&error.message));
            return response;
        }
    };
    let mut outcomes = outcomes.into_iter();
    for topic in request.topics {
        let mut answer = ReassignableTopicResponse::default();
        answer.name = topic.name.clone();
        for partition in topic.partitions {
            let mut result = ReassignablePartitionResponse::default();
            result.partition_index = partition.partition_index;
            match outcomes.next() {
                Some(outcome) if outcome.is_ok() => {}
                Some(outcome) => {
                    result.error_code = outcome.code;
                    result.error_message = Some(str_bytes(&outcome.message));
                }
                None => result.error_code = code::UNKNOWN_SERVER_ERROR,
            }
            answer.partitions.push(result);
        }
        response.responses.push(answer);
    }
    response
}
