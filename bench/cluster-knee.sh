#!/usr/bin/env bash
# The cluster's capacity against one node's, on the same machine: chat-loadgen's `dm` preset
# (1000 clients) against `single` (one chatd, no cluster: the baseline) and `spread` (three
# serving nodes on one etcd, 12 partitions, the clients spread over them, most direct
# conversations with their members on different nodes), each at every rate of RATES (msg/s),
# 20 s per run, alternating single and spread at each rate, ROUNDS times (default 3). As in
# bench/metrics-knee.sh, a variant's max rate is where the median p99 send -> delivery over
# the rounds crosses 20 ms, interpolated between the two rates around the crossing; each run's
# deliveries per second and the checker's verdict are kept beside it. Every process (the
# load generator, etcd and every node) shares the machine's cores, so this measures what
# forwarding between nodes costs, not what three machines would hold.
# The table goes to bench/results/summary.json (`cluster-knee`) and the section "Cluster
# capacity against one node" of bench/RESULTS.md.
# Usage: bench/cluster-knee.sh ["RATE RATE ..." [ROUNDS]] (default rates 3000 5000 7000 9000
# 11000 13000 15000). Needs etcd (make cluster-bootstrap); loopback only; every run stops by
# itself, and everything it starts it stops (a trap).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
command -v etcd >/dev/null || { echo "cluster-knee: etcd is missing: make cluster-bootstrap" >&2; exit 1; }
rates="${1:-3000 5000 7000 9000 11000 13000 15000}"
rounds="${2:-3}"
build_release
out=bench/results/cluster-knee
rm -rf "$out"
mkdir -p "$out"
# shellcheck source=bench/cluster-lib.sh
source bench/cluster-lib.sh
cluster_begin chatd-cluster-knee

run=(--rate RATE --duration 20 --warm-up 2 --drain 5)
runs="$out/runs"
: >"$runs"
for round in $(seq 1 "$rounds"); do
  for rate in $rates; do
    load=("${run[@]/RATE/$rate}")
    for variant in single spread; do
      echo "=== round $round, $rate msg/s: $variant"
      json="$out/$rate-$variant-$round.json"
      if [ "$variant" = single ]; then
        start_server chatd
        run_scenario chatd dm "$json" "${load[@]}" || true
        stop_server
      else
        parts="$work/partitions-$rate-$round"
        mkdir -p "$parts"
        start_spread "$work/spread-$rate-$round" "knee$round-$rate" "$parts" a b c
        "$loadgen_bin" --preset dm "${load[@]}" \
          --server "${servers[0]}" --also "${servers[1]}" --also "${servers[2]}" \
          --ca "$spread_ca" --token-secret "$secret" --token-key-id k1 \
          --json-out "$json" --quiet >"${json%.json}.txt" || true
        cat "${json%.json}.txt"
        stop_pids
        rm -rf "$parts" "$work/spread-$rate-$round"-*
      fi
      value="$(jq -r '"\(.steps[-1].send_to_delivery.p99_ms) \(.steps[-1].deliveries_per_sec) \(.correct)"' "$json" 2>/dev/null || true)"
      echo "$round $rate $variant ${value:-none none none}" >>"$runs"
    done
  done
done
python3 bench/report.py cluster-knee "bench/cluster-knee.sh \"$rates\" $rounds" "$runs"
