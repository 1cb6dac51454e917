//! Transactions: the coordinator, markers, the last stable offset and read_committed
//! fetches, with a raw client (exact wire answers) and with librdkafka's transactional
//! producer and read_committed consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, BrokerId, DescribeProducersRequest, DescribeTransactionsRequest,
    EndTxnRequest, FetchRequest, FindCoordinatorRequest, InitProducerIdRequest, ListOffsetsRequest,
    ListTransactionsRequest, ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_engine::batch::{encode_batch, EncodeOptions, Record};

use crate::harness::{produce_request, Broker, Raw};
use crate::kafka::send_waiting;

const NONE: i16 = 0;
const INVALID_GROUP_ID: i16 = 24;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const INVALID_TXN_STATE: i16 = 48;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn init(raw: &mut Raw, id: &str, timeout_ms: i32) -> (i64, i16) {
    let mut request = InitProducerIdRequest::default();
    request.transactional_id = Some(TransactionalId(text(id)));
    request.transaction_timeout_ms = timeout_ms;
    let response = raw.send(&request, 4);
    assert_eq!(response.error_code, NONE, "InitProducerId {id}");
    (response.producer_id.0, response.producer_epoch)
}

fn add_partitions(
    raw: &mut Raw,
    id: &str,
    pid: i64,
    epoch: i16,
    topic: &str,
    parts: &[i32],
) -> Vec<i16> {
    let mut t = AddPartitionsToTxnTopic::default();
    t.name = TopicName(text(topic));
    t.partitions = parts.to_vec();
    let mut request = AddPartitionsToTxnRequest::default();
    request.v3_and_below_transactional_id = TransactionalId(text(id));
    request.v3_and_below_producer_id = ProducerId(pid);
    request.v3_and_below_producer_epoch = epoch;
    request.v3_and_below_topics = vec![t];
    let response = raw.send(&request, 3);
    response.results_by_topic_v3_and_below[0]
        .results_by_partition
        .iter()
        .map(|p| p.partition_error_code)
        .collect()
}

fn end(raw: &mut Raw, id: &str, pid: i64, epoch: i16, commit: bool) -> i16 {
    let mut request = EndTxnRequest::default();
    request.transactional_id = TransactionalId(text(id));
    request.producer_id = ProducerId(pid);
    request.producer_epoch = epoch;
    request.committed = commit;
    raw.send(&request, 3).error_code
}

fn txn_batch(pid: i64, epoch: i16, sequence: i32, values: &[&str]) -> Vec<u8> {
    let records: Vec<Record> = values
        .iter()
        .map(|v| Record { key: None, value: Some(v.as_bytes().to_vec()), timestamp: 1_000 })
        .collect();
    let options = EncodeOptions {
        producer_id: pid,
        producer_epoch: epoch,
        base_sequence: sequence,
        transactional: true,
        ..EncodeOptions::default()
    };
    encode_batch(&records, options)
}

/// ListOffsets "latest" for one partition: (read_uncommitted, read_committed).
fn ends(raw: &mut Raw, topic: &str, partition: i32) -> (i64, i64) {
    let mut answer = [0i64; 2];
    for (slot, isolation) in [0i8, 1].into_iter().enumerate() {
        let mut p = ListOffsetsPartition::default();
        p.partition_index = partition;
        p.timestamp = -1;
        p.current_leader_epoch = -1;
        let mut t = ListOffsetsTopic::default();
        t.name = TopicName(text(topic));
        t.partitions = vec![p];
        let mut request = ListOffsetsRequest::default();
        request.replica_id = BrokerId(-1);
        request.isolation_level = isolation;
        request.topics = vec![t];
        let response = raw.send(&request, 7);
        assert_eq!(response.topics[0].partitions[0].error_code, NONE);
        answer[slot] = response.topics[0].partitions[0].offset;
    }
    (answer[0], answer[1])
}

