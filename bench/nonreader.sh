#!/usr/bin/env bash
# Clients that never read: how much of chatd's memory can they pin? Runs the `nonreader`
# bench binary (it starts its own chatd on 127.0.0.1 and a temp dir) for two cases and
# rewrites the "Non-readers" section of bench/RESULTS.md:
#   - one account with 4 devices, each pipelining 64 full history pages (about 105 MB of
#     answers without budgets), the daemon's default budgets;
#   - 1 000 such connections (250 accounts x 4), 16 pages each, with a 256 MiB daemon
#     budget (`limits.daemon_memory`).
# Each run first serves the same requests to clients that read everything (the baseline in
# the same run), then opens the non-readers and samples the daemon's VmRSS for 10 s. The
# figures go to bench/results/summary.json (`nonreader`; the raw lines stay in
# bench/results/nonreader.jsonl, not in git) and the section is rendered from it.
#
#   bench/nonreader.sh            # both cases (~2 minutes after the build)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
build_release
mkdir -p bench/results
one="$("$nonreader_bin" --chatd "$chatd_bin" --accounts 1 --devices 4 --requests 64 --hold-secs 10 2>/dev/null)"
many="$("$nonreader_bin" --chatd "$chatd_bin" --accounts 250 --devices 4 --requests 16 \
  --daemon-memory 268435456 --hold-secs 10 2>/dev/null)"
printf '%s\n%s\n' "$one" "$many" >bench/results/nonreader.jsonl

python3 bench/report.py nonreader bench/nonreader.sh
