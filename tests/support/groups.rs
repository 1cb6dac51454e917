//! Consumer groups with real clients: librdkafka consumers as child processes (so one can
//! be SIGKILLed without leaving the group), kafka-python, and the raw protocol client for
//! the exact errors of the group protocol.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest, GroupId, HeartbeatRequest,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest,
    OffsetDeleteRequest, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::harness::{Broker, Raw};

// Error codes the tests expect.
const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const INVALID_GROUP_ID: i16 = 24;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const REBALANCE_IN_PROGRESS: i16 = 27;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;
const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;

/// Broker flags for group tests: a short initial rebalance delay keeps them quick.
const GROUP_BROKER_ARGS: &[&str] = &["--set", "group.initial.rebalance.delay.ms=300"];

fn sb(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// Produces `count` messages `"{tag}-{i}"` keyed `k{i}` to `topic` with acks=all.
fn produce(address: &str, topic: &str, tag: &str, count: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("enable.idempotence", "false")
        .create()
        .unwrap();
    for i in 0..count {
        let key = format!("k{i}");
        let value = format!("{tag}-{i}");
        crate::kafka::send_waiting(&producer, BaseRecord::to(topic).key(&key).payload(&value));
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

// ---- a librdkafka group member in a child process ----

/// The child side: when the test binary runs with `SLUICE_GROUP_MEMBER` set, this
/// ignored test is the entry point of a consumer process (see [`Member::spawn`]). It
/// prints `ASSIGNED t:p,...` whenever its assignment changes, `MSG p offset value` per
/// message, commits synchronously every 100 ms, and on `stop` on stdin commits, closes
/// (leaving the group) and exits.
#[test]
#[ignore = "entry point of the child consumer process of the group tests"]
fn group_member_process() {
    let Ok(bootstrap) = std::env::var("SLUICE_GROUP_MEMBER") else { return };
    let topic = std::env::var("SLUICE_TOPIC").unwrap();
    let group = std::env::var("SLUICE_GROUP").unwrap();
    let strategy = std::env::var("SLUICE_STRATEGY").unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("client.id", "sluice-group-member")
        .set("partition.assignment.strategy", &strategy)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
                if line.trim() == "stop" {
                    break;
                }
                line.clear();
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let out = std::io::stdout();
    let mut last_assignment = String::from("-");
    let mut uncommitted = false;
    let mut last_commit = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let value = String::from_utf8_lossy(message.payload().unwrap_or(b"")).to_string();
                writeln!(out.lock(), "MSG {} {} {value}", message.partition(), message.offset())
                    .unwrap();
                consumer.store_offset_from_message(&message).ok();
                uncommitted = true;
            }
            Some(Err(error)) => eprintln!("consumer error: {error}"),
            None => {}
        }
        let assignment = consumer.assignment().unwrap();
        let mut partitions: Vec<i32> =
            assignment.elements().iter().map(|e| e.partition()).collect();
        partitions.sort();
        let text = partitions.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        if text != last_assignment {
            writeln!(out.lock(), "ASSIGNED {text}").unwrap();
            last_assignment = text;
        }
        if uncommitted && last_commit.elapsed() > Duration::from_millis(100) {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => uncommitted = false,
                Err(error) => eprintln!("commit failed (retrying): {error}"),
            }
            last_commit = Instant::now();
        }
    }
    if uncommitted {
        consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    }
    writeln!(out.lock(), "STOPPED").unwrap();
    drop(consumer);
}

#[derive(Default)]
struct Seen {
    /// The latest assignment line (None until the first).
    assigned: Option<Vec<i32>>,
    /// (partition, offset, value) in arrival order.
    messages: Vec<(i32, i64, String)>,
    stopped: bool,
}

/// A consumer child process and what it printed so far.
struct Member {
    child: Child,
    stdin: Option<ChildStdin>,
    seen: Arc<Mutex<Seen>>,
}

impl Member {
    fn spawn(address: &str, topic: &str, group: &str, strategy: &str) -> Member {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "groups::group_member_process", "--nocapture"])
            .arg("--test-threads=1")
            .env("SLUICE_GROUP_MEMBER", address)
            .env("SLUICE_TOPIC", topic)
            .env("SLUICE_GROUP", group)
            .env("SLUICE_STRATEGY", strategy)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut seen = sink.lock().unwrap();
                if let Some(rest) = line.strip_prefix("ASSIGNED ") {
                    seen.assigned = Some(
                        rest.split(',')
                            .filter(|p| !p.is_empty())
                            .map(|p| p.parse().unwrap())
                            .collect(),
                    );
                } else if let Some(rest) = line.strip_prefix("MSG ") {
                    let mut parts = rest.splitn(3, ' ');
                    let partition = parts.next().unwrap().parse().unwrap();
                    let offset = parts.next().unwrap().parse().unwrap();
                    seen.messages.push((partition, offset, parts.next().unwrap().to_string()));
                } else if line == "STOPPED" {
                    seen.stopped = true;
                }
            }
        });
        Member { child, stdin, seen }
    }

    fn assigned(&self) -> Option<Vec<i32>> {
        self.seen.lock().unwrap().assigned.clone()
    }

    fn messages(&self) -> Vec<(i32, i64, String)> {
        self.seen.lock().unwrap().messages.clone()
    }

    /// Asks the member to commit, leave the group and exit; waits for it.
    fn stop(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "consumer did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(self.seen.lock().unwrap().stopped, "consumer exited without its final commit");
    }

    /// SIGKILL: no LeaveGroup, no final commit.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the members' latest assignments split `partitions` between them: sizes
