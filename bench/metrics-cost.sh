#!/usr/bin/env bash
# What metrics cost: chat-loadgen's `dm` preset (1000 clients) --find-max against chatd
# (release, 2 shards) three ways, alternating, ROUNDS times (default 3):
#   off      the admin listener off (CHATD_ADMIN_ENABLED=false): the per-shard counters are
#            still bumped, nothing renders them;
#   idle     the admin listener on, nobody scraping;
#   scraped  /metrics fetched every second during the whole run (as a 1 s Prometheus would).
# Prints each run's max sustainable rate (p99 delivery under 20 ms) and each variant's median
# against `off`, measured in the same run. On these shared 2-core machines a --find-max search
# moves by 10-20% between identical runs, more than the cost looked for; so the same three
# variants then run at one fixed rate (FIXED_RATE, default 12000 msg/s, 20 s, FIXED_ROUNDS
# times, default 3), and the server's CPU time per delivery (from /proc, as chat-loadgen reads
# it) is compared: the cost of metrics is CPU, and that measure moves by a few percent only.
# DURABILITY (default fsync) is chatd's storage.durability: with `buffered` the shared
# disk's fsync stalls (up to a second on these machines) leave the measure, which is then the
# CPU that metrics cost. The tables are recorded in bench/results/summary.json (`metrics-cost`,
# one per durability) and printed (again, from the summary alone: `bench/report.py --show
# metrics-cost`).
# Usage: [DURABILITY=buffered] bench/metrics-cost.sh [ROUNDS]. Loopback only; every run stops
# by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
rounds="${1:-3}"
fixed_rate="${FIXED_RATE:-12000}"
fixed_rounds="${FIXED_ROUNDS:-3}"
durability="${DURABILITY:-fsync}"
build_release
out=bench/results/metrics-cost
mkdir -p "$out"
trap 'stop_scraper; stop_server' EXIT
runs="$out/$durability.runs"
: >"$runs"
# run_variant MODE ROUND VARIANT: one load run against a fresh chatd set up as VARIANT;
# MODE max (--find-max) or fixed (FIXED_RATE); appends a line to the runs file.
run_variant() {
  local mode="$1" round="$2" variant="$3"
  admin_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  if [ "$variant" = off ]; then
    start_server chatd CHATD_ADMIN_ENABLED=false "CHATD_STORAGE_DURABILITY=$durability"
  else
    start_server chatd "CHATD_ADMIN_LISTEN=127.0.0.1:$admin_port" \
      "CHATD_STORAGE_DURABILITY=$durability"
  fi
  scrapes="-"
  if [ "$variant" = scraped ]; then
    start_scraper "$admin_port" "$out/scrapes"
  fi
  echo "=== $mode round $round: $variant"
  if [ "$mode" = max ]; then
    run_scenario chatd dm "$out/$mode-$variant-$round.json" --find-max || true
  else
    run_scenario chatd dm "$out/$mode-$variant-$round.json" --rate "$fixed_rate" \
      --duration 20 --warm-up 2 --drain 5 || true
  fi
  if [ "$variant" = scraped ]; then
    stop_scraper
    scrapes="$(cat "$out/scrapes")"
  fi
  stop_server
  local json="$out/$mode-$variant-$round.json" value
  if [ "$mode" = max ]; then
    value="$(jq -r '.max_sustainable_rate // empty' "$json")"
  else
    value="$(jq -r '.steps[-1] | "\(.server_cpu_us_per_delivery) \(.send_to_delivery.p99_ms) \(.deliveries_per_sec)"' "$json")"
  fi
  echo "$mode $round $variant ${value:-none} $scrapes" >>"$runs"
}
for round in $(seq 1 "$rounds"); do
  for variant in off idle scraped; do
    run_variant max "$round" "$variant"
  done
done
for round in $(seq 1 "$fixed_rounds"); do
  for variant in off idle scraped; do
    run_variant fixed "$round" "$variant"
  done
done
command="bench/metrics-cost.sh $*"
[ "$durability" = fsync ] || command="DURABILITY=$durability $command"
python3 bench/report.py metrics-cost "$command" "$durability" "$fixed_rate" "$runs"
rm -f "$out/scrapes"
