//! CreatePartitions (key 37): grows a topic to a new total partition count. Kafka never
//! shrinks a topic (keys would move between partitions); the active controller places
//! the new partitions (or checks the explicit assignments) and stores them, and this
//! broker opens the ones placed on it before the answer. New
//! partitions that could not be opened (they exist, offline) make the topic's answer
//! KAFKA_STORAGE_ERROR, with why in its message.

use std::rc::Rc;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use sluice_cluster::controller::rpc::Intent;

use super::RequestContext;
use super::{str_bytes, topic_name};
use crate::error::{code, KafkaError};
use crate::shard::Shard;

pub async fn handle(
    ctx: &RequestContext,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let shard = &ctx.shard;
    let duplicates =
        super::named_twice(request.topics.iter().map(|t| t.name.0.as_str().to_string()));
    let mut response = CreatePartitionsResponse::default();
    for topic in &request.topics {
        let name = topic.name.0.as_str().to_string();
        let outcome = if duplicates.contains(&name) {
            Err(KafkaError::new(code::INVALID_REQUEST, "topic named twice in one request"))
        } else {
            create(shard, &name, topic, request.validate_only).await
        };
        let mut result = CreatePartitionsTopicResult::default();
        result.name = topic_name(&name);
        match outcome {
            Ok(()) => {
                tracing::info!(topic = %name, partitions = topic.count, validate_only = request.validate_only, "CreatePartitions");
            }
            Err(error) => {
                tracing::info!(topic = %name, code = error.code, message = %error.message, "CreatePartitions refused");
                result.error_code = error.code;
                result.error_message = Some(str_bytes(&error.message));
            }
        }
        response.results.push(result);
    }
    response
}

async fn create(
    shard: &Rc<Shard>,
    name: &str,
    topic: &CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), KafkaError> {
    let Some(current) = shard.metadata().topic(name).map(|t| t.partitions) else {
        return Err(KafkaError::new(
            code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("unknown topic {name}"),
        ));
    };
    if name == crate::group::OFFSETS_TOPIC {
        // Groups are placed by hash modulo the partition count: more partitions would
        // move every group away from its committed offsets.
        return Err(KafkaError::new(
            code::INVALID_PARTITIONS,
            format!("the partition count of {name} is fixed"),
        ));
    }
    if topic.count <= current {
        return Err(KafkaError::new(
            code::INVALID_PARTITIONS,
            format!(
                "topic {name} has {current} partitions; the new count {} must be larger",
                topic.count
            ),
        ));
    }
    let assignments: Vec<Vec<i32>> = topic
        .assignments
        .iter()
        .flatten()
        .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
        .collect();
    let intent =
        Intent::CreatePartitions { name: name.to_string(), partitions: topic.count, assignments };
    // Stored and applied; new partitions that could not be opened make it an error.
    let applied = shard.change_intent(intent, validate_only).await?;
    applied.storage_error().map_or(Ok(()), Err)
}
