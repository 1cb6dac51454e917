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
    /// Every broker property with its value (defaults included), for DescribeConfigs.
    pub properties: BTreeMap<String, String>,
    /// Each shard's share of `log.open.files.max`: the descriptors its segment files may
    /// hold (see `sluice_engine::fdcache`).
    pub open_files_per_shard: usize,
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

/// Topic-level config names we accept, and the broker property each one defaults to.
pub const TOPIC_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "log.cleanup.policy"),
    ("flush.messages", "log.flush.interval.messages"),
    ("flush.ms", "log.flush.interval.ms"),
    ("index.interval.bytes", "log.index.interval.bytes"),
    ("max.message.bytes", "message.max.bytes"),
    ("message.timestamp.type", "log.message.timestamp.type"),
    ("min.insync.replicas", "min.insync.replicas"),
    ("retention.bytes", "log.retention.bytes"),
    ("retention.ms", "log.retention.ms"),
    ("segment.bytes", "log.segment.bytes"),
    ("segment.ms", "log.roll.ms"),
];

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
    /// The broker default for a topic config name (`None` for unknown names).
    pub fn topic_default(&self, name: &str) -> Option<String> {
        let (_, broker_name) = TOPIC_CONFIGS.iter().find(|(topic_name, _)| *topic_name == name)?;
        Some(match name {
            // Kafka's topic-level names are in milliseconds / messages where the broker
            // defaults may say "Long.MAX_VALUE"; both print as numbers.
            "segment.ms" => self.log.segment_ms.to_string(),
            _ => self.properties.get(*broker_name).cloned().unwrap_or_default(),
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
        // Like Kafka, a batch larger than segment.bytes is allowed: it gets a segment
        // of its own (the log rolls before it and never splits a batch).
        Ok(settings)
    }
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
    let number = || value.trim().parse::<i64>().map_err(|_| error("not a number"));
    let log = &mut settings.log;
    match name {
        "cleanup.policy" => {
            let policies: Vec<&str> = value.split(',').map(str::trim).collect();
            if policies.is_empty() || policies.iter().any(|p| *p != "delete" && *p != "compact") {
                return Err(error("expected delete, compact or both"));
            }
            settings.cleanup_policy = value.to_string();
        }
        "flush.messages" => {
            let n = number()?;
            if n < 1 {
                return Err(error("must be at least 1"));
            }
            log.flush_messages = if n == i64::MAX { u64::MAX } else { n as u64 };
        }
        "flush.ms" => {
            let n = number()?;
            if n < 0 {
                return Err(error("must not be negative"));
            }
            log.flush_ms = if n == i64::MAX { u64::MAX } else { n as u64 };
        }
        "index.interval.bytes" => {
            let n = number()?;
            if n < 0 {
                return Err(error("must not be negative"));
            }
            log.index_interval_bytes = n as u64;
        }
        "max.message.bytes" => {
            let n = number()?;
            if !(0..=i64::from(i32::MAX)).contains(&n) {
                return Err(error("must be in [0, 2147483647]"));
            }
            log.max_message_bytes = n as usize;
        }
        "message.timestamp.type" => match value {
            "CreateTime" => settings.log_append_time = false,
            "LogAppendTime" => settings.log_append_time = true,
            _ => return Err(error("expected CreateTime or LogAppendTime")),
        },
        "min.insync.replicas" => {
            let n = number()?;
            if !(1..=i64::from(i32::MAX)).contains(&n) {
                return Err(error("must be at least 1"));
            }
            settings.min_insync_replicas = n as i32;
        }
        "retention.bytes" => log.retention_bytes = number()?,
        "retention.ms" => {
            let n = number()?;
            if n < -1 {
                return Err(error("must be -1 or more"));
            }
            log.retention_ms = n;
        }
        "segment.bytes" => {
            let n = number()?;
            if !(14..=log::SEGMENT_BYTES_MAX as i64).contains(&n) {
                return Err(error(&format!("must be in [14, {}]", log::SEGMENT_BYTES_MAX)));
            }
            log.segment_bytes = n as u64;
        }
        "segment.ms" => {
            let n = number()?;
            if n < 1 {
                return Err(error("must be at least 1"));
            }
            log.segment_ms = n;
        }
        _ => return Err(error("unknown topic config")),
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
}
