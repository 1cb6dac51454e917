#!/usr/bin/env bash
# The physical limits Sluice's benchmarks are judged against, measured now on this
# machine: sequential write bandwidth (O_DIRECT and page cache, 16 KiB and 1 MiB blocks,
# fsync at the end) with fio, loopback TCP bandwidth with iperf3 (plain and zero-copy
# sends), and how long the idle machine stalls a ready thread (perf/stall-probe.c: the floor under any tail latency).
# Prints one JSON line.
#
#   perf/baseline.sh [DIR]      DIR: where to write (default ./bench-data), on the disk
#                               the broker's data dir uses.
set -euo pipefail
dir=${1:-./bench-data}
size_mib=${BASELINE_MIB:-2048}
mkdir -p "$dir"

if ! command -v fio >/dev/null || ! command -v iperf3 >/dev/null; then
  echo "installing fio and iperf3" >&2
  if [ "$(id -u)" = 0 ]; then sudo_cmd=""; else sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq fio iperf3 >/dev/null
fi

fio_write() { # $1 block size, $2 direct (0|1) -> MB/s
  fio --name=seqwrite --rw=write --ioengine=io_uring --iodepth=1 --numjobs=1 --end_fsync=1 \
      --directory="$dir" --bs="$1" --size="${size_mib}m" --direct="$2" --output-format=json \
    | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"]/1e6,1))'
  rm -f "$dir/seqwrite.0.0"
}

direct_16k=$(fio_write 16k 1)
direct_1m=$(fio_write 1m 1)
buffered_16k=$(fio_write 16k 0)
buffered_1m=$(fio_write 1m 0)

# Loopback TCP, three ways (5 s each):
# - loopback_tcp: iperf3's defaults (128 KiB writes, threads where the scheduler puts them);
# - loopback_tcp_1m: 1 MiB writes, sender on CPU 0 and receiver on CPU 1 (where the broker
#   and sluice-bench run): what loopback can carry, the physical limit;
# - loopback_sendfile: the same with `-Z` (sendfile from a file in the page cache): what
#   a zero-copy send (the broker's fetch path in page-cache mode) can carry.
iperf() { # iperf3 client args -> MB/s received
  local port=$((20000 + RANDOM % 20000))
  iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
  local server=$!
  sleep 0.5
  iperf3 -c 127.0.0.1 -p "$port" -t 5 -J "$@" \
    | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8e6,1))'
  wait "$server" 2>/dev/null || true
}
pin=()
if [ "$(nproc)" -ge 2 ]; then pin=(-A 0,1); fi
loopback=$(iperf)
loopback_1m=$(iperf -l 1M "${pin[@]}")
loopback_sendfile=$(iperf -Z -l 1M "${pin[@]}")

# Stalls: the longest a ready thread waited for its CPU on the idle machine (hypervisor
# preemption, kernel threads), one probe per CPU for STALL_SECONDS (perf/stall-probe.c).
# No process's tail latency here can be shorter.
probe=$(mktemp -d)
stall_max_ms=null
stalls_over_1ms=null
if cc -O2 -o "$probe/stall-probe" "$(dirname "$0")/stall-probe.c" 2>/dev/null; then
  for cpu in $(seq 0 $(($(nproc) - 1))); do
    taskset -c "$cpu" "$probe/stall-probe" "${STALL_SECONDS:-10}" >"$probe/cpu$cpu" &
  done
  wait
  read -r stall_max_ms stalls_over_1ms < <(sort -k1,1 -g -r "$probe"/cpu* | awk 'NR == 1 { m = $1 } { n += $2 } END { print m, n }')
fi
rm -rf "$probe"

printf '{"date":"%s","fio_direct_16k_mb_s":%s,"fio_direct_1m_mb_s":%s,"fio_buffered_16k_mb_s":%s,"fio_buffered_1m_mb_s":%s,"loopback_tcp_mb_s":%s,"loopback_tcp_1m_mb_s":%s,"loopback_sendfile_mb_s":%s,"stall_max_ms":%s,"stalls_over_1ms":%s}\n' \
  "$(date -u +%FT%TZ)" "$direct_16k" "$direct_1m" "$buffered_16k" "$buffered_1m" "$loopback" "$loopback_1m" "$loopback_sendfile" "$stall_max_ms" "$stalls_over_1ms"
