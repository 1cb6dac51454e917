//! CreateTopics (key 19): the name, counts and configs validated here, then forwarded to
//! the active controller, which places the replicas over the live brokers (or checks the
//! explicit assignment) and stores the topic; answered once this broker applied it.
//! `validate_only` stops after the controller's checks. A topic some of
//! whose partitions could not be opened (they exist, offline) is answered
//! KAFKA_STORAGE_ERROR with how many and why; the other topics of the request are not
//! affected.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use sluice_cluster::controller::rpc::{Intent, NewTopic};
use sluice_engine::metadata;

use super::RequestContext;
use super::{configs, str_bytes, topic_name, uuid};
use crate::config::BrokerConfig;
use crate::error::{code, from_metadata_error, KafkaError};

pub async fn handle(ctx: &RequestContext, request: CreateTopicsRequest) -> CreateTopicsResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let config = &shard.config;
    let mut response = CreateTopicsResponse::default();
    let duplicates =
        super::named_twice(request.topics.iter().map(|t| t.name.0.as_str().to_string()));
    for topic in request.topics {
        let name = topic.name.0.as_str().to_string();
        let mut result = CreatableTopicResult::default();
        result.name = topic_name(&name);
        let prepared = if duplicates.contains(&name) {
            Err(KafkaError::new(code::INVALID_REQUEST, "topic named twice in one request"))
        } else {
            prepare(config, &name, topic.num_partitions, topic.replication_factor, &topic)
        };
        let outcome = match prepared {
            Ok(new) => {
                let intent = Intent::CreateTopic(new.clone());
                match shard.change_intent(intent, request.validate_only).await {
                    // Stored; partitions that could not be opened are offline, and the
                    // client is told so rather than that all went well.
                    Ok(applied) => applied.storage_error().map_or(Ok(new), Err),
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(new) => {
                let topic_id = new.topic_id;
                // What the controller chose, or (validate_only) what was asked.
                let stored =
                    shard.metadata().topic(&name).map(|t| (t.partitions, t.replication_factor));
                let (partitions, replication_factor) = stored.unwrap_or((
                    if new.partitions == -1 { config.num_partitions } else { new.partitions },
                    if new.replication_factor == -1 {
                        config.default_replication_factor
                    } else {
                        new.replication_factor
                    },
                ));
                let configs = new.configs;
                // Fields a version does not have must keep their defaults to encode.
                if version >= 7 {
                    result.topic_id = uuid(topic_id);
                }
                if version >= 5 {
                    result.num_partitions = partitions;
                    result.replication_factor = replication_factor;
                    let overrides: BTreeMap<String, String> = configs.into_iter().collect();
                    result.configs = Some(describe_topic_configs(config, &overrides));
                }
                tracing::info!(topic = %name, partitions, validate_only = request.validate_only, "CreateTopics");
            }
            Err(error) => {
                tracing::info!(topic = %name, code = error.code, message = %error.message, "CreateTopics failed");
                result.error_code = error.code;
                result.error_message = Some(str_bytes(&error.message));
                result.num_partitions = -1;
                result.replication_factor = -1;
            }
        }
        response.topics.push(result);
    }
    response
}

fn prepare(
    config: &BrokerConfig,
    name: &str,
    num_partitions: i32,
    replication_factor: i16,
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<NewTopic, KafkaError> {
    metadata::validate_topic_name(name).map_err(|e| from_metadata_error(&e))?;
    let assignments: Vec<(i32, Vec<i32>)> = topic
        .assignments
        .iter()
        .map(|a| (a.partition_index, a.broker_ids.iter().map(|b| b.0).collect()))
        .collect();
    if !assignments.is_empty() {
        // Kafka: an assignment replaces both counts, which must then be -1.
        if num_partitions != -1 || replication_factor != -1 {
            return Err(KafkaError::new(
                code::INVALID_REQUEST,
                "replica assignment given together with a partition count or replication factor",
            ));
        }
    } else {
        if num_partitions < 1 && num_partitions != -1 {
            return Err(KafkaError::new(
                code::INVALID_PARTITIONS,
                "Number of partitions was set to an invalid non-positive value.",
            ));
        }
        if replication_factor < 1 && replication_factor != -1 {
            return Err(KafkaError::new(
                code::INVALID_REPLICATION_FACTOR,
                "Replication factor must be larger than 0, or -1 to use the default value.",
            ));
        }
    }
    let mut configs = BTreeMap::new();
    for entry in &topic.configs {
        let Some(value) = &entry.value else { continue };
        configs.insert(entry.name.as_str().to_string(), value.as_str().to_string());
    }
    config
        .topic_settings(&configs)
        .map_err(|error| KafkaError::new(code::INVALID_CONFIG, error.to_string()))?;
    Ok(NewTopic {
        name: name.to_string(),
        topic_id: metadata::new_topic_id(),
        partitions: num_partitions,
        replication_factor,
        assignments,
        configs: configs.into_iter().collect(),
    })
}

/// Every topic config with its value and source, for CreateTopics v5+.
fn describe_topic_configs(
    config: &BrokerConfig,
    overrides: &BTreeMap<String, String>,
) -> Vec<CreatableTopicConfigs> {
    configs::topic_entries(config, overrides)
        .into_iter()
        .map(|described| {
            let mut entry = CreatableTopicConfigs::default();
            entry.name = str_bytes(&described.name);
            entry.value = described.value.as_deref().map(str_bytes);
            entry.config_source = described.source;
            entry.read_only = false;
            entry.is_sensitive = false;
            entry
        })
        .collect()
}
