//! Produce (key 0): record batches (v2) appended as received, apart from the base offset
//! (and with `message.timestamp.type=LogAppendTime`, the timestamp) the broker assigns.
//! Partitions are appended on the shards that own them; acks=0 gets no response; acks=1
//! is answered once the leader's append is done; acks=all fails with NOT_ENOUGH_REPLICAS
//! when fewer replicas than the topic's `min.insync.replicas` are in sync, and is answered
//! once the high watermark has passed the records (every in-sync replica has them), or
//! with REQUEST_TIMED_OUT after the request's `timeout_ms`.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{
    NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use sluice_engine::checkpoint::TopicPartition;

use super::RequestContext;
use super::{negative_partition, str_bytes, topic_name, Layout};
use crate::error::{code, KafkaError};
use crate::shard::{ProducePart, ProduceResult, ShardRequest, ShardResponse};

/// Serves a produce request decoded from `body`, the frame's body.
pub async fn handle(
    ctx: &RequestContext,
    request: ProduceRequest,
    body: Bytes,
) -> Option<ProduceResponse> {
    let shard = &ctx.shard;
    let version = ctx.version;
    let acks = request.acks;
    let timeout_ms = u64::try_from(request.timeout_ms).unwrap_or(0);
    let (layout, parts) = split(request, body);
    let results: Vec<ProduceResult> = if !matches!(acks, -1..=1) {
        let error = KafkaError::new(code::INVALID_REQUIRED_ACKS, format!("acks={acks}"));
        parts.iter().map(|_| ProduceResult::failed(error.clone())).collect()
    } else {
        shard
            .scatter(
                parts,
                |part| &part.tp,
                |parts| ShardRequest::Produce { acks, timeout_ms, parts },
                |response| match response {
                    ShardResponse::Produce(results) => Some(results),
                    _ => None,
                },
                || {
                    let error = KafkaError::new(code::NOT_LEADER_OR_FOLLOWER, "shard unavailable");
                    ProduceResult::failed(error)
                },
            )
            .await
    };
    if acks == 0 {
        return None;
    }
    let mut response = ProduceResponse::default();
    for (name, partitions) in
        layout.answers(results, || ProduceResult::failed(negative_partition()))
    {
        let mut topic = TopicProduceResponse::default();
        topic.name = topic_name(&name);
        for (index, result) in partitions {
            let mut answer = PartitionProduceResponse::default();
            answer.index = index;
            answer.base_offset = result.base_offset;
            // Fields a version does not have must keep their defaults to encode.
            if version >= 2 {
                answer.log_append_time_ms = result.log_append_time_ms;
            }
            if version >= 5 {
                answer.log_start_offset = result.log_start_offset;
            }
            if let Some(error) = result.error {
                // KIP-951 (v10+): where the leader is now, so the client need not ask
                // Metadata first.
                if error.code == code::NOT_LEADER_OR_FOLLOWER && version >= 10 {
                    if let Some((leader, epoch)) = shard.metadata_cache.leader(&name, index) {
                        answer.current_leader.leader_id = BrokerId(leader);
                        answer.current_leader.leader_epoch = epoch;
                        if let Some(broker) =
                            super::cluster_brokers(shard).into_iter().find(|b| b.id == leader)
                        {
                            if !response.node_endpoints.iter().any(|e| e.node_id.0 == leader) {
                                let mut endpoint = NodeEndpoint::default();
                                endpoint.node_id = BrokerId(leader);
                                endpoint.host = str_bytes(&broker.host);
                                endpoint.port = broker.port;
                                endpoint.rack = broker.rack.as_deref().map(str_bytes);
                                response.node_endpoints.push(endpoint);
                            }
                        }
                    }
                }
                answer.error_code = error.code;
                if version >= 8 {
                    answer.error_message = Some(str_bytes(&error.message));
                }
            }
            topic.partition_responses.push(answer);
        }
        response.responses.push(topic);
    }
    Some(response)
}

/// The request's partitions in order, and a part (with mutable record bytes) for each
/// one with a valid index. The request is dropped before the records are taken over.
fn split(
    mut request: ProduceRequest,
    body: Bytes,
) -> (Layout<(TopicPartition, Option<Bytes>)>, Vec<ProducePart>) {
    let mut layout = Layout::new();
    for topic in std::mem::take(&mut request.topic_data) {
        layout.topic(topic.name.0.as_str());
        for data in topic.partition_data {
            layout.partition(data.index, |tp| (tp, data.records));
        }
    }
    drop(request);
    let records = layout.take_parts();
    (layout, records_mut(records, body))
}

/// Where a part's record bytes are before they are made mutable.
enum Source {
    /// At this range of the frame body.
    Body(usize, usize),
    /// Elsewhere (an empty or absent records field, or bytes the decoder copied).
    Own(Option<BytesMut>),
}

