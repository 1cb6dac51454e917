//! Three brokers on loopback, one process each (`--cores 1`), each a broker and a voter of
//! the controller quorum, as Kafka's combined KRaft mode runs them: replicas placed on all
//! three, leaders that move when a leader's process is killed (and clients that follow),
//! a restarted broker that rejoins, a killed active controller whose quorum goes on, and
//! group coordinators that move with their `__consumer_offsets` partition.
//!
//! And the data: followers copy their leaders' logs, acks=all waits for the in-sync
//! replicas, and an idempotent acks=all stream survives its leaders being SIGKILLed, again
//! and again, with every acknowledged message readable exactly once at its offset, the
//! replicas' logs never diverging, and each killed broker back in the ISR.

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
    start_cluster_with(dir, count, &[])
}

/// [`start_cluster`] with more `--set` properties for every broker.
fn start_cluster_with(dir: &std::path::Path, count: i32, extra: &[&str]) -> Vec<Broker> {
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
                let args: Vec<String> = args
                    .into_iter()
                    .chain(extra.iter().flat_map(|set| ["--set".to_string(), set.to_string()]))
                    .collect();
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
    create_topic_with(address, name, partitions, replication_factor, &[])
}

fn create_topic_with(
    address: &str,
    name: &str,
    partitions: i32,
    replication_factor: i16,
    configs: &[(&str, &str)],
) -> (i16, Option<String>) {
    use kafka_protocol::messages::create_topics_request::CreatableTopicConfig;
    let mut topic = CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_string(name.to_string()));
    topic.num_partitions = partitions;
    topic.replication_factor = replication_factor;
    topic.configs = configs
        .iter()
        .map(|(name, value)| {
            let mut config = CreatableTopicConfig::default();
            config.name = StrBytes::from_string(name.to_string());
            config.value = Some(StrBytes::from_string(value.to_string()));
            config
        })
        .collect();
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

/// Waits until every partition of `topic` has a leader other than `not` and an ISR of
/// `isr` members, as `address` sees it; returns the partitions' state.
fn until_isr(
    address: &str,
    topic: &str,
    isr: usize,
    not: i32,
    seconds: u64,
) -> BTreeMap<i32, (i32, i32, Vec<i32>, Vec<i32>)> {
    let response = until_metadata(address, Some(&[topic]), seconds, "leaders and ISRs", |m| {
        m.topics[0].error_code == 0
            && m.topics[0]
                .partitions
                .iter()
                .all(|p| p.leader_id.0 >= 0 && p.leader_id.0 != not && p.isr_nodes.len() == isr)
    });
    leaders(&response)
}

