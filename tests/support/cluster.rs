//! Three brokers on loopback, one process each (`--cores 1`), each a broker and a voter of
//! the controller quorum, as Kafka's combined KRaft mode runs them: replicas placed on all
//! three, leaders that move when a leader's process is killed (and clients that follow),
//! a restarted broker that rejoins, a killed active controller whose quorum goes on, and
//! group coordinators that move with their `__consumer_offsets` partition.
//!
//! Data does not move yet: a new leader starts from its own replica, which replication
//! fills; these tests check the control plane, not what a follower holds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::{
    CreateTopicsRequest, DescribeQuorumRequest, FindCoordinatorRequest, MetadataRequest,
    MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;

use crate::harness::{free_port, Broker, Raw};
use crate::kafka::{batch, fetch_request};

const SESSION_TIMEOUT_MS: u64 = 3_000;

/// Starts `count` brokers, all voters, in parallel (each waits for a quorum to join).
fn start_cluster(dir: &std::path::Path, count: i32) -> Vec<Broker> {
    let controller_ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
    let voters: Vec<String> = controller_ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("{}@127.0.0.1:{port}", i + 1))
        .collect();
    let voters = voters.join(",");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|i| {
                let args = vec![
                    "--cores".to_string(),
                    "1".to_string(),
                    "--set".to_string(),
                    format!("node.id={}", i + 1),
                    "--set".to_string(),
                    "process.roles=broker,controller".to_string(),
                    "--set".to_string(),
                    format!("listeners=CONTROLLER://127.0.0.1:{}", controller_ports[i as usize]),
                    "--set".to_string(),
                    "controller.listener.names=CONTROLLER".to_string(),
                    "--set".to_string(),
                    format!("controller.quorum.voters={voters}"),
                    "--set".to_string(),
                    format!("broker.session.timeout.ms={SESSION_TIMEOUT_MS}"),
                    "--set".to_string(),
                    "broker.heartbeat.interval.ms=500".to_string(),
                    // Three brokers share the tests' two cores: none polls while idle.
                    "--set".to_string(),
                    "reactor.idle.poll.us=0".to_string(),
                ];
                let data_dir = dir.join(format!("node-{}", i + 1));
                scope.spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    Broker::start(&data_dir, &args)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn metadata(address: &str, topics: Option<&[&str]>) -> MetadataResponse {
    let mut request = MetadataRequest::default();
    request.topics = topics.map(|names| {
        names
            .iter()
            .map(|name| {
                let mut topic =
                    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default();
                topic.name = Some(TopicName(StrBytes::from_string(name.to_string())));
                topic
            })
            .collect()
    });
    request.allow_auto_topic_creation = false;
    Raw::connect(address).send(&request, 12)
}

/// Polls Metadata at `address` until `check` holds, or panics after `seconds`.
fn until_metadata(
    address: &str,
    topics: Option<&[&str]>,
    seconds: u64,
    what: &str,
    check: impl Fn(&MetadataResponse) -> bool,
) -> MetadataResponse {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let response = metadata(address, topics);
        if check(&response) {
            return response;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {response:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn create_topic(
    address: &str,
    name: &str,
    partitions: i32,
    replication_factor: i16,
) -> (i16, Option<String>) {
    let mut topic = CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_string(name.to_string()));
    topic.num_partitions = partitions;
    topic.replication_factor = replication_factor;
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = 30_000;
    let response = Raw::connect(address).send(&request, 7);
    let answer = &response.topics[0];
    (answer.error_code, answer.error_message.as_ref().map(|m| m.to_string()))
}

/// The leader, leader epoch and replicas of each partition of `topic`.
fn leaders(response: &MetadataResponse) -> BTreeMap<i32, (i32, i32, Vec<i32>, Vec<i32>)> {
    response.topics[0]
        .partitions
        .iter()
        .map(|p| {
            (
                p.partition_index,
                (
                    p.leader_id.0,
                    p.leader_epoch,
                    p.replica_nodes.iter().map(|b| b.0).collect(),
                    p.isr_nodes.iter().map(|b| b.0).collect(),
                ),
            )
        })
        .collect()
}

fn active_controller(address: &str) -> i32 {
    let mut partition = PartitionData::default();
    partition.partition_index = 0;
    let mut topic = TopicData::default();
    topic.topic_name = TopicName(StrBytes::from_static_str("__cluster_metadata"));
    topic.partitions = vec![partition];
    let mut request = DescribeQuorumRequest::default();
    request.topics = vec![topic];
    let response = Raw::connect(address).send(&request, 1);
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.error_code, 0, "{response:?}");
    assert_eq!(partition.current_voters.len(), 3);
    partition.leader_id.0
}

/// The index in the cluster's brokers of node `node` (nodes are 1, 2, 3).
fn index_of(node: i32) -> usize {
    usize::try_from(node - 1).unwrap()
}

#[test]
fn three_brokers_place_replicas_elect_leaders_and_survive_a_killed_controller() {
    let dir = tempfile::tempdir().unwrap();
    let mut brokers = start_cluster(dir.path(), 3);
    let first = brokers[0].address();
    until_metadata(&first, None, 30, "three live brokers", |m| m.brokers.len() == 3);

    // Replication factor 3: every partition on all three, leaders spread evenly.
    assert_eq!(create_topic(&first, "replicated", 6, 3).0, 0);
    let (code, message) = create_topic(&first, "too-many", 1, 4);
    assert_eq!(code, 38, "INVALID_REPLICATION_FACTOR: {message:?}");
    let response = until_metadata(
        &brokers[1].address(),
        Some(&["replicated"]),
        30,
        "the topic on another broker",
        |m| m.topics[0].error_code == 0 && m.topics[0].partitions.len() == 6,
    );
    let placed = leaders(&response);
    let mut led = BTreeMap::new();
    for (leader, epoch, replicas, isr) in placed.values() {
        let mut sorted = replicas.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![1, 2, 3]);
        assert_eq!(isr.len(), 3);
        assert_eq!(*epoch, 0);
        *led.entry(*leader).or_insert(0) += 1;
    }
    assert_eq!(led.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "{placed:?}");

    // Each partition is written and read at its leader; a follower sends clients away.
    for (&partition, (leader, ..)) in &placed {
        let mut raw = Raw::connect(&brokers[index_of(*leader)].address());
        let produced = raw.produce("replicated", partition, batch(&["a", "b"]));
        assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
        let follower = (leader % 3) + 1;
        let mut away = Raw::connect(&brokers[index_of(follower)].address());
        let produced = away.produce("replicated", partition, batch(&["x"]));
        assert_eq!(
            produced.responses[0].partition_responses[0].error_code, 6,
            "NOT_LEADER_OR_FOLLOWER"
        );
        let fetched = away.send(&fetch_request("replicated", &[(partition, 0)], 0), 12);
        let answer = &fetched.responses[0].partitions[0];
        assert_eq!(answer.error_code, 6);
        assert_eq!(answer.current_leader.leader_id.0, *leader, "KIP-951: where the leader is");
    }

    // Real clients follow the leaders: librdkafka produces to all six and a group
    // consumes everything (its coordinator is the leader of its offsets partition).
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &first)
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    for i in 0..600 {
        let key = format!("k{i}");
        let value = format!("v{i}");
        producer.send(BaseRecord::to("replicated").key(&key).payload(&value)).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers[2].address())
        .set("group.id", "cluster-group")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["replicated"]).unwrap();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < 600 + 12 && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            assert!(message.payload().is_some());
            seen += 1;
        }
    }
    assert_eq!(seen, 612, "600 from librdkafka and 2 per partition from the raw producer");
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    drop(consumer);
    let mut find = FindCoordinatorRequest::default();
    find.key = StrBytes::from_static_str("cluster-group");
    let coordinator = Raw::connect(&first).send(&find, 3);
    assert_eq!(coordinator.error_code, 0);
    let offsets = until_metadata(&first, Some(&["__consumer_offsets"]), 10, "offsets topic", |m| {
        m.topics[0].error_code == 0
    });
    let group_partition = sluice_net::group::offsets_partition("cluster-group", 50);
    let offsets_leader = leaders(&offsets)[&group_partition].0;
    assert_eq!(
        coordinator.node_id.0, offsets_leader,
        "the coordinator leads the group's partition"
    );

    // SIGKILL the leader of partition 0: after the session timeout its partitions get new
    // leaders from their ISRs, with the leader epoch bumped.
    let (victim, epoch, ..) = placed[&0].clone();
    let killed_at = Instant::now();
    brokers[index_of(victim)].kill();
    let survivor = brokers[index_of((victim % 3) + 1)].address();
    let moved =
        until_metadata(&survivor, Some(&["replicated"]), 30, "a new leader for partition 0", |m| {
            m.topics[0].partitions.iter().all(|p| p.leader_id.0 != victim && p.leader_id.0 >= 0)
        });
    let elapsed = killed_at.elapsed();
    eprintln!("cluster: SIGKILL of broker {victim} to new leaders in Metadata: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(SESSION_TIMEOUT_MS + 3_000), "{elapsed:?}");
    assert!(!moved.brokers.iter().any(|b| b.node_id.0 == victim), "a fenced broker is not listed");
    let after = leaders(&moved);
    assert_eq!(after[&0].1, epoch + 1, "one leader change, one epoch");
    assert!(after.values().all(|(_, _, _, isr)| !isr.contains(&victim)));
    // The group's coordinator moved too if its leader was the victim.
    let coordinator = Raw::connect(&survivor).send(&find, 3);
    assert_eq!(coordinator.error_code, 0);
    assert_ne!(coordinator.node_id.0, victim);

    // The killed broker restarts and rejoins: listed again, leading nothing until elected.
    brokers[index_of(victim)].restart();
    until_metadata(&survivor, None, 30, "the restarted broker listed", |m| m.brokers.len() == 3);

    // kafka-python on the cluster: a topic with replication factor 3 created through its
    // admin client, produced with acks=all to the partitions' leaders, consumed in a group
    // whose coordinator may be any of the brokers.
    crate::harness::run_python(
        &brokers[index_of(victim)],
        "kafka_python_cluster.py",
        &["py-topic", "py-group", "300"],
        "kafka-python cluster OK",
    );

    // SIGTERM of a leader: controlled shutdown moves its leaderships to the other in-sync
    // replicas before it stops.
    let stopping = (victim % 3) + 1;
    let observer = brokers[index_of((stopping % 3) + 1)].address();
    let stopped_at = Instant::now();
    assert!(brokers[index_of(stopping)].stop().success());
    eprintln!("cluster: controlled shutdown of broker {stopping}: {:?}", stopped_at.elapsed());
    let response = metadata(&observer, Some(&["replicated"]));
    assert!(
        leaders(&response).values().all(|(leader, ..)| *leader != stopping && *leader >= 0),
        "no partition is led by the stopped broker: {response:#?}"
    );
    brokers[index_of(stopping)].restart();
    until_metadata(&observer, None, 30, "the stopped broker listed again", |m| {
        m.brokers.len() == 3
    });

    // SIGKILL the active controller's process: the other two elect a new one, which
    // takes new topics.
    let controller = active_controller(&survivor);
    let killed_at = Instant::now();
    brokers[index_of(controller)].kill();
    let other = brokers[index_of((controller % 3) + 1)].address();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, message) = create_topic(&other, "after-controller", 2, 2);
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no new controller: {code} {message:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = killed_at.elapsed();
    eprintln!(
        "cluster: SIGKILL of the active controller {controller} to a topic created: {elapsed:?}"
    );
    assert_ne!(active_controller(&other), controller);

    // The admin CLI sees the same cluster: three replicas per partition, three voters.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .args(["--brokers", &other])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "sluice {args:?}: {stderr}");
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let described = cli(&["topic", "describe", "replicated"]);
    let partitions: Vec<Vec<&str>> = described
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|row| row.len() == 6 && row[0] == "replicated")
        .collect();
    assert_eq!(partitions.len(), 6, "{described}");
    for row in &partitions {
        let mut replicas: Vec<&str> = row[3].split(',').collect();
        replicas.sort_unstable();
        assert_eq!(replicas, ["1", "2", "3"], "{described}");
    }
    let info = cli(&["cluster", "info"]);
    let voters = info
        .lines()
        .skip_while(|line| !line.starts_with("NODE"))
        .skip(1)
        .take_while(|line| !line.is_empty())
        .filter(|line| !line.contains("observer"))
        .count();
    assert_eq!(voters, 3, "{info}");
}

