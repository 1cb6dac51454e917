//! Config description and change, shared by CreateTopics, DescribeConfigs, AlterConfigs
//! and IncrementalAlterConfigs: Kafka's config sources, types and resource types, each
//! config of a topic or the broker with where its value comes from, and the one path by
//! which a topic's overrides are validated and written.

use std::collections::BTreeMap;
use std::rc::Rc;

use sluice_engine::metadata::MetadataRecord;

use crate::config::{topic_config, BrokerConfig, ConfigKind, TOPIC_CONFIGS};
use crate::error::{code, KafkaError};
use crate::shard::Shard;

/// Kafka's config sources (`DescribeConfigsResponse.ConfigSource`).
pub const SOURCE_DYNAMIC_TOPIC: i8 = 1;
pub const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;

/// Kafka's resource types (`org.apache.kafka.common.resource.ResourceType`, wire ids).
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// Kafka's config types (`DescribeConfigsResponse.ConfigType`), reported from v3.
pub mod config_type {
    pub const UNKNOWN: i8 = 0;
    pub const BOOLEAN: i8 = 1;
    pub const STRING: i8 = 2;
    pub const INT: i8 = 3;
    pub const LONG: i8 = 5;
    pub const DOUBLE: i8 = 6;
    pub const LIST: i8 = 7;
}

/// The Kafka type of every broker property we know (topic configs carry theirs in
/// `TOPIC_CONFIGS`). A name missing here reports UNKNOWN.
const BROKER_PROPERTY_TYPES: &[(&str, i8)] = &[
    ("auto.create.topics.enable", config_type::BOOLEAN),
    ("default.replication.factor", config_type::INT),
    ("delete.topic.enable", config_type::BOOLEAN),
    ("io.mode", config_type::STRING),
    ("log.cleanup.policy", config_type::LIST),
    ("log.flush.interval.messages", config_type::LONG),
    ("log.flush.interval.ms", config_type::LONG),
    ("log.index.interval.bytes", config_type::INT),
    ("log.message.timestamp.type", config_type::STRING),
    ("log.open.files.max", config_type::LONG),
    ("log.retention.bytes", config_type::LONG),
    ("log.retention.check.interval.ms", config_type::LONG),
    ("log.retention.ms", config_type::LONG),
    ("log.roll.ms", config_type::LONG),
    ("log.segment.bytes", config_type::INT),
    ("max.connections.per.shard", config_type::INT),
    ("message.max.bytes", config_type::INT),
    ("min.insync.replicas", config_type::INT),
    ("node.id", config_type::INT),
    ("num.partitions", config_type::INT),
    ("queued.max.requests", config_type::INT),
    ("socket.request.max.bytes", config_type::INT),
];

/// The wire id of a config kind.
fn wire_type(kind: ConfigKind) -> i8 {
    match kind {
        ConfigKind::Boolean => config_type::BOOLEAN,
        ConfigKind::String => config_type::STRING,
        ConfigKind::Int => config_type::INT,
        ConfigKind::Long => config_type::LONG,
        ConfigKind::Double => config_type::DOUBLE,
        ConfigKind::List => config_type::LIST,
    }
}

/// The Kafka config type of a topic config or broker property.
pub fn config_type_of(name: &str) -> i8 {
    if let Some(config) = topic_config(name) {
        return wire_type(config.kind);
    }
    BROKER_PROPERTY_TYPES
        .iter()
        .find(|(known, _)| *known == name)
        .map_or(config_type::UNKNOWN, |(_, kind)| *kind)
}

/// True for a comma-separated list config, the only kind IncrementalAlterConfigs may
/// APPEND to or SUBTRACT from.
pub fn is_list(name: &str) -> bool {
    config_type_of(name) == config_type::LIST
}

/// One value a config could take, and where it comes from (Kafka's "synonym").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synonym {
    pub name: String,
    pub value: Option<String>,
    pub source: i8,
}

/// One config of a resource as DescribeConfigs and CreateTopics report it: the value in
/// force and, most specific first, every value that could apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub source: i8,
    pub config_type: i8,
    pub synonyms: Vec<Synonym>,
    /// Set for a topic config Sluice stores without acting on it, for DescribeConfigs'
    /// documentation field: a client that asks is told so.
    pub documentation: Option<&'static str>,
}

/// The documentation of every topic config Sluice stores without acting on it.
pub const STORED_ONLY: &str = "Accepted and stored as Kafka does; Sluice does not act on it.";

/// The source every broker property reports. `BrokerConfig::properties` holds Kafka's
/// defaults and configured values alike and does not say which is which, so we cannot
/// tell DEFAULT_CONFIG from STATIC_BROKER_CONFIG; the latter is true either way (the
/// value is the broker's static configuration).
const BROKER_PROPERTY_SOURCE: i8 = SOURCE_STATIC_BROKER;

