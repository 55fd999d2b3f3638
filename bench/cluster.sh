#!/usr/bin/env bash
# A chatd cluster on loopback under load, a node SIGKILLed (docs/SCALING.md section 9,
# docs/OPERATIONS.md section 9): a single-member etcd, chatd nodes sharing one partitions
# directory, and chat-loadgen's `dm` preset spreading its clients over them (`--also`) with
# its checker on. Eight runs per round, interleaved:
#
# - single: one chatd without a cluster (the baseline);
# - failover: two nodes, 4 partitions, one serving and one standing by; halfway through the
#   measured window the serving node is SIGKILLed and the standby takes every partition once
#   the node's lease (2 s) expires;
# - spread: three serving nodes (`cluster.peer`), 12 partitions spread over them, each
#   forwarding to the others what their partitions hold, so most direct conversations have
#   their members on different nodes;
# - spread-failover: the same, and one of the three is SIGKILLed halfway: its partitions go
#   to the other two;
# - spread-stop: the same, and one of the three is stopped (SIGTERM) halfway: it hands its
#   partitions over to the other two, then says goodbye to its clients;
# - spread-join: two serving nodes (a and c) with the clients, and halfway the third (b)
#   starts and joins: it takes the partitions it wins from the other two by hand-over, under
#   the load, and the time from its start until it holds them and every node is ready is
#   the join time;
# - single-rooms and spread-rooms: the `rooms10` preset (rooms of 10, every message
#   delivered to the 9 other members) at half the rate, on one chatd and on three serving
#   nodes: a room's members sit on all three, its partition on one of them.
#
# Clients whose connection is lost give a silent server 1 s (`--idle-timeout-ms 1000`,
# standing in for the stateless reset the next node behind a load balancer sends them) and
# resume on the next node, their unanswered sends resent with their op ids. Figures go to
# bench/results/summary.json (`cluster`) and the "Cluster" section of bench/RESULTS.md.
# Everything it starts, it stops (a trap), and it only targets 127.0.0.1.
#
#   bench/cluster.sh              # ~17 minutes after the build; needs etcd (make cluster-bootstrap)
#   BENCH_RATE=2000 bench/cluster.sh    # (the rooms runs at half of it)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
command -v etcd >/dev/null || { echo "cluster: etcd is missing: make cluster-bootstrap" >&2; exit 1; }
rate="${BENCH_RATE:-1000}"
results=bench/results
mkdir -p "$results"
build_release

# shellcheck source=bench/cluster-lib.sh
source bench/cluster-lib.sh
cluster_begin chatd-cluster

