#!/usr/bin/env bash
# The parts a chatd cluster could stand on, measured on loopback (docs/SCALING.md weighs them):
# a 3-member etcd cluster and a 3-node RabbitMQ cluster, both started here on 127.0.0.1 apart
# from the machine's own broker, and `cluster-parts` (bench/src/bin/cluster-parts.rs) for
# - commit: a durable write acknowledged, 1 and 64 writers: chatd's storage thread (fsync,
#   group commit), an etcd put, a persistent publish confirmed by a quorum queue and by a
#   stream; and chatd with 4 and 16 stores on the one disk (partitions on one node);
# - hop: an event from one node to another and back, over QUIC and through RabbitMQ;
# - ownership failover: an etcd lease holder SIGKILLed (the standby waits for the lease's
#   TTL), a RabbitMQ single-active consumer SIGKILLed (its socket closes) and SIGSTOPped
#   (the broker waits for missed heartbeats);
# - the replicated log's failover: the RabbitMQ node leading a quorum queue or a stream
#   SIGKILLed under confirmed writes (the longest wait for a confirm; confirmed messages
#   still held);
# - a partition handover on a shared disk: a writer SIGKILLed with events in its WAL, the
#   time the next owner takes to open its RocksDB.
# Rewrites the "cluster-parts" section of bench/RESULTS.md from bench/results/summary.json
# (raw lines in bench/results/cluster-parts.jsonl, not in git). Everything it starts, it
# stops (a trap), and it only targets 127.0.0.1.
#
#   bench/cluster-parts.sh     # ~10 minutes after the build; needs etcd (make cluster-bootstrap)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
command -v etcd >/dev/null || { echo "cluster-parts: etcd is missing: make cluster-bootstrap" >&2; exit 1; }
rabbit_bin=/usr/lib/rabbitmq/bin
[ -x "$rabbit_bin/rabbitmq-server" ] || { echo "cluster-parts: RabbitMQ's server is missing (Debian's rabbitmq-server)" >&2; exit 1; }
build_release
mkdir -p bench/results
out="$PWD/bench/results/cluster-parts.jsonl"
: >"$out"

