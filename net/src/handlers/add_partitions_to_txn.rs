//! AddPartitionsToTxn (key 24): a transactional producer names the partitions it is about
//! to write in its transaction, so the coordinator knows where to write the markers.
//! Versions 0-3 (the client's form; v4+ is the brokers' batched form of KIP-890).

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};

use super::topic_name;
use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::error::code;
use crate::txn::{TxnAnswer, TxnCall};
use sluice_engine::checkpoint::TopicPartition;

pub async fn handle(
    ctx: &RequestContext,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let shard = &ctx.shard;
    let id = request.v3_and_below_transactional_id.0.to_string();
    let partitions: Vec<TopicPartition> = request
        .v3_and_below_topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| TopicPartition::new(t.name.0.as_str(), *p)))
        .collect();
    let call = TxnCall::AddPartitions {
        id: id.clone(),
        producer_id: request.v3_and_below_producer_id.0,
        epoch: request.v3_and_below_producer_epoch,
        partitions: partitions.clone(),
    };
    let errors = match shard.coordinate_txn(&id, call).await.map_err(NotServing::code) {
        Ok(TxnAnswer::AddPartitions(errors)) if errors.len() == partitions.len() => errors,
        Ok(_) => vec![code::UNKNOWN_SERVER_ERROR; partitions.len()],
        Err(error) => vec![error; partitions.len()],
    };
    let mut response = AddPartitionsToTxnResponse::default();
    for (tp, error) in partitions.into_iter().zip(errors) {
        let mut result = AddPartitionsToTxnPartitionResult::default();
        result.partition_index = tp.partition;
        result.partition_error_code = error;
        match response.results_by_topic_v3_and_below.last_mut() {
            Some(topic) if topic.name.0.as_str() == tp.topic => {
                topic.results_by_partition.push(result)
            }
            _ => {
                let mut topic = AddPartitionsToTxnTopicResult::default();
                topic.name = topic_name(&tp.topic);
                topic.results_by_partition.push(result);
                response.results_by_topic_v3_and_below.push(topic);
            }
        }
    }
    response
}
