//! Produce (key 0): record batches (v2) appended as received, apart from the base offset
//! (and with `message.timestamp.type=LogAppendTime`, the timestamp) the broker assigns.
//! Partitions are appended on the shards that own them; acks=0 gets no response; with one
//! replica, acks=1 and acks=all are both answered once the append is done (the high
//! watermark is the log end offset), and acks=all fails with NOT_ENOUGH_REPLICAS when
//! the topic's `min.insync.replicas` asks for more replicas than exist.

use std::rc::Rc;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::{negative_partition, str_bytes, topic_name, Layout};
use crate::error::{code, KafkaError};
use crate::shard::{ProducePart, ProduceResult, Shard, ShardRequest, ShardResponse};

pub async fn handle(
    shard: &Rc<Shard>,
    request: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    let mut layout = Layout::new();
    for topic in request.topic_data {
        layout.topic(topic.name.0.as_str());
        for data in topic.partition_data {
            layout.partition(data.index, |tp| ProducePart { tp, records: data.records });
        }
    }
    let parts = layout.take_parts();
    let results: Vec<ProduceResult> = if !matches!(acks, -1..=1) {
        let error = KafkaError::new(code::INVALID_REQUIRED_ACKS, format!("acks={acks}"));
        parts.iter().map(|_| ProduceResult::failed(error.clone())).collect()
    } else {
        shard
            .scatter(
                parts,
                |part| &part.tp,
                |parts| ShardRequest::Produce { acks, parts },
                |response| match response {
                    ShardResponse::Produce(results) => Some(results),
                    _ => None,
                },
                || {
                    let error = KafkaError::new(code::NOT_LEADER_OR_FOLLOWER, "shard unavailable");
                    ProduceResult::failed(error)
                },
            )
            .await
    };
    if acks == 0 {
        return None;
    }
    let mut response = ProduceResponse::default();
    for (name, partitions) in
        layout.answers(results, || ProduceResult::failed(negative_partition()))
    {
        let mut topic = TopicProduceResponse::default();
        topic.name = topic_name(&name);
        for (index, result) in partitions {
            let mut answer = PartitionProduceResponse::default();
            answer.index = index;
            answer.base_offset = result.base_offset;
            // Fields a version does not have must keep their defaults to encode.
            if version >= 2 {
                answer.log_append_time_ms = result.log_append_time_ms;
            }
            if version >= 5 {
                answer.log_start_offset = result.log_start_offset;
            }
            if let Some(error) = result.error {
                answer.error_code = error.code;
                if version >= 8 {
                    answer.error_message = Some(str_bytes(&error.message));
                }
            }
            topic.partition_responses.push(answer);
        }
        response.responses.push(topic);
    }
    Some(response)
}
