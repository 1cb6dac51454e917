# Shell functions shared by perf/broker-bench.sh and perf/defaults.sh (sourced, from the
# repository's top directory, after `out` is set): a release broker on one shard pinned
# to CPU 0 with a fresh data dir, and sluice-bench runs pinned to CPU 1 that write
# $out/NAME.json and print one summary line each.
#   bench_prepare                 makes $out, builds the release binaries, and unless
#                                 SKIP_BASELINE is set runs perf/baseline.sh into
#                                 $out/baseline.json (data in BENCH_DIR)
#   start_broker MODE [ARGS...]   BROKER_ARGS, then ARGS, are more `sluice serve` arguments;
#                                 SLUICE names another broker binary (perf/ab.sh)
#   stop_broker
#   bench NAME SUBCOMMAND [ARGS...]   BENCH_ARGS are more sluice-bench arguments
bench_prepare() {
  mkdir -p "$out"
  ulimit -l unlimited 2>/dev/null || echo "note: cannot raise ulimit -l (io_uring may need it)" >&2
  cargo build --release -p sluice -p sluice-bench >&2
  if [ -z "${SKIP_BASELINE:-}" ]; then
    BASELINE_MIB=${BASELINE_MIB:-1024} perf/baseline.sh "${BENCH_DIR:-./bench-data}" | tee "$out/baseline.json"
  fi
}

broker=""
data=""
start_broker() { # $1 io mode, rest: more `sluice serve` arguments (after BROKER_ARGS)
  local io=$1
  shift
  data=$(mktemp -d "${BENCH_DIR:-/tmp}/sluice-bench-XXXX")
  port=$((20000 + RANDOM % 20000))
  taskset -c 0 "${SLUICE:-target/release/sluice}" serve --listen "127.0.0.1:$port" --data-dir "$data" \
    --cores 1 --io "$io" ${BROKER_ARGS:-} "$@" >"$data.log" 2>&1 &
  broker=$!
  for _ in $(seq 100); do
    grep -q "listening" "$data.log" && return 0
    sleep 0.1
  done
  echo "broker did not start" >&2
  cat "$data.log" >&2
  exit 1
}
stop_broker() {
  kill "$broker" 2>/dev/null || true
  wait "$broker" 2>/dev/null || true
  rm -rf "$data" "$data.log"
  # Let the kernel finish writing back (and discarding) this run's data before the next
  # run measures: buffered runs leave gigabytes of dirty pages behind.
  sync
}
trap stop_broker EXIT
bench() { # $1 json name, rest: bench args
  local name=$1
  shift
  target/release/sluice-bench "$@" --brokers "127.0.0.1:$port" --cpu 1 ${BENCH_ARGS:-} --json "$out/$name.json" \
    2>/dev/null | tail -n 12 >"$out/$name.txt" || true
  python3 - "$out/$name.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["runs"][0]
name = sys.argv[1].rsplit("/", 1)[-1][:-5]
parts = [f"{name:24}"]
if r.get("produce"):
    p, l = r["produce"], r["produce_latency_us"]
    parts.append(f"produce {p['payload_mb_per_s']:8.1f} MB/s {p['msgs_per_s']:10.0f} msg/s "
                 f"p50 {l['p50']}us p99 {l['p99']}us p99.9 {l['p99_9']}us p99.99 {l['p99_99']}us max {l['max']}us")
    q, rq = r.get("produce_queue_time_us"), r.get("produce_request_latency_us")
    if q and rq:
        parts.append(f"(request p50 {rq['p50']}us p99 {rq['p99']}us; queue p99 {q['p99']}us)")
if r.get("consume"):
    c = r["consume"]
    parts.append(f"consume {c['payload_mb_per_s']:8.1f} MB/s {c['msgs']} msgs")
if r.get("e2e_latency_us"):
    l = r["e2e_latency_us"]
    parts.append(f"e2e p50 {l['p50']}us p99 {l['p99']}us p99.9 {l['p99_9']}us max {l['max']}us")
print("  ".join(parts))
EOF
}

