#!/usr/bin/env bash
# A partition's store handed over on a shared disk: what the next owner pays to open it, and
# what its last owner pays to flush it first. `cluster-parts handover`
# (bench/src/bin/cluster-parts.rs) writes N outbox events into a store with chatd's buffered
# durability, then its writer is SIGKILLed (a failover), or closes the store without a
# flush (a node's hand-over before the flush), or flushes and closes it (a hand-over now);
# the three in turn, each round. It times the giver's flush and the next owner's format
# check (both ways: every column family, and only the stamp's) and `Store::open`.
# Rewrites the "handover" section of bench/RESULTS.md from bench/results/summary.json (raw
# lines in bench/results/handover.jsonl, not in git). Its stores go to a temporary
# directory it removes; it starts no server.
#
#   bench/handover.sh     # ~1 minute after the build
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
build_release
mkdir -p bench/results
out="$PWD/bench/results/handover.jsonl"
: >"$out"
work="$(mktemp -d /tmp/chatd-handover.XXXXXX)"
trap 'rm -rf "$work"' EXIT
(
  cd "$work" # the binary's stores go here
  "$cluster_parts_bin" handover --count 100000 --rounds 7 | tee -a "$out"
  "$cluster_parts_bin" handover --count 500000 --rounds 5 | tee -a "$out"
)
python3 bench/report.py handover bench/handover.sh
