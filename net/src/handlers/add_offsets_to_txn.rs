//! AddOffsetsToTxn (key 25): a transactional producer will commit a group's offsets in its
//! transaction (`send_offsets_to_transaction`): the group's partition of
//! `__consumer_offsets` joins the transaction, so the markers reach it.

use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::error::code;
use crate::group::{offsets_partition, OFFSETS_TOPIC};
use crate::txn::{TxnAnswer, TxnCall};
use sluice_engine::checkpoint::TopicPartition;

pub async fn handle(
    ctx: &RequestContext,
    request: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let shard = &ctx.shard;
    let mut response = AddOffsetsToTxnResponse::default();
    // An empty group id is not refused here: Kafka adds its offsets partition and fails
    // the TxnOffsetCommit that follows with INVALID_GROUP_ID, and so do we.
    let group = request.group_id.0.as_str();
    let partitions = match shard.offsets_topic().await.map_err(NotServing::code) {
        Ok(partitions) => partitions,
        Err(error) => {
            response.error_code = error;
            return response;
        }
    };
    let id = request.transactional_id.0.to_string();
    let call = TxnCall::AddPartitions {
        id: id.clone(),
        producer_id: request.producer_id.0,
        epoch: request.producer_epoch,
        partitions: vec![TopicPartition::new(OFFSETS_TOPIC, offsets_partition(group, partitions))],
    };
    response.error_code = match shard.coordinate_txn(&id, call).await.map_err(NotServing::code) {
        Ok(TxnAnswer::AddPartitions(errors)) => {
            errors.first().copied().unwrap_or(code::UNKNOWN_SERVER_ERROR)
        }
        Ok(_) => code::UNKNOWN_SERVER_ERROR,
        Err(error) => error,
    };
    response
}
