//! Broker configuration: command-line flags, an optional TOML file, and `--set` overrides
//! under Kafka's own property names, validated into one [`Config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use sluice_engine::io::IoMode;
use sluice_engine::log::{self, LogOptions};
use sluice_net::config::{GroupConfig, TxnConfig};

/// `sluice serve` flags.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub listen: SocketAddr,
    /// Address clients are told to connect to (defaults to --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Directory holding the partition logs and checkpoint files.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Number of shards (pinned cores); default: every core.
    #[arg(long)]
    pub cores: Option<usize>,
    /// File I/O mode: `direct` (O_DIRECT) or `buffered` (page cache).
    #[arg(long)]
    pub io: Option<IoMode>,
    /// TOML file of broker properties (Kafka names, e.g. `"log.segment.bytes" = 1073741824`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Sets a broker property by its Kafka name; repeatable: `--set log.retention.ms=60000`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub overrides: Vec<String>,
}

/// The validated broker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `HOST:PORT` given by --advertise; `None`: the listen address (after port 0 resolves).
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    pub cores: usize,
    /// Defaults for every partition log (topic configs override them later).
    pub log: LogOptions,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    /// Every property as given (file, then `--set`), for DescribeConfigs later.
    pub properties: BTreeMap<String, String>,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    pub auto_create_topics: bool,
    pub delete_topic_enable: bool,
    pub cleanup_policy: String,
    pub message_timestamp_type: String,
    pub min_insync_replicas: i32,
    pub node_id: i32,
    pub socket_request_max_bytes: usize,
    pub queued_max_requests: usize,
    pub max_connections_per_shard: usize,
    /// `reactor.stall.threshold.ms`: log a shard whose task queue runs this long past its
    /// 1 ms budget without yielding, with a backtrace of where it was; 0 = off.
    pub stall_threshold_ms: u64,
    /// `reactor.idle.poll.us`: a shard with nothing to do keeps polling for this long
    /// before it sleeps (Seastar's `--idle-poll-time-us`); 0 = sleep at once.
    pub idle_poll_us: u64,
    /// `request.latency.log.interval.ms`: how often every shard logs its request latency
    /// by phase and API; 0 = only when it stops.
    pub request_latency_log_interval_ms: u64,
    pub groups: GroupConfig,
    pub txns: TxnConfig,
}

fn parse_bool(name: &str, value: &str) -> anyhow::Result<bool> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => bail!("{name}: {other:?} is not true or false"),
    }
}

/// Broker properties understood today, with Kafka's defaults.
const KNOWN: &[(&str, &str)] = &[
    ("log.segment.bytes", "1073741824"),
    ("log.roll.ms", "604800000"),
    ("log.index.interval.bytes", "4096"),
    ("log.retention.ms", "604800000"),
    ("log.retention.bytes", "-1"),
    ("log.flush.interval.messages", "9223372036854775807"),
    ("log.flush.interval.ms", "9223372036854775807"),
    ("log.writeback.bytes", "1048576"),
    ("log.buffered.write", "inline"),
    ("log.page.cache.window.bytes", "0"),
    ("log.open.files.max", "0"),
    ("log.retention.check.interval.ms", "300000"),
    ("message.max.bytes", "1048588"),
    ("num.partitions", "1"),
    ("default.replication.factor", "1"),
    ("auto.create.topics.enable", "true"),
    ("io.mode", "buffered"),
    ("log.cleanup.policy", "delete"),
    ("log.message.timestamp.type", "CreateTime"),
    ("min.insync.replicas", "1"),
    ("delete.topic.enable", "true"),
    ("node.id", "0"),
    ("socket.request.max.bytes", "104857600"),
    ("queued.max.requests", "500"),
    ("max.connections.per.shard", "10000"),
    ("reactor.stall.threshold.ms", "0"),
    ("reactor.idle.poll.us", "0"),
    ("request.latency.log.interval.ms", "0"),
    ("offsets.topic.num.partitions", "50"),
    ("offsets.topic.segment.bytes", "104857600"),
    ("group.initial.rebalance.delay.ms", "3000"),
    ("group.min.session.timeout.ms", "6000"),
    ("group.max.session.timeout.ms", "1800000"),
    ("group.max.size", "2147483647"),
    ("offsets.retention.minutes", "10080"),
    ("offsets.retention.check.interval.ms", "600000"),
    ("offset.metadata.max.bytes", "4096"),
    ("transaction.state.log.num.partitions", "50"),
    ("transaction.state.log.segment.bytes", "104857600"),
    ("transaction.max.timeout.ms", "900000"),
];

