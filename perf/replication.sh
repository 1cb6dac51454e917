#!/usr/bin/env bash
# acks=all produce with replication factor 3 against replication factor 1, on a
# three-broker cluster on this machine: three `sluice serve --cores 1` processes on
# loopback, each a broker and a controller voter, all on this machine's cores with the
# load generator. Both topics have one partition led by broker 1 (replicas 1,2,3 and 1);
# the producer sends to broker 1. Retention keeps about 1 GiB per replica (the runs write
# tens of GB).
#
#   perf/replication.sh [ROUNDS] [SECONDS]   (default 3 rounds of 10 s, alternating)
#   BROKER_ARGS="--set NAME=VALUE ..." perf/replication.sh   (more broker properties)
#   KEEP_DIR=1 perf/replication.sh   (keep the brokers' data dirs and logs)
#   PARTITIONS=N PRODUCERS=M perf/replication.sh   (N partitions, all led by broker 1, M
#                                                  producer connections; default 1 and 1)
#
# First, as fast as it goes (MB/s; RF3 / RF1 is the figure: the machine does three
# times the writes on the same cores). Then both at half of RF3's median rate, for the
# latency percentiles. Then the follower catch-up: broker 3 stopped, 200 MB produced,
# broker 3 started again, the time until it is back in the ISR (MB/s of catch-up).
# Writes perf/out/replication/*.json and prints a summary; unless SKIP_BASELINE is set,
# perf/baseline.sh first (the physical limits, in perf/out/replication/baseline.json).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-10}
out=perf/out/replication
bench_dir=${BENCH_DIR:-./bench-data}
mkdir -p "$out" "$bench_dir"
ulimit -l unlimited 2>/dev/null || true
cargo build --release -p sluice -p sluice-bench >&2
if [ -z "${SKIP_BASELINE:-}" ]; then
  BASELINE_MIB=${BASELINE_MIB:-1024} perf/baseline.sh "$bench_dir" | tee "$out/baseline.json"
fi

dir=$(mktemp -d "$bench_dir/cluster-XXXX")
ports=() controllers=() pids=()
for i in 1 2 3; do
  ports+=($((20000 + RANDOM % 10000)))
  controllers+=($((30000 + RANDOM % 10000)))
done
voters="1@127.0.0.1:${controllers[0]},2@127.0.0.1:${controllers[1]},3@127.0.0.1:${controllers[2]}"
start() { # $1 node id (1..3)
  local i=$(($1 - 1))
  target/release/sluice serve --data-dir "$dir/n$1" --cores 1 \
    --set "node.id=$1" --set process.roles=broker,controller \
    --set "listeners=PLAINTEXT://127.0.0.1:${ports[$i]},CONTROLLER://127.0.0.1:${controllers[$i]}" \
    --set controller.listener.names=CONTROLLER --set "controller.quorum.voters=$voters" \
    --set log.retention.check.interval.ms=1000 ${BROKER_ARGS:-} \
    >>"$dir/n$1.log" 2>&1 &
  pids[$i]=$!
}
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "${KEEP_DIR:-}" ] || rm -rf "$dir"
}
trap stop_all EXIT
for n in 1 2 3; do start $n; done
for n in 1 2 3; do
  for _ in $(seq 300); do grep -q "listening" "$dir/n$n.log" && break; sleep 0.1; done
done
b1="127.0.0.1:${ports[0]}"
cli() { target/release/sluice "$@" --brokers "$b1"; }
for _ in $(seq 100); do cli cluster info >/dev/null 2>&1 && break; sleep 0.2; done
# A GiB per replica at most: the runs write tens of GB.
keep=(--config retention.bytes=1073741824 --config segment.bytes=268435456)
partitions=${PARTITIONS:-1}
rf1=1 rf3=1:2:3
for p in $(seq 2 "$partitions"); do
  rf1="$rf1,1"
  if [ $((p % 2)) = 0 ]; then rf3="$rf3,1:3:2"; else rf3="$rf3,1:2:3"; fi
done
cli topic create rf1 --replica-assignment "$rf1" "${keep[@]}" >/dev/null
cli topic create rf3 --replica-assignment "$rf3" "${keep[@]}" >/dev/null
sleep 3

bench() { # $1 name, rest: sluice-bench produce arguments
  local name=$1
  shift
  target/release/sluice-bench produce --brokers "$b1" --acks all --duration "$seconds" \
    --warmup 2 --producers "${PRODUCERS:-1}" "$@" --json "$out/$name.json" >/dev/null 2>"$out/$name.err" || {
    echo "bench $name failed:" >&2
    cat "$out/$name.err" >&2
    exit 1
  }
}
for r in $(seq "$rounds"); do
  bench "max-rf1-$r" --topic rf1
  bench "max-rf3-$r" --topic rf3
done
half=$(python3 - "$out" "$rounds" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rates = [json.load(open(f"{out}/max-rf3-{r}.json"))["runs"][0]["produce"]["msgs_per_s"]
         for r in range(1, rounds + 1)]
print(int(statistics.median(rates) / 2))
EOF
)
for r in $(seq "$rounds"); do
  bench "half-rf1-$r" --topic rf1 --rate "$half"
  bench "half-rf3-$r" --topic rf3 --rate "$half"
done

# Catch-up: broker 3 down while 200 MB go to rf3 (ISR 1,2), then back.
kill "${pids[2]}"
wait "${pids[2]}" 2>/dev/null || true
sleep 4
target/release/sluice-bench produce --brokers "$b1" --topic rf3 --acks all \
  --messages 200000 --json "$out/catchup-produce.json" >/dev/null 2>&1
started=$(date +%s.%N)
start 3
rejoined=""
for _ in $(seq 1200); do
  if cli topic describe rf3 --json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
p = d[0]["partitions"][0] if isinstance(d, list) else d["partitions"][0]
sys.exit(0 if len(p["isr"]) == 3 else 1)' 2>/dev/null; then
    rejoined=$(date +%s.%N)
    break
  fi
  sleep 0.1
done

python3 - "$out" "$rounds" "$half" "$started" "${rejoined:-0}" <<'EOF'
import json, statistics, sys
out, rounds, half = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
started, rejoined = float(sys.argv[4]), float(sys.argv[5])
def runs(kind, rf):
    return [json.load(open(f"{out}/{kind}-rf{rf}-{r}.json"))["runs"][0] for r in range(1, rounds + 1)]
def spread(values):
    values = sorted(values)
    return f"{values[0]:.1f} / {statistics.median(values):.1f} / {values[-1]:.1f}"
mb = {rf: [r["produce"]["payload_mb_per_s"] for r in runs("max", rf)] for rf in (1, 3)}
print(f"acks=all max MB/s (min / median / max of {rounds}): RF1 {spread(mb[1])}  RF3 {spread(mb[3])}")
print(f"RF3 / RF1 (medians): {statistics.median(mb[3]) / statistics.median(mb[1]):.2f}")
for rf in (1, 3):
    for r in runs("half", rf):
        l = r["produce_latency_us"]
        print(f"half load ({half} msg/s) RF{rf}: {r['produce']['payload_mb_per_s']:.1f} MB/s "
              f"p50 {l['p50']} us p99 {l['p99']} us p99.9 {l['p99_9']} us max {l['max']} us")
if rejoined:
    print(f"catch-up: broker 3 back in the ISR {rejoined - started:.1f} s after its start "
          f"(200000 messages of 1 KiB behind: {200000 * 1024 / 1e6 / (rejoined - started):.0f} MB/s)")
else:
    print("catch-up: broker 3 did not rejoin the ISR within 120 s")
EOF
