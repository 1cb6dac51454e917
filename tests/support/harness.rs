//! Test harness: the real `sluice` binary on a free loopback port in a temp dir, and a raw
//! Kafka-protocol client (the `kafka-protocol` crate's messages over a blocking socket)
//! for tests that need exact control of what goes on the wire.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    CreateTopicsRequest, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// Runs `tests/support/<script>` with python3 (kafka-python, installed by tools/test.sh)
/// against `broker` with `args` after the address, and asserts that it exits 0 and prints
/// `ok_line`; the failure shows the script's output and the broker's log.
pub fn run_python(broker: &Broker, script: &str, args: &[&str], ok_line: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support").join(script);
    let output = Command::new("python3")
        .arg(path)
        .arg(broker.address())
        .args(args)
        .output()
        .expect("python3 runs (tools/test.sh installs kafka-python)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(ok_line),
        "{script} failed (install kafka-python with `pip install -r tests/requirements.txt`):\n{stdout}\n{}\nbroker log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        broker.log()
    );
}

/// Where every thread of process `pid` is: gdb's backtraces when gdb is installed, else
/// each thread's name and kernel wait channel. For diagnosing a broker that hangs.
fn stacks(pid: u32) -> String {
    let gdb = Command::new("gdb")
        .args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt 30"])
        .output();
    if let Ok(out) = gdb {
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
    }
    let mut text = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return text };
    for task in tasks.flatten() {
        let read = |file: &str| std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
        text += &format!(
            "{} {} wchan={} syscall={}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan"),
            read("syscall")
        );
    }
    text
}

/// A running broker. Killed (SIGKILL) when dropped.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    args: Vec<String>,
    /// The open-file limit (soft and hard) the broker process starts with, when set.
    open_files: Option<u64>,
}

/// A free port, never the same twice in this test process: tests run in parallel, and
/// two brokers handed the same port would both bind it (SO_REUSEPORT) and split clients.
pub(crate) fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl Broker {
    /// Starts a broker on `data_dir` (2 shards unless `args` say otherwise) and waits until
    /// it accepts connections.
    pub fn start(data_dir: &Path, args: &[&str]) -> Broker {
        Broker::start_with(data_dir, args, None)
    }

    /// As [`Broker::start`], with the process's open-file limit (soft and hard) set to
    /// `limit`, so the broker cannot raise it.
    pub fn start_with_open_file_limit(data_dir: &Path, args: &[&str], limit: u64) -> Broker {
        Broker::start_with(data_dir, args, Some(limit))
    }

    fn start_with(data_dir: &Path, args: &[&str], open_files: Option<u64>) -> Broker {
        let mut broker = Broker {
            child: None,
            port: free_port(),
            data_dir: data_dir.to_path_buf(),
            log_path: data_dir.with_extension("broker.log"),
            args: args.iter().map(|a| a.to_string()).collect(),
            open_files,
        };
        broker.spawn();
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).unwrap();
        let log_start = self.log().len();
        let mut command = match self.open_files {
            None => Command::new(env!("CARGO_BIN_EXE_sluice")),
            // The shell sets the limit, soft and hard, and becomes the broker.
            Some(limit) => {
                let mut shell = Command::new("sh");
                shell.arg("-c").arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""));
                shell.arg(env!("CARGO_BIN_EXE_sluice"));
                shell
            }
        };
        command.arg("serve").arg("--data-dir").arg(&self.data_dir);
        command.arg("--listen").arg(self.address());
        let shards = match self.args.iter().position(|a| a == "--cores") {
            Some(at) => self.args[at + 1].parse::<usize>().unwrap(),
            None => {
                command.arg("--cores").arg("2");
                2
            }
        };
        command.args(&self.args);
        let child = command
            .env("SLUICE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        // Ready when every shard of this run logged that it listens (a connect alone could
        // reach the listening socket of a killed predecessor the kernel has not closed).
        loop {
            let listening =
                self.log()[log_start..].matches("sluice_net::server: listening").count();
            if listening >= shards && TcpStream::connect(self.address()).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("broker exited at start-up ({status}):\n{}", self.log());
            }
            if Instant::now() >= deadline {
                let stacks = stacks(self.child.as_ref().unwrap().id());
                panic!("broker did not listen:\n{}\nthreads:\n{stacks}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the broker logged so far (all runs on this data dir).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM, and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("broker running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "broker did not stop on SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no flush, no checkpoints.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and data dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report_failure();
        }
        self.kill();
    }
}

impl Broker {
    /// A test failed while this broker ran: the end of its log and, for a broker that
    /// may have hung, its threads' stacks (with gdb, when the machine has it), so a
    /// failure seen once in CI can be understood from its output.
    fn report_failure(&mut self) {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        eprintln!(
            "---- broker {} (data {}): last {} log lines ----",
            self.address(),
            self.data_dir.display(),
            tail.len()
        );
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        let Some(child) = self.child.as_mut() else { return };
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        let pid = child.id().to_string();
        let stacks = std::process::Command::new("timeout")
            .args(["30", "gdb", "-p", &pid, "-batch", "-ex", "thread apply all bt 40"])
            .output();
        match stacks {
            Ok(output) => eprintln!(
                "---- broker {} threads ----\n{}",
                self.address(),
                String::from_utf8_lossy(&output.stdout)
            ),
            Err(error) => eprintln!("(no thread stacks: {error})"),
        }
    }
}

