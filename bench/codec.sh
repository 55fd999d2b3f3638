#!/usr/bin/env bash
# Codec micro-benchmark: runs `cargo bench -p chat-bench --bench codec` (criterion, release
# profile with LTO), records the medians, the machine, and each result as a ratio to the copy
# baseline measured in the same run in bench/results/summary.json (`codec`), and rewrites the
# "Codec" section of bench/RESULTS.md from it (bench/report.py).
#
#   bench/codec.sh            # full run (~1 minute after the build)
#   bench/codec.sh --quick    # shorter measurement, for a smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
criterion_args=()
[ "${1:-}" = "--quick" ] && criterion_args=(--warm-up-time 1 --measurement-time 2)

cargo bench -p chat-bench --bench codec --locked -- "${criterion_args[@]}"

python3 bench/report.py codec "bench/codec.sh $*" "$target/criterion"