/// Replication factor 3, `min.insync.replicas` 2, an idempotent acks=all librdkafka
/// producer (5 requests in flight) streaming to three partitions while the leader of
/// partition 0 is SIGKILLed, three times: each time new leaders come from the ISRs, the
/// producer goes on, the killed broker restarts and its replicas catch up and rejoin the
/// ISR. Afterwards every acknowledged message is read exactly once, at the offset its
/// acknowledgement gave, offsets dense; with two brokers down acks=all is refused and
/// nothing is acknowledged; and the three replicas' logs of each partition agree byte for
/// byte (one is a prefix of the other where a follower had not fetched the last batch).
#[test]
fn acks_all_messages_survive_repeated_leader_kills() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use crate::kafka::{send_waiting, Reports};

    let dir = tempfile::tempdir().unwrap();
    let mut brokers = start_cluster_with(dir.path(), 3, &["replica.lag.time.max.ms=5000"]);
    let first = brokers[0].address();
    until_metadata(&first, None, 30, "three live brokers", |m| m.brokers.len() == 3);
    let configs = [("min.insync.replicas", "2")];
    assert_eq!(create_topic_with(&first, "durable", 3, 3, &configs).0, 0);
    until_isr(&first, "durable", 3, -1, 30);

    let bootstrap: String = brokers.iter().map(Broker::address).collect::<Vec<_>>().join(",");
    let stop = Arc::new(AtomicBool::new(false));
    let producing = {
        let stop = stop.clone();
        let bootstrap = bootstrap.clone();
        std::thread::spawn(move || {
            let producer: BaseProducer<Reports> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("max.in.flight.requests.per.connection", "5")
                .set("linger.ms", "2")
                .set("message.timeout.ms", "120000")
                .set("request.timeout.ms", "10000")
                .create_with_context(Reports::default())
                .unwrap();
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{sent}");
                let value = format!("m{sent:08}");
                let record = BaseRecord::with_opaque_to("durable", Box::new(sent))
                    .partition(i32::try_from(sent % 3).unwrap())
                    .key(&key)
                    .payload(&value);
                send_waiting(&producer, record);
                producer.poll(Duration::ZERO);
                sent += 1;
                if sent % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            producer.flush(Duration::from_secs(150)).unwrap();
            let reports = producer.context();
            let delivered = reports.delivered.lock().unwrap().clone();
            let failed = reports.failed.lock().unwrap().clone();
            (sent, delivered, failed)
        })
    };

    let mut victims = Vec::new();
    for round in 0..3 {
        std::thread::sleep(Duration::from_secs(2));
        let state = until_isr(&first, "durable", 3, -1, 90);
        let victim = state[&0].0;
        victims.push(victim);
        let killed_at = Instant::now();
        brokers[index_of(victim)].kill();
        let survivor = brokers[index_of((victim % 3) + 1)].address();
        until_isr(&survivor, "durable", 2, victim, 30);
        eprintln!(
            "replication round {round}: broker {victim} killed, new leaders after {:?}",
            killed_at.elapsed()
        );
        std::thread::sleep(Duration::from_secs(1));
        brokers[index_of(victim)].restart();
        let restarted_at = Instant::now();
        until_isr(&survivor, "durable", 3, -1, 90);
        eprintln!(
            "replication round {round}: broker {victim} back in every ISR after {:?}",
            restarted_at.elapsed()
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (sent, delivered, failed) = producing.join().unwrap();
    eprintln!(
        "replication: {sent} sent, {} acknowledged, {} failed, victims {victims:?}",
        delivered.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "an idempotent producer's messages fail only on timeout: {failed:?}"
    );
    assert_eq!(delivered.len(), sent);

    // Every acknowledged message, exactly once, at its offset; offsets dense.
    let consumer = crate::kafka::consumer(&first);
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..3 {
        assignment.add_partition_offset("durable", partition, rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut read: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while read.len() < sent && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            let value = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
            let previous = read.insert((message.partition(), message.offset()), value);
            assert!(previous.is_none(), "offset {} read twice", message.offset());
        }
    }
    assert_eq!(read.len(), sent, "every acknowledged message is readable");
    let mut ids = std::collections::BTreeSet::new();
    for (id, partition, offset) in &delivered {
        let value = &read[&(*partition, *offset)];
        assert_eq!(value, &format!("m{id:08}"), "message {id} at {partition}/{offset}");
        assert!(ids.insert(*id));
    }
    for partition in 0..3 {
        let offsets: Vec<i64> =
            read.keys().filter(|(p, _)| *p == partition).map(|(_, o)| *o).collect();
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "dense offsets");
    }
    drop(consumer);

    // Replication factor 2 and min.insync.replicas 2: with the follower down the ISR
    // shrinks to the leader and acks=all is refused before anything is written
    // (NOT_ENOUGH_REPLICAS); with it back in the ISR, accepted again.
    assert_eq!(create_topic_with(&first, "pair", 1, 2, &configs).0, 0);
    let state = until_isr(&first, "pair", 2, -1, 30);
    let (leader, _, replicas, _) = state[&0].clone();
    let follower = *replicas.iter().find(|&&r| r != leader).unwrap();
    // The leader itself has applied the placement (metadata reaches brokers one by one).
    until_isr(&brokers[index_of(leader)].address(), "pair", 2, -1, 30);
    let mut raw = Raw::connect(&brokers[index_of(leader)].address());
    let code = |response: kafka_protocol::messages::ProduceResponse| {
        response.responses[0].partition_responses[0].error_code
    };
    // The partition opens on the leader just after its placement is visible: retried as
    // clients retry UNKNOWN_TOPIC_OR_PARTITION.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = code(raw.produce("pair", 0, batch(&["both"])));
        if answer == 0 || Instant::now() > deadline {
            assert_eq!(answer, 0);
            break;
        }
        assert_eq!(answer, 3, "only UNKNOWN_TOPIC_OR_PARTITION while the partition opens");
        std::thread::sleep(Duration::from_millis(50));
    }
    brokers[index_of(follower)].kill();
    until_isr(&brokers[index_of(leader)].address(), "pair", 1, -1, 30);
    assert_eq!(code(raw.produce("pair", 0, batch(&["alone"]))), 19, "NOT_ENOUGH_REPLICAS");
    brokers[index_of(follower)].restart();
    until_isr(&brokers[index_of(leader)].address(), "pair", 2, -1, 60);
    assert_eq!(code(raw.produce("pair", 0, batch(&["again"]))), 0);

    // Reassignment moves the data: the pair's follower is replaced by the third broker,
    // which copies the log from the leader, joins the ISR, and completes the move (the
    // replaced replica's directory goes).
    let third = (1..=3).find(|node| !replicas.contains(node)).unwrap();
    let target = format!("{leader},{third}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["topic", "reassign", "--topic", "pair", "--partition", "0", "--replicas", &target])
        .args(["--brokers", &first])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let moved = until_metadata(&first, Some(&["pair"]), 60, "the pair moved", |m| {
        let p = &m.topics[0].partitions[0];
        let mut replicas: Vec<i32> = p.replica_nodes.iter().map(|b| b.0).collect();
        replicas.sort_unstable();
        let mut expected = vec![leader, third];
        expected.sort_unstable();
        replicas == expected && p.isr_nodes.len() == 2
    });
    eprintln!("replication: pair reassigned to {:?}", leaders(&moved)[&0]);
    let gone = dir.path().join(format!("node-{follower}/pair-0"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while gone.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!gone.exists(), "the replaced replica's directory is deleted");

    // Two of three brokers down (the quorum with them): acks=all is never acknowledged.
    let kept = leader;
    for node in (1..=3).filter(|&node| node != kept) {
        brokers[index_of(node)].kill();
    }
    let mut raw = Raw::connect(&brokers[index_of(kept)].address());
    for partition in 0..3 {
        let mut request = crate::harness::produce_request("durable", partition, batch(&["no"]));
        request.timeout_ms = 2_000;
        let answer = raw.send(&request, 9);
        let error = answer.responses[0].partition_responses[0].error_code;
        assert_ne!(error, 0, "partition {partition}: acknowledged with two brokers down");
    }
    for node in (1..=3).filter(|&node| node != kept) {
        brokers[index_of(node)].restart();
    }
    until_isr(&brokers[index_of(kept)].address(), "durable", 3, -1, 90);

    // The replicas agree: per partition, each broker's log is a prefix of the longest.
    for broker in &mut brokers {
        assert!(broker.stop().success());
    }
    // A clean stop checkpoints the high watermarks, where a replicated partition's
    // starts at the next open.
    for node in 1..=3 {
        let path = dir.path().join(format!("node-{node}/replication-offset-checkpoint"));
        let text = std::fs::read_to_string(&path).unwrap();
        for partition in 0..3 {
            assert!(text.contains(&format!("durable {partition} ")), "{path:?}: {text}");
        }
    }
    let mut compared = vec![("durable", 0, vec![1, 2, 3]), ("durable", 1, vec![1, 2, 3])];
    compared.push(("durable", 2, vec![1, 2, 3]));
    compared.push(("pair", 0, vec![leader, third]));
    for (topic, partition, nodes) in compared {
        let logs: Vec<Vec<u8>> = nodes
            .iter()
            .map(|node| {
                let partition_dir = dir.path().join(format!("node-{node}/{topic}-{partition}"));
                let mut files: Vec<_> = std::fs::read_dir(&partition_dir)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == "log"))
                    .collect();
                files.sort();
                files.iter().flat_map(|f| std::fs::read(f).unwrap()).collect()
            })
            .collect();
        let longest = logs.iter().map(Vec::len).max().unwrap();
        assert!(logs.iter().all(|log| !log.is_empty()), "{topic}-{partition}: a replica is empty");
        for (node, log) in logs.iter().enumerate() {
            let reference = logs.iter().find(|l| l.len() == longest).unwrap();
            assert!(
                reference.starts_with(log),
                "{topic}-{partition}: node {}'s log diverges from the longest",
                nodes[node]
            );
        }
    }
}

