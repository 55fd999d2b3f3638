#!/usr/bin/env bash
# Handshake and connection floods against chatd's admission control: an authenticated
# client's ping round trips alone (the baseline, same run), during a flood of
# spoofed-looking QUIC Initials, and during a flood of silent connections. Rewrites the
# "Floods" section of bench/RESULTS.md from the figures recorded in bench/results/summary.json
# (`flood`; the raw lines stay in bench/results/flood.jsonl, not in git). Two runs, so the
# spread shows.
#
#   bench/flood.sh            # ~1 minute after the build
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
build_release
mkdir -p bench/results
: >bench/results/flood.jsonl
for _ in 1 2; do
  "$flood_bin" --chatd "$chatd_bin" --secs 10 --initials-per-sec 20000 --silent 3000 \
    --silent-per-sec 500 2>/dev/null >>bench/results/flood.jsonl
done

python3 bench/report.py flood bench/flood.sh
