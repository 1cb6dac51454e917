//! Broker start-up and shutdown: raise the locked-memory and open-file limits (and share
//! the descriptors segment files may hold among the shards), check the data directory
//! and the listen address, replay the metadata log, start one pinned glommio shard per
//! core (each owns the partitions `shard_of` gives it and serves Kafka clients on the
//! shared SO_REUSEPORT address), and on SIGINT/SIGTERM let the shards drain and close
//! their logs, then write Kafka's checkpoint files from the main thread (one writer).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sluice_cluster::agent::{
    AgentOptions, BrokerAgent, ControllerChannel, LocalChannel, RemoteChannel,
};
use sluice_cluster::controller::rpc::Endpoint;
use sluice_cluster::controller::runtime::{process_seed, ControllerRuntime, RuntimeOptions};
use sluice_cluster::controller::Settings;
use sluice_cluster::quorum::Durability;
use sluice_engine::checkpoint::{self, TopicPartition};
use sluice_engine::log::OpenHints;
use sluice_engine::metadata::{self, MetadataLog, MetadataRecord};
use sluice_engine::runtime;
use sluice_engine::shard::shard_of;
use sluice_engine::writeback;
use sluice_net::config::BrokerConfig;
use sluice_net::replica::OfflinePartitions;
use sluice_net::runner::{self, ShardStart};
use sluice_net::shard::ShardError;
use tracing::{error, info, warn};

use crate::config::{AdvertisedHost, Config};

/// `meta.properties` in the data dir: the cluster id and node id, like Kafka's.
const META_PROPERTIES: &str = "meta.properties";
/// The id of the boot the broker last opened its logs in (see `machine_restarted`).
const BOOT_ID_FILE: &str = "boot-id";
/// The kernel's id of the running boot, new at every boot.
const KERNEL_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// How long the other shards get to stop after one failed.
const SHARD_STOP_WAIT: Duration = Duration::from_secs(10);

/// A shard's result, sent to the main thread when the shard ends, also by panic (drop).
struct ShardReport {
    id: usize,
    done: std::sync::mpsc::Sender<(usize, Result<runner::ShardCheckpoints, ShardError>)>,
    sent: bool,
}

impl ShardReport {
    fn send(mut self, result: Result<runner::ShardCheckpoints, ShardError>) {
        self.sent = true;
        let _ = self.done.send((self.id, result));
    }
}

impl Drop for ShardReport {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.done.send((self.id, Err(ShardError::Panicked(self.id))));
        }
    }
}

/// How long start-up waits for a busy listen port (see `check_listen_address`).
const PORT_WAIT: Duration = Duration::from_secs(10);

/// The fewest descriptors a shard's segment files may hold, whatever the limit says.
const OPEN_FILES_PER_SHARD_MIN: u64 = 16;

/// `log.open.files.max`: the descriptors all shards' segment files may hold together, each
/// shard an equal share. 0 (the default) takes half the open-file limit, leaving the
/// other half to connections, the metadata log and the runtime.
fn open_files_per_shard(config: &Config, open_files_limit: u64) -> anyhow::Result<(u64, u64)> {
    let value = config.properties.get("log.open.files.max").map_or("0", String::as_str);
    let configured: u64 = value.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "log.open.files.max: {value:?} is not a valid number (0: half the open-file limit)"
        )
    })?;
    let total = if configured == 0 { open_files_limit / 2 } else { configured };
    if configured > open_files_limit {
        warn!(
            log_open_files_max = configured,
            open_files_limit,
            "log.open.files.max is above the open-file limit: opens may fail with EMFILE"
        );
    }
    let shards = config.cores as u64;
    Ok((total, (total / shards).max(OPEN_FILES_PER_SHARD_MIN)))
}

