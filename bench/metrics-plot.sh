#!/usr/bin/env bash
# A load run as an operator's dashboard shows it: chatd (release, 2 shards) under
# chat-loadgen's `rooms10` preset (1000 clients in rooms of 10) at 500, then 2000, then 1000
# messages/s (20 s each, the clients reconnecting between phases), /metrics scraped every
# second throughout (bench/metrics_plot.py), drawn into docs/metrics-load-run.svg.
# Usage: bench/metrics-plot.sh. Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
build_release
work="$(mktemp -d)"
admin_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
scraper=""
trap '[ -n "$scraper" ] && kill "$scraper" 2>/dev/null; stop_server; rm -rf "$work"' EXIT
start_server chatd "CHATD_ADMIN_LISTEN=127.0.0.1:$admin_port"
python3 bench/metrics_plot.py scrape "http://127.0.0.1:$admin_port/metrics" \
  "$work/samples.jsonl" "$work/stop" &
scraper=$!
sleep 3
for rate in 500 2000 1000; do
  echo "=== rooms10 at $rate msg/s"
  run_scenario chatd rooms10 "$work/rooms-$rate.json" --rate "$rate" --warm-up 1 \
    --duration 20 --drain 2
done
sleep 3
touch "$work/stop"
wait "$scraper"
scraper=""
python3 bench/metrics_plot.py draw "$work/samples.jsonl" docs/metrics-load-run.svg \
  "chatd /metrics, scraped every second: rooms of 10 at 500, 2000, 1000 msg/s ($(date -u +%F))"
echo "samples: $(wc -l <"$work/samples.jsonl"); plot: docs/metrics-load-run.svg"