/// Starts the sluice binary with `args` only (no --listen or --data-dir from the
/// harness), logging to `log`.
pub(crate) fn spawn_sluice(args: &[&str], log: &std::path::Path) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .args(args)
        .env("SLUICE_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .unwrap()
}

/// A blocking Kafka-protocol connection speaking the `kafka-protocol` crate's messages.
pub struct Raw {
    pub stream: TcpStream,
    correlation_id: i32,
}

impl Raw {
    pub fn connect(address: &str) -> Raw {
        let stream = TcpStream::connect(address).unwrap();
        // A hang detector, not a latency bound: on this 2-core machine a metadata change
        // waits for fsyncs behind the other tests' writes (ext4 commits them together).
        stream.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream, correlation_id: 0 }
    }

    /// The bytes of a request frame (size prefix included).
    pub fn frame<R: Request>(&mut self, request: &R, version: i16) -> Vec<u8> {
        self.correlation_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str("raw-test"));
        let mut body = BytesMut::new();
        header.encode(&mut body, R::header_version(version)).unwrap();
        request.encode(&mut body, version).unwrap();
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        frame
    }

    /// Sends a request and reads its response.
    pub fn send<R: Request>(&mut self, request: &R, version: i16) -> R::Response {
        let frame = self.frame(request, version);
        self.stream.write_all(&frame).unwrap();
        self.receive::<R>(version)
    }

    /// Reads the response to the oldest request sent.
    pub fn receive<R: Request>(&mut self, version: i16) -> R::Response {
        let mut frame = Bytes::from(self.read_frame().expect("response frame"));
        let header =
            ResponseHeader::decode(&mut frame, R::Response::header_version(version)).unwrap();
        assert!(header.correlation_id > 0);
        let response = R::Response::decode(&mut frame, version).unwrap();
        assert_eq!(frame.remaining(), 0, "bytes left after the response");
        response
    }

    pub fn read_frame(&mut self) -> std::io::Result<Vec<u8>> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut frame)?;
        Ok(frame)
    }

    /// CreateTopics v7 for one topic; asserts that it was created with that many partitions.
    pub fn create_topic(&mut self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let mut topic = CreatableTopic::default();
        topic.name = TopicName(StrBytes::from_string(name.to_string()));
        topic.num_partitions = partitions;
        topic.replication_factor = 1;
        topic.configs = configs
            .iter()
            .map(|(k, v)| {
                let mut config = CreatableTopicConfig::default();
                config.name = StrBytes::from_string(k.to_string());
                config.value = Some(StrBytes::from_string(v.to_string()));
                config
            })
            .collect();
        let mut request = CreateTopicsRequest::default();
        request.topics = vec![topic];
        request.timeout_ms = 30_000;
        let response = self.send(&request, 7);
        assert_eq!(response.topics[0].error_code, 0, "{:?}", response.topics[0].error_message);
        assert_eq!(response.topics[0].num_partitions, partitions);
    }

    /// Produce v9 (acks=all) of `records` to one partition.
    pub fn produce(&mut self, topic: &str, partition: i32, records: Vec<u8>) -> ProduceResponse {
        self.send(&produce_request(topic, partition, records), 9)
    }

    /// True when the broker has closed the connection (EOF within the read timeout).
    pub fn is_closed_by_peer(&mut self) -> bool {
        self.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

/// A Produce request (acks=all) of `records` to one partition.
pub fn produce_request(topic: &str, partition: i32, records: Vec<u8>) -> ProduceRequest {
    let mut data = PartitionProduceData::default();
    data.index = partition;
    data.records = Some(Bytes::from(records));
    let mut topic_data = TopicProduceData::default();
    topic_data.name = TopicName(StrBytes::from_string(topic.to_string()));
    topic_data.partition_data = vec![data];
    let mut request = ProduceRequest::default();
    request.acks = -1;
    request.timeout_ms = 30_000;
    request.topic_data = vec![topic_data];
    request
}

/// The last line of a test script's output that starts with `prefix` (its summary of
/// `name=value` pairs), or a panic with the whole output and `hint`.
pub fn script_summary(stdout: &str, stderr: &str, prefix: &str, hint: &str) -> String {
    match stdout.lines().rev().find(|line| line.starts_with(prefix)) {
        Some(line) => line.to_string(),
        None => panic!("no summary ({hint}):\n{stdout}\n{stderr}"),
    }
}

/// The number `name=N` in a script's summary line.
pub fn summary_field(summary: &str, name: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {summary:?}"))
}
