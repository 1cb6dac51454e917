//! One shard: the container of what a core owns end to end. It holds the shard's
//! replica manager (its partitions and their Kafka semantics, see [`crate::replica`]), its
//! copy of the cluster metadata, its group and transaction coordinators, and the mesh
//! that carries requests for other shards' partitions; it runs the housekeeping loop and
//! starts and stops all of them. Everything here lives on one glommio executor and is
//! never shared: other shards reach it only through [`MeshMsg`]s.
//!
//! Shard 0 also hosts the link to the controller quorum ([`crate::controller`]), through
//! which metadata changes go out and the records stored come back; every shard applies
//! them in order.

use std::cell::{Cell, Ref, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use glommio::channels::local_channel::{self, LocalSender};
use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::SystemClock;
use sluice_engine::metadata::{MetadataImage, MetadataRecord};
use sluice_engine::producer::ProducerView;
use sluice_engine::shard::{shard_of, ShardId};
use tracing::{error, info};

use crate::config::BrokerConfig;
use crate::controller::{Applied, Controller};
pub use crate::coordinator_host::Replayed;
use crate::error::{code, KafkaError};
use crate::group::coordinator::{Coordinator, Write};
use crate::group::{GroupAnswer, GroupCall, OFFSETS_TOPIC};
use crate::mesh::{Mesh, MeshReceivers};
use crate::metadata_cache::{Fenced, MetadataCache};
pub use crate::replica::types::*;
pub use crate::replica::OfflinePartitions;
use crate::replica::ReplicaManager;
use crate::reqmetrics::RequestMetrics;
use crate::txn::coordinator::TxnCoordinator;
use crate::txn::{TxnAnswer, TxnCall, TXN_TOPIC};
use crate::zerocopy::SendStats;
use sluice_cluster::controller::rpc::{ControllerRequest, ControllerResponse, Intent, Outcome};

/// Why a shard could not run. The broker stops the other shards and exits with it.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {shard} could not join the mesh: {reason}")]
    Mesh { shard: ShardId, reason: String },
    #[error("starting the {which} timer: {reason}")]
    Timer { which: &'static str, reason: String },
    #[error("shard {shard} cannot listen on {address}: {reason}")]
    Listen { shard: ShardId, address: std::net::SocketAddr, reason: String },
    #[error("shard {0} panicked")]
    Panicked(ShardId),
}

/// A request one shard sends another (or runs on itself through the same path).
#[derive(Debug)]
pub enum ShardRequest {
    Produce {
        acks: i16,
        /// How long acks=all waits for the in-sync replicas (the request's `timeout_ms`).
        timeout_ms: u64,
        parts: Vec<ProducePart>,
    },
    Fetch(Vec<FetchPart>),
    /// Answers when any of the partitions grows past the given offset, or after `wait_ms`.
    WatchFetch {
        positions: Vec<Watch>,
        wait_ms: u64,
    },
    ListOffsets(Vec<ListOffsetsPart>),
    DeleteRecords(Vec<(TopicPartition, i64)>),
    OffsetForLeaderEpoch(Vec<EpochPart>),
    /// To the controller: validate (and unless `validate_only`, store and apply) a change.
    Controller {
        intent: Intent,
        validate_only: bool,
    },
    /// From shard 0: apply the records stored at `first_offset..` of the metadata log.
    Apply {
        first_offset: i64,
        records: Vec<MetadataRecord>,
    },
    /// To a group's coordinator shard.
    Group(GroupCall),
    /// To the controller: a new producer id.
    AllocateProducerId,
    /// To shard 0: forward intents to the active controller.
    ControllerWrite {
        intents: Vec<Intent>,
        validate_only: bool,
    },
    /// To shard 0: ask the active controller.
    ControllerCall(ControllerRequest),
    /// To a transactional id's coordinator shard.
    Txn(TxnCall),
    /// From a transaction coordinator: write a commit or abort marker to each partition.
    WriteMarkers {
        producer_id: i64,
        epoch: i16,
        commit: bool,
        partitions: Vec<TopicPartition>,
    },
    DescribeProducers(Vec<TopicPartition>),
}

#[derive(Debug)]
pub enum ShardResponse {
    Produce(Vec<ProduceResult>),
    Fetch(Vec<FetchResult>),
    Watched,
    ListOffsets(Vec<ListOffsetsResult>),
    DeleteRecords(Vec<Result<i64, KafkaError>>),
    OffsetForLeaderEpoch(Vec<Result<(i32, i64), KafkaError>>),
    Controller(Result<Applied, KafkaError>),
    /// `Err`: the shard could not apply the change and stopped serving.
    Applied(Result<AppliedBatch, Fenced>),
    Group(GroupAnswer),
    ProducerId(Result<i64, KafkaError>),
    Written(Result<(Vec<Outcome>, i64), KafkaError>),
    ControllerAnswer(Result<ControllerResponse, KafkaError>),
    Txn(TxnAnswer),
    Markers(Vec<Result<(), KafkaError>>),
    Producers(Vec<Result<Vec<ProducerView>, KafkaError>>),
    /// The target shard is gone (shutting down).
    Unavailable,
}

/// What applying a batch of metadata records did on one shard: the partitions created
/// that could not be opened, with the offset of the record and why.
#[derive(Debug, Default)]
pub struct AppliedBatch {
    pub offline_at: Vec<(i64, TopicPartition, String)>,
}

#[derive(Debug)]
pub enum MeshMsg {
    Request { id: u64, body: ShardRequest },
    Response { id: u64, body: ShardResponse },
}

/// The future of [`Shard::stopped`].
pub struct StopListener<'a> {
    shard: &'a Shard,
    id: u64,
}