/// Transactions and a consumer group across SIGKILLs, replication factor 3: a
/// transactional producer commits batch after batch while the leader of its data
/// partition is killed mid-transaction and the transaction coordinator's broker later;
/// a transaction that fails is aborted and sent again. A read_committed group consumer
/// sees every committed message exactly once and nothing aborted; after the broker
/// leading the group's `__consumer_offsets` partition is killed, the group resumes from
/// the offsets it committed (the new coordinator has them: the internal topics replicate).
#[test]
fn transactions_and_groups_go_on_across_leader_kills() {
    use rdkafka::error::KafkaError;
    use std::collections::BTreeSet;

    let dir = tempfile::tempdir().unwrap();
    let mut brokers = start_cluster(dir.path(), 3);
    let first = brokers[0].address();
    until_metadata(&first, None, 30, "three live brokers", |m| m.brokers.len() == 3);
    let configs = [("min.insync.replicas", "2")];
    assert_eq!(create_topic_with(&first, "txns", 2, 3, &configs).0, 0);
    let state = until_isr(&first, "txns", 3, -1, 30);
    let bootstrap: String = brokers.iter().map(Broker::address).collect::<Vec<_>>().join(",");

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", "replicated-txn")
        .set("transaction.timeout.ms", "60000")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(60)).unwrap();
    let mut committed: BTreeSet<String> = BTreeSet::new();
    let mut aborted = 0;
    let data_leader = state[&0].0;
    let mut killed: Vec<i32> = Vec::new();
    for round in 0..24 {
        if round == 16 {
            // The transaction coordinator's broker (the leader of the id's
            // __transaction_state partition).
            let mut find = FindCoordinatorRequest::default();
            find.key = StrBytes::from_static_str("replicated-txn");
            find.key_type = 1;
            let alive = brokers[index_of((killed[0] % 3) + 1)].address();
            let coordinator = Raw::connect(&alive).send(&find, 3).node_id.0;
            brokers[index_of(coordinator)].kill();
            killed.push(coordinator);
        }
        let values: Vec<String> = (0..20).map(|i| format!("t{round:02}-{i:02}")).collect();
        let result = (|| -> Result<(), KafkaError> {
            producer.begin_transaction()?;
            for (i, value) in values.iter().enumerate() {
                let partition = i32::try_from(i % 2).unwrap();
                crate::kafka::send_waiting(
                    &producer,
                    BaseRecord::to("txns").partition(partition).key(value).payload(value),
                );
                if round == 8 && i == 10 {
                    // Mid-transaction: the data partition's leader dies.
                    brokers[index_of(data_leader)].kill();
                    killed.push(data_leader);
                }
            }
            producer.commit_transaction(Duration::from_secs(60))
        })();
        match result {
            Ok(()) => committed.extend(values),
            Err(error) if error.rdkafka_error_code().is_some() => {
                eprintln!("transaction round {round} failed: {error}; aborting");
                producer.abort_transaction(Duration::from_secs(60)).unwrap();
                aborted += 1;
            }
            Err(error) => panic!("round {round}: {error}"),
        }
        if round == 12 || round == 20 {
            let back = killed[killed.len() - 1];
            brokers[index_of(back)].restart();
        }
    }
    eprintln!(
        "transactions: {} committed messages, {aborted} aborted transactions",
        committed.len()
    );
    assert!(committed.len() >= 20 * 20, "most transactions commit");
    drop(producer);
    until_isr(&first, "txns", 3, -1, 90);

    let consume = |expected: usize, seconds: u64| -> Vec<String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "replicated-group")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&["txns"]).unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < deadline && (seen.len() < expected || expected == 0) {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    seen.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap())
                }
                // A killed broker in the bootstrap list: librdkafka reports it and goes on.
                Some(Err(error)) => eprintln!("consumer: {error}"),
                None => {}
            }
        }
        if !seen.is_empty() {
            consumer.commit_consumer_state(CommitMode::Sync).unwrap();
        }
        seen
    };
    let seen = consume(committed.len(), 60);
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a committed message read twice");
    assert_eq!(unique, committed, "read_committed shows exactly the committed messages");

    // The group's coordinator dies; the group resumes where it committed.
    let offsets = until_metadata(&first, Some(&["__consumer_offsets"]), 10, "offsets", |m| {
        m.topics[0].error_code == 0
    });
    let group_partition = sluice_net::group::offsets_partition("replicated-group", 50);
    let coordinator = leaders(&offsets)[&group_partition].0;
    brokers[index_of(coordinator)].kill();
    let observer = brokers[index_of((coordinator % 3) + 1)].address();
    until_metadata(&observer, Some(&["__consumer_offsets"]), 30, "a new coordinator", |m| {
        m.topics[0]
            .partitions
            .iter()
            .find(|p| p.partition_index == group_partition)
            .is_some_and(|p| p.leader_id.0 >= 0 && p.leader_id.0 != coordinator)
    });
    let again = consume(0, 8);
    assert!(again.is_empty(), "the group starts from its committed offsets: {} read", again.len());
}
