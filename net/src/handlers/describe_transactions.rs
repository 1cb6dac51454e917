//! DescribeTransactions (key 65): per transactional id, its state, timeout, start time,
//! producer id and epoch, and the partitions of its open transaction.

use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, TransactionalId,
};

use super::RequestContext;
use super::{str_bytes, topic_name};
use crate::coordinator_host::NotServing;
use crate::txn::{TxnAnswer, TxnCall, TxnDescription};

pub async fn handle(
    ctx: &RequestContext,
    request: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let shard = &ctx.shard;
    let mut response = DescribeTransactionsResponse::default();
    for id in &request.transactional_ids {
        let id = id.0.to_string();
        let described = match shard
            .coordinate_txn(&id, TxnCall::Describe(vec![id.clone()]))
            .await
            .map_err(NotServing::code)
        {
            Ok(TxnAnswer::Describe(mut found)) if found.len() == 1 => found.remove(0),
            Ok(_) => TxnDescription {
                error: crate::error::code::UNKNOWN_SERVER_ERROR,
                ..Default::default()
            },
            Err(error) => TxnDescription { error, ..Default::default() },
        };
        let mut state = TransactionState::default();
        state.error_code = described.error;
        state.transactional_id = TransactionalId(str_bytes(&id));
        state.transaction_state = str_bytes(&described.state);
        state.transaction_timeout_ms = described.timeout_ms;
        state.transaction_start_time_ms = described.start_ms;
        state.producer_id = ProducerId(described.producer_id);
        state.producer_epoch = described.epoch;
        for tp in described.partitions {
            match state.topics.last_mut() {
                Some(topic) if topic.topic.0.as_str() == tp.topic => {
                    topic.partitions.push(tp.partition)
                }
                _ => {
                    let mut topic = TopicData::default();
                    topic.topic = topic_name(&tp.topic);
                    topic.partitions.push(tp.partition);
                    state.topics.push(topic);
                }
            }
        }
        response.transaction_states.push(state);
    }
    response
}
