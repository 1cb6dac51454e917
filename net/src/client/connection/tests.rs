//! Tests of one client connection. A fake broker on a loopback socket answers in the
//! ways a real one may (in order, late, in API versions v0, wrongly, or not at all); no
//! real broker is needed.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::client::produce::{ProducePartition, ProduceTopic};
use crate::protocol::{decode_body, decode_header, encode_response};
use glommio::net::TcpListener;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers every request in order, each after a short delay.
    InOrder,
    /// Answers ApiVersions like a broker without v3 (KIP-511: v0 + UNSUPPORTED_VERSION).
    OldApiVersions,
    /// Answers the first request after ApiVersions with another correlation id.
    WrongCorrelationId,
    /// Closes the connection after reading the first request after ApiVersions.
    CloseAfterRead,
}

#[test]
fn large_frames_reuse_their_buffers_once_dropped() {
    let size = RECYCLE_BYTES_MIN * 2;
    let mut wire = Vec::new();
    for fill in [1u8, 2, 3] {
        wire.extend_from_slice(&(size as i32).to_be_bytes());
        wire.extend(std::iter::repeat(fill).take(size));
    }
    let mut reader = futures_lite::io::Cursor::new(wire);
    let mut buffers = Buffers::default();
    futures_lite::future::block_on(async {
        let first = read_frame(&mut reader, size, "x", &mut buffers).await.unwrap().unwrap();
        let second = read_frame(&mut reader, size, "x", &mut buffers).await.unwrap().unwrap();
        // The first is still held: the second got a buffer of its own.
        assert_ne!(first.as_ptr(), second.as_ptr());
        assert!(first.iter().all(|&b| b == 1) && first.len() == size);
        let reused = second.as_ptr();
        // A slice of the frame (as a decoded response keeps) holds it too.
        let records = second.slice(10..20);
        drop(second);
        assert!(buffers.take(size).as_ptr() != reused, "still held by a slice");
        drop(records);
        let third = read_frame(&mut reader, size, "x", &mut buffers).await.unwrap().unwrap();
        assert_eq!(third.as_ptr(), reused, "the dropped frame's buffer is read into");
        assert_eq!(third.len(), size);
        assert!(third.iter().all(|&b| b == 3));
        assert!(first.iter().all(|&b| b == 1), "a held frame is never overwritten");
    });
}

fn served(key: ApiKey, min: i16, max: i16) -> ApiVersion {
    ApiVersion::default().with_api_key(key as i16).with_min_version(min).with_max_version(max)
}

async fn fake_broker(listener: TcpListener, mode: Mode) {
    let stream = listener.accept().await.unwrap();
    let (reader, mut writer) = futures_lite::io::split(stream);
    let mut reader = BufReader::new(reader);
    let mut buffers = Buffers::default();
    while let Ok(Some(frame)) = read_frame(&mut reader, 16 << 20, "client", &mut buffers).await {
        let api = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]])).unwrap();
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let request = decode_header(api, version, frame).unwrap();
        let correlation_id = request.header.correlation_id;
        let answer = match api {
            ApiKey::ApiVersions => {
                let mut response = ApiVersionsResponse::default();
                response.api_keys = vec![
                    served(ApiKey::ApiVersions, 0, 3),
                    served(ApiKey::Metadata, 1, 9),
                    served(ApiKey::Produce, 3, 12),
                ];
                let version = if mode == Mode::OldApiVersions {
                    response.error_code = UNSUPPORTED_VERSION;
                    0
                } else {
                    version
                };
                encode_response(api, version, correlation_id, &response).unwrap()
            }
            _ if mode == Mode::CloseAfterRead => return,
            ApiKey::Metadata => {
                glommio::timer::sleep(Duration::from_millis(2)).await;
                let mut response = MetadataResponse::default();
                // The correlation id goes into the body too, so the client's decoded
                // answer shows which request it belongs to.
                response.throttle_time_ms = correlation_id;
                let sent_id = if mode == Mode::WrongCorrelationId {
                    correlation_id + 100
                } else {
                    correlation_id
                };
                encode_response(api, version, sent_id, &response).unwrap()
            }
            ApiKey::Produce => {
                let produce: ProduceRequest = decode_body(api, version, &request.body).unwrap();
                let mut response = ProduceResponse::default();
                for topic in &produce.topic_data {
                    let mut answer = TopicProduceResponse::default();
                    answer.name = topic.name.clone();
                    for partition in &topic.partition_data {
                        let mut p = PartitionProduceResponse::default();
                        p.index = partition.index;
                        // Echo the records' size and first byte as the offset.
                        let records = partition.records.clone().unwrap_or_default();
                        p.base_offset = records.len() as i64 * 1000
                            + i64::from(records.first().copied().unwrap_or(0));
                        answer.partition_responses.push(p);
                    }
                    response.responses.push(answer);
                }
                if produce.acks == 0 {
                    continue;
                }
                encode_response(api, version, correlation_id, &response).unwrap()
            }
            other => panic!("fake broker got {other:?}"),
        };
        if writer.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Runs `test` against a fake broker in `mode`, on one executor.
