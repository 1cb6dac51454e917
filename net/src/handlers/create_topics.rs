//! CreateTopics (key 19): validated (name, partitions, replication factor 1 while we are
//! one node, configs), stored in the metadata log by the controller shard and applied on
//! every shard before the answer; `validate_only` stops after validation. A topic some of
//! whose partitions could not be opened (they exist, offline) is answered
//! KAFKA_STORAGE_ERROR with how many and why; the other topics of the request are not
//! affected.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use sluice_engine::metadata::{self, MetadataRecord};

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
            Ok(record) => {
                match shard.change_metadata(record.clone(), request.validate_only).await {
                    // Stored; partitions that could not be opened are offline, and the
                    // client is told so rather than that all went well.
                    Ok(applied) => applied.storage_error().map_or(Ok(record), Err),
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(MetadataRecord::CreateTopic {
                topic_id,
                partitions,
                replication_factor,
                configs,
                ..
            }) => {
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
            Ok(_) => {}
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
) -> Result<MetadataRecord, KafkaError> {
    metadata::validate_topic_name(name).map_err(|e| from_metadata_error(&e))?;
    let mut partitions = if num_partitions == -1 { config.num_partitions } else { num_partitions };
    let mut replication_factor = if replication_factor == -1 {
        config.default_replication_factor
    } else {
        replication_factor
    };
    if !topic.assignments.is_empty() {
        // Kafka: an assignment replaces both counts, which must then be -1.
        if num_partitions != -1 || topic.replication_factor != -1 {
            return Err(KafkaError::new(
                code::INVALID_REQUEST,
                "replica assignment given together with a partition count or replication factor",
            ));
        }
        let mut indexes: Vec<i32> = topic.assignments.iter().map(|a| a.partition_index).collect();
        indexes.sort_unstable();
        if indexes.iter().enumerate().any(|(i, p)| *p != i as i32) {
            return Err(KafkaError::new(
                code::INVALID_REPLICA_ASSIGNMENT,
                "partitions must be 0..n",
            ));
        }
        for assignment in &topic.assignments {
            if assignment.broker_ids.len() != 1 || assignment.broker_ids[0].0 != config.node_id {
                return Err(KafkaError::new(
                    code::INVALID_REPLICA_ASSIGNMENT,
                    format!("this cluster has one broker, node {}", config.node_id),
                ));
            }
        }
        partitions = indexes.len() as i32;
        replication_factor = 1;
    }
    if partitions < 1 {
        return Err(KafkaError::new(code::INVALID_PARTITIONS, format!("{partitions} partitions")));
    }
    if replication_factor != 1 {
        return Err(KafkaError::new(
            code::INVALID_REPLICATION_FACTOR,
            format!("replication factor {replication_factor}: this cluster has 1 broker"),
        ));
    }
    let mut configs = BTreeMap::new();
    for entry in &topic.configs {
        let Some(value) = &entry.value else { continue };
        configs.insert(entry.name.as_str().to_string(), value.as_str().to_string());
    }
    config
        .topic_settings(&configs)
        .map_err(|error| KafkaError::new(code::INVALID_CONFIG, error.to_string()))?;
    Ok(MetadataRecord::CreateTopic {
        name: name.to_string(),
        topic_id: metadata::new_topic_id(),
        partitions,
        replication_factor,
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
