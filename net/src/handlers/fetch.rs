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

use bytes::{BufMut, BytesMut};
use glommio::channels::local_channel;
use kafka_protocol::messages::FetchRequest;
use sluice_engine::clock::Clock;

use super::RequestContext;
use super::{negative_partition, Layout};
use crate::error::{code, KafkaError};
use crate::limits::FETCH_WAIT_MS_MAX;
use crate::shard::{FetchPart, FetchResult, Shard, ShardRequest, ShardResponse, Watch};
use crate::zerocopy::{Frame, Piece, RecordBytes};

/// A fetch's answer before encoding: the top-level error, and per topic in request order
/// its partitions' results.
#[derive(Debug, Default)]
pub struct FetchAnswer {
    pub error_code: i16,
    pub topics: Vec<(String, Vec<(i32, FetchResult)>)>,
}

pub async fn handle(ctx: &RequestContext, request: FetchRequest) -> FetchAnswer {
    let shard = &ctx.shard;
    let version = ctx.version;
    // session_id 0 with epoch 0 (new session) or -1 (sessionless) is a full fetch.
    if version >= 7 && request.session_id != 0 {
        return FetchAnswer { error_code: code::FETCH_SESSION_ID_NOT_FOUND, topics: Vec::new() };
    }
    let max_bytes = if version >= 3 { request.max_bytes.max(0) as u64 } else { u64::MAX };
    let min_bytes = request.min_bytes.max(0) as u64;
    let wait_ms = (request.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MS_MAX);
    // +1: the clock reads whole milliseconds, and the wait must not end early.
    let deadline_ms = shard.clock.monotonic_ms() + wait_ms + 1;

    let read_committed = request.isolation_level == 1;
    // A follower's fetch names its broker (v15+ in ReplicaState); consumers send -1.
    let replica_id =
        if version >= 15 { request.replica_state.replica_id.0 } else { request.replica_id.0 };
    let follower = replica_id >= 0;
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
                read_committed,
                replica_id,
                last_fetched_epoch: if version >= 12 { partition.last_fetched_epoch } else { -1 },
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
        let positions: Vec<Watch> = parts
            .iter()
            .zip(&results)
            .map(|(part, result)| {
                let bound =
                    if read_committed { result.last_stable_offset } else { result.high_watermark };
                // A follower waits for its leader's log end to pass where it fetches from.
                let seen = if follower { part.offset } else { bound.max(part.offset) };
                Watch { tp: part.tp.clone(), seen, read_committed, follower }
            })
            .collect();
        wait_for_append(shard, positions, deadline_ms - now_ms).await;
    };
    let mut topics = layout.answers(results, || FetchResult::failed(negative_partition()));
    // KIP-951 (v12+): where the leader is now, so the client need not ask Metadata first.
    if version >= 12 {
        for (name, partitions) in &mut topics {
            for (index, result) in partitions.iter_mut() {
                if result.error.as_ref().is_some_and(|e| e.code == code::NOT_LEADER_OR_FOLLOWER) {
                    result.current_leader = shard.metadata_cache.leader(name, *index);
                }
            }
        }
    }
    FetchAnswer { error_code: code::NONE, topics }
}

