//! AlterConfigs (key 33), the legacy form: each topic resource carries the whole new set
//! of overrides (a config left out goes back to the broker default). Broker properties
//! are static and cannot be changed here.

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use kafka_protocol::messages::alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::configs;
use super::str_bytes;
use super::RequestContext;
use crate::error::{code, KafkaError};
use crate::shard::Shard;

pub async fn handle(ctx: &RequestContext, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let shard = &ctx.shard;
    let duplicates = super::named_twice(
        request.resources.iter().map(|r| (r.resource_type, r.resource_name.as_str().to_string())),
    );
    let mut response = AlterConfigsResponse::default();
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
            tracing::info!(resource = %name, code = error.code, message = %error.message, "AlterConfigs refused");
            result.error_code = error.code;
            result.error_message = Some(str_bytes(&error.message));
        }
        response.responses.push(result);
    }
    response
}

async fn alter(
    shard: &Rc<Shard>,
    resource: &AlterConfigsResource,
    validate_only: bool,
) -> Result<(), KafkaError> {
    let topic =
        configs::alterable_topic(shard, resource.resource_type, resource.resource_name.as_str())?;
    let mut overrides = BTreeMap::new();
    let mut seen = HashSet::new();
    for entry in &resource.configs {
        let name = entry.name.as_str();
        if !seen.insert(name) {
            return Err(KafkaError::new(
                code::INVALID_REQUEST,
                format!("config {name} named twice for one resource"),
            ));
        }
        // Like Kafka, a null value sets nothing: the config takes the broker default.
        if let Some(value) = &entry.value {
            overrides.insert(name.to_string(), value.as_str().to_string());
        }
    }
    configs::set_topic_configs(shard, &topic, overrides, validate_only).await
}
