//! What every shard knows about the broker's configuration, and how a topic's config
//! overrides (Kafka's topic-level names) resolve against the broker defaults into the
//! settings its partition logs run with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use sluice_engine::log::{self, LogOptions};

/// The broker configuration, shared read-only by every shard (`Arc`).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `node.id`: this broker's id in Metadata answers.
    pub node_id: i32,
    /// From `meta.properties` in the data dir, generated on first start.
    pub cluster_id: String,
    pub listen: SocketAddr,
    /// Host and port clients are told to connect to.
    pub advertised_host: String,
    pub advertised_port: i32,
    pub data_dir: PathBuf,
    pub shards: usize,
    /// Defaults for every partition log; topic configs override them.
    pub log: LogOptions,
    /// `log.page.cache.window.bytes=auto`: this shard's page-cache budget for appends,
    /// shared by the logs appended to lately (`engine::writeback::auto_window_bytes`);
    /// `None`: every log keeps `log.cache_window_bytes`.
    pub cache_window_budget_bytes: Option<u64>,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    /// `num.partitions`: partitions of an auto-created topic or a CreateTopics with -1.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `delete.topic.enable`.
    pub delete_topic_enable: bool,
    /// `log.cleanup.policy`.
    pub cleanup_policy: String,
    /// `log.message.timestamp.type`: `CreateTime` or `LogAppendTime`.
    pub message_timestamp_type: String,
    /// `min.insync.replicas`.
    pub min_insync_replicas: i32,
    /// `socket.request.max.bytes`: the largest request frame accepted.
    pub socket_request_max_bytes: usize,
    /// `queued.max.requests`: requests one connection may have in flight (pipelined)
    /// before the broker stops reading from it. Kafka's limit is per broker; ours is per
    /// connection, so one greedy client cannot starve the others.
    pub queued_max_requests: usize,
    /// `max.connections.per.shard`: connections one shard serves at once; more are closed
    /// at accept with a log line.
    pub max_connections_per_shard: usize,
    /// `request.latency.log.interval.ms`: every shard logs its request latency by phase
    /// and API (see [`crate::reqmetrics`]) this often, and once when it stops; 0 = only
    /// when it stops.
    pub request_latency_log_interval_ms: u64,
    /// The group coordinator's settings.
    pub groups: GroupConfig,
    /// The transaction coordinator's settings.
    pub txns: TxnConfig,
    /// How followers copy their leaders' logs, and when a leader drops one from the ISR.
    pub replication: ReplicationConfig,
    /// Every broker property with its value (defaults included), for DescribeConfigs.
    pub properties: BTreeMap<String, String>,
    /// Each shard's share of `log.open.files.max`: the descriptors its segment files may
    /// hold (see `sluice_engine::fdcache`).
    pub open_files_per_shard: usize,
}

/// Replication settings, under Kafka's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// `replica.lag.time.max.ms`: a follower not caught up for this long leaves the ISR.
    pub lag_time_max_ms: u64,
    /// `replica.fetch.wait.max.ms`: how long a follower's fetch waits for new records.
    pub fetch_wait_max_ms: i32,
    /// `replica.fetch.max.bytes`: per partition in a follower's fetch.
    pub fetch_max_bytes: i32,
    /// `replica.fetch.response.max.bytes`: for a whole follower's fetch.
    pub fetch_response_max_bytes: i32,
    /// `replica.fetch.backoff.ms`: the pause after a failed fetch.
    pub fetch_backoff_ms: u64,
}

impl Default for ReplicationConfig {
    /// Kafka's defaults.
    fn default() -> Self {
        Self {
            lag_time_max_ms: 30_000,
            fetch_wait_max_ms: 500,
            fetch_max_bytes: 1 << 20,
            fetch_response_max_bytes: 10 << 20,
            fetch_backoff_ms: 1_000,
        }
    }
}

