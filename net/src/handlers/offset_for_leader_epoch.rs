//! OffsetForLeaderEpoch (key 23): per partition, the end offset of a leader epoch, which a
//! consumer uses after a leader change to detect log truncation. The owning shard
//! answers; `replica_id` (v3+, for followers) is ignored while we have no followers.

use std::rc::Rc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use sluice_engine::checkpoint::TopicPartition;

use super::topic_name;
use crate::error::{code, KafkaError};
use crate::shard::{EpochPart, Shard, ShardRequest, ShardResponse};

pub async fn handle(
    shard: &Rc<Shard>,
    request: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let mut parts = Vec::new();
    let mut layout: super::Layout = Vec::new();
    for topic in &request.topics {
        let name = topic.topic.0.as_str().to_string();
        let mut partitions = Vec::new();
        for partition in &topic.partitions {
            if partition.partition < 0 {
                partitions.push((partition.partition, None));
                continue;
            }
            partitions.push((partition.partition, Some(parts.len())));
            parts.push(EpochPart {
                tp: TopicPartition::new(name.clone(), partition.partition),
                current_leader_epoch: partition.current_leader_epoch,
                leader_epoch: partition.leader_epoch,
            });
        }
        layout.push((name, partitions));
    }
    let unavailable = || Err(KafkaError::new(code::NOT_LEADER_OR_FOLLOWER, "shard unavailable"));
    let results = shard
        .scatter(
            parts,
            |part| &part.tp,
            ShardRequest::OffsetForLeaderEpoch,
            |response| match response {
                ShardResponse::OffsetForLeaderEpoch(results) => Some(results),
                _ => None,
            },
            unavailable,
        )
        .await;
    let mut response = OffsetForLeaderEpochResponse::default();
    for (name, partitions) in layout {
        let mut topic = OffsetForLeaderTopicResult::default();
        topic.topic = topic_name(&name);
        for (index, at) in partitions {
            let result = match at {
                Some(at) => results[at].clone(),
                None => Err(KafkaError::new(code::UNKNOWN_TOPIC_OR_PARTITION, "negative")),
            };
            let mut answer = EpochEndOffset::default();
            answer.partition = index;
            match result {
                Ok((leader_epoch, end_offset)) => {
                    answer.leader_epoch = leader_epoch;
                    answer.end_offset = end_offset;
                }
                Err(error) => {
                    answer.error_code = error.code;
                    answer.leader_epoch = -1;
                    answer.end_offset = -1;
                }
            }
            topic.partitions.push(answer);
        }
        response.topics.push(topic);
    }
    response
}
