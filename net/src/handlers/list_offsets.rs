//! ListOffsets (key 2): per partition, the earliest offset (-2, also -4), the latest (-1:
//! the high watermark), the offset of the largest timestamp (-3), or the first offset
//! whose timestamp is at or after a target time (through the time index).

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use sluice_engine::checkpoint::TopicPartition;

use super::topic_name;
use crate::error::{code, KafkaError};
use crate::shard::{
    ListOffsetsPart, ListOffsetsResult, Shard, ShardRequest, ShardResponse, LEADER_EPOCH,
};

pub async fn handle(
    shard: &Rc<Shard>,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut parts = Vec::new();
    let mut layout: super::Layout = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.as_str().to_string();
        let mut partitions = Vec::new();
        for partition in &topic.partitions {
            if partition.partition_index < 0 {
                partitions.push((partition.partition_index, None));
                continue;
            }
            partitions.push((partition.partition_index, Some(parts.len())));
            parts.push(ListOffsetsPart {
                tp: TopicPartition::new(name.clone(), partition.partition_index),
                timestamp: partition.timestamp,
                current_leader_epoch: if version >= 4 {
                    partition.current_leader_epoch
                } else {
                    -1
                },
            });
        }
        layout.push((name, partitions));
    }
    let unavailable = || ListOffsetsResult {
        error: Some(KafkaError::new(code::NOT_LEADER_OR_FOLLOWER, "shard unavailable")),
        timestamp: -1,
        offset: -1,
    };
    let results = shard
        .scatter(
            parts,
            |part| &part.tp,
            ShardRequest::ListOffsets,
            |response| match response {
                ShardResponse::ListOffsets(results) => Some(results),
                _ => None,
            },
            unavailable,
        )
        .await;
    let mut response = ListOffsetsResponse::default();
    for (name, partitions) in layout {
        let mut topic = ListOffsetsTopicResponse::default();
        topic.name = topic_name(&name);
        for (index, at) in partitions {
            let result = match at {
                Some(at) => results[at].clone(),
                None => ListOffsetsResult {
                    error: Some(KafkaError::new(code::UNKNOWN_TOPIC_OR_PARTITION, "negative")),
                    timestamp: -1,
                    offset: -1,
                },
            };
            let mut answer = ListOffsetsPartitionResponse::default();
            answer.partition_index = index;
            answer.error_code = result.error.as_ref().map_or(code::NONE, |e| e.code);
            answer.timestamp = result.timestamp;
            answer.offset = result.offset;
            if version >= 4 && result.error.is_none() && result.offset >= 0 {
                answer.leader_epoch = LEADER_EPOCH;
            }
            topic.partitions.push(answer);
        }
        response.topics.push(topic);
    }
    response
}
