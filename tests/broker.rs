//! Integration tests: the real `sluice` binary, started on a free loopback port in a temp
//! data dir, driven by real clients (librdkafka through the `rdkafka` crate and through
//! confluent-kafka, kafka-python, aiokafka, KafkaJS, kcat) and by a raw protocol client
//! for exact wire-level cases. One test binary: the modules
//! under `tests/support/` are parts of it.
#![allow(clippy::unwrap_used)]

#[path = "support/admin.rs"]
mod admin;
#[path = "support/cli.rs"]
mod cli;
#[path = "support/clients.rs"]
mod clients;
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/crash.rs"]
mod crash;
#[path = "support/faults.rs"]
mod faults;
#[path = "support/groups.rs"]
mod groups;
#[path = "support/harness.rs"]
mod harness;
#[path = "support/idempotence.rs"]
mod idempotence;
#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/partitions.rs"]
mod partitions;
#[path = "support/transactions.rs"]
mod transactions;
#[path = "support/zerocopy.rs"]
mod zerocopy;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use sluice_engine::batch::{encode_batch, EncodeOptions, Record};
use sluice_engine::checkpoint::{self, TopicPartition};
use sluice_engine::clock::SystemClock;
use sluice_engine::log::{Log, LogOptions, OpenHints};

fn start(data_dir: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--cores")
        .arg("2")
        .args(extra)
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends SIGTERM once every shard has reported ready, and returns the exit status and
/// the log output.
fn stop(mut child: Child) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Give the shards time to open their logs before asking them to stop.
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "broker did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut output = String::new();
    child.stdout.take().unwrap().read_to_string(&mut output).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut output).unwrap();
    (status, output)
}

/// Writes `batches` single-record batches into the partition directory with the engine.
fn write_partition(data_dir: &Path, tp: &TopicPartition, batches: usize) -> i64 {
    let dir = data_dir.join(tp.dir_name());
    sluice_engine::runtime::run_local(async move {
        let log = Log::open(
            &dir,
            LogOptions { segment_bytes: 4096, ..LogOptions::default() },
            OpenHints::default(),
            Rc::new(SystemClock::new()),
        )
        .await
        .unwrap();
        for i in 0..batches {
            let record = Record {
                key: Some(format!("k{i}").into_bytes()),
                value: Some(vec![b'v'; 300]),
                timestamp: 1_700_000_000_000 + i as i64,
            };
            let mut bytes = encode_batch(&[record], EncodeOptions::default());
            log.append(&mut bytes).await.unwrap();
        }
        // No close: the broker must recover an unflushed, unsealed log.
        log.log_end_offset()
    })
}

#[test]
fn serve_recovers_partitions_and_writes_kafka_checkpoints_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let orders0 = TopicPartition::new("orders", 0);
    let orders1 = TopicPartition::new("orders", 1);
    let end0 = write_partition(dir.path(), &orders0, 40);
    let end1 = write_partition(dir.path(), &orders1, 7);
    // A damaged tail on one partition: recovery cuts it, the broker keeps running.
    let last_segment = std::fs::read_dir(dir.path().join(orders0.dir_name()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&last_segment).unwrap();
    let len = bytes.len();
    bytes[len - 5] ^= 0xff;
    std::fs::write(&last_segment, bytes).unwrap();

    let (status, output) = stop(start(dir.path(), &["--listen", "127.0.0.1:0"]));
    assert!(status.success(), "exit {status:?}\n{output}");
    assert!(output.contains("shard ready"), "{output}");
    assert!(output.contains("torn tail"), "{output}");
    let recovery = checkpoint::read(&dir.path().join(checkpoint::RECOVERY_POINT_FILE)).unwrap();
    assert_eq!(recovery.get(&orders0), Some(&(end0 - 1)), "the damaged last batch is cut");
    assert_eq!(recovery.get(&orders1), Some(&end1));
    let starts = checkpoint::read(&dir.path().join(checkpoint::LOG_START_OFFSET_FILE)).unwrap();
    assert_eq!(starts.get(&orders0), Some(&0));

    // A second run trusts the checkpoint and changes nothing.
    let (status, output) = stop(start(dir.path(), &[]));
    assert!(status.success(), "{output}");
    let again = checkpoint::read(&dir.path().join(checkpoint::RECOVERY_POINT_FILE)).unwrap();
    assert_eq!(again, recovery);
}

/// A byte flipped in the middle of a log, with valid batches after it, is not what a
/// crash leaves: the broker must neither cut the valid batches away (as recovery used to,
/// and as Kafka does) nor stop; the partition stays offline, says why, and its files stay
/// as they are, while the other partitions are served.
#[test]
fn damage_followed_by_valid_batches_takes_only_that_partition_offline() {
    let dir = tempfile::tempdir().unwrap();
    let damaged = TopicPartition::new("ledger", 0);
    let healthy = TopicPartition::new("ledger", 1);
    write_partition(dir.path(), &damaged, 7);
    let end = write_partition(dir.path(), &healthy, 7);
    let segment = dir.path().join(damaged.dir_name()).join("00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    // Inside the second batch's records (each batch is ~370 bytes): its CRC fails, its
    // length holds, and five valid batches follow.
    bytes[500] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();
    // As after a crash of the process on a machine that kept running.
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    std::fs::write(dir.path().join("boot-id"), boot_id).unwrap();

    let (status, output) = stop(start(dir.path(), &["--listen", "127.0.0.1:0"]));
    assert!(status.success(), "exit {status:?}\n{output}");
    assert!(output.contains("damaged log followed by valid batches"), "{output}");
    assert!(output.contains("partition offline"), "{output}");
    assert!(std::fs::read(&segment).unwrap() == bytes, "the damaged segment is left as it is");
    let recovery = checkpoint::read(&dir.path().join(checkpoint::RECOVERY_POINT_FILE)).unwrap();
    assert_eq!(recovery.get(&healthy), Some(&end), "the other partition is served");
    assert_eq!(recovery.get(&damaged), None, "the damaged partition was not opened");

    // After a restart of the machine, unflushed writes may be lost in any order: above
    // the recovery point the log is cut at the damage, as Kafka cuts it.
    std::fs::write(dir.path().join("boot-id"), "an earlier boot\n").unwrap();
    let (status, output) = stop(start(dir.path(), &["--listen", "127.0.0.1:0"]));
    assert!(status.success(), "exit {status:?}\n{output}");
    assert!(output.contains("torn tail"), "{output}");
    let recovery = checkpoint::read(&dir.path().join(checkpoint::RECOVERY_POINT_FILE)).unwrap();
    assert_eq!(recovery.get(&damaged), Some(&1), "cut before the damaged second batch");
}

#[test]
fn bad_configuration_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--set", "log.segment.bytes=tiny", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("log.segment.bytes"), "{stderr}");

    let file = dir.path().join("file-not-dir");
    std::fs::write(&file, b"x").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--data-dir"])
        .arg(file.join("sub"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("data dir"));
}