impl std::future::Future for StopListener<'_> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.shard.stop_fired.get() {
            return std::task::Poll::Ready(());
        }
        self.shard.stop_wakers.borrow_mut().insert(self.id, context.waker().clone());
        std::task::Poll::Pending
    }
}

impl Drop for StopListener<'_> {
    fn drop(&mut self) {
        self.shard.stop_wakers.borrow_mut().remove(&self.id);
    }
}

/// What a shard is made of, built by [`crate::runner::run`].
pub(crate) struct ShardParts {
    pub id: ShardId,
    pub config: Arc<BrokerConfig>,
    pub clock: SystemClock,
    pub metadata_cache: Rc<MetadataCache>,
    pub replicas: ReplicaManager,
    pub mesh: Mesh<MeshMsg>,
    pub controller: Option<Rc<Controller>>,
    pub stop: Arc<AtomicBool>,
}

pub struct Shard {
    pub id: ShardId,
    pub config: Arc<BrokerConfig>,
    pub clock: SystemClock,
    /// This shard's copy of the cluster metadata.
    pub metadata_cache: Rc<MetadataCache>,
    /// The partitions this shard owns, and serving them.
    pub replicas: ReplicaManager,
    mesh: Mesh<MeshMsg>,
    pending: RefCell<HashMap<u64, LocalSender<ShardResponse>>>,
    next_call_id: Cell<u64>,
    /// Shard 0 only.
    pub(crate) controller: Option<Rc<Controller>>,
    /// The groups whose `__consumer_offsets` partitions this shard owns.
    pub groups: Coordinator<Shard>,
    /// The transactional ids whose `__transaction_state` partitions this shard owns.
    pub txns: TxnCoordinator<Shard>,
    pub stop: Arc<AtomicBool>,
    /// Open client connections on this shard.
    pub connections: Cell<usize>,
    /// Fetched record bytes this shard's connections sent, zero-copy and copied.
    pub fetch_sends: SendStats,
    /// Request latency by phase and API since the last `request latency` report.
    pub request_metrics: RequestMetrics,
    stop_fired: Cell<bool>,
    stop_wakers: RefCell<HashMap<u64, std::task::Waker>>,
}

impl Shard {
    /// A shard around its parts, before it serves (see [`crate::runner::run`]).
    pub(crate) fn new(parts: ShardParts) -> Self {
        let ShardParts { id, config, clock, metadata_cache, replicas, mesh, controller, stop } =
            parts;
        let groups = Coordinator::new(clock.clone());
        let txns = TxnCoordinator::new(clock.clone());
        Self {
            id,
            config,
            clock,
            metadata_cache,
            replicas,
            mesh,
            pending: RefCell::new(HashMap::new()),
            next_call_id: Cell::new(0),
            controller,
            groups,
            txns,
            stop,
            connections: Cell::new(0),
            fetch_sends: SendStats::default(),
            request_metrics: RequestMetrics::new(),
            stop_fired: Cell::new(false),
            stop_wakers: RefCell::new(HashMap::new()),
        }
    }