fn parse_number<T: std::str::FromStr>(name: &str, value: &str) -> anyhow::Result<T> {
    value.trim().parse().map_err(|_| anyhow::anyhow!("{name}: {value:?} is not a valid number"))
}

impl Config {
    pub fn from_args(args: &ServeArgs) -> anyhow::Result<Config> {
        let mut properties: BTreeMap<String, String> =
            KNOWN.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        if let Some(path) = &args.config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let table: toml::Table =
                text.parse().with_context(|| format!("parsing {}", path.display()))?;
            for (name, value) in table {
                let value = match value {
                    toml::Value::String(text) => text,
                    other => other.to_string(),
                };
                properties.insert(name, value);
            }
        }
        for item in &args.overrides {
            let Some((name, value)) = item.split_once('=') else {
                bail!("--set {item:?}: expected NAME=VALUE");
            };
            properties.insert(name.trim().to_string(), value.trim().to_string());
        }
        for name in properties.keys() {
            if !KNOWN.iter().any(|(known, _)| known == name) {
                bail!(
                    "unknown broker property {name:?}; known: {}",
                    KNOWN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                );
            }
        }
        let get = |name: &str| properties.get(name).map(String::as_str).unwrap_or("");
        let io_mode = match args.io {
            Some(mode) => mode,
            None => get("io.mode").parse().map_err(anyhow::Error::msg)?,
        };
        let as_u64_or_max = |name: &str| -> anyhow::Result<u64> {
            let value: i64 = parse_number(name, get(name))?;
            Ok(if value < 0 { u64::MAX } else { value as u64 })
        };
        let log = LogOptions {
            io_mode,
            segment_bytes: parse_number("log.segment.bytes", get("log.segment.bytes"))?,
            segment_ms: parse_number("log.roll.ms", get("log.roll.ms"))?,
            index_interval_bytes: parse_number(
                "log.index.interval.bytes",
                get("log.index.interval.bytes"),
            )?,
            retention_ms: parse_number("log.retention.ms", get("log.retention.ms"))?,
            retention_bytes: parse_number("log.retention.bytes", get("log.retention.bytes"))?,
            flush_messages: as_u64_or_max("log.flush.interval.messages")?,
            flush_ms: as_u64_or_max("log.flush.interval.ms")?,
            max_message_bytes: parse_number("message.max.bytes", get("message.max.bytes"))?,
            writeback_bytes: parse_number("log.writeback.bytes", get("log.writeback.bytes"))?,
            buffered_write: get("log.buffered.write")
                .parse()
                .map_err(|e: String| anyhow::anyhow!("log.buffered.write: {e}"))?,
            cache_window_bytes: parse_number(
                "log.page.cache.window.bytes",
                get("log.page.cache.window.bytes"),
            )?,
            faults: None,
        };
        if log.segment_bytes > log::SEGMENT_BYTES_MAX || log.segment_bytes < 1024 {
            bail!("log.segment.bytes must be in [1024, {}]", log::SEGMENT_BYTES_MAX);
        }
        let retention_check_interval_ms = parse_number(
            "log.retention.check.interval.ms",
            get("log.retention.check.interval.ms"),
        )?;
        let cores_available = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores = args.cores.unwrap_or(cores_available);
        if cores == 0 {
            bail!("--cores must be at least 1");
        }
        let num_partitions: i32 = parse_number("num.partitions", get("num.partitions"))?;
        if num_partitions < 1 {
            bail!("num.partitions must be at least 1");
        }
        let default_replication_factor: i16 =
            parse_number("default.replication.factor", get("default.replication.factor"))?;
        if default_replication_factor != 1 {
            bail!("default.replication.factor must be 1 (Sluice runs as one node for now)");
        }
        let message_timestamp_type = get("log.message.timestamp.type").to_string();
        if message_timestamp_type != "CreateTime" && message_timestamp_type != "LogAppendTime" {
            bail!("log.message.timestamp.type must be CreateTime or LogAppendTime");
        }
        let cleanup_policy = get("log.cleanup.policy").to_string();
        if cleanup_policy.split(',').any(|p| p.trim() != "delete" && p.trim() != "compact") {
            bail!("log.cleanup.policy must be delete, compact or both");
        }
        let min_insync_replicas: i32 =
            parse_number("min.insync.replicas", get("min.insync.replicas"))?;
        if min_insync_replicas < 1 {
            bail!("min.insync.replicas must be at least 1");
        }
        let socket_request_max_bytes: usize =
            parse_number("socket.request.max.bytes", get("socket.request.max.bytes"))?;
        let queued_max_requests: usize =
            parse_number("queued.max.requests", get("queued.max.requests"))?;
        let max_connections_per_shard: usize =
            parse_number("max.connections.per.shard", get("max.connections.per.shard"))?;
        if socket_request_max_bytes < 1024 || socket_request_max_bytes > i32::MAX as usize {
            bail!("socket.request.max.bytes must be in [1024, {}]", i32::MAX);
        }
        if queued_max_requests == 0 || max_connections_per_shard == 0 {
            bail!("queued.max.requests and max.connections.per.shard must be at least 1");
        }
        let number = |name: &str| -> anyhow::Result<i64> { parse_number(name, get(name)) };
        let groups = GroupConfig {
            offsets_topic_num_partitions: parse_number(
                "offsets.topic.num.partitions",
                get("offsets.topic.num.partitions"),
            )?,
            offsets_topic_segment_bytes: parse_number(
                "offsets.topic.segment.bytes",
                get("offsets.topic.segment.bytes"),
            )?,
            initial_rebalance_delay_ms: parse_number(
                "group.initial.rebalance.delay.ms",
                get("group.initial.rebalance.delay.ms"),
            )?,
            min_session_timeout_ms: parse_number(
                "group.min.session.timeout.ms",
                get("group.min.session.timeout.ms"),
            )?,
            max_session_timeout_ms: parse_number(
                "group.max.session.timeout.ms",
                get("group.max.session.timeout.ms"),
            )?,
            max_size: parse_number("group.max.size", get("group.max.size"))?,
            offsets_retention_ms: u64::try_from(number("offsets.retention.minutes")?)
                .ok()
                .and_then(|minutes| minutes.checked_mul(60_000))
                .context("offsets.retention.minutes must be positive")?,
            offsets_retention_check_interval_ms: parse_number(
                "offsets.retention.check.interval.ms",
                get("offsets.retention.check.interval.ms"),
            )?,
            offset_metadata_max_bytes: parse_number(
                "offset.metadata.max.bytes",
                get("offset.metadata.max.bytes"),
            )?,
        };
        if groups.offsets_topic_num_partitions < 1 {
            bail!("offsets.topic.num.partitions must be at least 1");
        }
        if groups.min_session_timeout_ms < 1
            || groups.min_session_timeout_ms > groups.max_session_timeout_ms
        {
            bail!("need 0 < group.min.session.timeout.ms <= group.max.session.timeout.ms");
        }
        if groups.max_size == 0 || groups.offsets_retention_check_interval_ms == 0 {
            bail!("group.max.size and offsets.retention.check.interval.ms must be positive");
        }
        if groups.offsets_topic_segment_bytes > log::SEGMENT_BYTES_MAX
            || groups.offsets_topic_segment_bytes < 1024
        {
            bail!("offsets.topic.segment.bytes must be in [1024, {}]", log::SEGMENT_BYTES_MAX);
        }
        let txns = TxnConfig {
            state_log_num_partitions: number("transaction.state.log.num.partitions")?
                .try_into()
                .ok()
                .filter(|&n: &i32| n >= 1)
                .context("transaction.state.log.num.partitions must be in [1, 2^31)")?,
            state_log_segment_bytes: u64::try_from(number("transaction.state.log.segment.bytes")?)
                .ok()
                .filter(|&n| (1024..=log::SEGMENT_BYTES_MAX).contains(&n))
                .with_context(|| {
                    format!(
                        "transaction.state.log.segment.bytes must be in [1024, {}]",
                        log::SEGMENT_BYTES_MAX
                    )
                })?,
            max_timeout_ms: number("transaction.max.timeout.ms")?,
        };
        if txns.max_timeout_ms < 1 || txns.max_timeout_ms > i64::from(i32::MAX) {
            bail!("transaction.max.timeout.ms must be in [1, {}]", i32::MAX);
        }
        Ok(Config {
            groups,
            txns,
            num_partitions,
            default_replication_factor,
            auto_create_topics: parse_bool(
                "auto.create.topics.enable",
                get("auto.create.topics.enable"),
            )?,
            delete_topic_enable: parse_bool("delete.topic.enable", get("delete.topic.enable"))?,
            cleanup_policy,
            message_timestamp_type,
            min_insync_replicas,
            node_id: parse_number("node.id", get("node.id"))?,
            socket_request_max_bytes,
            queued_max_requests,
            max_connections_per_shard,
            stall_threshold_ms: parse_number(
                "reactor.stall.threshold.ms",
                get("reactor.stall.threshold.ms"),
            )?,
            idle_poll_us: parse_number("reactor.idle.poll.us", get("reactor.idle.poll.us"))?,
            request_latency_log_interval_ms: parse_number(
                "request.latency.log.interval.ms",
                get("request.latency.log.interval.ms"),
            )?,
            listen: args.listen,
            advertise: args.advertise.clone(),
            data_dir: args.data_dir.clone(),
            cores,
            log,
            retention_check_interval_ms,
            properties,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;
    use sluice_engine::io::BufferedWrite;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<Config> {
        let cli = Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()))?;
        Config::from_args(&cli.serve)
    }

