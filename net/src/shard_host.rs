//! The shard as the coordinators' host: [`CoordinatorHost`] over the shard's clock,
//! config, metadata and internal-topic appends, and the glue that runs what the
//! coordinators hand back to the shard (prepared transactions found at load).
//!
//! Kept out of `shard.rs` so that the shard's own code does not grow with the
//! coordinators' needs; every method here forwards to one the shard already has.

use std::rc::Rc;

use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::SystemClock;

use crate::config::{GroupConfig, TxnConfig};
use crate::coordinator_host::{CoordinatorHost, Replayed, Write};
use crate::error::KafkaError;
use crate::shard::Shard;

impl CoordinatorHost for Shard {
    type Clock = SystemClock;

    fn clock(&self) -> &SystemClock {
        &self.clock
    }

    fn shard_id(&self) -> usize {
        self.id
    }

    fn group_config(&self) -> &GroupConfig {
        &self.config.groups
    }

    fn txn_config(&self) -> &TxnConfig {
        &self.config.txns
    }

    fn partition_count(&self, topic: &str) -> Option<i32> {
        self.metadata().topic(topic).map(|t| t.partitions)
    }

    fn owns(&self, tp: &TopicPartition) -> bool {
        self.owner_of(tp) == self.id
    }

    fn is_stopping(&self) -> bool {
        self.stopping()
    }

    async fn append_internal(
        &self,
        tp: &TopicPartition,
        writes: Vec<Write>,
        txn: Option<(i64, i16)>,
    ) -> Result<(), KafkaError> {
        self.append_records(tp, writes, txn).await
    }

    async fn allocate_producer_id(self: &Rc<Self>) -> Result<i64, KafkaError> {
        self.new_producer_id().await
    }

    async fn write_txn_markers(
        self: &Rc<Self>,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        partitions: &[TopicPartition],
    ) -> Result<(), KafkaError> {
        self.write_markers(producer_id, epoch, commit, partitions).await
    }
}

impl Shard {
    /// Loads one `__transaction_state` partition into the transaction coordinator, then
    /// finishes, each in its own task, the transactions a stop left prepared (their
    /// markers go through other shards, which may still be loading).
    pub(crate) fn load_txns(self: &Rc<Self>, partition: i32, records: Vec<Replayed>) {
        for id in self.txns.load(self, partition, records) {
            let shard = self.clone();
            glommio::spawn_local(async move { shard.txns.finish_prepared(&shard, &id).await })
                .detach();
        }
    }
}
