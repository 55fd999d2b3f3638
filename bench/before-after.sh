#!/usr/bin/env bash
# Before and after a change: bench/run.sh at commit REV (in a temporary git worktree, with that
# commit's own scripts, load generator and floor) and then at this working tree, one after the
# other on this machine, each measuring chatd against the floor in the same run. Absolute
# rates drift on shared machines, so what is compared is each run's chatd/floor ratio: max
# sustainable rate, and server CPU per delivery at half of each target's max.
#
#   bench/before-after.sh REV [SCENARIO...]     # default: dm rooms10 rooms100
#   bench/before-after.sh a0f4953 dm rooms10 rooms100
#   python3 bench/before_after.py --render      # RESULTS.md's section again, from the summary
#
# The commit is built with its own target directory ($CARGO_TARGET_DIR-before, seeded once
# from this tree's release build so RocksDB is not compiled again): both trees' binaries have
# the same names. The per-run files of both go to bench/results/before-after/{before,after}
# (not committed); the figures to bench/before-after.json (committed), and
# bench/before_after.py renders them into bench/RESULTS.md. Only 127.0.0.1 is targeted;
# every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 1 ] || { echo "usage: bench/before-after.sh REV [SCENARIO...]" >&2; exit 64; }
rev="$(git rev-parse --short "$1^{commit}")"
shift
scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(dm rooms10 rooms100)

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
before_target="$target_dir-before"
if [ ! -d "$before_target/release" ] && [ -d "$target_dir/release" ]; then
  mkdir -p "$before_target"
  cp -a "$target_dir/release" "$before_target/"
fi

tree="$(mktemp -d)/before"
git worktree add --detach "$tree" "$rev" >/dev/null
trap 'git worktree remove --force "$tree" 2>/dev/null || true' EXIT

out=bench/results/before-after
rm -rf "$out"
mkdir -p "$out/before" "$out/after"

echo "=== before: $rev"
(cd "$tree" && CARGO_TARGET_DIR="$before_target" bench/run.sh "${scenarios[@]}")
for scenario in "${scenarios[@]}"; do
  cp "$tree/bench/results/$scenario"-*.json "$out/before/" 2>/dev/null || true
done

after="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- daemon protocol || echo '+changes')"
echo "=== after: $after"
bench/run.sh "${scenarios[@]}"
for scenario in "${scenarios[@]}"; do
  cp "bench/results/$scenario"-*.json "$out/after/" 2>/dev/null || true
done

python3 bench/before_after.py --collect "$out" --before "$rev" --after "$after" \
  --command "bench/before-after.sh $rev ${scenarios[*]}" "${scenarios[@]}"
