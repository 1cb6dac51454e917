//! Many partitions on one broker: 10 topics of 1,000 partitions on one shard, created in
//! one CreateTopics, every partition online, produced to and fetched from across all
//! topics, across a restart, with the broker's open descriptors within its budget
//! (`log.open.files.max`: idle segment files are closed and reopened on demand). And
//! CreateTopics / CreatePartitions answering an error, not success, for partitions that
//! could not be opened, which Metadata then shows offline. And a broker whose process
//! runs out of descriptors altogether (EMFILE) closing idle files and going on.

use std::path::Path;
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreateTopicsRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_engine::batch::{encode_batch, EncodeOptions, Record};

use crate::harness::{Broker, Raw};

const NONE: i16 = 0;
const LEADER_NOT_AVAILABLE: i16 = 5;
const KAFKA_STORAGE_ERROR: i16 = 56;

const TOPICS: usize = 10;
const PARTITIONS: i32 = 1000;
/// The broker's `log.open.files.max` in the big test: a fifth of the partitions (less
/// where the open-file hard limit is below twice that).
const OPEN_FILES_MAX: usize = 2000;
/// Descriptors a broker holds besides segment files: standard streams, io_uring rings,
/// the listening and client sockets, the metadata log, helper threads' descriptors.
const OTHER_DESCRIPTORS: usize = 150;

fn name_of(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

fn topic_name(index: usize) -> String {
    format!("many-{index}")
}

/// CreateTopics v7 of `topics` (name, partitions) in one request.
fn create_topics(raw: &mut Raw, topics: &[(&str, i32)]) -> Vec<CreatableTopicResult> {
    let mut request = CreateTopicsRequest::default();
    request.topics = topics
        .iter()
        .map(|(name, partitions)| {
            let mut topic = CreatableTopic::default();
            topic.name = name_of(name);
            topic.num_partitions = *partitions;
            topic.replication_factor = 1;
            topic
        })
        .collect();
    request.timeout_ms = 600_000;
    raw.send(&request, 7).topics
}

/// Metadata v12 of every topic, by name.
fn metadata(raw: &mut Raw) -> Vec<MetadataResponseTopic> {
    let mut request = MetadataRequest::default();
    request.topics = None; // every topic
    let response = raw.send(&request, 12);
    let mut topics = response.topics;
    topics.sort_by(|a, b| {
        a.name.as_ref().map(|n| n.0.clone()).cmp(&b.name.as_ref().map(|n| n.0.clone()))
    });
    topics
}

/// Asserts that every partition of the ten topics is online: no error, led by node 0.
fn assert_all_online(raw: &mut Raw) {
    let names: Vec<String> = (0..TOPICS).map(topic_name).collect();
    let wanted: Vec<(&str, i32)> = names.iter().map(|n| (n.as_str(), PARTITIONS)).collect();
    assert_online(raw, &wanted);
}

/// Asserts that each topic has its partitions, all online: no error, led by node 0.
fn assert_online(raw: &mut Raw, wanted: &[(&str, i32)]) {
    let topics = metadata(raw);
    for &(name, partitions) in wanted {
        let topic = topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == name))
            .unwrap_or_else(|| panic!("{name} missing from Metadata"));
        assert_eq!(topic.error_code, NONE, "{name}");
        assert_eq!(topic.partitions.len(), partitions as usize, "{name}");
        for (at, partition) in topic.partitions.iter().enumerate() {
            assert_eq!(partition.partition_index, at as i32);
            assert_eq!(partition.error_code, NONE, "{name}-{at} is not online");
            assert_eq!(partition.leader_id, BrokerId(0), "{name}-{at} has no leader");
            assert!(partition.offline_replicas.is_empty(), "{name}-{at}");
        }
    }
}

