//! Fetch (key 1): the records past each partition's fetch offset, up to the high
//! watermark, within `max_bytes` for the response and `partition_max_bytes` per partition
//! (the first batch always whole, KIP-74). When fewer than `min_bytes` are there, the
//! fetch waits, up to `max_wait_ms`, for an append on any of its partitions: each shard
//! involved parks a watcher in its fetch purgatory (see `Shard::watch_fetch`), and the
//! first append or the deadline re-runs the read.
//!
//! Fetch sessions (KIP-227): we answer session id 0, which tells a client that no session
//! was created, so it keeps sending full fetch requests; an incremental request for a
//! session we do not know gets FETCH_SESSION_ID_NOT_FOUND, as from a broker whose session
//! cache evicted it.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::channels::local_channel;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::Clock;

use super::{negative_partition, topic_name, Layout};
use crate::error::{code, KafkaError};
use crate::shard::{FetchPart, FetchResult, Shard, ShardRequest, ShardResponse};

/// The longest wait we honour, whatever `max_wait_ms` says.
const MAX_WAIT_MS_LIMIT: u64 = 60_000;

pub async fn handle(shard: &Rc<Shard>, request: FetchRequest, version: i16) -> FetchResponse {
    let mut response = FetchResponse::default();
    // session_id 0 with epoch 0 (new session) or -1 (sessionless) is a full fetch.
    if version >= 7 && request.session_id != 0 {
        response.error_code = code::FETCH_SESSION_ID_NOT_FOUND;
        return response;
    }
    let max_bytes = if version >= 3 { request.max_bytes.max(0) as u64 } else { u64::MAX };
    let min_bytes = request.min_bytes.max(0) as u64;
    let wait_ms = (request.max_wait_ms.max(0) as u64).min(MAX_WAIT_MS_LIMIT);
    // +1: the clock reads whole milliseconds, and the wait must not end early.
    let deadline_ms = shard.clock.monotonic_ms() + wait_ms + 1;

    let mut layout = Layout::new();
    for topic in &request.topics {
        layout.topic(topic.topic.0.as_str());
        for partition in &topic.partitions {
            layout.partition(partition.partition, |tp| FetchPart {
                tp,
                offset: partition.fetch_offset,
                max_bytes: partition.partition_max_bytes.max(0) as u64,
                current_leader_epoch: if version >= 9 {
                    partition.current_leader_epoch
                } else {
                    -1
                },
            });
        }
    }
    let parts = layout.take_parts();

    let results = loop {
        let mut results = read(shard, parts.clone()).await;
        let bytes = limit_response_bytes(&mut results, &parts, max_bytes);
        let failed = results.iter().any(|r| r.error.is_some());
        let now_ms = shard.clock.monotonic_ms();
        if bytes >= min_bytes || failed || now_ms >= deadline_ms || shard.stopping() {
            break results;
        }
        let positions: Vec<(TopicPartition, i64)> = parts
            .iter()
            .zip(&results)
            .map(|(part, result)| (part.tp.clone(), result.high_watermark.max(part.offset)))
            .collect();
        wait_for_append(shard, positions, deadline_ms - now_ms).await;
    };

    for (name, partitions) in layout.answers(results, || FetchResult::failed(negative_partition()))
    {
        let mut topic = FetchableTopicResponse::default();
        topic.topic = topic_name(&name);
        for (index, result) in partitions {
            let mut data = PartitionData::default();
            data.partition_index = index;
            data.error_code = result.error.as_ref().map_or(code::NONE, |e| e.code);
            data.high_watermark = result.high_watermark;
            data.last_stable_offset = result.high_watermark;
            if version >= 5 {
                data.log_start_offset = result.log_start_offset;
            }
            data.records = Some(result.records);
            topic.partitions.push(data);
        }
        response.responses.push(topic);
    }
    response
}

async fn read(shard: &Rc<Shard>, parts: Vec<FetchPart>) -> Vec<FetchResult> {
    shard
        .scatter(
            parts,
            |part| &part.tp,
            ShardRequest::Fetch,
            |response| match response {
                ShardResponse::Fetch(results) => Some(results),
                _ => None,
            },
            || {
                let error = KafkaError::new(code::NOT_LEADER_OR_FOLLOWER, "shard unavailable");
                FetchResult::failed(error)
            },
        )
        .await
}

/// Keeps the response within `max_bytes`: partitions are filled in request order; the
/// first partition with data keeps its records whole (KIP-74: a batch larger than the
/// limit must still get through), later ones are dropped when they do not fit. Returns
/// the bytes kept.
fn limit_response_bytes(results: &mut [FetchResult], parts: &[FetchPart], max_bytes: u64) -> u64 {
    let mut total = 0u64;
    let mut first = true;
    for (result, part) in results.iter_mut().zip(parts) {
        let len = result.records.len() as u64;
        if len == 0 {
            continue;
        }
        if !first && (total + len > max_bytes || len > part.max_bytes) {
            result.records = Bytes::new();
            continue;
        }
        first = false;
        total += len;
    }
    total
}

/// Waits until any partition in `positions` grows past its offset, or `wait_ms`.
async fn wait_for_append(shard: &Rc<Shard>, positions: Vec<(TopicPartition, i64)>, wait_ms: u64) {
    let (woken, wake) = local_channel::new_bounded::<()>(shard.shards());
    let woken = Rc::new(woken);
    let mut by_owner: Vec<Vec<(TopicPartition, i64)>> = vec![Vec::new(); shard.shards()];
    for (tp, offset) in positions {
        by_owner[shard.owner_of(&tp)].push((tp, offset));
    }
    for (owner, positions) in by_owner.into_iter().enumerate() {
        if positions.is_empty() {
            continue;
        }
        let shard = shard.clone();
        let woken = woken.clone();
        glommio::spawn_local(async move {
            shard.call(owner, ShardRequest::WatchFetch { positions, wait_ms }).await;
            let _ = woken.try_send(());
        })
        .detach();
    }
    drop(woken);
    futures_lite::future::or(
        async {
            let _ = wake.recv().await;
        },
        glommio::timer::sleep(Duration::from_millis(wait_ms)),
    )
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn result(len: usize) -> FetchResult {
        FetchResult {
            error: None,
            high_watermark: 0,
            log_start_offset: 0,
            records: Bytes::from(vec![0u8; len]),
        }
    }

    fn part(max_bytes: u64) -> FetchPart {
        FetchPart {
            tp: TopicPartition::new("t", 0),
            offset: 0,
            max_bytes,
            current_leader_epoch: -1,
        }
    }

    #[test]
    fn first_partition_with_data_is_kept_whole_later_ones_must_fit() {
        let mut results = vec![result(0), result(500), result(300), result(100)];
        let parts = vec![part(1000), part(100), part(1000), part(1000)];
        let total = limit_response_bytes(&mut results, &parts, 600);
        assert_eq!(
            results.iter().map(|r| r.records.len()).collect::<Vec<_>>(),
            vec![0, 500, 0, 100]
        );
        assert_eq!(total, 600);
    }
}
