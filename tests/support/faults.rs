//! Fault rounds on a three-broker cluster whose brokers are hosts of their own (network
//! namespaces): `tools/faults.py` streams an idempotent acks=all producer through random
//! faults (SIGKILL, SIGSTOP, a broker cut off from the others by iptables, a link down, a
//! flapping link) and checks that no acknowledged message is lost or duplicated, offsets
//! are dense and the replicas agree. The short version here; `tools/faults.py --rounds N`
//! runs long ones.

use std::path::Path;
use std::process::Command;

#[test]
fn random_faults_lose_nothing_and_replicas_agree() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/faults.py");
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
            % 1_000_000;
    let output = Command::new("python3")
        .arg(&script)
        .args(["--broker", env!("CARGO_BIN_EXE_sluice"), "--rounds", "5"])
        .args(["--seed", &seed.to_string()])
        .output()
        .expect("python3 runs (tools/test.sh installs confluent-kafka)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    let summary = crate::harness::script_summary(
        &stdout,
        &stderr,
        "rounds=",
        "faults.py needs root for network namespaces",
    );
    let field = |name: &str| crate::harness::summary_field(&summary, name);
    assert!(output.status.success(), "fault rounds failed:\n{stdout}\n{stderr}");
    assert!(field("acked") > 0, "{summary}");
    for invariant in ["lost", "duplicated", "diverged", "gaps", "unhealed", "failed"] {
        assert_eq!(field(invariant), 0, "{invariant}: {summary}");
    }
}