/// A data dir of a one-node Sluice from before the controller quorum (its metadata log
/// and a partition holding records) is upgraded in place at the first start: the topic,
/// its configs and its records are there, the partition led by this node, and the old
/// log is kept as `metadata.log.adopted` and not adopted twice.
#[test]
fn a_one_node_data_dir_from_before_the_quorum_is_upgraded_in_place() {
    use sluice_engine::metadata::{MetadataLog, MetadataRecord, METADATA_DIR, METADATA_FILE};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    {
        let (mut log, mut image) = MetadataLog::open(&data).unwrap();
        let create = MetadataRecord::CreateTopic {
            name: "old".into(),
            topic_id: [9; 16],
            partitions: 2,
            replication_factor: 1,
            configs: vec![("retention.ms".into(), "123456".into())],
        };
        log.commit(&mut image, &create).unwrap();
    }
    let mut broker = Broker::start(&data, &["--cores", "1"]);
    let mut raw = Raw::connect(&broker.address());
    let produced = raw.produce("old", 1, batch(&["kept"]));
    assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
    let response = metadata(&broker.address(), Some(&["old"]));
    assert_eq!(response.topics[0].error_code, 0);
    assert_eq!(response.topics[0].topic_id.as_bytes(), &[9u8; 16]);
    let placed = leaders(&response);
    assert_eq!(placed.len(), 2);
    assert!(placed
        .values()
        .all(|(leader, epoch, replicas, _)| *leader == 0 && *epoch == 0 && replicas == &[0]));
    let metadata_dir = data.join(METADATA_DIR);
    assert!(!metadata_dir.join(METADATA_FILE).exists());
    assert!(metadata_dir.join(format!("{METADATA_FILE}.adopted")).exists());
    // Restarted: the quorum's log has it; nothing adopted again, the record still there.
    broker.stop();
    broker.restart();
    let mut raw = Raw::connect(&broker.address());
    let records = crate::kafka::fetch_records(&mut raw, "old", 1);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1, b"kept");
    assert_eq!(broker.log().matches("adopting the one-node metadata").count(), 1, "adopted once");
}