pub fn serve(config: Config) -> anyhow::Result<()> {
    // Block the shutdown signals in every thread, before any is started (they inherit
    // the mask); one thread waits for them.
    let signals = {
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(nix::sys::signal::Signal::SIGINT);
        set.add(nix::sys::signal::Signal::SIGTERM);
        set
    };
    signals.thread_block().context("blocking SIGINT/SIGTERM")?;
    let memlock = runtime::raise_memlock_limit();
    let open_files_limit = runtime::raise_open_files_limit();
    let (open_files_max, open_files_per_shard) = open_files_per_shard(&config, open_files_limit)?;
    info!(
        open_files_limit,
        log_open_files_max = open_files_max,
        per_shard = open_files_per_shard,
        "open-file limit raised to the hard limit; segment files keep at most log.open.files.max descriptors open"
    );
    let full = check_data_dir(&config.data_dir)?;
    let reserve = config.data_dir.join(metadata::METADATA_DIR).join(CONTROLLER_RESERVE_FILE);
    if full {
        release_reserve(&reserve);
    }
    let listen = check_listen_address(config.listen)?;
    let (advertised_host, advertised_port) = advertised(&config, listen)?;
    let quorum_id =
        (!config.cluster.is_single_node()).then(|| quorum_cluster_id(&config.cluster.voters));
    let cluster_id = cluster_id(&config.data_dir, config.node_id, quorum_id)?;

    let mut quorum = start_quorum(&config)?;
    if !config.cluster.broker {
        return serve_controller_only(quorum, signals);
    }
    let (agent, image) = join_cluster(&config, &quorum, &advertised_host, advertised_port)?;
    let recovery_points = checkpoint::read(&config.data_dir.join(checkpoint::RECOVERY_POINT_FILE))
        .context("reading the recovery-point checkpoint")?;
    let log_starts = checkpoint::read(&config.data_dir.join(checkpoint::LOG_START_OFFSET_FILE))
        .context("reading the log-start-offset checkpoint")?;
    // Written at a clean shutdown only: after a crash it is older, so lower, which is safe
    // (a replicated partition's high watermark then rises as its ISR reports).
    let high_watermarks = checkpoint::read(&config.data_dir.join(checkpoint::HIGH_WATERMARK_FILE))
        .context("reading the replication-offset checkpoint")?;
    let (machine_restarted, boot_id) = machine_restarted(&config.data_dir);
    // `log.page.cache.window.bytes=auto`: the page cache kept for appends, shared by shards.
    let cache_budget =
        config.cache_window_auto.then(|| writeback::auto_budget_bytes(memory_bytes().unwrap_or(0)));
    tracing::debug!(properties = ?config.properties, "broker properties");
    info!(
        listen = %listen, advertise = %format!("{advertised_host}:{advertised_port}"),
        data_dir = %config.data_dir.display(), shards = config.cores, io = %config.log.io_mode,
        topics = image.len(), memlock, cluster_id = %cluster_id, machine_restarted,
        page_cache_budget_bytes = ?cache_budget,
        "starting sluice"
    );
    let broker = Arc::new(BrokerConfig {
        node_id: config.node_id,
        cluster_id,
        listen,
        advertised_host,
        advertised_port,
        data_dir: config.data_dir.clone(),
        shards: config.cores,
        log: config.log.clone(),
        cache_window_budget_bytes: cache_budget
            .map(|budget| budget / u64::try_from(config.cores).unwrap_or(1).max(1)),
        retention_check_interval_ms: config.retention_check_interval_ms,
        num_partitions: config.num_partitions,
        default_replication_factor: config.default_replication_factor,
        auto_create_topics: config.auto_create_topics,
        delete_topic_enable: config.delete_topic_enable,
        cleanup_policy: config.cleanup_policy.clone(),
        message_timestamp_type: config.message_timestamp_type.clone(),
        min_insync_replicas: config.min_insync_replicas,
        socket_request_max_bytes: config.socket_request_max_bytes,
        queued_max_requests: config.queued_max_requests,
        max_connections_per_shard: config.max_connections_per_shard,
        request_latency_log_interval_ms: config.request_latency_log_interval_ms,
        groups: config.groups.clone(),
        txns: config.txns.clone(),
        replication: config.replication.clone(),
        properties: config.properties.clone(),
        open_files_per_shard: usize::try_from(open_files_per_shard).unwrap_or(usize::MAX),
    });

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let agent = agent.clone();
        let others = !config.cluster.is_single_node();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Ok(signal) = signals.wait() {
                    info!(?signal, "shutting down");
                }
                // Controlled shutdown: leadership moves to other in-sync replicas before
                // the shards stop, so clients move with it. A one-node cluster has no one
                // to hand leadership to.
                if others {
                    if agent.controlled_shutdown(CONTROLLED_SHUTDOWN_WAIT) {
                        info!("controlled shutdown: the controller moved leadership away");
                    } else {
                        warn!("controlled shutdown did not finish within {CONTROLLED_SHUTDOWN_WAIT:?}; stopping anyway");
                    }
                }
                stop.store(true, Ordering::SeqCst);
            })
            .context("starting the signal thread")?;
    }

    let mut mesh_ends = runner::mesh(config.cores).into_iter();
    let offline = Arc::new(OfflinePartitions::default());
    let updates = agent.start(image.next_offset()).map_err(anyhow::Error::msg)?;
    if !agent.wait_unfenced(UNFENCE_WAIT) {
        warn!("the controller has not unfenced this broker within {UNFENCE_WAIT:?}; serving anyway (it may not lead partitions yet)");
    }
    let mut controller_link = Some((agent.clone(), updates));
    // The controller has written what a start writes: keep room for the next start.
    keep_reserve(&reserve);
    let mut handles = Vec::new();
    let (done_sender, finished) = std::sync::mpsc::channel();
    // Once every shard has opened its logs, the data dir belongs to this boot.
    let shards_opening = Arc::new(std::sync::atomic::AtomicUsize::new(config.cores));
    let stall_threshold_ms = config.stall_threshold_ms;
    let idle_poll = Duration::from_micros(config.idle_poll_us);
    if stall_threshold_ms > 0 {
        runtime::StallLogger::prepare();
    }
    for id in 0..config.cores {
        let hints: BTreeMap<TopicPartition, OpenHints> = image
            .topics()
            .flat_map(|t| (0..t.partitions).map(|p| TopicPartition::new(t.name.clone(), p)))
            .filter(|tp| shard_of(&tp.topic, tp.partition, config.cores) == id)
            .map(|tp| {
                let hints = OpenHints {
                    recovery_point: recovery_points.get(&tp).copied().unwrap_or(0),
                    log_start_offset: log_starts.get(&tp).copied().unwrap_or(0),
                    machine_restarted,
                };
                (tp, hints)
            })
            .collect();
        let done = done_sender.clone();
        let start = ShardStart {
            id,
            config: broker.clone(),
            image: image.clone(),
            controller: if id == 0 { controller_link.take() } else { None },
            high_watermarks: high_watermarks
                .iter()
                .filter(|(tp, _)| hints.contains_key(tp))
                .map(|(tp, offset)| (tp.clone(), *offset))
                .collect(),
            hints,
            mesh: mesh_ends.next().expect("one mesh end per shard"),
            stop: stop.clone(),
            on_opened: {
                let (opening, data_dir, boot_id) =
                    (shards_opening.clone(), config.data_dir.clone(), boot_id.clone());
                Box::new(move || {
                    if opening.fetch_sub(1, Ordering::SeqCst) == 1 {
                        record_boot(&data_dir, boot_id.as_deref());
                    }
                })
            },
            offline: offline.clone(),
        };
        let handle = glommio::LocalExecutorBuilder::new(runtime::pinned_placement(id))
            .name(&format!("shard-{id}"))
            // glommio's default 100 ms preemption would let one busy task delay timer
            // expiries by that much; the purgatory promises one tick (1 ms).
            .preempt_timer(Duration::from_millis(1))
            // Polling instead of sleeping spares the next request the wake-up of an idle
            // core, which costs 40-60 us on a VM (perf/RESULTS.md, "What loopback and
            // sendfile carry here", 2026-11-21).
            .spin_before_park(idle_poll)
            .detect_stalls((stall_threshold_ms > 0).then(|| {
                Box::new(runtime::StallLogger {
                    shard: id,
                    threshold: Duration::from_millis(stall_threshold_ms),
                }) as Box<dyn glommio::StallDetectionHandler>
            }))
            .spawn(move || async move {
                let report = ShardReport { id, done, sent: false };
                report.send(runner::run(start).await);
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

    drop(done_sender);
    // Shards report as they end. After the first failure the others get SHARD_STOP_WAIT
    // to stop; one that does not (stuck in a system call) is left behind and the process
    // exits with the error rather than hanging.
    let mut recovery = BTreeMap::new();
    let mut starts = BTreeMap::new();
    let mut watermarks = BTreeMap::new();
    let mut failures = Vec::new();
    let mut deadline: Option<std::time::Instant> = None;
    for _ in 0..handles.len() {
        let report = match deadline {
            None => finished.recv().ok(),
            Some(deadline) => finished
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .ok(),
        };
        match report {
            Some((_, Ok(entries))) => {
                for (tp, recovery_point, log_start_offset, high_watermark) in entries {
                    recovery.insert(tp.clone(), recovery_point);
                    starts.insert(tp.clone(), log_start_offset);
                    watermarks.insert(tp, high_watermark);
                }
            }
            Some((id, Err(reason))) => {
                error!(shard = id, %reason, "a shard failed");
                failures.push(reason.to_string());
                stop.store(true, Ordering::SeqCst);
                deadline.get_or_insert_with(|| std::time::Instant::now() + SHARD_STOP_WAIT);
            }
            None => {
                error!("a shard did not stop within {SHARD_STOP_WAIT:?} of a failure; exiting");
                failures.push("a shard did not stop".to_string());
                break;
            }
        }
    }
    drop(handles);
    // Partitions that were offline keep their old entries; deleted ones lose them.
    for (tp, offset) in recovery_points {
        if config.data_dir.join(tp.dir_name()).is_dir() {
            recovery.entry(tp).or_insert(offset);
        }
    }
    for (tp, offset) in log_starts {
        if config.data_dir.join(tp.dir_name()).is_dir() {
            starts.entry(tp).or_insert(offset);
        }
    }
    for (tp, offset) in high_watermarks {
        if config.data_dir.join(tp.dir_name()).is_dir() {
            watermarks.entry(tp).or_insert(offset);
        }
    }
    agent.stop();
    if let Some(runtime) = quorum.runtime.as_mut() {
        runtime.shutdown();
    }
    checkpoint::write(&config.data_dir.join(checkpoint::RECOVERY_POINT_FILE), &recovery)?;
    checkpoint::write(&config.data_dir.join(checkpoint::LOG_START_OFFSET_FILE), &starts)?;
    checkpoint::write(&config.data_dir.join(checkpoint::HIGH_WATERMARK_FILE), &watermarks)?;
    if let Some(first) = failures.first() {
        bail!("{first}");
    }
    info!("stopped cleanly");
    Ok(())
}

/// Whether the machine restarted since the logs in `data_dir` were last opened, and the
/// id of the running boot. After a restart, writes that had not reached the device may be
/// lost in any order, which recovery must allow for (`OpenHints::machine_restarted`);
/// after a crash of the process alone the page cache kept them. Unknown (no boot id on
/// record, as on the first start, or none from the kernel) counts as a restart: recovery
/// then cuts the log at the first invalid batch above the recovery point, as Kafka does.
fn machine_restarted(data_dir: &Path) -> (bool, Option<String>) {
    let current = std::fs::read_to_string(KERNEL_BOOT_ID).ok().map(|id| id.trim().to_string());
    let recorded = std::fs::read_to_string(data_dir.join(BOOT_ID_FILE)).ok();
    let restarted = match (&current, recorded) {
        (Some(current), Some(recorded)) => current != recorded.trim(),
        _ => true,
    };
    (restarted, current)
}

/// Records the running boot's id once every log is open (not before: a crash during
/// recovery after a restart must be recovered as after a restart again). Not fsynced: if
/// the machine stops before the file reaches the disk, the next boot differs anyway.
fn record_boot(data_dir: &Path, boot_id: Option<&str>) {
    let Some(boot_id) = boot_id else { return };
    let path = data_dir.join(BOOT_ID_FILE);
    let temp = path.with_extension("tmp");
    let written =
        std::fs::write(&temp, format!("{boot_id}\n")).and_then(|()| std::fs::rename(&temp, &path));
    if let Err(error) = written {
        warn!(path = %path.display(), %error, "recording the boot id failed");
    }
}

/// The machine's memory (`MemTotal` in /proc/meminfo).
fn memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Whether the data dir is full (a probe write found no room).
fn check_data_dir(dir: &Path) -> anyhow::Result<bool> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("data dir {} cannot be created", dir.display()))?;
    let probe = dir.join(".sluice-write-probe");
    let written = std::fs::write(&probe, b"ok");
    std::fs::remove_file(&probe).ok();
    match written {
        Ok(()) => Ok(false),
        // Writable, but full: the logs open and serve what they hold (produce is refused
        // until there is room), as a full disk is no reason to refuse reads.
        Err(error) if sluice_engine::io::out_of_space(&error) => {
            tracing::warn!(dir = %dir.display(), %error, "the data dir is full: appends will fail until there is room");
            Ok(true)
        }
        Err(error) => Err(anyhow::Error::new(error)
            .context(format!("data dir {} is not writable", dir.display()))),
    }
}

