//! OffsetDelete (key 47): removes committed offsets of a group, except for topics its
//! live members still subscribe to.

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use super::topic_name;
use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::error::code;
use crate::group::{GroupAnswer, GroupCall};
use sluice_engine::checkpoint::TopicPartition;

pub async fn handle(ctx: &RequestContext, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let shard = &ctx.shard;
    let group = request.group_id.to_string();
    let partitions: Vec<TopicPartition> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| TopicPartition::new(t.name.0.as_str(), p.partition_index))
        })
        .collect();
    let count = partitions.len();
    let call = GroupCall::DeleteOffsets { group: group.clone(), partitions };
    let mut response = OffsetDeleteResponse::default();
    let errors = match shard.coordinate(&group, call).await.map_err(NotServing::code) {
        Ok(GroupAnswer::DeleteOffsets(Ok(errors))) if errors.len() == count => errors,
        Ok(GroupAnswer::DeleteOffsets(Err(error))) | Err(error) => {
            response.error_code = error;
            return response;
        }
        Ok(_) => {
            response.error_code = code::UNKNOWN_SERVER_ERROR;
            return response;
        }
    };
    let mut errors = errors.into_iter();
    for topic in &request.topics {
        let mut answer = OffsetDeleteResponseTopic::default();
        answer.name = topic_name(topic.name.0.as_str());
        for partition in &topic.partitions {
            let mut result = OffsetDeleteResponsePartition::default();
            result.partition_index = partition.partition_index;
            result.error_code = errors.next().unwrap_or(code::UNKNOWN_SERVER_ERROR);
            answer.partitions.push(result);
        }
        response.topics.push(answer);
    }
    response
}