/// Fetch v11 at isolation read_committed from `offset`: (high watermark, last stable
/// offset, aborted transactions, record bytes).
#[allow(clippy::type_complexity)]
fn fetch_committed(
    raw: &mut Raw,
    topic: &str,
    offset: i64,
) -> (i64, i64, Option<Vec<(i64, i64)>>, usize) {
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1 << 20;
    p.current_leader_epoch = -1;
    let mut t = FetchTopic::default();
    t.topic = TopicName(text(topic));
    t.partitions = vec![p];
    let mut request = FetchRequest::default();
    request.replica_id = BrokerId(-1);
    request.max_wait_ms = 0;
    request.max_bytes = 1 << 20;
    request.isolation_level = 1;
    request.session_epoch = -1;
    request.topics = vec![t];
    let response = raw.send(&request, 11);
    let data = &response.responses[0].partitions[0];
    assert_eq!(data.error_code, NONE);
    let aborted = data
        .aborted_transactions
        .as_ref()
        .map(|list| list.iter().map(|a| (a.producer_id.0, a.first_offset)).collect());
    (
        data.high_watermark,
        data.last_stable_offset,
        aborted,
        data.records.as_ref().map_or(0, |r| r.len()),
    )
}

/// The whole lifecycle on the wire: FindCoordinator for a transactional id, an open
/// transaction holding the last stable offset back (ListOffsets and Fetch at
/// read_committed), DescribeProducers / ListTransactions / DescribeTransactions showing
/// it, an abort listed in read_committed fetches, a commit, and the error answers
/// (a stale epoch, EndTxn without a transaction).
#[test]
fn raw_transaction_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("txraw", 1, &[]);

    let mut find = FindCoordinatorRequest::default();
    find.key_type = 1;
    find.coordinator_keys = vec![text("raw-tx")];
    let found = raw.send(&find, 4);
    assert_eq!(found.coordinators[0].error_code, NONE);
    assert_eq!(found.coordinators[0].port, broker.port as i32);

    let (pid, epoch) = init(&mut raw, "raw-tx", 60_000);
    assert_eq!(end(&mut raw, "raw-tx", pid, epoch, true), INVALID_TXN_STATE, "nothing to end");
    // A plain batch first, then an open transaction of 3 records.
    let plain = encode_batch(
        &[Record { key: None, value: Some(b"plain".to_vec()), timestamp: 1 }],
        EncodeOptions::default(),
    );
    assert_eq!(raw.produce("txraw", 0, plain).responses[0].partition_responses[0].error_code, NONE);
    assert_eq!(add_partitions(&mut raw, "raw-tx", pid, epoch, "txraw", &[0]), vec![NONE]);
    let produced =
        raw.send(&produce_request("txraw", 0, txn_batch(pid, epoch, 0, &["a", "b", "c"])), 9);
    assert_eq!(produced.responses[0].partition_responses[0].error_code, NONE);
    assert_eq!(ends(&mut raw, "txraw", 0), (4, 1), "the open transaction holds the LSO at 1");
    let (hw, lso, aborted, bytes) = fetch_committed(&mut raw, "txraw", 0);
    assert_eq!((hw, lso, aborted), (4, 1, Some(vec![])));
    assert!(bytes > 0, "the plain batch below the LSO is readable");
    assert_eq!(fetch_committed(&mut raw, "txraw", 1).3, 0, "nothing past the LSO");

    let mut describe = DescribeProducersRequest::default();
    let mut topic = kafka_protocol::messages::describe_producers_request::TopicRequest::default();
    topic.name = TopicName(text("txraw"));
    topic.partition_indexes = vec![0];
    describe.topics = vec![topic];
    let producers = raw.send(&describe, 0);
    let states = &producers.topics[0].partitions[0].active_producers;
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!((states[0].producer_id.0, states[0].current_txn_start_offset), (pid, 1));
    assert_eq!(states[0].last_sequence, 2);

    let listed = raw.send(&ListTransactionsRequest::default(), 0);
    let mine: Vec<_> = listed
        .transaction_states
        .iter()
        .filter(|t| t.transactional_id.0.as_str() == "raw-tx")
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].transaction_state.as_str(), "Ongoing");
    let mut describe = DescribeTransactionsRequest::default();
    describe.transactional_ids =
        vec![TransactionalId(text("raw-tx")), TransactionalId(text("nope"))];
    let described = raw.send(&describe, 0);
    assert_eq!(described.transaction_states[0].error_code, NONE);
    assert_eq!(described.transaction_states[0].transaction_state.as_str(), "Ongoing");
    assert_eq!(described.transaction_states[0].topics[0].partitions, vec![0]);
    assert_eq!(described.transaction_states[1].error_code, 105, "TRANSACTIONAL_ID_NOT_FOUND");

    // A stale epoch is refused; the abort writes a marker at offset 4.
    assert_eq!(end(&mut raw, "raw-tx", pid, epoch - 1, false), INVALID_PRODUCER_EPOCH);
    assert_eq!(end(&mut raw, "raw-tx", pid, epoch, false), NONE);
    assert_eq!(end(&mut raw, "raw-tx", pid, epoch, false), NONE, "a retried EndTxn");
    assert_eq!(ends(&mut raw, "txraw", 0), (5, 5));
    let (_, lso, aborted, _) = fetch_committed(&mut raw, "txraw", 0);
    assert_eq!((lso, aborted), (5, Some(vec![(pid, 1)])), "the abort is listed for the client");
    assert_eq!(fetch_committed(&mut raw, "txraw", 5).2, Some(vec![]), "not past its marker");

    // A committed transaction: no aborted entry, LSO at the end.
    assert_eq!(add_partitions(&mut raw, "raw-tx", pid, epoch, "txraw", &[0]), vec![NONE]);
    let produced = raw.send(&produce_request("txraw", 0, txn_batch(pid, epoch, 3, &["d"])), 9);
    assert_eq!(produced.responses[0].partition_responses[0].error_code, NONE);
    assert_eq!(end(&mut raw, "raw-tx", pid, epoch, true), NONE);
    assert_eq!(ends(&mut raw, "txraw", 0), (7, 7));
    assert_eq!(fetch_committed(&mut raw, "txraw", 5).2, Some(vec![]));
    // Unknown partitions are named; the others are not attempted.
    assert_eq!(add_partitions(&mut raw, "raw-tx", pid, epoch, "missing", &[0]), vec![3]);

    // A corrupt .txnindex is rebuilt from the log at the next start.
    drop(raw);
    broker.stop();
    let index = broker.data_dir.join("txraw-0").join("00000000000000000000.txnindex");
    let mut bytes = std::fs::read(&index).unwrap();
    assert_eq!(bytes.len(), 34, "one aborted transaction, Kafka's entry size");
    bytes[0] = 0x7f;
    std::fs::write(&index, &bytes).unwrap();
    broker.restart();
    let mut raw = Raw::connect(&broker.address());
    assert_eq!(fetch_committed(&mut raw, "txraw", 0).2, Some(vec![(pid, 1)]), "{}", broker.log());
    assert_eq!(std::fs::read(&index).unwrap().len(), 34, "rewritten once");
}