/// Checks that the listen address is free and resolves port 0 to the port to use.
///
/// Two checks, because the shards bind with SO_REUSEPORT: a connect (something already
/// serving there, such as another broker, which SO_REUSEPORT binds would otherwise
/// share the port with), then a bind with SO_REUSEPORT like the shards' own (a program
/// holding the port without SO_REUSEPORT). The probe must use SO_REUSEPORT: the
/// connections of a previous run of this broker linger in FIN-WAIT for up to a minute
/// after it exits, and only a SO_REUSEPORT bind may share the port with them.
///
/// A busy port is retried for a few seconds: after a SIGKILL the kernel closes the dead
/// broker's io_uring rings, and the listening sockets their pending accepts hold,
/// asynchronously, so an immediate restart can find the port busy for a moment.
fn check_listen_address(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    let deadline = std::time::Instant::now() + PORT_WAIT;
    let mut warned = false;
    loop {
        let served = listen.port() != 0
            && std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(300)).is_ok();
        let outcome = if served {
            Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "something is serving there"))
        } else {
            probe_bind(listen)
        };
        match outcome {
            Ok(resolved) => return Ok(resolved),
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                if !warned {
                    warn!(%listen, "port in use; waiting up to {PORT_WAIT:?} for it to be released");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("cannot listen on {listen} (port in use or address not available)")
                })
            }
        }
    }
}

