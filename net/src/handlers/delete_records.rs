//! DeleteRecords (key 21): per partition, moves the log start offset (the low watermark)
//! up to an offset (-1: the high watermark) on the owning shard; whole segments below it
//! are deleted at once, and fetches below it answer OFFSET_OUT_OF_RANGE.

use std::rc::Rc;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use sluice_engine::checkpoint::TopicPartition;

use super::topic_name;
use crate::error::{code, KafkaError};
use crate::shard::{Shard, ShardRequest, ShardResponse};

pub async fn handle(
    shard: &Rc<Shard>,
    request: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
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
            parts.push((
                TopicPartition::new(name.clone(), partition.partition_index),
                partition.offset,
            ));
        }
        layout.push((name, partitions));
    }
    let unavailable = || Err(KafkaError::new(code::NOT_LEADER_OR_FOLLOWER, "shard unavailable"));
    let results = shard
        .scatter(
            parts,
            |(tp, _)| tp,
            ShardRequest::DeleteRecords,
            |response| match response {
                ShardResponse::DeleteRecords(results) => Some(results),
                _ => None,
            },
            unavailable,
        )
        .await;
    let mut response = DeleteRecordsResponse::default();
    for (name, partitions) in layout {
        let mut topic = DeleteRecordsTopicResult::default();
        topic.name = topic_name(&name);
        for (index, at) in partitions {
            let result = match at {
                Some(at) => results[at].clone(),
                None => Err(KafkaError::new(code::UNKNOWN_TOPIC_OR_PARTITION, "negative")),
            };
            let mut answer = DeleteRecordsPartitionResult::default();
            answer.partition_index = index;
            match result {
                Ok(low_watermark) => answer.low_watermark = low_watermark,
                Err(error) => {
                    tracing::info!(topic = %name, partition = index, code = error.code, message = %error.message, "DeleteRecords refused");
                    answer.error_code = error.code;
                    answer.low_watermark = -1;
                }
            }
            topic.partitions.push(answer);
        }
        response.topics.push(topic);
    }
    response
}