/// A batch of `records` records whose values say where they go and which batch they are.
fn batch(topic: &str, partition: i32, batch: usize, records: usize) -> Vec<u8> {
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            key: None,
            value: Some(value(topic, partition, batch, i)),
            timestamp: 1_700_000_000_000 + i as i64,
        })
        .collect();
    encode_batch(&records, EncodeOptions::default())
}

fn value(topic: &str, partition: i32, batch: usize, record: usize) -> Vec<u8> {
    format!("{topic}/{partition}/batch {batch}/record {record}").into_bytes()
}

/// Produces batch `index` (2 records) and asserts its base offset.
fn produce(raw: &mut Raw, topic: &str, partition: i32, index: usize) {
    let response = raw.produce(topic, partition, batch(topic, partition, index, 2));
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!(answer.error_code, NONE, "{topic}-{partition}: {:?}", answer.error_message);
    assert_eq!(answer.base_offset, 2 * index as i64, "{topic}-{partition} batch {index}");
}

/// Asserts that the partition holds exactly `batches` batches of `produce`, in order.
fn assert_holds(raw: &mut Raw, topic: &str, partition: i32, batches: usize) {
    let expected: Vec<(i64, Vec<u8>)> = (0..batches)
        .flat_map(|b| (0..2).map(move |r| ((2 * b + r) as i64, value(topic, partition, b, r))))
        .collect();
    assert_eq!(crate::kafka::fetch_records(raw, topic, partition), expected, "{topic}-{partition}");
}

/// The partitions the traffic goes to: 20 per topic, spread over the whole range.
fn sample() -> Vec<(String, i32)> {
    (0..TOPICS)
        .flat_map(|t| (0..20).map(move |k| (topic_name(t), (k * 50 + t as i32 * 7) % PARTITIONS)))
        .collect()
}

/// The pid of the broker serving `data_dir` (the harness keeps its child to itself).
fn broker_pid(data_dir: &Path) -> u32 {
    let wanted = data_dir.to_str().unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.windows(2).any(|w| w[0] == b"--data-dir" && w[1] == wanted.as_bytes()) {
            return pid;
        }
    }
    panic!("no broker process serves {wanted}");
}

/// The broker's open descriptors, once idle (glommio closes dropped files from its
/// ring, at its next poll; the broker polls at least every 100 ms).
fn open_descriptors(pid: u32) -> usize {
    std::thread::sleep(Duration::from_millis(300));
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn ten_thousand_partitions_on_one_shard_stay_online_within_the_descriptor_budget() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The broker raises its limit to the hard limit it inherits from this process.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let budget = OPEN_FILES_MAX.min(usize::try_from(hard / 2).unwrap_or(usize::MAX));
    let budget_set = format!("log.open.files.max={budget}");
    let mut broker = Broker::start(&data, &["--cores", "1", "--set", &budget_set]);
    let mut raw = Raw::connect(&broker.address());

    let started = Instant::now();
    let names: Vec<String> = (0..TOPICS).map(topic_name).collect();
    let wanted: Vec<(&str, i32)> = names.iter().map(|n| (n.as_str(), PARTITIONS)).collect();
    let results = create_topics(&mut raw, &wanted);
    assert_eq!(results.len(), TOPICS);
    for result in &results {
        assert_eq!(result.error_code, NONE, "{:?}: {:?}", result.name, result.error_message);
        assert_eq!(result.num_partitions, PARTITIONS);
    }
    eprintln!("created {} partitions in {:?}", TOPICS as i32 * PARTITIONS, started.elapsed());
    assert_all_online(&mut raw);

    let sample = sample();
    for index in 0..3 {
        for (topic, partition) in &sample {
            produce(&mut raw, topic, *partition, index);
        }
    }
    for (topic, partition) in &sample {
        assert_holds(&mut raw, topic, *partition, 3);
    }
    let pid = broker_pid(&data);
    let descriptors = open_descriptors(pid);
    eprintln!("{descriptors} descriptors open with {} partitions", TOPICS as i32 * PARTITIONS);
    assert!(
        descriptors <= budget + OTHER_DESCRIPTORS,
        "{descriptors} descriptors open, budget {budget}"
    );

    drop(raw);
    assert!(broker.stop().success(), "{}", broker.log());
    let started = Instant::now();
    broker.restart();
    eprintln!(
        "restarted with {} partitions in {:?}",
        TOPICS as i32 * PARTITIONS,
        started.elapsed()
    );
    let mut raw = Raw::connect(&broker.address());
    assert_all_online(&mut raw);
    for (topic, partition) in &sample {
        assert_holds(&mut raw, topic, *partition, 3);
        produce(&mut raw, topic, *partition, 3);
        assert_holds(&mut raw, topic, *partition, 4);
    }
    // A partition never written to is there, empty, after the restart too.
    assert!(crate::kafka::fetch_records(&mut raw, &topic_name(3), 999).is_empty());
    let descriptors = open_descriptors(broker_pid(&data));
    assert!(
        descriptors <= budget + OTHER_DESCRIPTORS,
        "{descriptors} descriptors open after the restart, budget {budget}"
    );
    let log = broker.log();
    assert!(log.contains("open-file limit raised to the hard limit"), "{log}");
    assert!(!log.contains("partition offline"), "a partition went offline");
}