    pub fn shards(&self) -> usize {
        self.config.shards
    }

    pub fn owner_of(&self, tp: &TopicPartition) -> ShardId {
        shard_of(&tp.topic, tp.partition, self.config.shards)
    }

    /// The broker's partitions that could not be opened (all shards').
    pub fn offline_partitions(&self) -> &OfflinePartitions {
        self.replicas.offline()
    }

    /// This shard's copy of the cluster metadata. Do not hold across an `await`.
    pub fn metadata(&self) -> Ref<'_, MetadataImage> {
        self.metadata_cache.image()
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Resolves once the shard is stopping (or stopped serving: its metadata copy is
    /// fenced). Every connection waits on this, so it is a waker registry fired once by
    /// the housekeeping loop (which polls the process-wide flag), not a timer per
    /// connection; a dropped future leaves the registry.
    pub fn stopped(&self) -> StopListener<'_> {
        let id = self.next_call_id.get();
        self.next_call_id.set(id + 1);
        StopListener { shard: self, id }
    }

    pub(crate) fn fire_stop(&self) {
        self.stop_fired.set(true);
        let wakers = std::mem::take(&mut *self.stop_wakers.borrow_mut());
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    /// Runs `request` on shard `target`: directly when it is this shard, else over the
    /// mesh.
    pub async fn call(self: &Rc<Self>, target: ShardId, request: ShardRequest) -> ShardResponse {
        if target == self.id {
            self.handle(request).await
        } else {
            self.remote(target, request).await
        }
    }

    pub(crate) async fn remote(&self, target: ShardId, request: ShardRequest) -> ShardResponse {
        let id = self.next_call_id.get();
        self.next_call_id.set(id + 1);
        let (sender, receiver) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(id, sender);
        if !self.mesh.send_to(target, MeshMsg::Request { id, body: request }).await {
            self.pending.borrow_mut().remove(&id);
            return ShardResponse::Unavailable;
        }
        receiver.recv().await.unwrap_or(ShardResponse::Unavailable)
    }

    /// Splits `parts` by owning shard, runs each group where it lives (concurrently), and
    /// returns the results in the order of `parts`.
    pub async fn scatter<P, R>(
        self: &Rc<Self>,
        parts: Vec<P>,
        tp_of: impl Fn(&P) -> &TopicPartition,
        wrap: impl Fn(Vec<P>) -> ShardRequest,
        unwrap: impl Fn(ShardResponse) -> Option<Vec<R>>,
        unavailable: impl Fn() -> R,
    ) -> Vec<R> {
        let count = parts.len();
        let mut groups: Vec<(Vec<usize>, Vec<P>)> =
            (0..self.shards()).map(|_| (Vec::new(), Vec::new())).collect();
        for (index, part) in parts.into_iter().enumerate() {
            let owner = self.owner_of(tp_of(&part));
            groups[owner].0.push(index);
            groups[owner].1.push(part);
        }
        let mut results: Vec<Option<R>> = (0..count).map(|_| None).collect();
        let mut remote_calls = Vec::new();
        let mut local = None;
        for (owner, (indexes, parts)) in groups.into_iter().enumerate() {
            if indexes.is_empty() {
                continue;
            }
            let request = wrap(parts);
            if owner == self.id {
                local = Some((indexes, request));
            } else {
                let shard = self.clone();
                let task = glommio::spawn_local(async move { shard.remote(owner, request).await });
                remote_calls.push((indexes, task));
            }
        }
        let mut place = |indexes: Vec<usize>, response: ShardResponse| {
            let answers = unwrap(response).filter(|answers| answers.len() == indexes.len());
            match answers {
                Some(answers) => {
                    for (index, answer) in indexes.into_iter().zip(answers) {
                        results[index] = Some(answer);
                    }
                }
                None => {
                    for index in indexes {
                        results[index] = Some(unavailable());
                    }
                }
            }
        };
        if let Some((indexes, request)) = local {
            let response = self.handle(request).await;
            place(indexes, response);
        }
        for (indexes, task) in remote_calls {
            let response = task.await;
            place(indexes, response);
        }
        results.into_iter().map(|r| r.unwrap_or_else(&unavailable)).collect()
    }

    /// Serves a request on this shard. A shard whose metadata copy is fenced serves
    /// nothing but metadata records (which it refuses, saying why): its partitions and
    /// coordinators answer as a shard that is gone, so no client is answered from a
    /// metadata history it no longer follows.
    async fn handle(self: &Rc<Self>, request: ShardRequest) -> ShardResponse {
        if let Some(fenced) = self.metadata_cache.fenced() {
            return match request {
                ShardRequest::Apply { .. } => ShardResponse::Applied(Err(fenced)),
                _ => ShardResponse::Unavailable,
            };
        }
        let replicas = &self.replicas;
        match request {
            ShardRequest::Produce { acks, timeout_ms, parts } => {
                // Every partition is appended first; acks=all then waits for all of them
                // at once.
                let mut results = Vec::with_capacity(parts.len());
                let mut waits = Vec::with_capacity(parts.len());
                for part in parts {
                    let (result, wait) = replicas.produce(acks, part).await;
                    results.push(result);
                    waits.push(wait);
                }
                replicas.await_replication(&mut results, waits, timeout_ms).await;
                ShardResponse::Produce(results)
            }
            ShardRequest::Fetch(parts) => {
                let mut results = Vec::with_capacity(parts.len());
                for part in parts {
                    results.push(replicas.fetch(part).await);
                }
                ShardResponse::Fetch(results)
            }
            ShardRequest::WatchFetch { positions, wait_ms } => {
                replicas.watch(positions, wait_ms).await;
                ShardResponse::Watched
            }
            ShardRequest::ListOffsets(parts) => {
                let mut results = Vec::with_capacity(parts.len());
                for part in parts {
                    results.push(replicas.list_offsets(part).await);
                }
                ShardResponse::ListOffsets(results)
            }
            ShardRequest::DeleteRecords(parts) => {
                let mut results = Vec::with_capacity(parts.len());
                for (tp, offset) in parts {
                    results.push(replicas.delete_records(&tp, offset).await);
                }
                ShardResponse::DeleteRecords(results)
            }
            ShardRequest::OffsetForLeaderEpoch(parts) => ShardResponse::OffsetForLeaderEpoch(
                parts.iter().map(|part| replicas.offset_for_leader_epoch(part)).collect(),
            ),
            ShardRequest::Controller { intent, validate_only } => {
                let result = match &self.controller {
                    Some(controller) => controller.change(self, intent, validate_only).await,
                    None => Err(KafkaError::new(code::NOT_CONTROLLER, "not the controller shard")),
                };
                ShardResponse::Controller(result)
            }
            ShardRequest::Apply { first_offset, records } => {
                ShardResponse::Applied(self.apply_metadata_batch(first_offset, &records).await)
            }
            ShardRequest::Group(call) => ShardResponse::Group(self.groups.call(self, call).await),
            ShardRequest::ControllerWrite { intents, validate_only } => {
                ShardResponse::Written(match &self.controller {
                    Some(controller) => controller.write(self, intents, validate_only).await,
                    None => Err(KafkaError::new(code::NOT_CONTROLLER, "not the controller shard")),
                })
            }
            ShardRequest::ControllerCall(request) => {
                ShardResponse::ControllerAnswer(match &self.controller {
                    Some(controller) => controller.call(request).await,
                    None => Err(KafkaError::new(code::NOT_CONTROLLER, "not the controller shard")),
                })
            }
            ShardRequest::AllocateProducerId => ShardResponse::ProducerId(match &self.controller {
                Some(controller) => controller.allocate_producer_id(self).await,
                None => Err(KafkaError::new(code::NOT_CONTROLLER, "not the controller shard")),
            }),
            // Boxed: a coordinator call writes markers through `call`, which is this.
            ShardRequest::Txn(call) => {
                ShardResponse::Txn(Box::pin(self.txns.call(self, call)).await)
            }
            ShardRequest::WriteMarkers { producer_id, epoch, commit, partitions } => {
                let mut results = Vec::with_capacity(partitions.len());
                for tp in &partitions {
                    results.push(self.write_marker(tp, producer_id, epoch, commit).await);
                }
                ShardResponse::Markers(results)
            }
            ShardRequest::DescribeProducers(partitions) => ShardResponse::Producers(
                partitions
                    .iter()
                    .map(|tp| replicas.producers(tp))
                    .collect::<Vec<Result<Vec<ProducerView>, KafkaError>>>(),
            ),
        }
    }

    // ---- metadata ----

    /// Applies the metadata change stored at `offset` to this shard's copy and opens or
    /// closes its partitions. A change that does not apply (or arrives out of order)
    /// fences the copy: the shard stops serving clients rather than answer from a
    /// metadata history no writer wrote.
    pub async fn apply_metadata(
        self: &Rc<Self>,
        offset: i64,
        record: &MetadataRecord,
    ) -> Result<Applied, Fenced> {
        // Coordinators follow the leadership of their internal topics' partitions: what
        // this broker led before the record, to tell a new leadership from a kept one.
        let coordinated = self.coordinated_partition(record);
        let led_before = coordinated.as_ref().is_some_and(|tp| self.leads_in_metadata(tp));
        if let Err(fenced) = self.metadata_cache.apply(offset, record) {
            error!(shard = self.id, %fenced, ?record, "metadata copy fenced: this shard stops serving clients");
            self.fire_stop();
            return Err(fenced);
        }
        // The group coordinator forgets the groups of the offsets partitions it loses.
        let doomed_offsets = match record {
            MetadataRecord::DeleteTopic { name } if name == OFFSETS_TOPIC => {
                self.replicas.of_topic(OFFSETS_TOPIC)
            }
            _ => Vec::new(),
        };
        for tp in &doomed_offsets {
            self.groups.forget_partition(tp.partition, i32::MAX);
        }
        let opened = self.replicas.apply(record).await;
        if let Some(tp) = coordinated.filter(|tp| self.replicas.contains(tp)) {
            let leads = self.leads_in_metadata(&tp);
            let partitions = self.metadata().topic(&tp.topic).map_or(1, |t| t.partitions);
            match (record, led_before, leads) {
                // A new partition is empty: nothing to load.
                (MetadataRecord::Partition(_), _, true) => self.mark_coordinator_loaded(&tp),
                (_, false, true) => {
                    info!(partition = %tp, "leading a coordinator partition: loading it");
                    let shard = self.clone();
                    glommio::spawn_local(async move { shard.load_coordinator(tp).await }).detach();
                }
                (_, true, false) => {
                    info!(partition = %tp, "no longer leading a coordinator partition: unloading it");
                    if tp.topic == OFFSETS_TOPIC {
                        self.groups.forget_partition(tp.partition, partitions);
                    } else {
                        self.txns.forget_partition(tp.partition, partitions);
                    }
                }
                _ => {}
            }
        }
        Ok(Applied { offline: opened.offline })
    }

    /// The internal topic partition a placement record is about, if it is one.
    fn coordinated_partition(&self, record: &MetadataRecord) -> Option<TopicPartition> {
        let (topic_id, partition) = match record {
            MetadataRecord::Partition(p) => (p.topic_id, p.partition),
            MetadataRecord::PartitionChange(c) => (c.topic_id, c.partition),
            _ => return None,
        };
        let image = self.metadata();
        let name = &image.topic_by_id(&topic_id)?.name;
        (name == OFFSETS_TOPIC || name == TXN_TOPIC)
            .then(|| TopicPartition::new(name.clone(), partition))
    }

    /// Whether the metadata names this broker the leader of `tp` (a partition without a
    /// placement is led here).
    pub(crate) fn leads_in_metadata(&self, tp: &TopicPartition) -> bool {
        match self.metadata_cache.leader(&tp.topic, tp.partition) {
            Some((leader, _)) => leader == self.config.node_id,
            None => self.metadata_cache.hosts(self.config.node_id, &tp.topic, tp.partition),
        }
    }

    fn mark_coordinator_loaded(&self, tp: &TopicPartition) {
        if tp.topic == OFFSETS_TOPIC {
            self.groups.mark_loaded(tp.partition);
        } else {
            self.txns.mark_loaded(tp.partition);
        }
    }

    /// Loads one coordinator partition's groups or transactions from its log.
    async fn load_coordinator(self: &Rc<Self>, tp: TopicPartition) {
        match self.replicas.read_all_records(&tp).await {
            Ok(records) if tp.topic == OFFSETS_TOPIC => {
                self.groups.load(self, tp.partition, records)
            }
            Ok(records) => self.load_txns(tp.partition, records),
            Err(reason) => {
                error!(partition = %tp, %reason, "loading a coordinator partition failed; its groups or transactions are unavailable")
            }
        }
    }

    /// Applies records stored at `first_offset`, `first_offset + 1`, ... in order (see
    /// [`Self::apply_metadata`]); the partitions they created that could not be opened,
    /// each with the offset of its record.
    pub async fn apply_metadata_batch(
        self: &Rc<Self>,
        first_offset: i64,
        records: &[MetadataRecord],
    ) -> Result<AppliedBatch, Fenced> {
        let mut batch = AppliedBatch::default();
        for (index, record) in records.iter().enumerate() {
            let offset = first_offset + index as i64;
            let applied = self.apply_metadata(offset, record).await?;
            batch.offline_at.extend(applied.offline.into_iter().map(|(tp, why)| (offset, tp, why)));
        }
        Ok(batch)
    }

    /// A new producer id from the controller.
    pub async fn new_producer_id(self: &Rc<Self>) -> Result<i64, KafkaError> {
        match self.call(0, ShardRequest::AllocateProducerId).await {
            ShardResponse::ProducerId(result) => result,
            _ => Err(KafkaError::new(code::COORDINATOR_NOT_AVAILABLE, "controller unavailable")),
        }
    }

    /// Forwards intents to the active controller (through shard 0); the outcome of each
    /// once this broker has applied what was stored.
    pub async fn controller_write(
        self: &Rc<Self>,
        intents: Vec<Intent>,
        validate_only: bool,
    ) -> Result<(Vec<Outcome>, i64), KafkaError> {
        match self.call(0, ShardRequest::ControllerWrite { intents, validate_only }).await {
            ShardResponse::Written(result) => result,
            _ => Err(KafkaError::new(code::NOT_CONTROLLER, "controller unavailable")),
        }
    }

    /// Asks the active controller (through shard 0).
    pub async fn controller_call(
        self: &Rc<Self>,
        request: ControllerRequest,
    ) -> Result<ControllerResponse, KafkaError> {
        match self.call(0, ShardRequest::ControllerCall(request)).await {
            ShardResponse::ControllerAnswer(result) => result,
            _ => Err(KafkaError::new(code::NOT_CONTROLLER, "controller unavailable")),
        }
    }

    /// Routes a metadata change to the controller shard and waits for it to be applied
    /// everywhere. `Ok` once it is stored and applied, with the partitions it created that
    /// could not be opened (they exist, offline).
    pub async fn change_metadata(
        self: &Rc<Self>,
        record: MetadataRecord,
        validate_only: bool,
    ) -> Result<Applied, KafkaError> {
        self.change_intent(crate::controller::intent_of(record)?, validate_only).await
    }

    /// [`Self::change_metadata`] of an intent (what the controller is asked to decide).
    pub async fn change_intent(
        self: &Rc<Self>,
        intent: Intent,
        validate_only: bool,
    ) -> Result<Applied, KafkaError> {
        match self.call(0, ShardRequest::Controller { intent, validate_only }).await {
            ShardResponse::Controller(result) => result,
            _ => Err(KafkaError::new(code::NOT_CONTROLLER, "controller unavailable")),
        }
    }

    /// Appends records (key, value) to an internal topic's partition on this shard, as one
    /// batch; `txn`: a transactional batch of that producer (id, epoch).
    pub async fn append_records(
        &self,
        tp: &TopicPartition,
        writes: Vec<Write>,
        txn: Option<(i64, i16)>,
    ) -> Result<(), KafkaError> {
        if let Some(fenced) = self.metadata_cache.fenced() {
            return Err(KafkaError::new(code::NOT_COORDINATOR, fenced.to_string()));
        }
        self.replicas.append_records(tp, writes, txn).await
    }

    /// Writes a transaction's markers to `partitions`: on this broker's shards where it
    /// leads them, and through WriteTxnMarkers to the leaders of the others (Kafka's
    /// coordinator sends markers to each partition's leader). The first failure, if any:
    /// the coordinator retries them all (a marker written twice is ignored by readers).
    pub async fn write_markers(
        self: &Rc<Self>,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        partitions: &[TopicPartition],
    ) -> Result<(), KafkaError> {
        let node = self.config.node_id;
        let mut local = Vec::new();
        let mut remote: std::collections::BTreeMap<i32, Vec<TopicPartition>> =
            std::collections::BTreeMap::new();
        for tp in partitions {
            match self.metadata_cache.leader(&tp.topic, tp.partition) {
                None => local.push(tp.clone()),
                Some((leader, _)) if leader == node => local.push(tp.clone()),
                Some((leader, _)) if leader >= 0 => {
                    remote.entry(leader).or_default().push(tp.clone())
                }
                Some(_) => {
                    return Err(KafkaError::new(
                        code::NOT_LEADER_OR_FOLLOWER,
                        format!("{tp} has no leader"),
                    ))
                }
            }
        }
        for (leader, partitions) in remote {
            crate::replication::send_markers(self, leader, producer_id, epoch, commit, &partitions)
                .await?;
        }
        let results = self.write_local_markers(producer_id, epoch, commit, &local).await;
        results.into_iter().find_map(Result::err).map_or(Ok(()), Err)
    }

    /// Writes a transaction's markers to `partitions` on this broker's shards, one result
    /// per partition.
    pub async fn write_local_markers(
        self: &Rc<Self>,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        partitions: &[TopicPartition],
    ) -> Vec<Result<(), KafkaError>> {
        self.scatter(
            partitions.to_vec(),
            |tp| tp,
            |partitions| ShardRequest::WriteMarkers { producer_id, epoch, commit, partitions },
            |response| match response {
                ShardResponse::Markers(results) => Some(results),
                _ => None,
            },
            || Err(KafkaError::new(code::NOT_LEADER_OR_FOLLOWER, "shard unavailable")),
        )
        .await
    }

    /// Writes one transaction marker on this shard (see
    /// [`ReplicaManager::write_marker`]); in `__consumer_offsets` the group coordinator
    /// then applies or drops the transaction's offsets.
    async fn write_marker(
        &self,
        tp: &TopicPartition,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), KafkaError> {
        let written = self.replicas.write_marker(tp, producer_id, epoch, commit).await?;
        if written && tp.topic == OFFSETS_TOPIC {
            self.groups.complete_txn(self, tp.partition, producer_id, commit);
        }
        Ok(())
    }

    /// Loads every `__consumer_offsets` and `__transaction_state` partition this shard
    /// owns into its coordinators.
    pub(crate) async fn load_coordinators(self: &Rc<Self>) {
        let mut owned = self.replicas.of_topic(OFFSETS_TOPIC);
        owned.extend(self.replicas.of_topic(TXN_TOPIC));
        for tp in owned {
            // Only the leader coordinates; a follower loads when it becomes leader.
            if self.leads_in_metadata(&tp) {
                self.load_coordinator(tp).await;
            }
        }
    }

    /// Logs the fetched record bytes sent so far, by how they were sent.
    pub fn log_fetch_sends(&self) {
        let zero_copy = self.fetch_sends.zero_copy_bytes.get();
        let copied = self.fetch_sends.copied_bytes.get();
        let total = zero_copy + copied;
        let share = if total == 0 { 0.0 } else { zero_copy as f64 * 100.0 / total as f64 };
        info!(
            shard = self.id,
            zero_copy_bytes = zero_copy,
            copied_bytes = copied,
            cached_bytes = self.fetch_sends.cached_bytes.get(),
            warmed_bytes = self.fetch_sends.warmed_bytes.get(),
            zero_copy_percent = format!("{share:.4}"),
            "fetch bytes sent"
        );
    }

    pub(crate) async fn serve_mesh(self: Rc<Self>, receivers: MeshReceivers<MeshMsg>) {
        let mut tasks = Vec::new();
        for (peer, receiver) in receivers {
            let shard = self.clone();
            tasks.push(glommio::spawn_local(async move {
                while let Some(message) = receiver.recv().await {
                    match message {
                        MeshMsg::Request { id, body } => {
                            let shard = shard.clone();
                            glommio::spawn_local(async move {
                                let response = shard.handle(body).await;
                                let _ = shard
                                    .mesh
                                    .send_to(peer, MeshMsg::Response { id, body: response })
                                    .await;
                            })
                            .detach();
                        }
                        MeshMsg::Response { id, body } => {
                            if let Some(sender) = shard.pending.borrow_mut().remove(&id) {
                                let _ = sender.try_send(body);
                            }
                        }
                    }
                }
            }));
        }
        for task in tasks {
            task.await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use sluice_engine::batch::{encode_batch, EncodeOptions, Record};

    use super::*;
    use crate::metadata_cache::Fenced;
    use crate::replica::OfflinePartitions;

    fn produce(tp: &TopicPartition) -> ShardRequest {
        let record = Record { key: None, value: Some(b"v".to_vec()), timestamp: 1 };
        let batch = encode_batch(&[record], EncodeOptions::default());
        let part = ProducePart { tp: tp.clone(), records: Some(BytesMut::from(&batch[..])) };
        ShardRequest::Produce { acks: 1, timeout_ms: 30_000, parts: vec![part] }
    }

    /// A shard that missed a metadata record stops serving: its partitions answer as a
    /// shard that is gone, and it refuses every later record, even the one that was due.
    #[test]
    fn a_fenced_shard_serves_nothing_and_refuses_later_records() {
        sluice_engine::runtime::run_local(async {
            let dir = tempfile::tempdir().unwrap();
            let mut config = crate::config::test_config();
            config.data_dir = dir.path().to_path_buf();
            let config = Arc::new(config);
            let ends = crate::mesh::build(1, 16).into_iter().next().unwrap();
            let (mesh, _receivers) =
                crate::mesh::connect(ends, Duration::from_secs(10)).await.unwrap();
            let clock = SystemClock::new();
            let metadata_cache = Rc::new(MetadataCache::new(MetadataImage::default()));
            let offline = Arc::new(OfflinePartitions::default());
            let replicas = ReplicaManager::new(
                0,
                config.clone(),
                clock.clone(),
                metadata_cache.clone(),
                offline,
            );
            let shard = Rc::new(Shard::new(ShardParts {
                id: 0,
                config,
                clock,
                metadata_cache,
                replicas,
                mesh,
                controller: None,
                stop: Arc::new(AtomicBool::new(false)),
            }));
            let tp = TopicPartition::new("t", 0);
            let create = MetadataRecord::CreateTopic {
                name: "t".into(),
                topic_id: [7; 16],
                partitions: 1,
                replication_factor: 1,
                configs: vec![],
            };
            assert!(shard.apply_metadata(0, &create).await.unwrap().offline.is_empty());
            let placed = MetadataRecord::Partition(sluice_engine::metadata::PartitionRecord::new(
                [7; 16],
                0,
                vec![0],
            ));
            assert!(shard.apply_metadata(1, &placed).await.unwrap().offline.is_empty());
            match shard.handle(produce(&tp)).await {
                ShardResponse::Produce(results) => assert_eq!(results[0].error, None),
                other => panic!("{other:?}"),
            }
            let delete = MetadataRecord::DeleteTopic { name: "t".into() };
            let gap = shard.apply_metadata(3, &delete).await.unwrap_err();
            assert_eq!(gap, Fenced::OutOfOrder { offset: 3, expected: 2 });
            assert!(shard.stop_fired.get(), "its connections are told to close");
            assert!(matches!(shard.handle(produce(&tp)).await, ShardResponse::Unavailable));
            let due = ShardRequest::Apply { first_offset: 2, records: vec![delete] };
            match shard.handle(due).await {
                ShardResponse::Applied(Err(fenced)) => assert_eq!(fenced, gap),
                other => panic!("{other:?}"),
            }
            // Nothing was applied behind the fence: the partition is still there.
            assert!(shard.replicas.contains(&tp));
            assert!(dir.path().join("t-0").is_dir());
            let written = shard.append_records(&tp, vec![(b"k".to_vec(), None)], None).await;
            assert_eq!(written.unwrap_err().code, code::NOT_COORDINATOR);
            shard.replicas.close_all().await;
        });
    }
}
