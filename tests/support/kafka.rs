//! Produce and consume with real clients: librdkafka (the `rdkafka` crate), kafka-python
//! (a script run by python3), and the raw protocol client for long-poll timing and bad
//! input.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiVersionsRequest, CreateTopicsRequest, FetchRequest, FetchResponse, ListOffsetsRequest,
    MetadataRequest, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_engine::batch::{encode_batch, EncodeOptions, Record};

use crate::harness::{produce_request, Broker, Raw};

// ---- helpers ----

/// CRC-32 (IEEE), as librdkafka's default `consistent_random` partitioner hashes keys.
fn crc32_ieee(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[derive(Default)]
pub(crate) struct Reports {
    pub(crate) delivered: Mutex<Vec<(usize, i32, i64)>>,
    pub(crate) failed: Mutex<Vec<String>>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<usize>) {
        match result {
            Ok(message) => {
                self.delivered.lock().unwrap().push((*id, message.partition(), message.offset()))
            }
            Err((error, _)) => self.failed.lock().unwrap().push(error.to_string()),
        }
    }
}

fn producer(address: &str, acks: &str) -> BaseProducer<Reports> {
    ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("acks", acks)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "60000")
        .set("enable.idempotence", "false")
        .create_with_context(Reports::default())
        .unwrap()
}

pub(crate) struct LogToStderr;
impl ClientContext for LogToStderr {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        eprintln!("librdkafka {level:?} {fac}: {log_message}");
    }
}
impl rdkafka::consumer::ConsumerContext for LogToStderr {}

pub(crate) fn consumer(address: &str) -> BaseConsumer<LogToStderr> {
    ClientConfig::new()
        .set("bootstrap.servers", address)
        // librdkafka wants a group id even for assign(); no group protocol is used
        // (no subscribe, no commits).
        .set("group.id", "sluice-test-assign")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .create_with_context(LogToStderr)
        .unwrap()
}

fn value_of(tag: &str, id: usize) -> String {
    format!("{tag}-{id:08}-{}", "x".repeat(64))
}

/// Sends `record`, polling (serving delivery reports) while librdkafka's queue is full.
pub(crate) fn send_waiting<C, K, P>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) where
    C: ProducerContext,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, returned)) => {
                record = returned;
                producer.poll(Duration::from_millis(10));
            }
        }
    }
}

/// Produces `count` keyed messages and waits for every delivery report.
fn produce_keyed(address: &str, topic: &str, acks: &str, count: usize, tag: &str) -> Reports {
    let producer = producer(address, acks);
    for id in 0..count {
        let key = format!("key-{}", id % 1000);
        let value = value_of(tag, id);
        send_waiting(
            &producer,
            BaseRecord::with_opaque_to(topic, Box::new(id)).key(&key).payload(&value),
        );
        if id % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let reports = std::mem::take(producer.context().delivered.lock().unwrap().as_mut());
    let failed = std::mem::take(producer.context().failed.lock().unwrap().as_mut());
    Reports { delivered: Mutex::new(reports), failed: Mutex::new(failed) }
}

/// Consumes partitions `0..partitions` of `topic` from the beginning until `count`
/// messages arrived; returns (partition, offset, key, value) in arrival order.
fn consume_all(
    address: &str,
    topic: &str,
    partitions: i32,
    count: usize,
) -> Vec<(i32, i64, String, String)> {
    let consumer = consumer(address);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut out = Vec::with_capacity(count);
    let mut errors = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while out.len() < count {
        assert!(Instant::now() < deadline, "consumed {} of {count}", out.len());
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => out.push((
                message.partition(),
                message.offset(),
                String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
                String::from_utf8(message.payload().unwrap().to_vec()).unwrap(),
            )),
            Some(Err(error)) => {
                // Transient (a broker restarting): librdkafka reconnects by itself.
                eprintln!("consumer error (retrying): {error}");
                errors += 1;
                assert!(errors < 50, "too many consumer errors, last: {error}");
            }
            None => {}
        }
    }
    // Nothing more than what was produced.
    if let Some(Ok(extra)) = consumer.poll(Duration::from_millis(500)) {
        panic!("unexpected extra message at {}:{}", extra.partition(), extra.offset());
    }
    out
}

