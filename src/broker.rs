//! Broker start-up and shutdown: raise the locked-memory limit, check the data directory,
//! start one pinned glommio shard per core, let each shard recover the partition logs it
//! owns (`shard_of`), run their housekeeping (flush.ms, retention), and on SIGINT/SIGTERM
//! close every log and write Kafka's checkpoint files from the main thread (one writer).
//!
//! The Kafka protocol listener joins this loop with the broker issue; today `serve` is the
//! storage side of the daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sluice_engine::checkpoint::{self, TopicPartition};
use sluice_engine::clock::{Clock, SystemClock};
use sluice_engine::log::{Log, LogOptions, OpenHints};
use sluice_engine::runtime;
use sluice_engine::shard::{shard_of, ShardId};
use tracing::{error, info, warn};

use crate::config::Config;

/// How often a shard checks for shutdown and runs `flush.ms`.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);

/// What a shard reports when it stops: per partition, the recovery point and log start.
type ShardCheckpoints = Vec<(TopicPartition, i64, i64)>;

pub fn serve(config: Config) -> anyhow::Result<()> {
    let memlock = runtime::raise_memlock_limit();
    check_data_dir(&config.data_dir)?;
    let recovery_points = checkpoint::read(&config.data_dir.join(checkpoint::RECOVERY_POINT_FILE))
        .context("reading the recovery-point checkpoint")?;
    let log_starts = checkpoint::read(&config.data_dir.join(checkpoint::LOG_START_OFFSET_FILE))
        .context("reading the log-start-offset checkpoint")?;
    let partitions = list_partitions(&config.data_dir)?;
    tracing::debug!(properties = ?config.properties, "broker properties");
    info!(
        listen = %config.listen, advertise = %config.advertise, data_dir = %config.data_dir.display(), shards = config.cores,
        io = %config.log.io_mode, partitions = partitions.len(), memlock,
        "starting sluice"
    );

    // Block the shutdown signals in every thread; one thread waits for them.
    let signals = {
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(nix::sys::signal::Signal::SIGINT);
        set.add(nix::sys::signal::Signal::SIGTERM);
        set
    };
    signals.thread_block().context("blocking SIGINT/SIGTERM")?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Ok(signal) = signals.wait() {
                    info!(?signal, "shutting down");
                }
                stop.store(true, Ordering::SeqCst);
            })
            .context("starting the signal thread")?;
    }

    let mut handles = Vec::new();
    for shard in 0..config.cores {
        let placement = runtime::pinned_placement(shard);
        let owned: Vec<(TopicPartition, OpenHints)> = partitions
            .iter()
            .filter(|tp| shard_of(&tp.topic, tp.partition, config.cores) == shard)
            .map(|tp| {
                let hints = OpenHints {
                    recovery_point: recovery_points.get(tp).copied().unwrap_or(0),
                    log_start_offset: log_starts.get(tp).copied().unwrap_or(0),
                };
                (tp.clone(), hints)
            })
            .collect();
        let data_dir = config.data_dir.clone();
        let options = config.log.clone();
        let retention_interval = Duration::from_millis(config.retention_check_interval_ms);
        let shard_stop = stop.clone();
        let handle = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{shard}"))
            // glommio's default 100 ms preemption would let one busy task delay timer
            // expiries by that much; the purgatory promises one tick (1 ms).
            .preempt_timer(Duration::from_millis(1))
            .spawn(move || async move {
                run_shard(shard, data_dir, owned, options, retention_interval, shard_stop).await
            })
            .map_err(|error| {
                anyhow::anyhow!(runtime::explain_executor_error(&error, config.cores as u64))
            });
        match handle {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                stop.store(true, Ordering::SeqCst);
                for handle in handles {
                    let _ = handle.join();
                }
                return Err(error);
            }
        }
    }

    let mut recovery = BTreeMap::new();
    let mut starts = BTreeMap::new();
    let mut failed = false;
    for handle in handles {
        match handle.join() {
            Ok(entries) => {
                for (tp, recovery_point, log_start_offset) in entries {
                    recovery.insert(tp.clone(), recovery_point);
                    starts.insert(tp, log_start_offset);
                }
            }
            Err(error) => {
                error!(%error, "a shard failed");
                failed = true;
                stop.store(true, Ordering::SeqCst);
            }
        }
    }
    // Partitions that were offline keep their old checkpoint entries.
    for (tp, offset) in recovery_points {
        recovery.entry(tp).or_insert(offset);
    }
    for (tp, offset) in log_starts {
        starts.entry(tp).or_insert(offset);
    }
    checkpoint::write(&config.data_dir.join(checkpoint::RECOVERY_POINT_FILE), &recovery)?;
    checkpoint::write(&config.data_dir.join(checkpoint::LOG_START_OFFSET_FILE), &starts)?;
    if failed {
        bail!("a shard failed; see the log above");
    }
    info!("stopped cleanly");
    Ok(())
}

fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("data dir {} cannot be created", dir.display()))?;
    let probe = dir.join(".sluice-write-probe");
    std::fs::write(&probe, b"ok")
        .with_context(|| format!("data dir {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

/// Partition directories (`<topic>-<partition>`) in the data dir.
fn list_partitions(dir: &Path) -> anyhow::Result<Vec<TopicPartition>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((topic, partition)) = name.rsplit_once('-') {
            if let Ok(partition) = partition.parse::<i32>() {
                if !topic.is_empty() && partition >= 0 {
                    out.push(TopicPartition::new(topic, partition));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

async fn run_shard(
    shard: ShardId,
    data_dir: PathBuf,
    owned: Vec<(TopicPartition, OpenHints)>,
    options: LogOptions,
    retention_interval: Duration,
    stop: Arc<AtomicBool>,
) -> ShardCheckpoints {
    let clock: Rc<dyn Clock> = Rc::new(SystemClock::new());
    let mut logs: Vec<(TopicPartition, Log)> = Vec::new();
    for (tp, hints) in owned {
        let dir = data_dir.join(tp.dir_name());
        // A partition that cannot be recovered goes offline; the shard and the process
        // carry on serving the others.
        match Log::open(&dir, options.clone(), hints, clock.clone()).await {
            Ok(log) => logs.push((tp, log)),
            Err(error) => error!(shard, partition = %tp, %error, "partition offline"),
        }
    }
    info!(shard, partitions = logs.len(), "shard ready");
    let mut since_retention = Duration::ZERO;
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(HOUSEKEEPING_INTERVAL).await;
        since_retention += HOUSEKEEPING_INTERVAL;
        for (tp, log) in &logs {
            if let Err(error) = log.maybe_flush().await {
                warn!(shard, partition = %tp, %error, "scheduled flush failed");
            }
            if since_retention >= retention_interval {
                if let Err(error) = log.apply_retention().await {
                    warn!(shard, partition = %tp, %error, "retention failed");
                }
            }
        }
        if since_retention >= retention_interval {
            since_retention = Duration::ZERO;
        }
    }
    let mut checkpoints = Vec::new();
    for (tp, log) in logs {
        match log.close().await {
            Ok(()) => checkpoints.push((tp, log.recovery_point(), log.log_start_offset())),
            Err(error) => error!(shard, partition = %tp, %error, "closing the log failed"),
        }
    }
    info!(shard, "shard stopped");
    checkpoints
}
