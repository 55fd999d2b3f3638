#!/usr/bin/env bash
# Scenario benchmarks: chatd against the floor (bench/src/bin/relay.rs, a bare QUIC relay
# with chatd's QUIC and TLS settings), both driven by chat-loadgen on this machine, in the
# same run. For each scenario and each target it starts a fresh server (chatd on a temp data
# dir), finds the highest sustainable rate (--find-max), then measures latency at half of it;
# `idle` holds 10,000 authenticated connections and reads the server's memory. Results go to
# bench/results/*.json (+ .hgrm percentile distributions); bench/report.py then draws the
# latency-versus-throughput plot and rewrites the scenario section of bench/RESULTS.md.
#
#   bench/run.sh                  # every standard scenario: dm rooms10 rooms100 fanout1000 idle10k
#   bench/run.sh dm rooms10       # some of them
#   BENCH_STEP_SECONDS=5 BENCH_MAX_P99_MS=20 BENCH_FANOUT_MAX_P99_MS=250 BENCH_MAX_STEPS=24 \
#     bench/run.sh                # the defaults
#
# bench/report.py renders every result under bench/results, with each file's run time, so a
# partial run (some scenarios) updates those and keeps the others.
#
# Only 127.0.0.1 is targeted; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

step_seconds="${BENCH_STEP_SECONDS:-5}"
max_p99_ms="${BENCH_MAX_P99_MS:-20}"
# Enough --find-max steps to climb from the start rate by 1.5x to several times the max of a
# fast machine and still bisect; a search cut short reports a lower bound (report.py marks it).
max_steps="${BENCH_MAX_STEPS:-24}"
results=bench/results
mkdir -p "$results"

# shellcheck source=bench/lib.sh
source bench/lib.sh
build_release

scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(dm rooms10 rooms100 fanout1000 idle10k)

# The p99 bound of --find-max: BENCH_MAX_P99_MS, except for fanout, where one message is
# a burst of 999 deliveries and the last recipient's latency is the time to write (and, in
# the load generator, read) the whole burst: 20 ms would measure the burst, not saturation.
max_p99() {
  case "$1" in
    fanout1000) echo "${BENCH_FANOUT_MAX_P99_MS:-250}" ;;
    *) echo "$max_p99_ms" ;;
  esac
}
# The rate --find-max starts from (the scenarios' arguments are lib.sh's scenario_args).
start_rate() {
  case "$1" in
    dm) echo 1000 ;;
    rooms10) echo 500 ;;
    rooms100) echo 50 ;;
    fanout1000) echo 5 ;;
    *) echo 1 ;;
  esac
}

trap stop_server EXIT

for scenario in "${scenarios[@]}"; do
  scenario_args "$scenario" >/dev/null || exit 64
done
for scenario in "${scenarios[@]}"; do
  read -r -a args <<<"$(scenario_args "$scenario")"
  for target in chatd floor; do
    echo "=== $scenario against $target"
    rm -f "$results/$scenario-$target".* "$results/$scenario-$target"-*
    if [ "$scenario" = idle10k ]; then
      start_server "$target"
      run_loadgen "$target" "$results/$scenario-$target.json" "${args[@]}" --duration 5 || true
      stop_server
      continue
    fi
    start_server "$target"
    run_loadgen "$target" "$results/$scenario-$target-max.json" "${args[@]}" \
      --rate "$(start_rate "$scenario")" --find-max \
      --max-p99-ms "$(max_p99 "$scenario")" --max-steps "$max_steps" \
      --duration "$step_seconds" --warm-up 2 --drain 5 || true
    stop_server
    max="$(jq -r '.max_sustainable_rate // empty' "$results/$scenario-$target-max.json" 2>/dev/null || true)"
    if [ -z "$max" ]; then
      echo "bench: no sustainable rate for $scenario against $target" >&2
      continue
    fi
    half="$(python3 -c "print(max(1.0, $max / 2))")"
    start_server "$target"
    run_loadgen "$target" "$results/$scenario-$target-half.json" "${args[@]}" --rate "$half" \
      --duration 10 --warm-up 2 --drain 10 || true
    stop_server
  done
done

python3 bench/report.py "$results" bench/RESULTS.md "bench/run.sh $*"
