//! Transactions (exactly-once): the transaction coordinator and what crosses the shard
//! mesh to reach it.
//!
//! The coordinator of transactional id T is the shard owning partition
//! `abs(javaHashCode(T)) % transaction.state.log.num.partitions` of `__transaction_state`
//! (Kafka's placement). Its state per transactional id (producer id and epoch, status,
//! the partitions of the open transaction, timeout) is stored as records in that
//! partition, in Kafka's formats ([`records`]), and replayed at start-up. Ending a
//! transaction writes a commit or abort marker (a control batch) to every partition of
//! the transaction, through the shards that own them, then stores the completed state.

pub mod coordinator;
pub mod records;
#[cfg(test)]
mod tests;

use sluice_engine::checkpoint::TopicPartition;

/// Kafka's internal topic of transaction state.
pub const TXN_TOPIC: &str = "__transaction_state";

/// The `__transaction_state` partition of a transactional id (Kafka's formula, the same
/// as a group's in `__consumer_offsets`).
pub fn txn_partition(transactional_id: &str, partitions: i32) -> i32 {
    crate::group::offsets_partition(transactional_id, partitions)
}

/// A call to a transaction coordinator.
#[derive(Debug, Clone)]
pub enum TxnCall {
    /// InitProducerId with a transactional id. `expected`: the producer id and epoch the
    /// client has (KIP-360, InitProducerId v3+), when it asks for an epoch bump.
    InitProducerId {
        id: String,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    },
    AddPartitions {
        id: String,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<TopicPartition>,
    },
    End {
        id: String,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    },
    /// Every transaction this shard coordinates, filtered by state names and producer ids
    /// (empty filters match everything).
    List {
        states: Vec<String>,
        producer_ids: Vec<i64>,
    },
    Describe(Vec<String>),
}

/// A transaction coordinator's answer. Errors here are Kafka codes, not the coordinator's
/// typed errors: the answer is what the handler writes on the wire, and it crosses the
/// shard mesh as plain data.
#[derive(Debug, Clone)]
pub enum TxnAnswer {
    ProducerId(Result<(i64, i16), i16>),
    /// Per partition, in request order.
    AddPartitions(Vec<i16>),
    End(i16),
    List(Vec<TxnListing>),
    Describe(Vec<TxnDescription>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnListing {
    pub id: String,
    pub producer_id: i64,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnDescription {
    pub error: i16,
    pub id: String,
    pub state: String,
    pub timeout_ms: i32,
    pub start_ms: i64,
    pub producer_id: i64,
    pub epoch: i16,
    pub partitions: Vec<TopicPartition>,
}
