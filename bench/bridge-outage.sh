#!/usr/bin/env bash
# Chat latency while the AMQP broker is unreachable (issue 7): the same open-loop dm load
# against three fresh daemons, in the same run — no bridge (the baseline), the bridge on with
# a broker that cannot be reached (nothing listens on the configured port: the outbox grows
# on disk and the bridge keeps retrying), and the bridge on with the broker up. Each is run
# three times, interleaved (chat-loadgen's `dm` preset with 200 clients). The figures go to
# bench/results/summary.json (`outage`), and the "Bridge outage" section of bench/RESULTS.md
# is rendered from it (bench/report.py).
#
#   bench/bridge-outage.sh            # 200 clients, 1000 msg/s, 10 s per run
#   BENCH_RATE=2000 bench/bridge-outage.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${BENCH_RATE:-1000}"
results=bench/results
mkdir -p "$results"
# shellcheck source=bench/lib.sh
source bench/lib.sh
build_release
trap stop_server EXIT

timeout 2 bash -c '</dev/tcp/127.0.0.1/5672' 2>/dev/null ||
  { echo "bench: RabbitMQ does not answer on 127.0.0.1:5672 (rabbitmq-server -detached)" >&2; exit 1; }
unreachable_port="$(free_port)"
declare -A broker=(
  [off]=""
  [unreachable]="amqp://guest:guest@127.0.0.1:$unreachable_port/%2f"
  [up]="amqp://guest:guest@127.0.0.1:5672/%2f"
)
load=(--clients 200 --rate "$rate")
rm -f "$results"/outage-*
for run in 1 2 3; do
  for mode in off unreachable up; do
    echo "=== run $run, bridge $mode"
    start_server chatd "CHATD_BRIDGE_AMQP_URL=${broker[$mode]}"
    run_scenario chatd dm "$results/outage-$mode-$run.json" "${load[@]}" ||
      echo "bench: run $run ($mode) failed its check" >&2
    stop_server
  done
done

python3 bench/report.py outage bench/bridge-outage.sh "--preset dm ${load[*]}"
