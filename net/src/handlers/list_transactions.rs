//! ListTransactions (key 66): every transactional id the broker coordinates, with its
//! producer id and state, filtered by state names and producer ids. Version 0 only (v1's
//! duration filter is not implemented).

use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};

use super::str_bytes;
use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::txn::records::TxnStatus;
use crate::txn::{TxnAnswer, TxnCall};

const STATES: [TxnStatus; 8] = [
    TxnStatus::Empty,
    TxnStatus::Ongoing,
    TxnStatus::PrepareCommit,
    TxnStatus::PrepareAbort,
    TxnStatus::CompleteCommit,
    TxnStatus::CompleteAbort,
    TxnStatus::Dead,
    TxnStatus::PrepareEpochFence,
];

pub async fn handle(
    ctx: &RequestContext,
    request: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let shard = &ctx.shard;
    let mut response = ListTransactionsResponse::default();
    let mut states = Vec::new();
    for filter in &request.state_filters {
        if STATES.iter().any(|s| s.name() == filter.as_str()) {
            states.push(filter.to_string());
        } else {
            response.unknown_state_filters.push(filter.clone());
        }
    }
    if !request.state_filters.is_empty() && states.is_empty() {
        return response;
    }
    let producer_ids = request.producer_id_filters.iter().map(|p| p.0).collect();
    let call = TxnCall::List { states, producer_ids };
    for answer in shard
        .coordinate_all_txns(call)
        .await
        .into_iter()
        .map(|answer| answer.map_err(NotServing::code))
    {
        match answer {
            Ok(TxnAnswer::List(listings)) => {
                for listing in listings {
                    let mut state = TransactionState::default();
                    state.transactional_id = TransactionalId(str_bytes(&listing.id));
                    state.producer_id = ProducerId(listing.producer_id);
                    state.transaction_state = str_bytes(&listing.state);
                    response.transaction_states.push(state);
                }
            }
            Ok(_) => {}
            Err(error) => response.error_code = error,
        }
    }
    response
}