/// Every topic config in `TOPIC_CONFIGS` order, with its override or its default. The
/// default of a config Sluice acts on is its broker property's value (the broker's
/// static configuration); of one it only stores, Kafka's default.
pub fn topic_entries(
    config: &BrokerConfig,
    overrides: &BTreeMap<String, String>,
) -> Vec<ConfigEntry> {
    TOPIC_CONFIGS
        .iter()
        .map(|topic_config| {
            let name = topic_config.name;
            let mut synonyms = Vec::new();
            if let Some(value) = overrides.get(name) {
                synonyms.push(Synonym {
                    name: name.to_string(),
                    value: Some(value.clone()),
                    source: SOURCE_DYNAMIC_TOPIC,
                });
            }
            let default = config.topic_default(name);
            synonyms.push(Synonym {
                name: topic_config.broker_name.unwrap_or(name).to_string(),
                value: default.clone(),
                source: if topic_config.honoured { BROKER_PROPERTY_SOURCE } else { SOURCE_DEFAULT },
            });
            let (value, source) = match overrides.get(name) {
                Some(value) => (Some(value.clone()), SOURCE_DYNAMIC_TOPIC),
                None => (default, SOURCE_DEFAULT),
            };
            ConfigEntry {
                name: name.to_string(),
                value,
                source,
                config_type: wire_type(topic_config.kind),
                synonyms,
                documentation: (!topic_config.honoured).then_some(STORED_ONLY),
            }
        })
        .collect()
}

/// Every broker property with its value.
pub fn broker_entries(config: &BrokerConfig) -> Vec<ConfigEntry> {
    config
        .properties
        .iter()
        .map(|(name, value)| {
            let source = BROKER_PROPERTY_SOURCE;
            ConfigEntry {
                name: name.clone(),
                value: Some(value.clone()),
                source,
                config_type: config_type_of(name),
                synonyms: vec![Synonym { name: name.clone(), value: Some(value.clone()), source }],
                documentation: None,
            }
        })
        .collect()
}

/// The topic an AlterConfigs or IncrementalAlterConfigs resource may change. Broker
/// properties are read once at start-up, so a broker resource is refused.
pub fn alterable_topic(shard: &Shard, resource_type: i8, name: &str) -> Result<String, KafkaError> {
    match resource_type {
        RESOURCE_TOPIC => {
            if shard.metadata().topic(name).is_none() {
                return Err(KafkaError::new(
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("unknown topic {name}"),
                ));
            }
            Ok(name.to_string())
        }
        RESOURCE_BROKER => Err(KafkaError::new(
            code::INVALID_REQUEST,
            "broker configs are static: set them in the config file or with --set and restart",
        )),
        other => Err(KafkaError::new(
            code::INVALID_REQUEST,
            format!("resource type {other} has no configs that can be changed"),
        )),
    }
}

/// Validates `overrides` as the whole new override set of `topic` and, unless
/// `validate_only`, stores it through the controller, which applies it on every shard
/// (their partitions take the new settings) before this returns.
pub async fn set_topic_configs(
    shard: &Rc<Shard>,
    topic: &str,
    overrides: BTreeMap<String, String>,
    validate_only: bool,
) -> Result<(), KafkaError> {
    shard
        .config
        .topic_settings(&overrides)
        .map_err(|error| KafkaError::new(code::INVALID_CONFIG, error.to_string()))?;
    let record = MetadataRecord::SetTopicConfigs {
        name: topic.to_string(),
        configs: overrides.into_iter().collect(),
    };
    shard.change_metadata(record, validate_only).await?;
    tracing::info!(topic, validate_only, "topic configs set");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::test_config;

    #[test]
    fn config_types_cover_topic_configs() {
        for topic_config in TOPIC_CONFIGS.iter().filter(|c| c.honoured) {
            let (name, broker_name) = (topic_config.name, topic_config.broker_name.unwrap());
            assert_ne!(config_type_of(name), config_type::UNKNOWN, "{name}");
            assert_eq!(config_type_of(name), config_type_of(broker_name), "{name}");
        }
        assert!(TOPIC_CONFIGS.windows(2).all(|pair| pair[0].name < pair[1].name), "sorted");
        assert!(is_list("leader.replication.throttled.replicas"));
        assert_eq!(config_type_of("min.cleanable.dirty.ratio"), config_type::DOUBLE);
        assert_eq!(config_type_of("preallocate"), config_type::BOOLEAN);
        assert!(is_list("cleanup.policy"));
        assert!(!is_list("retention.ms"));
        assert_eq!(config_type_of("no.such.config"), config_type::UNKNOWN);
    }

    #[test]
    fn topic_entries_report_overrides_then_defaults() {
        let mut config = test_config();
        config.properties.insert("log.retention.ms".into(), "604800000".into());
        let overrides: BTreeMap<String, String> =
            [("retention.ms".to_string(), "1000".to_string())].into();
        let entries = topic_entries(&config, &overrides);
        assert_eq!(entries.len(), TOPIC_CONFIGS.len());
        let retention = entries.iter().find(|e| e.name == "retention.ms").unwrap();
        assert_eq!(retention.value.as_deref(), Some("1000"));
        assert_eq!(retention.source, SOURCE_DYNAMIC_TOPIC);
        assert_eq!(retention.config_type, config_type::LONG);
        assert_eq!(retention.synonyms.len(), 2);
        assert_eq!(retention.synonyms[0].source, SOURCE_DYNAMIC_TOPIC);
        assert_eq!(retention.synonyms[1].name, "log.retention.ms");
        assert_eq!(retention.synonyms[1].value.as_deref(), Some("604800000"));
        let segment = entries.iter().find(|e| e.name == "segment.ms").unwrap();
        assert_eq!(segment.source, SOURCE_DEFAULT);
        assert_eq!(segment.synonyms.len(), 1);
    }
}
