#!/usr/bin/env bash
# How long the message path is: cross-thread hops (messages put in a shard inbox, from other
# shards, storage and the read pools) and shard wake-ups per delivered message, per scenario.
# chat-loadgen runs each scenario at one fixed send rate (well below the maximum, the same for
# every build measured) against chatd (release, 2 shards, durability fsync); chatd's /metrics
# is read before and after the run, and the deltas of chatd_inbox_messages_total and
# chatd_inbox_wakeups_total are divided by those of chatd_deliveries_total (and of sends
# acknowledged). Counts, not times: they do not drift with the shared machine's load, so two
# builds can be compared from separate runs. Writes bench/results/hops.txt.
# Usage: bench/hops.sh [SCENARIO...] (default: dm rooms10 rooms100). Loopback only; each run
# stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
scenarios=("$@")
[ "${#scenarios[@]}" -gt 0 ] || scenarios=(dm rooms10 rooms100)
# The build measured: taken before this script writes its results.
label="$(git describe --always --dirty)"
build_release
out=bench/results/hops
mkdir -p "$out"
trap stop_server EXIT
summary=bench/results/hops.txt
: >"$summary.runs"

# rate_of SCENARIO: sends per second, about a fifth of the scenario's maximum here.
rate_of() {
  case "$1" in
    dm) echo 3000 ;;
    rooms10) echo 800 ;;
    rooms100) echo 100 ;;
    *) echo 200 ;;
  esac
}

# counters PORT: "messages wakeups deliveries sends" from chatd's /metrics.
counters() {
  curl -sf "http://127.0.0.1:$1/metrics" | python3 -c '
import sys
sums = {"chatd_inbox_messages_total": 0, "chatd_inbox_wakeups_total": 0,
        "chatd_deliveries_total": 0, "chatd_sends_acknowledged_total": 0}
for line in sys.stdin:
    if line.startswith("#"):
        continue
    name = line.split("{")[0].split(" ")[0]
    if name in sums:
        sums[name] += float(line.rsplit(" ", 1)[1])
print(" ".join(str(int(v)) for v in sums.values()))'
}

for scenario in "${scenarios[@]}"; do
  admin_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  start_server chatd "CHATD_ADMIN_LISTEN=127.0.0.1:$admin_port"
  rate="$(rate_of "$scenario")"
  read -r m0 w0 d0 s0 < <(counters "$admin_port")
  # shellcheck disable=SC2046 # scenario_args is a list of words
  run_loadgen chatd "$out/$scenario.json" $(scenario_args "$scenario") --rate "$rate" \
    --duration 20 --warm-up 2 --drain 5 || true
  read -r m1 w1 d1 s1 < <(counters "$admin_port")
  stop_server
  echo "$scenario $rate $((m1 - m0)) $((w1 - w0)) $((d1 - d0)) $((s1 - s0))" >>"$summary.runs"
done

python3 - "$summary.runs" "$label" "$out" <<'PY' | tee "$summary"
import json, sys
print(f"chatd {sys.argv[2]}, release, 2 shards, fsync; counts from /metrics over the whole run;")
print("server CPU per delivery and p99 send -> delivery from chat-loadgen (one run: indicative)")
print(f"{'scenario':<10} {'msg/s':>6} {'sends':>8} {'deliveries':>11} {'hops/dlv':>9} {'wakeups/dlv':>12} {'hops/send':>10} {'cpu us/dlv':>11} {'p99 ms':>7}")
for line in open(sys.argv[1]):
    s, rate, m, w, d, sends = line.split()
    m, w, d, sends = int(m), int(w), int(d), int(sends)
    per = lambda x, n: f"{x / n:.2f}" if n else "-"
    try:
        step = json.load(open(f"{sys.argv[3]}/{s}.json"))["steps"][-1]
        cpu, p99 = f"{step['server_cpu_us_per_delivery']:.1f}", f"{step['send_to_delivery']['p99_ms']:.2f}"
    except (OSError, KeyError, IndexError, ValueError, TypeError):
        cpu, p99 = "-", "-"
    print(f"{s:<10} {rate:>6} {sends:>8} {d:>11} {per(m, d):>9} {per(w, d):>12} {per(m, sends):>10} {cpu:>11} {p99:>7}")
PY
