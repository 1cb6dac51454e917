#!/usr/bin/env python3
"""Block-layer write latency from a perf recording, to tell device latency from the rest.

Record while a benchmark runs:
  perf record -a -e block:block_rq_issue -e block:block_rq_complete -o blk.data -- sleep 11
then: python3 perf/block-latency.py blk.data [more.data ...]
Pairs each request issue with its completion by (device, sector); prints p50 / p99 / p99.9
/ max of issue -> complete and the requests over 5 ms with their time in the recording."""
import sys, re, subprocess
for f in sys.argv[1:]:
    out = subprocess.run(["perf","script","-i",f,"-F","time,event,trace"],capture_output=True,text=True).stdout
    issue = {}
    lats = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+):\s+block:(block_rq_\w+):\s+(\d+),(\d+)\s+(\S+)\s+(\d+)?.*?(\d+) \+ (\d+)", line)
        if not m: continue
        t, ev, maj, mn, rwbs = float(m.group(1)), m.group(2), m.group(3), m.group(4), m.group(5)
        sector = m.group(7)
        key = (maj, mn, sector)
        if ev == "block_rq_issue": issue[key] = t
        elif key in issue:
            lats.append((t - issue.pop(key), t, rwbs))
    if not lats: print(f, "no pairs"); continue
    t0 = min(l[1] for l in lats)
    ls = sorted(l[0]*1000 for l in lats)
    n=len(ls)
    print(f, n, "reqs; p50 %.2f p99 %.2f p99.9 %.2f max %.2f ms" % (ls[n//2], ls[int(n*.99)], ls[int(n*.999)], ls[-1]))
    big = sorted([l for l in lats if l[0] > 0.005], key=lambda l: l[1])
    print("  >5ms at s:", " ".join("%.2f(%.0fms)" % (l[1]-t0, l[0]*1000) for l in big[:20]))