load=(--clients 200 --rate "$rate")
rooms_load=(--clients 200 --rate "$(python3 -c "print($rate / 2)")")
warm_up="$(preset_option dm warm_up "${load[@]}")"
duration="$(preset_option dm duration "${load[@]}")"
kill_after="$(python3 -c "print($warm_up + $duration / 2)")"
rm -f "$results"/cluster-*.json "$results"/cluster-*.txt
: >"$results/cluster-failover.jsonl"
for round in 1 2 3; do
  echo "=== round $round: one node"
  start_server chatd
  run_scenario chatd dm "$results/cluster-single-$round.json" "${load[@]}" ||
    echo "cluster: round $round (one node) failed its check" >&2
  stop_server

  echo "=== round $round: one node, rooms of 10"
  start_server chatd
  run_scenario chatd rooms10 "$results/cluster-single-rooms-$round.json" "${rooms_load[@]}" ||
    echo "cluster: round $round (one node, rooms) failed its check" >&2
  stop_server

  echo "=== round $round: two nodes, the serving one SIGKILLed ${kill_after} s into the run"
  parts="$work/partitions-$round"
  mkdir -p "$parts"
  start_node "$work/a$round" a "bench$round" "$parts"
  a_pid="$node_pid" a_port="$node_port" a_admin="$node_admin"
  wait_ready "$a_admin" "$work/a$round.log"
  # One certificate for both nodes: the clients trust it whichever they reach.
  mkdir -p "$work/b$round"
  cp -r "$work/a$round/tls" "$work/b$round/tls"
  start_node "$work/b$round" b "bench$round" "$parts"
  b_pid="$node_pid" b_port="$node_port" b_admin="$node_admin"
  for _ in $(seq 1 500); do
    grep -q "joined the cluster" "$work/b$round.log" && break
    sleep 0.02
  done
  out="$results/cluster-failover-$round.json"
  "$loadgen_bin" --preset dm "${load[@]}" --idle-timeout-ms 1000 \
    --server "127.0.0.1:$a_port" --also "127.0.0.1:$b_port" \
    --ca "$work/a$round/tls/cert.pem" --token-secret "$secret" --token-key-id k1 \
    --json-out "$out" --quiet >"${out%.json}.txt" &
  loadgen_pid=$!
  sleep "$kill_after"
  kill -9 "$a_pid"
  killed="$(date +%s.%N)"
  wait_ready "$b_admin" "$work/b$round.log"
  held="$(date +%s.%N)"
  status=0
  wait "$loadgen_pid" || status=$?
  cat "${out%.json}.txt"
  [ "$status" -eq 0 ] || echo "cluster: round $round (failover) exited $status" >&2
  python3 -c "import json; print(json.dumps({'round': $round, 'failover_ms': ($held - $killed) * 1000}))" \
    >>"$results/cluster-failover.jsonl"
  # b stops; a, SIGKILLed, is reaped.
  pids=("$a_pid" "$b_pid")
  stop_pids

  for mode in spread spread-failover spread-stop spread-join spread-rooms; do
    echo "=== round $round: three serving nodes ($mode)"
    parts="$work/partitions-$mode-$round"
    mkdir -p "$parts"
    prefix="$work/$mode$round"
    # In spread-join, b starts halfway through the run (below).
    if [ "$mode" = spread-join ]; then
      start_spread "$prefix" "$mode$round" "$parts" a c
    else
      start_spread "$prefix" "$mode$round" "$parts" a b c
    fi
    out="$results/cluster-$mode-$round.json"
    also=()
    for server in "${servers[@]:1}"; do also+=(--also "$server"); done
    if [ "$mode" = spread-rooms ]; then
      mode_load=(--preset rooms10 "${rooms_load[@]}")
    else
      mode_load=(--preset dm "${load[@]}")
    fi
    "$loadgen_bin" "${mode_load[@]}" --idle-timeout-ms 1000 \
      --server "${servers[0]}" "${also[@]}" \
      --ca "$spread_ca" --token-secret "$secret" --token-key-id k1 \
      --json-out "$out" --quiet >"${out%.json}.txt" &
    loadgen_pid=$!
    if [ "$mode" = spread-failover ] || [ "$mode" = spread-stop ]; then
      sleep "$kill_after"
      if [ "$mode" = spread-stop ]; then kill -TERM "${pids[1]}"; else kill -9 "${pids[1]}"; fi
      killed="$(date +%s.%N)"
      # Until a and c hold every partition between them (b handed them over, or its lease
      # expired, and they opened its partitions), as their /v1/status say.
      wait_held 12 "${admins[0]}" "${admins[2]}"
      held="$(date +%s.%N)"
      python3 -c "import json; print(json.dumps({'round': $round, 'mode': '$mode', 'failover_ms': ($held - $killed) * 1000}))" \
        >>"$results/cluster-failover.jsonl"
    fi
    if [ "$mode" = spread-join ]; then
      sleep "$kill_after"
      dir="$prefix-b"
      mkdir -p "$dir"
      cp -r "$prefix-a/tls" "$dir/tls"
      start_node "$dir" b "$mode$round" "$parts" 12 "127.0.0.1:$(free_port)"
      started="$(date +%s.%N)"
      pids+=("$node_pid")
      # Until b holds the partitions it wins (rendezvous over a, b and c: the first 8 bytes
      # of SHA-256(partition, node), cluster::weight) and a and c are ready again.
      share="$(python3 - <<'PY'
import hashlib
def weight(p, node):
    return int.from_bytes(hashlib.sha256(p.to_bytes(2, "big") + node.encode()).digest()[:8], "big")
print(",".join(str(p) for p in range(12) if max("abc", key=lambda n: (weight(p, n), n)) == "b"))
PY
)"
      joined=0
      for _ in $(seq 1 1500); do
        held_b="$(curl -s "http://$node_admin/v1/status" 2>/dev/null |
          python3 -c 'import json, sys; print(",".join(map(str, json.load(sys.stdin)["partitions"]["held"])))' 2>/dev/null || true)"
        if [ "$held_b" = "$share" ] && [ "$(ready "$node_admin")" = 200 ] &&
          [ "$(ready "${admins[0]}")" = 200 ] && [ "$(ready "${admins[1]}")" = 200 ]; then
          joined=1
          break
        fi
        sleep 0.02
      done
      [ "$joined" = 1 ] || echo "cluster: round $round: b never took its partitions ($share)" >&2
      took="$(date +%s.%N)"
      python3 -c "import json; print(json.dumps({'round': $round, 'mode': '$mode', 'failover_ms': ($took - $started) * 1000, 'partitions': len('$share'.split(','))}))" \
        >>"$results/cluster-failover.jsonl"
    fi
    status=0
    wait "$loadgen_pid" || status=$?
    cat "${out%.json}.txt"
    [ "$status" -eq 0 ] || echo "cluster: round $round ($mode) exited $status" >&2
    stop_pids
  done
done

python3 bench/report.py cluster bench/cluster.sh "--preset dm ${load[*]}" "--preset rooms10 ${rooms_load[*]}"