    #[test]
    fn defaults_are_kafkas() {
        let config = config(&[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.log.segment_bytes, 1 << 30);
        assert_eq!(config.log.retention_ms, 604_800_000);
        assert_eq!(config.log.flush_messages, i64::MAX as u64);
        assert_eq!(config.log.io_mode, IoMode::Buffered);
        assert_eq!(config.stall_threshold_ms, 0, "stall reports are off by default");
        let config = self::config(&["--set", "reactor.stall.threshold.ms=25"]).unwrap();
        assert_eq!(config.stall_threshold_ms, 25);
        assert!(self::config(&["--set", "reactor.stall.threshold.ms=-1"]).is_err());
        assert_eq!(config.request_latency_log_interval_ms, 0, "latency logged at stop only");
        assert_eq!(config.log.writeback_bytes, 1 << 20, "early writeback per MiB");
        assert_eq!(config.log.buffered_write, BufferedWrite::Inline);
        assert_eq!(config.log.cache_window_bytes, 0, "the page cache is the kernel's");
        assert_eq!(config.idle_poll_us, 0, "shards sleep when idle");
        let config = self::config(&[
            "--set",
            "log.writeback.bytes=0",
            "--set",
            "request.latency.log.interval.ms=1000",
            "--set",
            "log.buffered.write=io_uring",
            "--set",
            "log.page.cache.window.bytes=268435456",
            "--set",
            "reactor.idle.poll.us=200",
        ])
        .unwrap();
        assert_eq!(config.log.writeback_bytes, 0);
        assert_eq!(config.request_latency_log_interval_ms, 1000);
        assert_eq!(config.log.buffered_write, BufferedWrite::Uring);
        assert_eq!(config.log.cache_window_bytes, 256 << 20);
        assert_eq!(config.idle_poll_us, 200);
        assert!(self::config(&["--set", "log.writeback.bytes=-1"]).is_err());
        assert!(self::config(&["--set", "log.buffered.write=uring"]).is_err());
        assert!(self::config(&["--set", "log.page.cache.window.bytes=-1"]).is_err());
    }

    #[test]
    fn file_then_set_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "\"log.segment.bytes\" = 4096\n\"log.retention.ms\" = 5\n").unwrap();
        let path = path.to_str().unwrap();
        let config =
            config(&["--config", path, "--set", "log.retention.ms=7", "--io", "direct"]).unwrap();
        assert_eq!(config.log.segment_bytes, 4096);
        assert_eq!(config.log.retention_ms, 7);
        assert_eq!(config.log.io_mode, IoMode::Direct);
        assert!(super::Config::from_args(
            &Cli::try_parse_from(["s", "--set", "nope=1"]).unwrap().serve
        )
        .is_err());
        assert!(super::Config::from_args(
            &Cli::try_parse_from(["s", "--set", "log.segment.bytes=x"]).unwrap().serve
        )
        .is_err());
    }
}
