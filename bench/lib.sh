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

# loadgen_command chatd|floor SCENARIO [ARGS...]: sets the array loadgen_cmd to chat-loadgen in
# the preset SCENARIO with ARGS (which win over the preset's values), against the running
# server: its address, certificate, pid (for /proc), and chatd's token secret.
loadgen_command() {
  local target="$1" scenario="$2"
  shift 2
  loadgen_cmd=("$loadgen_bin" --preset "$scenario" "$@" --target "$target"
    --server "127.0.0.1:$port" --ca "$server_dir/tls/cert.pem" --server-pid "$server_pid")
  [ "$target" = chatd ] && loadgen_cmd+=(--token-secret-file "$server_dir/auth/secret")
  return 0
}

# run_scenario chatd|floor SCENARIO OUT.json [ARGS...]: chat-loadgen in the preset SCENARIO
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