/// The process's open-file limit itself runs out (here: a hard limit of 400, with
/// `log.open.files.max` set far above it): opens that fail with EMFILE close idle segment
/// files and try again, so 1,000 partitions are created, written and read back, none goes
/// offline, and the broker says what happened.
#[test]
fn running_out_of_descriptors_closes_idle_files_and_loses_nothing() {
    const LIMIT: u64 = 400;
    const MANY: i32 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--cores", "1", "--set", "log.open.files.max=100000"];
    let mut broker = Broker::start_with_open_file_limit(&data, &args, LIMIT);
    let mut raw = Raw::connect(&broker.address());
    let results = create_topics(&mut raw, &[("scarce", MANY)]);
    assert_eq!(results[0].error_code, NONE, "{:?}\n{}", results[0].error_message, broker.log());
    assert_online(&mut raw, &[("scarce", MANY)]);
    for index in 0..2 {
        for partition in 0..MANY {
            produce(&mut raw, "scarce", partition, index);
        }
    }
    for partition in 0..MANY {
        assert_holds(&mut raw, "scarce", partition, 2);
    }
    let log = broker.log();
    assert!(log.contains("log.open.files.max is above the open-file limit"), "{log}");
    assert!(log.contains("out of file descriptors; closed idle segment files"), "{log}");
    assert!(!log.contains("partition offline"), "a partition went offline:\n{log}");
    drop(raw);
    assert!(broker.stop().success(), "{}", broker.log());
}

/// Puts a file where the directory of `topic`-`partition` would go, so its log cannot be
/// created (a permission would not stop root, which CI runs as).
fn block(data: &Path, topic: &str, partition: i32) {
    std::fs::write(data.join(format!("{topic}-{partition}")), b"in the way").unwrap();
}

fn unblock(data: &Path, topic: &str, partition: i32) {
    std::fs::remove_file(data.join(format!("{topic}-{partition}"))).unwrap();
}

/// Asserts which partitions of `topic` Metadata shows offline (LEADER_NOT_AVAILABLE, no
/// leader, the replica offline), and that the others are online.
fn assert_offline(raw: &mut Raw, topic: &str, count: usize, offline: &[i32]) {
    let topics = metadata(raw);
    let found = topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        .unwrap_or_else(|| panic!("{topic} missing from Metadata"));
    assert_eq!(found.partitions.len(), count);
    for partition in &found.partitions {
        let index = partition.partition_index;
        if offline.contains(&index) {
            assert_eq!(partition.error_code, LEADER_NOT_AVAILABLE, "{topic}-{index}");
            assert_eq!(partition.leader_id, BrokerId(-1), "{topic}-{index}");
            assert_eq!(partition.offline_replicas, vec![BrokerId(0)], "{topic}-{index}");
        } else {
            assert_eq!(partition.error_code, NONE, "{topic}-{index}");
            assert_eq!(partition.leader_id, BrokerId(0), "{topic}-{index}");
        }
    }
}

