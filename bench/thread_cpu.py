#!/usr/bin/env python3
"""CPU time of each thread of a server over chat-loadgen's measured phase.

    bench/thread_cpu.py PID PROGRESS OUT.json

Follows chat-loadgen's progress lines (its stderr, written to PROGRESS) and reads every thread
of process PID from /proc (utime + stime) at the first and at each later line of the
`measure` phase; OUT.json gets each thread's CPU seconds between the first and the latest of
those lines, with the seconds that passed, rewritten at each line (so it holds the whole
measured phase when chat-loadgen moves on to its drain). Ends when PID exits, chat-loadgen
reaches its drain, or on SIGTERM. Threads are named as the server named them (chatd:
shard-0, storage, storage-read-0, rocksdb:low...); one that started or ended inside the
phase counts from its first or up to its last reading.
"""
import json
import os
import signal
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def snapshot(pid):
    """Thread name -> CPU ticks (user + system), summed over threads of the same name."""
    ticks = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        # After the name: state (field 3 of proc(5)), ..., utime (14), stime (15).
        ticks[name] = ticks.get(name, 0) + int(fields[11]) + int(fields[12])
    return ticks


def main(argv):
    pid, progress, out = argv
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    first = None
    seen = 0
    while True:
        try:
            with open(progress) as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        measured = [line for line in lines if " measure " in line]
        if len(measured) > seen:
            seen = len(measured)
            now = (time.monotonic(), snapshot(pid))
            if now[1] is None:
                return 0
            if first is None:
                first = now
            else:
                threads = {name: (t - first[1].get(name, 0)) / TICK for name, t in now[1].items()}
                with open(out + ".tmp", "w") as f:
                    json.dump({"seconds": now[0] - first[0], "lines": seen - 1,
                               "threads": dict(sorted(threads.items()))}, f, indent=1)
                os.replace(out + ".tmp", out)
        if any(" drain " in line for line in lines) or not os.path.exists(f"/proc/{pid}"):
            return 0
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