/// The transaction coordinator's settings, under Kafka's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnConfig {
    /// `transaction.state.log.num.partitions`: partitions of `__transaction_state`, fixed
    /// when the topic is created.
    pub state_log_num_partitions: i32,
    /// `transaction.state.log.segment.bytes`.
    pub state_log_segment_bytes: u64,
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may ask for.
    pub max_timeout_ms: i64,
}

impl Default for TxnConfig {
    /// Kafka's defaults.
    fn default() -> Self {
        TxnConfig {
            state_log_num_partitions: 50,
            state_log_segment_bytes: 104_857_600,
            max_timeout_ms: 900_000,
        }
    }
}

/// The group coordinator's settings, under Kafka's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets`, fixed when the
    /// topic is created.
    pub offsets_topic_num_partitions: i32,
    /// `offsets.topic.segment.bytes`.
    pub offsets_topic_segment_bytes: u64,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group
    /// waits for more members (extended by each new member, up to the rebalance timeout).
    pub initial_rebalance_delay_ms: u64,
    /// `group.min.session.timeout.ms` / `group.max.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    /// `group.max.size`: members per group.
    pub max_size: usize,
    /// `offsets.retention.minutes`, in ms: how long the offsets of an empty group (or a
    /// standalone commit) are kept.
    pub offsets_retention_ms: u64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval_ms: u64,
    /// `offset.metadata.max.bytes`: the longest metadata string a commit may carry.
    pub offset_metadata_max_bytes: usize,
}

impl Default for GroupConfig {
    /// Kafka's defaults.
    fn default() -> Self {
        GroupConfig {
            offsets_topic_num_partitions: 50,
            offsets_topic_segment_bytes: 104_857_600,
            initial_rebalance_delay_ms: 3_000,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            max_size: i32::MAX as usize,
            offsets_retention_ms: 10_080 * 60_000,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4_096,
        }
    }
}

/// The Kafka type of a config, as DescribeConfigs reports it and as Kafka's `ConfigDef`
/// parses a value of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Boolean,
    String,
    Int,
    Long,
    Double,
    List,
}

/// A topic-level config Kafka knows (`LogConfig`, Kafka 3.0 to 4.1).
#[derive(Debug, Clone, Copy)]
pub struct TopicConfig {
    pub name: &'static str,
    /// The broker property its default comes from (Kafka's `ServerTopicConfigSynonyms`).
    pub broker_name: Option<&'static str>,
    pub kind: ConfigKind,
    /// Kafka's default, reported for a config Sluice does not act on (one Sluice acts on
    /// reports its broker property's value instead).
    pub default: &'static str,
    /// Sluice acts on the value. The others are validated as Kafka validates them and
    /// stored, so clients that set them (Kafka's tools, Connect, Streams) keep working
    /// and DescribeConfigs shows what was set, but nothing changes because of them.
    pub honoured: bool,
}

const fn honoured(name: &'static str, broker: &'static str, kind: ConfigKind) -> TopicConfig {
    TopicConfig { name, broker_name: Some(broker), kind, default: "", honoured: true }
}

const fn stored(
    name: &'static str,
    broker: Option<&'static str>,
    kind: ConfigKind,
    default: &'static str,
) -> TopicConfig {
    TopicConfig { name, broker_name: broker, kind, default, honoured: false }
}

