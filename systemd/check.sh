#!/usr/bin/env bash
# The unit's checks, run by `make test`:
#   1. `systemd-analyze verify` accepts chatd.service (with the chatd binary under test
#      installed at /usr/bin/chatd in a scratch root, so ExecStart's path is checked too);
#   2. `systemd-analyze security --offline=true` rates its exposure at most MAX_EXPOSURE;
#   3. the packaged chatd.toml passes `chatd check-config`, with the token key credential the
#      package generates and systemd's variables, as the unit would start it;
#   4. the Prometheus alert rules pass `promtool check rules` and their unit tests
#      (`promtool test rules chatd-alerts.test.yml`), and the Grafana dashboard is JSON.
# Usage: systemd/check.sh [path/to/chatd]   (default: $CARGO_TARGET_DIR/debug/chatd)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

MAX_EXPOSURE=1.5
target="$(realpath -m "${CARGO_TARGET_DIR:-$here/../target}")"
chatd="$(realpath -m "${1:-$target/debug/chatd}")"
cd "$here"
[ -x "$chatd" ] || { echo "systemd/check: no chatd binary at $chatd (build it first)" >&2; exit 1; }
command -v systemd-analyze >/dev/null || ../.ci/bootstrap systemd
# Debian ships promtool in the prometheus package (its service is not needed or started).
command -v promtool >/dev/null || ../.ci/bootstrap prometheus

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# 1. verify, in a root holding the binaries the unit names.
mkdir -p "$scratch/root/usr/bin" "$scratch/root/bin" "$scratch/root/etc/systemd/system"
ln "$chatd" "$scratch/root/usr/bin/chatd" 2>/dev/null || cp "$chatd" "$scratch/root/usr/bin/chatd"
cp "$(type -P kill)" "$scratch/root/bin/kill"
cp chatd.service "$scratch/root/etc/systemd/system/chatd.service"
# The units the unit's default dependencies name (sysinit.target, network-online.target, …).
mkdir -p "$scratch/root/usr/lib/systemd"
cp -r /usr/lib/systemd/system "$scratch/root/usr/lib/systemd/system"
if ! out="$(systemd-analyze verify --man=no --root="$scratch/root" \
    "$scratch/root/etc/systemd/system/chatd.service" 2>&1)" || [ -n "$out" ]; then
  echo "systemd/check: systemd-analyze verify chatd.service:" >&2
  echo "$out" >&2
  exit 1
fi

# 2. exposure.
report="$(systemd-analyze security --offline=true chatd.service 2>&1)"
exposure="$(sed -n 's/.*Overall exposure level for chatd.service: \([0-9.]*\).*/\1/p' <<<"$report")"
[ -n "$exposure" ] || { echo "$report" >&2; echo "systemd/check: no exposure level" >&2; exit 1; }
if ! awk -v e="$exposure" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(e <= max) }'; then
  grep '✗' <<<"$report" >&2 || true
  echo "systemd/check: exposure $exposure is above $MAX_EXPOSURE" >&2
  exit 1
fi

# 3. the packaged configuration, as the unit starts it.
mkdir -p "$scratch/credentials"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$scratch/credentials/token-key"
CREDENTIALS_DIRECTORY="$scratch/credentials" STATE_DIRECTORY="$scratch/state" \
  "$chatd" check-config --config chatd.toml >/dev/null

# 4. alerts and dashboard.
promtool check rules chatd-alerts.yml >/dev/null
promtool test rules chatd-alerts.test.yml >/dev/null
python3 -m json.tool grafana-dashboard.json >/dev/null

echo "systemd/check: chatd.service verifies, exposure $exposure (at most $MAX_EXPOSURE), packaged chatd.toml checks, alert rules and their tests pass"
