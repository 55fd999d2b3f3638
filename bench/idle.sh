#!/usr/bin/env bash
# Many idle connections: chat-loadgen's `idle10k` preset scaled to CLIENTS connections opened
# over RAMP seconds (at most 128 handshakes at once, the preset's concurrency), held 5 s,
# against chatd (release, 2 shards, as bench/run.sh starts it) and the floor (the bare QUIC
# relay), ROUNDS times each, alternating. For each run it prints the server's resident memory
# before and after (VmRSS), the bytes per connection, the handshake p50/p99, the handshakes
# per second reached (connections over the time from the first handshake to the last one's
# end, timed from chat-loadgen's progress lines), and the server's peak RSS.
#
#   bench/idle.sh [CLIENTS] [RAMP] [ROUNDS]     # default 100000 connections over 100 s, 1 round
#
# chat-loadgen holds the client side of every connection too (about as much memory again):
# 100,000 connections take about 4 GiB in each process. Loopback only; stops by itself.
# shellcheck source=bench/lib.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

clients="${1:-100000}"
ramp="${2:-100}"
rounds="${3:-1}"
build_release
results=bench/results
mkdir -p "$results"
trap stop_server EXIT

for round in $(seq 1 "$rounds"); do
  for target in chatd floor; do
    stem="$results/idle-$clients-$target-r$round"
    start_server "$target"
    loadgen_command "$target" idle10k --clients "$clients" --ramp-up "$ramp" --duration 5
    # Progress lines on stderr carry elapsed seconds; the last "connect" line marks the end
    # of the connection phase.
    begin="$(date +%s.%N)"
    status=0
    "${loadgen_cmd[@]}" --json-out "$stem.json" >"$stem.txt" 2>"$stem.progress" || status=$?
    peak="$(awk '/VmHWM/ {print $2 * 1024}' "/proc/$server_pid/status")"
    end="$(date +%s.%N)"
    stop_server
    python3 - "$stem.json" "$stem.progress" "$target" "$begin" "$end" "$peak" "$status" <<'EOF'
import json, re, sys
path, progress, target, begin, end, peak, status = sys.argv[1:]
data = json.load(open(path))
idle = data.get("idle") or {}
step = data["steps"][-1]
hs = step["handshake"]
# The connection phase ends where the idle phase's first progress line starts; chat-loadgen
# prints elapsed seconds first on each line.
times = [float(m.group(1)) for line in open(progress)
         for m in [re.match(r"\[\s*([0-9.]+)s idle", line)] if m]
connect = (times[0] - 1.0 - 2.0) if times else None
n = idle.get("connections") or data["clients"]
print(f"{target}: {n} connections, status {status}, correct {data['correct']}")
if idle:
    print(f"  RSS before {idle['rss_before'] / 2**20:.1f} MiB, after {idle['rss_after'] / 2**20:.1f} MiB, "
          f"peak {int(peak) / 2**20:.1f} MiB; {idle['bytes_per_connection']:.0f} bytes "
          f"({idle['bytes_per_connection'] / 1024:.1f} KiB) per connection")
print(f"  handshake p50 {hs['p50_ms']:.3f} ms, p99 {hs['p99_ms']:.3f} ms, max {hs['max_ms']:.3f} ms")
if connect:
    print(f"  connection phase about {connect:.1f} s: {n / connect:.0f} handshakes/s")
print(f"  wall {float(end) - float(begin):.1f} s")
EOF
  done
done
