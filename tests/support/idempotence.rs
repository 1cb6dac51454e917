//! Idempotent producers: InitProducerId, sequence checks, duplicates answered with their
//! original offsets and never written twice, with a raw client and with librdkafka.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProduceResponse};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_engine::batch::{encode_batch, EncodeOptions, Record};

use crate::harness::{produce_request, Broker, Raw};
use crate::kafka::send_waiting;

const NONE: i16 = 0;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const UNKNOWN_PRODUCER_ID: i16 = 59;
const INVALID_TRANSACTION_TIMEOUT: i16 = 50;

fn init_producer_id(raw: &mut Raw, version: i16) -> (i64, i16) {
    let mut request = InitProducerIdRequest::default();
    request.transactional_id = None;
    request.transaction_timeout_ms = 60_000;
    let response: InitProducerIdResponse = raw.send(&request, version);
    assert_eq!(response.error_code, NONE, "InitProducerId v{version}");
    (response.producer_id.0, response.producer_epoch)
}

fn idempotent_batch(producer_id: i64, epoch: i16, sequence: i32, values: &[&str]) -> Vec<u8> {
    let records: Vec<Record> = values
        .iter()
        .map(|v| Record { key: None, value: Some(v.as_bytes().to_vec()), timestamp: 1_000 })
        .collect();
    let options = EncodeOptions {
        producer_id,
        producer_epoch: epoch,
        base_sequence: sequence,
        ..EncodeOptions::default()
    };
    encode_batch(&records, options)
}

fn produced(response: &ProduceResponse) -> (i16, i64) {
    let partition = &response.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

/// A replayed Produce request (a client's retry after a lost answer) is answered with the
/// original offsets and written once; gaps, old epochs and unknown producers are refused.
#[test]
fn duplicate_batches_are_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("idem", 1, &[]);
    let mut ids = Vec::new();
    for version in 0..=5 {
        ids.push(init_producer_id(&mut raw, version));
    }
    assert!(ids.iter().all(|(_, epoch)| *epoch == 0));
    let distinct: std::collections::BTreeSet<i64> = ids.iter().map(|(id, _)| *id).collect();
    assert_eq!(distinct.len(), ids.len(), "producer ids are unique: {ids:?}");
    let (pid, epoch) = ids[0];

    let first = produce_request("idem", 0, idempotent_batch(pid, epoch, 0, &["a", "b", "c"]));
    assert_eq!(produced(&raw.send(&first, 9)), (NONE, 0));
    // The same request again: the original offset, nothing written.
    assert_eq!(produced(&raw.send(&first, 9)), (NONE, 0));
    let next = produce_request("idem", 0, idempotent_batch(pid, epoch, 3, &["d"]));
    assert_eq!(produced(&raw.send(&next, 9)), (NONE, 3));
    assert_eq!(produced(&raw.send(&first, 9)), (NONE, 0), "still cached behind a newer batch");
    assert_eq!(crate::kafka::latest_offset(&mut raw, "idem", 0), 4, "written once");

    let gap = produce_request("idem", 0, idempotent_batch(pid, epoch, 9, &["x"]));
    assert_eq!(produced(&raw.send(&gap, 9)).0, OUT_OF_ORDER_SEQUENCE_NUMBER);
    let unknown = produce_request("idem", 0, idempotent_batch(pid + 1000, 0, 5, &["x"]));
    assert_eq!(produced(&raw.send(&unknown, 9)).0, UNKNOWN_PRODUCER_ID);
    // A new epoch restarts at sequence 0 and fences the old one.
    let bumped = produce_request("idem", 0, idempotent_batch(pid, epoch + 1, 0, &["e"]));
    assert_eq!(produced(&raw.send(&bumped, 9)), (NONE, 4));
    let fenced = produce_request("idem", 0, idempotent_batch(pid, epoch, 4, &["x"]));
    assert_eq!(produced(&raw.send(&fenced, 9)).0, INVALID_PRODUCER_EPOCH);
    assert_eq!(crate::kafka::latest_offset(&mut raw, "idem", 0), 5);

    // A transactional id keeps its producer id and bumps the epoch on each init.
    let mut transactional = InitProducerIdRequest::default();
    transactional.transactional_id =
        Some(kafka_protocol::messages::TransactionalId("tx".to_string().into()));
    transactional.transaction_timeout_ms = 60_000;
    let first: InitProducerIdResponse = raw.send(&transactional, 4);
    assert_eq!((first.error_code, first.producer_epoch), (NONE, 0));
    let second: InitProducerIdResponse = raw.send(&transactional, 4);
    assert_eq!(second.error_code, NONE);
    assert_eq!((second.producer_id, second.producer_epoch), (first.producer_id, 1));
    transactional.transaction_timeout_ms = 1_000_000_000;
    let too_long: InitProducerIdResponse = raw.send(&transactional, 4);
    assert_eq!(too_long.error_code, INVALID_TRANSACTION_TIMEOUT);

    // Ids handed out before a restart are never handed out again.
    let highest = ids.iter().map(|(id, _)| *id).max().unwrap();
    drop(raw);
    broker.stop();
    broker.restart();
    let mut raw = Raw::connect(&broker.address());
    let (after, _) = init_producer_id(&mut raw, 4);
    assert!(after > highest, "id {after} after restart, {highest} before");
}

