//! DescribeConfigs (key 32): a topic's configs (its overrides, else the broker defaults)
//! or the broker's properties, each with its source, and from v3 its type.

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_engine::metadata;

use super::configs::{self, ConfigEntry, RESOURCE_BROKER, RESOURCE_TOPIC};
use super::str_bytes;
use super::RequestContext;
use crate::error::{code, from_metadata_error, KafkaError};
use crate::shard::Shard;

pub async fn handle(
    ctx: &RequestContext,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    // Fields a version does not have must keep their defaults to encode.
    let include_documentation = version >= 3 && request.include_documentation;
    let mut response = DescribeConfigsResponse::default();
    for resource in &request.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        match describe(shard, resource) {
            Ok(entries) => {
                result.configs = entries
                    .into_iter()
                    .filter(|entry| match &resource.configuration_keys {
                        Some(keys) => keys.iter().any(|key| key.as_str() == entry.name),
                        None => true,
                    })
                    .map(|entry| answer(entry, request.include_synonyms, include_documentation))
                    .collect();
            }
            Err(error) => {
                result.error_code = error.code;
                result.error_message = Some(str_bytes(&error.message));
            }
        }
        response.results.push(result);
    }
    response
}

fn describe(
    shard: &Shard,
    resource: &DescribeConfigsResource,
) -> Result<Vec<ConfigEntry>, KafkaError> {
    let name = resource.resource_name.as_str();
    match resource.resource_type {
        RESOURCE_TOPIC => {
            metadata::validate_topic_name(name).map_err(|e| from_metadata_error(&e))?;
            let image = shard.metadata();
            let Some(topic) = image.topic(name) else {
                return Err(KafkaError::new(
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("unknown topic {name}"),
                ));
            };
            Ok(configs::topic_entries(&shard.config, &topic.configs))
        }
        RESOURCE_BROKER => {
            // An empty name asks for the cluster-wide broker defaults; with one broker
            // and static properties they are this broker's properties.
            let node_id = shard.config.node_id;
            if !name.is_empty() && name != node_id.to_string() {
                return Err(KafkaError::new(
                    code::INVALID_REQUEST,
                    format!("broker {name:?} is not this broker (node {node_id})"),
                ));
            }
            Ok(configs::broker_entries(&shard.config))
        }
        other => Err(KafkaError::new(
            code::INVALID_REQUEST,
            format!("resource type {other} has no configs to describe"),
        )),
    }
}

/// One config as the response carries it. `documentation` (v3+, when asked for) is null,
/// as we do not ship Kafka's config docs, except for a topic config Sluice stores without
/// acting on it, which says so.
fn answer(
    entry: ConfigEntry,
    include_synonyms: bool,
    include_documentation: bool,
) -> DescribeConfigsResourceResult {
    let mut result = DescribeConfigsResourceResult::default();
    result.name = str_bytes(&entry.name);
    result.value = entry.value.as_deref().map(str_bytes);
    result.read_only = false;
    result.config_source = entry.source;
    result.is_sensitive = false;
    result.config_type = entry.config_type;
    result.documentation =
        entry.documentation.filter(|_| include_documentation).map(StrBytes::from_static_str);
    if include_synonyms {
        result.synonyms = entry
            .synonyms
            .iter()
            .map(|synonym| {
                let mut answer = DescribeConfigsSynonym::default();
                answer.name = str_bytes(&synonym.name);
                answer.value = synonym.value.as_deref().map(str_bytes);
                answer.source = synonym.source;
                answer
            })
            .collect();
    }
    result
}
