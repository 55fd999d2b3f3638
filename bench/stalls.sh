#!/usr/bin/env bash
# Where delivery stalls come from: the same fixed-rate run (20 s measured by default) on a fresh server in
# several variants, alternating, ROUNDS times each. Prints each run's send -> delivery line,
# its p99 for every second of the measured phase (chat-loadgen's progress lines, so a stall can
# be placed in time) and chatd's warnings about slow group commits. The variants
# (STALL_VARIANTS, default: chatd scraped buffered floor):
#   chatd      chatd as bench/run.sh starts it (fsync durability);
#   scraped    the same, with curl fetching /metrics every second;
#   buffered   chatd with storage.durability = "buffered" (the WAL written, not synced): a
#              stall that stays is not the disk's;
#   floor      the floor (bench/src/bin/relay.rs: chatd's QUIC, TLS and sockets, no storage):
#              a stall that stays is QUIC's, the load generator's or the shared cores';
#   baseline   chatd as `chatd`, from the binary STALL_BASELINE_BIN (another build, e.g. of an
#              earlier commit, copied out of the target directory): a before/after in one run.
#
#   bench/stalls.sh [SCENARIO [RATE [ROUNDS]]]   # default: rooms10 2800 2
#
# STALL_SECONDS (default 20) sets the measured phase. Each run also prints the server's
# busiest threads over the measured phase (bench/thread_cpu.py), and for chatd RocksDB's
# flushes and compactions that began during the run, in seconds after chat-loadgen started
# (its progress lines count from there too).
# Only 127.0.0.1 is targeted; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
build_release

scenario="${1:-rooms10}"
rate="${2:-2800}"
rounds="${3:-2}"
seconds="${STALL_SECONDS:-20}"
read -r -a variants <<<"${STALL_VARIANTS:-chatd scraped buffered floor}"
for variant in "${variants[@]}"; do
  case "$variant" in
    chatd | scraped | buffered | floor) ;;
    baseline)
      if [ ! -x "${STALL_BASELINE_BIN:-}" ]; then
        echo "bench: the baseline variant needs STALL_BASELINE_BIN, a chatd binary" >&2
        exit 64
      fi
      ;;
    *)
      echo "bench: unknown variant $variant" >&2
      exit 64
      ;;
  esac
done
scratch="$(mktemp -d)"
scraper=""
cleanup() {
  [ -z "$scraper" ] || kill "$scraper" 2>/dev/null || true
  stop_server
  rm -rf "$scratch"
}
trap cleanup EXIT

run() {
  local variant="$1" target=chatd admin_port
  admin_port="$(free_port)"
  case "$variant" in
    floor)
      target=floor
      start_server floor
      ;;
    buffered) start_server chatd CHATD_STORAGE_DURABILITY=buffered ;;
    baseline)
      local built="$chatd_bin"
      chatd_bin="$STALL_BASELINE_BIN"
      start_server chatd
      chatd_bin="$built"
      ;;
    *) start_server chatd "CHATD_ADMIN_LISTEN=127.0.0.1:$admin_port" ;;
  esac
  loadgen_command "$target" "$scenario" --rate "$rate" --duration "$seconds"
  if [ "$variant" = scraped ]; then
    (while sleep 1; do curl -s "http://127.0.0.1:$admin_port/metrics" >/dev/null || true; done) &
    scraper=$!
  fi
  local started sampler
  started="$(date +%s.%N)"
  : >"$scratch/run.progress"
  rm -f "$scratch/threads.json"
  python3 bench/thread_cpu.py "$server_pid" "$scratch/run.progress" "$scratch/threads.json" &
  sampler=$!
  "${loadgen_cmd[@]}" >"$scratch/run.txt" 2>"$scratch/run.progress" || true
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  if [ -n "$scraper" ]; then
    kill "$scraper" 2>/dev/null || true
    scraper=""
  fi
  local slow events=""
  slow="$(slow_commit_warnings)"
  [ "$target" = floor ] || events="$(rocksdb_events "$started")"
  stop_server
  echo "$scenario at $rate msg/s, $variant: $(grep 'send -> delivery' "$scratch/run.txt" | tr -s ' ')"
  # "[  6.1s measure  ] ... p99 delivery   3.215 ms ...": the seconds since chat-loadgen
  # started, then each second's p99.
  echo "  p99 per second (ms), from $(grep -m1 ' measure ' "$scratch/run.progress" \
    | sed -E 's/^\[ *([0-9.]+)s.*/\1/') s after the start: $(grep ' measure ' "$scratch/run.progress" \
    | sed -E 's/.*p99 delivery +([0-9.-]+).*/\1/' | tr '\n' ' ')"
  [ -z "$events" ] || echo "  RocksDB (s after the start): $events"
  [ ! -s "$scratch/threads.json" ] || echo "  busiest threads over the measured phase (cores): $(
    jq -r '.seconds as $s | .threads | to_entries | sort_by(-.value) | .[:5]
      | map("\(.key) \(.value / $s * 100 | round / 100)") | join(", ")' "$scratch/threads.json")"
  [ -z "$slow" ] || printf '  %s\n' "$slow"
}

# rocksdb_events START: the flushes and compactions in the running chatd's RocksDB LOG (its
# EVENT_LOG_v1 lines), each as "event@seconds" after START (a Unix time).
rocksdb_events() {
  find "$server_dir" -name LOG -print0 | xargs -0 -r cat | python3 -c '
import json, sys
start = float(sys.argv[1])
out = []
for line in sys.stdin:
    if "EVENT_LOG_v1" not in line:
        continue
    event = json.loads(line.split("EVENT_LOG_v1", 1)[1])
    name = event.get("event", "")
    at = event["time_micros"] / 1e6 - start
    if name.startswith(("flush", "compaction")) and at >= 0:
        out.append(f"{name}@{at:.1f}")
print(" ".join(out))' "$1"
}

for _ in $(seq 1 "$rounds"); do
  for variant in "${variants[@]}"; do
    run "$variant"
  done
done
