#!/usr/bin/env bash
# Before and after a change: bench/run.sh at commit REV (in a temporary git worktree, with that
# commit's own scripts, load generator and floor) and then at this working tree, one after the
# other on this machine, each measuring chatd against the floor in the same run. Absolute
# rates drift on shared machines, so what is compared is each run's chatd/floor ratio of the
# max sustainable rate. Then both chatd builds run the same load at the same rate (the before
# run's half rate, each with its own tree's load generator: the wire format may differ between
# them), alternating,
# BENCH_BA_ROUNDS times (2 by default), for the server's CPU per delivery at equal load: at
# each run's own half rate the faster build would be measured at a higher rate, which
# amortises more.
#
#   bench/before-after.sh REV [SCENARIO...]     # default: dm rooms10 rooms100
#   bench/before-after.sh a0f4953 dm rooms10 rooms100
#   BENCH_BA_KEY=chain BENCH_BA_TITLE="the hash chain" bench/before-after.sh e318151 dm rooms10
#                                 # each comparison is its own section of RESULTS.md, by key
#                                 # (default: the before commit) and title
#   BENCH_BA_REUSE=1 BENCH_BA_ROUNDS=5 bench/before-after.sh REV ...
#                                 # only the same-rate runs (5 rounds), on the kept results
#                                 # of the last comparison
#   python3 bench/report.py --from-summary      # RESULTS.md's sections again, from the summary
#
# The commit is built with its own target directory ($CARGO_TARGET_DIR-before, seeded once
# from this tree's release build so RocksDB is not compiled again): both trees' binaries have
# the same names. The per-run files go to bench/results/before-after/{before,after,same}
# (not committed); bench/report.py records the figures in bench/results/summary.json (the
# "before-after" run set) and renders them into bench/RESULTS.md. Only 127.0.0.1 is targeted;
# every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 1 ] || { echo "usage: bench/before-after.sh REV [SCENARIO...]" >&2; exit 64; }
rev="$(git rev-parse --short "$1^{commit}")"
shift
scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(dm rooms10 rooms100)

# Each tree's bench/run.sh measures chatd and the floor only, once (its defaults add the
# peer brokers and a second round: hours, and nothing this comparison reads).
export BENCH_TARGETS="${BENCH_TARGETS:-chatd floor}" BENCH_ROUNDS="${BENCH_ROUNDS:-1}"
key="${BENCH_BA_KEY:-$rev}"
title="${BENCH_BA_TITLE:-$rev and this tree}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
before_target="$target_dir-before"
out=bench/results/before-after
after="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- daemon protocol || echo '+changes')"

if [ -z "${BENCH_BA_REUSE:-}" ]; then
  # This tree's release build first: it seeds the before tree's (RocksDB is compiled once).
  # shellcheck source=bench/lib.sh
  source bench/lib.sh
  build_release
  if [ ! -d "$before_target/release" ] && [ -d "$target_dir/release" ]; then
    mkdir -p "$before_target"
    cp -a "$target_dir/release" "$before_target/"
  fi
  tree="$(mktemp -d)/before"
  git worktree add --detach "$tree" "$rev" >/dev/null
  trap 'git worktree remove --force "$tree" 2>/dev/null || true' EXIT
  rm -rf "$out"
  mkdir -p "$out/before" "$out/after"
  echo "=== before: $rev"
  (cd "$tree" && CARGO_TARGET_DIR="$before_target" bench/run.sh "${scenarios[@]}")
  for scenario in "${scenarios[@]}"; do
    cp "$tree/bench/results/$scenario"-*.json "$out/before/" 2>/dev/null || true
  done
  git worktree remove --force "$tree"
  trap - EXIT
  echo "=== after: $after"
  # This tree's run.sh records its rows in the summary and RESULTS.md's scenario and peer
  # sections; a comparison publishes only its own section, so they are put back after it.
  cp bench/results/summary.json "$out/summary.json.kept"
  cp bench/RESULTS.md "$out/RESULTS.md.kept"
  bench/run.sh "${scenarios[@]}"
  cp "$out/summary.json.kept" bench/results/summary.json
  cp "$out/RESULTS.md.kept" bench/RESULTS.md
  for scenario in "${scenarios[@]}"; do
    cp "bench/results/$scenario"-*.json "$out/after/" 2>/dev/null || true
  done
  echo "$after" >"$out/after-rev"
fi
after="$(cat "$out/after-rev" 2>/dev/null || echo "$after")"

rounds="${BENCH_BA_ROUNDS:-2}"
echo "=== the same rate for both builds, $rounds rounds"
# shellcheck source=bench/lib.sh
source bench/lib.sh
build_release
after_chatd="$chatd_bin"
after_loadgen="$loadgen_bin"
before_chatd="$before_target/release/chatd"
before_loadgen="$before_target/release/chat-loadgen"
[ -x "$before_chatd" ] && [ -x "$before_loadgen" ] ||
  { echo "bench: no $before_chatd or $before_loadgen (run without BENCH_BA_REUSE)" >&2; exit 1; }
rm -rf "$out/same"
mkdir -p "$out/same"
trap stop_server EXIT
for scenario in "${scenarios[@]}"; do
  rate="$(jq -r '.steps[-1].offered_rate // empty' "$out/before/$scenario-chatd-half.json" 2>/dev/null || true)"
  [ -n "$rate" ] || { echo "bench: no half rate of $scenario before" >&2; continue; }
  for round in $(seq 1 "$rounds"); do
    for when in before after; do
      echo "=== $scenario at $rate msg/s, $when, round $round"
      if [ "$when" = before ]; then
        chatd_bin="$before_chatd" loadgen_bin="$before_loadgen"
      else
        chatd_bin="$after_chatd" loadgen_bin="$after_loadgen"
      fi
      start_server chatd
      run_scenario chatd "$scenario" "$out/same/$scenario-$when-$round.json" --rate "$rate" || true
      stop_server
    done
  done
done
chatd_bin="$after_chatd" loadgen_bin="$after_loadgen"

command="bench/before-after.sh $rev ${scenarios[*]}"
[ "$rounds" = 2 ] || command="BENCH_BA_ROUNDS=$rounds $command"
if [ -n "${BENCH_BA_REUSE:-}" ]; then
  # The runs of both builds were those of the last comparison.
  command="$(cat "$out/command" 2>/dev/null || echo "bench/before-after.sh $rev ${scenarios[*]}"), then BENCH_BA_REUSE=1 $command"
else
  echo "$command" >"$out/command"
fi
python3 bench/report.py before-after "$command" "$key" "$title" "$rev" "$after" "${scenarios[@]}"
