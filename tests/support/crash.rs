//! Kill cycles with a real pipelined client. After any unclean stop, every partition
//! with real traffic used to stay offline: the producer-state replay at open read the log
//! in 1 MiB windows and failed on the batch that crossed a window's end, and the crash
//! tests, with few small batches, never had one. Here librdkafka (confluent-kafka: acks=all,
//! idempotence, 5 requests in flight) produces to 4 partitions at full speed while the
//! broker is SIGKILLed, mid-stream and at rest, and restarted, cycle after cycle; after
//! each restart every acknowledged message must be at its offset, no message twice, no
//! partition offline (`tools/crash-cycles.py`, which also runs the long version).

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