/// Checks consumed messages against what was produced: every id once, in its partition,
/// per-partition offsets dense from `first_offset`, ids increasing within a partition.
fn check_consumed(
    consumed: &[(i32, i64, String, String)],
    tag: &str,
    count: usize,
    partitions: i32,
    reported: Option<&[(usize, i32, i64)]>,
) {
    assert_eq!(consumed.len(), count);
    let mut by_partition: BTreeMap<i32, Vec<(i64, usize)>> = BTreeMap::new();
    let mut seen = vec![false; count];
    for (partition, offset, key, value) in consumed {
        let id: usize = value[tag.len() + 1..tag.len() + 9].parse().unwrap();
        assert_eq!(value, &value_of(tag, id), "content of message {id}");
        assert_eq!(key, &format!("key-{}", id % 1000), "key of message {id}");
        let expected = (crc32_ieee(key.as_bytes()) % partitions as u32) as i32;
        assert_eq!(*partition, expected, "message {id} is on the partition its key hashes to");
        assert!(!seen[id], "message {id} consumed twice");
        seen[id] = true;
        by_partition.entry(*partition).or_default().push((*offset, id));
    }
    for (partition, entries) in &by_partition {
        for (i, (offset, _)) in entries.iter().enumerate() {
            assert_eq!(*offset, i as i64, "offsets of partition {partition} are dense from 0");
        }
        assert!(entries.windows(2).all(|w| w[0].1 < w[1].1), "order within partition {partition}");
    }
    if let Some(reported) = reported {
        let consumed_at: BTreeMap<usize, (i32, i64)> = by_partition
            .iter()
            .flat_map(|(p, entries)| entries.iter().map(move |(o, id)| (*id, (*p, *o))))
            .collect();
        assert_eq!(reported.len(), count);
        for (id, partition, offset) in reported {
            assert_eq!(consumed_at[id], (*partition, *offset), "delivery report of message {id}");
        }
    }
}

pub(crate) fn batch(values: &[&str]) -> Vec<u8> {
    let records: Vec<Record> = values
        .iter()
        .map(|v| Record { key: None, value: Some(v.as_bytes().to_vec()), timestamp: 1_000 })
        .collect();
    encode_batch(&records, EncodeOptions::default())
}

/// Every record of `topic`-`partition` from offset 0 on, as (offset, value), by Fetch v12
/// from where the last whole batch ended (an answer may end with part of a batch, as
/// Kafka's may); asserts that fetches succeed and offsets are dense.
pub(crate) fn fetch_records(
    raw: &mut crate::harness::Raw,
    topic: &str,
    partition: i32,
) -> Vec<(i64, Vec<u8>)> {
    let mut records = Vec::new();
    let mut offset = 0;
    loop {
        let response = raw.send(&fetch_request(topic, &[(partition, offset)], 0), 12);
        let answer = &response.responses[0].partitions[0];
        assert_eq!(answer.error_code, 0, "fetch {topic}-{partition} at {offset}");
        let mut bytes = answer.records.clone().unwrap_or_default();
        let mut whole = 0;
        while bytes.len() >= whole + 12 {
            let length = i32::from_be_bytes(bytes[whole + 8..whole + 12].try_into().unwrap());
            let end = whole + 12 + usize::try_from(length).unwrap();
            if end > bytes.len() {
                break;
            }
            whole = end;
        }
        if whole == 0 {
            return records;
        }
        let mut bytes = bytes.split_to(whole);
        for set in kafka_protocol::records::RecordBatchDecoder::decode_all(&mut bytes).unwrap() {
            for record in set.records {
                assert_eq!(record.offset, offset, "{topic}-{partition}: offsets are dense");
                offset += 1;
                records.push((record.offset, record.value.unwrap_or_default().to_vec()));
            }
        }
    }
}

/// A Fetch (v4+) of `partitions` (index, offset) of `topic`: 1 MiB per partition, 50 MiB
/// in all, at least one byte, waiting up to `max_wait_ms`.
pub(crate) fn fetch_request(
    topic: &str,
    partitions: &[(i32, i64)],
    max_wait_ms: i32,
) -> FetchRequest {
    let mut fetch_topic = FetchTopic::default();
    fetch_topic.topic = TopicName(StrBytes::from_string(topic.to_string()));
    fetch_topic.partitions = partitions
        .iter()
        .map(|(partition, offset)| {
            let mut p = FetchPartition::default();
            p.partition = *partition;
            p.fetch_offset = *offset;
            p.partition_max_bytes = 1 << 20;
            p.current_leader_epoch = -1;
            p.log_start_offset = -1;
            p
        })
        .collect();
    let mut request = FetchRequest::default();
    request.replica_id = kafka_protocol::messages::BrokerId(-1);
    request.max_wait_ms = max_wait_ms;
    request.min_bytes = 1;
    request.max_bytes = 50 << 20;
    request.session_epoch = -1;
    request.topics = vec![fetch_topic];
    request
}