/// Encodes a Fetch response frame (size prefix, header, body) with each partition's
/// records as their own piece, so file ranges go to the socket with sendfile. Field by
/// field as Kafka's FetchResponse schema lays out versions 4-12 (v12 is flexible: compact
/// strings, arrays and bytes, and empty tagged-field sections); a unit test checks it
/// byte for byte against the `kafka-protocol` crate's encoder.
pub fn encode(version: i16, correlation_id: i32, answer: FetchAnswer) -> Frame {
    let flexible = version >= 12;
    let mut pieces = Vec::new();
    let mut head = BytesMut::with_capacity(256);
    head.put_i32(0); // The size, patched below.
    head.put_i32(correlation_id);
    if flexible {
        head.put_u8(0); // Response header v1: no tagged fields.
    }
    head.put_i32(0); // throttle_time_ms (v1+)
    if version >= 7 {
        head.put_i16(answer.error_code);
        head.put_i32(0); // session_id: no session (see the module docs).
    }
    put_array_len(&mut head, answer.topics.len(), flexible);
    for (name, partitions) in answer.topics {
        if flexible {
            put_uvarint(&mut head, name.len() as u64 + 1);
        } else {
            head.put_i16(name.len() as i16);
        }
        head.put_slice(name.as_bytes());
        put_array_len(&mut head, partitions.len(), flexible);
        for (index, result) in partitions {
            head.put_i32(index);
            head.put_i16(result.error.as_ref().map_or(code::NONE, |e| e.code));
            head.put_i64(result.high_watermark);
            head.put_i64(result.last_stable_offset); // v4+
            if version >= 5 {
                head.put_i64(result.log_start_offset);
            }
            // aborted_transactions (v4+): null for read_uncommitted.
            match &result.aborted {
                None if flexible => put_uvarint(&mut head, 0),
                None => head.put_i32(-1),
                Some(aborted) => {
                    put_array_len(&mut head, aborted.len(), flexible);
                    for &(producer_id, first_offset) in aborted {
                        head.put_i64(producer_id);
                        head.put_i64(first_offset);
                        if flexible {
                            head.put_u8(0);
                        }
                    }
                }
            }
            if version >= 11 {
                head.put_i32(-1); // preferred_read_replica
            }
            let len = result.records.len();
            if flexible {
                put_uvarint(&mut head, len + 1);
            } else {
                head.put_i32(i32::try_from(len).unwrap_or(i32::MAX));
            }
            if len > 0 {
                pieces.push(Piece::Meta(head.split().freeze()));
                pieces.extend(result.records.pieces());
            }
            if flexible {
                // Tagged fields, in tag order; Kafka leaves each out at its default.
                // Tag 0, DivergingEpoch: epoch, end offset. Tag 1, CurrentLeader: leader id,
                // leader epoch. Each with no tagged fields of its own.
                let diverging = result.diverging_epoch;
                let leader = result.current_leader.filter(|&leader| leader != (-1, -1));
                head.put_u8(u8::from(diverging.is_some()) + u8::from(leader.is_some()));
                if let Some((epoch, end_offset)) = diverging {
                    head.put_u8(0); // tag
                    head.put_u8(13); // its size
                    head.put_i32(epoch);
                    head.put_i64(end_offset);
                    head.put_u8(0);
                }
                if let Some((leader, epoch)) = leader {
                    head.put_u8(1); // tag
                    head.put_u8(9); // its size
                    head.put_i32(leader);
                    head.put_i32(epoch);
                    head.put_u8(0);
                }
            }
        }
        if flexible {
            head.put_u8(0); // topic tagged fields
        }
    }
    if flexible {
        head.put_u8(0); // response tagged fields
    }
    pieces.push(Piece::Meta(head.freeze()));
    let mut frame = Frame { pieces };
    let size = frame.len() - 4;
    if let Some(Piece::Meta(first)) = frame.pieces.first_mut() {
        let mut patched = BytesMut::from(&first[..]);
        patched[..4].copy_from_slice(&(size as i32).to_be_bytes());
        *first = patched.freeze();
    }
    frame
}

fn put_array_len(out: &mut BytesMut, len: usize, flexible: bool) {
    if flexible {
        put_uvarint(out, len as u64 + 1);
    } else {
        out.put_i32(len as i32);
    }
}

fn put_uvarint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
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
        let len = result.records.len();
        if len == 0 {
            continue;
        }
        if !first && (total + len > max_bytes || len > part.max_bytes) {
            result.records = RecordBytes::default();
            continue;
        }
        first = false;
        total += len;
    }
    total
}