fn transactional_producer(address: &str, id: &str, timeout_ms: u32) -> BaseProducer {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", timeout_ms.to_string())
        .set("linger.ms", "1")
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer
}

fn consumer(address: &str, group: &str, isolation: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap()
}

/// Reads `topic`'s partitions from the start until `expected` messages arrived (or the
/// deadline), then a little longer to catch extras. Values by partition, in offset order.
fn read_all(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> BTreeMap<i32, Vec<String>> {
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut out: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_until = None;
    loop {
        if total >= expected && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_millis(1500));
        }
        if quiet_until.is_some_and(|q| Instant::now() > q) || Instant::now() > deadline {
            break;
        }
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let value = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
            out.entry(message.partition()).or_default().push(value);
            total += 1;
        }
    }
    out
}

/// Two librdkafka transactional producers interleave over 3 partitions, one committing
/// and one aborting, both open at once: a read_committed consumer sees exactly the
/// committed records in order, a read_uncommitted one sees everything, and no control
/// record reaches either application.
#[test]
fn rdkafka_committed_and_aborted_transactions_interleaved() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let address = broker.address();
    Raw::connect(&address).create_topic("txmix", 3, &[]);
    let committer = transactional_producer(&address, "committer", 60_000);
    let aborter = transactional_producer(&address, "aborter", 60_000);
    let rounds = 5;
    let per_round = 60;
    let mut committed: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for round in 0..rounds {
        committer.begin_transaction().unwrap();
        aborter.begin_transaction().unwrap();
        for i in 0..per_round {
            let partition = (i % 3) as i32;
            let good = format!("c-{round}-{i:03}");
            let bad = format!("a-{round}-{i:03}");
            send_waiting(
                &committer,
                BaseRecord::<(), String>::to("txmix").partition(partition).payload(&good),
            );
            send_waiting(
                &aborter,
                BaseRecord::<(), String>::to("txmix").partition(partition).payload(&bad),
            );
            committed.entry(partition).or_default().push(good);
        }
        committer.flush(Duration::from_secs(30)).unwrap();
        aborter.flush(Duration::from_secs(30)).unwrap();
        // Alternate which one ends first.
        if round % 2 == 0 {
            aborter.abort_transaction(Duration::from_secs(30)).unwrap();
            committer.commit_transaction(Duration::from_secs(30)).unwrap();
        } else {
            committer.commit_transaction(Duration::from_secs(30)).unwrap();
            aborter.abort_transaction(Duration::from_secs(30)).unwrap();
        }
    }
    let total = rounds * per_round;
    let seen = read_all(&consumer(&address, "txmix-rc", "read_committed"), "txmix", 3, total);
    assert_eq!(
        seen,
        committed,
        "read_committed sees the committed records, in order\n{}",
        broker.log()
    );
    let all = read_all(&consumer(&address, "txmix-ru", "read_uncommitted"), "txmix", 3, total * 2);
    let count: usize = all.values().map(Vec::len).sum();
    assert_eq!(count, total * 2, "read_uncommitted sees every data record");
    for values in all.values() {
        assert!(
            values.iter().all(|v| v.starts_with("c-") || v.starts_with("a-")),
            "no control records"
        );
        let aborted: Vec<&String> = values.iter().filter(|v| v.starts_with("a-")).collect();
        assert!(!aborted.is_empty());
    }
    let mut raw = Raw::connect(&address);
    for partition in 0..3 {
        let (hw, lso) = ends(&mut raw, "txmix", partition);
        assert_eq!(hw, lso, "every transaction ended");
        // 2 data records per message index and 2 markers per round on each partition.
        assert_eq!(hw, (total * 2 / 3 + rounds * 2) as i64);
    }
}