/// as in `sizes` (any order), disjoint, covering all. Returns how long it took.
fn wait_for_split(
    members: &[&Member],
    partitions: i32,
    sizes: &[usize],
    broker: &Broker,
) -> Duration {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    loop {
        let assignments: Vec<Option<Vec<i32>>> = members.iter().map(|m| m.assigned()).collect();
        if assignments.iter().all(Option::is_some) {
            let assignments: Vec<Vec<i32>> = assignments.into_iter().flatten().collect();
            let mut got: Vec<usize> = assignments.iter().map(Vec::len).collect();
            got.sort();
            let mut want = sizes.to_vec();
            want.sort();
            let union: BTreeSet<i32> = assignments.iter().flatten().copied().collect();
            let total: usize = assignments.iter().map(Vec::len).sum();
            if got == want && total == partitions as usize && union.len() == partitions as usize {
                return start.elapsed();
            }
        }
        assert!(
            Instant::now() < deadline,
            "assignments did not converge to {sizes:?}: {:?}\nbroker log:\n{}",
            members.iter().map(|m| m.assigned()).collect::<Vec<_>>(),
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the members together consumed every value in `expected`.
fn wait_for_values(members: &[&Member], expected: &BTreeSet<String>, broker: &Broker) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen: BTreeSet<String> =
            members.iter().flat_map(|m| m.messages()).map(|(_, _, v)| v).collect();
        let missing = expected.difference(&seen).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} messages never consumed\nbroker log:\n{}",
            expected.len(),
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn values(tag: &str, count: usize) -> BTreeSet<String> {
    (0..count).map(|i| format!("{tag}-{i}")).collect()
}

/// Committed offsets of `group` for partitions `0..partitions` of `topic` (OffsetFetch v8).
fn committed(raw: &mut Raw, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let mut request = OffsetFetchRequest::default();
    let mut asked = OffsetFetchRequestGroup::default();
    asked.group_id = GroupId(sb(group));
    let mut t = OffsetFetchRequestTopics::default();
    t.name = TopicName(sb(topic));
    t.partition_indexes = (0..partitions).collect();
    asked.topics = Some(vec![t]);
    request.groups = vec![asked];
    let response: OffsetFetchResponse = raw.send(&request, 8);
    let group = &response.groups[0];
    assert_eq!(group.error_code, NONE);
    group.topics[0].partitions.iter().map(|p| p.committed_offset).collect()
}

fn end_offsets(raw: &mut Raw, topic: &str, partitions: i32) -> Vec<i64> {
    (0..partitions).map(|p| crate::kafka::latest_offset(raw, topic, p)).collect()
}

// ---- tests ----

/// Three librdkafka consumers share six partitions two each; one is SIGKILLed (no
/// LeaveGroup) and its partitions move to the others within the session timeout; every
/// message is consumed at least once; committed offsets survive a broker restart and a
/// new consumer resumes exactly there.
#[test]
fn consumer_group_splits_partitions_survives_a_killed_member_and_resumes_from_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), GROUP_BROKER_ARGS);
    let address = broker.address();
    let (topic, group, partitions) = ("group-orders", "group-main", 6);
    Raw::connect(&address).create_topic(topic, partitions, &[]);
    produce(&address, topic, "first", 3000);

    let members: Vec<Member> =
        (0..3).map(|_| Member::spawn(&address, topic, group, "range")).collect();
    let refs: Vec<&Member> = members.iter().collect();
    wait_for_split(&refs, partitions, &[2, 2, 2], &broker);
    wait_for_values(&refs, &values("first", 3000), &broker);

    // Kill one member without leaving; the others take over its partitions once its
    // session (6 s) expires.
    let mut members = members.into_iter();
    let killed = members.next().unwrap();
    let survivors: Vec<Member> = members.collect();
    let killed_at = Instant::now();
    killed.kill();
    produce(&address, topic, "second", 3000);
    let refs: Vec<&Member> = survivors.iter().collect();
    wait_for_split(&refs, partitions, &[3, 3], &broker);
    let moved_after = killed_at.elapsed();
    assert!(moved_after < Duration::from_secs(20), "partitions moved after {moved_after:?}");
    wait_for_values(&refs, &values("second", 3000), &broker);
    for member in survivors {
        member.stop();
    }

    // Everything consumed was committed: committed == log end, before and after a
    // broker restart.
    let mut raw = Raw::connect(&address);
    let ends = end_offsets(&mut raw, topic, partitions);
    assert_eq!(ends.iter().sum::<i64>(), 6000);
    assert_eq!(committed(&mut raw, group, topic, partitions), ends);
    drop(raw);
    broker.stop();
    broker.restart();
    let mut raw = Raw::connect(&address);
    assert_eq!(committed(&mut raw, group, topic, partitions), ends, "offsets after restart");

    // A new member resumes at the committed offsets: it sees only the new messages.
    produce(&address, topic, "third", 600);
    let fresh = Member::spawn(&address, topic, group, "range");
    wait_for_values(&[&fresh], &values("third", 600), &broker);
    std::thread::sleep(Duration::from_millis(300));
    let seen = fresh.messages();
    assert_eq!(seen.len(), 600, "only the messages after the commit");
    for (partition, offset, _) in &seen {
        assert!(*offset >= ends[*partition as usize], "offset {offset} of {partition} re-read");
    }
    fresh.stop();
    assert_eq!(
        committed(&mut Raw::connect(&address), group, topic, partitions).iter().sum::<i64>(),
        6600
    );
}

