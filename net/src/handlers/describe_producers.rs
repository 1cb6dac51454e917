//! DescribeProducers (key 61): per partition, the producers the partition knows (id,
//! epoch, last sequence, last timestamp, coordinator epoch, and the first offset of the
//! open transaction), from its producer state.

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};

use super::RequestContext;
use super::{negative_partition, str_bytes, topic_name, Layout};
use crate::error::{code, KafkaError};
use crate::shard::{ShardRequest, ShardResponse};

pub async fn handle(
    ctx: &RequestContext,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let shard = &ctx.shard;
    let mut layout = Layout::new();
    for topic in &request.topics {
        layout.topic(topic.name.0.as_str());
        for &partition in &topic.partition_indexes {
            layout.partition(partition, |tp| tp);
        }
    }
    let results = shard
        .scatter(
            layout.take_parts(),
            |tp| tp,
            ShardRequest::DescribeProducers,
            |response| match response {
                ShardResponse::Producers(results) => Some(results),
                _ => None,
            },
            || Err(KafkaError::new(code::NOT_LEADER_OR_FOLLOWER, "shard unavailable")),
        )
        .await;
    let mut response = DescribeProducersResponse::default();
    for (name, partitions) in layout.answers(results, || Err(negative_partition())) {
        let mut topic = TopicResponse::default();
        topic.name = topic_name(&name);
        for (index, result) in partitions {
            let mut answer = PartitionResponse::default();
            answer.partition_index = index;
            match result {
                Ok(views) => {
                    for view in views {
                        let mut state = ProducerState::default();
                        state.producer_id = ProducerId(view.producer_id);
                        state.producer_epoch = i32::from(view.epoch);
                        state.last_sequence = view.last_sequence;
                        state.last_timestamp = view.last_timestamp;
                        state.coordinator_epoch = view.coordinator_epoch;
                        state.current_txn_start_offset = view.current_txn_start_offset;
                        answer.active_producers.push(state);
                    }
                }
                Err(error) => {
                    answer.error_code = error.code;
                    answer.error_message = Some(str_bytes(&error.message));
                }
            }
            topic.partitions.push(answer);
        }
        response.topics.push(topic);
    }
    response
}
