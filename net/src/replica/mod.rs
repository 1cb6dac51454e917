//! The replica manager of one shard (Kafka's `ReplicaManager`): the partitions the shard
//! owns, and the Kafka semantics of serving them — produce (with idempotence and
//! transactions), fetch with its purgatory of parked long polls and the zero-copy choice,
//! ListOffsets, DeleteRecords, OffsetForLeaderEpoch, transaction markers, the
//! coordinators' internal records, opening and closing partitions as metadata changes.
//! The shard around it is a container (executor, mesh, listeners, housekeeping); each
//! request part arrives here on the shard that owns its partition.
//!
//! Lives on one shard; never shared across threads.

mod cache_windows;
mod fetch;
pub mod partition;
mod produce;
pub mod types;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::{Clock, SystemClock};
use sluice_engine::log::OpenHints;
use sluice_engine::metadata::{MetadataRecord, PartitionChangeRecord, PartitionRecord};
use sluice_engine::partition::Replica;
use sluice_engine::shard::{shard_of, ShardId};
use sluice_engine::sync::FifoLock;
use sluice_engine::timer::{DriverOptions, Expired, Purgatory, PurgatoryOptions, TimerDriver};
use tracing::{debug, error, info, warn};

pub use cache_windows::CacheWindows;
pub use fetch::FetchWaiter;
pub use partition::{OfflinePartitions, Partition};
pub use produce::{ProduceWaiter, Replication};

use crate::config::{BrokerConfig, TopicSettings};
use crate::error::{code, KafkaError};
use crate::limits::{FETCH_WAITERS_MAX, RECENT_BATCHES_BYTES};
use crate::metadata_cache::MetadataCache;
use crate::recent::RecentBatches;
use crate::throttle::LogThrottle;

type FetchPurgatory = Purgatory<TopicPartition, FetchWaiter>;
type ProducePurgatory = Purgatory<TopicPartition, ProduceWaiter>;

/// Why a partition could not be opened (it is then offline, with this as the reason).
#[derive(Debug, thiserror::Error)]
pub enum OpenPartitionError {
    #[error("creating {}: {source}", .dir.display())]
    CreateDir { dir: std::path::PathBuf, source: std::io::Error },
    #[error("{0}")]
    Replica(#[from] sluice_engine::partition::OpenError),
}

/// What applying a stored metadata change did to this shard's partitions: those it
/// created that could not be opened, with why (they exist, offline).
#[derive(Debug, Default)]
pub struct Opened {
    pub offline: Vec<(TopicPartition, String)>,
}

/// See the module documentation.
pub struct ReplicaManager {
    shard: ShardId,
    config: Arc<BrokerConfig>,
    clock: SystemClock,
    log_clock: Rc<dyn Clock>,
    metadata: Rc<MetadataCache>,
    partitions: RefCell<HashMap<TopicPartition, Rc<Partition>>>,
    /// The partitions this shard follows, and the broker that leads each.
    following: RefCell<HashMap<TopicPartition, i32>>,
    /// Partitions of the broker that could not be opened, with the reason: this shard
    /// writes its own, and every shard reads all for Metadata answers.
    offline: Arc<OfflinePartitions>,
    fetch_waiters: TimerDriver<FetchPurgatory, SystemClock>,
    /// acks=all produces waiting for the in-sync replicas.
    produce_waiters: TimerDriver<ProducePurgatory, SystemClock>,
    /// Direct mode's cache of recent batches over all partitions, oldest first:
    /// (partition, chunk base offset, chunk bytes), and the bytes it holds.
    recent_order: RefCell<VecDeque<(Weak<Partition>, i64, u64)>>,
    recent_bytes: Cell<u64>,
    /// "append failed" lines: a full disk fails every produce the same way.
    append_failures: LogThrottle,
}

impl ReplicaManager {
    pub fn new(
        shard: ShardId,
        config: Arc<BrokerConfig>,
        clock: SystemClock,
        metadata: Rc<MetadataCache>,
        offline: Arc<OfflinePartitions>,
    ) -> Self {
        let fetch_waiters = TimerDriver::new(
            Purgatory::new(PurgatoryOptions {
                ops_max: FETCH_WAITERS_MAX,
                ..PurgatoryOptions::starting_at(clock.monotonic_ms())
            }),
            clock.clone(),
            DriverOptions::DEFAULT,
        );
        let produce_waiters = TimerDriver::new(
            Purgatory::new(PurgatoryOptions {
                ops_max: FETCH_WAITERS_MAX,
                ..PurgatoryOptions::starting_at(clock.monotonic_ms())
            }),
            clock.clone(),
            DriverOptions::DEFAULT,
        );
        Self {
            shard,
            config,
            produce_waiters,
            log_clock: Rc::new(clock.clone()),
            clock,
            metadata,
            partitions: RefCell::new(HashMap::new()),
            following: RefCell::new(HashMap::new()),
            offline,
            fetch_waiters,
            recent_order: RefCell::new(VecDeque::new()),
            recent_bytes: Cell::new(0),
            append_failures: LogThrottle::new(Duration::from_secs(1)),
        }
    }

