# shellcheck shell=bash
# Helpers for the scripts that run a chatd cluster on loopback (bench/cluster.sh,
# bench/cluster-knee.sh): a single-member etcd, chatd nodes of a cluster sharing one
# partitions directory, three serving nodes spread over 12 partitions, and their readiness.
# Source it after bench/lib.sh and build_release, from the repository root. Every process it
# starts is listed in cluster_pids and everything it writes is under $work; cluster_begin
# sets both up, with the trap that cleans them.
# shellcheck disable=SC2154 # chatd_bin and server_shards are bench/lib.sh's

cluster_pids=()

# cluster_begin NAME: a work directory ($work, /tmp/NAME.XXXXXX), a trap that on exit kills
# every process started here, stops start_server's server and removes $work, and etcd.
cluster_begin() {
  work="$(mktemp -d "/tmp/$1.XXXXXX")"
  trap stop_cluster EXIT
  start_etcd
}

stop_cluster() {
  local pid
  for pid in "${cluster_pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  stop_server
  wait 2>/dev/null || true
  rm -rf "$work"
}

# start_etcd: a single-member etcd on free ports, its data in $work/etcd; sets etcd_url.
start_etcd() {
  etcd_url="http://127.0.0.1:$(free_port)"
  local etcd_peer
  etcd_peer="http://127.0.0.1:$(free_port)"
  etcd --name solo --data-dir "$work/etcd" --listen-client-urls "$etcd_url" \
    --advertise-client-urls "$etcd_url" --listen-peer-urls "$etcd_peer" \
    --initial-advertise-peer-urls "$etcd_peer" --initial-cluster "solo=$etcd_peer" \
    >"$work/etcd.log" 2>&1 &
  cluster_pids+=($!)
  for _ in $(seq 1 100); do
    curl -sf "$etcd_url/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "$etcd_url/health" >/dev/null || { cat "$work/etcd.log" >&2; echo "cluster: etcd did not start" >&2; exit 1; }
}

# The secret the nodes share, both as the cluster secret and as the token key the clients'
# tokens are minted with (`--token-secret "$secret" --token-key-id k1`).
secret="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

# start_node DIR NAME CLUSTER PARTITIONS_DIR [PARTITIONS PEER]: a chatd node of CLUSTER on a
# free port, its admin listener on another; with PEER, a serving node of a spread cluster
# (`cluster.peer`). Sets node_pid, node_port and node_admin. The limits the load generator
# would hit from one address are lifted, as start_server does.
start_node() {
  local dir="$1" name="$2" cluster="$3" parts="$4" count="${5:-4}" peer="${6:-}"
  mkdir -p "$dir"
  node_port="$(free_port)"
  node_admin="127.0.0.1:$(free_port)"
  cat >"$dir/chatd.toml" <<EOF
[[auth.keys]]
id = "k1"
secret = "$secret"

[cluster]
partitions = $count
etcd = ["$etcd_url"]
name = "$cluster"
node = "$name"
lease_secs = 2
partitions_dir = "$parts"
secret = "$secret"
peer = "$peer"
EOF
  env -u RUST_LOG CHATD_CONFIG="$dir/chatd.toml" CHATD_ADMIN_LISTEN="$node_admin" \
    CHATD_LIMITS_SEND_RATE=1000000 CHATD_LIMITS_SEND_BURST=1000000 \
    CHATD_LIMITS_MAX_CONNECTIONS_PER_ADDRESS=1000000 CHATD_LIMITS_RETRY_ABOVE=1000000 \
    CHATD_LIMITS_MAX_UNAUTHENTICATED=1000000 CHATD_WEB_ENABLED=false \
    CHATD_LOG='warn,chatd::server=info' \
    "$chatd_bin" run --listen "127.0.0.1:$node_port" --data-dir "$dir" \
    --shards "$server_shards" >"$dir.log" 2>&1 &
  node_pid=$!
  cluster_pids+=("$node_pid")
}

# ready ADMIN: the node's /readyz status code (000 while its admin listener is not up).
ready() {
  curl -s -o /dev/null -w '%{http_code}' "http://$1/readyz" || true
}

# wait_held COUNT ADMIN...: polls the nodes' /v1/status every 20 ms, from one process (a
# curl and a python3 per node and poll take hundreds of ms on a loaded machine), until
# they hold COUNT partitions between them, or 30 s passed.
wait_held() {
  python3 - "$@" <<'PY'
import json, sys, time, urllib.request
want, admins = int(sys.argv[1]), sys.argv[2:]
def held(admin):
    try:
        with urllib.request.urlopen(f"http://{admin}/v1/status", timeout=2) as answer:
            return len(json.load(answer)["partitions"]["held"])
    except Exception:
        return 0
deadline = time.monotonic() + 30
while time.monotonic() < deadline and sum(held(a) for a in admins) < want:
    time.sleep(0.02)
PY
}

# wait_ready ADMIN LOG: waits up to 30 s for the node to hold (or, with peers, reach)
# every partition.
wait_ready() {
  for _ in $(seq 1 1500); do
    [ "$(ready "$1")" = 200 ] && return 0
    sleep 0.02
  done
  cat "$2" >&2
  echo "cluster: a node never held every partition" >&2
  exit 1
}

# start_spread PREFIX CLUSTER PARTITIONS_DIR NAME...: serving nodes NAME... of CLUSTER
# (12 partitions in PARTITIONS_DIR), node NAME's data in PREFIX-NAME, all with the
# certificate the first one generates (the clients trust it whichever node they reach);
# waits until every partition is on its rendezvous winner and every node is ready. Sets
# servers (their client addresses), admins, pids and spread_ca (the certificate).
start_spread() {
  local prefix="$1" cluster="$2" parts="$3" first="$4" name dir i
  shift 3
  servers=() admins=() pids=()
  spread_names=("$@")
  spread_ca="$prefix-$first/tls/cert.pem"
  for name in "$@"; do
    dir="$prefix-$name"
    if [ "$name" != "$first" ]; then
      mkdir -p "$dir"
      cp -r "$prefix-$first/tls" "$dir/tls"
    fi
    start_node "$dir" "$name" "$cluster" "$parts" 12 "127.0.0.1:$(free_port)"
    servers+=("127.0.0.1:$node_port") admins+=("$node_admin") pids+=("$node_pid")
    for _ in $(seq 1 500); do
      [ -f "$spread_ca" ] && break
      sleep 0.02
    done
  done
  # Settled: every partition on its rendezvous winner (a node joining took its share by
  # hand-over) and every node ready.
  for i in "${!spread_names[@]}"; do wait_ready "${admins[$i]}" "$prefix-${spread_names[$i]}.log"; done
  sleep 3
  for i in "${!spread_names[@]}"; do wait_ready "${admins[$i]}" "$prefix-${spread_names[$i]}.log"; done
}

# stop_pids: SIGTERM to every node in pids, then waits for them and drops them from
# cluster_pids (the trap's kill -9 must not reach a process that reused the number).
stop_pids() {
  local pid stopped=" ${pids[*]} " kept=()
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${cluster_pids[@]}"; do
    [[ "$stopped" == *" $pid "* ]] || kept+=("$pid")
  done
  cluster_pids=("${kept[@]}")
}
