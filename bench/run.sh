#!/usr/bin/env bash
# Scenario benchmarks: chatd against the floor (bench/src/bin/relay.rs, a bare QUIC relay
# with chatd's QUIC and TLS settings) and against the brokers people use for chat instead
# (NATS core, NATS JetStream with an fsync per write, Mosquitto with MQTT 5 QoS 0 and 1; how
# each is started and with what durability: start_peer in bench/lib.sh), all driven by
# chat-loadgen on this machine, in the same run. The scenarios are chat-loadgen's presets
# (`chat-loadgen --help` lists each with its arguments). Each round takes every scenario named
# and, for it, every target in turn; the rounds repeat the whole sequence (two by default), so
# a drift of the shared machine shows as a difference between rounds. For each scenario and
# target it starts a fresh server (chatd on a temp data dir, a broker on a free port), finds
# the highest sustainable rate (`--find-max` from the preset's start rate, under its p99
# bound), then measures latency at half of it; `idle10k` holds 10,000 authenticated
# connections and reads the server's memory (chatd and the floor, in round 1 only). The
# per-run files go to bench/results/*.json (+ .txt, .hgrm percentile distributions; local,
# not in git; round 1 as SCENARIO-TARGET-*, later rounds as SCENARIO-TARGET-rN-*); then
# bench/report.py records the figures in bench/results/summary.json and rewrites the plot,
# the scenario section (chatd and the floor, round 1) and the peers section (every target,
# every round) of bench/RESULTS.md from it.
#
#   bench/run.sh                  # every standard scenario: dm rooms10 rooms100 fanout1000 idle10k
#   bench/run.sh dm rooms10       # some of them
#   BENCH_TARGETS="chatd nats" BENCH_ROUNDS=1 bench/run.sh dm   # some targets, one round
#   BENCH_STEP_SECONDS=2 BENCH_MAX_STEPS=4 bench/run.sh dm   # a short check of the pipeline
#
# BENCH_STEP_SECONDS, BENCH_MAX_P99_MS and BENCH_MAX_STEPS, when set, replace the presets'
# --duration (of each --find-max step), --max-p99-ms and --max-steps for every scenario named.
# BENCH_TARGETS (default: chatd floor nats jetstream mqtt-qos0 mqtt-qos1) and BENCH_ROUNDS
# (default 2) choose what is measured; BENCH_FIRST_ROUND=N starts at round N (measures a round
# again, reading the earlier rounds' files as they are). A partial run (some scenarios)
# updates their rows of the summary and keeps the others.
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

read -r -a targets <<<"${BENCH_TARGETS:-chatd floor nats jetstream mqtt-qos0 mqtt-qos1}"
rounds="${BENCH_ROUNDS:-2}"
first_round="${BENCH_FIRST_ROUND:-1}"

trap stop_server EXIT

for round in $(seq "$first_round" "$rounds"); do
  for scenario in "${scenarios[@]}"; do
    shape="$(preset_option "$scenario" scenario)"
    for target in "${targets[@]}"; do
      stem="$results/$scenario-$target"
      [ "$round" -eq 1 ] || stem="$stem-r$round"
      if [ "$shape" = idle ]; then
        # Memory per idle connection is chatd's and the floor's question (QUIC state), once.
        case "$target" in chatd | floor) ;; *) continue ;; esac
        [ "$round" -eq 1 ] || continue
        echo "=== $scenario against $target"
        rm -f "$stem".*
        start_server "$target"
        run_scenario "$target" "$scenario" "$stem.json" || true
        stop_server
        continue
      fi
      echo "=== round $round: $scenario against $target"
      rm -f "$stem"-max.* "$stem"-half.*
      start_server "$target"
      run_scenario "$target" "$scenario" "$stem-max.json" "${find_max[@]}" || true
      stop_server
      max="$(jq -r '.max_sustainable_rate // empty' "$stem-max.json" 2>/dev/null || true)"
      if [ -z "$max" ]; then
        echo "bench: no sustainable rate for $scenario against $target" >&2
        continue
      fi
      half="$(python3 -c "print(max(1.0, $max / 2))")"
      start_server "$target"
      run_scenario "$target" "$scenario" "$stem-half.json" --rate "$half" || true
      stop_server
    done
  done
done

python3 bench/report.py scenarios "bench/run.sh $*" "${scenarios[@]}"
python3 bench/report.py peers "bench/run.sh $*" "$rounds" "${scenarios[@]}"
