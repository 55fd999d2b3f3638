# Where chatd's time goes at one fixed rate: the same scenario and rate against the floor,
# chatd with `buffered` durability, chatd with `fsync` (the default) writing a WAL that grows
# with every append (`storage.recycled_wals = 0`, as before WAL recycling) and chatd with
# `fsync` writing over recycled WAL files (the default), one fresh server each, measured for
# the preset's fixed-rate duration (10 s), in rounds (PROFILE_ROUNDS, default 3: the four
# variants in turn, then again); the section shows each figure's median over the rounds and
# the range of the p99. Before the measured run, every server gets the
# same run twice unmeasured, each followed by a compaction (`POST /v1/compact`, which
# flushes the memtables and so switches to a new WAL): the first switch frees the first WAL
# for reuse, the second writes over it, so where recycling is on the measured run writes
# over a recycled WAL, as a daemon does in its steady state. For each it records the
# latencies and the server's CPU per delivery (chat-loadgen, from /proc), and, over 5 s of
# the measured phase: the server's fdatasync calls and context switches (`perf stat` on
# kernel tracepoints; "–" where perf cannot read them), the block I/O requests issued on the
# machine (the same, system-wide) and chatd's group commits, requests per group and WAL
# write + fsync time (its /metrics). The difference between the rows is the price of
# storage, of durability and of a growing WAL. The result JSONs go to
# bench/results/profile-* (local, not in git); bench/report.py records their figures in
# bench/results/summary.json and renders the profile section of bench/RESULTS.md from it.
#
#   bench/profile.sh                # dm at the preset's steady rate (chat-loadgen --help)
#   bench/profile.sh rooms10 3700   # a scenario (a chat-loadgen preset, not idle10k) and a rate
#   PROFILE_ROUNDS=1 bench/profile.sh dm 5000   # one round only
#   PROFILE_RECORD=only bench/profile.sh dm 5000  # the call-graph profiles alone (the table
#                                                 # and RESULTS.md stay as they are)
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

# start_variant floor|buffered|fsync-growing|fsync: a fresh server for the variant, given the
# measured run twice unmeasured, each followed by a compaction (chatd); sets target and
# admin_port.
start_variant() {
  local scratch
  if [ "$1" = floor ]; then
    target=floor
    start_server floor
  else
    target=chatd
    admin_port="$(free_port)"
    local recycled=()
    [ "$1" != fsync-growing ] || recycled=(CHATD_STORAGE_RECYCLED_WALS=0)
    start_server chatd "CHATD_STORAGE_DURABILITY=${1%-growing}" \
      "CHATD_ADMIN_LISTEN=127.0.0.1:$admin_port" "${recycled[@]}"
  fi
  scratch="$(mktemp -d)"
  loadgen_command "$target" "$scenario" --rate "$rate"
  for _ in 1 2; do
    "${loadgen_cmd[@]}" --quiet >"$scratch/warm-up.txt" 2>&1 \
      || echo "profile: an unmeasured run against $1 failed: $(tail -1 "$scratch/warm-up.txt")" >&2
    [ "$target" = floor ] || curl -sf -X POST -H "Content-Type: application/json" \
      "http://127.0.0.1:$admin_port/v1/compact" >/dev/null \
      || { echo "profile: the compaction of $1 failed" >&2; exit 1; }
  done
  rm -rf "$scratch"
}

# scrape FILE: chatd's /metrics into FILE (nothing for the floor). Only curl runs during the
# measured phase: a Python start-up there costs the two shared cores tens of milliseconds.
scrape() {
  [ "$target" = chatd ] || return 0
  curl -sf "http://127.0.0.1:$admin_port/metrics" >"$1" || true
}

# storage_counters FILE: chatd's group commits, their requests and their WAL write + fsync
# seconds in a scrape, as JSON ("{}" without one).
storage_counters() {
  [ -s "$1" ] || { echo "{}"; return; }
  local groups requests fsyncs seconds
  read -r groups requests fsyncs seconds < <(metric_totals \
    chatd_storage_group_commit_requests_count chatd_storage_group_commit_requests_sum \
    chatd_storage_fsync_seconds_count chatd_storage_fsync_seconds_sum <"$1")
  printf '{"groups": %s, "requests": %s, "fsyncs": %s, "fsync_seconds": %s}\n' \
    "$groups" "$requests" "$fsyncs" "$seconds"
}

# start_load OUT.json OUT_PREFIX: the load generator in the background against the running
# server (table to OUT_PREFIX.txt, progress lines to OUT_PREFIX.progress); sets loadgen.
start_load() {
  loadgen_command "$target" "$scenario" --rate "$rate"
  "${loadgen_cmd[@]}" --json-out "$1" >"$2.txt" 2>"$2.progress" &
  loadgen=$!
}

