//! OffsetFetch (key 9): a group's committed offsets, for the partitions asked or all of
//! them; v8+ asks for many groups at once. Nothing committed is offset -1, no error. With
//! `require_stable` (v7+), a partition whose offset is pending in an open transaction
//! answers UNSTABLE_OFFSET_COMMIT (the client retries after the transaction ends).

use std::rc::Rc;

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse};

use super::RequestContext;
use super::{str_bytes, topic_name};
use crate::coordinator_host::NotServing;
use crate::error::code;
use crate::group::{Committed, CommittedOrError, GroupAnswer, GroupCall};
use crate::shard::Shard;
use sluice_engine::checkpoint::TopicPartition;

/// One group's committed offsets grouped by topic, in request (or topic) order; a
/// partition whose offset is pending in a transaction carries UNSTABLE_OFFSET_COMMIT
/// (only with `require_stable`).
type Offsets = Result<Vec<TopicOffsets>, i16>;
type TopicOffsets = (String, Vec<(i32, CommittedOrError)>);

async fn fetch(
    shard: &Rc<Shard>,
    group: &str,
    asked: Option<Vec<TopicPartition>>,
    require_stable: bool,
) -> Offsets {
    let call =
        GroupCall::FetchOffsets { group: group.to_string(), partitions: asked, require_stable };
    let found = match shard.coordinate(group, call).await.map_err(NotServing::code) {
        Ok(GroupAnswer::FetchOffsets(found)) => found?,
        Ok(_) => return Err(code::UNKNOWN_SERVER_ERROR),
        Err(error) => return Err(error),
    };
    let mut topics: Vec<TopicOffsets> = Vec::new();
    for (tp, committed) in found {
        match topics.last_mut() {
            Some((name, partitions)) if *name == tp.topic => {
                partitions.push((tp.partition, committed))
            }
            _ => topics.push((tp.topic, vec![(tp.partition, committed)])),
        }
    }
    Ok(topics)
}

fn asked<'a>(topics: impl Iterator<Item = (&'a str, &'a [i32])>) -> Vec<TopicPartition> {
    topics
        .flat_map(|(name, partitions)| {
            partitions.iter().map(move |p| TopicPartition::new(name, *p))
        })
        .collect()
}

pub async fn handle(ctx: &RequestContext, request: OffsetFetchRequest) -> OffsetFetchResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let mut response = OffsetFetchResponse::default();
    if version >= 8 {
        for group in &request.groups {
            let partitions = group.topics.as_ref().map(|topics| {
                asked(topics.iter().map(|t| (t.name.0.as_str(), t.partition_indexes.as_slice())))
            });
            let mut answer = OffsetFetchResponseGroup::default();
            answer.group_id = GroupId(group.group_id.0.clone());
            match fetch(shard, group.group_id.0.as_str(), partitions, request.require_stable).await
            {
                Ok(topics) => {
                    for (name, partitions) in topics {
                        let mut topic = OffsetFetchResponseTopics::default();
                        topic.name = topic_name(&name);
                        for (index, committed) in partitions {
                            let mut partition = OffsetFetchResponsePartitions::default();
                            partition.partition_index = index;
                            let committed = committed.unwrap_or_else(|error| {
                                partition.error_code = error;
                                Committed::NONE
                            });
                            partition.committed_offset = committed.offset;
                            partition.committed_leader_epoch = committed.leader_epoch;
                            partition.metadata = Some(str_bytes(&committed.metadata));
                            topic.partitions.push(partition);
                        }
                        answer.topics.push(topic);
                    }
                }
                Err(error) => answer.error_code = error,
            }
            response.groups.push(answer);
        }
        return response;
    }
    let group = request.group_id.0.as_str();
    let partitions = request.topics.as_ref().map(|topics| {
        asked(topics.iter().map(|t| (t.name.0.as_str(), t.partition_indexes.as_slice())))
    });
    let asked_partitions = partitions.clone();
    let require_stable = version >= 7 && request.require_stable;
    match fetch(shard, group, partitions, require_stable).await {
        Ok(topics) => {
            for (name, partitions) in topics {
                let mut topic = OffsetFetchResponseTopic::default();
                topic.name = topic_name(&name);
                for (index, committed) in partitions {
                    let mut partition = OffsetFetchResponsePartition::default();
                    partition.partition_index = index;
                    let committed = committed.unwrap_or_else(|error| {
                        partition.error_code = error;
                        Committed::NONE
                    });
                    partition.committed_offset = committed.offset;
                    if version >= 5 {
                        partition.committed_leader_epoch = committed.leader_epoch;
                    }
                    partition.metadata = Some(str_bytes(&committed.metadata));
                    topic.partitions.push(partition);
                }
                response.topics.push(topic);
            }
        }
        Err(error) if version >= 2 => response.error_code = error,
        Err(error) => {
            // v1 has no top-level error: every partition asked carries it.
            for tp in asked_partitions.unwrap_or_default() {
                let mut partition = OffsetFetchResponsePartition::default();
                partition.partition_index = tp.partition;
                partition.committed_offset = -1;
                partition.metadata = Some(str_bytes(""));
                partition.error_code = error;
                match response.topics.last_mut() {
                    Some(topic) if topic.name.0.as_str() == tp.topic => {
                        topic.partitions.push(partition)
                    }
                    _ => {
                        let mut topic = OffsetFetchResponseTopic::default();
                        topic.name = topic_name(&tp.topic);
                        topic.partitions.push(partition);
                        response.topics.push(topic);
                    }
                }
            }
        }
    }
    response
}
