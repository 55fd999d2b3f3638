# shellcheck shell=bash
# Helpers shared by the scripts under bench/: build the release binaries, start a fresh server
# on a free loopback port, drive it with chat-loadgen in one of its presets (run_scenario: the
# one way a script runs a scenario), stop it. Source it from the repository root.
#
# The scenarios are chat-loadgen's presets (`--preset dm|rooms10|rooms100|fanout1000|idle10k`,
# listed with their arguments by `chat-loadgen --help`): their sizes, rates, p99 bounds and
# timing are defined there once; a script adds only what it changes (a rate, a duration).

# build_release: builds the whole workspace in release (one package set, the same as `make
# deb`: cargo's feature unification gives every script and the package the same binaries, and
# RocksDB's C++ is built once); sets chatd_bin, loadgen_bin, relay_bin and the others, and
# exports BENCH_COMMIT, the commit measured (taken before the build; bench/report.py records
# it with the results).
# shellcheck disable=SC2034 # each binary is used by some of the scripts that source this file
build_release() {
  local target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
  BENCH_COMMIT="$(python3 bench/report.py --commit)"
  export BENCH_COMMIT
  cargo build --release --workspace --locked
  chatd_bin="$target_dir/release/chatd"
  loadgen_bin="$target_dir/release/chat-loadgen"
  relay_bin="$target_dir/release/relay"
  nonreader_bin="$target_dir/release/nonreader"
  flood_bin="$target_dir/release/flood"
  faults_bin="$target_dir/release/faults"
  cluster_parts_bin="$target_dir/release/cluster-parts"
}

# free_port: a loopback port free for both UDP (chatd, the floor) and TCP (the peers).
free_port() {
  python3 -c '
import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        t.bind(("127.0.0.1", u.getsockname()[1]))
    except OSError:
        continue
    print(u.getsockname()[1])
    break'
}

server_pid=""
server_dir=""
port=""

stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
  if [ -n "$server_dir" ]; then
    rm -rf "$server_dir" "$server_dir.log"
  fi
  server_dir=""
}

# start_server chatd|floor|nats|jetstream|mqtt-qos0|mqtt-qos1 [ENV=VALUE...]: a fresh server on
# a free loopback port (chatd on a new temp data dir, server_shards shards; the relay with as
# many threads; the peers as start_peer describes); sets server_pid, server_dir and port.
# server_shards (default 2) and server_cpus (a taskset CPU list, default: unpinned; chatd pins
# its shards within it) are read at each start; loadgen_cpus pins chat-loadgen likewise.
server_shards=2
server_cpus=""
loadgen_cpus=""
start_server() {
  local target="$1"
  shift
  server_dir="$(mktemp -d)"
  port="$(free_port)"
  local pin=()
  [ -z "$server_cpus" ] || pin=(taskset -c "$server_cpus")
  case "$target" in
    chatd)
      # The per-user send rate limit (20/s by default) would cap senders long before the
      # engine, and every simulated client comes from 127.0.0.1 (one address, beyond the
      # per-address cap and the Retry threshold for handshake floods): lifted, so the
      # benchmarks measure the daemon, not its policy.
      env -u RUST_LOG CHATD_LIMITS_SEND_RATE=1000000 CHATD_LIMITS_SEND_BURST=1000000 \
        CHATD_LIMITS_MAX_CONNECTIONS_PER_ADDRESS=1000000 CHATD_LIMITS_RETRY_ABOVE=1000000 \
        CHATD_LIMITS_MAX_UNAUTHENTICATED=1000000 CHATD_WEB_ENABLED=false \
        CHATD_LOG='warn,chatd::server=info' "$@" \
        "${pin[@]}" "$chatd_bin" run --listen "127.0.0.1:$port" --data-dir "$server_dir" \
        --shards "$server_shards" >"$server_dir.log" 2>&1 &
      ;;
    floor)
      "${pin[@]}" "$relay_bin" --listen "127.0.0.1:$port" --threads "$server_shards" \
        --data-dir "$server_dir" >"$server_dir.log" 2>&1 &
      ;;
    nats | jetstream | mqtt-qos0 | mqtt-qos1)
      start_peer "$target"
      return
      ;;
    *)
      echo "bench: unknown target $target" >&2
      exit 64
      ;;
  esac
  server_pid=$!
  wait_started "$target" "listening"
}