/// A second producer with the same transactional.id fences the first: the first one's
/// open transaction is aborted, its commit fails, and only the new producer's records
/// are visible to read_committed.
#[test]
fn rdkafka_same_transactional_id_fences_the_old_producer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let address = broker.address();
    Raw::connect(&address).create_topic("txfence", 1, &[]);
    let old = transactional_producer(&address, "fenced-id", 60_000);
    old.begin_transaction().unwrap();
    for i in 0..10 {
        send_waiting(&old, BaseRecord::<(), String>::to("txfence").payload(&format!("old-{i}")));
    }
    old.flush(Duration::from_secs(30)).unwrap();
    let new = transactional_producer(&address, "fenced-id", 60_000);
    let commit = old.commit_transaction(Duration::from_secs(30));
    assert!(commit.is_err(), "the fenced producer cannot commit");
    new.begin_transaction().unwrap();
    for i in 0..10 {
        send_waiting(&new, BaseRecord::<(), String>::to("txfence").payload(&format!("new-{i}")));
    }
    new.commit_transaction(Duration::from_secs(30)).unwrap();
    let seen = read_all(&consumer(&address, "txfence-rc", "read_committed"), "txfence", 1, 10);
    let expected: Vec<String> = (0..10).map(|i| format!("new-{i}")).collect();
    assert_eq!(seen.get(&0), Some(&expected), "{}", broker.log());
}

