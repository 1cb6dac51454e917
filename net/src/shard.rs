//! One shard: the state a core owns end to end (its partitions, its copy of the cluster
//! metadata, its fetch purgatory) and the mesh that carries requests for other shards'
//! partitions. Everything here lives on one glommio executor and is never shared: other
//! shards reach it only through [`MeshMsg`]s.
//!
//! Shard 0 is also the controller: the one writer of the metadata log. A metadata change
//! is validated and stored there, then applied by every shard (each opens or closes the
//! partitions it owns) before the admin request is answered.

use std::cell::{Cell, Ref, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glommio::channels::local_channel::{self, LocalSender};
use sluice_engine::batch::{self, BatchIter};
use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::{Clock, SystemClock};
use sluice_engine::io::IoMode;
use sluice_engine::log::{AppendInfo, Log, LogError, OpenHints};
use sluice_engine::metadata::{MetadataImage, MetadataLog, MetadataRecord};
use sluice_engine::producer::{
    encode_marker, BatchIdentity, Marker, ProducerStates, ProducerView, SequenceError, Verdict,
};
use sluice_engine::replay;
use sluice_engine::shard::{shard_of, ShardId};
use sluice_engine::sync::FifoLock;
use sluice_engine::timer::{
    DelayedOperation, DriverOptions, Expired, Purgatory, PurgatoryOptions, TimerDriver, Watched,
};
use sluice_engine::txnindex::{AbortedTxn, TxnIndex};
use tracing::{debug, error, info, warn};

use crate::config::{BrokerConfig, TopicSettings};
use crate::error::{code, from_batch_error, from_log_error, from_metadata_error, KafkaError};
use crate::group::coordinator::{Coordinator, Write};
use crate::group::{offsets_partition, GroupAnswer, GroupCall, OFFSETS_TOPIC};
use crate::mesh::{Mesh, MeshEnds, MeshReceivers};
use crate::recent::RecentBatches;
use crate::reqmetrics::RequestMetrics;
use crate::throttle::LogThrottle;
use crate::txn::coordinator::TxnCoordinator;
use crate::txn::{txn_partition, TxnAnswer, TxnCall, TXN_TOPIC};
use crate::zerocopy::{FileRange, RecordBytes, SendStats};

/// Messages between shards waiting in one mesh channel before senders wait.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;
/// Delayed fetches one shard parks at once.
const FETCH_WAITERS_MAX: usize = 100_000;
/// Direct mode: the bytes of recently appended batches a shard keeps for tail fetches.
const RECENT_BATCHES_BYTES: u64 = 64 << 20;
/// How long a shard waits for its peers to join the mesh at start-up.
const MESH_JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The leader epoch of every partition while the broker is a single node. Replication
/// will bump it on leader changes; batches are stamped with it on append.
pub const LEADER_EPOCH: i32 = 0;

/// The partitions of the broker that could not be opened, with why. The owning shard
/// writes an entry when an open fails (start-up, CreateTopics, CreatePartitions) and
/// removes it when one succeeds; every shard reads them for its Metadata answers, where
/// an offline partition has no leader (Kafka's answer for a partition whose only replica
/// is offline). Shared by the shards (a lock and a count): it changes only when
/// partitions open, and a Metadata answer looks only while the count is not zero.
#[derive(Debug, Default)]
pub struct OfflinePartitions {
    reasons: std::sync::RwLock<HashMap<TopicPartition, String>>,
    count: AtomicUsize,
}

impl OfflinePartitions {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TopicPartition, String>> {
        // A panic while holding the lock leaves a plain map behind: still usable.
        self.reasons.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TopicPartition, String>> {
        self.reasons.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn insert(&self, tp: TopicPartition, reason: String) {
        let mut reasons = self.write();
        reasons.insert(tp, reason);
        self.count.store(reasons.len(), Ordering::Release);
    }

    pub fn remove(&self, tp: &TopicPartition) {
        if self.is_empty() {
            return;
        }
        let mut reasons = self.write();
        reasons.remove(tp);
        self.count.store(reasons.len(), Ordering::Release);
    }

    /// Forgets every partition of a deleted topic.
    pub fn forget_topic(&self, topic: &str) {
        if self.is_empty() {
            return;
        }
        let mut reasons = self.write();
        reasons.retain(|tp, _| tp.topic != topic);
        self.count.store(reasons.len(), Ordering::Release);
    }

    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Why `tp` is offline, if it is.
    pub fn reason(&self, tp: &TopicPartition) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        self.read().get(tp).cloned()
    }

    /// The offline partitions of `topic`, sorted.
    pub fn of_topic(&self, topic: &str) -> Vec<i32> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut partitions: Vec<i32> =
            self.read().keys().filter(|tp| tp.topic == topic).map(|tp| tp.partition).collect();
        partitions.sort_unstable();
        partitions
    }
}

/// What applying a stored metadata change did: the partitions it created that could not
/// be opened, with why (they exist, offline).
#[derive(Debug, Default)]
pub struct Applied {
    pub offline: Vec<(TopicPartition, String)>,
}

/// Reasons quoted in a CreateTopics or CreatePartitions error message; the log has all.
const OFFLINE_REASONS_QUOTED: usize = 3;

impl Applied {
    /// The error CreateTopics and CreatePartitions answer for a topic some of whose new
    /// partitions could not be opened: KAFKA_STORAGE_ERROR ("disk error when trying to
    /// access log file on the disk"), with how many and why in the message.
    pub fn storage_error(&self) -> Option<KafkaError> {
        if self.offline.is_empty() {
            return None;
        }
        let mut offline: Vec<&(TopicPartition, String)> = self.offline.iter().collect();
        offline.sort_by_key(|(tp, _)| tp.partition);
        let quoted: Vec<String> = offline
            .iter()
            .take(OFFLINE_REASONS_QUOTED)
            .map(|(tp, reason)| format!("{tp}: {reason}"))
            .collect();
        let more = offline.len().saturating_sub(OFFLINE_REASONS_QUOTED);
        let message = format!(
            "the topic is stored, but {} of its new partitions could not be opened and are offline ({}{})",
            offline.len(),
            quoted.join("; "),
            if more > 0 { format!("; and {more} more") } else { String::new() },
        );
        Some(KafkaError::new(code::KAFKA_STORAGE_ERROR, message))
    }
}

/// One partition this shard leads. Lives on the shard `shard_of(topic, partition)`.
pub struct Partition {
    pub tp: TopicPartition,
    pub log: Log,
    pub settings: RefCell<TopicSettings>,
    /// Producers' sequences and open transactions (rebuilt at open from the shutdown
    /// snapshot and the log after it; see docs/ARCHITECTURE.md).
    pub producers: RefCell<ProducerStates>,
    /// Direct mode: the most recently appended batches, for tail fetches.
    pub recent: RecentBatches,
    /// Aborted transactions, by segment (the `.txnindex` files).
    pub aborted: RefCell<TxnIndex>,
}

impl Partition {
    /// With one replica the high watermark is the log end offset: every appended batch
    /// is on all (one) in-sync replicas.
    pub fn high_watermark(&self) -> i64 {
        self.log.log_end_offset()
    }

    /// The last stable offset: below it every transaction has ended (committed or
    /// aborted); read_committed consumers read up to it.
    pub fn last_stable_offset(&self) -> i64 {
        let high_watermark = self.high_watermark();
        self.producers
            .borrow()
            .first_unstable_offset()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// Where a fetch may read up to: the high watermark, or the last stable offset for
    /// read_committed.
    pub fn fetch_bound(&self, read_committed: bool) -> i64 {
        if read_committed {
            self.last_stable_offset()
        } else {
            self.high_watermark()
        }
    }
}

/// A request one shard sends another (or runs on itself through the same path).
#[derive(Debug)]
pub enum ShardRequest {
    Produce {
        acks: i16,
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
        record: MetadataRecord,
        validate_only: bool,
    },
    /// From the controller: apply a stored change.
    Apply(MetadataRecord),
    /// To a group's coordinator shard.
    Group(GroupCall),
    /// To the controller: a new producer id.
    AllocateProducerId,
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
    Applied(Applied),
    Group(GroupAnswer),
    ProducerId(Result<i64, KafkaError>),
    Txn(TxnAnswer),
    Markers(Vec<Result<(), KafkaError>>),
    Producers(Vec<Result<Vec<ProducerView>, KafkaError>>),
    /// The target shard is gone (shutting down).
    Unavailable,
}

#[derive(Debug)]
pub enum MeshMsg {
    Request { id: u64, body: ShardRequest },
    Response { id: u64, body: ShardResponse },
}

#[derive(Debug)]
pub struct ProducePart {
    pub tp: TopicPartition,
    /// The partition's record batches, mutable: the log assigns offsets in place. They
    /// are usually the request frame's own bytes (see `handlers::produce`), not a copy.
    pub records: Option<BytesMut>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceResult {
    pub error: Option<KafkaError>,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

impl ProduceResult {
    pub fn failed(error: KafkaError) -> Self {
        Self { error: Some(error), base_offset: -1, log_append_time_ms: -1, log_start_offset: -1 }
    }
}

#[derive(Debug, Clone)]
pub struct FetchPart {
    pub tp: TopicPartition,
    pub offset: i64,
    pub max_bytes: u64,
    pub current_leader_epoch: i32,
    /// Isolation level read_committed: read up to the last stable offset.
    pub read_committed: bool,
}

/// A partition a parked fetch waits on: it wakes when the partition's bound (high
/// watermark, or last stable offset for read_committed) passes `seen`.
#[derive(Debug, Clone)]
pub struct Watch {
    pub tp: TopicPartition,
    pub seen: i64,
    pub read_committed: bool,
}

#[derive(Debug, Clone)]
pub struct FetchResult {
    pub error: Option<KafkaError>,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// read_committed: the aborted transactions (producer id, first offset) overlapping
    /// the records; `None` for read_uncommitted.
    pub aborted: Option<Vec<(i64, i64)>>,
    pub records: RecordBytes,
}

impl FetchResult {
    pub fn failed(error: KafkaError) -> Self {
        Self {
            error: Some(error),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            aborted: None,
            records: RecordBytes::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListOffsetsPart {
    pub tp: TopicPartition,
    pub timestamp: i64,
    pub current_leader_epoch: i32,
    /// Isolation level read_committed: "latest" is the last stable offset.
    pub read_committed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsResult {
    pub error: Option<KafkaError>,
    pub timestamp: i64,
    pub offset: i64,
}

impl ListOffsetsResult {
    pub fn failed(error: KafkaError) -> Self {
        Self { error: Some(error), timestamp: -1, offset: -1 }
    }
}

#[derive(Debug, Clone)]
pub struct EpochPart {
    pub tp: TopicPartition,
    pub current_leader_epoch: i32,
    pub leader_epoch: i32,
}

fn sequence_error(error: SequenceError, batch: &BatchIdentity) -> KafkaError {
    let (code, what) = match error {
        SequenceError::InvalidProducerEpoch => (code::INVALID_PRODUCER_EPOCH, "an old epoch"),
        SequenceError::OutOfOrderSequence => {
            (code::OUT_OF_ORDER_SEQUENCE_NUMBER, "a sequence out of order")
        }
        SequenceError::UnknownProducerId => {
            (code::UNKNOWN_PRODUCER_ID, "an unknown producer not at sequence 0")
        }
        // The earlier attempt is still being written: the client retries.
        SequenceError::DuplicateInFlight => {
            (code::REQUEST_TIMED_OUT, "a retry of a batch in flight")
        }
    };
    KafkaError::new(
        code,
        format!(
            "batch of producer {} epoch {} sequence {}: {what}",
            batch.producer_id, batch.epoch, batch.first_sequence
        ),
    )
}

/// A batch of a produce request: where it is in the request's bytes and what it says.
struct Extent {
    start: usize,
    size: usize,
    identity: Option<BatchIdentity>,
    count: i64,
    transactional: bool,
    max_timestamp: i64,
}

/// Kafka's special ListOffsets timestamps.
pub mod list_offsets {
    pub const LATEST: i64 = -1;
    pub const EARLIEST: i64 = -2;
    pub const MAX_TIMESTAMP: i64 = -3;
    pub const EARLIEST_LOCAL: i64 = -4;
    pub const LATEST_TIERED: i64 = -5;
}

/// A fetch parked until one of its partitions grows past the offset it last saw.
pub struct FetchWaiter {
    positions: Vec<Watch>,
    notify: LocalSender<()>,
}

/// What a parked fetch checks: the shard's partitions.
pub struct LogEnds<'a>(&'a HashMap<TopicPartition, Rc<Partition>>);

impl<'a> DelayedOperation<LogEnds<'a>> for FetchWaiter {
    fn try_complete(&mut self, ends: &mut LogEnds<'a>) -> bool {
        self.positions.iter().any(|watch| match ends.0.get(&watch.tp) {
            Some(partition) => partition.fetch_bound(watch.read_committed) > watch.seen,
            // Deleted or moved: the fetch answers now with the error.
            None => true,
        })
    }
}

type FetchPurgatory = Purgatory<TopicPartition, FetchWaiter>;

/// The controller's state, on shard 0 only.
struct Controller {
    log: RefCell<MetadataLog>,
    /// One metadata change at a time, from validation to every shard having applied it.
    lock: FifoLock,
    /// The next producer id to hand out; ids up to the image's `producer_ids_end` are
    /// allocated (stored), so none is reused after a restart.
    next_producer_id: Cell<i64>,
    /// One producer id allocation at a time.
    producer_ids: FifoLock,
}

/// Producer ids stored per metadata record.
const PRODUCER_ID_BLOCK: i64 = 1000;

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

/// What a shard needs to start.
pub struct ShardStart {
    pub id: ShardId,
    pub config: Arc<BrokerConfig>,
    pub image: MetadataImage,
    /// Shard 0 only.
    pub metadata_log: Option<MetadataLog>,
    /// Recovery hints from the checkpoint files, for the partitions this shard owns.
    pub hints: BTreeMap<TopicPartition, OpenHints>,
    pub mesh: MeshEnds<MeshMsg>,
    pub stop: Arc<AtomicBool>,
    /// Called once the shard has opened (recovered) every partition it owns.
    pub on_opened: Box<dyn FnOnce() + Send>,
    /// The broker's partitions that could not be opened (shared by all shards).
    pub offline: Arc<OfflinePartitions>,
}

/// The mesh ends of every shard (`[i]` for shard i), built once per broker.
pub fn mesh(shards: usize) -> Vec<MeshEnds<MeshMsg>> {
    crate::mesh::build(shards, MESH_CHANNEL_CAPACITY)
}

/// What a shard reports when it stops: per partition, the recovery point and log start.
pub type ShardCheckpoints = Vec<(TopicPartition, i64, i64)>;

pub struct Shard {
    pub id: ShardId,
    pub config: Arc<BrokerConfig>,
    pub clock: SystemClock,
    log_clock: Rc<dyn Clock>,
    metadata: RefCell<MetadataImage>,
    partitions: RefCell<HashMap<TopicPartition, Rc<Partition>>>,
    /// Partitions of the broker that could not be opened, with the reason: this shard
    /// writes its own, and reads all for Metadata answers.
    offline: Arc<OfflinePartitions>,
    mesh: Mesh<MeshMsg>,
    pending: RefCell<HashMap<u64, LocalSender<ShardResponse>>>,
    next_call_id: Cell<u64>,
    fetch_waiters: TimerDriver<FetchPurgatory, SystemClock>,
    controller: Option<Controller>,
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
    /// Direct mode's cache of recent batches over all partitions, oldest first:
    /// (partition, chunk base offset, chunk bytes), and the bytes it holds.
    recent_order: RefCell<VecDeque<(Weak<Partition>, i64, u64)>>,
    recent_bytes: Cell<u64>,
    stop_fired: Cell<bool>,
    stop_wakers: RefCell<HashMap<u64, std::task::Waker>>,
    /// "append failed" lines: a full disk fails every produce the same way.
    append_failures: LogThrottle,
}

impl Shard {
    pub fn shards(&self) -> usize {
        self.config.shards
    }

    pub fn owner_of(&self, tp: &TopicPartition) -> ShardId {
        shard_of(&tp.topic, tp.partition, self.config.shards)
    }

    /// The broker's partitions that could not be opened (all shards').
    pub fn offline_partitions(&self) -> &OfflinePartitions {
        &self.offline
    }

    /// This shard's copy of the cluster metadata. Do not hold across an `await`.
    pub fn metadata(&self) -> Ref<'_, MetadataImage> {
        self.metadata.borrow()
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Resolves once the shard is stopping. Every connection waits on this, so it is a
    /// waker registry fired once by the housekeeping loop (which polls the process-wide
    /// flag), not a timer per connection; a dropped future leaves the registry.
    pub fn stopped(&self) -> StopListener<'_> {
        let id = self.next_call_id.get();
        self.next_call_id.set(id + 1);
        StopListener { shard: self, id }
    }

    fn fire_stop(&self) {
        self.stop_fired.set(true);
        let wakers = std::mem::take(&mut *self.stop_wakers.borrow_mut());
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    fn partition(&self, tp: &TopicPartition) -> Result<Rc<Partition>, KafkaError> {
        if let Some(partition) = self.partitions.borrow().get(tp) {
            return Ok(partition.clone());
        }
        if let Some(reason) = self.offline.reason(tp) {
            return Err(KafkaError::new(code::KAFKA_STORAGE_ERROR, reason));
        }
        let known = self.metadata().topic(&tp.topic).is_some_and(|t| tp.partition < t.partitions);
        if known && self.owner_of(tp) != self.id {
            return Err(KafkaError::new(
                code::NOT_LEADER_OR_FOLLOWER,
                "partition on another shard",
            ));
        }
        Err(KafkaError::new(code::UNKNOWN_TOPIC_OR_PARTITION, format!("unknown partition {tp}")))
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

    async fn remote(&self, target: ShardId, request: ShardRequest) -> ShardResponse {
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

    /// Serves a request on this shard.
    async fn handle(self: &Rc<Self>, request: ShardRequest) -> ShardResponse {
        match request {
            ShardRequest::Produce { acks, parts } => {
                let mut results = Vec::with_capacity(parts.len());
                for part in parts {
                    results.push(self.produce_part(acks, part).await);
                }
                ShardResponse::Produce(results)
            }
            ShardRequest::Fetch(parts) => {
                let mut results = Vec::with_capacity(parts.len());
                for part in parts {
                    results.push(self.fetch_part(part).await);
                }
                ShardResponse::Fetch(results)
            }
            ShardRequest::WatchFetch { positions, wait_ms } => {
                self.watch_fetch(positions, wait_ms).await;
                ShardResponse::Watched
            }
            ShardRequest::ListOffsets(parts) => {
                let mut results = Vec::with_capacity(parts.len());
                for part in parts {
                    results.push(self.list_offsets_part(part).await);
                }
                ShardResponse::ListOffsets(results)
            }
            ShardRequest::DeleteRecords(parts) => {
                let mut results = Vec::with_capacity(parts.len());
                for (tp, offset) in parts {
                    results.push(self.delete_records_part(&tp, offset).await);
                }
                ShardResponse::DeleteRecords(results)
            }
            ShardRequest::OffsetForLeaderEpoch(parts) => ShardResponse::OffsetForLeaderEpoch(
                parts.iter().map(|part| self.offset_for_leader_epoch_part(part)).collect(),
            ),
            ShardRequest::Controller { record, validate_only } => {
                ShardResponse::Controller(self.controller_change(record, validate_only).await)
            }
            ShardRequest::Apply(record) => {
                ShardResponse::Applied(self.apply_metadata(&record).await)
            }
            ShardRequest::Group(call) => ShardResponse::Group(self.groups.call(self, call).await),
            ShardRequest::AllocateProducerId => {
                ShardResponse::ProducerId(self.allocate_producer_id().await)
            }
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
                    .map(|tp| self.partition(tp).map(|p| p.producers.borrow().views()))
                    .collect(),
            ),
        }
    }

    // ---- partition operations (on the owning shard) ----

    async fn produce_part(&self, acks: i16, part: ProducePart) -> ProduceResult {
        let partition = match self.partition(&part.tp) {
            Ok(partition) => partition,
            Err(error) => return ProduceResult::failed(error),
        };
        let (log_append_time, min_insync_replicas, max_message_bytes) = {
            let settings = partition.settings.borrow();
            (settings.log_append_time, settings.min_insync_replicas, settings.log.max_message_bytes)
        };
        // One replica is in sync; acks=all needs min.insync.replicas of them.
        if acks == -1 && min_insync_replicas > 1 {
            return ProduceResult::failed(KafkaError::new(
                code::NOT_ENOUGH_REPLICAS,
                format!("1 in-sync replica, min.insync.replicas is {min_insync_replicas}"),
            ));
        }
        if part.tp.topic == OFFSETS_TOPIC || part.tp.topic == TXN_TOPIC {
            // Kafka's answer: only the coordinators write their internal topics.
            return ProduceResult::failed(KafkaError::new(
                code::INVALID_TOPIC_EXCEPTION,
                format!("cannot append to internal topic {}", part.tp.topic),
            ));
        }
        let Some(records) = part.records.filter(|r| !r.is_empty()) else {
            return ProduceResult::failed(KafkaError::new(code::CORRUPT_MESSAGE, "no records"));
        };
        // The log rewrites offsets in place (and with LogAppendTime, timestamps and the
        // CRC): `records` is mutable, and usually the request frame itself.
        let mut bytes = records;
        let mut extents = Vec::new();
        let mut at = 0usize;
        // The CRC is checked once, by `Log::append`, before anything is written; except
        // with LogAppendTime, where the CRC is recomputed below and must be checked first.
        let check = |b: &batch::Batch<'_>| {
            if log_append_time {
                b.validate(max_message_bytes)
            } else {
                b.validate_structure(max_message_bytes)
            }
        };
        for batch in BatchIter::new(&bytes) {
            let batch = match batch.and_then(|b| check(&b).map(|()| b)) {
                Ok(batch) => batch,
                Err(error) => {
                    warn!(partition = %part.tp, %error, "rejected produce batch");
                    return ProduceResult::failed(from_batch_error(&error));
                }
            };
            // Markers are the coordinator's to write; a transaction needs a producer id.
            let refused = if batch.is_control() {
                Some("control batches are written by the broker only")
            } else if batch.is_transactional() && batch.producer_id() < 0 {
                Some("a transactional batch without a producer id")
            } else {
                None
            };
            if let Some(reason) = refused {
                warn!(partition = %part.tp, reason, "rejected produce batch");
                return ProduceResult::failed(KafkaError::new(code::INVALID_RECORD, reason));
            }
            let identity = (batch.producer_id() >= 0).then(|| {
                BatchIdentity::new(
                    batch.producer_id(),
                    batch.producer_epoch(),
                    batch.base_sequence(),
                    batch.last_offset_delta(),
                )
            });
            extents.push(Extent {
                start: at,
                size: batch.size(),
                identity,
                count: i64::from(batch.last_offset_delta()) + 1,
                transactional: batch.is_transactional(),
                max_timestamp: batch.max_timestamp(),
            });
            at += batch.size();
        }
        if at != bytes.len() {
            return ProduceResult::failed(KafkaError::new(code::CORRUPT_MESSAGE, "trailing bytes"));
        }
        // Idempotent producers: check sequences and stage the batches before appending,
        // in arrival order, so pipelined requests are checked against each other.
        let staged = match Self::check_sequences(&partition, &extents) {
            Ok(staged) => staged,
            Err(Ok(duplicate_base_offset)) => {
                debug!(partition = %part.tp, duplicate_base_offset, "duplicate batch not written again");
                return ProduceResult {
                    error: None,
                    base_offset: duplicate_base_offset,
                    log_append_time_ms: -1,
                    log_start_offset: partition.log.log_start_offset(),
                };
            }
            Err(Err(error)) => {
                debug!(partition = %part.tp, message = %error.message, "produce refused");
                return ProduceResult::failed(error);
            }
        };
        let now_ms = self.clock.wall_ms();
        for extent in &extents {
            let batch = &mut bytes[extent.start..extent.start + extent.size];
            batch::set_partition_leader_epoch(batch, LEADER_EPOCH);
            if log_append_time {
                batch::set_log_append_time(batch, now_ms);
            }
        }
        // The producer state moves with the log end, in the same step: in direct mode the
        // append returns only once its write has landed, and meanwhile a read_committed
        // fetch must already see a new transaction as open (the LSO held before it).
        let record_producers = |info: &AppendInfo| {
            if staged.is_empty() {
                return;
            }
            let mut producers = partition.producers.borrow_mut();
            let mut offset = info.base_offset;
            for extent in &extents {
                if let Some(identity) = extent.identity {
                    producers.appended(identity, offset, offset + extent.count - 1);
                    producers.touch(identity.producer_id, extent.max_timestamp);
                    if extent.transactional {
                        producers.begin_txn(identity.producer_id, identity.epoch, offset);
                    }
                }
                offset += extent.count;
            }
        };
        match partition.log.append_then(&mut bytes, record_producers).await {
            Ok(info) => {
                if partition.log.options().io_mode == IoMode::Direct {
                    self.remember(
                        &partition,
                        info.base_offset,
                        info.last_offset + 1,
                        bytes.freeze(),
                    );
                }
                self.on_append(&part.tp);
                ProduceResult {
                    error: None,
                    base_offset: info.base_offset,
                    log_append_time_ms: if log_append_time { now_ms } else { -1 },
                    log_start_offset: partition.log.log_start_offset(),
                }
            }
            Err(error) => {
                if matches!(error, LogError::Batch(_)) {
                    warn!(partition = %part.tp, %error, "rejected produce batch");
                } else if let Some(held_back) = self.append_failures.admit(Instant::now()) {
                    error!(
                        partition = %part.tp, %error, failures_not_logged = held_back,
                        "append failed (at most one such line per second per shard)"
                    );
                }
                let mut producers = partition.producers.borrow_mut();
                for identity in staged {
                    producers.append_failed(identity.producer_id);
                }
                ProduceResult::failed(from_log_error(&error))
            }
        }
    }

    /// Checks the idempotent batches of a produce against the partition's producer
    /// state. `Ok`: the staged batches (maybe none); `Err(Ok(offset))`: the request is a
    /// duplicate of the batch written at `offset`; `Err(Err(_))`: refused.
    fn check_sequences(
        partition: &Partition,
        extents: &[Extent],
    ) -> Result<Vec<BatchIdentity>, Result<i64, KafkaError>> {
        let mut producers = partition.producers.borrow_mut();
        let mut staged = Vec::new();
        let single = extents.len() == 1;
        for identity in extents.iter().filter_map(|extent| extent.identity) {
            let refused = match producers.check(identity) {
                Ok(Verdict::Append) => {
                    staged.push(identity);
                    continue;
                }
                Ok(Verdict::Duplicate { base_offset, .. }) if single => {
                    return Err(Ok(base_offset))
                }
                Ok(Verdict::Duplicate { .. }) => KafkaError::new(
                    code::DUPLICATE_SEQUENCE_NUMBER,
                    "a duplicate batch among others in one request",
                ),
                Err(error) => sequence_error(error, &identity),
            };
            for identity in staged {
                producers.append_failed(identity.producer_id);
            }
            return Err(Err(refused));
        }
        Ok(staged)
    }

    /// Wakes the fetches waiting on `tp`.
    fn on_append(&self, tp: &TopicPartition) {
        let partitions = self.partitions.borrow();
        let completed =
            self.fetch_waiters.with(|waiters| waiters.check_key(tp, &mut LogEnds(&partitions)));
        for done in completed {
            let _ = done.op.notify.try_send(());
        }
    }

    fn check_leader_epoch(current_leader_epoch: i32) -> Result<(), KafkaError> {
        // -1: the client does not know the epoch and asks us not to check.
        if current_leader_epoch < 0 || current_leader_epoch == LEADER_EPOCH {
            Ok(())
        } else if current_leader_epoch > LEADER_EPOCH {
            Err(KafkaError::new(code::UNKNOWN_LEADER_EPOCH, "leader epoch from the future"))
        } else {
            Err(KafkaError::new(code::FENCED_LEADER_EPOCH, "leader epoch is stale"))
        }
    }

    async fn fetch_part(&self, part: FetchPart) -> FetchResult {
        let partition = match self.partition(&part.tp) {
            Ok(partition) => partition,
            Err(error) => return FetchResult::failed(error),
        };
        if let Err(error) = Self::check_leader_epoch(part.current_leader_epoch) {
            return FetchResult::failed(error);
        }
        let high_watermark = partition.high_watermark();
        let last_stable_offset = partition.last_stable_offset();
        let bound = if part.read_committed { last_stable_offset } else { high_watermark };
        let log_start_offset = partition.log.log_start_offset();
        let aborted =
            part.read_committed.then(|| partition.aborted.borrow().collect(part.offset, bound));
        let answer = |error: Option<KafkaError>, records: RecordBytes| FetchResult {
            error,
            high_watermark,
            last_stable_offset,
            log_start_offset,
            aborted: aborted.clone(),
            records,
        };
        let none = RecordBytes::default;
        if part.offset < log_start_offset || part.offset > high_watermark {
            let message =
                format!("offset {} is outside [{log_start_offset}, {high_watermark}]", part.offset);
            return answer(Some(KafkaError::new(code::OFFSET_OUT_OF_RANGE, message)), none());
        }
        if part.offset >= bound || part.max_bytes == 0 {
            return answer(None, none());
        }
        // Direct mode: a tail fetch is served from the batches just appended.
        if let Some(batches) = partition.recent.read(part.offset, part.max_bytes, bound) {
            return answer(None, RecordBytes::Cached(batches));
        }
        let slice = match partition.log.read(part.offset, part.max_bytes, bound, true).await {
            Ok(slice) => slice,
            Err(error) => return answer(Some(from_log_error(&error)), none()),
        };
        let Some(file) = slice.file.as_ref() else { return answer(None, none()) };
        // Page-cache mode: hand out the file range; the connection's writer sends it with
        // sendfile. Direct mode: the DMA read is the one copy.
        match file.shared_fd() {
            Ok(Some(fd)) => {
                let range = FileRange { fd, position: slice.position, len: slice.bytes };
                return answer(None, RecordBytes::File(range));
            }
            Ok(None) => {}
            Err(error) => {
                error!(partition = %part.tp, %error, "fetch: cannot share the segment file");
                let error = KafkaError::new(code::KAFKA_STORAGE_ERROR, error.to_string());
                return answer(Some(error), none());
            }
        }
        match slice.read().await {
            Ok(bytes) => answer(None, RecordBytes::Memory(Bytes::copy_from_slice(&bytes))),
            Err(error) => {
                error!(partition = %part.tp, %error, "fetch read failed");
                answer(Some(from_log_error(&error)), none())
            }
        }
    }

    async fn watch_fetch(&self, positions: Vec<Watch>, wait_ms: u64) {
        let (sender, receiver) = local_channel::new_bounded(1);
        let keys: Vec<TopicPartition> = positions.iter().map(|watch| watch.tp.clone()).collect();
        let deadline_ms = self.clock.monotonic_ms().saturating_add(wait_ms);
        let waiter = FetchWaiter { positions, notify: sender };
        let parked = {
            let partitions = self.partitions.borrow();
            self.fetch_waiters.with(|waiters| {
                waiters.try_complete_else_watch(
                    waiter,
                    keys,
                    deadline_ms,
                    &mut LogEnds(&partitions),
                )
            })
        };
        match parked {
            Ok(Watched::Completed(_)) => {}
            Ok(Watched::Parked(_)) => {
                let _ = receiver.recv().await;
            }
            Err(rejected) => {
                // Purgatory full: wait out the time without being woken early.
                debug!(error = ?rejected.error, "fetch purgatory full");
                glommio::timer::sleep(Duration::from_millis(wait_ms)).await;
            }
        }
    }

    async fn list_offsets_part(&self, part: ListOffsetsPart) -> ListOffsetsResult {
        let failed = ListOffsetsResult::failed;
        let partition = match self.partition(&part.tp) {
            Ok(partition) => partition,
            Err(error) => return failed(error),
        };
        if let Err(error) = Self::check_leader_epoch(part.current_leader_epoch) {
            return failed(error);
        }
        let found = |timestamp, offset| ListOffsetsResult { error: None, timestamp, offset };
        let log = &partition.log;
        match part.timestamp {
            list_offsets::LATEST => found(-1, partition.fetch_bound(part.read_committed)),
            list_offsets::EARLIEST | list_offsets::EARLIEST_LOCAL => {
                found(-1, log.log_start_offset())
            }
            // No tiered storage: nothing is tiered.
            list_offsets::LATEST_TIERED => found(-1, -1),
            list_offsets::MAX_TIMESTAMP => match log.max_timestamp_and_offset() {
                Some(max) => found(max.timestamp, max.offset),
                None => found(-1, -1),
            },
            timestamp if timestamp >= 0 => match log.offset_for_timestamp(timestamp).await {
                Ok(Some(hit)) => found(hit.timestamp, hit.offset),
                Ok(None) => found(-1, -1),
                Err(error) => failed(from_log_error(&error)),
            },
            other => failed(KafkaError::new(code::INVALID_REQUEST, format!("timestamp {other}"))),
        }
    }

    async fn delete_records_part(
        &self,
        tp: &TopicPartition,
        offset: i64,
    ) -> Result<i64, KafkaError> {
        let partition = self.partition(tp)?;
        let high_watermark = partition.high_watermark();
        // -1 means "up to the high watermark".
        let offset = if offset == -1 { high_watermark } else { offset };
        if offset < 0 || offset > high_watermark {
            return Err(KafkaError::new(
                code::OFFSET_OUT_OF_RANGE,
                format!("offset {offset} is past the high watermark {high_watermark}"),
            ));
        }
        let start =
            partition.log.advance_log_start_offset(offset).map_err(|e| from_log_error(&e))?;
        // Whole segments below the new start go now rather than at the next retention pass.
        if let Err(error) = partition.log.apply_retention().await {
            warn!(partition = %tp, %error, "deleting segments after DeleteRecords failed");
        }
        Ok(start)
    }

    fn offset_for_leader_epoch_part(&self, part: &EpochPart) -> Result<(i32, i64), KafkaError> {
        let partition = self.partition(&part.tp)?;
        Self::check_leader_epoch(part.current_leader_epoch)?;
        // One epoch so far: it ends at the log end offset; later epochs are unknown.
        // Earlier epochs never existed and later ones are unknown: both undefined (-1).
        if part.leader_epoch == LEADER_EPOCH {
            Ok((LEADER_EPOCH, partition.log.log_end_offset()))
        } else {
            Ok((-1, -1))
        }
    }

    // ---- metadata ----

    async fn controller_change(
        self: &Rc<Self>,
        record: MetadataRecord,
        validate_only: bool,
    ) -> Result<Applied, KafkaError> {
        let Some(controller) = &self.controller else {
            return Err(KafkaError::new(code::NOT_CONTROLLER, "not the controller shard"));
        };
        let _permit = controller.lock.lock().await;
        self.metadata().check(&record).map_err(|e| from_metadata_error(&e))?;
        if validate_only {
            return Ok(Applied::default());
        }
        // Metadata changes are rare admin operations; the log is a plain file with an
        // fdatasync per record (see MetadataLog::append).
        controller.log.borrow_mut().append(&record).map_err(|error| {
            error!(%error, "writing the metadata log failed");
            from_metadata_error(&error)
        })?;
        info!(?record, "metadata change stored");
        // Every shard applies it, and says which of its partitions it could not open.
        let mut applied = Applied::default();
        for target in 0..self.shards() {
            if target == self.id {
                applied.offline.extend(self.apply_metadata(&record).await.offline);
                continue;
            }
            match self.remote(target, ShardRequest::Apply(record.clone())).await {
                ShardResponse::Applied(answer) => applied.offline.extend(answer.offline),
                _ => warn!(shard = target, "shard did not apply a metadata change (stopping?)"),
            }
        }
        Ok(applied)
    }

    /// Applies a stored metadata change to this shard's image and partitions, and returns
    /// the partitions it could not open.
    pub async fn apply_metadata(&self, record: &MetadataRecord) -> Applied {
        let mut applied = Applied::default();
        if let Err(error) = self.metadata.borrow_mut().apply(record) {
            error!(%error, ?record, "metadata change does not apply; image unchanged");
            return applied;
        }
        match record {
            MetadataRecord::CreateTopic { name, partitions, .. } => {
                for partition in 0..*partitions {
                    let tp = TopicPartition::new(name.clone(), partition);
                    if let Err(reason) = self.open_partition(tp.clone(), None).await {
                        applied.offline.push((tp.clone(), reason));
                    }
                    // A new coordinator topic is empty: nothing to load.
                    if name == OFFSETS_TOPIC && self.partitions.borrow().contains_key(&tp) {
                        self.groups.mark_loaded(partition);
                    }
                    if name == TXN_TOPIC && self.partitions.borrow().contains_key(&tp) {
                        self.txns.mark_loaded(partition);
                    }
                }
            }
            MetadataRecord::CreatePartitions { name, partitions } => {
                for partition in 0..*partitions {
                    let tp = TopicPartition::new(name.clone(), partition);
                    if !self.partitions.borrow().contains_key(&tp) {
                        if let Err(reason) = self.open_partition(tp.clone(), None).await {
                            applied.offline.push((tp, reason));
                        }
                    }
                }
            }
            MetadataRecord::DeleteTopic { name } => {
                let doomed: Vec<Rc<Partition>> = {
                    let mut partitions = self.partitions.borrow_mut();
                    let tps: Vec<TopicPartition> =
                        partitions.keys().filter(|tp| &tp.topic == name).cloned().collect();
                    tps.iter().filter_map(|tp| partitions.remove(tp)).collect()
                };
                self.offline.forget_topic(name);
                if name == OFFSETS_TOPIC {
                    for partition in &doomed {
                        self.groups.forget_partition(partition.tp.partition, i32::MAX);
                    }
                }
                for partition in doomed {
                    if let Err(error) = partition.log.close().await {
                        warn!(partition = %partition.tp, %error, "closing a deleted partition");
                    }
                    let dir = partition.log.dir().to_path_buf();
                    // Deleting a directory is a blocking syscall, on the rare topic
                    // deletion only, never on the produce or fetch path.
                    if let Err(error) = std::fs::remove_dir_all(&dir) {
                        warn!(dir = %dir.display(), %error, "removing a deleted partition");
                    }
                    self.on_append(&partition.tp);
                }
            }
            // Only the controller hands out producer ids.
            MetadataRecord::ProducerIds { .. } => {}
            MetadataRecord::SetTopicConfigs { name, .. } => {
                let settings = self.topic_settings(name);
                for partition in self.partitions.borrow().values() {
                    if &partition.tp.topic != name {
                        continue;
                    }
                    if let Err(error) = partition.log.set_options(settings.log.clone()) {
                        error!(partition = %partition.tp, %error, "new topic config rejected");
                        continue;
                    }
                    *partition.settings.borrow_mut() = settings.clone();
                }
            }
        }
        applied
    }

    /// The settings of `topic` from its stored overrides. Overrides were validated before
    /// they were stored; one that no longer validates (a broker default changed) falls
    /// back to the broker defaults with an error line.
    fn topic_settings(&self, topic: &str) -> TopicSettings {
        let overrides = self.metadata().topic(topic).map(|t| t.configs.clone()).unwrap_or_default();
        match self.config.topic_settings(&overrides) {
            Ok(settings) => settings,
            Err(error) => {
                error!(topic, %error, "stored topic config is invalid; using broker defaults");
                self.config.topic_settings(&BTreeMap::new()).unwrap_or_else(|_| TopicSettings {
                    log: self.config.log.clone(),
                    log_append_time: false,
                    min_insync_replicas: 1,
                    cleanup_policy: "delete".into(),
                })
            }
        }
    }

    /// Opens (creating if needed) a partition this shard owns. Failure takes the
    /// partition offline with a log line (Metadata answers it without a leader) and
    /// returns the reason; the shard serves the others.
    async fn open_partition(
        &self,
        tp: TopicPartition,
        hints: Option<OpenHints>,
    ) -> Result<(), String> {
        if self.owner_of(&tp) != self.id {
            return Ok(());
        }
        let settings = self.topic_settings(&tp.topic);
        let dir: PathBuf = self.config.data_dir.join(tp.dir_name());
        let opened = match std::fs::create_dir_all(&dir) {
            Ok(()) => Log::open(
                &dir,
                settings.log.clone(),
                hints.unwrap_or_default(),
                self.log_clock.clone(),
            )
            .await
            .map_err(|error| error.to_string()),
            Err(error) => Err(format!("creating {}: {error}", dir.display())),
        };
        match opened {
            Ok(log) => {
                let (producers, aborted) = match replay::rebuild_producer_state(&log).await {
                    Ok(state) => {
                        debug!(
                            partition = %tp,
                            log_end_offset = log.log_end_offset(),
                            producers = state.producers.len(),
                            snapshot_offset = ?state.snapshot_offset,
                            producer_batches_replayed = state.batches_replayed,
                            aborted_transactions = state.aborted.len(),
                            "partition open"
                        );
                        (state.producers, state.aborted)
                    }
                    Err(error) => {
                        let reason = error.to_string();
                        error!(partition = %tp, %reason, "rebuilding producer state failed: partition offline");
                        self.offline.insert(tp, reason.clone());
                        return Err(reason);
                    }
                };
                let partition = Rc::new(Partition {
                    tp: tp.clone(),
                    log,
                    settings: RefCell::new(settings),
                    producers: RefCell::new(producers),
                    recent: RecentBatches::default(),
                    aborted: RefCell::new(aborted),
                });
                self.offline.remove(&tp);
                self.partitions.borrow_mut().insert(tp, partition);
                Ok(())
            }
            Err(reason) => {
                error!(partition = %tp, %reason, "partition offline: its log could not be opened");
                self.offline.insert(tp, reason.clone());
                Err(reason)
            }
        }
    }

    /// On the controller: the next producer id, storing a new block of them first when
    /// the stored ones are used up.
    async fn allocate_producer_id(self: &Rc<Self>) -> Result<i64, KafkaError> {
        let Some(controller) = &self.controller else {
            return Err(KafkaError::new(code::NOT_CONTROLLER, "not the controller shard"));
        };
        let _permit = controller.producer_ids.lock().await;
        let next = controller.next_producer_id.get();
        if next >= self.metadata().producer_ids_end() {
            let end = next + PRODUCER_ID_BLOCK;
            self.controller_change(MetadataRecord::ProducerIds { end }, false).await?;
        }
        controller.next_producer_id.set(next + 1);
        Ok(next)
    }

    /// A new producer id from the controller.
    pub async fn new_producer_id(self: &Rc<Self>) -> Result<i64, KafkaError> {
        match self.call(0, ShardRequest::AllocateProducerId).await {
            ShardResponse::ProducerId(result) => result,
            _ => Err(KafkaError::new(code::COORDINATOR_NOT_AVAILABLE, "controller unavailable")),
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
        match self.call(0, ShardRequest::Controller { record, validate_only }).await {
            ShardResponse::Controller(result) => result,
            _ => Err(KafkaError::new(code::NOT_CONTROLLER, "controller unavailable")),
        }
    }

    // ---- consumer groups ----

    /// Sends `call` to the coordinator of `group` (the shard owning the group's partition
    /// of `__consumer_offsets`), creating that topic on first use like Kafka does.
    pub async fn coordinate(
        self: &Rc<Self>,
        group: &str,
        call: GroupCall,
    ) -> Result<GroupAnswer, i16> {
        let partitions = self.offsets_topic().await?;
        let tp = TopicPartition::new(OFFSETS_TOPIC, offsets_partition(group, partitions));
        match self.call(self.owner_of(&tp), ShardRequest::Group(call)).await {
            ShardResponse::Group(answer) => Ok(answer),
            _ => Err(code::COORDINATOR_NOT_AVAILABLE),
        }
    }

    /// Sends `call` to the coordinator of transactional id `id` (the shard owning its
    /// partition of `__transaction_state`), creating that topic on first use.
    pub async fn coordinate_txn(
        self: &Rc<Self>,
        id: &str,
        call: TxnCall,
    ) -> Result<TxnAnswer, i16> {
        let partitions = self.transaction_topic().await?;
        let tp = TopicPartition::new(TXN_TOPIC, txn_partition(id, partitions));
        match self.call(self.owner_of(&tp), ShardRequest::Txn(call)).await {
            ShardResponse::Txn(answer) => Ok(answer),
            _ => Err(code::COORDINATOR_NOT_AVAILABLE),
        }
    }

    /// Runs `call` on every shard's transaction coordinator (ListTransactions).
    pub async fn coordinate_all_txns(
        self: &Rc<Self>,
        call: TxnCall,
    ) -> Vec<Result<TxnAnswer, i16>> {
        if let Err(error) = self.transaction_topic().await {
            return vec![Err(error)];
        }
        let mut answers = Vec::with_capacity(self.shards());
        for target in 0..self.shards() {
            answers.push(match self.call(target, ShardRequest::Txn(call.clone())).await {
                ShardResponse::Txn(answer) => Ok(answer),
                _ => Err(code::COORDINATOR_NOT_AVAILABLE),
            });
        }
        answers
    }

    /// The partition count of `__transaction_state`, creating the topic if it is missing.
    pub async fn transaction_topic(self: &Rc<Self>) -> Result<i32, i16> {
        let txns = &self.config.txns;
        self.internal_topic(TXN_TOPIC, txns.state_log_num_partitions, txns.state_log_segment_bytes)
            .await
    }

    /// Runs `call` on every shard's coordinator (for ListGroups).
    pub async fn coordinate_all(self: &Rc<Self>, call: GroupCall) -> Vec<Result<GroupAnswer, i16>> {
        if let Err(error) = self.offsets_topic().await {
            return vec![Err(error)];
        }
        let mut answers = Vec::with_capacity(self.shards());
        for target in 0..self.shards() {
            answers.push(match self.call(target, ShardRequest::Group(call.clone())).await {
                ShardResponse::Group(answer) => Ok(answer),
                _ => Err(code::COORDINATOR_NOT_AVAILABLE),
            });
        }
        answers
    }

    /// The partition count of `__consumer_offsets`, creating the topic if it is missing.
    pub async fn offsets_topic(self: &Rc<Self>) -> Result<i32, i16> {
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
    ) -> Result<i32, i16> {
        if let Some(topic) = self.metadata().topic(name) {
            return Ok(topic.partitions);
        }
        let record = MetadataRecord::CreateTopic {
            name: name.to_string(),
            topic_id: sluice_engine::metadata::new_topic_id(),
            partitions,
            replication_factor: 1,
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
                return Err(code::COORDINATOR_NOT_AVAILABLE);
            }
        }
        self.metadata().topic(name).map(|t| t.partitions).ok_or(code::COORDINATOR_NOT_AVAILABLE)
    }

    /// Appends group records (offset commits, group metadata, tombstones) to the group's
    /// partition of `__consumer_offsets`, on this shard, as one batch.
    pub async fn append_group_records(
        &self,
        group: &str,
        writes: Vec<Write>,
    ) -> Result<(), KafkaError> {
        self.append_group_records_txn(group, writes, None).await
    }

    /// [`Shard::append_group_records`] as part of a transaction (TxnOffsetCommit): a
    /// transactional batch of that producer (id, epoch).
    pub async fn append_group_records_txn(
        &self,
        group: &str,
        writes: Vec<Write>,
        txn: Option<(i64, i16)>,
    ) -> Result<(), KafkaError> {
        let partitions = self.metadata().topic(OFFSETS_TOPIC).map(|t| t.partitions);
        let partitions = partitions
            .ok_or_else(|| KafkaError::new(code::COORDINATOR_NOT_AVAILABLE, "no offsets topic"))?;
        let tp = TopicPartition::new(OFFSETS_TOPIC, offsets_partition(group, partitions));
        self.append_records(&tp, writes, txn).await
    }

    /// Appends records (key, value) to an internal topic's partition on this shard, as one
    /// batch; `txn`: a transactional batch of that producer (id, epoch).
    pub async fn append_records(
        &self,
        tp: &TopicPartition,
        writes: Vec<Write>,
        txn: Option<(i64, i16)>,
    ) -> Result<(), KafkaError> {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        if writes.is_empty() {
            return Ok(());
        }
        let partition = self.partition(tp)?;
        if let Some((producer_id, epoch)) = txn {
            // A fenced producer's late write (its transaction was aborted with a newer
            // epoch) must not join the newer epoch's transaction: Kafka's log rejects it
            // the same way.
            if partition.producers.borrow().check_marker(producer_id, epoch).is_err() {
                return Err(KafkaError::new(
                    code::INVALID_PRODUCER_EPOCH,
                    format!("producer {producer_id} epoch {epoch} is fenced on {tp}"),
                ));
            }
        }
        let now_ms = self.clock.wall_ms();
        let (producer_id, producer_epoch) = txn.unwrap_or((-1, -1));
        let records: Vec<Record> = writes
            .into_iter()
            .enumerate()
            .map(|(index, (key, value))| Record {
                transactional: txn.is_some(),
                control: false,
                delete_horizon: false,
                partition_leader_epoch: LEADER_EPOCH,
                producer_id,
                producer_epoch,
                timestamp_type: TimestampType::Creation,
                // The encoder takes offset deltas from these; the log assigns the base.
                offset: index as i64,
                sequence: -1,
                timestamp: now_ms,
                key: Some(Bytes::from(key)),
                value: value.map(Bytes::from),
                headers: Default::default(),
            })
            .collect();
        let mut buffer = bytes::BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut buffer, &records, &options).map_err(|error| {
            KafkaError::new(code::UNKNOWN_SERVER_ERROR, format!("encoding records: {error}"))
        })?;
        let mut bytes = buffer.to_vec();
        let begin_txn = |info: &AppendInfo| {
            if let Some((producer_id, epoch)) = txn {
                partition.producers.borrow_mut().begin_txn(producer_id, epoch, info.base_offset);
            }
        };
        partition.log.append_then(&mut bytes, begin_txn).await.map_err(|error| {
            error!(partition = %tp, %error, "internal record append failed");
            from_log_error(&error)
        })?;
        self.on_append(tp);
        Ok(())
    }

    /// Writes a transaction's markers to `partitions`, each on its owning shard.
    pub async fn write_markers(
        self: &Rc<Self>,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        partitions: &[TopicPartition],
    ) -> Result<(), KafkaError> {
        let results = self
            .scatter(
                partitions.to_vec(),
                |tp| tp,
                |partitions| ShardRequest::WriteMarkers { producer_id, epoch, commit, partitions },
                |response| match response {
                    ShardResponse::Markers(results) => Some(results),
                    _ => None,
                },
                || Err(KafkaError::new(code::NOT_LEADER_OR_FOLLOWER, "shard unavailable")),
            )
            .await;
        results.into_iter().find_map(Result::err).map_or(Ok(()), Err)
    }

    /// Writes one transaction marker on this shard: a control batch in the partition's
    /// log, then the end of the producer's transaction there (the last stable offset moves;
    /// an abort goes into the aborted-transaction index; in `__consumer_offsets` the group
    /// coordinator applies or drops the transaction's offsets).
    async fn write_marker(
        &self,
        tp: &TopicPartition,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), KafkaError> {
        let partition = match self.partition(tp) {
            Ok(partition) => partition,
            // Deleted since it joined the transaction: nothing to mark.
            Err(error) if error.code == code::UNKNOWN_TOPIC_OR_PARTITION => return Ok(()),
            Err(error) => return Err(error),
        };
        if let Err(error) = partition.producers.borrow().check_marker(producer_id, epoch) {
            // An older epoch than the partition has seen: that transaction was already
            // ended by a newer one.
            warn!(partition = %tp, producer_id, epoch, ?error, "stale transaction marker not written");
            return Ok(());
        }
        let marker = Marker { committed: commit, coordinator_epoch: 0 };
        let mut bytes = encode_marker(producer_id, epoch, marker, self.clock.wall_ms());
        batch::set_partition_leader_epoch(&mut bytes, LEADER_EPOCH);
        let info = partition.log.append(&mut bytes).await.map_err(|error| {
            error!(partition = %tp, %error, "transaction marker append failed");
            from_log_error(&error)
        })?;
        if partition.log.options().io_mode == IoMode::Direct {
            self.remember(&partition, info.base_offset, info.last_offset + 1, Bytes::from(bytes));
        }
        let done = partition.producers.borrow_mut().complete_txn(
            producer_id,
            epoch,
            marker,
            info.base_offset,
        );
        if let (false, Some(first_offset)) = (commit, done.first_offset) {
            let entry = AbortedTxn {
                producer_id,
                first_offset,
                last_offset: info.base_offset,
                last_stable_offset: partition.last_stable_offset(),
            };
            Self::index_aborted(&partition, entry);
        }
        if tp.topic == OFFSETS_TOPIC {
            self.groups.complete_txn(self, tp.partition, producer_id, commit);
        }
        self.on_append(tp);
        Ok(())
    }

    /// Adds an aborted transaction to the partition's index and to the `.txnindex` file of
    /// the segment holding its marker.
    fn index_aborted(partition: &Partition, entry: AbortedTxn) {
        let bases = partition.log.segment_base_offsets();
        replay::record_abort(
            partition.log.dir(),
            &bases,
            &mut partition.aborted.borrow_mut(),
            entry,
        );
    }

    /// Every record of a partition, oldest first, with the transaction markers: the
    /// coordinators' replay of their internal topics at start-up.
    async fn read_all_records(&self, tp: &TopicPartition) -> Result<Vec<Replayed>, String> {
        use kafka_protocol::records::RecordBatchDecoder;
        let partition = self.partition(tp).map_err(|e| e.message)?;
        let (start, end) = (partition.log.log_start_offset(), partition.high_watermark());
        let mut records = Vec::new();
        replay::for_each_chunk(&partition.log, start, end, |offset, chunk| {
            let mut buffer = Bytes::copy_from_slice(chunk);
            let sets = RecordBatchDecoder::decode_all(&mut buffer).map_err(|e| e.to_string())?;
            for set in sets {
                for record in set.records {
                    if record.offset < offset {
                        continue;
                    }
                    if record.control {
                        // Key: version i16, type i16 (0 abort, 1 commit).
                        let kind = record.key.as_ref().filter(|k| k.len() >= 4).map(|k| k[3]);
                        if let Some(kind) = kind.filter(|&k| k <= 1) {
                            records.push(Replayed::Marker {
                                producer_id: record.producer_id,
                                commit: kind == 1,
                            });
                        }
                        continue;
                    }
                    if let Some(key) = record.key {
                        let producer_id = record.transactional.then_some(record.producer_id);
                        records.push(Replayed::Record { key, value: record.value, producer_id });
                    }
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(records)
    }

    /// Loads every `__consumer_offsets` and `__transaction_state` partition this shard
    /// owns into its coordinators.
    async fn load_coordinators(self: &Rc<Self>) {
        let owned: Vec<TopicPartition> = self
            .partitions
            .borrow()
            .keys()
            .filter(|tp| tp.topic == OFFSETS_TOPIC || tp.topic == TXN_TOPIC)
            .cloned()
            .collect();
        for tp in owned {
            match self.read_all_records(&tp).await {
                Ok(records) if tp.topic == OFFSETS_TOPIC => {
                    self.groups.load(self, tp.partition, records)
                }
                Ok(records) => self.load_txns(tp.partition, records),
                Err(reason) => {
                    error!(partition = %tp, %reason, "loading a coordinator partition failed; its groups or transactions are unavailable")
                }
            }
        }
    }

    /// Size and log start offset of every partition on this shard (for housekeeping).
    fn partition_list(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().cloned().collect()
    }

    async fn housekeeping(self: Rc<Self>) {
        let tick = Duration::from_millis(100);
        let retention_every = Duration::from_millis(self.config.retention_check_interval_ms.max(1));
        let mut since_retention = Duration::ZERO;
        let expiry_every =
            Duration::from_millis(self.config.groups.offsets_retention_check_interval_ms.max(1));
        let mut since_expiry = Duration::ZERO;
        let latency_every = Duration::from_millis(self.config.request_latency_log_interval_ms);
        // `None`: reported only when the shard stops (0, or too far out to add).
        let mut latency_window_ends =
            (!latency_every.is_zero()).then(|| Instant::now().checked_add(latency_every)).flatten();
        let mut cache_windows = CacheWindows::default();
        let mut ticks = 0u64;
        while !self.stopping() {
            glommio::timer::sleep(tick).await;
            ticks += 1;
            since_retention += tick;
            since_expiry += tick;
            if let Some(budget) = self.config.cache_window_budget_bytes {
                if ticks % CACHE_WINDOW_TICKS == 0 {
                    cache_windows.adapt(&self.partition_list(), budget, Instant::now());
                }
            }
            // By the clock, not by counting ticks: the windows should line up with a
            // client's per-second figures.
            if let Some(ends) = latency_window_ends.filter(|ends| Instant::now() >= *ends) {
                self.request_metrics.report(self.id);
                // The next window ends one interval on, or later if the shard fell behind.
                let now = Instant::now();
                let mut next = ends.checked_add(latency_every);
                while let Some(at) = next.filter(|at| *at <= now) {
                    next = at.checked_add(latency_every);
                }
                latency_window_ends = next;
            }
            if since_expiry >= expiry_every {
                since_expiry = Duration::ZERO;
                self.groups.expire_offsets(&self).await;
            }
            let retention_due = since_retention >= retention_every;
            if retention_due {
                since_retention = Duration::ZERO;
            }
            for partition in self.partition_list() {
                if let Err(error) = partition.log.maybe_flush().await {
                    warn!(partition = %partition.tp, %error, "scheduled flush failed");
                }
                if retention_due {
                    match partition.log.apply_retention().await {
                        Ok(deleted) if !deleted.is_empty() => {
                            let live = partition.log.segment_base_offsets();
                            partition.aborted.borrow_mut().retain_segments(&live);
                            info!(partition = %partition.tp, segments = deleted.len(), "retention deleted segments")
                        }
                        Ok(_) => {}
                        Err(error) => warn!(partition = %partition.tp, %error, "retention failed"),
                    }
                }
            }
        }
        self.groups.shutdown();
        self.fire_stop();
    }

    /// Keeps a direct-mode append's batches in the partition's cache of recent batches,
    /// evicting the shard's oldest chunks beyond `RECENT_BATCHES_BYTES`. The bytes are
    /// usually a piece of a produce request's frame, which stays allocated while any of
    /// its pieces is cached: the budget counts batch bytes, so memory can exceed it by
    /// about one request (pieces of one request are cached and evicted together).
    fn remember(&self, partition: &Rc<Partition>, base: i64, end: i64, bytes: Bytes) {
        let len = bytes.len() as u64;
        if len > RECENT_BATCHES_BYTES {
            return;
        }
        partition.recent.insert(base, end, bytes);
        let mut order = self.recent_order.borrow_mut();
        order.push_back((Rc::downgrade(partition), base, len));
        let mut used = self.recent_bytes.get() + len;
        while used > RECENT_BATCHES_BYTES {
            let Some((oldest, at, size)) = order.pop_front() else { break };
            // A partition that closed freed its chunks when it dropped.
            if let Some(oldest) = oldest.upgrade() {
                oldest.recent.evict(at);
            }
            used -= size;
        }
        self.recent_bytes.set(used);
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

    async fn serve_mesh(self: Rc<Self>, receivers: MeshReceivers<MeshMsg>) {
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

/// Housekeeping ticks (100 ms) between two adaptations of the auto page-cache windows.
const CACHE_WINDOW_TICKS: u64 = 10;
/// A log appended to within this long shares the page-cache budget.
const CACHE_WINDOW_ACTIVE: Duration = Duration::from_secs(10);

/// `log.page.cache.window.bytes=auto` on one shard: which logs were appended to lately,
/// and the window each of them gets, its share of the shard's budget.
#[derive(Default)]
struct CacheWindows {
    /// Per partition: the log end offset last seen, and when it last moved.
    seen: HashMap<TopicPartition, (i64, Instant)>,
}

impl CacheWindows {
    fn adapt(&mut self, partitions: &[Rc<Partition>], budget: u64, now: Instant) {
        let mut seen = HashMap::with_capacity(partitions.len());
        let mut active = 0usize;
        for partition in partitions {
            let end = partition.log.log_end_offset();
            let moved = match self.seen.get(&partition.tp) {
                Some(&(last, at)) if last == end => at,
                Some(_) => now,
                // A log opened since the last look counts once it is appended to.
                None => now.checked_sub(CACHE_WINDOW_ACTIVE).unwrap_or(now),
            };
            if now.saturating_duration_since(moved) < CACHE_WINDOW_ACTIVE {
                active += 1;
            }
            seen.insert(partition.tp.clone(), (end, moved));
        }
        self.seen = seen;
        let window = sluice_engine::writeback::auto_window_bytes(budget, active);
        for partition in partitions {
            if partition.log.cache_window() != window {
                partition.log.set_cache_window(window);
            }
        }
    }
}

pub use crate::coordinator_host::Replayed;

/// Writes the partition's producer snapshot at its log end (see
/// [`replay::write_snapshot`]); a failure only costs the next start a longer replay.
fn write_snapshot(partition: &Partition) {
    let end = partition.log.log_end_offset();
    let producers = partition.producers.borrow();
    if let Err(error) = replay::write_snapshot(partition.log.dir(), end, &producers) {
        warn!(partition = %partition.tp, %error, "writing the producer snapshot failed");
    }
}

/// Starts a shard on the current executor: joins the mesh, opens the partitions it owns,
/// serves connections until `stop`, then drains, flushes and closes. Returns the
/// checkpoint entries of its partitions.
pub async fn run(start: ShardStart) -> Result<ShardCheckpoints, String> {
    let id = start.id;
    let (senders, receivers) = crate::mesh::connect(start.mesh, MESH_JOIN_TIMEOUT).await?;
    let clock = SystemClock::new();
    let fetch_waiters = TimerDriver::new(
        Purgatory::new(PurgatoryOptions {
            ops_max: FETCH_WAITERS_MAX,
            ..PurgatoryOptions::starting_at(clock.monotonic_ms())
        }),
        clock.clone(),
        DriverOptions::DEFAULT,
    );
    let producer_ids_end = start.image.producer_ids_end();
    let controller = start.metadata_log.map(|log| Controller {
        log: RefCell::new(log),
        lock: FifoLock::new(),
        next_producer_id: Cell::new(producer_ids_end),
        producer_ids: FifoLock::new(),
    });
    let groups = Coordinator::new(clock.clone());
    let txns = TxnCoordinator::new(clock.clone());
    let shard = Rc::new(Shard {
        id,
        config: start.config.clone(),
        clock: clock.clone(),
        log_clock: Rc::new(clock),
        metadata: RefCell::new(start.image),
        partitions: RefCell::new(HashMap::new()),
        offline: start.offline.clone(),
        mesh: senders,
        pending: RefCell::new(HashMap::new()),
        next_call_id: Cell::new(0),
        fetch_waiters,
        controller,
        groups,
        txns,
        stop: start.stop,
        connections: Cell::new(0),
        fetch_sends: SendStats::default(),
        request_metrics: RequestMetrics::new(),
        recent_order: RefCell::new(VecDeque::new()),
        recent_bytes: Cell::new(0),
        stop_fired: Cell::new(false),
        stop_wakers: RefCell::new(HashMap::new()),
        append_failures: LogThrottle::new(Duration::from_secs(1)),
    });

    let owned: Vec<TopicPartition> = {
        let image = shard.metadata();
        image
            .topics()
            .flat_map(|topic| {
                (0..topic.partitions).map(|p| TopicPartition::new(topic.name.clone(), p))
            })
            .filter(|tp| shard.owner_of(tp) == id)
            .collect()
    };
    // Segment files keep descriptors within this shard's share of `log.open.files.max`.
    sluice_engine::fdcache::set_budget(start.config.open_files_per_shard);
    let mut offline = 0usize;
    for tp in owned {
        let hints = start.hints.get(&tp).copied().unwrap_or_default();
        // A failure is logged, and the partition is offline (Metadata shows it).
        if shard.open_partition(tp, Some(hints)).await.is_err() {
            offline += 1;
        }
    }
    let files = sluice_engine::fdcache::stats();
    info!(
        shard = id,
        partitions = shard.partitions.borrow().len(),
        offline,
        open_segment_files = files.held,
        open_files_budget = files.budget,
        "shard ready"
    );
    (start.on_opened)();

    shard.load_coordinators().await;

    let mesh_task = glommio::spawn_local(shard.clone().serve_mesh(receivers));
    let (expired_sender, expired_receiver) = local_channel::new_unbounded();
    let group_timer_task = shard
        .groups
        .timers
        .spawn(move |(_, timer)| {
            let _ = expired_sender.try_send(timer);
        })
        .map_err(|error| format!("starting the group timer: {error}"))?;
    let group_expiry_task = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(timer) = expired_receiver.recv().await {
                shard.groups.on_timer(&shard, timer).await;
            }
        })
    };
    let (txn_expired_sender, txn_expired_receiver) = local_channel::new_unbounded();
    let txn_timer_task = shard
        .txns
        .timers
        .spawn(move |(_, timer)| {
            let _ = txn_expired_sender.try_send(timer);
        })
        .map_err(|error| format!("starting the transaction timer: {error}"))?;
    let txn_expiry_task = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(timer) = txn_expired_receiver.recv().await {
                let shard = shard.clone();
                glommio::spawn_local(async move { shard.txns.on_timer(&shard, timer).await })
                    .detach();
            }
        })
    };
    let timer_task = shard
        .fetch_waiters
        .spawn(|expired: Expired<FetchWaiter>| {
            let _ = expired.op.notify.try_send(());
        })
        .map_err(|error| format!("starting the fetch timer: {error}"))?;
    let housekeeping = glommio::spawn_local(shard.clone().housekeeping());
    let served = crate::server::serve(shard.clone()).await;
    shard.log_fetch_sends();
    if id == 0 {
        // The helper's counters are per process: one shard reports them.
        sluice_engine::writeback::log_counters();
    }
    shard.request_metrics.report(id);
    housekeeping.await;
    shard.fetch_waiters.stop();
    timer_task.await;
    shard.groups.timers.stop();
    group_timer_task.await;
    drop(group_expiry_task);
    shard.txns.timers.stop();
    txn_timer_task.await;
    drop(txn_expiry_task);
    drop(mesh_task);

    let mut checkpoints = Vec::new();
    for partition in shard.partition_list() {
        // Every request has finished: the producer state matches the log end.
        write_snapshot(&partition);
        match partition.log.close().await {
            Ok(()) => checkpoints.push((
                partition.tp.clone(),
                partition.log.recovery_point(),
                partition.log.log_start_offset(),
            )),
            Err(error) => {
                error!(shard = id, partition = %partition.tp, %error, "closing the log failed")
            }
        }
    }
    let files = sluice_engine::fdcache::stats();
    info!(
        shard = id,
        open_segment_files = files.held,
        open_segment_files_peak = files.peak,
        open_files_budget = files.budget,
        segment_files_opened = files.opened,
        segment_files_closed_for_budget = files.evictions,
        over_budget = files.over_budget,
        "shard stopped"
    );
    served.map(|()| checkpoints)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn offline_partitions_are_counted_forgotten_by_topic_and_listed_sorted() {
        let offline = OfflinePartitions::default();
        assert!(offline.is_empty() && offline.of_topic("t").is_empty());
        offline.insert(TopicPartition::new("t", 7), "no room".into());
        offline.insert(TopicPartition::new("t", 2), "no room".into());
        offline.insert(TopicPartition::new("u", 1), "in the way".into());
        assert_eq!(offline.len(), 3);
        assert_eq!(offline.of_topic("t"), [2, 7]);
        assert_eq!(offline.reason(&TopicPartition::new("u", 1)).unwrap(), "in the way");
        offline.remove(&TopicPartition::new("t", 7));
        offline.forget_topic("u");
        assert_eq!(offline.len(), 1);
        assert_eq!(offline.of_topic("t"), [2]);
        assert_eq!(offline.reason(&TopicPartition::new("u", 1)), None);
    }

    #[test]
    fn a_storage_error_says_how_many_partitions_are_offline_and_quotes_the_first() {
        assert!(Applied::default().storage_error().is_none());
        let applied = Applied {
            offline: (0..5)
                .rev()
                .map(|p| (TopicPartition::new("t", p), format!("reason {p}")))
                .collect(),
        };
        let error = applied.storage_error().unwrap();
        assert_eq!(error.code, code::KAFKA_STORAGE_ERROR);
        assert_eq!(
            error.message,
            "the topic is stored, but 5 of its new partitions could not be opened and are \
             offline (t-0: reason 0; t-1: reason 1; t-2: reason 2; and 2 more)"
        );
    }
}
