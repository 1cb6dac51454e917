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
    let summary = stdout.lines().rev().find(|line| line.starts_with("cycles=")).unwrap_or_else(|| {
        panic!("no summary from crash-cycles.py (install confluent-kafka with `pip install -r tests/requirements.txt`):\n{stdout}\n{stderr}")
    });
    let field = |name: &str| -> u64 {
        summary
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {summary:?}"))
    };
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

/// A full disk: produce is answered KAFKA_STORAGE_ERROR (never success) once a write
/// fails with ENOSPC, the broker keeps serving, and every batch acknowledged before is
/// readable at its offset, before and after a SIGKILL and restart on the still-full disk.
#[test]
fn a_full_disk_fails_produce_and_keeps_what_was_acknowledged() {
    use crate::harness::{Broker, Raw};
    use sluice_engine::batch::{encode_batch, EncodeOptions, Record};
    const KAFKA_STORAGE_ERROR: i16 = 56;
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("disk"), 8 << 20);
    // The data dir is the mount itself, so the broker's log (beside it) is not on it.
    let mut broker = Broker::start(&disk.at, &["--cores", "1"]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("full", 1, &[]);
    let batch = |index: usize| {
        let records: Vec<Record> = (0..16)
            .map(|r| Record {
                key: None,
                value: Some(format!("batch {index} record {r} {}", "x".repeat(1000)).into_bytes()),
                timestamp: 1_700_000_000_000,
            })
            .collect();
        encode_batch(&records, EncodeOptions::default())
    };
    let mut acknowledged = 0;
    let mut refused = 0;
    for index in 0..2000 {
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
        if refused == 20 {
            break;
        }
    }
    assert_eq!(refused, 20, "8 MiB never filled up");
    assert!(acknowledged > 100, "only {acknowledged} batches fit");
    let expected: Vec<String> = (0..acknowledged)
        .flat_map(|b| (0..16).map(move |r| format!("batch {b} record {r} {}", "x".repeat(1000))))
        .collect();
    assert_eq!(fetch_values(&mut raw, "full", &broker), expected);
    assert!(broker.is_running());
    assert!(broker.log().contains("No space left on device"), "{}", broker.log());
    let lines = broker.log().matches("append failed").count();
    assert!(lines < refused, "{lines} log lines for {refused} refusals: not throttled");

    drop(raw);
    broker.kill();
    broker.restart();
    let mut raw = Raw::connect(&broker.address());
    assert_eq!(fetch_values(&mut raw, "full", &broker), expected, "after the restart");
    assert!(!broker.log().contains("partition offline"), "{}", broker.log());
    drop(raw);
    drop(broker);
    drop(disk);
}

/// A broker whose log file is on a full disk (`sluice serve > broker.log 2>&1` on the
/// data disk, the day it fills) drops its log lines and keeps serving.
#[test]
fn a_full_disk_under_the_log_file_does_not_stop_the_broker() {
    use crate::harness::Raw;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("logs"), 64 << 10);
    let fill = std::fs::File::create(disk.at.join("fill")).unwrap();
    let _ = std::io::Write::write_all(&mut &fill, &vec![0u8; 128 << 10]);
    let log = std::fs::File::create(disk.at.join("broker.log")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let mut broker = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--cores", "1", "--listen", &address, "--data-dir"])
        .arg(dir.path().join("data"))
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(broker.try_wait().unwrap().is_none(), "the broker exited at start");
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
    assert!(broker.try_wait().unwrap().is_none(), "the broker exited");
    let _ = broker.kill();
    let _ = broker.wait();
    drop(disk);
}

/// Every record value of partition 0 of `topic`, fetched from offset 0 on.
fn fetch_values(
    raw: &mut crate::harness::Raw,
    topic: &str,
    broker: &crate::harness::Broker,
) -> Vec<String> {
    use kafka_protocol::records::RecordBatchDecoder;
    let mut values = Vec::new();
    let mut offset = 0;
    loop {
        let request = crate::kafka::fetch_request(topic, &[(0, offset)], 0);
        let response = raw.send(&request, 12);
        let answer = &response.responses[0].partitions[0];
        assert_eq!(answer.error_code, 0, "fetch at {offset}\n{}", broker.log());
        let mut bytes = answer.records.clone().unwrap_or_default();
        // The whole batches: an answer may end with part of one, as Kafka's may.
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
            return values;
        }
        let mut bytes = bytes.split_to(whole);
        for set in RecordBatchDecoder::decode_all(&mut bytes).unwrap() {
            for record in set.records {
                assert_eq!(record.offset, offset, "offsets are dense");
                offset += 1;
                values.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
            }
        }
    }
}