fn with_broker<F, Fut>(mode: Mode, options: ConnectionOptions, test: F)
where
    F: FnOnce(Connection) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    sluice_engine::runtime::run_local(async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let broker = glommio::spawn_local(fake_broker(listener, mode));
        let connection = Connection::connect(&address, options).await.unwrap();
        test(connection).await;
        drop(broker);
    });
}

#[test]
fn pipelined_answers_match_their_requests_and_in_flight_is_bounded() {
    let options = ConnectionOptions { in_flight_max: 3, ..ConnectionOptions::default() };
    with_broker(Mode::InOrder, options, |mut connection| async move {
        let version = connection.version::<MetadataRequest>().unwrap();
        assert_eq!(version, 9, "min(ours, broker's) max version");
        let mut futures = Vec::new();
        let mut in_flight_max_seen = 0;
        for _ in 0..10 {
            let future = connection.send(version, &MetadataRequest::default()).await.unwrap();
            in_flight_max_seen = in_flight_max_seen.max(connection.in_flight());
            futures.push(future);
        }
        assert_eq!(in_flight_max_seen, 3);
        let mut answers = Vec::new();
        for future in futures {
            answers.push(future.await.unwrap().throttle_time_ms);
        }
        // ApiVersions took correlation id 1.
        assert_eq!(answers, (2..12).collect::<Vec<i32>>());
        assert_eq!(connection.in_flight(), 0);
        assert!(connection.bytes_read() > 0);
        assert!(connection.bytes_written() > 0);
    });
}

#[test]
fn api_versions_v0_fallback_is_understood() {
    with_broker(Mode::OldApiVersions, ConnectionOptions::default(), |mut connection| async move {
        assert_eq!(connection.versions().broker(ApiKey::Produce as i16), Some((3, 12)));
        let response = connection.metadata(None, false).await.unwrap();
        assert_eq!(response.throttle_time_ms, 2);
        let error = connection.version::<FetchRequest>().unwrap_err();
        assert!(matches!(error, ClientError::ApiNotServed { api_key: 1, .. }), "{error}");
    });
}

#[test]
fn a_wrong_correlation_id_breaks_the_connection() {
    with_broker(
        Mode::WrongCorrelationId,
        ConnectionOptions::default(),
        |mut connection| async move {
            let error = connection.metadata(None, false).await.unwrap_err();
            assert!(
                matches!(
                    error,
                    ClientError::CorrelationMismatch { expected: 2, received: 102, .. }
                ),
                "{error}"
            );
            let error = connection.metadata(None, false).await.unwrap_err();
            assert!(matches!(error, ClientError::Broken { .. }), "{error}");
        },
    );
}

#[test]
fn a_closed_connection_fails_pending_requests() {
    with_broker(Mode::CloseAfterRead, ConnectionOptions::default(), |mut connection| async move {
        let version = connection.version::<MetadataRequest>().unwrap();
        let first = connection.send(version, &MetadataRequest::default()).await.unwrap();
        let error = first.await.unwrap_err();
        assert!(
            matches!(&error, ClientError::Broken { reason, .. } if reason.contains("closed")),
            "{error}"
        );
        assert_eq!(connection.in_flight(), 0);
    });
}

#[test]
fn produce_requests_carry_spliced_and_copied_batches() {
    // Splice batches of 1 KiB and more; copy smaller ones.
    let options =
        ConnectionOptions { produce_splice_bytes_min: 1024, ..ConnectionOptions::default() };
    with_broker(Mode::InOrder, options, |mut connection| async move {
        let large = vec![7u8; 5000];
        let small = vec![9u8; 10];
        let partitions = [
            ProducePartition { partition: 0, records: &large },
            ProducePartition { partition: 1, records: &small },
        ];
        let topics = [ProduceTopic { name: "t", partitions: &partitions }];
        for version in [3, 8, 9, 12] {
            let spec =
                ProduceSpec { acks: 1, timeout_ms: 1000, transactional_id: None, topics: &topics };
            let response = connection.send_produce(version, &spec).await.unwrap().unwrap();
            let response = response.await.unwrap();
            let offsets: Vec<i64> =
                response.responses[0].partition_responses.iter().map(|p| p.base_offset).collect();
            assert_eq!(offsets, vec![5_000_007, 10_009], "v{version}");
            // acks=0: no answer expected, none waited for; the next request still
            // gets its own answer.
            let spec = ProduceSpec { acks: 0, ..spec };
            let written = connection.bytes_written();
            assert!(connection.send_produce(version, &spec).await.unwrap().is_none());
            assert!(connection.bytes_written() >= written + 5010, "both batches were written");
            assert_eq!(connection.in_flight(), 0);
        }
        let response = connection.metadata(None, false).await.unwrap();
        assert_eq!(response.throttle_time_ms, 10, "correlation ids 2..=9 went to Produce");
    });
}
