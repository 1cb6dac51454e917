//! Kill cycles with a real pipelined client. After any unclean stop, every partition
//! with real traffic used to stay offline: the producer-state replay at open read the log
//! in 1 MiB windows and failed on the batch that crossed a window's end, and the crash
//! tests, with few small batches, never had one. Here librdkafka (confluent-kafka: acks=all,
//! idempotence, 5 requests in flight) produces to 4 partitions at full speed while the
//! broker is SIGKILLed, mid-stream and at rest, and restarted, cycle after cycle; after
//! each restart every acknowledged message must be at its offset, no message twice, no
//! partition offline (`tools/crash-cycles.py`, which also runs the long version). And a
//! disk that fills up: produce refused, nothing acknowledged lost, across a SIGKILL.

use std::path::Path;
use std::process::Command;

/// Runs `tools/crash-cycles.py` against this build's broker and checks its summary.
fn kill_cycles(io: &str, cycles: u32) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/crash-cycles.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(["--broker", env!("CARGO_BIN_EXE_sluice"), "--io", io, "--partitions", "4"])
        .args(["--cycles", &cycles.to_string(), "--seconds", "1.0"])
        .output()
        .expect("python3 runs (tools/test.sh installs confluent-kafka)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = crate::harness::script_summary(
        &stdout,
        &stderr,
        "cycles=",
        "crash-cycles.py: install confluent-kafka with `pip install -r tests/requirements.txt`",
    );
    let field = |name: &str| crate::harness::summary_field(&summary, name);
    assert!(output.status.success(), "crash cycles failed:\n{stdout}\n{stderr}");
    assert_eq!(field("cycles"), u64::from(cycles), "{stdout}");
    assert_eq!(field("lost"), 0, "{stdout}");
    assert_eq!(field("duplicated"), 0, "{stdout}");
    assert_eq!(field("offline"), 0, "{stdout}");
    assert_eq!(field("shrunk"), 0, "{stdout}");
    // Enough traffic that batches cross the replay's read windows many times over.
    assert!(field("acked") >= 100_000, "too little traffic to mean anything:\n{stdout}");
}

#[test]
fn librdkafka_kill_cycles_page_cache() {
    kill_cycles("buffered", 6);
}

#[test]
fn librdkafka_kill_cycles_direct() {
    kill_cycles("direct", 6);
}

/// A tmpfs of `bytes` mounted on `at` for the life of the value (CI runs as root, as the
/// disk-full test needs).
struct SmallDisk {
    at: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(at: &Path, bytes: u64) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("mount runs");
        assert!(
            output.status.success(),
            "mounting a tmpfs failed (the disk-full test needs root): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        SmallDisk { at: at.to_path_buf() }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// Writes `path` until the file system has no block left.
fn fill_up(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if sluice_engine::io::out_of_space(&error) => break,
            Err(error) => panic!("filling {}: {error}", path.display()),
        }
    }
    // A short last write may have left a partial block free: one byte at a time.
    while file.write(&[0]).is_ok_and(|n| n == 1) {}
}

