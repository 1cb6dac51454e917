#!/usr/bin/env bash
# The default configuration against a tuned one, in one run on this machine, alternating:
#
#   perf/defaults.sh [REPEATS]      (default 3)
#
# 1. perf/baseline.sh: fio and iperf3 limits, measured now (SKIP_BASELINE=1 skips it).
# 2. REPEATS rounds; in each, every configuration in turn, each workload on a fresh
#    broker (one shard, page-cache mode, pinned to CPU 0) and data dir, sluice-bench
#    pinned to CPU 1:
#    - produce at RATE messages/s (default 400000, under half the maximum), 20 s (8 GB:
#      past where page-cache produce falls off this VM's cliff without a window),
#      256 KiB batches, 4 in flight: the latency figures;
#    - produce, unlimited: acks=1, 1000-byte messages, 1 partition, 1 MiB batches, 10 s;
#    - consume: 3 GB produced, then read from the earliest offset once.
#    The configurations: "default" (`sluice serve` with no properties: what users run)
#    and "tuned" (TUNED_ARGS, default: a fixed 256 MiB page-cache window and a 200 us
#    idle poll, the settings that measured best before they were the defaults), named
#    TUNED_NAME in the output (default "tuned").
# Each run writes perf/out/defaults/CONFIG-WORKLOAD-N.json (+ .txt); one summary line per
# run goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
rate=${RATE:-400000}
tuned=${TUNED_ARGS:---set log.page.cache.window.bytes=268435456 --set reactor.idle.poll.us=200}
name=${TUNED_NAME:-tuned}
out=perf/out/defaults
# shellcheck source=perf/bench-lib.sh
. perf/bench-lib.sh
bench_prepare

max=(--partitions 1 --message-size 1000 --batch-size 1MiB --acks 1)
latency=(--partitions 1 --message-size 1000 --batch-size 256KiB --in-flight 4 --acks 1)
for i in $(seq "$repeats"); do
  for config in default "$name"; do
    if [ "$config" = default ]; then BROKER_ARGS=""; else BROKER_ARGS=$tuned; fi
    # The latency run first: after the unlimited one, its 10 GB are still being written
    # back and discarded, which took request p99 from ~0.3 to ~4 ms here.
    start_broker buffered
    bench "$config-rate-$i" produce "${latency[@]}" --topic bench --duration 20 --rate "$rate"
    stop_broker
    start_broker buffered
    bench "$config-produce-$i" produce "${max[@]}" --topic bench --duration 10
    stop_broker
    start_broker buffered
    target/release/sluice-bench produce --brokers "127.0.0.1:$port" --cpu 1 "${max[@]}" \
      --topic fill --messages 3000000 >/dev/null 2>&1
    bench "$config-consume-$i" consume --topic fill --from earliest
    stop_broker
  done
done
