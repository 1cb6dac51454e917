//! EndTxn (key 26): commit or abort the producer's transaction. The coordinator writes a
//! marker to every partition of the transaction and answers once they are all written.

use std::rc::Rc;

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};

use crate::error::code;
use crate::shard::Shard;
use crate::txn::{TxnAnswer, TxnCall};

pub async fn handle(shard: &Rc<Shard>, request: EndTxnRequest, _version: i16) -> EndTxnResponse {
    let id = request.transactional_id.0.to_string();
    let call = TxnCall::End {
        id: id.clone(),
        producer_id: request.producer_id.0,
        epoch: request.producer_epoch,
        commit: request.committed,
    };
    let mut response = EndTxnResponse::default();
    response.error_code = match shard.coordinate_txn(&id, call).await {
        Ok(TxnAnswer::End(error)) => error,
        Ok(_) => code::UNKNOWN_SERVER_ERROR,
        Err(error) => error,
    };
    response
}
