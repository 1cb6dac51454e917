//! TxnOffsetCommit (key 28): offsets committed inside a transaction. The group's
//! coordinator writes them to `__consumer_offsets` as part of the producer's transaction;
//! they take effect when the transaction's commit marker reaches that partition, and are
//! dropped on abort.

use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::error::code;
use crate::group::{CommitArgs, CommitPart, GroupAnswer, GroupCall};
use sluice_engine::checkpoint::TopicPartition;

pub async fn handle(
    ctx: &RequestContext,
    request: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let group = request.group_id.0.to_string();
    let mut partitions = Vec::new();
    for topic in &request.topics {
        for partition in &topic.partitions {
            partitions.push(CommitPart {
                tp: TopicPartition::new(topic.name.0.as_str(), partition.partition_index),
                offset: partition.committed_offset,
                leader_epoch: if version >= 2 { partition.committed_leader_epoch } else { -1 },
                metadata: partition.committed_metadata.as_ref().map(|m| m.to_string()),
            });
        }
    }
    let count = partitions.len();
    let layout: Vec<TopicPartition> = partitions.iter().map(|p| p.tp.clone()).collect();
    let args = CommitArgs {
        group: group.clone(),
        generation: if version >= 3 { request.generation_id } else { -1 },
        member_id: if version >= 3 { request.member_id.to_string() } else { String::new() },
        instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        partitions,
        txn: Some((request.producer_id.0, request.producer_epoch)),
    };
    let errors =
        match shard.coordinate(&group, GroupCall::Commit(args)).await.map_err(NotServing::code) {
            Ok(GroupAnswer::Commit(errors)) if errors.len() == count => errors,
            Ok(_) => vec![code::UNKNOWN_SERVER_ERROR; count],
            Err(error) => vec![error; count],
        };
    let mut response = TxnOffsetCommitResponse::default();
    for (tp, error) in layout.into_iter().zip(errors) {
        let mut partition = TxnOffsetCommitResponsePartition::default();
        partition.partition_index = tp.partition;
        partition.error_code = error;
        match response.topics.last_mut() {
            Some(topic) if topic.name.0.as_str() == tp.topic => topic.partitions.push(partition),
            _ => {
                let mut topic = TxnOffsetCommitResponseTopic::default();
                topic.name = super::topic_name(&tp.topic);
                topic.partitions.push(partition);
                response.topics.push(topic);
            }
        }
    }
    response
}
