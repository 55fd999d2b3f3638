#!/usr/bin/env bash
# SIGHUP under load: chatd (release) with a configured certificate, chat-loadgen's `rooms10`
# preset with 200 clients at a steady rate for 30 s, and meanwhile the certificate replaced
# and SIGHUP sent every 3 s (8 reloads). The loadgen clients trust only the FIRST certificate, so a connection that
# dropped could not come back: the run is correct only if no connection dropped
# ("connects 0") and the checker finds every acknowledged message delivered once.
# Usage: bench/reload.sh [RATE] (default 2000 msg/s). Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
rate="${1:-2000}"
build_release
dir="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
mkdir -p "$dir/tls"
certificate() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -addext "basicConstraints=critical,CA:FALSE" -addext keyUsage=digitalSignature \
    -addext extendedKeyUsage=serverAuth \
    -keyout "$dir/tls/key.new" -out "$dir/tls/cert.new" 2>/dev/null
  mv "$dir/tls/key.new" "$dir/tls/key.pem"
  mv "$dir/tls/cert.new" "$dir/tls/cert.pem"
}
certificate
cp "$dir/tls/cert.pem" "$dir/first.pem"
port="$(free_port)"
cat >"$dir/chatd.toml" <<TOML
listen = "127.0.0.1:$port"
data_dir = "$dir/data"
[tls]
cert = "$dir/tls/cert.pem"
key = "$dir/tls/key.pem"
[web]
enabled = false
TOML
"$chatd_bin" run --config "$dir/chatd.toml" 2>"$dir/chatd.log" &
pid=$!
until grep -q "chatd is listening" "$dir/chatd.log"; do
  kill -0 "$pid" || { cat "$dir/chatd.log" >&2; exit 1; }
  sleep 0.2
done
"$loadgen_bin" --preset rooms10 --clients 200 --rate "$rate" --duration 30 \
  --server "127.0.0.1:$port" --ca "$dir/first.pem" --token-secret-file "$dir/data/auth/secret" \
  >"$dir/loadgen.txt" 2>&1 &
loadgen=$!
sleep 5
for _ in $(seq 1 8); do
  certificate
  kill -HUP "$pid"
  sleep 3
done
status=0
wait "$loadgen" || status=$?
tail -12 "$dir/loadgen.txt"
echo "reloads applied: $(grep -c 'reloaded: new connections' "$dir/chatd.log" || true) of 8;" \
  "failed: $(grep -c 'reload failed' "$dir/chatd.log" || true);" \
  "connects during the run: $(grep -c 'connects [1-9]' "$dir/loadgen.txt" || true) seconds with any"
[ "$status" -eq 0 ] && grep -q "result: correct" "$dir/loadgen.txt"
