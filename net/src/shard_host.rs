//! The shard and its coordinators, both ways: [`CoordinatorHost`] over the shard's
//! clock, config, metadata and internal-topic appends; the glue that runs what the
//! coordinators hand back to the shard (prepared transactions found at load); and the
//! routing of a group or transactional id to the shard that coordinates it, creating
//! `__consumer_offsets` or `__transaction_state` on first use as Kafka does.
//!
//! Kept out of `shard.rs` so that the container does not grow with the coordinators'
//! needs.

use std::rc::Rc;

use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::SystemClock;

use sluice_engine::metadata::MetadataRecord;
use tracing::{info, warn};

use crate::config::{GroupConfig, TxnConfig};
use crate::coordinator_host::{CoordinatorHost, NotServing, Replayed, Write};
use crate::error::{code, KafkaError};
use crate::group::{offsets_partition, GroupAnswer, GroupCall, OFFSETS_TOPIC};
use crate::shard::{Shard, ShardRequest, ShardResponse};
use crate::txn::{txn_partition, TxnAnswer, TxnCall, TXN_TOPIC};

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
    /// Sends `call` to the coordinator of `group` (the shard owning the group's partition
    /// of `__consumer_offsets`), creating that topic on first use like Kafka does.
    pub async fn coordinate(
        self: &Rc<Self>,
        group: &str,
        call: GroupCall,
    ) -> Result<GroupAnswer, NotServing> {
        let partitions = self.offsets_topic().await?;
        let tp = TopicPartition::new(OFFSETS_TOPIC, offsets_partition(group, partitions));
        if !self.leads_in_metadata(&tp) {
            return Err(NotServing::NotCoordinator);
        }
        match self.call(self.owner_of(&tp), ShardRequest::Group(call)).await {
            ShardResponse::Group(answer) => Ok(answer),
            _ => Err(NotServing::Unavailable),
        }
    }

    /// Sends `call` to the coordinator of transactional id `id` (the shard owning its
    /// partition of `__transaction_state`), creating that topic on first use.
    pub async fn coordinate_txn(
        self: &Rc<Self>,
        id: &str,
        call: TxnCall,
    ) -> Result<TxnAnswer, NotServing> {
        let partitions = self.transaction_topic().await?;
        let tp = TopicPartition::new(TXN_TOPIC, txn_partition(id, partitions));
        if !self.leads_in_metadata(&tp) {
            return Err(NotServing::NotCoordinator);
        }
        match self.call(self.owner_of(&tp), ShardRequest::Txn(call)).await {
            ShardResponse::Txn(answer) => Ok(answer),
            _ => Err(NotServing::Unavailable),
        }
    }

    /// Runs `call` on every shard's transaction coordinator (ListTransactions).
    pub async fn coordinate_all_txns(
        self: &Rc<Self>,
        call: TxnCall,
    ) -> Vec<Result<TxnAnswer, NotServing>> {
        if let Err(error) = self.transaction_topic().await {
            return vec![Err(error)];
        }
        self.call_every_shard(
            || ShardRequest::Txn(call.clone()),
            |response| match response {
                ShardResponse::Txn(answer) => Some(answer),
                _ => None,
            },
        )
        .await
    }

    /// The partition count of `__transaction_state`, creating the topic if it is missing.
    pub async fn transaction_topic(self: &Rc<Self>) -> Result<i32, NotServing> {
        let txns = &self.config.txns;
        self.internal_topic(TXN_TOPIC, txns.state_log_num_partitions, txns.state_log_segment_bytes)
            .await
    }

    /// Runs `call` on every shard's coordinator (for ListGroups).
    pub async fn coordinate_all(
        self: &Rc<Self>,
        call: GroupCall,
    ) -> Vec<Result<GroupAnswer, NotServing>> {
        if let Err(error) = self.offsets_topic().await {
            return vec![Err(error)];
        }
        self.call_every_shard(
            || ShardRequest::Group(call.clone()),
            |response| match response {
                ShardResponse::Group(answer) => Some(answer),
                _ => None,
            },
        )
        .await
    }

    /// Runs `request()` on every shard in turn (ListGroups, ListTransactions); a shard
    /// that answers anything `answer` does not take is not serving.
    async fn call_every_shard<A>(
        self: &Rc<Self>,
        request: impl Fn() -> ShardRequest,
        answer: impl Fn(ShardResponse) -> Option<A>,
    ) -> Vec<Result<A, NotServing>> {
        let mut answers = Vec::with_capacity(self.shards());
        for target in 0..self.shards() {
            answers.push(answer(self.call(target, request()).await).ok_or(NotServing::Unavailable));
        }
        answers
    }

    /// The partition count of `__consumer_offsets`, creating the topic if it is missing.
    pub async fn offsets_topic(self: &Rc<Self>) -> Result<i32, NotServing> {
        let groups = &self.config.groups;
        self.internal_topic(
            OFFSETS_TOPIC,
            groups.offsets_topic_num_partitions,
            groups.offsets_topic_segment_bytes,
        )
        .await
    }

    /// The partition count of a coordinator's internal (compacted) topic, creating it
    /// through the controller if it is missing.
    async fn internal_topic(
        self: &Rc<Self>,
        name: &str,
        partitions: i32,
        segment_bytes: u64,
    ) -> Result<i32, NotServing> {
        if let Some(topic) = self.metadata().topic(name) {
            return Ok(topic.partitions);
        }
        let record = MetadataRecord::CreateTopic {
            name: name.to_string(),
            topic_id: sluice_engine::metadata::new_topic_id(),
            partitions,
            // The controller's choice: `offsets.topic.replication.factor` or
            // `transaction.state.log.replication.factor`, else min(3, brokers).
            replication_factor: -1,
            configs: vec![
                ("cleanup.policy".to_string(), "compact".to_string()),
                ("segment.bytes".to_string(), segment_bytes.to_string()),
            ],
        };
        match self.change_metadata(record, false).await {
            Ok(applied) => match applied.storage_error() {
                None => info!(partitions, "created {name}"),
                Some(error) => warn!(message = %error.message, "created {name}"),
            },
            // Another request created it first (the controller's lock is held until every
            // shard applied that change, so this shard knows the topic now).
            Err(error) if error.code == code::TOPIC_ALREADY_EXISTS => {}
            Err(error) => {
                warn!(message = %error.message, "creating {name} failed");
                return Err(NotServing::Unavailable);
            }
        }
        self.metadata().topic(name).map(|t| t.partitions).ok_or(NotServing::Unavailable)
    }

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
