//! The client matrix: each client the broker is tested with plays the same round against
//! a broker of its own: create a topic, list all topics (Metadata with no topic list),
//! produce keyed messages with every codec the client has, consume them in a group, commit,
//! describe the group, delete the topic. confluent-kafka (the newest librdkafka),
//! kafka-python and aiokafka run Python scripts and KafkaJS a Node script, all under
//! `tests/clients/`; kcat (Debian's, on librdkafka 2.0.2) is driven from here. Between
//! produce and consume a round waits while the test reads the broker's segment files: every
//! batch stored with the codec the client sent. A client that is not installed fails its
//! test with how to install it; tools/test.sh installs them all.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_engine::batch::{Batch, Compression};

use crate::harness::{Broker, Raw};

/// One shard (many brokers share two cores while the suite runs); a short initial
/// rebalance delay keeps the group rounds quick.
const BROKER_ARGS: &[&str] = &["--cores", "1", "--set", "group.initial.rebalance.delay.ms=300"];

const INSTALL: &str = "tools/test.sh installs every client: kcat (apt-get install kcat), the \
    Python clients (pip install -r tests/requirements.txt), KafkaJS (npm ci in tests/clients/js, \
    with Node.js)";

/// A whole round, produce to delete; a few seconds when all is well.
const ROUND_TIMEOUT: Duration = Duration::from_secs(300);

/// The round's shape, as tests/clients/rounds.py and tests/clients/js/round.js have it.
const PARTITIONS: i32 = 4;
const PER_CODEC: usize = 1000;
const KEYS: usize = 40;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// confluent-kafka 2.16 (librdkafka 2.16): also `list_topics()` with no topic and a
/// pattern subscription, both on the all-topics Metadata request.
#[test]
fn confluent_kafka_round() {
    python_round("confluent-kafka", "confluent_kafka_round.py");
}

/// kafka-python: its own protocol code; snappy, lz4 and zstd through Python packages.
#[test]
fn kafka_python_round() {
    python_round("kafka-python", "kafka_python_round.py");
}

/// aiokafka: asyncio, its own protocol code; codecs through cramjam.
#[test]
fn aiokafka_round() {
    python_round("aiokafka", "aiokafka_round.py");
}

/// KafkaJS: pure JavaScript, its own protocol code; gzip and snappy (its lz4 and zstd
/// codecs are native add-ons), up to five produce requests in flight.
#[test]
fn kafkajs_round() {
    let mut node = Command::new("node");
    node.arg(clients_dir().join("js/round.js"));
    script_round("KafkaJS", node);
}

fn python_round(client: &str, script: &str) {
    let mut python = Command::new("python3");
    python.arg(clients_dir().join(script));
    script_round(client, python);
}

/// Runs a client script against a broker of its own: the script gets the broker's address,
/// prints `PRODUCED <topic> <codec>=<records> ...` once it has produced, waits for
/// `checked` on stdin, and ends with `ROUND OK <client>`.
fn script_round(client: &str, mut command: Command) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), BROKER_ARGS);
    command.arg(broker.address());
    let mut process = Process::spawn(client, command, dir.path(), &broker);
    let deadline = Instant::now() + ROUND_TIMEOUT;
    let mut produced = Vec::new();
    while let Some(line) = process.next_line(deadline) {
        let Some(rest) = line.strip_prefix("PRODUCED ") else { continue };
        let mut words = rest.split_whitespace();
        let topic = words.next().expect("PRODUCED names the topic").to_string();
        let sent: BTreeMap<String, i64> = words
            .map(|word| {
                let (codec, records) = word.split_once('=').expect("codec=records");
                (codec.to_string(), records.parse().expect("a record count"))
            })
            .collect();
        if let Err(why) = check_stored(&broker, &topic, &sent) {
            process.fail(&why);
        }
        process.answer("checked");
        produced.push(topic);
    }
    let status = process.wait(deadline);
    if !status.success() || !process.stdout.contains(&format!("ROUND OK {client}")) {
        process.fail(&format!("the round did not finish ({status})"));
    }
    if produced.len() != 1 {
        process.fail("the round announced its produced topic other than once");
    }
    wait_until_removed(&broker, &produced[0]);
    assert!(!broker.log().contains("panicked"), "broker log:\n{}", broker.log());
}