pub(crate) fn latest_offset(raw: &mut Raw, topic: &str, partition: i32) -> i64 {
    let mut p = ListOffsetsPartition::default();
    p.partition_index = partition;
    p.timestamp = -1;
    p.current_leader_epoch = -1;
    let mut t = ListOffsetsTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partitions = vec![p];
    let mut request = ListOffsetsRequest::default();
    request.replica_id = kafka_protocol::messages::BrokerId(-1);
    request.topics = vec![t];
    let response = raw.send(&request, 7);
    assert_eq!(response.topics[0].partitions[0].error_code, 0);
    response.topics[0].partitions[0].offset
}

fn fetched_records(response: &FetchResponse) -> usize {
    response
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
        .sum()
}

/// A Metadata request for every topic (the default request asks for none).
fn all_topics() -> MetadataRequest {
    let mut request = MetadataRequest::default();
    request.topics = None;
    request
}

// ---- tests ----

/// 100k keyed messages over 6 partitions, once per acks setting: every message consumed
/// once, with its content, on the partition librdkafka's partitioner picks, in order, at
/// dense offsets that match the delivery reports.
#[test]
fn rdkafka_produces_and_consumes_100k_keyed_messages_with_each_acks() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--set", "num.partitions=6"]);
    let address = broker.address();
    const COUNT: usize = 100_000;
    for acks in ["all", "1", "0"] {
        let topic = format!("keyed-acks-{acks}");
        let reports = produce_keyed(&address, &topic, acks, COUNT, &topic);
        let failed = reports.failed.lock().unwrap().clone();
        assert!(
            failed.is_empty(),
            "acks={acks}: {} failed, first: {:?}",
            failed.len(),
            failed.first()
        );
        let delivered = reports.delivered.lock().unwrap().clone();
        assert_eq!(delivered.len(), COUNT);
        let consumed = consume_all(&address, &topic, 6, COUNT);
        // With acks=0 the delivery reports carry no offsets.
        let reported = if acks == "0" { None } else { Some(delivered.as_slice()) };
        let checked = std::panic::catch_unwind(|| {
            check_consumed(&consumed, &topic, COUNT, 6, reported);
        });
        if let Err(panic) = checked {
            let log = broker.log();
            let notable: Vec<&str> =
                log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
            eprintln!("acks={acks}: broker warnings and errors:\n{}", notable.join("\n"));
            std::panic::resume_unwind(panic);
        }
    }
}

/// Acknowledged messages (acks=all) survive a clean restart and a SIGKILL; topics come
/// back with their ids and partition counts; producing after the restart continues at the
/// next offsets.
#[test]
fn acknowledged_messages_and_topics_survive_restart_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let address = broker.address();
    let mut raw = Raw::connect(&address);
    raw.create_topic("durable", 4, &[("retention.ms", "86400000")]);
    drop(raw);
    let count = 20_000;
    let reports = produce_keyed(&address, "durable", "all", count, "durable");
    assert!(reports.failed.lock().unwrap().is_empty());
    let topic_id = {
        let mut raw = Raw::connect(&address);
        let response = raw.send(&all_topics(), 12);
        response
            .topics
            .iter()
            .find(|t| t.name.as_ref().unwrap().0.as_str() == "durable")
            .unwrap()
            .topic_id
    };

    assert!(broker.stop().success(), "clean stop:\n{}", broker.log());
    broker.restart();
    let consumed = consume_all(&address, "durable", 4, count);
    check_consumed(&consumed, "durable", count, 4, None);

    broker.kill();
    broker.restart();
    let consumed = consume_all(&address, "durable", 4, count);
    check_consumed(&consumed, "durable", count, 4, None);
    let mut raw = Raw::connect(&address);
    let response = raw.send(&all_topics(), 12);
    let topic =
        response.topics.iter().find(|t| t.name.as_ref().unwrap().0.as_str() == "durable").unwrap();
    assert_eq!(topic.topic_id, topic_id);
    assert_eq!(topic.partitions.len(), 4);

    // Appends continue after what was there.
    let before = latest_offset(&mut raw, "durable", 0);
    let response = raw.produce("durable", 0, batch(&["after-restart"]));
    assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(response.responses[0].partition_responses[0].base_offset, before);
    assert_eq!(latest_offset(&mut raw, "durable", 0), before + 1);
}