work="$(mktemp -d /tmp/chatd-cluster-parts.XXXXXX)"
etcd_pids=()
tag="cp$$"
stop_all() {
  for i in 1 2 3; do
    HOME="$work" "$rabbit_bin/rabbitmqctl" -n "$tag-$i@localhost" stop >/dev/null 2>&1 || true
  done
  for pid in "${etcd_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap stop_all EXIT

# etcd: three members, client and peer ports picked free.
etcd_clients=() etcd_peers=()
for i in 1 2 3; do
  etcd_clients+=("http://127.0.0.1:$(free_port)")
  etcd_peers+=("http://127.0.0.1:$(free_port)")
done
initial="e1=${etcd_peers[0]},e2=${etcd_peers[1]},e3=${etcd_peers[2]}"
for i in 0 1 2; do
  etcd --name "e$((i + 1))" --data-dir "$work/etcd$i" \
    --listen-client-urls "${etcd_clients[$i]}" --advertise-client-urls "${etcd_clients[$i]}" \
    --listen-peer-urls "${etcd_peers[$i]}" --initial-advertise-peer-urls "${etcd_peers[$i]}" \
    --initial-cluster "$initial" --initial-cluster-token "$tag" --initial-cluster-state new \
    >"$work/etcd$i.log" 2>&1 &
  etcd_pids+=($!)
done
etcd_urls="$(IFS=,; echo "${etcd_clients[*]}")"
for _ in $(seq 1 60); do
  ETCDCTL_API=3 etcdctl --endpoints "$etcd_urls" endpoint health >/dev/null 2>&1 && break
  sleep 1
done
ETCDCTL_API=3 etcdctl --endpoints "$etcd_urls" endpoint health

# RabbitMQ: three nodes on their own ports, data dirs and cookie, joined into one cluster.
echo -n "$tag-cookie-$(date +%s%N)" >"$work/.erlang.cookie"
chmod 400 "$work/.erlang.cookie"
amqp_ports=() dist_ports=()
for i in 1 2 3; do
  amqp_ports+=("$(free_port)")
  dist_ports+=("$(free_port)")
done
rabbit() { # rabbit N COMMAND...: runs a RabbitMQ tool with node N's environment
  local n=$1 dir="$work/rabbit$1"
  shift
  HOME="$work" RABBITMQ_NODENAME="$tag-$n@localhost" RABBITMQ_NODE_PORT="${amqp_ports[$((n - 1))]}" \
    RABBITMQ_DIST_PORT="${dist_ports[$((n - 1))]}" RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq" RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_CONF_ENV_FILE="$dir/env" RABBITMQ_PID_FILE="$dir/pid" "$@"
}
start_rabbit() {
  mkdir -p "$work/rabbit$1"
  echo "[]." >"$work/rabbit$1/enabled_plugins"
  rabbit "$1" "$rabbit_bin/rabbitmq-server" -detached
  # The node registers with epmd a while after -detached returns.
  for _ in $(seq 1 60); do
    rabbit "$1" "$rabbit_bin/rabbitmqctl" -n "$tag-$1@localhost" await_startup --timeout 10 \
      >/dev/null 2>&1 && return 0
    sleep 2
  done
  echo "cluster-parts: RabbitMQ node $1 did not start:" >&2
  tail -n 30 "$work/rabbit$1"/log/*.log >&2 || true
  return 1
}
for i in 1 2 3; do start_rabbit "$i"; done
for i in 2 3; do
  rabbit "$i" "$rabbit_bin/rabbitmqctl" -n "$tag-$i@localhost" stop_app >/dev/null
  rabbit "$i" "$rabbit_bin/rabbitmqctl" -n "$tag-$i@localhost" join_cluster "$tag-1@localhost" >/dev/null
  rabbit "$i" "$rabbit_bin/rabbitmqctl" -n "$tag-$i@localhost" start_app >/dev/null
done
amqp() { echo "amqp://guest:guest@127.0.0.1:${amqp_ports[$(($1 - 1))]}/%2f"; }
echo "cluster-parts: etcd at $etcd_urls; RabbitMQ nodes at $(amqp 1), $(amqp 2), $(amqp 3)"

run() { "$cluster_parts_bin" "$@" | tee -a "$out"; }
cd "$work" # the binary's temporary stores go to this run's folder

for round in 1 2; do
  for engine in chatd etcd quorum stream; do
    run commit --engine "$engine" --count 2000 --inflight 1 --etcd "$etcd_urls" --amqp "$(amqp 1)"
    run commit --engine "$engine" --count 32000 --inflight 64 --etcd "$etcd_urls" --amqp "$(amqp 1)"
  done
  # A node holding several partitions: a store (a WAL to sync) each, on the one disk.
  for stores in 4 16; do
    run commit --engine chatd --stores "$stores" --count 32000 --inflight 64
  done
  run hop --via quic --count 20000
  run hop --via amqp --count 20000 --amqp "$(amqp 1)" --amqp2 "$(amqp 2)"
done
run lease-failover --etcd "$etcd_urls" --ttl 2 --rounds 5
run sac-failover --amqp "$(amqp 2)" --rounds 5 --mode kill --heartbeat 2
run sac-failover --amqp "$(amqp 2)" --rounds 3 --mode stop --heartbeat 2
run reopen --count 100000
run reopen --count 500000
for kind in quorum stream; do
  run log-failover --amqp "$(amqp 1)" --amqp2 "$(amqp 2)" --queue-type "$kind" \
    --kill-pid "$(cat "$work/rabbit1/pid")" --secs 15
  start_rabbit 1 # it rejoins the cluster from its data dir
done
cd - >/dev/null

python3 bench/report.py cluster-parts bench/cluster-parts.sh
