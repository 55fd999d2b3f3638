#!/usr/bin/env bash
# Scaling with cores, as far as a 2-core machine allows: chatd with 1 and 2 shards, and the
# floor (bench/src/bin/relay.rs) with 1 and 2 threads, each in the layouts below, driven by
# chat-loadgen in the same presets as bench/run.sh:
#   chatd-1s-1c   chatd, 1 shard, the whole process on CPU 0; chat-loadgen on CPU 1
#   chatd-2s-1c   chatd, 2 shards, both on CPU 0 (chatd pins its shards within its CPU set);
#                 chat-loadgen on CPU 1: what a second shard costs at the same CPU (the
#                 cross-shard hops), without the second core's gain
#   chatd-2s-2c   chatd, 2 shards, unpinned: the standard layout of bench/run.sh, the load
#                 generator sharing both cores
#   floor-1t-1c   the floor, 1 thread, on CPU 0; chat-loadgen on CPU 1
#   floor-2t-2c   the floor, 2 threads, unpinned (bench/run.sh's floor)
# For each scenario and layout, in that order: the highest sustainable rate (--find-max from
# the preset's start rate, under its p99 bound), then a fixed rate the same for every layout
# (low enough for one core: FIXED_RATE_<SCENARIO>, defaults below) for 10 s, for the server's
# CPU per delivery and the latencies, and each of the server's threads' CPU over the measured
# phase (bench/thread_cpu.py: what one thread, such as chatd's storage writer, bounds); chatd's
# /metrics are read around that fixed run for the cross-thread messages per delivery
# (chatd_inbox_messages_total, as bench/hops.sh counts them). Each run gets a fresh server.
# The per-run files go to bench/results/scaling/; then bench/report.py records the figures in
# bench/results/summary.json (`scaling`) and rewrites the scaling section of bench/RESULTS.md.
#
#   bench/scaling.sh                 # dm rooms10 rooms100, every layout, one round
#   SCALING_LAYOUTS="chatd-1s-1c chatd-2s-2c" SCALING_ROUNDS=2 bench/scaling.sh dm
#
# SCALING_ROUNDS (default 1) repeats the whole sequence. Only 127.0.0.1 is targeted; every run
# stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(dm rooms10 rooms100)
read -r -a layouts <<<"${SCALING_LAYOUTS:-chatd-1s-1c chatd-2s-1c chatd-2s-2c floor-1t-1c floor-2t-2c}"
rounds="${SCALING_ROUNDS:-1}"
if [ "$(nproc)" -lt 2 ]; then
  echo "bench: scaling.sh needs 2 CPUs (one for the server, one for chat-loadgen)" >&2
  exit 69
fi

build_release
for scenario in "${scenarios[@]}"; do
  preset_option "$scenario" scenario >/dev/null || exit 64
done

# fixed_rate SCENARIO: the rate every layout is measured at (msg/s), about a third of what one
# core of chatd sustains in that scenario.
fixed_rate() {
  case "$1" in
    dm) echo "${FIXED_RATE_DM:-3000}" ;;
    rooms10) echo "${FIXED_RATE_ROOMS10:-1200}" ;;
    rooms100) echo "${FIXED_RATE_ROOMS100:-300}" ;;
    *)
      local name
      name="FIXED_RATE_$(tr '[:lower:]' '[:upper:]' <<<"$1")"
      echo "${!name:?bench: set $name for scenario $1}"
      ;;
  esac
}

# use_layout LAYOUT: sets target, server_shards, server_cpus and loadgen_cpus.
use_layout() {
  target="${1%%-*}"
  local shards="${1#*-}" cores="${1##*-}"
  server_shards="${shards%%[st]-*}"
  case "$cores" in
    1c) server_cpus=0 loadgen_cpus=1 ;;
    2c) server_cpus="" loadgen_cpus="" ;;
    *)
      echo "bench: unknown layout $1" >&2
      exit 64
      ;;
  esac
  case "$target" in chatd | floor) ;; *)
    echo "bench: unknown layout $1" >&2
    exit 64
    ;;
  esac
}
for layout in "${layouts[@]}"; do use_layout "$layout"; done

out=bench/results/scaling
mkdir -p "$out"
trap stop_server EXIT
runs="$out/runs"
: >"$runs"

for round in $(seq 1 "$rounds"); do
  for scenario in "${scenarios[@]}"; do
    for layout in "${layouts[@]}"; do
      use_layout "$layout"
      stem="$out/$scenario-$layout-r$round"
      rm -f "$stem"-max.* "$stem"-fixed.* "$stem"-threads.json
      echo "=== round $round: $scenario, $layout"
      start_server "$target"
      run_scenario "$target" "$scenario" "$stem-max.json" --find-max || true
      stop_server
      admin=()
      if [ "$target" = chatd ]; then
        admin_port="$(free_port)"
        admin=("CHATD_ADMIN_LISTEN=127.0.0.1:$admin_port")
      fi
      start_server "$target" "${admin[@]}"
      hops="-"
      [ "$target" != chatd ] || read -r m0 _ d0 _ < <(path_counters "$admin_port")
      # The fixed run by hand, not through run_scenario: its progress lines time the
      # per-thread CPU readings (bench/thread_cpu.py) to the measured phase.
      loadgen_command "$target" "$scenario" --rate "$(fixed_rate "$scenario")"
      python3 bench/thread_cpu.py "$server_pid" "$stem-fixed.progress" "$stem-threads.json" &
      sampler=$!
      "${loadgen_cmd[@]}" --json-out "$stem-fixed.json" >"$stem-fixed.txt" \
        2>"$stem-fixed.progress" || true
      kill "$sampler" 2>/dev/null || true
      wait "$sampler" 2>/dev/null || true
      if [ "$target" = chatd ]; then
        read -r m1 _ d1 _ < <(path_counters "$admin_port")
        hops="$(python3 -c "print(($m1 - $m0) / max(1.0, $d1 - $d0))")"
      fi
      stop_server
      echo "$round $scenario $layout $stem $hops" >>"$runs"
    done
  done
done

python3 bench/report.py scaling "bench/scaling.sh $*" "$runs"