/// Binds (without listening) a SO_REUSEPORT socket to `listen`; returns the bound address.
fn probe_bind(listen: SocketAddr) -> std::io::Result<SocketAddr> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let family = if listen.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(listen))?;
    let bound: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    if let Some(v4) = bound.as_sockaddr_in() {
        return Ok(SocketAddr::from((v4.ip(), v4.port())));
    }
    if let Some(v6) = bound.as_sockaddr_in6() {
        return Ok(SocketAddr::from((v6.ip(), v6.port())));
    }
    Err(std::io::Error::other("unexpected socket address family"))
}

/// The host and port clients are told to connect to; the port the broker listens on
/// unless one was configured.
fn advertised(config: &Config, listen: SocketAddr) -> anyhow::Result<(String, i32)> {
    let host = match &config.advertise.host {
        AdvertisedHost::ListenIp => listen.ip().to_string(),
        AdvertisedHost::MachineName => machine_name()?,
        AdvertisedHost::Name(host) => host.clone(),
    };
    Ok((host, i32::from(config.advertise.port.unwrap_or(listen.port()))))
}

/// This machine's host name, which Kafka advertises for a listener with an empty host
/// (Kafka takes the canonical name from DNS; we take the kernel's).
fn machine_name() -> anyhow::Result<String> {
    const HOSTNAME: &str = "/proc/sys/kernel/hostname";
    let name = std::fs::read_to_string(HOSTNAME)
        .with_context(|| format!("reading the host name to advertise from {HOSTNAME}"))?;
    let name = name.trim();
    if name.is_empty() {
        bail!("the host name is empty: set advertised.listeners or --advertise");
    }
    Ok(name.to_string())
}

