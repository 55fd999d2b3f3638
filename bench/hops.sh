#!/usr/bin/env bash
# How long the message path is: cross-thread hops (messages put in a shard inbox, from other
# shards, storage and the read pools) and shard wake-ups per delivered message, per scenario.
# chat-loadgen runs each scenario at its preset's steady rate (well below the maximum, the same
# for every build measured; `chat-loadgen --help`) for 20 s against chatd (release, 2 shards,
# durability fsync); chatd's /metrics is read before and after the run, and the deltas of
# chatd_inbox_messages_total and chatd_inbox_wakeups_total are divided by those of
# chatd_deliveries_total (and of sends acknowledged). Counts, not times: they do not drift with
# the shared machine's load, so two builds can be compared from separate runs. The table is
# recorded in bench/results/summary.json (`hops`) and printed (again, from the summary alone:
# `bench/report.py --show hops`).
# Usage: bench/hops.sh [SCENARIO...] (default: dm rooms10 rooms100). Loopback only; each run
# stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
scenarios=("$@")
[ "${#scenarios[@]}" -gt 0 ] || scenarios=(dm rooms10 rooms100)
build_release
for scenario in "${scenarios[@]}"; do
  preset_option "$scenario" scenario >/dev/null || exit 64
done
out=bench/results/hops
mkdir -p "$out"
trap stop_server EXIT
runs="$out/counts.runs"
: >"$runs"

for scenario in "${scenarios[@]}"; do
  admin_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  start_server chatd "CHATD_ADMIN_LISTEN=127.0.0.1:$admin_port"
  read -r m0 w0 d0 s0 < <(path_counters "$admin_port")
  run_scenario chatd "$scenario" "$out/$scenario.json" --duration 20 --warm-up 2 --drain 5 || true
  read -r m1 w1 d1 s1 < <(path_counters "$admin_port")
  stop_server
  echo "$scenario $((m1 - m0)) $((w1 - w0)) $((d1 - d0)) $((s1 - s0))" >>"$runs"
done

python3 bench/report.py hops "bench/hops.sh $*" "$BENCH_COMMIT" "$runs"
