#!/usr/bin/env bash
# Bridge throughput: events per second the AMQP bridge publishes with publisher confirms,
# against lapin alone publishing the same payloads in the same confirm windows, measured in
# the same run (bench/src/bin/bridge.rs). Records the three runs in bench/results/summary.json
# (`bridge`) and rewrites the "Bridge" section of bench/RESULTS.md from it (bench/report.py).
# Needs RabbitMQ on 127.0.0.1:5672.
#
#   bench/bridge.sh [--events N]     # default 20000 events
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p chat-bench --bin bridge --locked
target="${CARGO_TARGET_DIR:-$PWD/target}"
runs=()
for i in 1 2 3; do
  runs+=("$("$target/release/bridge" "$@" | tail -1)")
  echo "run $i: ${runs[-1]}"
done
python3 bench/report.py bridge "bench/bridge.sh $*" "${runs[@]}"
