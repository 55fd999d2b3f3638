#!/usr/bin/env bash
# Scenario benchmarks: chatd against the floor (bench/src/bin/relay.rs, a bare QUIC relay
# with chatd's QUIC and TLS settings), both driven by chat-loadgen on this machine, in the
# same run. The scenarios are chat-loadgen's presets (`chat-loadgen --help` lists each with
# its arguments). For each scenario and each target it starts a fresh server (chatd on a temp
# data dir), finds the highest sustainable rate (`--find-max` from the preset's start rate,
# under its p99 bound), then measures latency at half of it; `idle10k` holds 10,000
# authenticated connections and reads the server's memory. The per-run files go to
# bench/results/*.json (+ .txt, .hgrm percentile distributions; local, not in git); then
# bench/report.py records the figures of the scenarios run in bench/results/summary.json and
# rewrites the plot and the scenario section of bench/RESULTS.md from it.
#
#   bench/run.sh                  # every standard scenario: dm rooms10 rooms100 fanout1000 idle10k
#   bench/run.sh dm rooms10       # some of them
#   BENCH_STEP_SECONDS=2 BENCH_MAX_STEPS=4 bench/run.sh dm   # a short check of the pipeline
#
# BENCH_STEP_SECONDS, BENCH_MAX_P99_MS and BENCH_MAX_STEPS, when set, replace the presets'
# --duration (of each --find-max step), --max-p99-ms and --max-steps for every scenario named.
# A partial run (some scenarios) updates their rows of the summary and keeps the others.
#
# Only 127.0.0.1 is targeted; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

results=bench/results
mkdir -p "$results"

# shellcheck source=bench/lib.sh
source bench/lib.sh
build_release

scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(dm rooms10 rooms100 fanout1000 idle10k)
for scenario in "${scenarios[@]}"; do
  preset_option "$scenario" scenario >/dev/null || exit 64
done

find_max=(--find-max)
[ -z "${BENCH_STEP_SECONDS:-}" ] || find_max+=(--duration "$BENCH_STEP_SECONDS")
[ -z "${BENCH_MAX_P99_MS:-}" ] || find_max+=(--max-p99-ms "$BENCH_MAX_P99_MS")
[ -z "${BENCH_MAX_STEPS:-}" ] || find_max+=(--max-steps "$BENCH_MAX_STEPS")

trap stop_server EXIT

for scenario in "${scenarios[@]}"; do
  shape="$(preset_option "$scenario" scenario)"
  for target in chatd floor; do
    echo "=== $scenario against $target"
    rm -f "$results/$scenario-$target".* "$results/$scenario-$target"-*
    if [ "$shape" = idle ]; then
      start_server "$target"
      run_scenario "$target" "$scenario" "$results/$scenario-$target.json" || true
      stop_server
      continue
    fi
    start_server "$target"
    run_scenario "$target" "$scenario" "$results/$scenario-$target-max.json" "${find_max[@]}" || true
    stop_server
    max="$(jq -r '.max_sustainable_rate // empty' "$results/$scenario-$target-max.json" 2>/dev/null || true)"
    if [ -z "$max" ]; then
      echo "bench: no sustainable rate for $scenario against $target" >&2
      continue
    fi
    half="$(python3 -c "print(max(1.0, $max / 2))")"
    start_server "$target"
    run_scenario "$target" "$scenario" "$results/$scenario-$target-half.json" --rate "$half" || true
    stop_server
  done
done

python3 bench/report.py scenarios "bench/run.sh $*" "${scenarios[@]}"