/// Every topic config name Kafka 3.x and 4.x accept, sorted (DescribeConfigs lists them in
/// this order). The 3.x names 4.0 removed (`message.format.version`,
/// `message.downconversion.enable`, `message.timestamp.difference.max.ms`) are kept:
/// 3.x clients still send them. Defaults of the stored-only configs are Kafka's, except
/// the timestamp bounds, which report what Sluice does: no bound.
pub const TOPIC_CONFIGS: &[TopicConfig] = &[
    honoured("cleanup.policy", "log.cleanup.policy", ConfigKind::List),
    stored("compression.gzip.level", Some("compression.gzip.level"), ConfigKind::Int, "-1"),
    stored("compression.lz4.level", Some("compression.lz4.level"), ConfigKind::Int, "9"),
    stored("compression.type", Some("compression.type"), ConfigKind::String, "producer"),
    stored("compression.zstd.level", Some("compression.zstd.level"), ConfigKind::Int, "3"),
    stored(
        "delete.retention.ms",
        Some("log.cleaner.delete.retention.ms"),
        ConfigKind::Long,
        "86400000",
    ),
    stored("file.delete.delay.ms", Some("log.segment.delete.delay.ms"), ConfigKind::Long, "60000"),
    honoured("flush.messages", "log.flush.interval.messages", ConfigKind::Long),
    honoured("flush.ms", "log.flush.interval.ms", ConfigKind::Long),
    stored("follower.replication.throttled.replicas", None, ConfigKind::List, ""),
    honoured("index.interval.bytes", "log.index.interval.bytes", ConfigKind::Int),
    stored("leader.replication.throttled.replicas", None, ConfigKind::List, ""),
    stored("local.retention.bytes", Some("log.local.retention.bytes"), ConfigKind::Long, "-2"),
    stored("local.retention.ms", Some("log.local.retention.ms"), ConfigKind::Long, "-2"),
    stored(
        "max.compaction.lag.ms",
        Some("log.cleaner.max.compaction.lag.ms"),
        ConfigKind::Long,
        "9223372036854775807",
    ),
    honoured("max.message.bytes", "message.max.bytes", ConfigKind::Int),
    stored(
        "message.downconversion.enable",
        Some("log.message.downconversion.enable"),
        ConfigKind::Boolean,
        "true",
    ),
    stored(
        "message.format.version",
        Some("log.message.format.version"),
        ConfigKind::String,
        "3.0-IV1",
    ),
    stored(
        "message.timestamp.after.max.ms",
        Some("log.message.timestamp.after.max.ms"),
        ConfigKind::Long,
        "9223372036854775807",
    ),
    stored(
        "message.timestamp.before.max.ms",
        Some("log.message.timestamp.before.max.ms"),
        ConfigKind::Long,
        "9223372036854775807",
    ),
    stored(
        "message.timestamp.difference.max.ms",
        Some("log.message.timestamp.difference.max.ms"),
        ConfigKind::Long,
        "9223372036854775807",
    ),
    honoured("message.timestamp.type", "log.message.timestamp.type", ConfigKind::String),
    stored(
        "min.cleanable.dirty.ratio",
        Some("log.cleaner.min.cleanable.ratio"),
        ConfigKind::Double,
        "0.5",
    ),
    stored(
        "min.compaction.lag.ms",
        Some("log.cleaner.min.compaction.lag.ms"),
        ConfigKind::Long,
        "0",
    ),
    honoured("min.insync.replicas", "min.insync.replicas", ConfigKind::Int),
    stored("preallocate", Some("log.preallocate"), ConfigKind::Boolean, "false"),
    stored("remote.log.copy.disable", None, ConfigKind::Boolean, "false"),
    stored("remote.log.delete.on.disable", None, ConfigKind::Boolean, "false"),
    stored("remote.storage.enable", None, ConfigKind::Boolean, "false"),
    honoured("retention.bytes", "log.retention.bytes", ConfigKind::Long),
    honoured("retention.ms", "log.retention.ms", ConfigKind::Long),
    honoured("segment.bytes", "log.segment.bytes", ConfigKind::Int),
    stored("segment.index.bytes", Some("log.index.size.max.bytes"), ConfigKind::Int, "10485760"),
    stored("segment.jitter.ms", Some("log.roll.jitter.ms"), ConfigKind::Long, "0"),
    honoured("segment.ms", "log.roll.ms", ConfigKind::Long),
    stored(
        "unclean.leader.election.enable",
        Some("unclean.leader.election.enable"),
        ConfigKind::Boolean,
        "false",
    ),
];

/// The topic config named `name`.
pub fn topic_config(name: &str) -> Option<&'static TopicConfig> {
    TOPIC_CONFIGS.iter().find(|config| config.name == name)
}

