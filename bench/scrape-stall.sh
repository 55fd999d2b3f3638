#!/usr/bin/env bash
# Whether scraping chatd's /metrics stalls its deliveries: the same fixed-rate run on a fresh
# chatd, alternately with curl scraping /metrics every second and with no scraping, ROUNDS
# times each. Prints each run's send -> delivery line and its p99 for every second of the
# measured phase (chat-loadgen's progress lines), so a stall can be placed in time.
#
#   bench/scrape-stall.sh [SCENARIO [RATE [ROUNDS]]]   # default: rooms10 2800 2
#
# Only 127.0.0.1 is targeted; every run stops by itself (20 s measured).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
build_release

scenario="${1:-rooms10}"
rate="${2:-2800}"
rounds="${3:-2}"
scratch="$(mktemp -d)"
scraper=""
cleanup() {
  [ -z "$scraper" ] || kill "$scraper" 2>/dev/null || true
  stop_server
  rm -rf "$scratch"
}
trap cleanup EXIT

run() {
  local mode="$1" admin_port
  admin_port="$(free_port)"
  start_server chatd "CHATD_ADMIN_LISTEN=127.0.0.1:$admin_port"
  loadgen_command chatd "$scenario" --rate "$rate" --duration 20
  if [ "$mode" = scraped ]; then
    (while sleep 1; do curl -s "http://127.0.0.1:$admin_port/metrics" >/dev/null || true; done) &
    scraper=$!
  fi
  "${loadgen_cmd[@]}" >"$scratch/run.txt" 2>"$scratch/run.progress" || true
  if [ -n "$scraper" ]; then
    kill "$scraper" 2>/dev/null || true
    scraper=""
  fi
  stop_server
  echo "$scenario at $rate msg/s, $mode: $(grep 'send -> delivery' "$scratch/run.txt" | tr -s ' ')"
  echo "  p99 per second (ms): $(grep ' measure ' "$scratch/run.progress" \
    | sed -E 's/.*p99 delivery +([0-9.-]+).*/\1/' | tr '\n' ' ')"
}

for _ in $(seq 1 "$rounds"); do
  run unscraped
  run scraped
done
