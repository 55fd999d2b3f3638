#!/usr/bin/env bash
# What metrics cost: chat-loadgen `dm` (1000 clients) --find-max against chatd (release, 2
# shards) three ways, alternating, ROUNDS times (default 2):
#   off      the admin listener off (CHATD_ADMIN_ENABLED=false): the per-shard counters are
#            still bumped, nothing renders them;
#   idle     the admin listener on, nobody scraping;
#   scraped  /metrics fetched every second during the whole run (as a 1 s Prometheus would).
# Prints each run's max sustainable rate (p99 delivery under 20 ms) and each variant's median
# against `off`, measured in the same run; writes bench/results/metrics-cost.txt.
# Usage: bench/metrics-cost.sh [ROUNDS]. Loopback only; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
rounds="${1:-2}"
build_release
out=bench/results/metrics-cost
mkdir -p "$out"
scraper=""
stop_scraper() {
  if [ -n "$scraper" ]; then
    kill "$scraper" 2>/dev/null || true
    wait "$scraper" 2>/dev/null || true
    scraper=""
  fi
}
trap 'stop_scraper; stop_server' EXIT
summary=bench/results/metrics-cost.txt
: >"$summary.runs"
for round in $(seq 1 "$rounds"); do
  for variant in off idle scraped; do
    admin_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    if [ "$variant" = off ]; then
      start_server chatd CHATD_ADMIN_ENABLED=false
    else
      start_server chatd "CHATD_ADMIN_LISTEN=127.0.0.1:$admin_port"
    fi
    scrapes="-"
    if [ "$variant" = scraped ]; then
      (
        n=0
        while true; do
          curl -sf -o /dev/null "http://127.0.0.1:$admin_port/metrics" && n=$((n + 1))
          echo "$n" >"$out/scrapes"
          sleep 1
        done
      ) &
      scraper=$!
    fi
    echo "=== round $round: $variant"
    run_loadgen chatd "$out/$variant-$round.json" dm --clients 1000 --rate 1000 --find-max \
      --max-p99-ms 20 --max-steps 24 --duration 5 --warm-up 2 --drain 5 || true
    if [ "$variant" = scraped ]; then
      stop_scraper
      scrapes="$(cat "$out/scrapes")"
    fi
    stop_server
    max="$(jq -r '.max_sustainable_rate // empty' "$out/$variant-$round.json")"
    echo "$round $variant ${max:-none} $scrapes" >>"$summary.runs"
  done
done
python3 - "$summary.runs" <<'PY' | tee "$summary"
import statistics, sys
runs = [line.split() for line in open(sys.argv[1])]
print(f"{'round':>5} {'variant':<8} {'max msg/s':>10} {'scrapes':>8}")
for r, v, m, s in runs:
    print(f"{r:>5} {v:<8} {m:>10} {s:>8}")
rates = {}
for _, v, m, _ in runs:
    if m != "none":
        rates.setdefault(v, []).append(float(m))
base = statistics.median(rates.get("off", [float("nan")]))
for v in ("off", "idle", "scraped"):
    if v in rates:
        med = statistics.median(rates[v])
        spread = (max(rates[v]) - min(rates[v])) / med * 100
        print(f"{v:<8} median {med:>9.0f} msg/s  ratio to off {med / base:.3f}  spread {spread:.1f}%")
PY
rm -f "$summary.runs" "$out/scrapes"