/// A fetch on empty partitions waits (long poll) and is answered as soon as a record is
/// produced to either partition, whichever shard owns it; a fetch nobody feeds returns
/// after max_wait_ms, not before.
#[test]
fn long_poll_fetch_wakes_on_produce_and_idle_fetch_waits_max_wait() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let address = broker.address();
    let mut producer = Raw::connect(&address);
    producer.create_topic("poll", 2, &[]);

    for partition in [0, 1] {
        let end0 = latest_offset(&mut producer, "poll", 0);
        let end1 = latest_offset(&mut producer, "poll", 1);
        let mut fetcher = Raw::connect(&address);
        let request = fetch_request("poll", &[(0, end0), (1, end1)], 10_000);
        let frame = fetcher.frame(&request, 12);
        let started = Instant::now();
        std::io::Write::write_all(&mut fetcher.stream, &frame).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let response = producer.produce("poll", partition, batch(&["wake up"]));
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
        let produced_at = started.elapsed();
        let fetched = fetcher.receive::<FetchRequest>(12);
        let fetched_at = started.elapsed();
        assert!(fetched_records(&fetched) > 0, "the fetch returned the new record");
        assert!(fetched_at >= Duration::from_millis(290), "the fetch waited: {fetched_at:?}");
        assert!(
            fetched_at < produced_at + Duration::from_millis(100),
            "the fetch answered within 100 ms of the produce (partition {partition}): produced at {produced_at:?}, fetched at {fetched_at:?}"
        );
    }

    let mut idle = Raw::connect(&address);
    let end0 = latest_offset(&mut producer, "poll", 0);
    let end1 = latest_offset(&mut producer, "poll", 1);
    let started = Instant::now();
    let response = idle.send(&fetch_request("poll", &[(0, end0), (1, end1)], 400), 12);
    let waited = started.elapsed();
    assert_eq!(fetched_records(&response), 0);
    assert!(waited >= Duration::from_millis(400), "idle fetch returned early: {waited:?}");
    assert!(waited < Duration::from_millis(900), "idle fetch returned late: {waited:?}");
}

/// Garbage, truncated and oversized frames, unknown APIs and versions, corrupt and
/// oversized batches: each gets an error code or a closed connection, the broker keeps
/// serving other connections, and acknowledged data is intact.
#[test]
fn bad_input_gets_errors_or_closed_connections_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker =
        Broker::start(&dir.path().join("data"), &["--set", "socket.request.max.bytes=1048576"]);
    let address = broker.address();
    let mut raw = Raw::connect(&address);
    raw.create_topic("guarded", 1, &[("max.message.bytes", "1000")]);
    let response = raw.produce("guarded", 0, batch(&["kept-1", "kept-2"]));
    assert_eq!(response.responses[0].partition_responses[0].error_code, 0);

    let closes = |bytes: &[u8], what: &str| {
        let mut raw = Raw::connect(&address);
        std::io::Write::write_all(&mut raw.stream, bytes).unwrap();
        assert!(raw.is_closed_by_peer(), "{what}: connection should be closed");
    };
    let frame = |body: &[u8]| {
        let mut out = (body.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    };
    closes(&frame(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8]), "garbage");
    closes(&(200i32 << 20).to_be_bytes(), "frame over socket.request.max.bytes");
    closes(&(-5i32).to_be_bytes(), "negative frame size");
    closes(&frame(&[0x03, 0xe8, 0, 0, 0, 0, 0, 1, 0xff, 0xff]), "unknown API key 1000");
    closes(&frame(&[0, 0, 0, 99, 0, 0, 0, 1, 0xff, 0xff]), "Produce v99");
    // A valid Metadata v1 header followed by a body that does not parse.
    closes(&frame(&[0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff]), "malformed body");
    {
        // Truncated frame: the size says 100, 10 bytes come, then the client hangs up.
        let mut truncated = 100i32.to_be_bytes().to_vec();
        truncated.extend_from_slice(&[0u8; 10]);
        let mut raw = Raw::connect(&address);
        std::io::Write::write_all(&mut raw.stream, &truncated).unwrap();
        raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(raw.is_closed_by_peer(), "truncated frame");
    }

    // ApiVersions with a version from the future: a v0 answer, UNSUPPORTED_VERSION.
    let mut raw = Raw::connect(&address);
    let frame_v9 = raw.frame(&ApiVersionsRequest::default(), 3);
    let mut patched = frame_v9.clone();
    patched[6..8].copy_from_slice(&9i16.to_be_bytes());
    std::io::Write::write_all(&mut raw.stream, &patched).unwrap();
    let answer = raw.read_frame().unwrap();
    assert_eq!(i16::from_be_bytes(answer[4..6].try_into().unwrap()), 35, "UNSUPPORTED_VERSION");

    // A batch with a flipped byte: CORRUPT_MESSAGE, nothing appended.
    let mut corrupt = batch(&["bad"]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let mut raw = Raw::connect(&address);
    let response = raw.produce("guarded", 0, corrupt);
    assert_eq!(response.responses[0].partition_responses[0].error_code, 2, "CORRUPT_MESSAGE");
    // Over the topic's max.message.bytes: MESSAGE_TOO_LARGE.
    let big = "y".repeat(2000);
    let response = raw.produce("guarded", 0, batch(&[&big]));
    assert_eq!(response.responses[0].partition_responses[0].error_code, 10, "MESSAGE_TOO_LARGE");
    // Unknown topic (no auto-create on produce).
    let response = raw.produce("no-such-topic", 0, batch(&["x"]));
    assert_eq!(response.responses[0].partition_responses[0].error_code, 3);
    // Partition past the topic's count.
    let response = raw.produce("guarded", 5, batch(&["x"]));
    assert_eq!(response.responses[0].partition_responses[0].error_code, 3);

    assert!(broker.is_running(), "the broker survived:\n{}", broker.log());
    assert_eq!(latest_offset(&mut raw, "guarded", 0), 2, "only the good batch is in the log");
    let response = raw.send(&fetch_request("guarded", &[(0, 0)], 0), 12);
    let records = response.responses[0].partitions[0].records.clone().unwrap();
    let text = String::from_utf8_lossy(&records);
    assert!(text.contains("kept-1") && text.contains("kept-2"));
    assert!(!broker.log().contains("panicked"), "no panic:\n{}", broker.log());
}