    fn owns(&self, tp: &TopicPartition) -> bool {
        shard_of(&tp.topic, tp.partition, self.config.shards) == self.shard
    }

    /// The broker's partitions that could not be opened (all shards').
    pub fn offline(&self) -> &OfflinePartitions {
        &self.offline
    }

    /// How many partitions this shard serves.
    pub fn len(&self) -> usize {
        self.partitions.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.partitions.borrow().is_empty()
    }

    pub fn contains(&self, tp: &TopicPartition) -> bool {
        self.partitions.borrow().contains_key(tp)
    }

    /// Every partition on this shard.
    pub fn list(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().cloned().collect()
    }

    /// The partitions of `topic` on this shard (the coordinators' internal topics).
    pub fn of_topic(&self, topic: &str) -> Vec<TopicPartition> {
        self.partitions.borrow().keys().filter(|tp| tp.topic == topic).cloned().collect()
    }

    /// The partition, or Kafka's answer for why this shard cannot serve it.
    pub fn get(&self, tp: &TopicPartition) -> Result<Rc<Partition>, KafkaError> {
        if let Some(partition) = self.partitions.borrow().get(tp) {
            return Ok(partition.clone());
        }
        if let Some(reason) = self.offline.reason(tp) {
            return Err(KafkaError::new(code::KAFKA_STORAGE_ERROR, reason));
        }
        let known =
            self.metadata.image().topic(&tp.topic).is_some_and(|t| tp.partition < t.partitions);
        if known && !self.owns(tp) {
            return Err(KafkaError::new(
                code::NOT_LEADER_OR_FOLLOWER,
                "partition on another shard",
            ));
        }
        if known && !self.hosted_here(tp) {
            return Err(KafkaError::new(
                code::NOT_LEADER_OR_FOLLOWER,
                format!("{tp} has no replica on this broker"),
            ));
        }
        Err(KafkaError::new(code::UNKNOWN_TOPIC_OR_PARTITION, format!("unknown partition {tp}")))
    }

    /// The partition if this broker leads it: what clients read from and write to.
    /// A follower here is NOT_LEADER_OR_FOLLOWER, as in Kafka (followers do not serve
    /// consumers: no KIP-392 rack-aware fetching).
    pub fn leader(&self, tp: &TopicPartition) -> Result<Rc<Partition>, KafkaError> {
        let partition = self.get(tp)?;
        if !partition.replica.is_leader() {
            return Err(KafkaError::new(
                code::NOT_LEADER_OR_FOLLOWER,
                format!("this broker follows {tp}; its leader serves clients"),
            ));
        }
        Ok(partition)
    }

