//! IncrementalAlterConfigs (key 44): per config key an operation on a topic's overrides
//! (SET, DELETE, and for list configs such as cleanup.policy APPEND and SUBTRACT). The new
//! full set is computed here and stored like AlterConfigs stores it.

use std::collections::HashSet;
use std::rc::Rc;

use kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use super::configs;
use super::str_bytes;
use super::RequestContext;
use crate::config::topic_config;
use crate::error::{code, KafkaError};
use crate::shard::Shard;

/// Kafka's `AlterConfigOp.OpType` ids.
pub const OP_SET: i8 = 0;
pub const OP_DELETE: i8 = 1;
pub const OP_APPEND: i8 = 2;
pub const OP_SUBTRACT: i8 = 3;

pub async fn handle(
    ctx: &RequestContext,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let shard = &ctx.shard;
    let duplicates = super::named_twice(
        request.resources.iter().map(|r| (r.resource_type, r.resource_name.as_str().to_string())),
    );
    let mut response = IncrementalAlterConfigsResponse::default();
    for resource in &request.resources {
        let name = resource.resource_name.as_str().to_string();
        let outcome = if duplicates.contains(&(resource.resource_type, name.clone())) {
            Err(KafkaError::new(code::INVALID_REQUEST, "resource named twice in one request"))
        } else {
            alter(shard, resource, request.validate_only).await
        };
        let mut result = AlterConfigsResourceResponse::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        if let Err(error) = outcome {
            tracing::info!(resource = %name, code = error.code, message = %error.message, "IncrementalAlterConfigs refused");
            result.error_code = error.code;
            result.error_message = Some(str_bytes(&error.message));
        }
        response.responses.push(result);
    }
    response
}

/// The items of a comma-separated list value, without blanks.
fn list_items(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|item| !item.is_empty()).map(String::from).collect()
}

async fn alter(
    shard: &Rc<Shard>,
    resource: &AlterConfigsResource,
    validate_only: bool,
) -> Result<(), KafkaError> {
    let topic =
        configs::alterable_topic(shard, resource.resource_type, resource.resource_name.as_str())?;
    // The set is computed from this shard's image and written whole; the controller
    // takes changes one at a time, so two concurrent changes to one topic end with the
    // later one's set, as with Kafka's AlterConfigs.
    let Some(mut overrides) = shard.metadata().topic(&topic).map(|t| t.configs.clone()) else {
        return Err(KafkaError::new(
            code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("unknown topic {topic}"),
        ));
    };
    let mut seen = HashSet::new();
    for op in &resource.configs {
        let name = op.name.as_str();
        if !seen.insert(name) {
            return Err(KafkaError::new(
                code::INVALID_REQUEST,
                format!("config {name} named twice for one resource"),
            ));
        }
        let value = op.value.as_ref().map(|v| v.as_str());
        let value_needed = || {
            value.ok_or_else(|| {
                KafkaError::new(code::INVALID_REQUEST, format!("null value for config {name}"))
            })
        };
        match op.config_operation {
            OP_SET => {
                overrides.insert(name.to_string(), value_needed()?.to_string());
            }
            OP_DELETE => {
                overrides.remove(name);
            }
            OP_APPEND | OP_SUBTRACT => {
                let value = value_needed()?;
                if topic_config(name).is_none() {
                    return Err(KafkaError::new(
                        code::INVALID_CONFIG,
                        format!("unknown topic config {name}"),
                    ));
                }
                // Kafka answers INVALID_REQUEST here ("Config value append is not allowed
                // for config key"), not INVALID_CONFIG: the value is fine, the op is not.
                if !configs::is_list(name) {
                    return Err(KafkaError::new(
                        code::INVALID_REQUEST,
                        format!("config {name} is not a list: append and subtract do not apply"),
                    ));
                }
                let current = overrides
                    .get(name)
                    .cloned()
                    .or_else(|| shard.config.topic_default(name))
                    .unwrap_or_default();
                let mut items = list_items(&current);
                let changes = list_items(value);
                if op.config_operation == OP_APPEND {
                    for change in changes {
                        if !items.contains(&change) {
                            items.push(change);
                        }
                    }
                } else {
                    items.retain(|item| !changes.contains(item));
                }
                overrides.insert(name.to_string(), items.join(","));
            }
            other => {
                return Err(KafkaError::new(
                    code::INVALID_REQUEST,
                    format!("unknown config operation {other} for config {name}"),
                ));
            }
        }
    }
    configs::set_topic_configs(shard, &topic, overrides, validate_only).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_items_drop_blanks_and_spaces() {
        assert_eq!(list_items(" compact, delete ,,"), vec!["compact", "delete"]);
        assert!(list_items("").is_empty());
    }
}
