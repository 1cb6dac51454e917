//! DeleteTopics (key 20): by name (v0-5) or by name or id (v6). The controller stores the
//! deletion; every shard closes and removes the partitions it owned.

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use sluice_engine::metadata::MetadataRecord;

use super::RequestContext;
use super::{str_bytes, topic_name, uuid};
use crate::error::{code, KafkaError};

pub async fn handle(ctx: &RequestContext, request: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = Vec::new();
    if version >= 6 {
        for topic in &request.topics {
            wanted.push((topic.name.as_ref().map(|n| n.0.as_str().to_string()), topic.topic_id));
        }
    } else {
        for name in &request.topic_names {
            wanted.push((Some(name.0.as_str().to_string()), uuid::Uuid::nil()));
        }
    }
    let mut response = DeleteTopicsResponse::default();
    for (name, topic_id) in wanted {
        let mut result = DeletableTopicResult::default();
        let found = {
            let image = shard.metadata();
            match &name {
                Some(name) => image.topic(name).map(|t| (t.name.clone(), t.topic_id)),
                None => {
                    image.topic_by_id(topic_id.as_bytes()).map(|t| (t.name.clone(), t.topic_id))
                }
            }
        };
        result.name = name.as_deref().map(topic_name);
        result.topic_id = topic_id;
        let outcome = match found {
            _ if !shard.config.delete_topic_enable => {
                Err(KafkaError::new(code::TOPIC_DELETION_DISABLED, "delete.topic.enable is false"))
            }
            Some((found_name, _)) if found_name == crate::group::OFFSETS_TOPIC => Err(
                KafkaError::new(code::INVALID_TOPIC_EXCEPTION, "cannot delete an internal topic"),
            ),
            None if name.is_none() => {
                Err(KafkaError::new(code::UNKNOWN_TOPIC_ID, "unknown topic id"))
            }
            None => Err(KafkaError::new(code::UNKNOWN_TOPIC_OR_PARTITION, "unknown topic")),
            Some((found_name, found_id)) => {
                result.name = Some(topic_name(&found_name));
                if version >= 6 {
                    result.topic_id = uuid(found_id);
                }
                let record = MetadataRecord::DeleteTopic { name: found_name.clone() };
                let deleted = shard.change_metadata(record, false).await;
                if deleted.is_ok() {
                    tracing::info!(topic = %found_name, "deleted topic");
                }
                deleted
            }
        };
        if let Err(error) = outcome {
            result.error_code = error.code;
            if version >= 5 {
                result.error_message = Some(str_bytes(&error.message));
            }
        }
        response.responses.push(result);
    }
    response
}
