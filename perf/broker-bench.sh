#!/usr/bin/env bash
# The broker benchmarks behind perf/RESULTS.md, in one run on this machine:
#
#   perf/broker-bench.sh [REPEATS]      (default 3)
#
# 1. perf/baseline.sh: fio and iperf3 limits, measured now.
# 2. For each I/O mode (buffered, direct), each repeat on a fresh broker (one shard,
#    pinned to CPU 0) and a fresh data dir; sluice-bench pinned to CPU 1:
#    - produce: acks=1, 1000-byte messages, 1 partition, 1 MiB batches, unlimited, 10 s;
#    - consume: 3 GB produced first, then read from the page cache, 3 times (this broker
#      runs with the page-cache window off whatever BROKER_ARGS say, so that the 3 GB
#      stay in the page cache);
#    - produce at half the median maximum rate of that mode, 10 s, 256 KiB batches and 4
#      in flight: the latency figures;
#    - e2e: produce and consume together, 10 s.
# Every run starts after a `sync`, so the previous run's writeback does not compete with it.
# Each run writes perf/out/bench/MODE-WORKLOAD-N.json (+ .svg); the script prints one
# summary line per run.
# Environment: MODES (default "buffered direct"), BENCH_DIR (where data goes; default
# /tmp), SKIP_BASELINE=1 (keep perf/out/bench/baseline.json), SKIP_MAX=1 (reuse existing
# max-throughput produce runs), BROKER_ARGS (more `sluice serve` arguments, e.g.
# "--set log.page.cache.window.bytes=67108864"), BENCH_ARGS (more sluice-bench
# arguments, e.g. "--idle-poll-us 0").
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
out=perf/out/bench
# shellcheck source=perf/bench-lib.sh
. perf/bench-lib.sh
bench_prepare

common=(--partitions 1 --message-size 1000 --batch-size 1MiB --acks 1)
# At half load, the batches a latency-minded producer would send: 256 KiB, 4 in flight.
# At half load (640-790k msg/s here) a 1 MiB batch takes 1.3-1.6 ms to fill, and its
# first messages wait that long.
latency=(--partitions 1 --message-size 1000 --batch-size 256KiB --in-flight 4 --acks 1)
for io in ${MODES:-buffered direct}; do
  for i in $(seq "$repeats"); do
    [ -n "${SKIP_MAX:-}" ] && [ -f "$out/$io-produce-$i.json" ] && continue
    start_broker "$io"
    bench "$io-produce-$i" produce "${common[@]}" --topic bench --duration 10
    stop_broker
  done
  rate=$(python3 - "$out" "$io" "$repeats" <<'EOF'
import json, statistics, sys
out, io, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rates = [json.load(open(f"{out}/{io}-produce-{i}.json"))["runs"][0]["produce"]["msgs_per_s"] for i in range(1, n + 1)]
print(int(statistics.median(rates) / 2))
EOF
)
  start_broker "$io" --set log.page.cache.window.bytes=0
  target/release/sluice-bench produce --brokers "127.0.0.1:$port" --cpu 1 "${common[@]}" \
    --topic fill --messages 3000000 >/dev/null 2>&1
  for i in $(seq "$repeats"); do
    bench "$io-consume-$i" consume --topic fill --from earliest
  done
  stop_broker
  for i in $(seq "$repeats"); do
    start_broker "$io"
    bench "$io-halfload-$i" produce "${latency[@]}" --topic bench --duration 10 --rate "$rate"
    stop_broker
  done
  for i in $(seq "$repeats"); do
    start_broker "$io"
    bench "$io-e2e-$i" e2e "${common[@]}" --topic bench --duration 10
    stop_broker
  done
done