/// librdkafka with enable.idempotence=true (acks=all, up to 5 requests in flight per
/// connection): every message once, in order, per partition.
#[test]
fn rdkafka_idempotent_producer_writes_each_message_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let address = broker.address();
    Raw::connect(&address).create_topic("idem-rdkafka", 3, &[]);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &address)
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("batch.num.messages", "100")
        .set("max.in.flight.requests.per.connection", "5")
        .create()
        .unwrap();
    let count = 20_000;
    for i in 0..count {
        let key = format!("k{}", i % 30);
        let value = format!("{i:08}");
        send_waiting(&producer, BaseRecord::to("idem-rdkafka").key(&key).payload(&value));
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    drop(producer);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &address)
        .set("group.id", "idem-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..3 {
        assignment.add_partition_offset("idem-rdkafka", partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut by_partition: BTreeMap<i32, Vec<(i64, u32)>> = BTreeMap::new();
    let mut total = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while total < count {
        assert!(std::time::Instant::now() < deadline, "consumed {total} of {count}");
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let value: u32 =
                std::str::from_utf8(message.payload().unwrap()).unwrap().parse().unwrap();
            by_partition.entry(message.partition()).or_default().push((message.offset(), value));
            total += 1;
        }
    }
    let mut seen = vec![false; count];
    for (partition, messages) in &by_partition {
        for (i, (offset, value)) in messages.iter().enumerate() {
            assert_eq!(*offset, i as i64, "dense offsets on {partition}");
            assert!(!seen[*value as usize], "message {value} twice");
            seen[*value as usize] = true;
        }
        assert!(messages.windows(2).all(|w| w[0].1 < w[1].1), "order on {partition}");
    }
    assert!(seen.iter().all(|s| *s));
}

/// An idempotent librdkafka producer keeps going across a broker restart (the producer
/// state comes back from the snapshot written at shutdown).
#[test]
fn rdkafka_idempotent_producer_survives_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let address = broker.address();
    Raw::connect(&address).create_topic("idem-restart", 1, &[]);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &address)
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "60000")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "200")
        .create()
        .unwrap();
    let send = |producer: &BaseProducer, from: usize, to: usize| {
        for i in from..to {
            let value = format!("{i:08}");
            send_waiting(producer, BaseRecord::<(), String>::to("idem-restart").payload(&value));
        }
    };
    send(&producer, 0, 1000);
    producer.flush(Duration::from_secs(30)).unwrap();
    broker.stop();
    broker.restart();
    send(&producer, 1000, 2000);
    producer.flush(Duration::from_secs(60)).unwrap();
    if let Some(error) = producer.client().fatal_error() {
        panic!("fatal producer error after restart: {error:?}\n{}", broker.log());
    }
    let mut raw = Raw::connect(&address);
    let end = crate::kafka::latest_offset(&mut raw, "idem-restart", 0);
    assert_eq!(end, 2000, "every message once\n{}", broker.log());
}
