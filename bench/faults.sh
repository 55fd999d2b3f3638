#!/usr/bin/env bash
# The fault suite (`make faults`): chatd under SIGKILL at random points (both durability
# modes), SIGSTOP/SIGCONT and a full disk, each under load from chat-sdk clients, then the
# checks of bench/src/bin/faults.rs (every acknowledged send stored exactly once, no op
# stored twice, contiguous seqs, listeners got everything once and in order). Rewrites the
# "Reliability" section of bench/RESULTS.md from the figures recorded in
# bench/results/summary.json (`faults`; the raw lines stay in bench/results/faults.jsonl, not
# in git); exits non-zero when a check fails.
#
#   bench/faults.sh                 # ~15 minutes after the build
#   FAULT_CYCLES=5 bench/faults.sh  # a quick pass
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
build_release
cycles="${FAULT_CYCLES:-50}"
mkdir -p bench/results
out=bench/results/faults.jsonl
: >"$out"
status=0
run() {
  echo "faults $*" >&2
  "$faults_bin" --chatd "$chatd_bin" "$@" >>"$out" || status=1
}
run --scenario kill --durability fsync --cycles "$cycles" --seed 1
run --scenario kill --durability buffered --cycles "$cycles" --seed 2
run --scenario stop --cycles 3 --stop-secs 10
if [ "$(id -u)" -eq 0 ]; then
  run --scenario full --cycles 2 --full-secs 5
else
  echo "faults: the full-disk scenario mounts a tmpfs and needs root; skipped" >&2
fi

python3 bench/report.py faults bench/faults.sh "$cycles"
exit "$status"
