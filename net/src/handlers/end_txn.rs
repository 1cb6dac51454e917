//! EndTxn (key 26): commit or abort the producer's transaction. The coordinator writes a
//! marker to every partition of the transaction and answers once they are all written.

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};

use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::error::code;
use crate::txn::{TxnAnswer, TxnCall};

pub async fn handle(ctx: &RequestContext, request: EndTxnRequest) -> EndTxnResponse {
    let shard = &ctx.shard;
    let id = request.transactional_id.0.to_string();
    let call = TxnCall::End {
        id: id.clone(),
        producer_id: request.producer_id.0,
        epoch: request.producer_epoch,
        commit: request.committed,
    };
    let mut response = EndTxnResponse::default();
    response.error_code = match shard.coordinate_txn(&id, call).await.map_err(NotServing::code) {
        Ok(TxnAnswer::End(error)) => error,
        Ok(_) => code::UNKNOWN_SERVER_ERROR,
        Err(error) => error,
    };
    response
}