/// Consume, transform, produce with `send_offsets_to_transaction`: a processor copies an
/// input topic to an output topic in transactions that also commit its input offsets. It
/// crashes (drops its clients) in the middle of a transaction; a new instance with the
/// same transactional.id and group carries on. The output has every input record exactly
/// once: no duplicates, no gaps.
#[test]
fn rdkafka_consume_transform_produce_is_exactly_once_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let address = broker.address();
    let mut raw = Raw::connect(&address);
    raw.create_topic("ctp-in", 1, &[]);
    raw.create_topic("ctp-out", 1, &[]);
    let input = 1000;
    let plain: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &address).create().unwrap();
    for i in 0..input {
        send_waiting(&plain, BaseRecord::<(), String>::to("ctp-in").payload(&format!("{i:05}")));
    }
    plain.flush(Duration::from_secs(30)).unwrap();

    // Runs a processor instance; `crash_after` batches it stops in the middle of a
    // transaction (records produced, nothing committed). Returns whether it finished.
    let run = |crash_after: Option<usize>| -> bool {
        let producer = transactional_producer(&address, "ctp-tx", 60_000);
        let consumer = consumer(&address, "ctp-group", "read_committed");
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset("ctp-in", 0, Offset::Stored).unwrap();
        consumer.assign(&assignment).unwrap();
        let mut batches = 0;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            assert!(
                Instant::now() < deadline,
                "processor stuck after {batches} batches, position {:?}\n{}",
                consumer.position(),
                broker.log()
            );
            let mut records = Vec::new();
            let mut next = None;
            let until = Instant::now() + Duration::from_millis(300);
            while records.len() < 100 && Instant::now() < until {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
                    records.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
                    next = Some(message.offset() + 1);
                }
            }
            let Some(next) = next else {
                // Nothing left: done once the committed position is the end.
                let committed = consumer.committed(Duration::from_secs(10)).unwrap();
                let at = committed.find_partition("ctp-in", 0).unwrap().offset();
                if at == Offset::Offset(input as i64) {
                    return true;
                }
                continue;
            };
            producer.begin_transaction().unwrap();
            for record in &records {
                let out = format!("out-{record}");
                send_waiting(&producer, BaseRecord::<(), String>::to("ctp-out").payload(&out));
            }
            producer.flush(Duration::from_secs(30)).unwrap();
            batches += 1;
            if crash_after == Some(batches) {
                return false; // Crash: the clients are dropped, the transaction stays open.
            }
            let mut offsets = TopicPartitionList::new();
            offsets.add_partition_offset("ctp-in", 0, Offset::Offset(next)).unwrap();
            let metadata = consumer.group_metadata().unwrap();
            producer
                .send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(30))
                .unwrap();
            producer.commit_transaction(Duration::from_secs(30)).unwrap();
        }
    };
    assert!(!run(Some(3)));
    assert!(run(None));
    let out = read_all(&consumer(&address, "ctp-check", "read_committed"), "ctp-out", 1, input);
    let values = out.get(&0).cloned().unwrap_or_default();
    let expected: Vec<String> = (0..input).map(|i| format!("out-{i:05}")).collect();
    assert_eq!(values.len(), expected.len(), "count\n{}", broker.log());
    assert_eq!(values, expected, "every input once, in order");
}

/// A transaction open across a broker restart: after a clean restart the coordinator
/// still knows it and its producer commits it; after a crash (SIGKILL) with the producer
/// gone, the transaction is aborted at its timeout and read_committed consumers move on.
#[test]
fn transactions_survive_restarts_and_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let address = broker.address();
    Raw::connect(&address).create_topic("txrestart", 1, &[]);
    let producer = transactional_producer(&address, "restart-tx", 60_000);
    producer.begin_transaction().unwrap();
    for i in 0..20 {
        send_waiting(
            &producer,
            BaseRecord::<(), String>::to("txrestart").payload(&format!("kept-{i}")),
        );
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    broker.stop();
    broker.restart();
    let mut raw = Raw::connect(&address);
    let (hw, lso) = ends(&mut raw, "txrestart", 0);
    assert_eq!((hw, lso), (20, 0), "the open transaction is still open after the restart");
    producer.commit_transaction(Duration::from_secs(30)).unwrap();
    assert_eq!(ends(&mut raw, "txrestart", 0), (21, 21));
    drop(producer);

    // A transaction left open by a producer that is gone, then a crash.
    let (pid, epoch) = init(&mut raw, "orphan-tx", 3_000);
    assert_eq!(add_partitions(&mut raw, "orphan-tx", pid, epoch, "txrestart", &[0]), vec![NONE]);
    let produced = raw
        .send(&produce_request("txrestart", 0, txn_batch(pid, epoch, 0, &["lost-1", "lost-2"])), 9);
    assert_eq!(produced.responses[0].partition_responses[0].error_code, NONE);
    let plain = encode_batch(
        &[Record { key: None, value: Some(b"after".to_vec()), timestamp: 1 }],
        EncodeOptions::default(),
    );
    assert_eq!(
        raw.produce("txrestart", 0, plain).responses[0].partition_responses[0].error_code,
        NONE
    );
    assert_eq!(ends(&mut raw, "txrestart", 0), (24, 21));
    drop(raw);
    broker.kill();
    broker.restart();
    let mut raw = Raw::connect(&address);
    let started = Instant::now();
    loop {
        let (hw, lso) = ends(&mut raw, "txrestart", 0);
        // `ends` reads the high watermark, then the LSO, in two requests: the abort
        // marker may land between them, and then the LSO is past the high watermark read.
        if lso >= hw {
            break;
        }
        assert_eq!(lso, 21, "the orphan still holds the LSO");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the orphan never timed out\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ends(&mut raw, "txrestart", 0), (25, 25), "the abort marker ends the orphan");
    let seen = read_all(&consumer(&address, "txrestart-rc", "read_committed"), "txrestart", 1, 21);
    let mut expected: Vec<String> = (0..20).map(|i| format!("kept-{i}")).collect();
    expected.push("after".to_string());
    assert_eq!(seen.get(&0), Some(&expected), "{}", broker.log());
    let values: BTreeSet<&String> = seen.values().flatten().collect();
    assert!(!values.iter().any(|v| v.starts_with("lost")));
}

