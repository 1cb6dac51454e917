//! FindCoordinator (key 10): the broker that coordinates a group (key type 0) or a
//! transactional id (key type 1): the leader of the key's `__consumer_offsets` or
//! `__transaction_state` partition, as in Kafka; which shard of that broker coordinates
//! stays inside the broker. Like Kafka, the first lookup
//! creates `__consumer_offsets` (groups) or `__transaction_state` (transactions). An
//! unknown key type is INVALID_REQUEST, as Kafka's `CoordinatorType.forId` makes it.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

use super::str_bytes;
use super::RequestContext;
use crate::error::code;
use crate::group::{offsets_partition, OFFSETS_TOPIC};
use crate::txn::{txn_partition, TXN_TOPIC};

/// Kafka's `CoordinatorType`.
pub const KEY_TYPE_GROUP: i8 = 0;
pub const KEY_TYPE_TRANSACTION: i8 = 1;

pub async fn handle(
    ctx: &RequestContext,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let keys: Vec<String> = if version >= 4 {
        request.coordinator_keys.iter().map(|k| k.to_string()).collect()
    } else {
        vec![request.key.to_string()]
    };
    let mut answers = Vec::with_capacity(keys.len());
    for key in keys {
        let mut answer = Coordinator::default();
        answer.key = str_bytes(&key);
        // An empty key is answered like any other, as Kafka answers it (its coordinator is
        // the partition "" hashes to); the group or transaction APIs judge the id itself.
        let found = match request.key_type {
            KEY_TYPE_GROUP => shard
                .offsets_topic()
                .await
                .map(|partitions| (OFFSETS_TOPIC, offsets_partition(&key, partitions)))
                .map_err(|e| (e.code(), "the consumer offsets topic is not available".to_string())),
            KEY_TYPE_TRANSACTION => shard
                .transaction_topic()
                .await
                .map(|partitions| (TXN_TOPIC, txn_partition(&key, partitions)))
                .map_err(|e| {
                    (e.code(), "the transaction state topic is not available".to_string())
                }),
            other => Err((code::INVALID_REQUEST, format!("unknown coordinator key type {other}"))),
        };
        let coordinator = found.and_then(|(topic, partition)| {
            let leader = match shard.metadata_cache.leader(topic, partition) {
                None => shard.config.node_id,
                Some((leader, _)) => leader,
            };
            super::cluster_brokers(shard).into_iter().find(|b| b.id == leader && !b.fenced).ok_or((
                code::COORDINATOR_NOT_AVAILABLE,
                format!("{topic}-{partition} has no leader"),
            ))
        });
        match coordinator {
            Ok(broker) => {
                answer.node_id = BrokerId(broker.id);
                answer.host = str_bytes(&broker.host);
                answer.port = broker.port;
            }
            Err((error, message)) => {
                answer.node_id = BrokerId(-1);
                answer.host = str_bytes("");
                answer.port = -1;
                answer.error_code = error;
                answer.error_message = Some(str_bytes(&message));
            }
        }
        answers.push(answer);
    }
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.coordinators = answers;
    } else if let Some(answer) = answers.pop() {
        response.error_code = answer.error_code;
        response.node_id = answer.node_id;
        response.host = answer.host;
        response.port = answer.port;
        if version >= 1 {
            response.error_message = answer.error_message;
        }
    }
    response
}
