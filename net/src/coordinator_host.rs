//! What the group and transaction coordinators need from the broker around them, as a
//! trait ([`CoordinatorHost`]), so that the coordinators are state machines over it.
//!
//! Why a trait and not `&Shard`: a coordinator's rules (rebalances, session timeouts,
//! offset retention, transaction timeouts) depend on time and on a handful of broker
//! services (append to an internal partition, allocate a producer id, write markers).
//! Behind a trait, a test runs them against an in-memory host and a `ManualClock`, with
//! no sockets, no shard mesh and no sleeping; and `group`/`txn` no longer import
//! `shard`, which imports them (the cycle made every change to one a change to both).
//!
//! It lives at the crate root, not under `group/`, because both coordinators share it
//! and the shard implements it (`crate::shard_host`).
//!
//! The coordinators are generic over the host (`Coordinator<H>`, `TxnCoordinator<H>`),
//! not `dyn`: `async fn` in a trait is not object safe without boxing every call, and
//! the broker has exactly one host type, so the generic costs nothing. The methods take
//! `&self`, except those that reach other shards through the mesh (which needs the
//! shard as an `Rc` to spawn and to answer itself).

use std::rc::Rc;

use bytes::Bytes;
use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::Clock;

use crate::config::{GroupConfig, TxnConfig};
use crate::error::{code, KafkaError};

#[cfg(test)]
pub(crate) mod fake;

/// A record to write to an internal partition: key and value (None: a tombstone).
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// What a coordinator replays from its internal topic at start-up.
#[derive(Debug, Clone)]
pub enum Replayed {
    /// A record; `producer_id` when it is part of a transaction.
    Record { key: Bytes, value: Option<Bytes>, producer_id: Option<i64> },
    /// A transaction marker.
    Marker { producer_id: i64, commit: bool },
}

/// The broker as a coordinator sees it. Implemented by the shard; tests implement it
/// in memory (`coordinator_host::fake`).
// `async fn` here has no `Send` bound on its futures, which is what the lint warns
// about: every implementation runs on one glommio shard and nothing crosses threads.
#[allow(async_fn_in_trait)]
pub trait CoordinatorHost: 'static {
    /// The clock the coordinators read and drive their timers from (the same clock: a
    /// coordinator's timer driver is built from a clone of it).
    type Clock: Clock + Clone + 'static;

    fn clock(&self) -> &Self::Clock;

    /// This shard's number, for log lines.
    fn shard_id(&self) -> usize;

    fn group_config(&self) -> &GroupConfig;

    fn txn_config(&self) -> &TxnConfig;

    /// The number of partitions of `topic` in this shard's metadata, `None` when it does
    /// not know the topic (yet). The coordinators ask it for their internal topic, and
    /// to check the partitions a commit or a transaction names.
    fn partition_count(&self, topic: &str) -> Option<i32>;

    /// Whether this shard owns `tp` (a coordinator serves only the ids whose internal
    /// partition is local).
    fn owns(&self, tp: &TopicPartition) -> bool;

    /// Whether the broker is stopping (parked rebalances are answered at once; marker
    /// retries give up).
    fn is_stopping(&self) -> bool;

    /// Appends `writes` to an internal partition owned by this shard, as one batch;
    /// `txn`: a transactional batch of that producer (id, epoch).
    async fn append_internal(
        &self,
        tp: &TopicPartition,
        writes: Vec<Write>,
        txn: Option<(i64, i16)>,
    ) -> Result<(), KafkaError>;

    /// A new producer id from the controller.
    async fn allocate_producer_id(self: &Rc<Self>) -> Result<i64, KafkaError>;

    /// Writes a transaction's commit or abort markers to `partitions`, each through the
    /// shard that owns it.
    async fn write_txn_markers(
        self: &Rc<Self>,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        partitions: &[TopicPartition],
    ) -> Result<(), KafkaError>;
}

/// Why a coordinator does not serve a group or transactional id right now. Each is one
/// Kafka error code (see [`NotServing::code`]); clients react to them differently
/// (look the coordinator up again, retry later, give up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotServing {
    /// The partition's records are still being replayed, or (groups) this shard does
    /// not know `__consumer_offsets` yet while its creation reaches every shard.
    #[error("the coordinator is loading")]
    LoadInProgress,
    /// (Transactions) `__transaction_state` does not exist here.
    #[error("the coordinator's topic is not available")]
    Unavailable,
    /// Another shard, or another broker, owns (leads) the id's partition.
    #[error("another shard or broker coordinates this id")]
    NotCoordinator,
    /// (Transactions) the transactional id is empty.
    #[error("the id is empty")]
    InvalidId,
}

impl NotServing {
    /// The error code the client gets.
    pub fn code(self) -> i16 {
        match self {
            NotServing::LoadInProgress => code::COORDINATOR_LOAD_IN_PROGRESS,
            NotServing::Unavailable => code::COORDINATOR_NOT_AVAILABLE,
            NotServing::NotCoordinator => code::NOT_COORDINATOR,
            NotServing::InvalidId => code::INVALID_REQUEST,
        }
    }
}