/// The cluster id from `meta.properties`, created on first start (22 characters of
/// URL-safe base64 over 16 random bytes, like Kafka's). A node id that differs from the
/// stored one is refused: the data dir belongs to another broker.
fn cluster_id(data_dir: &Path, node_id: i32, quorum: Option<String>) -> anyhow::Result<String> {
    let path = data_dir.join(META_PROPERTIES);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut cluster = None;
        let mut node = None;
        for line in text.lines() {
            if let Some(value) = line.strip_prefix("cluster.id=") {
                cluster = Some(value.trim().to_string());
            } else if let Some(value) = line.strip_prefix("node.id=") {
                node = value.trim().parse::<i32>().ok();
            }
        }
        let Some(cluster) = cluster else { bail!("{} has no cluster.id", path.display()) };
        if node.is_some_and(|stored| stored != node_id) {
            bail!("{} belongs to node {node:?}, this is node {node_id}", path.display());
        }
        if let Some(quorum) = quorum.filter(|quorum| *quorum != cluster) {
            bail!(
                "{} belongs to cluster {cluster}, but controller.quorum.voters names cluster \
                 {quorum}: a data dir joins the cluster it was made in",
                path.display()
            );
        }
        return Ok(cluster);
    }
    let cluster = quorum.unwrap_or_else(|| base64_url(&metadata::new_topic_id()));
    let text = format!("version=1\ncluster.id={cluster}\nnode.id={node_id}\n");
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(cluster)
}