# wait_started TARGET PATTERN: waits up to 10 s for the server just started to log PATTERN;
# exits with its log when it does not.
wait_started() {
  local target="$1" pattern="$2"
  for _ in $(seq 1 100); do
    grep -q "$pattern" "$server_dir.log" 2>/dev/null && break
    sleep 0.1
  done
  if ! kill -0 "$server_pid" 2>/dev/null || ! grep -q "$pattern" "$server_dir.log"; then
    cat "$server_dir.log" >&2
    echo "bench: $target did not start" >&2
    exit 1
  fi
}

# The peers chatd is compared with, each with the durability it is measured at:
#   nats       nats-server (bench/nats-server.sh's pinned build), core publish/subscribe:
#              in memory, nothing acknowledged;
#   jetstream  the same server with JetStream on a file store and `sync_interval: always`:
#              every stored message fsync'd before its publish is acknowledged, as chatd's
#              default `fsync` durability acknowledges a send;
#   mqtt-qos*  Debian's mosquitto, MQTT 5, QoS 0 or 1, persistence off (a QoS 1 PUBACK means
#              the broker has the message in memory; with persistence on, mosquitto would
#              still write its store only every `autosave_interval`, 30 min by default),
#              `set_tcp_nodelay true` (off by default: with Nagle's algorithm and delayed
#              ACKs, a tenth of the deliveries waited 40 ms), its other limits at their
#              defaults (20 QoS 1 messages in flight and 1,000 queued per client).
# Each on a free loopback port with its files in server_dir; the system's own instances on
# 4222 and 1883 are left alone (their settings are not the benchmark's to choose).
nats_server_bin=""
start_peer() {
  local target="$1" ready="Server is ready"
  case "$target" in
    nats | jetstream)
      [ -n "$nats_server_bin" ] || nats_server_bin="$(bench/nats-server.sh)"
      {
        echo "listen: 127.0.0.1:$port"
        echo "max_payload: 1MB"
        [ "$target" = nats ] || printf 'jetstream {\n  store_dir: "%s"\n  sync_interval: always\n}\n' "$server_dir/js"
      } >"$server_dir/nats.conf"
      "$nats_server_bin" -c "$server_dir/nats.conf" >"$server_dir.log" 2>&1 &
      ;;
    mqtt-qos*)
      ready="running"
      printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\nlog_dest stderr\n' \
        "$port" >"$server_dir/mosquitto.conf"
      mosquitto -c "$server_dir/mosquitto.conf" >"$server_dir.log" 2>&1 &
      ;;
  esac
  server_pid=$!
  wait_started "$target" "$ready"
}

# metric_totals NAME...: each named series of the Prometheus text on stdin (chatd's /metrics),
# summed over its label sets, space-separated in the order given (0 for one that is absent).
metric_totals() {
  python3 -c '
import sys
sums = dict.fromkeys(sys.argv[1:], 0.0)
for line in sys.stdin:
    name = line.split("{")[0].split(" ")[0]
    if not line.startswith("#") and name in sums:
        sums[name] += float(line.rsplit(" ", 1)[1])
print(" ".join(format(sums[n], ".17g") for n in sys.argv[1:]))' "$@"
}

# path_counters PORT: "messages wakeups deliveries sends" so far, from the /metrics of the
# chatd whose admin listener is on PORT (cross-thread inbox messages and wake-ups, live
# deliveries, sends acknowledged).
path_counters() {
  curl -sf "http://127.0.0.1:$1/metrics" | metric_totals chatd_inbox_messages_total \
    chatd_inbox_wakeups_total chatd_deliveries_total chatd_sends_acknowledged_total
}