/// kafka-python, an independent client: admin create, produce with acks=all, consume by
/// assignment, offsets and content checked by the script.
#[test]
fn kafka_python_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    crate::harness::run_python(&broker, "kafka_python.py", &[], "kafka-python round trip ok");
}

/// Pipelined requests on one connection are answered in the order they were sent, even
/// when the first one is a fetch that waits and the later ones could answer at once.
#[test]
fn pipelined_responses_leave_in_request_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("ordered", 2, &[]);
    let mut frames = Vec::new();
    frames.extend(raw.frame(&fetch_request("ordered", &[(0, 0), (1, 0)], 300), 12));
    frames.extend(raw.frame(&ApiVersionsRequest::default(), 3));
    frames.extend(raw.frame(&all_topics(), 12));
    let started = Instant::now();
    std::io::Write::write_all(&mut raw.stream, &frames).unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let frame = raw.read_frame().unwrap();
        ids.push(i32::from_be_bytes(frame[..4].try_into().unwrap()));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "correlation ids in order: {ids:?}");
    assert!(started.elapsed() >= Duration::from_millis(300), "the fetch waited first");

    // A response that is next in line when its handler finishes is sent by the handler's
    // own task; the others wait for the writer. Mix both, with an acks=0 produce (no
    // response) among them: answers to everything but the acks=0 request, in order, and
    // the acks=0 batch appended before the acks=all one that follows it.
    let mut fire_and_forget = produce_request("ordered", 0, batch(&["a"]));
    fire_and_forget.acks = 0;
    // (frame, whether it is answered)
    let requests = [
        (raw.frame(&ApiVersionsRequest::default(), 3), true),
        (raw.frame(&fire_and_forget, 9), false),
        (raw.frame(&all_topics(), 12), true),
        (raw.frame(&fetch_request("ordered", &[(1, 0)], 300), 12), true),
        (raw.frame(&ApiVersionsRequest::default(), 3), true),
        (raw.frame(&produce_request("ordered", 0, batch(&["b", "c"])), 9), true),
        (raw.frame(&all_topics(), 12), true),
    ];
    let mut frames = Vec::new();
    let mut expected = Vec::new();
    for (frame, answered) in requests {
        let id = i32::from_be_bytes(frame[8..12].try_into().unwrap());
        if answered {
            expected.push(id);
        }
        frames.extend(frame);
    }
    std::io::Write::write_all(&mut raw.stream, &frames).unwrap();
    let mut ids = Vec::new();
    let mut produced = None;
    for _ in 0..expected.len() {
        let frame = raw.read_frame().unwrap();
        let id = i32::from_be_bytes(frame[..4].try_into().unwrap());
        if id == expected[4] {
            use kafka_protocol::protocol::{Decodable, HeaderVersion};
            let mut body = Bytes::from(frame);
            let version = ProduceResponse::header_version(9);
            let header =
                kafka_protocol::messages::ResponseHeader::decode(&mut body, version).unwrap();
            assert_eq!(header.correlation_id, id);
            produced = Some(ProduceResponse::decode(&mut body, 9).unwrap());
        }
        ids.push(id);
    }
    assert_eq!(ids, expected, "every answered request, in order");
    let produced = produced.unwrap();
    let partition = &produced.responses[0].partition_responses[0];
    assert_eq!((partition.error_code, partition.base_offset), (0, 1), "after the acks=0 batch");
}

