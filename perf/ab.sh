#!/usr/bin/env bash
# Two broker binaries side by side, alternated in one run: the check that a change leaves
# the produce and consume throughput where it was.
#
#   perf/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]      (default 3 rounds)
#
# Each round runs, for OLD then NEW (NEW then OLD in even rounds, so neither always goes
# first), on a fresh broker (one shard pinned to CPU 0, fresh data dir, the I/O mode of
# MODE, default buffered) with sluice-bench pinned to CPU 1:
#   - produce: acks=1, 1000-byte messages, 1 partition, 1 MiB batches, unlimited, 10 s;
#   - consume: 3,000,000 messages produced first, then read once from the page cache
#     (the page-cache window off, as in perf/broker-bench.sh).
# Writes perf/out/ab/{old,new}-{produce,consume}-ROUND.json and prints one line per run,
# then the min/median/max of each. perf/baseline.sh is not run: the ratio of NEW to OLD
# is the figure.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,16p "$0"; exit 2; }
old=$(realpath "$1")
new=$(realpath "$2")
rounds=${3:-3}
out=perf/out/ab
mode=${MODE:-buffered}
# shellcheck source=perf/bench-lib.sh
. perf/bench-lib.sh
SKIP_BASELINE=1 bench_prepare
common=(--partitions 1 --message-size 1000 --batch-size 1MiB --acks 1)
run_one() { # $1 old|new, $2 round
  SLUICE="${!1}" start_broker "$mode"
  bench "$1-produce-$2" produce "${common[@]}" --topic bench --duration 10
  stop_broker
  SLUICE="${!1}" start_broker "$mode" --set log.page.cache.window.bytes=0
  target/release/sluice-bench produce --brokers "127.0.0.1:$port" --cpu 1 "${common[@]}" \
    --topic fill --messages 3000000 >/dev/null 2>&1
  bench "$1-consume-$2" consume --topic fill --from earliest
  stop_broker
}
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then order="old new"; else order="new old"; fi
  for which in $order; do run_one "$which" "$round"; done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for work, key in (("produce", "produce"), ("consume", "consume")):
    rates = {}
    for which in ("old", "new"):
        rates[which] = [json.load(open(f"{out}/{which}-{work}-{r}.json"))["runs"][0][key]["payload_mb_per_s"]
                        for r in range(1, rounds + 1)]
    o, n = statistics.median(rates["old"]), statistics.median(rates["new"])
    for which in ("old", "new"):
        r = rates[which]
        print(f"{work:8} {which}: MB/s min {min(r):8.1f} median {statistics.median(r):8.1f} max {max(r):8.1f}")
    print(f"{work:8} new/old median: {n / o:.3f}")
PY