    /// Starts the purgatories' timer task: an expired parked fetch answers with what it
    /// has, an expired acks=all produce with REQUEST_TIMED_OUT.
    pub fn spawn_timers(&self) -> glommio::Result<glommio::Task<()>, ()> {
        let fetches =
            self.fetch_waiters.spawn(|expired: Expired<FetchWaiter>| expired.op.wake())?;
        let produces =
            self.produce_waiters.spawn(|expired: Expired<ProduceWaiter>| expired.op.wake())?;
        Ok(glommio::spawn_local(async move {
            fetches.await;
            produces.await;
        }))
    }

    pub fn stop_timers(&self) {
        self.fetch_waiters.stop();
        self.produce_waiters.stop();
    }

    // ---- partitions open and close as metadata changes ----

    /// Opens, at start-up, every partition of the image this shard owns. Returns how many
    /// could not be opened (they are offline, each with a log line).
    pub async fn open_owned(
        &self,
        hints: &BTreeMap<TopicPartition, OpenHints>,
        high_watermarks: &BTreeMap<TopicPartition, i64>,
    ) -> usize {
        let owned: Vec<TopicPartition> = {
            let image = self.metadata.image();
            image
                .topics()
                .flat_map(|topic| {
                    (0..topic.partitions).map(|p| TopicPartition::new(topic.name.clone(), p))
                })
                .filter(|tp| self.owns(tp) && self.hosted_here(tp))
                .collect()
        };
        let mut offline = 0usize;
        for tp in owned {
            let hint = hints.get(&tp).copied().unwrap_or_default();
            let high_watermark = high_watermarks.get(&tp).copied();
            if self.open(tp, hint, high_watermark).await.is_err() {
                offline += 1;
            }
        }
        offline
    }

    /// Opens or closes this shard's partitions for a metadata change the image already
    /// holds.
    pub async fn apply(&self, record: &MetadataRecord) -> Opened {
        let mut opened = Opened::default();
        match record {
            // A topic's partitions open with their placements, on the brokers they name.
            MetadataRecord::CreateTopic { .. } | MetadataRecord::CreatePartitions { .. } => {}
            MetadataRecord::DeleteTopic { name } => self.delete_topic(name).await,
            // Only the controller hands out producer ids; broker registrations change no
            // partition of this shard.
            MetadataRecord::ProducerIds { .. }
            | MetadataRecord::RegisterBroker { .. }
            | MetadataRecord::ChangeBroker { .. }
            | MetadataRecord::UnregisterBroker { .. } => {}
            MetadataRecord::Partition(PartitionRecord { topic_id, partition, .. })
            | MetadataRecord::PartitionChange(PartitionChangeRecord {
                topic_id, partition, ..
            }) => {
                let name = self.metadata.image().topic_by_id(topic_id).map(|t| t.name.clone());
                if let Some(name) = name {
                    let tp = TopicPartition::new(name, *partition);
                    if let Err((tp, error)) = self.follow_placement(tp).await {
                        opened.offline.push((tp, error));
                    }
                }
            }
            MetadataRecord::SetTopicConfigs { name, .. } => {
                let settings = self.topic_settings(name);
                for partition in self.list() {
                    if &partition.tp().topic != name {
                        continue;
                    }
                    if let Err(error) = partition.replica.log().set_options(settings.log.clone()) {
                        error!(partition = %partition.tp(), %error, "new topic config rejected");
                        continue;
                    }
                    *partition.settings.borrow_mut() = settings.clone();
                }
            }
        }
        opened
    }

    /// Whether this broker holds a replica of `tp` (see `MetadataCache::hosts`).
    fn hosted_here(&self, tp: &TopicPartition) -> bool {
        self.metadata.hosts(self.config.node_id, &tp.topic, tp.partition)
    }