/// `max.connections.per.shard` closes connections over the limit at accept; the ones
/// within it keep working.
#[test]
fn connections_over_the_shard_limit_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &dir.path().join("data"),
        &["--cores", "1", "--set", "max.connections.per.shard=2"],
    );
    // The harness's readiness probe was a connection too; let the broker see it close.
    std::thread::sleep(Duration::from_millis(300));
    let mut first = Raw::connect(&broker.address());
    let mut second = Raw::connect(&broker.address());
    first.send(&ApiVersionsRequest::default(), 3);
    second.send(&ApiVersionsRequest::default(), 3);
    let mut third = Raw::connect(&broker.address());
    assert!(third.is_closed_by_peer(), "the third connection is over the limit");
    let response = first.send(&ApiVersionsRequest::default(), 3);
    assert_eq!(response.error_code, 0);
    assert!(broker.log().contains("max.connections.per.shard reached"));
}

fn list_offset_at(raw: &mut Raw, topic: &str, timestamp: i64, version: i16) -> (i16, i64, i64) {
    let mut p = ListOffsetsPartition::default();
    p.partition_index = 0;
    p.timestamp = timestamp;
    p.current_leader_epoch = -1;
    let mut t = ListOffsetsTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partitions = vec![p];
    let mut request = ListOffsetsRequest::default();
    request.replica_id = kafka_protocol::messages::BrokerId(-1);
    request.topics = vec![t];
    let response = raw.send(&request, version);
    let answer = &response.topics[0].partitions[0];
    (answer.error_code, answer.timestamp, answer.offset)
}

/// ListOffsets by timestamp answers the first offset whose timestamp is at or after the
/// target, in every served version; -1 past the newest; -2/-1/-3 earliest, latest, max.
#[test]
fn list_offsets_by_timestamp_finds_the_first_offset_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("times", 1, &[("segment.bytes", "1024")]);
    // 30 batches of 2 records, timestamps 10_000 + 100 * i (and + 50 for the second).
    for i in 0..30i64 {
        let records = vec![
            Record { key: None, value: Some(vec![b'a'; 40]), timestamp: 10_000 + 100 * i },
            Record { key: None, value: Some(vec![b'b'; 40]), timestamp: 10_050 + 100 * i },
        ];
        let response = raw.produce("times", 0, encode_batch(&records, EncodeOptions::default()));
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    }
    for version in 1..=10 {
        assert_eq!(list_offset_at(&mut raw, "times", 0, version).2, 0, "v{version}");
        // 10_050 is the second record of batch 0: offset 1.
        let (code, timestamp, offset) = list_offset_at(&mut raw, "times", 10_050, version);
        assert_eq!((code, timestamp, offset), (0, 10_050, 1), "v{version}");
        // Between records: the next one.
        assert_eq!(list_offset_at(&mut raw, "times", 11_020, version).2, 21, "v{version}");
        assert_eq!(list_offset_at(&mut raw, "times", 12_950, version).2, 59, "v{version}");
        assert_eq!(list_offset_at(&mut raw, "times", 99_999, version).2, -1, "v{version}");
        assert_eq!(list_offset_at(&mut raw, "times", -2, version).2, 0, "v{version}");
        assert_eq!(list_offset_at(&mut raw, "times", -1, version).2, 60, "v{version}");
        if version >= 7 {
            let (_, timestamp, offset) = list_offset_at(&mut raw, "times", -3, version);
            assert_eq!((timestamp, offset), (12_950, 59), "v{version}");
        }
    }
}