/// Waits until any partition in `positions` grows past its offset, or `wait_ms`.
async fn wait_for_append(shard: &Rc<Shard>, positions: Vec<Watch>, wait_ms: u64) {
    let (woken, wake) = local_channel::new_bounded::<()>(shard.shards());
    let woken = Rc::new(woken);
    let mut by_owner: Vec<Vec<Watch>> = vec![Vec::new(); shard.shards()];
    for watch in positions {
        by_owner[shard.owner_of(&watch.tp)].push(watch);
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
    use bytes::Bytes;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::messages::{ApiKey, FetchResponse, ProducerId};
    use proptest::prelude::*;
    use sluice_engine::checkpoint::TopicPartition;
    use std::sync::Arc;

    use crate::error::KafkaError;
    use crate::handlers::topic_name;
    use crate::protocol::encode_response;
    use crate::zerocopy::FileRange;

    /// The same answer through the `kafka-protocol` crate's generated encoder.
    fn reference(
        version: i16,
        correlation_id: i32,
        answer: &FetchAnswer,
        records: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut response = FetchResponse::default();
        response.error_code = answer.error_code;
        let mut records = records.iter();
        for (name, partitions) in &answer.topics {
            let mut topic = FetchableTopicResponse::default();
            topic.topic = topic_name(name);
            for (index, result) in partitions {
                let mut data = PartitionData::default();
                data.partition_index = *index;
                data.error_code = result.error.as_ref().map_or(code::NONE, |e| e.code);
                data.high_watermark = result.high_watermark;
                data.last_stable_offset = result.last_stable_offset;
                data.aborted_transactions = result.aborted.as_ref().map(|aborted| {
                    aborted
                        .iter()
                        .map(|&(producer_id, first_offset)| {
                            let mut entry = AbortedTransaction::default();
                            entry.producer_id = ProducerId(producer_id);
                            entry.first_offset = first_offset;
                            entry
                        })
                        .collect()
                });
                if version >= 5 {
                    data.log_start_offset = result.log_start_offset;
                }
                if let (Some((epoch, end_offset)), true) = (result.diverging_epoch, version >= 12) {
                    data.diverging_epoch.epoch = epoch;
                    data.diverging_epoch.end_offset = end_offset;
                }
                if let (Some((leader, epoch)), true) = (result.current_leader, version >= 12) {
                    data.current_leader.leader_id = kafka_protocol::messages::BrokerId(leader);
                    data.current_leader.leader_epoch = epoch;
                }
                data.records = Some(Bytes::from(records.next().unwrap().clone()));
                topic.partitions.push(data);
            }
            response.responses.push(topic);
        }
        encode_response(ApiKey::Fetch, version, correlation_id, &response).unwrap().to_vec()
    }

    type Aborted = Option<Vec<(i64, i64)>>;
    type Shape = Vec<(String, Vec<((i32, i16, i64, i64, Vec<u8>, u8), (i64, Aborted))>)>;

    fn shape() -> impl Strategy<Value = Shape> {
        let partition = (
            0i32..1000,
            prop::sample::select(vec![0i16, 1, 3, 6]),
            -1i64..1 << 40,
            -1i64..1 << 40,
            prop::collection::vec(any::<u8>(), 0..300),
            0u8..3, // memory, file, cache
        );
        let transactions = (
            -1i64..1 << 40,
            prop::option::of(prop::collection::vec((any::<i64>(), any::<i64>()), 0..3)),
        );
        let partition = (partition, transactions);
        prop::collection::vec(("[a-z._-]{1,20}", prop::collection::vec(partition, 0..4)), 0..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Our piecewise encoder writes exactly the bytes of the generated encoder, for
        /// every version we serve, with records in memory or in a file.
        #[test]
        fn encode_matches_kafka_protocol(
            version in 4i16..=12,
            correlation_id in any::<i32>(),
            session_error in any::<bool>(),
            shape in shape(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("segment");
            let mut file_bytes = Vec::new();
            let mut records = Vec::new();
            let mut answer = FetchAnswer::default();
            if version >= 7 && session_error {
                answer.error_code = code::FETCH_SESSION_ID_NOT_FOUND;
            }
            let mut in_file = Vec::new();
            for (name, partitions) in &shape {
                let mut results = Vec::new();
                for ((index, error, hw, start, bytes, source), (lso, aborted)) in partitions {
                    let error = (*error != 0).then(|| KafkaError::new(*error, "test"));
                    in_file.push((*source, file_bytes.len() as u64, bytes.clone()));
                    if *source == 1 {
                        file_bytes.extend_from_slice(bytes);
                    }
                    records.push(bytes.clone());
                    let result = FetchResult {
                        error,
                        high_watermark: *hw,
                        last_stable_offset: *lso,
                        log_start_offset: *start,
                        aborted: aborted.clone(),
                        records: RecordBytes::default(),
                        current_leader: (index % 3 == 0).then_some((*index % 7, *index % 11)),
                        diverging_epoch: (index % 2 == 0).then_some((*index % 5, *hw)),
                    };
                    results.push((*index, result));
                }
                answer.topics.push((name.clone(), results));
            }
            std::fs::write(&path, &file_bytes).unwrap();
            let fd = Arc::new(std::os::fd::OwnedFd::from(std::fs::File::open(&path).unwrap()));
            let mut placement = in_file.into_iter();
            for (_, results) in &mut answer.topics {
                for (_, result) in results.iter_mut() {
                    let (source, position, bytes) = placement.next().unwrap();
                    let len = bytes.len() as u64;
                    result.records = match source {
                        0 => RecordBytes::Memory(Bytes::from(bytes)),
                        1 => RecordBytes::File(FileRange { fd: fd.clone(), position, len }),
                        _ => {
                            let bytes = Bytes::from(bytes);
                            let half = bytes.len() / 2;
                            RecordBytes::Cached(vec![bytes.slice(..half), bytes.slice(half..)])
                        }
                    };
                }
            }
            let expected = reference(version, correlation_id, &answer, &records);
            let ours = encode(version, correlation_id, answer).to_vec().unwrap();
            prop_assert_eq!(ours, expected);
        }
    }

    fn result(len: usize) -> FetchResult {
        FetchResult {
            error: None,
            high_watermark: 0,
            last_stable_offset: 0,
            log_start_offset: 0,
            aborted: None,
            records: RecordBytes::Memory(Bytes::from(vec![0u8; len])),
            current_leader: None,
            diverging_epoch: None,
        }
    }

    fn part(max_bytes: u64) -> FetchPart {
        FetchPart {
            tp: TopicPartition::new("t", 0),
            offset: 0,
            max_bytes,
            current_leader_epoch: -1,
            read_committed: false,
            replica_id: -1,
            last_fetched_epoch: -1,
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
