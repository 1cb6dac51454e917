//! OffsetCommit (key 8): stores a group's consumed positions as records in its
//! `__consumer_offsets` partition, with the member's generation checked (or none, for a
//! consumer outside group management).

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use super::topic_name;
use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::error::code;
use crate::group::{CommitArgs, CommitPart, GroupAnswer, GroupCall};
use sluice_engine::checkpoint::TopicPartition;

pub async fn handle(ctx: &RequestContext, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let group = request.group_id.to_string();
    let mut partitions = Vec::new();
    for topic in &request.topics {
        for partition in &topic.partitions {
            partitions.push(CommitPart {
                tp: TopicPartition::new(topic.name.0.as_str(), partition.partition_index),
                offset: partition.committed_offset,
                leader_epoch: if version >= 6 { partition.committed_leader_epoch } else { -1 },
                metadata: partition.committed_metadata.as_ref().map(|m| m.to_string()),
            });
        }
    }
    let count = partitions.len();
    let args = CommitArgs {
        group: group.clone(),
        generation: request.generation_id_or_member_epoch,
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        partitions,
        txn: None,
    };
    let errors =
        match shard.coordinate(&group, GroupCall::Commit(args)).await.map_err(NotServing::code) {
            Ok(GroupAnswer::Commit(errors)) if errors.len() == count => errors,
            Ok(_) => vec![code::UNKNOWN_SERVER_ERROR; count],
            Err(error) => vec![error; count],
        };
    let mut errors = errors.into_iter();
    let mut response = OffsetCommitResponse::default();
    for topic in &request.topics {
        let mut answer = OffsetCommitResponseTopic::default();
        answer.name = topic_name(topic.name.0.as_str());
        for partition in &topic.partitions {
            let mut result = OffsetCommitResponsePartition::default();
            result.partition_index = partition.partition_index;
            result.error_code = errors.next().unwrap_or(code::UNKNOWN_SERVER_ERROR);
            answer.partitions.push(result);
        }
        response.topics.push(answer);
    }
    response
}
