//! WriteTxnMarkers (key 27): a transaction coordinator on another broker asks this one,
//! the leader of some of a transaction's partitions, to write the commit or abort markers
//! there (Kafka's inter-broker API). Each partition is answered with its own error code;
//! a partition this broker does not lead is NOT_LEADER_OR_FOLLOWER, and the coordinator
//! retries after its metadata moved.

use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use sluice_engine::checkpoint::TopicPartition;

use super::RequestContext;
use crate::error::code;

pub async fn handle(
    ctx: &RequestContext,
    request: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let shard = &ctx.shard;
    let mut response = WriteTxnMarkersResponse::default();
    for marker in request.markers {
        let partitions: Vec<TopicPartition> = marker
            .topics
            .iter()
            .flat_map(|topic| {
                topic
                    .partition_indexes
                    .iter()
                    .map(|&index| TopicPartition::new(topic.name.0.as_str(), index))
            })
            .collect();
        let results = shard
            .write_local_markers(
                marker.producer_id.0,
                marker.producer_epoch,
                marker.transaction_result,
                &partitions,
            )
            .await;
        let mut answer = WritableTxnMarkerResult::default();
        answer.producer_id = marker.producer_id;
        let mut results = results.into_iter();
        for topic in marker.topics {
            let mut topic_answer = WritableTxnMarkerTopicResult::default();
            for index in topic.partition_indexes {
                let mut partition = WritableTxnMarkerPartitionResult::default();
                partition.partition_index = index;
                partition.error_code = match results.next() {
                    Some(Ok(())) => code::NONE,
                    Some(Err(error)) => error.code,
                    None => code::UNKNOWN_SERVER_ERROR,
                };
                topic_answer.partitions.push(partition);
            }
            topic_answer.name = topic.name;
            answer.topics.push(topic_answer);
        }
        response.markers.push(answer);
    }
    response
}