/// Debian's kcat (librdkafka 2.0.2). kcat has no admin API: the topic is created by the
/// broker's auto-creation (kcat's Metadata request for it, `num.partitions` 4), the group
/// described and the topic deleted through the raw protocol client.
#[test]
fn kcat_round() {
    let version = match kcat_command().arg("-V").output() {
        Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
        Err(error) => panic!("kcat cannot run ({error}); {INSTALL}"),
    };
    let version = version.lines().find(|l| l.contains("librdkafka")).unwrap_or_default();
    eprintln!("{version}");
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    for codec in codecs {
        assert!(version.contains(codec), "kcat's librdkafka lacks {codec}: {version}");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut args = BROKER_ARGS.to_vec();
    args.extend(["--set", "num.partitions=4"]);
    let broker = Broker::start(&dir.path().join("data"), &args);
    let address = broker.address();
    let (topic, group) = ("kcat-round", "kcat-group");
    let kcat = |args: &[&str]| -> String {
        let output = kcat_command().arg("-b").arg(&address).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "kcat {args:?}: {}\n{stdout}\n{}\nbroker log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            broker.log()
        );
        stdout
    };

    // `kcat -L`: Metadata for all topics.
    let listing = kcat(&["-L"]);
    assert!(listed_topics(&listing).is_empty(), "{listing}");
    kcat(&["-L", "-t", topic]);
    let listing = kcat(&["-L"]);
    let topics = listed_topics(&listing);
    assert_eq!(topics.keys().collect::<Vec<_>>(), [topic], "{listing}");
    let expected: Vec<String> =
        (0..PARTITIONS).map(|p| format!("partition {p}, leader 0, replicas: 0, isrs: 0")).collect();
    assert_eq!(topics[topic], expected, "{listing}");

    // Keyed (tab before the value), one codec per producer run, idempotent, up to five
    // requests in flight.
    for (c, codec) in codecs.iter().enumerate() {
        let mut producer = kcat_command()
            .args(["-b", &address, "-P", "-t", topic, "-K", "\t", "-z", codec])
            .args(["-H", &format!("codec={codec}")])
            .args(["-X", "enable.idempotence=true", "-X", "linger.ms=5"])
            .args(["-X", "batch.num.messages=100", "-X", "max.in.flight=5"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = String::new();
        for i in c * PER_CODEC..(c + 1) * PER_CODEC {
            input += &format!("{}\t{}\n", key_of(i), value_of(i, codec));
        }
        // A write error shows as kcat's exit status and stderr below.
        let _ = producer.stdin.take().unwrap().write_all(input.as_bytes());
        let output = producer.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && !stderr.contains("ERROR"),
            "kcat -P -z {codec}: {}\n{stderr}\nbroker log:\n{}",
            output.status,
            broker.log()
        );
    }
    let sent = codecs.iter().map(|c| (c.to_string(), PER_CODEC as i64)).collect();
    if let Err(why) = check_stored(&broker, topic, &sent) {
        panic!("{why}\nbroker log:\n{}", broker.log());
    }

    // A group member (`-G`) reading from the earliest offset, committing as librdkafka
    // does by default (automatically, and on close).
    let mut command = kcat_command();
    command.args(["-b", &address, "-G", group, "-u", "-f", "%p\t%o\t%k\t%h\t%s\n"]);
    command.args(["-X", "auto.offset.reset=earliest", "-X", "session.timeout.ms=10000"]);
    command.args(["-X", "enable.auto.commit=true", "-X", "enable.partition.eof=false"]);
    command.arg(topic);
    let mut consumer = Process::spawn("kcat", command, dir.path(), &broker);
    let total = codecs.len() * PER_CODEC;
    let deadline = Instant::now() + ROUND_TIMEOUT;
    let mut received = Vec::new();
    while received.len() < total {
        let Some(line) = consumer.next_line(deadline) else { consumer.fail("kcat ended") };
        received.push(line);
    }
    if let Some(extra) = consumer.next_line_within(Duration::from_secs(2)) {
        consumer.fail(&format!("more than was produced: {extra}"));
    }
    let counts = check_kcat_received(&received, &codecs);

    // The group with kcat in it, as DescribeGroups shows it.
    let mut raw = Raw::connect(&address);
    let mut request = DescribeGroupsRequest::default();
    request.groups = vec![GroupId(sb(group))];
    let described: DescribeGroupsResponse = raw.send(&request, 5);
    let g = &described.groups[0];
    assert_eq!((g.error_code, g.group_state.as_str()), (0, "Stable"), "{g:?}");
    assert_eq!((g.protocol_type.as_str(), g.protocol_data.as_str()), ("consumer", "range"));
    assert_eq!(g.members.len(), 1, "{g:?}");
    let member = &g.members[0];
    assert_eq!((member.client_id.as_str(), member.client_host.as_str()), ("rdkafka", "/127.0.0.1"));
    let assigned = assignment(member.member_assignment.clone());
    assert_eq!(assigned, (0..PARTITIONS).map(|p| (topic.to_string(), p)).collect::<Vec<_>>());

    // SIGTERM: kcat closes its consumer, which commits and leaves the group.
    consumer.terminate();
    let status = consumer.wait(deadline);
    if !status.success() {
        consumer.fail(&format!("kcat exited {status} on SIGTERM"));
    }
    let ends: Vec<i64> =
        (0..PARTITIONS).map(|p| crate::kafka::latest_offset(&mut raw, topic, p)).collect();
    assert_eq!(ends, counts);
    assert_eq!(committed(&mut raw, group, topic), ends, "committed offsets");
    let described: DescribeGroupsResponse = raw.send(&request, 5);
    let g = &described.groups[0];
    assert_eq!((g.group_state.as_str(), g.members.len()), ("Empty", 0), "{g:?}");

    let mut delete = DeleteTopicsRequest::default();
    let mut state = DeleteTopicState::default();
    state.name = Some(TopicName(sb(topic)));
    delete.topics = vec![state];
    delete.timeout_ms = 30_000;
    let deleted: DeleteTopicsResponse = raw.send(&delete, 6);
    assert_eq!(deleted.responses[0].error_code, 0, "{deleted:?}");
    // Gone from a fresh listing, where the group's `__consumer_offsets` now shows.
    let listing = kcat(&["-L"]);
    let topics = listed_topics(&listing);
    assert_eq!(topics.keys().collect::<Vec<_>>(), ["__consumer_offsets"], "{listing}");
    wait_until_removed(&broker, topic);
    assert!(!broker.log().contains("panicked"), "broker log:\n{}", broker.log());
}

/// kcat with the system's librdkafka: cargo's LD_LIBRARY_PATH for the tests leads to the
/// librdkafka the `rdkafka` crate builds (another version, fewer codecs).
fn kcat_command() -> Command {
    let mut command = Command::new("kcat");
    command.env_remove("LD_LIBRARY_PATH");
    command
}

fn sb(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

fn key_of(i: usize) -> String {
    format!("key-{:02}", i % KEYS)
}

/// Repetition enough that even a batch of one record compresses: clients send a batch
/// uncompressed when the codec would make it larger.
fn value_of(i: usize, codec: &str) -> String {
    format!("{codec}|{i:06}|{}", "sluice ".repeat(8 + i % 23))
}

/// Topic -> its partition lines, from `kcat -L` output.
fn listed_topics(listing: &str) -> BTreeMap<String, Vec<String>> {
    let mut topics: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in listing.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("topic \"") {
            let name = rest.split('"').next().expect("a quoted topic name").to_string();
            topics.insert(name.clone(), Vec::new());
            current = Some(name);
        } else if trimmed.starts_with("partition ") {
            let topic = current.as_ref().expect("partition lines follow their topic");
            topics.get_mut(topic).expect("listed").push(trimmed.to_string());
        }
    }
    topics
}

/// Checks kcat's `partition offset key headers value` lines as the scripts check theirs:
/// every message once, each partition's offsets 0, 1, 2, ... in the order received and
/// its messages in the order produced, a key always in the same partition, values and
/// headers as sent. Returns the message count of each partition.
fn check_kcat_received(lines: &[String], codecs: &[&str]) -> Vec<i64> {
    let mut seen = vec![false; lines.len()];
    let mut offsets: Vec<Vec<i64>> = vec![Vec::new(); PARTITIONS as usize];
    let mut last_index: Vec<Option<usize>> = vec![None; PARTITIONS as usize];
    let mut key_partition: BTreeMap<String, usize> = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.splitn(5, '\t').collect();
        let [partition, offset, key, headers, value] = fields[..] else { panic!("{line:?}") };
        let partition: usize = partition.parse().unwrap();
        let index: usize = value.split('|').nth(1).expect("an index").parse().unwrap();
        let codec = codecs[index / PER_CODEC];
        assert!(!std::mem::replace(&mut seen[index], true), "message {index} twice");
        assert_eq!(value, value_of(index, codec));
        assert_eq!(key, key_of(index));
        assert_eq!(headers, format!("codec={codec}"));
        assert_eq!(*key_partition.entry(key.to_string()).or_insert(partition), partition, "{key}");
        offsets[partition].push(offset.parse().unwrap());
        assert!(last_index[partition] < Some(index), "partition {partition}: {index} out of order");
        last_index[partition] = Some(index);
    }
    assert!(seen.iter().all(|s| *s), "every message received");
    assert_eq!(key_partition.len(), KEYS);
    for (partition, offsets) in offsets.iter().enumerate() {
        let dense: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, &dense, "offsets of partition {partition}");
        assert!(!offsets.is_empty(), "partition {partition} received nothing");
    }
    offsets.iter().map(|o| o.len() as i64).collect()
}