/// DeleteTopics removes the topic everywhere (metadata, partition directories, and its
/// checkpoint entries: a topic created again under the same name starts empty at offset
/// 0, also after a restart).
#[test]
fn deleted_topics_are_gone_and_can_be_created_again() {
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
    use kafka_protocol::messages::DeleteTopicsRequest;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("doomed", 2, &[]);
    for partition in 0..2 {
        raw.produce("doomed", partition, batch(&["one", "two", "three"]));
    }
    assert_eq!(latest_offset(&mut raw, "doomed", 1), 3);
    assert!(broker.stop().success());
    broker.restart();
    let mut raw = Raw::connect(&broker.address());

    for (version, name) in [(1i16, "doomed"), (6, "doomed")] {
        let mut request = DeleteTopicsRequest::default();
        request.timeout_ms = 30_000;
        if version >= 6 {
            let mut state = DeleteTopicState::default();
            state.name = Some(TopicName(StrBytes::from_string(name.to_string())));
            request.topics = vec![state];
        } else {
            request.topic_names = vec![TopicName(StrBytes::from_string(name.to_string()))];
        }
        let response = raw.send(&request, version);
        let expected = if version == 1 { 0 } else { 3 }; // The second time: unknown.
        assert_eq!(response.responses[0].error_code, expected, "v{version}");
    }
    let response = raw.send(&all_topics(), 12);
    assert!(response.topics.is_empty(), "no topics left");
    assert!(!data.join("doomed-0").exists() && !data.join("doomed-1").exists());

    raw.create_topic("doomed", 2, &[]);
    assert_eq!(latest_offset(&mut raw, "doomed", 1), 0, "a new topic starts empty");
    raw.produce("doomed", 1, batch(&["new"]));
    assert!(broker.stop().success());
    broker.restart();
    let mut raw = Raw::connect(&broker.address());
    assert_eq!(latest_offset(&mut raw, "doomed", 1), 1);
    let response = raw.send(&fetch_request("doomed", &[(1, 0)], 0), 12);
    let records = response.responses[0].partitions[0].records.clone().unwrap();
    assert!(String::from_utf8_lossy(&records).contains("new"));
    assert!(!String::from_utf8_lossy(&records).contains("three"));
}

/// Every advertised version of the data-path and topic APIs encodes and answers:
/// ApiVersions 0-4, CreateTopics 2-7, Metadata 0-12, Produce 3-12, Fetch 4-12,
/// DeleteTopics 1-6 (ListOffsets 1-10 and the admin APIs have their own tests).
#[test]
fn every_advertised_version_of_the_data_apis_answers() {
    use kafka_protocol::messages::DeleteTopicsRequest;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    for version in 0..=4 {
        let response = raw.send(&ApiVersionsRequest::default(), version);
        assert_eq!(response.error_code, 0, "ApiVersions v{version}");
        assert!(response.api_keys.iter().any(|k| k.api_key == 0 && k.max_version == 12));
    }
    for version in 2..=7i16 {
        let mut topic = CreatableTopic::default();
        topic.name = TopicName(StrBytes::from_string(format!("versions-{version}")));
        topic.num_partitions = 2;
        topic.replication_factor = 1;
        let mut request = CreateTopicsRequest::default();
        request.topics = vec![topic];
        request.timeout_ms = 30_000;
        let response = raw.send(&request, version);
        assert_eq!(response.topics[0].error_code, 0, "CreateTopics v{version}");
        if version >= 5 {
            assert_eq!(response.topics[0].num_partitions, 2);
        }
    }
    for version in 0..=12i16 {
        let mut request = MetadataRequest::default();
        request.topics = if version == 0 { Some(Vec::new()) } else { None };
        let response = raw.send(&request, version);
        assert_eq!(response.topics.len(), 6, "Metadata v{version}");
        assert!(response.topics.iter().all(|t| t.partitions.len() == 2 && t.error_code == 0));
        assert_eq!(response.brokers[0].port, broker.port as i32);
    }
    for version in 3..=12i16 {
        let value = format!("produced with v{version}");
        let mut data = PartitionProduceData::default();
        data.index = 1;
        data.records = Some(Bytes::from(batch(&[&value])));
        let mut topic_data = TopicProduceData::default();
        topic_data.name = TopicName(StrBytes::from_static_str("versions-2"));
        topic_data.partition_data = vec![data];
        let mut request = ProduceRequest::default();
        request.acks = 1;
        request.timeout_ms = 30_000;
        request.topic_data = vec![topic_data];
        let response = raw.send(&request, version);
        let answer = &response.responses[0].partition_responses[0];
        assert_eq!(answer.error_code, 0, "Produce v{version}");
        assert_eq!(answer.base_offset, i64::from(version - 3), "Produce v{version}");
    }
    for version in 4..=12i16 {
        let response = raw.send(&fetch_request("versions-2", &[(1, 0)], 0), version);
        let partition = &response.responses[0].partitions[0];
        assert_eq!(partition.error_code, 0, "Fetch v{version}");
        assert_eq!(partition.high_watermark, 10);
        let records = partition.records.clone().unwrap();
        for produced in 3..=12 {
            let value = format!("produced with v{produced}");
            assert!(
                records.windows(value.len()).any(|w| w == value.as_bytes()),
                "Fetch v{version} returns {value}"
            );
        }
    }
    for version in 1..=6i16 {
        let name = TopicName(StrBytes::from_string(format!("versions-{}", version + 1)));
        let mut request = DeleteTopicsRequest::default();
        request.timeout_ms = 30_000;
        if version >= 6 {
            let mut state =
                kafka_protocol::messages::delete_topics_request::DeleteTopicState::default();
            state.name = Some(name);
            request.topics = vec![state];
        } else {
            request.topic_names = vec![name];
        }
        let response = raw.send(&request, version);
        assert_eq!(response.responses[0].error_code, 0, "DeleteTopics v{version}");
    }
    assert!(raw.send(&all_topics(), 12).topics.is_empty());
}