    /// Makes this shard's replica of `tp` what its placement says: opened where this
    /// broker is a replica, leading or following at the placement's leader epoch; closed
    /// and deleted where it no longer is one (a reassignment moved it away).
    async fn follow_placement(&self, tp: TopicPartition) -> Result<(), (TopicPartition, String)> {
        if !self.owns(&tp) {
            return Ok(());
        }
        if !self.hosted_here(&tp) {
            let removed = self.partitions.borrow_mut().remove(&tp);
            if let Some(partition) = removed {
                info!(partition = %tp, "no longer a replica here: closing and deleting it");
                self.remove_partition(partition).await;
            }
            return Ok(());
        }
        if !self.contains(&tp) {
            if let Err(error) = self.open(tp.clone(), OpenHints::default(), None).await {
                return Err((tp, error.to_string()));
            }
        }
        let Some(partition) = self.partitions.borrow().get(&tp).cloned() else { return Ok(()) };
        self.take_role(&partition).await;
        Ok(())
    }

    /// Leads or follows `partition` as its placement says (no placement: a one-node
    /// broker's partition, led here). A leader learns its replicas and ISR (its high
    /// watermark may move); a follower is handed to the replica fetcher of its leader.
    /// Parked acks=all produces are checked again: leadership may have moved.
    async fn take_role(&self, partition: &Rc<Partition>) {
        use sluice_engine::clock::Clock;
        let tp = partition.tp().clone();
        let placement = {
            let image = self.metadata.image();
            image.topic(&tp.topic).and_then(|t| t.placement(tp.partition).cloned())
        };
        let Some(placement) = placement else { return };
        let node = self.config.node_id;
        let replica = &partition.replica;
        let _held = partition.replication.lock().await;
        if placement.leader_epoch < replica.leader_epoch() {
            // An older placement than the replica has acted on (cannot come from the
            // metadata log, which only moves forward).
            warn!(partition = %tp, epoch = placement.leader_epoch, current = replica.leader_epoch(), "placement older than the replica's leader epoch ignored");
            return;
        }
        if placement.leader == node {
            if !replica.is_at(true, placement.leader_epoch) {
                replica.become_leader(placement.leader_epoch).await;
                debug!(partition = %tp, epoch = placement.leader_epoch, "leading");
            }
            self.following.borrow_mut().remove(&tp);
            let now_ms = self.clock.monotonic_ms();
            replica.update_replica_set(node, &placement.replicas, &placement.isr, now_ms);
        } else {
            if !replica.is_at(false, placement.leader_epoch) {
                replica.become_follower(placement.leader_epoch).await;
                debug!(partition = %tp, leader = placement.leader, epoch = placement.leader_epoch, "following");
            }
            let mut following = self.following.borrow_mut();
            if placement.leader >= 0 {
                following.insert(tp.clone(), placement.leader);
            } else {
                following.remove(&tp);
            }
        }
        self.on_high_watermark(&tp);
    }

    /// The partitions this shard follows, with their leaders (the replica fetcher's work).
    pub fn following(&self) -> Vec<(TopicPartition, i32)> {
        self.following.borrow().iter().map(|(tp, leader)| (tp.clone(), *leader)).collect()
    }

    /// The partitions this shard leads with more than one replica: their ISR may need to
    /// change (see `replication::isr_changes`).
    pub fn led(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().filter(|p| p.replica.is_leader()).cloned().collect()
    }

    /// Closes and deletes this shard's partitions of a deleted topic; fetches parked on
    /// them answer now.
    async fn delete_topic(&self, name: &str) {
        let doomed: Vec<Rc<Partition>> = {
            let mut partitions = self.partitions.borrow_mut();
            let tps: Vec<TopicPartition> =
                partitions.keys().filter(|tp| tp.topic == name).cloned().collect();
            tps.iter().filter_map(|tp| partitions.remove(tp)).collect()
        };
        self.offline.forget_topic(name);
        for partition in doomed {
            self.remove_partition(partition).await;
        }
    }

    /// Closes a partition taken out of the map and deletes its directory; fetches parked
    /// on it answer now.
    async fn remove_partition(&self, partition: Rc<Partition>) {
        self.following.borrow_mut().remove(partition.tp());
        // The fetcher may be copying into it: let that finish first.
        let _held = partition.replication.lock().await;
        let log = partition.replica.log();
        if let Err(error) = log.close().await {
            warn!(partition = %partition.tp(), %error, "closing a deleted partition");
        }
        let dir = log.dir().to_path_buf();
        // Deleting a directory is a blocking syscall, on the rare topic deletion or
        // reassignment only, never on the produce or fetch path.
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            warn!(dir = %dir.display(), %error, "removing a deleted partition");
        }
        self.on_append(partition.tp());
    }

