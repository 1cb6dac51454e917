//! DeleteRecords (key 21): per partition, moves the log start offset (the low watermark)
//! up to an offset (-1: the high watermark) on the owning shard; whole segments below it
//! are deleted at once, and fetches below it answer OFFSET_OUT_OF_RANGE.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use super::RequestContext;
use super::{negative_partition, topic_name, Layout};
use crate::error::{code, KafkaError};
use crate::shard::{ShardRequest, ShardResponse};

pub async fn handle(ctx: &RequestContext, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let shard = &ctx.shard;
    let mut layout = Layout::new();
    for topic in &request.topics {
        layout.topic(topic.name.0.as_str());
        for partition in &topic.partitions {
            layout.partition(partition.partition_index, |tp| (tp, partition.offset));
        }
    }
    let unavailable = || Err(KafkaError::new(code::NOT_LEADER_OR_FOLLOWER, "shard unavailable"));
    let results = shard
        .scatter(
            layout.take_parts(),
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
    for (name, partitions) in layout.answers(results, || Err(negative_partition())) {
        let mut topic = DeleteRecordsTopicResult::default();
        topic.name = topic_name(&name);
        for (index, result) in partitions {
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