/// The (topic, partition) list of a consumer-protocol assignment (Kafka's
/// ConsumerProtocolAssignment: version, then topics with their partitions).
fn assignment(mut bytes: Bytes) -> Vec<(String, i32)> {
    let _version = bytes.get_i16();
    let mut assigned = Vec::new();
    for _ in 0..bytes.get_i32() {
        let length = bytes.get_i16() as usize;
        let topic = String::from_utf8(bytes.split_to(length).to_vec()).unwrap();
        for _ in 0..bytes.get_i32() {
            assigned.push((topic.clone(), bytes.get_i32()));
        }
    }
    assigned.sort();
    assigned
}

/// Committed offsets of `group` for every partition of `topic` (OffsetFetch v8).
fn committed(raw: &mut Raw, group: &str, topic: &str) -> Vec<i64> {
    let mut asked = OffsetFetchRequestGroup::default();
    asked.group_id = GroupId(sb(group));
    let mut t = OffsetFetchRequestTopics::default();
    t.name = TopicName(sb(topic));
    t.partition_indexes = (0..PARTITIONS).collect();
    asked.topics = Some(vec![t]);
    let mut request = OffsetFetchRequest::default();
    request.groups = vec![asked];
    let response: OffsetFetchResponse = raw.send(&request, 8);
    assert_eq!(response.groups[0].error_code, 0, "{response:?}");
    response.groups[0].topics[0].partitions.iter().map(|p| p.committed_offset).collect()
}

