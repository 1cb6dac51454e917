//! OffsetForLeaderEpoch (key 23): per partition, the end offset of a leader epoch, which a
//! consumer uses after a leader change to detect log truncation. The owning shard
//! answers; `replica_id` (v3+, for followers) is ignored while we have no followers.

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::RequestContext;
use super::{negative_partition, topic_name, Layout};
use crate::error::{code, KafkaError};
use crate::shard::{EpochPart, ShardRequest, ShardResponse};

pub async fn handle(
    ctx: &RequestContext,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let shard = &ctx.shard;
    let mut layout = Layout::new();
    for topic in &request.topics {
        layout.topic(topic.topic.0.as_str());
        for partition in &topic.partitions {
            layout.partition(partition.partition, |tp| EpochPart {
                tp,
                current_leader_epoch: partition.current_leader_epoch,
                leader_epoch: partition.leader_epoch,
            });
        }
    }
    let unavailable = || Err(KafkaError::new(code::NOT_LEADER_OR_FOLLOWER, "shard unavailable"));
    let results = shard
        .scatter(
            layout.take_parts(),
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
    for (name, partitions) in layout.answers(results, || Err(negative_partition())) {
        let mut topic = OffsetForLeaderTopicResult::default();
        topic.topic = topic_name(&name);
        for (index, result) in partitions {
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