# loadgen_command TARGET SCENARIO [ARGS...]: sets the array loadgen_cmd to chat-loadgen in the
# preset SCENARIO with ARGS (which win over the preset's values), against the running server
# (a target of start_server): its address, certificate, pid (for /proc), and chatd's token
# secret.
loadgen_command() {
  local target="$1" scenario="$2"
  shift 2
  loadgen_cmd=()
  [ -z "$loadgen_cpus" ] || loadgen_cmd=(taskset -c "$loadgen_cpus")
  loadgen_cmd+=("$loadgen_bin" --preset "$scenario" "$@"
    --server "127.0.0.1:$port" --ca "$server_dir/tls/cert.pem" --server-pid "$server_pid")
  case "$target" in
    mqtt-qos*) loadgen_cmd+=(--target mqtt --qos "${target#mqtt-qos}") ;;
    *) loadgen_cmd+=(--target "$target") ;;
  esac
  [ "$target" = chatd ] && loadgen_cmd+=(--token-secret-file "$server_dir/auth/secret")
  return 0
}

# run_scenario TARGET SCENARIO OUT.json [ARGS...]: chat-loadgen in the preset SCENARIO
# (ARGS win over the preset's values) against the running server; the JSON goes to OUT.json,
# the table to the terminal and to OUT.txt. Returns the load generator's exit code; when it
# is not 0, the server's log is kept as OUT.server.log.
run_scenario() {
  local target="$1" scenario="$2" out="$3"
  shift 3
  local status=0
  loadgen_command "$target" "$scenario" "$@"
  "${loadgen_cmd[@]}" --json-out "$out" --quiet >"${out%.json}.txt" || status=$?
  cat "${out%.json}.txt"
  [ "$status" -eq 0 ] || cp "$server_dir.log" "${out%.json}.server.log" 2>/dev/null || true
  # chatd's warnings about slow group commits (the disk) are kept beside the result.
  local slow
  slow="$(slow_commit_warnings)"
  rm -f "${out%.json}.slow-commits.txt"
  [ -z "$slow" ] || printf '%s\n' "$slow" >"${out%.json}.slow-commits.txt"
  return "$status"
}

# preset_option SCENARIO OPTION [ARGS...]: the value of one of chat-loadgen's options (as its
# JSON names it: scenario, rate, clients...) in the preset SCENARIO with ARGS, from
# `chat-loadgen --dry-run`; fails, with chat-loadgen's message, on an unknown preset.
preset_option() {
  local scenario="$1" option="$2" resolved
  shift 2
  resolved="$("$loadgen_bin" --preset "$scenario" "$@" --dry-run)" || return 1
  jq -r ".$option" <<<"$resolved"
}

# slow_commit_warnings: the running server's log lines where chatd warned that group commits
# took longer than 50 ms (store::writer); nothing for the floor or a quiet disk.
slow_commit_warnings() {
  grep "group commits took longer" "$server_dir.log" 2>/dev/null || true
}

# start_scraper PORT FILE: fetches chatd's /metrics from 127.0.0.1:PORT every second (as a
# 1 s Prometheus would) until stop_scraper, keeping the count of answered scrapes in FILE.
# One Python process on one kept-alive connection: a scraper that started a curl every second
# spent more CPU on the shared two cores, in process creation, than chatd spends answering
# (a scrape takes under 1 ms to render), and that was measured as the cost of metrics.
scraper=""
start_scraper() {
  local admin_port="$1" count_file="$2"
  python3 -u - "$admin_port" "$count_file" <<'PY' &
import http.client, sys, time
port, count_file = int(sys.argv[1]), sys.argv[2]
conn, n = None, 0
while True:
    try:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        response.read()
        n += response.status == 200
    except (OSError, http.client.HTTPException):
        conn = None
    with open(count_file, "w") as f:
        f.write(f"{n}\n")
    time.sleep(1)
PY
  scraper=$!
}

# stop_scraper: stops start_scraper's loop (nothing when none runs).
stop_scraper() {
  if [ -n "$scraper" ]; then
    kill "$scraper" 2>/dev/null || true
    wait "$scraper" 2>/dev/null || true
    scraper=""
  fi
}
