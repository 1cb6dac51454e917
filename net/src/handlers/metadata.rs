//! Metadata (key 3): brokers, controller, and topics with their partitions, leaders and
//! replicas. Unknown topics asked for by name are created when the client allows it and
//! `auto.create.topics.enable` is on, like Kafka. A partition whose log could not be
//! opened is answered LEADER_NOT_AVAILABLE without a leader, as Kafka answers an offline
//! partition.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use sluice_engine::metadata::{self, MetadataRecord, TopicMetadata};

use super::RequestContext;
use super::{str_bytes, topic_name, uuid};
use crate::error::code;
use crate::shard::Shard;

pub async fn handle(ctx: &RequestContext, request: MetadataRequest) -> MetadataResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let config = &shard.config;
    let mut response = MetadataResponse::default();
    // Kafka lists the brokers that are alive: registered and not fenced.
    response.brokers = super::cluster_brokers(shard)
        .into_iter()
        .filter(|b| !b.fenced || b.id == config.node_id)
        .map(|b| {
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = BrokerId(b.id);
            broker.host = str_bytes(&b.host);
            broker.port = b.port;
            if version >= 1 {
                broker.rack = b.rack.as_deref().map(str_bytes);
            }
            broker
        })
        .collect();
    // Fields a version does not have must keep their defaults to encode.
    if version >= 2 {
        response.cluster_id = Some(str_bytes(&config.cluster_id));
    }
    if version >= 1 {
        // Clients cannot reach KRaft controllers; Kafka's brokers name a live broker.
        response.controller_id = BrokerId(config.node_id);
    }

    // v0: an empty list means every topic; v1+: null means every topic.
    let requested = match request.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(topics),
    };
    let Some(requested) = requested else {
        let image = shard.metadata();
        response.topics = image.topics().map(|topic| topic_answer(shard, topic, version)).collect();
        return response;
    };

    let allow_auto_create =
        config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    for wanted in requested {
        let name = wanted.name.as_ref().map(|n| n.0.as_str().to_string());
        let by_id = name.is_none() && !wanted.topic_id.is_nil();
        if by_id {
            let found = shard.metadata().topic_by_id(wanted.topic_id.as_bytes()).cloned();
            response.topics.push(match found {
                Some(topic) => topic_answer(shard, &topic, version),
                None => error_answer(None, wanted.topic_id, code::UNKNOWN_TOPIC_ID),
            });
            continue;
        }
        let Some(name) = name else {
            response.topics.push(error_answer(None, uuid::Uuid::nil(), code::INVALID_REQUEST));
            continue;
        };
        if metadata::validate_topic_name(&name).is_err() {
            response.topics.push(error_answer(
                Some(&name),
                uuid::Uuid::nil(),
                code::INVALID_TOPIC_EXCEPTION,
            ));
            continue;
        }
        let mut found = shard.metadata().topic(&name).cloned();
        if found.is_none() && allow_auto_create {
            let record = MetadataRecord::CreateTopic {
                name: name.clone(),
                topic_id: metadata::new_topic_id(),
                partitions: config.num_partitions,
                replication_factor: config.default_replication_factor,
                configs: Vec::new(),
            };
            match shard.change_metadata(record, false).await {
                Ok(applied) => match applied.storage_error() {
                    None => tracing::info!(topic = %name, "auto-created topic"),
                    Some(error) => {
                        tracing::warn!(topic = %name, message = %error.message, "auto-created topic")
                    }
                },
                Err(error) if error.code == code::TOPIC_ALREADY_EXISTS => {}
                Err(error) => tracing::warn!(topic = %name, ?error, "auto-create failed"),
            }
            found = shard.metadata().topic(&name).cloned();
        }
        response.topics.push(match found {
            Some(topic) => topic_answer(shard, &topic, version),
            None => error_answer(Some(&name), uuid::Uuid::nil(), code::UNKNOWN_TOPIC_OR_PARTITION),
        });
    }
    response
}

fn topic_answer(shard: &Shard, topic: &TopicMetadata, version: i16) -> MetadataResponseTopic {
    let node = BrokerId(shard.config.node_id);
    let mut answer = MetadataResponseTopic::default();
    answer.name = Some(topic_name(&topic.name));
    if version >= 10 {
        answer.topic_id = uuid(topic.topic_id);
    }
    if version >= 1 {
        answer.is_internal = topic.name.starts_with("__");
    }
    // Partitions whose log could not be opened: Kafka answers a partition whose only
    // replica is offline with LEADER_NOT_AVAILABLE, no leader (-1), and the replica among
    // the offline ones (v5+). Clients then wait and retry instead of sending to it.
    let offline = shard.offline_partitions().of_topic(&topic.name);
    let image = shard.metadata();
    let alive = |id: i32| image.broker(id).map_or(true, |b| !b.fenced) || id == node.0;
    answer.partitions = (0..topic.partitions)
        .map(|index| {
            let mut partition = MetadataResponsePartition::default();
            partition.partition_index = index;
            let (leader, epoch, replicas, isr) = match topic.placement(index) {
                Some(p) => (p.leader, p.leader_epoch, p.replicas.clone(), p.isr.clone()),
                None => (node.0, 0, vec![node.0], vec![node.0]),
            };
            partition.leader_id = BrokerId(leader);
            if version >= 7 {
                partition.leader_epoch = epoch;
            }
            partition.replica_nodes = replicas.iter().copied().map(BrokerId).collect();
            partition.isr_nodes = isr.iter().copied().map(BrokerId).collect();
            let mut offline_replicas: Vec<BrokerId> =
                replicas.iter().copied().filter(|&id| !alive(id)).map(BrokerId).collect();
            // A replica here whose log could not be opened is offline too.
            let offline_here = offline.binary_search(&index).is_ok();
            if offline_here && replicas.contains(&node.0) {
                offline_replicas.push(node);
            }
            // Kafka answers a partition without a leader (or whose leader's replica is
            // offline) with LEADER_NOT_AVAILABLE and leader -1; clients wait and retry.
            if leader == metadata::NO_LEADER || (offline_here && leader == node.0) {
                partition.error_code = code::LEADER_NOT_AVAILABLE;
                partition.leader_id = BrokerId(-1);
            }
            if version >= 5 {
                partition.offline_replicas = offline_replicas;
            }
            partition
        })
        .collect();
    answer
}

fn error_answer(
    name: Option<&str>,
    topic_id: uuid::Uuid,
    error_code: i16,
) -> MetadataResponseTopic {
    let mut answer = MetadataResponseTopic::default();
    answer.name = name.map(topic_name);
    answer.topic_id = topic_id;
    answer.error_code = error_code;
    answer
}