fn codec_name(compression: Compression) -> String {
    match compression {
        Compression::None => "none".into(),
        Compression::Gzip => "gzip".into(),
        Compression::Snappy => "snappy".into(),
        Compression::Lz4 => "lz4".into(),
        Compression::Zstd => "zstd".into(),
        Compression::Unknown(id) => format!("codec {id}"),
    }
}

/// The partition directories of `topic` in the broker's data dir.
fn partition_dirs(broker: &Broker, topic: &str) -> Vec<PathBuf> {
    let prefix = format!("{topic}-");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&broker.data_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            name.strip_prefix(&prefix).is_some_and(|p| p.parse::<u32>().is_ok())
        })
        .collect();
    dirs.sort();
    dirs
}

/// Reads every segment of `topic` from the broker's data dir and compares the records
/// stored per codec with what the client sent: every batch whole (CRC-32C, counts), its
/// offsets following the previous batch's, none transactional.
fn check_stored(broker: &Broker, topic: &str, sent: &BTreeMap<String, i64>) -> Result<(), String> {
    let dirs = partition_dirs(broker, topic);
    if dirs.len() != PARTITIONS as usize {
        return Err(format!("{} partition directories of {topic}: {dirs:?}", dirs.len()));
    }
    let mut stored: BTreeMap<String, i64> = BTreeMap::new();
    let mut batches = 0;
    for dir in dirs {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "log"))
            .collect();
        segments.sort();
        let mut next_offset = 0;
        for segment in segments {
            let bytes = std::fs::read(&segment).unwrap();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let at = |what: String| format!("{} at {}: {what}", segment.display(), next_offset);
                let (batch, after) = Batch::parse(rest).map_err(|e| at(e.to_string()))?;
                batch.validate(usize::MAX).map_err(|e| at(e.to_string()))?;
                if batch.base_offset() != next_offset {
                    return Err(at(format!("batch at offset {}", batch.base_offset())));
                }
                if batch.is_transactional() || batch.is_control() {
                    return Err(at("a transactional batch".into()));
                }
                *stored.entry(codec_name(batch.compression())).or_default() +=
                    i64::from(batch.record_count());
                next_offset = batch.last_offset() + 1;
                batches += 1;
                rest = after;
            }
        }
    }
    if &stored != sent {
        return Err(format!(
            "{topic} stores records per codec {stored:?}; the client sent {sent:?}"
        ));
    }
    eprintln!("{topic}: {batches} batches, records per codec {stored:?}");
    Ok(())
}

