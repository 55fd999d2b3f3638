#!/usr/bin/env bash
# The cost of metrics in max rate, resolved finer than a --find-max search can: chat-loadgen's
# `dm` preset (1000 clients) against chatd (release, 2 shards), `off` (the admin listener off)
# and `scraped` (/metrics fetched every second, as a 1 s Prometheus would), each at every rate
# of RATES (msg/s, around the max sustainable rate), 20 s per run, alternating off and scraped
# at each rate, ROUNDS times (default 3). Each run's p99 send -> delivery is recorded; a
# variant's max rate is where the median p99 over the rounds crosses 20 ms (the --find-max
# bound), interpolated between the two rates around the crossing. A --find-max search stops
# at the first 5 s step a single stall of this shared host pushes over the bound, and its
# bisection stops within 5%, so identical searches differ by 10-40% here; medians of paired
# runs at fixed rates do not depend on one step. DURABILITY (default buffered) is chatd's
# storage.durability (buffered keeps the shared disk's fsync stalls out of the measure).
# The table is recorded in bench/results/summary.json (`metrics-knee`) and printed
# (`bench/report.py --show metrics-knee` prints it again from the summary).
# Usage: [DURABILITY=fsync] bench/metrics-knee.sh ["RATE RATE ..." [ROUNDS]] (default rates
# 14000 17000 20000 23000 26000, around this machine's max for dm). Loopback only; every run
# stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
rates="${1:-14000 17000 20000 23000 26000}"
rounds="${2:-3}"
durability="${DURABILITY:-buffered}"
build_release
out=bench/results/metrics-knee
mkdir -p "$out"
trap 'stop_scraper; stop_server' EXIT
runs="$out/$durability.runs"
: >"$runs"
for round in $(seq 1 "$rounds"); do
  for rate in $rates; do
    for variant in off scraped; do
      admin_port="$(free_port)"
      if [ "$variant" = off ]; then
        start_server chatd CHATD_ADMIN_ENABLED=false "CHATD_STORAGE_DURABILITY=$durability"
      else
        start_server chatd "CHATD_ADMIN_LISTEN=127.0.0.1:$admin_port" \
          "CHATD_STORAGE_DURABILITY=$durability"
        start_scraper "$admin_port" "$out/scrapes"
      fi
      echo "=== round $round, $rate msg/s: $variant"
      json="$out/$durability-$rate-$variant-$round.json"
      run_scenario chatd dm "$json" --rate "$rate" --duration 20 --warm-up 2 --drain 5 || true
      scrapes="-"
      if [ "$variant" = scraped ]; then
        stop_scraper
        scrapes="$(cat "$out/scrapes")"
      fi
      stop_server
      value="$(jq -r '.steps[-1] | "\(.send_to_delivery.p99_ms) \(.deliveries_per_sec) \(.server_cpu_us_per_delivery)"' "$json" 2>/dev/null || true)"
      echo "$round $rate $variant ${value:-none none none} $scrapes" >>"$runs"
    done
  done
done
command="bench/metrics-knee.sh \"$rates\" $rounds"
[ "$durability" = buffered ] || command="DURABILITY=$durability $command"
python3 bench/report.py metrics-knee "$command" "$durability" "$runs"
rm -f "$out/scrapes"
