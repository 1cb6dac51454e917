//! InitProducerId (key 22): a producer id for an idempotent or transactional producer.
//! Ids come from the controller in blocks stored in the metadata log, so they are unique
//! across restarts. Like Kafka, a producer without a transactional id always gets a fresh
//! id at epoch 0 (also when it asks for an epoch bump, KIP-360). With a transactional id
//! the request goes to the id's transaction coordinator, which keeps the id's producer
//! id, bumps its epoch (fencing older instances), and aborts a transaction the previous
//! instance left open.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::error::code;
use crate::txn::{TxnAnswer, TxnCall};

pub async fn handle(
    ctx: &RequestContext,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    if request.transactional_id.as_ref().is_some_and(|id| id.0.is_empty()) {
        // Kafka's answer: null means "no transactions", empty is a mistake.
        response.error_code = code::INVALID_REQUEST;
        return response;
    }
    if let Some(transactional_id) = &request.transactional_id {
        let id = transactional_id.0.to_string();
        let expected = (version >= 3 && request.producer_id.0 >= 0)
            .then_some((request.producer_id.0, request.producer_epoch));
        let call = TxnCall::InitProducerId {
            id: id.clone(),
            timeout_ms: request.transaction_timeout_ms,
            expected,
        };
        let answer = match shard.coordinate_txn(&id, call).await.map_err(NotServing::code) {
            Ok(TxnAnswer::ProducerId(answer)) => answer,
            Ok(_) => Err(code::UNKNOWN_SERVER_ERROR),
            Err(error) => Err(error),
        };
        match answer {
            Ok((producer_id, epoch)) => {
                response.producer_id = ProducerId(producer_id);
                response.producer_epoch = epoch;
            }
            // PRODUCER_FENCED is new in v4 (KIP-588); older clients know the epoch error.
            Err(code::PRODUCER_FENCED) if version < 4 => {
                response.error_code = code::INVALID_PRODUCER_EPOCH
            }
            Err(error) => response.error_code = error,
        }
        return response;
    }
    match shard.new_producer_id().await {
        Ok(id) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = 0;
        }
        Err(error) => {
            tracing::warn!(message = %error.message, "allocating a producer id failed");
            response.error_code = error.code;
        }
    }
    response
}