/// Hands every part its record bytes as a mutable buffer, for the log to assign offsets
/// in place. When the frame's memory belongs to this request alone (a large frame, read
/// into its own allocation: `server::FrameReader`) and every other slice of it has been
/// dropped, the body is taken over and cut into the parts' ranges: no copy. Otherwise
/// (small frames share the connection's receive buffer) each part's bytes are copied.
fn records_mut(parts: Vec<(TopicPartition, Option<Bytes>)>, body: Bytes) -> Vec<ProducePart> {
    let base = body.as_ptr() as usize;
    let mut ordered = true;
    let mut end = 0;
    let mut located = Vec::with_capacity(parts.len());
    for (tp, records) in parts {
        let source = match records {
            Some(records) if !records.is_empty() => {
                let start = (records.as_ptr() as usize).wrapping_sub(base);
                if start <= body.len() && records.len() <= body.len() - start {
                    ordered &= start >= end;
                    end = start + records.len();
                    Source::Body(start, records.len())
                } else {
                    Source::Own(Some(BytesMut::from(&records[..])))
                }
            }
            records => Source::Own(records.map(|r| BytesMut::from(&r[..]))),
        };
        located.push((tp, source));
    }
    // Only `body` refers to the frame now (the decoded request and its slices are gone).
    let mut whole = if ordered { body.try_into_mut() } else { Err(body) };
    let mut at = 0;
    located
        .into_iter()
        .map(|(tp, source)| {
            let records = match source {
                Source::Own(records) => records,
                Source::Body(start, len) => Some(match &mut whole {
                    Ok(whole) => {
                        whole.advance(start - at);
                        at = start + len;
                        whole.split_to(len)
                    }
                    Err(body) => BytesMut::from(&body[start..start + len]),
                }),
            };
            ProducePart { tp, records }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

    use super::*;
    use crate::protocol::{decode_body, decode_header, Request};

    /// A produce frame (no size prefix) with two topics: partitions 0 and 2 of "a" with
    /// records, partition 1 of "b" with none.
    fn frame(version: i16, a0: &[u8], a2: &[u8]) -> Vec<u8> {
        let mut header = RequestHeader::default();
        header.request_api_version = version;
        header.correlation_id = 7;
        header.client_id = Some(StrBytes::from_static_str("test-client"));
        let mut request = ProduceRequest::default();
        request.acks = 1;
        let mut a = TopicProduceData::default();
        a.name = TopicName(StrBytes::from_static_str("a"));
        for (index, records) in [(0, a0), (2, a2)] {
            a.partition_data.push(
                PartitionProduceData::default()
                    .with_index(index)
                    .with_records(Some(Bytes::copy_from_slice(records))),
            );
        }
        let mut b = TopicProduceData::default();
        b.name = TopicName(StrBytes::from_static_str("b"));
        b.partition_data.push(PartitionProduceData::default().with_index(1).with_records(None));
        request.topic_data = vec![a, b];
        let mut out = Vec::new();
        header.encode(&mut out, ProduceRequest::header_version(version)).unwrap();
        request.encode(&mut out, version).unwrap();
        out
    }

    fn parts_of(frame: Bytes, version: i16) -> Vec<ProducePart> {
        let Request { body, .. } = decode_header(ApiKey::Produce, version, frame).unwrap();
        let request: ProduceRequest = decode_body(ApiKey::Produce, version, &body).unwrap();
        split(request, body).1
    }

    /// A frame owned by the request alone is cut into the parts without a copy: their
    /// bytes are the frame's own memory. A frame shared with anything else is copied.
    /// Either way each part gets exactly its records, for every version served.
    #[test]
    fn records_are_taken_over_in_place_when_the_frame_is_unshared() {
        let a0 = vec![1u8; 5000];
        let a2: Vec<u8> = (0..3000).map(|i| i as u8).collect();
        for version in 3..=12 {
            for shared in [false, true] {
                let frame = Bytes::from(frame(version, &a0, &a2));
                let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
                let keep = shared.then(|| frame.clone());
                let parts = parts_of(frame, version);
                let found: Vec<_> = parts
                    .iter()
                    .map(|p| (p.tp.topic.as_str(), p.tp.partition, p.records.as_deref()))
                    .collect();
                // (Not assert_eq: a failure would print kilobytes of records.)
                assert!(
                    found == [("a", 0, Some(&a0[..])), ("a", 2, Some(&a2[..])), ("b", 1, None)],
                    "v{version} shared={shared}: wrong parts"
                );
                for records in parts.iter().filter_map(|p| p.records.as_ref()) {
                    let inside = range.contains(&(records.as_ptr() as usize));
                    assert_eq!(inside, !shared, "v{version} shared={shared}");
                }
                drop(keep);
            }
        }
    }
}
