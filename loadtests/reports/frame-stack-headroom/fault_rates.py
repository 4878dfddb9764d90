"""Steady-state minor page faults and system time of each VLLM::Worker in a `watch_faults.sh` log, in
the order the workers ran: 2 s windows where the worker ran >= 85% user time at full RSS (the load).

    python loadtests/reports/frame-stack-headroom/fault_rates.py loadtests/reports/frame-stack-headroom/watch-faults.log
"""
import statistics
import sys
from collections import defaultdict

rows = [[int(x) for x in line.split()] for line in open(sys.argv[1]) if len(line.split()) == 9]
workers: dict[int, list[list[int]]] = defaultdict(list)
for row in rows:  # time, pid, minflt, majflt, utime, stime (ticks), voluntary, involuntary switches, rss
    workers[row[1]].append(row)
for pid, samples in workers.items():
    windows = [((b[2] - a[2]) / (b[0] - a[0]), (b[4] - a[4]) / (b[0] - a[0]), (b[5] - a[5]) / (b[0] - a[0]))
               for a, b in zip(samples, samples[1:]) if b[0] > a[0] and b[8] > 600_000]
    load = [w for w in windows if w[1] >= 85]
    if load:
        print(f"worker {pid}: {len(load)} windows, minor faults/s median {statistics.median(w[0] for w in load):.0f}, "
              f"system time {statistics.mean(w[2] for w in load):.1f}% of a core")