/// SIGKILL in the middle of a stream of acks=all produces, in both I/O modes: after the
/// restart, every acknowledged batch is there at the offset its acknowledgement gave,
/// with its content; batches after the last acknowledged one may or may not be.
#[test]
fn sigkill_mid_stream_loses_no_acknowledged_batch() {
    for io in ["buffered", "direct"] {
        sigkill_mid_stream(io);
    }
}

fn sigkill_mid_stream(io: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &["--io", io]);
    let address = broker.address();
    let mut raw = Raw::connect(&address);
    raw.create_topic("crash", 1, &[("segment.bytes", "65536")]);
    let acked = std::sync::Arc::new(Mutex::new(Vec::<(i64, String)>::new()));
    let writer = {
        let acked = acked.clone();
        let address = address.clone();
        std::thread::spawn(move || {
            let mut raw = Raw::connect(&address);
            for i in 0.. {
                let value = format!("crash-{i:06}-{}", "z".repeat(200));
                let frame = raw.frame(&produce_request("crash", 0, batch(&[&value])), 9);
                if std::io::Write::write_all(&mut raw.stream, &frame).is_err() {
                    break;
                }
                let Ok(frame) = raw.read_frame() else { break };
                let mut body = Bytes::from(frame);
                let header_version =
                    <ProduceResponse as kafka_protocol::protocol::HeaderVersion>::header_version(9);
                let _header = <kafka_protocol::messages::ResponseHeader as kafka_protocol::protocol::Decodable>::decode(&mut body, header_version).unwrap();
                let response =
                    <ProduceResponse as kafka_protocol::protocol::Decodable>::decode(&mut body, 9)
                        .unwrap();
                let answer = &response.responses[0].partition_responses[0];
                assert_eq!(answer.error_code, 0);
                acked.lock().unwrap().push((answer.base_offset, value));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    broker.kill();
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "{io}: the writer got going: {} acks", acked.len());

    broker.restart();
    let mut raw = Raw::connect(&address);
    let end = latest_offset(&mut raw, "crash", 0);
    assert!(end >= acked.len() as i64, "log end {end} covers {} acks", acked.len());
    let mut next = 0i64;
    let mut found = Vec::new();
    while next < acked.len() as i64 {
        let response = raw.send(&fetch_request("crash", &[(0, next)], 0), 12);
        let records = response.responses[0].partitions[0].records.clone().unwrap();
        let mut rest = &records[..];
        let mut progressed = false;
        while let Ok((batch, tail)) = sluice_engine::batch::Batch::parse(rest) {
            batch.validate(1 << 20).unwrap();
            if batch.base_offset() >= next {
                let text = String::from_utf8_lossy(batch.records_bytes()).into_owned();
                found.push((batch.base_offset(), text));
                next = batch.last_offset() + 1;
                progressed = true;
            }
            rest = tail;
        }
        assert!(progressed, "fetch at {next} made progress");
    }
    for (offset, value) in &acked {
        let (at, text) = &found[*offset as usize];
        assert_eq!(at, offset);
        assert!(text.contains(value.as_str()), "{io}: acknowledged batch at {offset} is intact");
    }
}
