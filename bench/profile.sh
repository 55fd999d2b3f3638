#!/usr/bin/env bash
# Where chatd's time goes at one fixed rate: the same scenario and rate against the floor,
# chatd with `buffered` durability and chatd with `fsync` (the default), one fresh server
# each, measured for the preset's fixed-rate duration (10 s). For each it records the
# latencies and the server's CPU per delivery (chat-loadgen, from /proc), and, over 5 s of
# the measured phase, the server's fdatasync calls and context switches (`perf stat` on
# kernel tracepoints; "–" where perf cannot read them). The difference between the three
# rows is the price of storage and of durability. The result JSONs go to
# bench/results/profile-* (local, not in git); bench/report.py records their figures in
# bench/results/summary.json and renders the profile section of bench/RESULTS.md from it.
#
#   bench/profile.sh                # dm at the preset's steady rate (chat-loadgen --help)
#   bench/profile.sh rooms10 3700   # a scenario (a chat-loadgen preset, not idle10k) and a rate
#   PROFILE_RECORD=1 bench/profile.sh dm 5000   # then a perf call-graph profile of each
#                                               # chatd variant, in runs of their own
#                                               # (bench/results/profile-*.perf.txt)
#
# Only 127.0.0.1 is targeted; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

scenario="${1:-dm}"
results=bench/results
mkdir -p "$results"

# shellcheck source=bench/lib.sh
source bench/lib.sh
build_release

# The rate: the one given, or the preset's steady rate.
rate_args=()
[ -z "${2:-}" ] || rate_args=(--rate "$2")
shape="$(preset_option "$scenario" scenario "${rate_args[@]}")" || exit 64
[ "$shape" != idle ] || { echo "profile: idle sends nothing to profile" >&2; exit 64; }
rate="$(preset_option "$scenario" rate "${rate_args[@]}")"

trap stop_server EXIT

perf_ok=0
if command -v perf >/dev/null \
  && perf stat -e syscalls:sys_enter_fdatasync,sched:sched_switch -- true >/dev/null 2>&1; then
  perf_ok=1
else
  echo "profile: perf cannot read the syscall and scheduler tracepoints here; those columns stay empty" >&2
fi

# wait_for_measure LOG PID: waits until the load generator (PID) writing its progress to LOG
# is in its measured phase. Fails when it exits first.
wait_for_measure() {
  local log="$1" pid="$2"
  while ! grep -q " measure " "$log" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.2
  done
}

# start_variant floor|buffered|fsync: a fresh server for the variant; sets target.
start_variant() {
  if [ "$1" = floor ]; then
    target=floor
    start_server floor
  else
    target=chatd
    start_server chatd "CHATD_STORAGE_DURABILITY=$1"
  fi
}

# start_load OUT.json OUT_PREFIX: the load generator in the background against the running
# server (table to OUT_PREFIX.txt, progress lines to OUT_PREFIX.progress); sets loadgen.
start_load() {
  loadgen_command "$target" "$scenario" --rate "$rate"
  "${loadgen_cmd[@]}" --json-out "$1" >"$2.txt" 2>"$2.progress" &
  loadgen=$!
}

# measure VARIANT: the measured run; the latencies and CPU of the table, and the counters.
measure() {
  local variant="$1" name="profile-$scenario-$1"
  local out="$results/$name.json" counters="{}" counted status=0
  rm -f "$results/$name".*
  echo "=== $scenario at $rate msg/s against $variant"
  start_variant "$variant"
  start_load "$out" "$results/$name"
  if wait_for_measure "$results/$name.progress" "$loadgen" && [ "$perf_ok" = 1 ]; then
    counted="$(perf stat -x, -e syscalls:sys_enter_fdatasync,sched:sched_switch \
      -p "$server_pid" -- sleep 5 2>&1 >/dev/null || true)"
    counters="$(python3 - "$counted" <<'EOF'
import json, sys
counts = {}
for line in sys.argv[1].splitlines():
    fields = line.split(",")
    if len(fields) > 2 and fields[0].isdigit():
        counts[fields[2]] = int(fields[0]) / 5.0
print(json.dumps({
    "seconds": 5.0,
    "fdatasync_per_sec": counts.get("syscalls:sys_enter_fdatasync"),
    "context_switches_per_sec": counts.get("sched:sched_switch"),
}))
EOF
)"
  fi
  wait "$loadgen" || status=$?
  cat "$results/$name.txt"
  if [ "$status" -ne 0 ]; then
    cp "$server_dir.log" "$results/$name.server.log" 2>/dev/null || true
    echo "profile: chat-loadgen exited with $status against $variant" >&2
  fi
  # chatd warns about group commits slower than 50 ms; those lines are kept with the result.
  local slow
  slow="$(slow_commit_warnings)"
  stop_server
  # The counters go beside the load generator's own result.
  python3 - "$out" "$counters" "$variant" "$slow" <<'EOF'
import json, sys
path, counters, variant, slow = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    with open(path) as f:
        result = json.load(f)
except (OSError, ValueError):
    sys.exit(0)
result["profile"] = dict(counters, variant=variant, slow_commit_warnings=slow.splitlines())
with open(path, "w") as f:
    json.dump(result, f, indent=2)
EOF
}

# record VARIANT: a second run under `perf record` (DWARF call graphs cost the server enough
# to move its latencies, so nothing of this run goes into the table); writes
# profile-SCENARIO-VARIANT.perf.txt.
record() {
  local variant="$1" scratch status=0
  scratch="$(mktemp -d)"
  echo "=== $scenario at $rate msg/s against $variant, under perf record"
  start_variant "$variant"
  start_load "$scratch/run.json" "$scratch/run"
  if wait_for_measure "$scratch/run.progress" "$loadgen"; then
    perf record -q -F 499 -g --call-graph dwarf,16384 -p "$server_pid" \
      -o "$scratch/perf.data" -- sleep 5 >/dev/null 2>&1 || true
  fi
  wait "$loadgen" || status=$?
  [ "$status" -eq 0 ] || echo "profile: chat-loadgen exited with $status under perf record" >&2
  stop_server
  if [ -s "$scratch/perf.data" ]; then
    # `head` closes the pipes early: no pipefail here.
    (
      set +o pipefail
      echo "# bench/profile.sh: $scenario at $rate msg/s, chatd with $variant durability, 5 s"
      echo "# perf report --sort comm (share of the server's samples by thread)"
      perf report -i "$scratch/perf.data" --no-children --sort comm -g none --stdio 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -20
      echo "# perf report --children --sort sym (first 80)"
      perf report -i "$scratch/perf.data" --children --sort sym -g none --stdio 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | grep -v '(inlined)' | head -80
    ) >"$results/profile-$scenario-$variant.perf.txt" || true
  fi
  rm -rf "$scratch"
}

for variant in floor buffered fsync; do
  measure "$variant"
done
if [ "${PROFILE_RECORD:-0}" = 1 ] && [ "$perf_ok" = 1 ]; then
  for variant in buffered fsync; do
    record "$variant"
  done
fi

python3 bench/report.py profile "bench/profile.sh $*" "$scenario"