/// Waits until the deleted topic's partition directories are gone from the data dir.
fn wait_until_removed(broker: &Broker, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !partition_dirs(broker, topic).is_empty() {
        assert!(Instant::now() < deadline, "{topic} still on disk:\n{}", broker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client process: its stdout lines arrive on a channel (and are kept for the failure
/// message), its stderr goes to a file. Killed when dropped.
struct Process<'a> {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: String,
    stderr_path: PathBuf,
    broker: &'a Broker,
}

impl<'a> Process<'a> {
    fn spawn(name: &str, mut command: Command, dir: &Path, broker: &'a Broker) -> Process<'a> {
        let stderr_path = dir.join(format!("{}.stderr", name.replace(' ', "-")));
        let stderr = File::create(&stderr_path).unwrap();
        let program = command.get_program().to_string_lossy().into_owned();
        // Each client with its own libraries, not the ones cargo's LD_LIBRARY_PATH leads to.
        command.env_remove("LD_LIBRARY_PATH");
        let spawned = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn();
        let mut child =
            spawned.unwrap_or_else(|e| panic!("{name}: {program} cannot run ({e}); {INSTALL}"));
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Process { name: name.to_string(), child, lines, stdout: String::new(), stderr_path, broker }
    }

    /// The next stdout line, or None once stdout is closed; fails past `deadline`.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(line) => {
                self.stdout += &line;
                self.stdout += "\n";
                Some(line)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => self.fail("timed out"),
        }
    }

    /// A line that arrives within `wait`, if any.
    fn next_line_within(&mut self, wait: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(wait).ok()?;
        self.stdout += &line;
        self.stdout += "\n";
        Some(line)
    }

    fn answer(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin piped");
        if let Err(error) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            self.fail(&format!("cannot answer {line:?}: {error}"));
        }
    }

    fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    fn wait(&mut self, deadline: Instant) -> ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The rest of stdout, for the failure message.
                while self.next_line_within(Duration::from_millis(200)).is_some() {}
                return status;
            }
            if Instant::now() >= deadline {
                self.fail("did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends the test with the client's output and the broker's log.
    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while self.next_line_within(Duration::from_millis(200)).is_some() {}
        let mut stderr = String::new();
        if let Ok(mut file) = File::open(&self.stderr_path) {
            let _ = file.read_to_string(&mut stderr);
        }
        panic!(
            "{}: {why}\n--- stdout:\n{}--- stderr:\n{stderr}--- broker log:\n{}",
            self.name,
            self.stdout,
            self.broker.log()
        );
    }
}

impl Drop for Process<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
