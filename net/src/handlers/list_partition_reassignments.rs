//! ListPartitionReassignments (key 46): the partitions being reassigned, with their
//! replicas and the replicas being added and removed, as the active controller knows
//! them; all of them for a null topic list.

use std::collections::BTreeMap;

use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};
use sluice_cluster::controller::rpc::{ControllerRequest, ControllerResponse};

use super::{str_bytes, topic_name, RequestContext};
use crate::error::code;

pub async fn handle(
    ctx: &RequestContext,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let mut response = ListPartitionReassignmentsResponse::default();
    let partitions = match ctx.shard.controller_call(ControllerRequest::ListReassignments).await {
        Ok(ControllerResponse::Reassignments { partitions }) => partitions,
        Ok(other) => {
            response.error_code = code::UNKNOWN_SERVER_ERROR;
            response.error_message = Some(str_bytes(&format!("unexpected answer {other:?}")));
            return response;
        }
        Err(error) => {
            response.error_code = error.code;
            response.error_message = Some(str_bytes(&error.message));
            return response;
        }
    };
    let wanted = |topic: &str, partition: i32| match &request.topics {
        None => true,
        Some(topics) => topics
            .iter()
            .any(|t| t.name.0.as_str() == topic && t.partition_indexes.contains(&partition)),
    };
    let ids = |brokers: &[i32]| brokers.iter().copied().map(BrokerId).collect::<Vec<_>>();
    let mut by_topic: BTreeMap<String, Vec<OngoingPartitionReassignment>> = BTreeMap::new();
    for p in partitions.into_iter().filter(|p| wanted(&p.topic, p.partition)) {
        let mut ongoing = OngoingPartitionReassignment::default();
        ongoing.partition_index = p.partition;
        ongoing.replicas = ids(&p.replicas);
        ongoing.adding_replicas = ids(&p.adding);
        ongoing.removing_replicas = ids(&p.removing);
        by_topic.entry(p.topic).or_default().push(ongoing);
    }
    response.topics = by_topic
        .into_iter()
        .map(|(name, partitions)| {
            let mut topic = OngoingTopicReassignment::default();
            topic.name = topic_name(&name);
            topic.partitions = partitions;
            topic
        })
        .collect();
    response
}
