#!/usr/bin/env bash
# Profiles the broker under a sluice-bench workload and renders a flamegraph.
#
#   perf/flamegraph.sh WORKLOAD [BENCH ARGS...]
#
# WORKLOAD is a sluice-bench load subcommand: produce, consume or e2e. The broker runs
# on CPU 0 (one shard, --cores 1), the bench on CPU 1; `perf record -e cpu-clock -g`
# samples the broker process only (these machines have no hardware counters), with
# DWARF call graphs (release builds omit frame pointers; profile.release keeps debug
# info). `consume` first fills the topic with a produce run of the same length.
#
# Writes perf/out/flamegraph-WORKLOAD.svg (inferno), the collapsed stacks next to it,
# and prints the share of broker CPU by category (protocol decode, memory copies,
# CRC, syscalls and kernel, other).
#
# Environment: SECONDS_PROFILED (default 15), BROKER_IO (buffered|direct, default
# buffered), OUT_DIR (default perf/out), FREQ (samples/s, default 499).
set -euo pipefail
cd "$(dirname "$0")/.."

workload=${1:?usage: perf/flamegraph.sh produce|consume|e2e [bench args...]}
shift
case "$workload" in produce | consume | e2e) ;; *)
  echo "unknown workload '$workload' (produce, consume or e2e)" >&2
  exit 2
  ;;
esac
seconds=${SECONDS_PROFILED:-15}
io=${BROKER_IO:-buffered}
out_dir=${OUT_DIR:-perf/out}
freq=${FREQ:-499}
mkdir -p "$out_dir"

ulimit -l unlimited 2>/dev/null || echo "note: cannot raise ulimit -l (io_uring may need it)" >&2
command -v perf >/dev/null || {
  echo "installing perf" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
}
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked
cargo build --release -p sluice -p sluice-bench

data=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
broker_log="$out_dir/broker-$workload.log"
taskset -c 0 target/release/sluice serve --listen "127.0.0.1:$port" --data-dir "$data" \
  --cores 1 --io "$io" >"$broker_log" 2>&1 &
broker=$!
cleanup() {
  kill "$broker" 2>/dev/null || true
  wait "$broker" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
for _ in $(seq 100); do
  grep -q "listening" "$broker_log" && break
  sleep 0.1
done
grep -q "listening" "$broker_log" || {
  echo "broker did not start:" >&2
  cat "$broker_log" >&2
  exit 1
}

bench=(target/release/sluice-bench)
brokers=(--brokers "127.0.0.1:$port" --cpu 1)
if [ "$workload" = consume ]; then
  "${bench[@]}" produce "${brokers[@]}" --topic flame --duration "$seconds" "$@" >/dev/null
fi

perf_data="$out_dir/perf-$workload.data"
perf record -e cpu-clock -F "$freq" --call-graph dwarf,16384 -p "$broker" -o "$perf_data" \
  -- sleep "$seconds" 2>"$out_dir/perf-record.log" &
perf_pid=$!
"${bench[@]}" "$workload" "${brokers[@]}" --topic flame --duration "$seconds" "$@"
wait "$perf_pid" || true

collapsed="$out_dir/flamegraph-$workload.folded"
perf script -i "$perf_data" 2>/dev/null | inferno-collapse-perf --all >"$collapsed"
inferno-flamegraph --title "sluice broker: $workload ($io)" <"$collapsed" \
  >"$out_dir/flamegraph-$workload.svg"
echo "flamegraph: $out_dir/flamegraph-$workload.svg"

# Broker CPU by category: a sample counts once, in the first category that matches.
python3 - "$collapsed" <<'EOF'
import re, sys
copy = re.compile(r"memcpy|memmove|memset|copy_user|_copy_to_iter|_copy_from_iter|copy_folio|copy_page|rep_movs")
categories = [
    ("protocol decode/encode", re.compile(r"kafka_protocol|::decode|::encode|decode_body|decode_header")),
    ("memory copy/fill, user space", copy),
    ("memory copy, kernel (socket, page cache)", copy),
    ("crc32c", re.compile(r"crc32")),
]
totals = {name: 0 for name, _ in categories}
totals["kernel (syscalls, tcp, fs)"] = 0
totals["other"] = 0
leaves = {}
all_samples = 0
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip().rpartition(" ")
    count = int(count)
    all_samples += count
    frames = stack.split(";")
    leaf = frames[-1]
    leaves[leaf] = leaves.get(leaf, 0) + count
    for name, pattern in categories:
        # Copies and CRC by the leaf frame; decode by anywhere in the stack.
        hay = stack if name.startswith("protocol") else leaf
        kernel_leaf = leaf.endswith("_[k]")
        if name.endswith("user space") and kernel_leaf or name.endswith("kernel") and not kernel_leaf:
            continue
        if pattern.search(hay):
            totals[name] += count
            break
    else:
        if leaf.endswith("_[k]"):
            totals["kernel (syscalls, tcp, fs)"] += count
        else:
            totals["other"] += count
if all_samples == 0:
    print("no samples")
    sys.exit(0)
print(f"broker samples: {all_samples}")
for name, count in totals.items():
    print(f"  {name:30} {100.0 * count / all_samples:5.1f}%")
print("top leaf functions:")
for leaf, count in sorted(leaves.items(), key=lambda kv: -kv[1])[:15]:
    print(f"  {100.0 * count / all_samples:5.1f}%  {leaf[:110]}")
EOF
