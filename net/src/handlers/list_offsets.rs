//! ListOffsets (key 2): per partition, the earliest offset (-2, also -4), the latest (-1:
//! the high watermark), the offset of the largest timestamp (-3), or the first offset
//! whose timestamp is at or after a target time (through the time index).

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::RequestContext;
use super::{negative_partition, topic_name, Layout};
use crate::error::{code, KafkaError};
use crate::shard::{ListOffsetsPart, ListOffsetsResult, ShardRequest, ShardResponse};

pub async fn handle(ctx: &RequestContext, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let read_committed = version >= 2 && request.isolation_level == 1;
    let mut layout = Layout::new();
    for topic in &request.topics {
        layout.topic(topic.name.0.as_str());
        for partition in &topic.partitions {
            layout.partition(partition.partition_index, |tp| ListOffsetsPart {
                tp,
                timestamp: partition.timestamp,
                current_leader_epoch: if version >= 4 {
                    partition.current_leader_epoch
                } else {
                    -1
                },
                read_committed,
            });
        }
    }
    let unavailable = || {
        let error = KafkaError::new(code::NOT_LEADER_OR_FOLLOWER, "shard unavailable");
        ListOffsetsResult::failed(error)
    };
    let results = shard
        .scatter(
            layout.take_parts(),
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
    let negative = || ListOffsetsResult::failed(negative_partition());
    for (name, partitions) in layout.answers(results, negative) {
        let mut topic = ListOffsetsTopicResponse::default();
        topic.name = topic_name(&name);
        for (index, result) in partitions {
            let mut answer = ListOffsetsPartitionResponse::default();
            answer.partition_index = index;
            answer.error_code = result.error.as_ref().map_or(code::NONE, |e| e.code);
            answer.timestamp = result.timestamp;
            answer.offset = result.offset;
            if version >= 4 && result.error.is_none() && result.offset >= 0 {
                answer.leader_epoch = result.leader_epoch;
            }
            topic.partitions.push(answer);
        }
        response.topics.push(topic);
    }
    response
}