/// A full disk (page-cache mode): produce is answered KAFKA_STORAGE_ERROR, never success,
/// once a write fails with ENOSPC; the broker keeps serving, logs the failures throttled,
/// and takes appends again once there is room. Every batch acknowledged is readable at
/// its offset, before and after a SIGKILL and a restart on a disk with no block free
/// (where recovery cannot write the indexes it rebuilt).
#[test]
fn a_full_disk_fails_produce_and_keeps_what_was_acknowledged() {
    use crate::harness::{Broker, Raw};
    use sluice_engine::batch::{encode_batch, EncodeOptions, Record};
    const KAFKA_STORAGE_ERROR: i16 = 56;
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("disk"), 8 << 20);
    // The data dir is the mount itself, so the broker's log (beside it) is not on it.
    // Room to make later: a file in the data dir (the broker leaves files it does not
    // know alone).
    let ballast = disk.at.join("ballast");
    std::fs::write(&ballast, vec![1u8; 1 << 20]).unwrap();
    let mut broker = Broker::start(&disk.at, &["--cores", "1"]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("full", 1, &[]);
    let value =
        |batch: usize, record: usize| format!("batch {batch} record {record} {}", "x".repeat(1000));
    let batch = |index: usize| {
        let records: Vec<Record> = (0..16)
            .map(|r| Record {
                key: None,
                value: Some(value(index, r).into_bytes()),
                timestamp: 1_700_000_000_000,
            })
            .collect();
        encode_batch(&records, EncodeOptions::default())
    };
    // Produces from batch `next` until 20 are refused (or `limit` acknowledged);
    // returns how many were acknowledged, each at the offset that follows the last.
    let produce_until_full = |raw: &mut Raw, next: usize, limit: usize| -> usize {
        let mut acknowledged = 0;
        let mut refused = 0;
        while refused < 20 && acknowledged < limit {
            let index = next + acknowledged;
            let response = raw.produce("full", 0, batch(index));
            let answer = &response.responses[0].partition_responses[0];
            match answer.error_code {
                0 if refused == 0 => {
                    assert_eq!(answer.base_offset, 16 * index as i64);
                    acknowledged += 1;
                }
                0 => panic!("batch {index} was stored after an earlier one was refused"),
                KAFKA_STORAGE_ERROR => refused += 1,
                other => panic!("batch {index}: error {other}: {:?}", answer.error_message),
            }
        }
        acknowledged
    };
    let first = produce_until_full(&mut raw, 0, usize::MAX);
    assert!(first > 100, "only {first} batches fit");
    let expected = |batches: usize| -> Vec<String> {
        (0..batches).flat_map(|b| (0..16).map(move |r| value(b, r))).collect()
    };
    assert_eq!(fetch_values(&mut raw, "full"), expected(first));
    assert!(broker.is_running());
    let log = broker.log();
    assert!(log.contains("No space left on device"), "{log}");
    let lines = log.matches("append failed").count();
    assert!(lines < 20, "{lines} log lines for 20 refusals: not throttled");

    // Room again: appends are taken, at the next offsets.
    std::fs::remove_file(&ballast).unwrap();
    let second = produce_until_full(&mut raw, first, 10);
    assert_eq!(second, 10, "appends not taken again once there was room");
    let stored = first + second;
    assert_eq!(fetch_values(&mut raw, "full"), expected(stored));

    // Not a block left, a SIGKILL, and a restart on that disk.
    drop(raw);
    fill_up(&disk.at.join("filler"));
    broker.kill();
    broker.restart();
    let mut raw = Raw::connect(&broker.address());
    assert_eq!(fetch_values(&mut raw, "full"), expected(stored), "after the restart");
    let log = broker.log();
    assert!(log.contains("the data dir is full"), "{log}");
    assert!(log.contains("indexes could not be written"), "{log}");
    assert!(!log.contains("partition offline"), "{log}");
    drop(raw);
    drop(broker);
    drop(disk);
}

/// Kills the broker process when dropped (a failed assertion included).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A broker whose log file is on a full disk (`sluice serve > broker.log 2>&1` on the
/// data disk, the day it fills) drops its log lines and keeps serving.
#[test]
fn a_full_disk_under_the_log_file_does_not_stop_the_broker() {
    use crate::harness::Raw;
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("logs"), 64 << 10);
    fill_up(&disk.at.join("fill"));
    let log_path = disk.at.join("broker.log");
    let address = format!("127.0.0.1:{}", crate::harness::free_port());
    let data = dir.path().join("data");
    let args = ["--cores", "1", "--listen", &address, "--data-dir", data.to_str().unwrap()];
    let mut broker = KillOnDrop(crate::harness::spawn_sluice(&args, &log_path));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(broker.0.try_wait().unwrap().is_none(), "the broker exited at start");
        assert!(std::time::Instant::now() < deadline, "the broker did not listen");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut raw = Raw::connect(&address);
    raw.create_topic("logged-nowhere", 2, &[]);
    let batch = sluice_engine::batch::encode_batch(
        &[sluice_engine::batch::Record {
            key: None,
            value: Some(b"still here".to_vec()),
            timestamp: 1_700_000_000_000,
        }],
        sluice_engine::batch::EncodeOptions::default(),
    );
    let response = raw.produce("logged-nowhere", 1, batch);
    assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    assert!(broker.0.try_wait().unwrap().is_none(), "the broker exited");
    // The broker did log (start-up, the topic), and none of it fit.
    let written = std::fs::metadata(&log_path).unwrap().len();
    assert_eq!(written, 0, "{written} bytes of log fit on a full disk: the test proves nothing");
    drop(broker);
    drop(disk);
}

/// Every record value of partition 0 of `topic`, fetched from offset 0 on.
fn fetch_values(raw: &mut crate::harness::Raw, topic: &str) -> Vec<String> {
    crate::kafka::fetch_records(raw, topic, 0)
        .into_iter()
        .map(|(_, value)| String::from_utf8(value).unwrap())
        .collect()
}