# measure VARIANT ROUND: the measured run; the latencies and CPU of the table, and the counters.
measure() {
  local variant="$1" name="profile-$scenario-$1-r$2"
  local out="$results/$name.json" counters="{}" before after window=""
  local status=0 sched_pid="" io_pid="" perf_started
  rm -f "$results/$name".*
  echo "=== $scenario at $rate msg/s against $variant"
  start_variant "$variant"
  start_load "$out" "$results/$name"
  # perf attaches now, while the load generator connects, and counts every second until the
  # run is over: attaching enables kernel tracepoints, which stalled the server for 150-220
  # ms when done inside the measured phase. The measured window's seconds are picked out.
  perf_started="$(date +%s.%N)"
  if [ "$perf_ok" = 1 ]; then
    perf stat -x, -I 1000 -e syscalls:sys_enter_fdatasync,sched:sched_switch \
      -p "$server_pid" -o "$results/$name.sched.csv" >/dev/null 2>&1 &
    sched_pid=$!
    perf stat -x, -I 1000 -a -e block:block_rq_issue -o "$results/$name.io.csv" \
      >/dev/null 2>&1 &
    io_pid=$!
  fi
  if wait_for_measure "$results/$name.progress" "$loadgen"; then
    window="$(date +%s.%N)"
    scrape "$results/$name.before.prom"
    sleep 5
    scrape "$results/$name.after.prom"
    window="$window $(date +%s.%N)"
  fi
  wait "$loadgen" || status=$?
  if [ -n "$sched_pid" ]; then
    kill -INT "$sched_pid" "$io_pid" 2>/dev/null || true
    wait "$sched_pid" "$io_pid" 2>/dev/null || true
  fi
  before="$(storage_counters "$results/$name.before.prom")"
  after="$(storage_counters "$results/$name.after.prom")"
  [ -z "$window" ] || counters="$(python3 - "$results/$name" "$perf_started" $window "$before" "$after" <<'EOF'
import json, sys
prefix, started, begin, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
before, after = json.loads(sys.argv[5]), json.loads(sys.argv[6])
# perf's one-second intervals (their end, relative to perf's start) within the window.
counts, intervals = {}, set()
for kind in ("sched", "io"):
    try:
        lines = open(f"{prefix}.{kind}.csv").read().splitlines()
    except OSError:
        continue
    for line in lines:
        fields = line.split(",")
        if len(fields) < 4 or not fields[1].isdigit():
            continue
        t = float(fields[0])
        if t - 1 >= begin - started - 0.2 and t <= end - started + 0.2:
            counts[fields[3]] = counts.get(fields[3], 0) + int(fields[1])
            intervals.add((kind, round(t)))
seconds = max(1, len({t for k, t in intervals if k == "sched"}))
io_seconds = max(1, len({t for k, t in intervals if k == "io"}))
rate = lambda event, n: counts[event] / n if event in counts else None
delta = {k: after[k] - before.get(k, 0.0) for k in after}
groups, fsyncs = delta.get("groups"), delta.get("fsyncs")
print(json.dumps({
    "seconds": end - begin,
    "fdatasync_per_sec": rate("syscalls:sys_enter_fdatasync", seconds),
    "context_switches_per_sec": rate("sched:sched_switch", seconds),
    "block_requests_per_sec": rate("block:block_rq_issue", io_seconds),
    "group_commits_per_sec": groups / (end - begin) if groups else None,
    "requests_per_group": delta["requests"] / groups if groups else None,
    "wal_fsync_us": delta["fsync_seconds"] / fsyncs * 1e6 if fsyncs else None,
}))
EOF
)"
  rm -f "$results/$name".{sched.csv,io.csv,before.prom,after.prom}
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
      echo "# bench/profile.sh: $scenario at $rate msg/s, chatd variant $variant, 5 s"
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

rounds="${PROFILE_ROUNDS:-3}"
record_mode="${PROFILE_RECORD:-0}"
if [ "$record_mode" != only ]; then
  rm -f "$results/profile-$scenario"-*-r*.*
  for round in $(seq 1 "$rounds"); do
    for variant in floor buffered fsync-growing fsync; do
      measure "$variant" "$round"
    done
  done
fi
if [ "$record_mode" != 0 ] && [ "$perf_ok" = 1 ]; then
  for variant in buffered fsync-growing fsync; do
    record "$variant"
  done
fi

[ "$record_mode" = only ] || python3 bench/report.py profile "bench/profile.sh $*" "$scenario" "$rounds"