/// Kafka's `message.format.version` values (`MetadataVersion`: each release's short
/// version and its inter-broker versions); `3.0-IV1` and later mean "the current format".
const MESSAGE_FORMAT_VERSIONS: &[&str] = &[
    "0.8.0",
    "0.8.1",
    "0.8.2",
    "0.9.0",
    "0.10.0",
    "0.10.0-IV0",
    "0.10.0-IV1",
    "0.10.1",
    "0.10.1-IV0",
    "0.10.1-IV1",
    "0.10.1-IV2",
    "0.10.2",
    "0.10.2-IV0",
    "0.11.0",
    "0.11.0-IV0",
    "0.11.0-IV1",
    "0.11.0-IV2",
    "1.0",
    "1.0-IV0",
    "1.1",
    "1.1-IV0",
    "2.0",
    "2.0-IV0",
    "2.0-IV1",
    "2.1",
    "2.1-IV0",
    "2.1-IV1",
    "2.1-IV2",
    "2.2",
    "2.2-IV0",
    "2.2-IV1",
    "2.3",
    "2.3-IV0",
    "2.3-IV1",
    "2.4",
    "2.4-IV0",
    "2.4-IV1",
    "2.5",
    "2.5-IV0",
    "2.6",
    "2.6-IV0",
    "2.7",
    "2.7-IV0",
    "2.7-IV1",
    "2.7-IV2",
    "2.8",
    "2.8-IV0",
    "2.8-IV1",
    "3.0",
    "3.0-IV0",
    "3.0-IV1",
    "3.1",
    "3.1-IV0",
    "3.2",
    "3.2-IV0",
    "3.3",
    "3.3-IV0",
    "3.3-IV1",
    "3.3-IV2",
    "3.3-IV3",
    "3.4",
    "3.4-IV0",
    "3.5",
    "3.5-IV0",
    "3.5-IV1",
    "3.5-IV2",
    "3.6",
    "3.6-IV0",
    "3.6-IV1",
    "3.6-IV2",
    "3.7",
    "3.7-IV0",
    "3.7-IV1",
    "3.7-IV2",
    "3.7-IV3",
    "3.7-IV4",
    "3.8",
    "3.8-IV0",
    "3.9",
    "3.9-IV0",
    "4.0",
    "4.0-IV0",
    "4.0-IV1",
    "4.0-IV2",
    "4.0-IV3",
];

/// Kafka's `MetadataVersion.fromVersionString`: `0.x` versions keep three segments, later
/// ones two (`2.8.1` is `2.8`), and the result must be a known version.
fn is_message_format_version(value: &str) -> bool {
    let segments: Vec<&str> = value.split('.').collect();
    let keep = if value.starts_with("0.") { 3 } else { 2 };
    let key = if keep >= segments.len() { value.to_string() } else { segments[..keep].join(".") };
    MESSAGE_FORMAT_VERSIONS.contains(&key.as_str())
}

/// A topic config value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for topic config {name}: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// How one topic's partitions behave: the log options plus the settings the broker
/// applies around the log.
#[derive(Debug, Clone)]
pub struct TopicSettings {
    pub log: LogOptions,
    /// `message.timestamp.type=LogAppendTime`: the broker stamps batches on append.
    pub log_append_time: bool,
    pub min_insync_replicas: i32,
    pub cleanup_policy: String,
}

impl BrokerConfig {
    /// The default of a topic config (`None` for unknown names): the broker property's
    /// value for a config Sluice acts on, Kafka's default for one it only stores.
    pub fn topic_default(&self, name: &str) -> Option<String> {
        let config = topic_config(name)?;
        let broker_name = match config.broker_name {
            Some(broker_name) if config.honoured => broker_name,
            _ => return Some(config.default.to_string()),
        };
        Some(match name {
            // Kafka's topic-level names are in milliseconds / messages where the broker
            // defaults may say "Long.MAX_VALUE"; both print as numbers.
            "segment.ms" => self.log.segment_ms.to_string(),
            _ => self.properties.get(broker_name).cloned().unwrap_or_default(),
        })
    }

