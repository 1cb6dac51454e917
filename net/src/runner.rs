//! A shard's life on its executor: join the mesh, open the partitions it owns, load the
//! coordinators, serve connections until the broker stops, then drain, flush and close,
//! and hand the checkpoint entries back. Also the shard's housekeeping loop (flush,
//! retention, the page-cache windows, offset expiry, latency reports).
//!
//! This is the one module that ties the shard to the connection server: the shard
//! itself, the handlers and the server do not import each other in a cycle.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel;
use sluice_cluster::agent::{BrokerAgent, MetadataUpdate};
use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::SystemClock;
use sluice_engine::log::OpenHints;
use sluice_engine::metadata::MetadataImage;
use sluice_engine::shard::ShardId;
use tracing::info;

use crate::config::BrokerConfig;
use crate::controller::Controller;
use crate::limits::MESH_JOIN_TIMEOUT;
use crate::limits::{CACHE_WINDOW_TICKS, HOUSEKEEPING_TICK, MESH_CHANNEL_CAPACITY};
use crate::mesh::MeshEnds;
use crate::metadata_cache::MetadataCache;
use crate::replica::{CacheWindows, OfflinePartitions, ReplicaManager};
use crate::shard::{MeshMsg, Shard, ShardError, ShardParts};

/// What a shard needs to start.
pub struct ShardStart {
    pub id: ShardId,
    pub config: Arc<BrokerConfig>,
    pub image: MetadataImage,
    /// Shard 0 only: the broker's agent and the metadata it fetches.
    pub controller: Option<(Arc<BrokerAgent>, std::sync::mpsc::Receiver<MetadataUpdate>)>,
    /// Recovery hints from the checkpoint files, for the partitions this shard owns.
    pub hints: BTreeMap<TopicPartition, OpenHints>,
    /// High watermarks from `replication-offset-checkpoint` (a clean shutdown's).
    pub high_watermarks: BTreeMap<TopicPartition, i64>,
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

/// What a shard reports when it stops: per partition, the recovery point, log start and
/// high watermark.
pub type ShardCheckpoints = Vec<(TopicPartition, i64, i64, i64)>;

async fn housekeeping(shard: Rc<Shard>) {
    let tick = HOUSEKEEPING_TICK;
    let retention_every = Duration::from_millis(shard.config.retention_check_interval_ms.max(1));
    let mut since_retention = Duration::ZERO;
    let expiry_every =
        Duration::from_millis(shard.config.groups.offsets_retention_check_interval_ms.max(1));
    let mut since_expiry = Duration::ZERO;
    let latency_every = Duration::from_millis(shard.config.request_latency_log_interval_ms);
    // `None`: reported only when the shard stops (0, or too far out to add).
    let mut latency_window_ends =
        (!latency_every.is_zero()).then(|| Instant::now().checked_add(latency_every)).flatten();
    let mut cache_windows = CacheWindows::default();
    let mut ticks = 0u64;
    while !shard.stopping() {
        glommio::timer::sleep(tick).await;
        ticks += 1;
        since_retention += tick;
        since_expiry += tick;
        if let Some(budget) = shard.config.cache_window_budget_bytes {
            if ticks % CACHE_WINDOW_TICKS == 0 {
                cache_windows.adapt(&shard.replicas.list(), budget, Instant::now());
            }
        }
        // By the clock, not by counting ticks: the windows should line up with a
        // client's per-second figures.
        if let Some(ends) = latency_window_ends.filter(|ends| Instant::now() >= *ends) {
            shard.request_metrics.report(shard.id);
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
            shard.groups.expire_offsets(&shard).await;
        }
        let retention_due = since_retention >= retention_every;
        if retention_due {
            since_retention = Duration::ZERO;
        }
        shard.replicas.housekeeping(retention_due).await;
    }
    shard.groups.shutdown();
    shard.fire_stop();
}

/// Starts a shard on the current executor: joins the mesh, opens the partitions it owns,
/// serves connections until `stop`, then drains, flushes and closes. Returns the
/// checkpoint entries of its partitions.
pub async fn run(start: ShardStart) -> Result<ShardCheckpoints, ShardError> {
    let id = start.id;
    let (senders, receivers) = crate::mesh::connect(start.mesh, MESH_JOIN_TIMEOUT)
        .await
        .map_err(|reason| ShardError::Mesh { shard: id, reason })?;
    let clock = SystemClock::new();
    let applied = start.image.offset();
    let controller =
        start.controller.map(|(agent, updates)| Rc::new(Controller::new(agent, updates, applied)));
    let metadata_cache = Rc::new(MetadataCache::new(start.image));
    let replicas = ReplicaManager::new(
        id,
        start.config.clone(),
        clock.clone(),
        metadata_cache.clone(),
        start.offline.clone(),
    );
    let shard = Rc::new(Shard::new(ShardParts {
        id,
        config: start.config.clone(),
        clock,
        metadata_cache,
        replicas,
        mesh: senders,
        controller,
        stop: start.stop,
    }));

    // Segment files keep descriptors within this shard's share of `log.open.files.max`.
    sluice_engine::fdcache::set_budget(start.config.open_files_per_shard);
    let offline = shard.replicas.open_owned(&start.hints, &start.high_watermarks).await;
    let files = sluice_engine::fdcache::stats();
    info!(
        shard = id,
        partitions = shard.replicas.len(),
        offline,
        open_segment_files = files.held,
        open_files_budget = files.budget,
        "shard ready"
    );
    (start.on_opened)();

    shard.load_coordinators().await;

    let mesh_task = glommio::spawn_local(shard.clone().serve_mesh(receivers));
    let pump_task = shard.controller.clone().map(|c| glommio::spawn_local(c.pump(shard.clone())));
    let (expired_sender, expired_receiver) = local_channel::new_unbounded();
    let group_timer_task = shard
        .groups
        .timers
        .spawn(move |(_, timer)| {
            let _ = expired_sender.try_send(timer);
        })
        .map_err(|error| ShardError::Timer { which: "group", reason: error.to_string() })?;
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
        .map_err(|error| ShardError::Timer { which: "transaction", reason: error.to_string() })?;
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
        .replicas
        .spawn_timers()
        .map_err(|error| ShardError::Timer { which: "fetch", reason: error.to_string() })?;
    let housekeeping = glommio::spawn_local(housekeeping(shard.clone()));
    let replication = glommio::spawn_local(crate::replication::run(shard.clone()));
    let served = crate::server::serve(shard.clone()).await;
    shard.log_fetch_sends();
    if id == 0 {
        // The helper's counters are per process: one shard reports them.
        sluice_engine::writeback::log_counters();
    }
    shard.request_metrics.report(id);
    housekeeping.await;
    replication.await;
    shard.replicas.stop_timers();
    timer_task.await;
    shard.groups.timers.stop();
    group_timer_task.await;
    drop(group_expiry_task);
    shard.txns.timers.stop();
    txn_timer_task.await;
    drop(txn_expiry_task);
    drop(mesh_task);
    if let Some(pump) = pump_task {
        pump.await;
    }

    let checkpoints = shard.replicas.close_all().await;
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