/// kafka-python, an independent client: its transactional producer commits and aborts
/// alternately; its read_committed consumer sees exactly the committed records.
#[test]
fn kafka_python_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    crate::harness::run_python(&broker, "kafka_python_txn.py", &[], "kafka-python transactions ok");
}

/// OffsetFetch v7 of `group` on `topic` 0: (error, offset).
fn offset_fetch(raw: &mut Raw, group: &str, topic: &str, require_stable: bool) -> (i16, i64) {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let mut fetch = kafka_protocol::messages::OffsetFetchRequest::default();
    fetch.group_id = kafka_protocol::messages::GroupId(text(group));
    let mut asked = OffsetFetchRequestTopic::default();
    asked.name = TopicName(text(topic));
    asked.partition_indexes = vec![0];
    fetch.topics = Some(vec![asked]);
    fetch.require_stable = require_stable;
    let fetched = raw.send(&fetch, 7);
    let partition = &fetched.topics[0].partitions[0];
    (partition.error_code, partition.committed_offset)
}

/// AddOffsetsToTxn at `version`: the error code.
fn add_offsets(
    raw: &mut Raw,
    id: &str,
    (pid, epoch): (i64, i16),
    group: &str,
    version: i16,
) -> i16 {
    use kafka_protocol::messages::{AddOffsetsToTxnRequest, GroupId};
    let mut request = AddOffsetsToTxnRequest::default();
    request.transactional_id = TransactionalId(text(id));
    request.producer_id = ProducerId(pid);
    request.producer_epoch = epoch;
    request.group_id = GroupId(text(group));
    raw.send(&request, version).error_code
}

/// TxnOffsetCommit at `version` of `offset` for `topic` 0: the partition's error code.
fn txn_commit_offset(
    raw: &mut Raw,
    id: &str,
    (pid, epoch): (i64, i16),
    (group, topic, offset): (&str, &str, i64),
    version: i16,
) -> i16 {
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{GroupId, TxnOffsetCommitRequest};
    let mut partition = TxnOffsetCommitRequestPartition::default();
    partition.partition_index = 0;
    partition.committed_offset = offset;
    partition.committed_leader_epoch = -1;
    let mut asked = TxnOffsetCommitRequestTopic::default();
    asked.name = TopicName(text(topic));
    asked.partitions = vec![partition];
    let mut commit = TxnOffsetCommitRequest::default();
    commit.transactional_id = TransactionalId(text(id));
    commit.group_id = GroupId(text(group));
    commit.producer_id = ProducerId(pid);
    commit.producer_epoch = epoch;
    commit.generation_id = -1;
    commit.topics = vec![asked];
    raw.send(&commit, version).topics[0].partitions[0].error_code
}

