#!/usr/bin/env bash
# 10,000 partitions on one shard: how long creating them takes, and the broker's resident
# memory and open descriptors per partition, idle and with traffic on 1,000 of them
# (produced to, then consumed back, with sluice-bench), and how long a restart takes.
# Each run starts a fresh broker (release build, --cores 1, default properties) on a fresh
# data dir; prints one JSON line per run, then min/median/max of every figure.
#
#   perf/partitions.sh [RUNS] [DIR]   RUNS: default 3; DIR: where the data dirs go (default
#                                     ./bench-data/partitions), deleted after each run.
#   Needs: cargo build --release -p sluice -p sluice-bench; python3 with kafka-python.
#   PARTITION_MIB (default 2): MiB produced to each of the 1,000 busy partitions.
#   BROKER_ARGS: more flags for the broker, e.g. "--set log.open.files.max=2000".
set -euo pipefail
runs=${1:-3}
parent=${2:-./bench-data/partitions}
per_partition_mib=${PARTITION_MIB:-2}
topics=10
partitions=1000
sluice=target/release/sluice
bench=target/release/sluice-bench
port=${PORT:-19092}
address=127.0.0.1:$port
mkdir -p "$parent"
export NO_COLOR=1 # plain log lines, for the greps below

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }

# Waits until the broker's log shows its shard listening; prints the seconds it took.
wait_listening() { # $1 log, $2 start time (s.ns)
  until grep -qs "listening" "$1"; do sleep 0.05; done
  python3 -c "import time; print(round(time.time() - $2, 2))"
}

create_topics() { # prints the seconds the CreateTopics of all topics took
  python3 - "$address" "$topics" "$partitions" <<'EOF'
import sys, time
from kafka.admin import KafkaAdminClient, NewTopic
address, topics, partitions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
admin = KafkaAdminClient(bootstrap_servers=address, request_timeout_ms=600_000)
new = [NewTopic(f"many-{t}", partitions, 1) for t in range(topics)]
start = time.time()
response = admin.create_topics(new, timeout_ms=600_000)
took = time.time() - start
# kafka-python 3 answers a dict; older ones a response object of (name, code, ...) tuples.
topics = response["topics"] if isinstance(response, dict) else response.topics
code = lambda t: t["error_code"] if isinstance(t, dict) else t[1]
errors = [t for t in topics if code(t) != 0]
if len(topics) != len(new) or errors:
    sys.exit(f"CreateTopics failed: {errors}")
print(round(took, 2))
EOF
}

for run in $(seq 1 "$runs"); do
  dir="$parent/run$run"
  rm -rf "$dir"
  mkdir -p "$dir"
  start=$(date +%s.%N)
  "$sluice" serve --cores 1 --data-dir "$dir/data" --listen "$address" ${BROKER_ARGS:-} \
    >"$dir/broker.log" 2>&1 &
  pid=$!
  wait_listening "$dir/broker.log" "$start" >/dev/null
  sleep 1
  base_rss=$(rss_kib $pid) base_fds=$(fds $pid)
  create_s=$(create_topics)
  sleep 2
  idle_rss=$(rss_kib $pid) idle_fds=$(fds $pid)

  # Traffic on the 1,000 partitions of one topic: PARTITION_MIB MiB each (1 KiB
  # messages, keys spread over every partition), then all of it consumed back. The
  # highest RSS and descriptor count are sampled every 0.2 s meanwhile.
  ( peak_rss=0 peak_fds=0
    while kill -0 $pid 2>/dev/null && [ ! -e "$dir/stop-sampling" ]; do
      r=$(rss_kib $pid || echo 0) f=$(fds $pid || echo 0)
      [ "$r" -gt "$peak_rss" ] && peak_rss=$r
      [ "$f" -gt "$peak_fds" ] && peak_fds=$f
      echo "$peak_rss $peak_fds" >"$dir/peak"
      sleep 0.2
    done ) &
  sampler=$!
  messages=$((per_partition_mib * 1024 * partitions))
  "$bench" produce --brokers "$address" --topic many-0 --messages "$messages" \
    --message-size 1024 --batch-size 64KiB --key-distribution sequential >"$dir/produce.txt" 2>&1
  "$bench" consume --brokers "$address" --topic many-0 >"$dir/consume.txt" 2>&1
  touch "$dir/stop-sampling"
  wait $sampler
  read -r peak_rss peak_fds <"$dir/peak"
  sleep 2
  busy_rss=$(rss_kib $pid) busy_fds=$(fds $pid)
  consumed=$(grep -o 'consume  [0-9,]* msgs' "$dir/consume.txt" | head -1 | awk '{print $2}' | tr -d , || true)

  kill -TERM $pid
  wait $pid || true
  start=$(date +%s.%N)
  "$sluice" serve --cores 1 --data-dir "$dir/data" --listen "$address" ${BROKER_ARGS:-} \
    >"$dir/restart.log" 2>&1 &
  pid=$!
  restart_s=$(wait_listening "$dir/restart.log" "$start")
  sleep 2
  restart_rss=$(rss_kib $pid) restart_fds=$(fds $pid)
  kill -TERM $pid
  wait $pid || true
  limit=$(grep -o 'open_files_limit=[0-9]*' "$dir/broker.log" | head -1 | cut -d= -f2)
  budget=$(grep -o 'per_shard=[0-9]*' "$dir/broker.log" | head -1 | cut -d= -f2)

  n=$((topics * partitions))
  python3 - <<EOF
import json
n = $n
print(json.dumps({
    "run": $run, "partitions": n, "open_files_limit": $limit, "budget_per_shard": $budget,
    "create_s": $create_s, "restart_s": $restart_s,
    "base_rss_mib": round($base_rss / 1024, 1), "base_fds": $base_fds,
    "idle_rss_mib": round($idle_rss / 1024, 1), "idle_fds": $idle_fds,
    "idle_rss_kib_per_partition": round(($idle_rss - $base_rss) / n, 2),
    "idle_fds_per_partition": round(($idle_fds - $base_fds) / n, 3),
    "traffic_peak_rss_mib": round($peak_rss / 1024, 1), "traffic_peak_fds": $peak_fds,
    "after_traffic_rss_mib": round($busy_rss / 1024, 1), "after_traffic_fds": $busy_fds,
    "after_traffic_rss_kib_per_partition": round(($busy_rss - $base_rss) / n, 2),
    "after_traffic_fds_per_partition": round(($busy_fds - $base_fds) / n, 3),
    "restart_rss_mib": round($restart_rss / 1024, 1), "restart_fds": $restart_fds,
    "produced_messages": $messages, "consumed_messages": ${consumed:-0},
}))
EOF
  rm -rf "$dir/data"
done | tee "$parent/results.jsonl"

python3 - "$parent/results.jsonl" <<'EOF'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
for key in runs[0]:
    values = [r[key] for r in runs]
    if all(isinstance(v, (int, float)) for v in values) and key != "run":
        print(f"{key}: min {min(values)} median {statistics.median(values)} max {max(values)}")
EOF
