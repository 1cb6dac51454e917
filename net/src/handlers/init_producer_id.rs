//! InitProducerId (key 22): a producer id for an idempotent producer. Ids come from the
//! controller in blocks stored in the metadata log, so they are unique across restarts;
//! like Kafka, a producer without a transactional id always gets a fresh id at epoch 0
//! (also when it asks for an epoch bump, KIP-360). Transactional ids need the transaction
//! coordinator, which is not there yet: they get COORDINATOR_NOT_AVAILABLE.

use std::rc::Rc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::error::code;
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    request: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    if request.transactional_id.as_ref().is_some_and(|id| id.0.is_empty()) {
        // Kafka's answer: null means "no transactions", empty is a mistake.
        response.error_code = code::INVALID_REQUEST;
        return response;
    }
    if let Some(transactional_id) = &request.transactional_id {
        tracing::info!(
            transactional_id = %transactional_id.0,
            "InitProducerId with a transactional id refused: transactions are not supported yet"
        );
        response.error_code = code::COORDINATOR_NOT_AVAILABLE;
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