    /// Resolves a topic's overrides against the broker defaults. Unknown names and bad
    /// values are errors (Kafka answers INVALID_CONFIG).
    pub fn topic_settings(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<TopicSettings, ConfigError> {
        let mut settings = TopicSettings {
            log: self.log.clone(),
            log_append_time: self.message_timestamp_type == "LogAppendTime",
            min_insync_replicas: self.min_insync_replicas,
            cleanup_policy: self.cleanup_policy.clone(),
        };
        for (name, value) in overrides {
            apply_topic_config(&mut settings, name, value)?;
        }
        // Kafka's one check across configs (`LogConfig.validateValues`).
        let lag = |name: &str| -> i64 {
            overrides
                .get(name)
                .and_then(|value| value.trim().parse().ok())
                .or_else(|| topic_config(name).and_then(|config| config.default.parse().ok()))
                .unwrap_or_default()
        };
        let (min_lag, max_lag) = (lag("min.compaction.lag.ms"), lag("max.compaction.lag.ms"));
        if min_lag > max_lag {
            return Err(ConfigError {
                name: "min.compaction.lag.ms".to_string(),
                value: min_lag.to_string(),
                reason: format!("conflicts with max.compaction.lag.ms ({max_lag}), which is lower"),
            });
        }
        // Like Kafka, a batch larger than segment.bytes is allowed: it gets a segment
        // of its own (the log rolls before it and never splits a batch).
        Ok(settings)
    }
}

/// A config value parsed as Kafka's `ConfigDef.parseType` parses it: trimmed; booleans
/// in any case; lists split at commas with the blanks around them, empty text an empty
/// list.
#[derive(Debug, Clone, PartialEq)]
enum Parsed<'a> {
    Boolean(bool),
    Text(&'a str),
    Number(i64),
    Double(f64),
    List(Vec<&'a str>),
}

fn parse_kind(kind: ConfigKind, value: &str) -> Result<Parsed<'_>, &'static str> {
    let trimmed = value.trim();
    Ok(match kind {
        ConfigKind::Boolean => {
            if trimmed.eq_ignore_ascii_case("true") {
                Parsed::Boolean(true)
            } else if trimmed.eq_ignore_ascii_case("false") {
                Parsed::Boolean(false)
            } else {
                return Err("expected true or false");
            }
        }
        ConfigKind::String => Parsed::Text(trimmed),
        ConfigKind::Int => {
            Parsed::Number(trimmed.parse::<i32>().map_err(|_| "not a number of type INT")?.into())
        }
        ConfigKind::Long => {
            Parsed::Number(trimmed.parse::<i64>().map_err(|_| "not a number of type LONG")?)
        }
        ConfigKind::Double => {
            Parsed::Double(trimmed.parse::<f64>().map_err(|_| "not a number of type DOUBLE")?)
        }
        ConfigKind::List if trimmed.is_empty() => Parsed::List(Vec::new()),
        ConfigKind::List => Parsed::List(trimmed.split(',').map(str::trim).collect()),
    })
}

fn apply_topic_config(
    settings: &mut TopicSettings,
    name: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let error = |reason: &str| ConfigError {
        name: name.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let Some(config) = topic_config(name) else {
        return Err(error("unknown topic config"));
    };
    let parsed = parse_kind(config.kind, value).map_err(error)?;
    let number = match parsed {
        Parsed::Number(n) => n,
        _ => 0,
    };
    let at_least = |min: i64| {
        if number < min {
            Err(error(&format!("must be at least {min}")))
        } else {
            Ok(())
        }
    };
    let log = &mut settings.log;
    match name {
        // Configs Sluice acts on.
        "cleanup.policy" => {
            let Parsed::List(policies) = parsed else { return Err(error("not a list")) };
            // Stricter than Kafka, which takes an empty list and then neither deletes nor
            // compacts: an empty policy is refused rather than silently keeping the log.
            if policies.is_empty() || policies.iter().any(|p| *p != "delete" && *p != "compact") {
                return Err(error("expected delete, compact or both"));
            }
            settings.cleanup_policy = policies.join(",");
        }
        "flush.messages" => {
            at_least(1)?;
            log.flush_messages = if number == i64::MAX { u64::MAX } else { number as u64 };
        }
        "flush.ms" => {
            at_least(0)?;
            log.flush_ms = if number == i64::MAX { u64::MAX } else { number as u64 };
        }
        "index.interval.bytes" => {
            at_least(0)?;
            log.index_interval_bytes = number as u64;
        }
        "max.message.bytes" => {
            at_least(0)?;
            log.max_message_bytes = number as usize;
        }
        "message.timestamp.type" => match parsed {
            Parsed::Text("CreateTime") => settings.log_append_time = false,
            Parsed::Text("LogAppendTime") => settings.log_append_time = true,
            _ => return Err(error("expected CreateTime or LogAppendTime")),
        },
        "min.insync.replicas" => {
            at_least(1)?;
            settings.min_insync_replicas = number as i32;
        }
        "retention.bytes" => log.retention_bytes = number,
        "retention.ms" => {
            at_least(-1)?;
            log.retention_ms = number;
        }
        "segment.bytes" => {
            if !(14..=log::SEGMENT_BYTES_MAX as i64).contains(&number) {
                return Err(error(&format!("must be in [14, {}]", log::SEGMENT_BYTES_MAX)));
            }
            log.segment_bytes = number as u64;
        }
        "segment.ms" => {
            at_least(1)?;
            log.segment_ms = number;
        }
        // Configs Sluice only stores, validated as Kafka validates them.
        "compression.type" => {
            const TYPES: &[&str] = &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];
            if !matches!(parsed, Parsed::Text(text) if TYPES.contains(&text)) {
                return Err(error(
                    "expected one of uncompressed, zstd, lz4, snappy, gzip, producer",
                ));
            }
        }
        "compression.gzip.level" if number != -1 && !(1..=9).contains(&number) => {
            return Err(error("must be in [1, 9] or -1"));
        }
        "compression.lz4.level" if !(1..=17).contains(&number) => {
            return Err(error("must be in [1, 17]"));
        }
        "compression.zstd.level" if !(-131_072..=22).contains(&number) => {
            return Err(error("must be in [-131072, 22]"));
        }
        "delete.retention.ms"
        | "file.delete.delay.ms"
        | "min.compaction.lag.ms"
        | "message.timestamp.after.max.ms"
        | "message.timestamp.before.max.ms"
        | "message.timestamp.difference.max.ms"
        | "segment.jitter.ms" => at_least(0)?,
        "local.retention.bytes" | "local.retention.ms" => at_least(-2)?,
        "max.compaction.lag.ms" => at_least(1)?,
        "segment.index.bytes" => at_least(4)?,
        "min.cleanable.dirty.ratio" if !matches!(parsed, Parsed::Double(ratio) if (0.0..=1.0).contains(&ratio)) =>
        {
            return Err(error("must be in [0, 1]"));
        }
        "message.format.version" if !matches!(parsed, Parsed::Text(version) if is_message_format_version(version)) =>
        {
            return Err(error("not a Kafka version (such as 2.8 or 3.0-IV1)"));
        }
        "leader.replication.throttled.replicas" | "follower.replication.throttled.replicas" => {
            let Parsed::List(replicas) = parsed else { return Err(error("not a list")) };
            let replica = |item: &&str| {
                item.is_empty()
                    || item.split_once(':').is_some_and(|(partition, broker)| {
                        [partition, broker].iter().all(|part| {
                            !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())
                        })
                    })
            };
            if !(replicas.iter().all(replica) || replicas.concat() == "*") {
                return Err(error(
                    "must be the literal '*' or a list of replicas in the form \
                     [partitionId]:[brokerId],[partitionId]:[brokerId],...",
                ));
            }
        }
        // Kafka without tiered storage (remote.log.storage.system.enable=false) refuses
        // this the same way.
        "remote.storage.enable" if parsed == Parsed::Boolean(true) => {
            return Err(error(
                "Tiered Storage functionality is disabled in the broker. Topic cannot be \
                 configured with remote log storage.",
            ));
        }
        // The rest (booleans, levels in range) only had to parse.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn test_config() -> BrokerConfig {
    BrokerConfig {
        node_id: 0,
        cluster_id: "test".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
        advertised_host: "127.0.0.1".into(),
        advertised_port: 9092,
        data_dir: PathBuf::from("."),
        shards: 1,
        log: LogOptions::default(),
        cache_window_budget_bytes: None,
        retention_check_interval_ms: 300_000,
        num_partitions: 1,
        default_replication_factor: 1,
        auto_create_topics: true,
        delete_topic_enable: true,
        cleanup_policy: "delete".into(),
        message_timestamp_type: "CreateTime".into(),
        min_insync_replicas: 1,
        socket_request_max_bytes: 100 << 20,
        queued_max_requests: 500,
        max_connections_per_shard: 1000,
        request_latency_log_interval_ms: 0,
        groups: GroupConfig::default(),
        txns: TxnConfig::default(),
        replication: ReplicationConfig::default(),
        properties: BTreeMap::new(),
        open_files_per_shard: 1000,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn overrides(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn overrides_apply_and_bad_values_are_refused() {
        let config = test_config();
        let settings = config
            .topic_settings(&overrides(&[
                ("retention.ms", "1000"),
                ("segment.bytes", "65536"),
                ("message.timestamp.type", "LogAppendTime"),
                ("cleanup.policy", "compact,delete"),
                ("max.message.bytes", "1000"),
            ]))
            .unwrap();
        assert_eq!(settings.log.retention_ms, 1000);
        assert_eq!(settings.log.segment_bytes, 65536);
        assert!(settings.log_append_time);
        assert_eq!(settings.log.max_message_bytes, 1000);
        for (name, value) in [
            ("retention.ms", "x"),
            ("segment.bytes", "1"),
            ("cleanup.policy", "shred"),
            ("message.timestamp.type", "Now"),
            ("no.such.config", "1"),
            ("min.insync.replicas", "0"),
        ] {
            let error = config.topic_settings(&overrides(&[(name, value)])).unwrap_err();
            assert_eq!(error.name, name);
        }
    }

    /// Every Kafka topic config is accepted with a value Kafka accepts; the ones Sluice
    /// only stores leave the settings as they were.
    #[test]
    fn every_kafka_topic_config_is_accepted() {
        let config = test_config();
        let defaults = config.topic_settings(&BTreeMap::new()).unwrap();
        let values: &[(&str, &str)] = &[
            ("cleanup.policy", "compact, delete"),
            ("compression.gzip.level", "-1"),
            ("compression.lz4.level", "17"),
            ("compression.type", "zstd"),
            ("compression.zstd.level", "-131072"),
            ("delete.retention.ms", "0"),
            ("file.delete.delay.ms", "60000"),
            ("flush.messages", "1"),
            ("flush.ms", "0"),
            ("follower.replication.throttled.replicas", "0:1, 1:2"),
            ("index.interval.bytes", "0"),
            ("leader.replication.throttled.replicas", "*"),
            ("local.retention.bytes", "-2"),
            ("local.retention.ms", "-2"),
            ("max.compaction.lag.ms", "1"),
            ("max.message.bytes", "0"),
            ("message.downconversion.enable", "FALSE"),
            ("message.format.version", "2.8.1"),
            ("message.timestamp.after.max.ms", "3600000"),
            ("message.timestamp.before.max.ms", "0"),
            ("message.timestamp.difference.max.ms", "9223372036854775807"),
            ("message.timestamp.type", " LogAppendTime "),
            ("min.cleanable.dirty.ratio", "1"),
            ("min.compaction.lag.ms", "0"),
            ("min.insync.replicas", "1"),
            ("preallocate", "true"),
            ("remote.log.copy.disable", "false"),
            ("remote.log.delete.on.disable", "true"),
            ("remote.storage.enable", "false"),
            ("retention.bytes", "-5"),
            ("retention.ms", "-1"),
            ("segment.bytes", "14"),
            ("segment.index.bytes", "4"),
            ("segment.jitter.ms", "0"),
            ("segment.ms", "1"),
            ("unclean.leader.election.enable", "true"),
        ];
        let names: Vec<&str> = values.iter().map(|(name, _)| *name).collect();
        let known: Vec<&str> = TOPIC_CONFIGS.iter().map(|c| c.name).collect();
        assert_eq!(names, known, "one value per topic config, in order");
        for (name, value) in values {
            let settings = config.topic_settings(&overrides(&[(name, value)]));
            let settings = settings.unwrap_or_else(|e| panic!("{name}={value}: {e}"));
            if !topic_config(name).unwrap().honoured {
                assert_eq!(format!("{:?}", settings.log), format!("{:?}", defaults.log), "{name}");
                assert_eq!(settings.log_append_time, defaults.log_append_time, "{name}");
            }
        }
        assert!(
            config
                .topic_settings(&overrides(&[("message.timestamp.type", " LogAppendTime")]))
                .unwrap()
                .log_append_time
        );
        // All at once too: the cross-config check sees min <= max here.
        assert!(config.topic_settings(&overrides(values)).is_ok());
    }

    /// Values Kafka refuses, we refuse, with the config named in the error.
    #[test]
    fn values_kafka_refuses_are_refused() {
        let config = test_config();
        for (name, value) in [
            ("compression.type", "brotli"),
            ("compression.type", "GZIP"),
            ("compression.gzip.level", "0"),
            ("compression.lz4.level", "18"),
            ("compression.zstd.level", "23"),
            ("delete.retention.ms", "-1"),
            ("local.retention.ms", "-3"),
            ("max.compaction.lag.ms", "0"),
            ("message.downconversion.enable", "yes"),
            ("message.format.version", "9.9"),
            ("message.format.version", "0.7"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("min.cleanable.dirty.ratio", "half"),
            ("leader.replication.throttled.replicas", "0:x"),
            ("leader.replication.throttled.replicas", "*,0:1"),
            ("preallocate", "1"),
            ("segment.index.bytes", "3"),
            ("segment.bytes", "2147483648"),
            ("max.message.bytes", "2147483648"),
            ("remote.storage.enable", "true"),
        ] {
            let error = config.topic_settings(&overrides(&[(name, value)])).unwrap_err();
            assert_eq!(error.name, name, "{name}={value}");
        }
        let remote = config.topic_settings(&overrides(&[("remote.storage.enable", "TRUE")]));
        assert!(remote.unwrap_err().reason.contains("Tiered Storage"));
        let lag = config
            .topic_settings(&overrides(&[
                ("min.compaction.lag.ms", "10"),
                ("max.compaction.lag.ms", "5"),
            ]))
            .unwrap_err();
        assert_eq!(lag.name, "min.compaction.lag.ms");
        assert!(lag.reason.contains("max.compaction.lag.ms"), "{}", lag.reason);
    }

    #[test]
    fn message_format_versions_parse_as_kafka_parses_them() {
        for version in ["0.8.0", "0.10.0-IV1", "0.10.2.1", "1.0", "2.8", "2.8.2", "3.0-IV1", "3.9"]
        {
            assert!(is_message_format_version(version), "{version}");
        }
        for version in ["", "0.7", "0.10", "3", "3.10", "2.8-IV9", "latest"] {
            assert!(!is_message_format_version(version), "{version}");
        }
    }

    #[test]
    fn stored_only_configs_default_to_kafkas_defaults() {
        let mut config = test_config();
        config.properties.insert("log.retention.ms".into(), "1234".into());
        assert_eq!(config.topic_default("retention.ms").as_deref(), Some("1234"));
        assert_eq!(config.topic_default("compression.type").as_deref(), Some("producer"));
        assert_eq!(config.topic_default("message.format.version").as_deref(), Some("3.0-IV1"));
        assert_eq!(config.topic_default("no.such.config"), None);
    }
}
