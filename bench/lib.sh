# Helpers shared by the scenario scripts (bench/run.sh, bench/bridge-outage.sh): build the
# release binaries, start a fresh server on a free loopback port, drive it with chat-loadgen,
# stop it. Source it from the repository root.

# build_release: builds the whole workspace in release (one package set, the same as `make
# deb`: cargo's feature unification gives every script and the package the same binaries, and
# RocksDB's C++ is built once); sets chatd_bin, loadgen_bin, relay_bin and the others.
build_release() {
  local target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
  cargo build --release --workspace --locked
  chatd_bin="$target_dir/release/chatd"
  loadgen_bin="$target_dir/release/chat-loadgen"
  relay_bin="$target_dir/release/relay"
  nonreader_bin="$target_dir/release/nonreader"
  flood_bin="$target_dir/release/flood"
  faults_bin="$target_dir/release/faults"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
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

# start_server chatd|floor [ENV=VALUE...]: a fresh server (chatd on a new temp data dir, 2
# shards; the relay with 2 threads); sets server_pid, server_dir and port.
start_server() {
  local target="$1"
  shift
  server_dir="$(mktemp -d)"
  port="$(free_port)"
  if [ "$target" = chatd ]; then
    # The per-user send rate limit (20/s by default) would cap senders long before the
    # engine, and every simulated client comes from 127.0.0.1 (one address, beyond the
    # per-address cap and the Retry threshold for handshake floods): lifted, so the
    # benchmarks measure the daemon, not its policy.
    env -u RUST_LOG CHATD_LIMITS_SEND_RATE=1000000 CHATD_LIMITS_SEND_BURST=1000000 \
      CHATD_LIMITS_MAX_CONNECTIONS_PER_ADDRESS=1000000 CHATD_LIMITS_RETRY_ABOVE=1000000 \
      CHATD_LIMITS_MAX_UNAUTHENTICATED=1000000 \
      CHATD_LOG='warn,chatd::server=info' "$@" \
      "$chatd_bin" run --listen "127.0.0.1:$port" --data-dir "$server_dir" --shards 2 \
      >"$server_dir.log" 2>&1 &
  else
    "$relay_bin" --listen "127.0.0.1:$port" --threads 2 --data-dir "$server_dir" \
      >"$server_dir.log" 2>&1 &
  fi
  server_pid=$!
  for _ in $(seq 1 100); do
    grep -q "listening" "$server_dir.log" 2>/dev/null && break
    sleep 0.1
  done
  if ! kill -0 "$server_pid" 2>/dev/null || ! grep -q "listening" "$server_dir.log"; then
    cat "$server_dir.log" >&2
    echo "bench: $target did not start" >&2
    exit 1
  fi
}

# run_loadgen chatd|floor OUT.json ARGS...: chat-loadgen against the running server; the
# table goes to the terminal and to OUT.txt. Returns the load generator's exit code; when it
# is not 0, the server's log is kept as OUT.server.log.
run_loadgen() {
  local target="$1" out="$2"
  shift 2
  local auth=()
  [ "$target" = chatd ] && auth=(--token-secret-file "$server_dir/auth/secret")
  local status=0
  "$loadgen_bin" "$@" --target "$target" --server "127.0.0.1:$port" \
    --ca "$server_dir/tls/cert.pem" "${auth[@]}" --server-pid "$server_pid" \
    --json-out "$out" --quiet >"${out%.json}.txt" || status=$?
  cat "${out%.json}.txt"
  [ "$status" -eq 0 ] || cp "$server_dir.log" "${out%.json}.server.log" 2>/dev/null || true
  # chatd's warnings about slow group commits (the disk) are kept beside the result.
  local slow
  slow="$(slow_commit_warnings)"
  rm -f "${out%.json}.slow-commits.txt"
  [ -z "$slow" ] || printf '%s\n' "$slow" >"${out%.json}.slow-commits.txt"
  return "$status"
}

# slow_commit_warnings: the running server's log lines where chatd warned that group commits
# took longer than 50 ms (store::writer); nothing for the floor or a quiet disk.
slow_commit_warnings() {
  grep "group commits took longer" "$server_dir.log" 2>/dev/null || true
}

# scenario_args SCENARIO: the load generator's arguments for a standard scenario (clients and
# shape), for bench/run.sh and bench/profile.sh.
scenario_args() {
  case "$1" in
    dm) echo "dm --clients 1000" ;;
    rooms10) echo "rooms --clients 1000 --room-size 10" ;;
    rooms100) echo "rooms --clients 1000 --room-size 100" ;;
    fanout1000) echo "fanout --rooms 1 --room-size 1000 --senders 2" ;;
    idle10k) echo "idle --clients 10000 --ramp-up 20 --handshake-concurrency 128" ;;
    *) echo "unknown scenario $1 (dm rooms10 rooms100 fanout1000 idle10k)" >&2; return 1 ;;
  esac
}