/// cooperative-sticky, roundrobin and range all converge to a 2/2/2 split with three
/// members, and to 3/3 when one leaves.
#[test]
fn every_assignor_converges() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), GROUP_BROKER_ARGS);
    let address = broker.address();
    let topic = "group-assignors";
    Raw::connect(&address).create_topic(topic, 6, &[]);
    for strategy in ["cooperative-sticky", "roundrobin", "range"] {
        let group = format!("group-{strategy}");
        let members: Vec<Member> =
            (0..3).map(|_| Member::spawn(&address, topic, &group, strategy)).collect();
        wait_for_split(&members.iter().collect::<Vec<_>>(), 6, &[2, 2, 2], &broker);
        let mut members = members.into_iter();
        members.next().unwrap().stop();
        let rest: Vec<Member> = members.collect();
        wait_for_split(&rest.iter().collect::<Vec<_>>(), 6, &[3, 3], &broker);
        for member in rest {
            member.stop();
        }
    }
}

/// Runs `sluice group ARGS --bootstrap-server ADDRESS`: (success, stdout, stderr).
fn group_cli(address: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("group")
        .args(args)
        .args(["--bootstrap-server", address])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    (output.status.success(), stdout, stderr)
}

/// Two groups on one topic each see every message (the seeds' broadcast case).
#[test]
fn two_groups_each_see_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), GROUP_BROKER_ARGS);
    let address = broker.address();
    let topic = "group-broadcast";
    Raw::connect(&address).create_topic(topic, 3, &[]);
    produce(&address, topic, "all", 1500);
    let a = Member::spawn(&address, topic, "broadcast-a", "range");
    let b = Member::spawn(&address, topic, "broadcast-b", "roundrobin");
    wait_for_values(&[&a], &values("all", 1500), &broker);
    wait_for_values(&[&b], &values("all", 1500), &broker);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.messages().len(), 1500);
    assert_eq!(b.messages().len(), 1500);
    // The admin CLI shows the live member on every partition, with its host and client.
    let (ok, described, stderr) = group_cli(&address, &["describe", "broadcast-a"]);
    assert!(ok, "{stderr}");
    let rows: Vec<Vec<&str>> = described
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|r| r.first() == Some(&"broadcast-a"))
        .collect();
    assert_eq!(rows.len(), 3, "{described}");
    for row in rows {
        assert_eq!(row.len(), 9, "{described}");
        assert_ne!(row[6], "-", "a consumer id: {described}");
        assert_eq!(&row[7..], ["/127.0.0.1", "sluice-group-member"], "{described}");
    }
    a.stop();
    b.stop();
    let mut raw = Raw::connect(&address);
    assert_eq!(committed(&mut raw, "broadcast-a", topic, 3).iter().sum::<i64>(), 1500);
    assert_eq!(committed(&mut raw, "broadcast-b", topic, 3).iter().sum::<i64>(), 1500);
}