    /// The settings of `topic` from its stored overrides. Overrides were validated before
    /// they were stored; one that no longer validates (a broker default changed) falls
    /// back to the broker defaults with an error line.
    fn topic_settings(&self, topic: &str) -> TopicSettings {
        let overrides =
            self.metadata.image().topic(topic).map(|t| t.configs.clone()).unwrap_or_default();
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
    async fn open(
        &self,
        tp: TopicPartition,
        hints: OpenHints,
        high_watermark: Option<i64>,
    ) -> Result<(), OpenPartitionError> {
        if !self.owns(&tp) {
            return Ok(());
        }
        let settings = self.topic_settings(&tp.topic);
        let dir = self.config.data_dir.join(tp.dir_name());
        let epoch = self.metadata.leader_epoch(&tp.topic, tp.partition);
        // No placement: a one-node broker's partition, led here.
        let lead = self
            .metadata
            .leader(&tp.topic, tp.partition)
            .map_or(true, |(leader, _)| leader == self.config.node_id);
        let opened = match std::fs::create_dir_all(&dir) {
            Ok(()) => Replica::open(
                tp.clone(),
                &dir,
                settings.log.clone(),
                hints,
                self.log_clock.clone(),
                epoch,
                lead,
            )
            .await
            .map_err(OpenPartitionError::from),
            Err(source) => Err(OpenPartitionError::CreateDir { dir: dir.clone(), source }),
        };
        match opened {
            Ok(replica) => {
                // A replicated partition's log may end with records the ISR did not all
                // have: its high watermark starts at the checkpointed one (or the log
                // start) and rises as the ISR's log ends are learnt. One replica: the
                // log end, as always.
                let replicated = self
                    .metadata
                    .image()
                    .topic(&tp.topic)
                    .and_then(|t| t.placement(tp.partition).map(|p| p.replicas.len() > 1))
                    .unwrap_or(false);
                if replicated {
                    replica.start_high_watermark(high_watermark.unwrap_or(0));
                }
                let partition = Rc::new(Partition {
                    replica,
                    settings: RefCell::new(settings),
                    recent: RecentBatches::default(),
                    replication: FifoLock::new(),
                });
                self.offline.remove(&tp);
                self.partitions.borrow_mut().insert(tp, partition.clone());
                self.take_role(&partition).await;
                Ok(())
            }
            Err(error) => {
                error!(partition = %tp, %error, "partition offline: it could not be opened");
                self.offline.insert(tp, error.to_string());
                Err(error)
            }
        }
    }

    // ---- housekeeping ----

    /// Flushes what is due, and applies retention when `retention_due`.
    pub async fn housekeeping(&self, retention_due: bool) {
        for partition in self.list() {
            let replica = &partition.replica;
            if let Err(error) = replica.log().maybe_flush().await {
                warn!(partition = %partition.tp(), %error, "scheduled flush failed");
                self.note_offline(&partition);
            }
            if retention_due {
                match replica.apply_retention().await {
                    Ok(deleted) if !deleted.is_empty() => {
                        info!(partition = %partition.tp(), segments = deleted.len(), "retention deleted segments")
                    }
                    Ok(_) => {}
                    Err(error) => warn!(partition = %partition.tp(), %error, "retention failed"),
                }
            }
        }
    }

    /// Writes every partition's producer snapshot and closes its log; returns the
    /// checkpoint entries (recovery point, log start, high watermark) of those that closed
    /// cleanly.
    pub async fn close_all(&self) -> Vec<(TopicPartition, i64, i64, i64)> {
        let mut checkpoints = Vec::new();
        for partition in self.list() {
            let replica = &partition.replica;
            // Every request has finished: the producer state matches the log end.
            replica.write_snapshot();
            let log = replica.log();
            match log.close().await {
                Ok(()) => checkpoints.push((
                    partition.tp().clone(),
                    log.recovery_point(),
                    log.log_start_offset(),
                    replica.high_watermark(),
                )),
                Err(error) => {
                    error!(shard = self.shard, partition = %partition.tp(), %error, "closing the log failed")
                }
            }
        }
        checkpoints
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

    /// After an operation on `partition` failed: when its log went offline (a write that
    /// failed after the log end had moved, or an undo that failed), the partition joins the
    /// broker's offline partitions, so Metadata answers it without a leader as it does a
    /// partition that could not be opened, and clients stop sending to it.
    fn note_offline(&self, partition: &Partition) {
        let Some(reason) = partition.replica.log().offline_reason() else { return };
        if self.offline.reason(partition.tp()).is_none() {
            error!(partition = %partition.tp(), %reason, "partition offline: its log failed");
            self.offline.insert(partition.tp().clone(), reason);
        }
    }

    /// Appends failed: one error line per second per shard at most.
    fn append_failure_admitted(&self) -> Option<u64> {
        self.append_failures.admit(Instant::now())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::BytesMut;
    use sluice_engine::batch::{encode_batch, EncodeOptions, Record};
    use sluice_engine::io::{FaultPlan, IoMode};
    use sluice_engine::log::LogOptions;
    use sluice_engine::metadata::MetadataImage;

    use super::*;
    use crate::error::code;
    use crate::replica::types::ProducePart;

    fn part(tp: &TopicPartition) -> ProducePart {
        let record = Record { key: None, value: Some(vec![1; 100]), timestamp: 1 };
        let batch = encode_batch(&[record], EncodeOptions::default());
        ProducePart { tp: tp.clone(), records: Some(BytesMut::from(&batch[..])) }
    }

    /// A log that fails at runtime (a direct-mode write that does not land) is listed
    /// with the partitions that could not be opened, so Metadata answers it without a
    /// leader and clients stop sending to it.
    #[test]
    fn a_log_that_fails_at_runtime_is_listed_offline() {
        sluice_engine::runtime::run_local(async {
            let dir = tempfile::tempdir().unwrap();
            let faults = Arc::new(FaultPlan::default());
            let mut config = crate::config::test_config();
            config.data_dir = dir.path().to_path_buf();
            config.log = LogOptions {
                io_mode: IoMode::Direct,
                faults: Some(faults.clone()),
                ..LogOptions::default()
            };
            let create = MetadataRecord::CreateTopic {
                name: "t".into(),
                topic_id: [3; 16],
                partitions: 1,
                replication_factor: 1,
                configs: vec![],
            };
            // Partitions open with their placement, on the brokers it names (node 0 here).
            let placed = MetadataRecord::Partition(PartitionRecord::new([3; 16], 0, vec![0]));
            let metadata = Rc::new(MetadataCache::new(MetadataImage::default()));
            metadata.apply(0, &create).unwrap();
            metadata.apply(1, &placed).unwrap();
            let offline = Arc::new(OfflinePartitions::default());
            let replicas = ReplicaManager::new(
                0,
                Arc::new(config),
                SystemClock::new(),
                metadata,
                offline.clone(),
            );
            assert!(replicas.apply(&create).await.offline.is_empty());
            assert!(replicas.apply(&placed).await.offline.is_empty());
            let tp = TopicPartition::new("t", 0);
            assert_eq!(replicas.produce(1, part(&tp)).await.0.error, None);
            assert!(offline.is_empty());
            faults.fail_next_write();
            let (failed, _) = replicas.produce(1, part(&tp)).await;
            assert_eq!(failed.error.unwrap().code, code::KAFKA_STORAGE_ERROR);
            assert_eq!(offline.of_topic("t"), [0]);
            assert!(offline.reason(&tp).unwrap().contains("failed"), "{:?}", offline.reason(&tp));
            replicas.close_all().await;
        });
    }
}
