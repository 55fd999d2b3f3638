#!/usr/bin/env bash
# Why devices catch up while a node joins or stops (a diagnostic, not a benchmark):
# bench/cluster.sh's spread-join or spread-stop run once, printing every node's
# chatd_peer_lags_total by reason before the load and at its end, and the `Lagged` the
# clients got. A node's lag reaches each of its sessions once, so the clients' `Lagged` is
# about the sum over the nodes of (their lags during the run) x (their clients).
#
# - join: two serving nodes, a and c, with 200 clients at 1,000 msg/s of chat-loadgen's
#   `dm`, its checker on; b starts 12 s in and takes its partitions;
# - stop: three serving nodes with the clients; b is stopped (SIGTERM) 12 s in and hands its
#   partitions over to a and c, then says goodbye to its clients, who resume on a or c.
#
# Needs etcd (make cluster-bootstrap); loopback only; everything it starts it stops.
#
#   bench/cluster-lags.sh [join|stop]     # ~1 minute after the build
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
command -v etcd >/dev/null || { echo "cluster-lags: etcd is missing: make cluster-bootstrap" >&2; exit 1; }
build_release
# shellcheck source=bench/cluster-lib.sh
source bench/cluster-lib.sh
mode="${1:-join}"
case "$mode" in
  join | stop) ;;
  *) echo "usage: bench/cluster-lags.sh [join|stop]" >&2; exit 64 ;;
esac
cluster_begin chatd-cluster-lags

# lags ADMIN...: each node's lags by reason, one line per node.
lags() {
  local admin
  for admin in "$@"; do
    echo "  $admin: $(curl -s "http://$admin/metrics" | sed -n 's/^chatd_peer_lags_total{reason="\([a-z_]*\)"} /\1=/p' | sort | tr '\n' ' ')"
  done
}

parts="$work/partitions"
mkdir -p "$parts"
if [ "$mode" = join ]; then
  start_spread "$work/join" join "$parts" a c
  echo "before the load (a, c):"
else
  start_spread "$work/stop" stop "$parts" a b c
  echo "before the load (a, b, c):"
fi
lags "${admins[@]}"
also=()
for server in "${servers[@]:1}"; do also+=(--also "$server"); done
"$loadgen_bin" --preset dm --clients 200 --rate 1000 --idle-timeout-ms 1000 \
  --server "${servers[0]}" "${also[@]}" --ca "$spread_ca" \
  --token-secret "$secret" --token-key-id k1 --json-out "$work/run.json" --quiet >"$work/run.txt" &
loadgen_pid=$!
sleep 12
if [ "$mode" = join ]; then
  mkdir -p "$work/join-b"
  cp -r "$work/join-a/tls" "$work/join-b/tls"
  start_node "$work/join-b" b join "$parts" 12 "127.0.0.1:$(free_port)"
  pids+=("$node_pid")
  admins+=("$node_admin")
else
  kill -TERM "${pids[1]}"
  unset 'admins[1]'
fi
status=0
wait "$loadgen_pid" || status=$?
grep -E "check:" "$work/run.txt" || true
echo "Lagged the clients got: $(jq '.steps[0].lagged' "$work/run.json")"
if [ "$mode" = join ]; then
  echo "at the end (a, c, b; b has no clients):"
else
  echo "at the end (a, c; b stopped):"
  echo "b's stop, from its log:"
  grep -E "SIGTERM|stopping|leaving the cluster|gave up the partition|handed the partitions|lease is revoked" "$work/stop-b.log" || true
fi
lags "${admins[@]}"
stop_pids
exit "$status"