/// kafka-python (an independent client) joins a group, consumes and commits; the broker
/// then shows the group and its offsets.
#[test]
fn kafka_python_joins_a_group_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), GROUP_BROKER_ARGS);
    let address = broker.address();
    let topic = "group-python";
    Raw::connect(&address).create_topic(topic, 3, &[]);
    produce(&address, topic, "py", 900);
    let args = [topic, "python-group", "900"];
    crate::harness::run_python(&broker, "kafka_python_group.py", &args, "kafka-python group ok");
    let mut raw = Raw::connect(&address);
    assert_eq!(committed(&mut raw, "python-group", topic, 3), end_offsets(&mut raw, topic, 3));
    let listed: kafka_protocol::messages::ListGroupsResponse =
        raw.send(&ListGroupsRequest::default(), 4);
    let python = listed.groups.iter().find(|g| g.group_id.0.as_str() == "python-group");
    let python = python.expect("python-group listed");
    assert_eq!(python.group_state.as_str(), "Empty");
    assert_eq!(python.protocol_type.as_str(), "consumer");

    // The admin CLI shows the same: the group, and per partition the committed offset,
    // log end offset and a lag of 0; then deletes it.
    let cli = |args: &[&str]| group_cli(&address, args);
    let (ok, listed, stderr) = cli(&["list"]);
    assert!(ok, "{stderr}");
    eprintln!("{listed}");
    assert!(
        listed.lines().any(|l| l.split_whitespace().eq(["python-group", "Empty", "consumer"])),
        "{listed}"
    );
    let (ok, described, stderr) = cli(&["describe", "python-group"]);
    assert!(ok, "{stderr}");
    eprintln!("{described}");
    let ends = end_offsets(&mut raw, topic, 3);
    for (partition, end) in ends.iter().enumerate() {
        let row = [
            "python-group".to_string(),
            topic.to_string(),
            partition.to_string(),
            end.to_string(),
            end.to_string(),
            "0".to_string(),
        ];
        assert!(
            described
                .lines()
                .any(|l| l.split_whitespace().take(6).eq(row.iter().map(String::as_str))),
            "no row {row:?} in:\n{described}"
        );
    }
    let (ok, _, stderr) = cli(&["delete", "python-group"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(&["describe", "python-group"]);
    assert!(!ok && stderr.contains("python-group"), "{stderr}");
}

// ---- the raw protocol: exact errors ----

/// A consumer-protocol subscription (v0) to `raw-topic`.
const SUBSCRIPTION: &[u8] = b"\x00\x00\x00\x00\x00\x01\x00\x09raw-topic\xff\xff\xff\xff";

fn join_request(group: &str, member_id: &str, instance: Option<&str>) -> JoinGroupRequest {
    let mut request = JoinGroupRequest::default();
    request.group_id = GroupId(sb(group));
    request.session_timeout_ms = 10_000;
    request.rebalance_timeout_ms = 10_000;
    request.member_id = sb(member_id);
    request.group_instance_id = instance.map(sb);
    request.protocol_type = sb("consumer");
    let mut protocol = JoinGroupRequestProtocol::default();
    protocol.name = sb("range");
    protocol.metadata = Bytes::from_static(SUBSCRIPTION);
    request.protocols = vec![protocol];
    request
}

fn sync_request(
    group: &str,
    generation: i32,
    member_id: &str,
    assign: &[(&str, &[u8])],
) -> SyncGroupRequest {
    let mut request = SyncGroupRequest::default();
    request.group_id = GroupId(sb(group));
    request.generation_id = generation;
    request.member_id = sb(member_id);
    request.assignments = assign
        .iter()
        .map(|(member, bytes)| {
            let mut a = SyncGroupRequestAssignment::default();
            a.member_id = sb(member);
            a.assignment = Bytes::copy_from_slice(bytes);
            a
        })
        .collect();
    request
}

fn heartbeat(
    raw: &mut Raw,
    group: &str,
    generation: i32,
    member_id: &str,
    instance: Option<&str>,
) -> i16 {
    let mut request = HeartbeatRequest::default();
    request.group_id = GroupId(sb(group));
    request.generation_id = generation;
    request.member_id = sb(member_id);
    request.group_instance_id = instance.map(sb);
    raw.send(&request, 4).error_code
}

fn commit_request(
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    offset: i64,
) -> OffsetCommitRequest {
    let mut request = OffsetCommitRequest::default();
    request.group_id = GroupId(sb(group));
    request.generation_id_or_member_epoch = generation;
    request.member_id = sb(member);
    let mut t = OffsetCommitRequestTopic::default();
    t.name = TopicName(sb(topic));
    let mut p = OffsetCommitRequestPartition::default();
    p.partition_index = 0;
    p.committed_offset = offset;
    p.committed_leader_epoch = -1;
    p.committed_metadata = Some(sb("meta-data ✓"));
    t.partitions = vec![p];
    request.topics = vec![t];
    request
}

/// The group protocol's errors, as clients rely on them, from a raw client.
#[test]
fn group_protocol_errors_are_kafkas() {
    let dir = tempfile::tempdir().unwrap();
    let broker =
        Broker::start(&dir.path().join("data"), &["--set", "group.initial.rebalance.delay.ms=0"]);
    let address = broker.address();
    let mut raw = Raw::connect(&address);
    raw.create_topic("raw-topic", 1, &[]);
    let group = "raw-group";

    // FindCoordinator answers this broker.
    let mut find = FindCoordinatorRequest::default();
    find.key = sb(group);
    let found: kafka_protocol::messages::FindCoordinatorResponse = raw.send(&find, 3);
    assert_eq!((found.error_code, found.port), (NONE, broker.port as i32));

    // A session timeout outside the broker's bounds.
    let mut bad = join_request(group, "", None);
    bad.session_timeout_ms = 1000;
    let answer: JoinGroupResponse = raw.send(&bad, 5);
    assert_eq!(answer.error_code, INVALID_SESSION_TIMEOUT);

    // KIP-394: the first join gets a member id to come back with.
    let first: JoinGroupResponse = raw.send(&join_request(group, "", None), 5);
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    let member = first.member_id.to_string();
    assert!(!member.is_empty());
    let joined: JoinGroupResponse = raw.send(&join_request(group, &member, None), 5);
    assert_eq!(joined.error_code, NONE);
    assert_eq!(joined.leader.as_str(), member, "the only member leads");
    assert_eq!(joined.members.len(), 1);
    assert_eq!(joined.members[0].metadata.as_ref(), SUBSCRIPTION);
    let generation = joined.generation_id;
    assert_eq!(generation, 1);

    // Sync: a wrong generation, then the leader's assignment comes back.
    let stale = raw.send(&sync_request(group, generation + 1, &member, &[]), 3);
    assert_eq!(stale.error_code, ILLEGAL_GENERATION);
    let synced =
        raw.send(&sync_request(group, generation, &member, &[(&member, b"my-partitions")]), 3);
    assert_eq!(synced.error_code, NONE);
    assert_eq!(synced.assignment.as_ref(), b"my-partitions");

    assert_eq!(heartbeat(&mut raw, group, generation, &member, None), NONE);
    assert_eq!(heartbeat(&mut raw, group, generation, "nobody", None), UNKNOWN_MEMBER_ID);
    assert_eq!(heartbeat(&mut raw, group, generation - 1, &member, None), ILLEGAL_GENERATION);

    // A second member with another protocol type cannot join.
    let mut other = join_request(group, "", None);
    other.protocol_type = sb("connect");
    assert_eq!(raw.send(&other, 5).error_code, INCONSISTENT_GROUP_PROTOCOL);

    // Offsets: commit with the generation, fetch them back with the metadata; unknown
    // topics are refused; nothing committed is -1 without an error.
    let commit = raw.send(&commit_request(group, generation, &member, "raw-topic", 42), 8);
    assert_eq!(commit.topics[0].partitions[0].error_code, NONE);
    let wrong = raw.send(&commit_request(group, generation, "nobody", "raw-topic", 1), 8);
    assert_eq!(wrong.topics[0].partitions[0].error_code, UNKNOWN_MEMBER_ID);
    let missing = raw.send(&commit_request(group, generation, &member, "no-such-topic", 1), 8);
    assert_eq!(missing.topics[0].partitions[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    let mut fetch = OffsetFetchRequest::default();
    fetch.group_id = GroupId(sb(group));
    let mut t = OffsetFetchRequestTopic::default();
    t.name = TopicName(sb("raw-topic"));
    t.partition_indexes = vec![0];
    fetch.topics = Some(vec![t]);
    let fetched: OffsetFetchResponse = raw.send(&fetch, 7);
    let partition = &fetched.topics[0].partitions[0];
    assert_eq!((partition.error_code, partition.committed_offset), (NONE, 42));
    assert_eq!(partition.metadata.as_ref().map(|m| m.as_str()), Some("meta-data ✓"));
    fetch.group_id = GroupId(sb("never-committed"));
    let fetched: OffsetFetchResponse = raw.send(&fetch, 7);
    assert_eq!(fetched.error_code, NONE);
    assert_eq!(fetched.topics[0].partitions[0].committed_offset, -1);

    // OffsetDelete refuses a topic the live members subscribe to.
    let mut delete_offsets = OffsetDeleteRequest::default();
    delete_offsets.group_id = GroupId(sb(group));
    let mut dt =
        kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestTopic::default();
    dt.name = TopicName(sb("raw-topic"));
    let mut dp =
        kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestPartition::default();
    dp.partition_index = 0;
    dt.partitions = vec![dp];
    delete_offsets.topics = vec![dt];
    let refused = raw.send(&delete_offsets, 0);
    assert_eq!(refused.error_code, NONE);
    assert_eq!(refused.topics[0].partitions[0].error_code, GROUP_SUBSCRIBED_TO_TOPIC);

    // DescribeGroups shows the stable group, its member and assignment.
    let mut describe = DescribeGroupsRequest::default();
    describe.groups = vec![GroupId(sb(group)), GroupId(sb("no-such-group"))];
    let described: kafka_protocol::messages::DescribeGroupsResponse = raw.send(&describe, 5);
    let g = &described.groups[0];
    assert_eq!(
        (g.error_code, g.group_state.as_str(), g.protocol_data.as_str()),
        (NONE, "Stable", "range")
    );
    assert_eq!(g.members.len(), 1);
    assert_eq!(g.members[0].member_assignment.as_ref(), b"my-partitions");
    assert_eq!(g.members[0].client_host.as_str(), "/127.0.0.1");
    assert_eq!(described.groups[1].group_state.as_str(), "Dead");
    let described: kafka_protocol::messages::DescribeGroupsResponse = raw.send(&describe, 6);
    assert_eq!(described.groups[1].error_code, GROUP_ID_NOT_FOUND);

    // A non-empty group cannot be deleted; once its member leaves it can.
    let mut delete = DeleteGroupsRequest::default();
    delete.groups_names = vec![GroupId(sb(group))];
    let refused: kafka_protocol::messages::DeleteGroupsResponse = raw.send(&delete, 2);
    assert_eq!(refused.results[0].error_code, NON_EMPTY_GROUP);
    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(sb(group));
    let mut identity = MemberIdentity::default();
    identity.member_id = sb(&member);
    leave.members = vec![identity];
    let left: kafka_protocol::messages::LeaveGroupResponse = raw.send(&leave, 4);
    assert_eq!((left.error_code, left.members[0].error_code), (NONE, NONE));
    // The group empties once the rebalance the leave started completes (no members to
    // wait for): poll DescribeGroups.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let described: kafka_protocol::messages::DescribeGroupsResponse = raw.send(&describe, 5);
        if described.groups[0].group_state.as_str() == "Empty" {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", described.groups[0]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let deleted: kafka_protocol::messages::DeleteGroupsResponse = raw.send(&delete, 2);
    assert_eq!(deleted.results[0].error_code, NONE, "{}", broker.log());
    let again: kafka_protocol::messages::DeleteGroupsResponse = raw.send(&delete, 2);
    assert_eq!(again.results[0].error_code, GROUP_ID_NOT_FOUND);
    fetch.group_id = GroupId(sb(group));
    let fetched: OffsetFetchResponse = raw.send(&fetch, 7);
    assert_eq!(fetched.topics[0].partitions[0].committed_offset, -1, "offsets went with the group");

    // The empty group id, as Kafka takes it: offsets can be committed under it, fetched,
    // and deleted with it; JoinGroup refuses it.
    let committed: kafka_protocol::messages::OffsetCommitResponse =
        raw.send(&commit_request("", -1, "", "raw-topic", 7), 8);
    assert_eq!(committed.topics[0].partitions[0].error_code, NONE, "{}", broker.log());
    fetch.group_id = GroupId(sb(""));
    let fetched: OffsetFetchResponse = raw.send(&fetch, 7);
    assert_eq!(fetched.topics[0].partitions[0].committed_offset, 7);
    let refused: JoinGroupResponse = raw.send(&join_request("", "", None), 5);
    assert_eq!(refused.error_code, INVALID_GROUP_ID);
    let mut describe_empty = DescribeGroupsRequest::default();
    describe_empty.groups = vec![GroupId(sb(""))];
    let described: kafka_protocol::messages::DescribeGroupsResponse = raw.send(&describe_empty, 5);
    let g = &described.groups[0];
    assert_eq!((g.error_code, g.group_state.as_str()), (NONE, "Empty"));
    delete.groups_names = vec![GroupId(sb(""))];
    let deleted: kafka_protocol::messages::DeleteGroupsResponse = raw.send(&delete, 2);
    assert_eq!(deleted.results[0].error_code, NONE);
    let fetched: OffsetFetchResponse = raw.send(&fetch, 7);
    assert_eq!(fetched.topics[0].partitions[0].committed_offset, -1);

    // Static membership (KIP-345): a second join with the same instance id fences the
    // first member id.
    let static_group = "raw-static";
    let a: JoinGroupResponse = raw.send(&join_request(static_group, "", Some("instance-1")), 5);
    assert_eq!(a.error_code, NONE);
    let synced = raw.send(
        &sync_request(
            static_group,
            a.generation_id,
            a.member_id.as_str(),
            &[(a.member_id.as_str(), b"p0")],
        ),
        3,
    );
    assert_eq!(synced.error_code, NONE);
    let b: JoinGroupResponse = raw.send(&join_request(static_group, "", Some("instance-1")), 5);
    assert_eq!(b.error_code, NONE);
    assert_ne!(b.member_id, a.member_id);
    assert_eq!(b.generation_id, a.generation_id, "a static rejoin does not rebalance");
    assert_eq!(
        heartbeat(
            &mut raw,
            static_group,
            a.generation_id,
            a.member_id.as_str(),
            Some("instance-1")
        ),
        FENCED_INSTANCE_ID
    );
    assert_eq!(
        heartbeat(
            &mut raw,
            static_group,
            b.generation_id,
            b.member_id.as_str(),
            Some("instance-1")
        ),
        NONE
    );
    let synced =
        raw.send(&sync_request(static_group, b.generation_id, b.member_id.as_str(), &[]), 3);
    assert_eq!(synced.assignment.as_ref(), b"p0", "the static member keeps its assignment");

    // A dynamic member joining a stable group starts a rebalance: the existing member's
    // heartbeat says so.
    let mut other = Raw::connect(&address);
    let parked = std::thread::spawn(move || {
        let joined: JoinGroupResponse = other.send(&join_request(static_group, "", None), 3);
        joined
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        heartbeat(
            &mut raw,
            static_group,
            b.generation_id,
            b.member_id.as_str(),
            Some("instance-1")
        ),
        REBALANCE_IN_PROGRESS
    );
    let rejoined: JoinGroupResponse =
        raw.send(&join_request(static_group, b.member_id.as_str(), Some("instance-1")), 5);
    assert_eq!(rejoined.error_code, NONE);
    assert!(rejoined.generation_id > b.generation_id);
    let joined = parked.join().unwrap();
    assert_eq!(joined.error_code, NONE);
    assert_eq!(joined.generation_id, rejoined.generation_id);

    // Produce to the internal topic is refused.
    let produced = raw.send(
        &crate::harness::produce_request("__consumer_offsets", 0, crate::kafka::batch(&["sneaky"])),
        9,
    );
    assert_ne!(produced.responses[0].partition_responses[0].error_code, NONE);
}

/// Joins `group` as a new dynamic member at JoinGroup `version` (answering
/// MEMBER_ID_REQUIRED on v4+) and syncs at v3; returns (member id, generation).
fn join_and_sync(raw: &mut Raw, group: &str, version: i16) -> (String, i32) {
    let mut request = join_request(group, "", None);
    if version == 0 {
        request.rebalance_timeout_ms = -1;
    }
    let mut joined: JoinGroupResponse = raw.send(&request, version);
    if version >= 4 {
        assert_eq!(joined.error_code, MEMBER_ID_REQUIRED, "JoinGroup v{version}");
        request.member_id = joined.member_id.clone();
        joined = raw.send(&request, version);
    }
    assert_eq!(joined.error_code, NONE, "JoinGroup v{version}");
    assert!(joined.generation_id >= 1, "JoinGroup v{version}");
    assert_eq!(joined.protocol_name.as_ref().map(|p| p.as_str()), Some("range"), "v{version}");
    let member = joined.member_id.to_string();
    let synced =
        raw.send(&sync_request(group, joined.generation_id, &member, &[(&member, b"a")]), 3);
    assert_eq!(synced.error_code, NONE, "SyncGroup after JoinGroup v{version}");
    (member, joined.generation_id)
}

/// Every version of every group API ApiVersions advertises answers correctly.
#[test]
fn every_advertised_version_of_the_group_apis_answers() {
    use kafka_protocol::messages::ApiKey;
    let dir = tempfile::tempdir().unwrap();
    let broker =
        Broker::start(&dir.path().join("data"), &["--set", "group.initial.rebalance.delay.ms=0"]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("raw-topic", 1, &[]);
    let versions = |api: ApiKey| {
        let advertised: kafka_protocol::messages::ApiVersionsResponse =
            raw_versions(&broker.address());
        let entry = advertised.api_keys.iter().find(|k| k.api_key == api as i16).unwrap();
        entry.min_version..=entry.max_version
    };

    for version in versions(ApiKey::FindCoordinator) {
        let mut request = FindCoordinatorRequest::default();
        if version >= 4 {
            request.coordinator_keys = vec![sb("g-find")];
        } else {
            request.key = sb("g-find");
        }
        let found: kafka_protocol::messages::FindCoordinatorResponse = raw.send(&request, version);
        let (error, port) = if version >= 4 {
            (found.coordinators[0].error_code, found.coordinators[0].port)
        } else {
            (found.error_code, found.port)
        };
        assert_eq!((error, port), (NONE, broker.port as i32), "FindCoordinator v{version}");
    }
    for version in versions(ApiKey::JoinGroup) {
        join_and_sync(&mut raw, &format!("g-join-{version}"), version);
    }
    for version in versions(ApiKey::SyncGroup) {
        let group = format!("g-sync-{version}");
        let mut request = join_request(&group, "", None);
        let first: JoinGroupResponse = raw.send(&request, 5);
        request.member_id = first.member_id.clone();
        let joined: JoinGroupResponse = raw.send(&request, 5);
        let member = joined.member_id.to_string();
        let mut sync = sync_request(&group, joined.generation_id, &member, &[(&member, b"mine")]);
        if version >= 5 {
            sync.protocol_type = Some(sb("consumer"));
            sync.protocol_name = Some(sb("range"));
        }
        let synced: kafka_protocol::messages::SyncGroupResponse = raw.send(&sync, version);
        assert_eq!(
            (synced.error_code, synced.assignment.as_ref()),
            (NONE, &b"mine"[..]),
            "SyncGroup v{version}"
        );
        if version >= 5 {
            assert_eq!(synced.protocol_name.as_ref().map(|p| p.as_str()), Some("range"));
        }
    }
    let (member, generation) = join_and_sync(&mut raw, "g-main", 5);
    for version in versions(ApiKey::Heartbeat) {
        let mut request = HeartbeatRequest::default();
        request.group_id = GroupId(sb("g-main"));
        request.generation_id = generation;
        request.member_id = sb(&member);
        let answer: kafka_protocol::messages::HeartbeatResponse = raw.send(&request, version);
        assert_eq!(answer.error_code, NONE, "Heartbeat v{version}");
    }
    for version in versions(ApiKey::OffsetCommit) {
        let offset = 100 + i64::from(version);
        let committed =
            raw.send(&commit_request("g-main", generation, &member, "raw-topic", offset), version);
        assert_eq!(committed.topics[0].partitions[0].error_code, NONE, "OffsetCommit v{version}");
        assert_eq!(crate::groups::committed(&mut raw, "g-main", "raw-topic", 1), vec![offset]);
    }
    let last = 100 + i64::from(*versions(ApiKey::OffsetCommit).end());
    for version in versions(ApiKey::OffsetFetch) {
        let mut request = OffsetFetchRequest::default();
        let offset = if version >= 8 {
            let mut group = OffsetFetchRequestGroup::default();
            group.group_id = GroupId(sb("g-main"));
            group.topics = None;
            request.groups = vec![group];
            let answer: OffsetFetchResponse = raw.send(&request, version);
            assert_eq!(answer.groups[0].error_code, NONE);
            answer.groups[0].topics[0].partitions[0].committed_offset
        } else {
            request.group_id = GroupId(sb("g-main"));
            let mut topic = OffsetFetchRequestTopic::default();
            topic.name = TopicName(sb("raw-topic"));
            topic.partition_indexes = vec![0];
            request.topics = Some(vec![topic]);
            let answer: OffsetFetchResponse = raw.send(&request, version);
            answer.topics[0].partitions[0].committed_offset
        };
        assert_eq!(offset, last, "OffsetFetch v{version}");
    }
    for version in versions(ApiKey::ListGroups) {
        let answer: kafka_protocol::messages::ListGroupsResponse =
            raw.send(&ListGroupsRequest::default(), version);
        assert_eq!(answer.error_code, NONE, "ListGroups v{version}");
        let main = answer.groups.iter().find(|g| g.group_id.0.as_str() == "g-main");
        assert_eq!(
            main.map(|g| g.protocol_type.as_str()),
            Some("consumer"),
            "ListGroups v{version}"
        );
    }
    for version in versions(ApiKey::DescribeGroups) {
        let mut request = DescribeGroupsRequest::default();
        request.groups = vec![GroupId(sb("g-main"))];
        let answer: kafka_protocol::messages::DescribeGroupsResponse = raw.send(&request, version);
        let group = &answer.groups[0];
        assert_eq!((group.error_code, group.group_state.as_str()), (NONE, "Stable"), "v{version}");
        assert_eq!(group.members[0].member_id.as_str(), member, "DescribeGroups v{version}");
    }
    for version in versions(ApiKey::OffsetDelete) {
        // Stable and subscribed: refused per partition.
        let mut request = OffsetDeleteRequest::default();
        request.group_id = GroupId(sb("g-main"));
        let mut topic =
            kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestTopic::default();
        topic.name = TopicName(sb("raw-topic"));
        let mut partition =
            kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestPartition::default(
            );
        partition.partition_index = 0;
        topic.partitions = vec![partition];
        request.topics = vec![topic];
        let answer = raw.send(&request, version);
        assert_eq!(answer.topics[0].partitions[0].error_code, GROUP_SUBSCRIBED_TO_TOPIC);
    }
    for version in versions(ApiKey::LeaveGroup) {
        let group = format!("g-leave-{version}");
        let (leaver, _) = join_and_sync(&mut raw, &group, 5);
        let mut request = LeaveGroupRequest::default();
        request.group_id = GroupId(sb(&group));
        if version >= 3 {
            let mut identity = MemberIdentity::default();
            identity.member_id = sb(&leaver);
            request.members = vec![identity];
        } else {
            request.member_id = sb(&leaver);
        }
        let answer: kafka_protocol::messages::LeaveGroupResponse = raw.send(&request, version);
        assert_eq!(answer.error_code, NONE, "LeaveGroup v{version}");
        if version >= 3 {
            assert_eq!(answer.members[0].error_code, NONE);
        }
    }
    for version in versions(ApiKey::DeleteGroups) {
        // The groups left above are empty (or emptying): delete one per version.
        let group = format!("g-leave-{}", version + 3);
        let mut request = DeleteGroupsRequest::default();
        request.groups_names = vec![GroupId(sb(&group))];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer: kafka_protocol::messages::DeleteGroupsResponse =
                raw.send(&request, version);
            match answer.results[0].error_code {
                NONE => break,
                NON_EMPTY_GROUP if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => panic!("DeleteGroups v{version}: {other}"),
            }
        }
    }
}

fn raw_versions(address: &str) -> kafka_protocol::messages::ApiVersionsResponse {
    Raw::connect(address).send(&kafka_protocol::messages::ApiVersionsRequest::default(), 0)
}

/// A JoinGroup parked in a rebalance does not hold up shutdown: it is answered
/// NOT_COORDINATOR and the broker stops at once.
#[test]
fn shutdown_answers_parked_joins() {
    const NOT_COORDINATOR: i16 = 16;
    let dir = tempfile::tempdir().unwrap();
    let mut broker =
        Broker::start(&dir.path().join("data"), &["--set", "group.initial.rebalance.delay.ms=0"]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("raw-topic", 1, &[]);
    join_and_sync(&mut raw, "g-parked", 5);
    // A second member's join waits for the first to rejoin, which it never does.
    let mut other = Raw::connect(&broker.address());
    let parked = std::thread::spawn(move || {
        let joined: JoinGroupResponse = other.send(&join_request("g-parked", "", None), 3);
        joined.error_code
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert!(broker.stop().success());
    assert!(started.elapsed() < Duration::from_secs(5), "stop took {:?}", started.elapsed());
    assert_eq!(parked.join().unwrap(), NOT_COORDINATOR);
}

/// Offsets committed outside a group expire after `offsets.retention.minutes`, and the
/// group goes with them.
#[test]
fn committed_offsets_expire_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &dir.path().join("data"),
        &[
            "--set",
            "offsets.retention.minutes=1",
            "--set",
            "offsets.retention.check.interval.ms=200",
        ],
    );
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("raw-topic", 1, &[]);
    let answer = raw.send(&commit_request("g-expiring", -1, "", "raw-topic", 7), 8);
    assert_eq!(answer.topics[0].partitions[0].error_code, NONE);
    assert_eq!(committed(&mut raw, "g-expiring", "raw-topic", 1), vec![7]);
    let committed_at = Instant::now();
    let deadline = committed_at + Duration::from_secs(90);
    while committed(&mut raw, "g-expiring", "raw-topic", 1) == vec![7] {
        assert!(Instant::now() < deadline, "offsets never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(committed_at.elapsed() >= Duration::from_secs(59), "expired early");
    assert_eq!(committed(&mut raw, "g-expiring", "raw-topic", 1), vec![-1]);
    let listed: kafka_protocol::messages::ListGroupsResponse =
        raw.send(&ListGroupsRequest::default(), 4);
    assert!(listed.groups.iter().all(|g| g.group_id.0.as_str() != "g-expiring"));
    assert!(broker.log().contains("expired committed offsets"));
}