/// Offsets committed in a transaction are pending until its marker: OffsetFetch with
/// `require_stable` answers UNSTABLE_OFFSET_COMMIT meanwhile. A producer fenced by a new
/// one with the same transactional id (its transaction aborted with a bumped epoch) can
/// no longer commit offsets: its late TxnOffsetCommit is refused and never applied by the
/// new epoch's commit.
#[test]
fn fenced_producer_cannot_commit_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("zin", 1, &[]);
    let old = init(&mut raw, "zombie", 60_000);
    assert_eq!(add_offsets(&mut raw, "zombie", old, "zgroup", 3), NONE);
    assert_eq!(txn_commit_offset(&mut raw, "zombie", old, ("zgroup", "zin", 5), 3), NONE);
    assert_eq!(offset_fetch(&mut raw, "zgroup", "zin", true).0, 88, "UNSTABLE_OFFSET_COMMIT");
    assert_eq!(offset_fetch(&mut raw, "zgroup", "zin", false), (NONE, -1));

    let new = init(&mut raw, "zombie", 60_000);
    assert_eq!(new.0, old.0, "same producer id");
    assert!(new.1 > old.1, "a newer epoch");
    // The open transaction was aborted: its offsets are gone, nothing is pending.
    assert_eq!(offset_fetch(&mut raw, "zgroup", "zin", true), (NONE, -1));
    let late = txn_commit_offset(&mut raw, "zombie", old, ("zgroup", "zin", 6), 3);
    assert_eq!(late, 47, "INVALID_PRODUCER_EPOCH for the fenced producer");
    assert_eq!(offset_fetch(&mut raw, "zgroup", "zin", true), (NONE, -1));

    assert_eq!(add_offsets(&mut raw, "zombie", new, "zgroup", 3), NONE);
    assert_eq!(txn_commit_offset(&mut raw, "zombie", new, ("zgroup", "zin", 7), 3), NONE);
    // The empty group id, as Kafka takes it: AddOffsetsToTxn adds its offsets partition,
    // TxnOffsetCommit refuses it (INVALID_GROUP_ID), and the transaction goes on.
    assert_eq!(add_offsets(&mut raw, "zombie", new, "", 3), NONE);
    assert_eq!(txn_commit_offset(&mut raw, "zombie", new, ("", "zin", 8), 3), INVALID_GROUP_ID);
    assert_eq!(end(&mut raw, "zombie", new.0, new.1, true), NONE);
    assert_eq!(offset_fetch(&mut raw, "", "zin", true), (NONE, -1));
    assert_eq!(
        offset_fetch(&mut raw, "zgroup", "zin", true),
        (NONE, 7),
        "only the new epoch's offset"
    );
}

/// Every advertised version of the transaction APIs answers: InitProducerId 0-5,
/// AddPartitionsToTxn 0-3, EndTxn 0-4, AddOffsetsToTxn 0-4, TxnOffsetCommit 0-4.
#[test]
fn every_transaction_api_version_answers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("txv", 1, &[]);
    for version in 0..=5i16 {
        let mut request = InitProducerIdRequest::default();
        request.transactional_id = Some(TransactionalId(text("versions")));
        request.transaction_timeout_ms = 60_000;
        request.producer_id = ProducerId(-1);
        request.producer_epoch = -1;
        let response = raw.send(&request, version);
        assert_eq!(response.error_code, NONE, "InitProducerId v{version}");
    }
    let (pid, epoch) = init(&mut raw, "versions", 60_000);
    for round in 0..5i16 {
        let add_version = round.min(3);
        let mut t = AddPartitionsToTxnTopic::default();
        t.name = TopicName(text("txv"));
        t.partitions = vec![0];
        let mut add = AddPartitionsToTxnRequest::default();
        add.v3_and_below_transactional_id = TransactionalId(text("versions"));
        add.v3_and_below_producer_id = ProducerId(pid);
        add.v3_and_below_producer_epoch = epoch;
        add.v3_and_below_topics = vec![t];
        let added = raw.send(&add, add_version);
        assert_eq!(
            added.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code,
            NONE
        );
        let ids = (pid, epoch);
        let add = add_offsets(&mut raw, "versions", ids, "versions-group", round);
        assert_eq!(add, NONE, "AddOffsetsToTxn v{round}");
        let offset = ("versions-group", "txv", i64::from(round));
        let committed = txn_commit_offset(&mut raw, "versions", ids, offset, round);
        assert_eq!(committed, NONE, "TxnOffsetCommit v{round}");
        // Pending in the open transaction: unstable for require_stable, else the last
        // committed offset.
        let stable = offset_fetch(&mut raw, "versions-group", "txv", false);
        let unstable = offset_fetch(&mut raw, "versions-group", "txv", true);
        assert_eq!(stable, (NONE, i64::from(round) - 1));
        assert_eq!(unstable.0, 88, "UNSTABLE_OFFSET_COMMIT");
        assert_eq!(end(&mut raw, "versions", pid, epoch, true), NONE);
        let mut end_request = EndTxnRequest::default();
        end_request.transactional_id = TransactionalId(text("versions"));
        end_request.producer_id = ProducerId(pid);
        end_request.producer_epoch = epoch;
        end_request.committed = true;
        assert_eq!(raw.send(&end_request, round).error_code, NONE, "EndTxn v{round} (a retry)");
    }
    // The transactional offset commits took effect with the commit markers.
    assert_eq!(offset_fetch(&mut raw, "versions-group", "txv", true), (NONE, 4));
}