/// The cluster id of a quorum of several voters: the same on every node without a
/// formatting step (Kafka's `kafka-storage format --cluster-id`), since it is derived from
/// `controller.quorum.voters`, which every node of a cluster is given alike.
fn quorum_cluster_id(voters: &[sluice_cluster::config::Voter]) -> String {
    let mut names: Vec<String> = voters.iter().map(ToString::to_string).collect();
    names.sort();
    let text = names.join(",");
    let mut id = [0u8; 16];
    for (index, chunk) in id.chunks_exact_mut(4).enumerate() {
        let salted = format!("sluice-cluster-{index}:{text}");
        chunk.copy_from_slice(&crc32c::crc32c(salted.as_bytes()).to_be_bytes());
    }
    base64_url(&id)
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// How long a stopping broker waits for the controller to move its leadership away.
const CONTROLLED_SHUTDOWN_WAIT: Duration = Duration::from_secs(30);
/// How long a starting broker waits to be unfenced before it serves all the same.
const UNFENCE_WAIT: Duration = Duration::from_secs(60);
/// How long a starting broker tries to register and catch up with the metadata.
const JOIN_WAIT: Duration = Duration::from_secs(300);
/// Raft entries applied between two snapshots of the controller's metadata.
const SNAPSHOT_ENTRIES: u64 = 10_000;
/// The largest frame on the controller links (a snapshot travels in one).
const CONTROLLER_FRAME_BYTES_MAX: u32 = 80 * 1024 * 1024;

/// A file of [`CONTROLLER_RESERVE_BYTES`] kept in the metadata directory: on a start
/// that finds the disk full it is deleted, so that the controller can write what a start
/// writes (its vote, the broker's registration) and the broker serves what it holds.
const CONTROLLER_RESERVE_FILE: &str = "reserved-space";
const CONTROLLER_RESERVE_BYTES: usize = 1 << 20;

fn release_reserve(reserve: &Path) {
    if std::fs::remove_file(reserve).is_ok() {
        warn!(file = %reserve.display(), bytes = CONTROLLER_RESERVE_BYTES, "the disk is full: released the space kept for the controller, so that it can start");
    }
}

/// Makes the reserve again if it is missing (best effort: on a disk that is still full it
/// keeps what it could get, so the disk is as full as the start found it, and a later
/// start makes it whole).
fn keep_reserve(reserve: &Path) {
    if reserve.exists() {
        return;
    }
    let write = || -> std::io::Result<()> {
        if let Some(dir) = reserve.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(reserve)?;
        std::io::Write::write_all(&mut &file, &vec![0u8; CONTROLLER_RESERVE_BYTES])?;
        file.sync_all()
    };
    if let Err(error) = write() {
        info!(%error, "no room to keep all the space for the controller's next start");
    }
}

/// The cluster's parts in this process: the controller thread (on a voter) and the way
/// to the active controller.
struct Quorum {
    runtime: Option<ControllerRuntime>,
    channel: Arc<dyn ControllerChannel>,
}

/// `controller.quorum.voters` with their addresses resolved.
fn resolve_voters(config: &Config) -> anyhow::Result<Vec<(i32, SocketAddr)>> {
    config
        .cluster
        .voters
        .iter()
        .map(|voter| {
            let addr = (voter.host.as_str(), voter.port)
                .to_socket_addrs()
                .with_context(|| format!("controller.quorum.voters: cannot resolve {voter}"))?
                .find(SocketAddr::is_ipv4)
                .with_context(|| format!("controller.quorum.voters: {voter} has no address"))?;
            Ok((voter.id, addr))
        })
        .collect()
}

/// Starts this node's controller (a voter's, or the one-node cluster's) and opens the way
/// to the active controller. The one-node cluster adopts the metadata log of a broker
/// from before the quorum at its first start, with any partition directories that log
/// did not know.
fn start_quorum(config: &Config) -> anyhow::Result<Quorum> {
    let cluster = &config.cluster;
    let single = cluster.is_single_node();
    let voters = if single {
        // Alone: no one to talk to, so the address is never used.
        vec![(cluster.node_id, SocketAddr::from(([127, 0, 0, 1], 0)))]
    } else {
        resolve_voters(config)?
    };
    let metadata_dir = config.data_dir.join(metadata::METADATA_DIR);
    let raft_dir = metadata_dir.join("raft");
    let fresh = !raft_dir.exists();
    let old_log = metadata_dir.join(metadata::METADATA_FILE);
    let had_old_log = old_log.exists();
    let adopt = if single && (fresh || had_old_log) {
        let (mut log, mut image) =
            MetadataLog::open(&config.data_dir).context("opening the metadata log")?;
        adopt_partition_dirs(&config.data_dir, &mut log, &mut image)?;
        drop(log);
        if !had_old_log && image.is_empty() {
            // A new data dir: nothing to adopt, and no old log to leave behind.
            std::fs::remove_file(&old_log).ok();
            None
        } else {
            Some((image, old_log))
        }
    } else {
        None
    };
    let runtime = if cluster.controller {
        let settings = Settings {
            session_timeout_ms: cluster.session_timeout_ms,
            unclean_leader_election: cluster.unclean_leader_election,
            num_partitions: config.num_partitions,
            default_replication_factor: config.default_replication_factor,
            offsets_topic_replication_factor: cluster.offsets_topic_replication_factor,
            transaction_state_log_replication_factor: cluster
                .transaction_state_log_replication_factor,
            leader_imbalance_percentage: cluster.leader_imbalance_per_broker_percentage,
            local_broker: cluster.broker.then_some(cluster.node_id),
        };
        let runtime = ControllerRuntime::start(RuntimeOptions {
            node_id: cluster.node_id,
            voters: voters.clone(),
            listen: if single { None } else { cluster.controller_listen },
            raft_dir,
            durability: Durability::Sync,
            settings,
            auto_leader_rebalance: cluster.auto_leader_rebalance,
            leader_imbalance_check_interval_ms: cluster.leader_imbalance_check_interval_ms,
            adopt,
            snapshot_entries_min: SNAPSHOT_ENTRIES,
            max_frame_bytes: CONTROLLER_FRAME_BYTES_MAX,
            seed: process_seed(cluster.node_id),
        })
        .context("starting the controller")?;
        if let Some(addr) = runtime.local_addr() {
            info!(%addr, voters = ?voters, "controller listening");
        }
        Some(runtime)
    } else {
        None
    };
    let channel: Arc<dyn ControllerChannel> = match (&runtime, single) {
        (Some(runtime), true) => Arc::new(LocalChannel(runtime.local())),
        _ => Arc::new(RemoteChannel::new(cluster.node_id, voters, CONTROLLER_FRAME_BYTES_MAX)),
    };
    Ok(Quorum { runtime, channel })
}

/// A controller-only node: the quorum serves until a shutdown signal.
fn serve_controller_only(
    mut quorum: Quorum,
    signals: nix::sys::signal::SigSet,
) -> anyhow::Result<()> {
    info!("serving as a controller only (process.roles=controller)");
    if let Ok(signal) = signals.wait() {
        info!(?signal, "shutting down");
    }
    if let Some(runtime) = quorum.runtime.as_mut() {
        runtime.shutdown();
    }
    info!("stopped cleanly");
    Ok(())
}

/// Registers this broker with the active controller and catches up with the metadata.
fn join_cluster(
    config: &Config,
    quorum: &Quorum,
    host: &str,
    port: i32,
) -> anyhow::Result<(Arc<BrokerAgent>, metadata::MetadataImage)> {
    let incarnation_id = metadata::new_topic_id();
    let options = AgentOptions {
        broker: config.cluster.node_id,
        incarnation_id,
        endpoints: vec![Endpoint {
            name: "PLAINTEXT".into(),
            host: host.to_string(),
            port: u16::try_from(port).unwrap_or(0),
        }],
        rack: None,
        heartbeat_interval: Duration::from_millis(config.cluster.heartbeat_interval_ms),
    };
    let (agent, image) = BrokerAgent::register(options, quorum.channel.clone(), JOIN_WAIT)
        .map_err(|reason| anyhow::anyhow!("joining the cluster: {reason}"))?;
    info!(epoch = agent.epoch(), offset = image.offset(), "joined the cluster");
    Ok((Arc::new(agent), image))
}

/// Partition directories (`<topic>-<partition>`) whose topic the metadata log does not
/// know (a data dir from before the metadata log, or copied from elsewhere) become topics
/// with default configs, so their data is served rather than ignored.
fn adopt_partition_dirs(
    data_dir: &Path,
    log: &mut MetadataLog,
    image: &mut metadata::MetadataImage,
) -> anyhow::Result<()> {
    let mut strays: BTreeMap<String, i32> = BTreeMap::new();
    for entry in
        std::fs::read_dir(data_dir).with_context(|| format!("listing {}", data_dir.display()))?
    {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((topic, partition)) = name.rsplit_once('-') else { continue };
        let Ok(partition) = partition.parse::<i32>() else { continue };
        if partition < 0 || metadata::validate_topic_name(topic).is_err() {
            continue;
        }
        if image.topic(topic).is_none() {
            let count = strays.entry(topic.to_string()).or_insert(0);
            *count = (*count).max(partition + 1);
        }
    }
    for (name, partitions) in strays {
        warn!(topic = %name, partitions, "adopting partition directories the metadata log did not know");
        let record = MetadataRecord::CreateTopic {
            name,
            topic_id: metadata::new_topic_id(),
            partitions,
            replication_factor: 1,
            configs: Vec::new(),
        };
        log.commit(image, &record).context("recording an adopted topic")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_url_matches_the_standard_alphabet() {
        assert_eq!(super::base64_url(b"Man"), "TWFu");
        assert_eq!(super::base64_url(&[0xfb, 0xff]), "-_8");
        assert_eq!(super::base64_url(&[0u8; 16]).len(), 22);
    }
}