fn produce_error(raw: &mut Raw, topic: &str, partition: i32) -> i16 {
    let response = raw.produce(topic, partition, batch(topic, partition, 0, 2));
    response.responses[0].partition_responses[0].error_code
}

#[test]
fn create_topics_and_create_partitions_answer_an_error_for_partitions_that_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Two shards: the failures of both must reach the controller's answer.
    let mut broker = Broker::start(&data, &["--cores", "2"]);
    let mut raw = Raw::connect(&broker.address());
    let on_shard = |topic: &str, shard: usize| {
        (0..6).find(|p| sluice_engine::shard::shard_of(topic, *p, 2) == shard).unwrap()
    };
    let blocked = [on_shard("blocked", 0), on_shard("blocked", 1)];
    for partition in blocked {
        block(&data, "blocked", partition);
    }
    let results = create_topics(&mut raw, &[("blocked", 6), ("fine", 3)]);
    assert_eq!(results[0].error_code, KAFKA_STORAGE_ERROR, "{:?}", results[0].error_message);
    let message = results[0].error_message.as_ref().unwrap().to_string();
    assert!(message.contains("2 of its new partitions could not be opened"), "{message}");
    for partition in blocked {
        assert!(message.contains(&format!("blocked-{partition}")), "{message}");
    }
    assert_eq!(results[1].error_code, NONE, "the other topic of the request is created");
    assert_eq!(results[1].num_partitions, 3);

    let mut offline = blocked.to_vec();
    offline.sort_unstable();
    assert_offline(&mut raw, "blocked", 6, &offline);
    assert_offline(&mut raw, "fine", 3, &[]);
    assert_eq!(produce_error(&mut raw, "blocked", blocked[0]), KAFKA_STORAGE_ERROR);
    let online = (0..6).find(|p| !blocked.contains(p)).unwrap();
    produce(&mut raw, "blocked", online, 0);

    // CreatePartitions: 3 -> 6, with partition 4 blocked.
    block(&data, "fine", 4);
    let mut grow = CreatePartitionsTopic::default();
    grow.name = name_of("fine");
    grow.count = 6;
    grow.assignments = None;
    let mut request = CreatePartitionsRequest::default();
    request.topics = vec![grow];
    request.timeout_ms = 30_000;
    let response = raw.send(&request, 3);
    let result = &response.results[0];
    assert_eq!(result.error_code, KAFKA_STORAGE_ERROR);
    let message = result.error_message.as_ref().unwrap().to_string();
    assert!(message.contains("1 of its new partitions") && message.contains("fine-4"), "{message}");
    assert_offline(&mut raw, "fine", 6, &[4]);
    produce(&mut raw, "fine", 5, 0);
    assert_eq!(produce_error(&mut raw, "fine", 4), KAFKA_STORAGE_ERROR);
    let log = broker.log();
    assert!(log.matches("partition offline").count() >= 3, "{log}");

    // Once what was in the way is gone, a restart opens them.
    for partition in blocked {
        unblock(&data, "blocked", partition);
    }
    unblock(&data, "fine", 4);
    drop(raw);
    assert!(broker.stop().success());
    broker.restart();
    let mut raw = Raw::connect(&broker.address());
    assert_offline(&mut raw, "blocked", 6, &[]);
    assert_offline(&mut raw, "fine", 6, &[]);
    produce(&mut raw, "blocked", blocked[1], 0);
    assert_holds(&mut raw, "blocked", online, 1);
    assert_holds(&mut raw, "fine", 5, 1);
}
