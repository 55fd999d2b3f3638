#!/usr/bin/env bash
# Installs the Debian package on a clean Debian root and runs chatd from the installed files:
#   1. debootstrap a minimal bookworm root (cached in $CHATD_ROOT_CACHE as a tarball);
#   2. `dpkg -i` the package there (its one dependency beyond the base, adduser, first);
#   3. check what the maintainer scripts made: the chatd user, the generated token key
#      (root only), /etc/chatd/tls, the enabled unit;
#   4. start /usr/bin/chatd as the unit would (user chatd, StateDirectory, the credential),
#      after `chatd check-config`, and talk to it with the installed `chat` CLI, also with a
#      token minted from the generated key;
#   5. edit the conffile, reinstall, check the edit and the key are kept; purge.
# Needs root and network (debootstrap, apt). Usage: systemd/package-test.sh [chatd_*.deb]
# (default: the newest under $CARGO_TARGET_DIR/debian, as `make deb` leaves it).
set -euo pipefail
trap 'echo "package-test: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "package-test: needs root (debootstrap, chroot)" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-target}"
deb="${1:-$(ls -t "$target"/debian/chatd_*.deb 2>/dev/null | head -1 || true)}"
[ -f "$deb" ] || { echo "package-test: no package; run make deb first" >&2; exit 1; }
command -v debootstrap >/dev/null || ./.ci/bootstrap debootstrap
command -v file >/dev/null || ./.ci/bootstrap file

cache="${CHATD_ROOT_CACHE:-$HOME/.cache/chatd/bookworm-minbase.tar}"
root="$(mktemp -d /var/tmp/chatd-root.XXXXXX)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  umount "$root/proc" 2>/dev/null || true
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT
in_root() { chroot "$root" "$@"; }
step() { echo "package-test: $*"; }

if [ -f "$cache" ]; then
  step "clean root from $cache"
  tar -C "$root" -xf "$cache"
else
  step "debootstrap bookworm (minbase) into $root"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
  mkdir -p "$(dirname "$cache")"
  tar -C "$root" -cf "$cache.tmp" . && mv "$cache.tmp" "$cache"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"

step "dpkg -i $(basename "$deb")"
in_root apt-get -qq update
in_root env DEBIAN_FRONTEND=noninteractive apt-get -qq install -y adduser >/dev/null
cp "$deb" "$root/tmp/chatd.deb"
in_root dpkg -i /tmp/chatd.deb

step "what the maintainer scripts made"
in_root getent passwd chatd
key="$root/etc/chatd/credentials/token-key"
[ "$(in_root stat -c %a:%U /etc/chatd/credentials/token-key)" = 600:root ] || { echo "token key not root-only" >&2; exit 1; }
grep -Eq '^[0-9a-f]{64}$' "$key" || { echo "token key is not 32 bytes of hex" >&2; exit 1; }
[ "$(in_root stat -c %G /etc/chatd/tls)" = chatd ]
[ -L "$root/etc/systemd/system/multi-user.target.wants/chatd.service" ] || { echo "unit not enabled" >&2; exit 1; }
for f in /usr/bin/chatd /usr/bin/chat /usr/lib/systemd/system/chatd.service /usr/lib/sysctl.d/60-chatd.conf /etc/chatd/chatd.toml /usr/share/doc/chatd/OPERATIONS.md; do
  [ -e "$root$f" ] || { echo "missing $f" >&2; exit 1; }
done
if file "$root/usr/bin/chatd" | grep -q "not stripped"; then echo "chatd is not stripped" >&2; exit 1; fi
step "chatd is $(du -h "$root/usr/bin/chatd" | cut -f1), chat $(du -h "$root/usr/bin/chat" | cut -f1)"

step "start chatd as the unit does"
# What systemd does for the unit: StateDirectory owned by the user, the credential copied.
install -d -m 0700 -o "$(in_root id -u chatd)" -g "$(in_root id -g chatd)" "$root/var/lib/chatd"
install -d -m 0500 -o "$(in_root id -u chatd)" "$root/run/credentials/chatd.service"
install -m 0400 -o "$(in_root id -u chatd)" "$key" "$root/run/credentials/chatd.service/token-key"
port=$((20000 + RANDOM % 20000))
as_chatd=(chroot --userspec=chatd:chatd "$root" env STATE_DIRECTORY=/var/lib/chatd
  CREDENTIALS_DIRECTORY=/run/credentials/chatd.service CHATD_LISTEN="127.0.0.1:$port")
"${as_chatd[@]}" /usr/bin/chatd check-config --config /etc/chatd/chatd.toml
"${as_chatd[@]}" /usr/bin/chatd run --config /etc/chatd/chatd.toml 2>"$root/tmp/chatd.log" &
pid=$!
for _ in $(seq 1 100); do
  grep -q "chatd is listening" "$root/tmp/chatd.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$root/tmp/chatd.log" >&2; exit 1; }
  sleep 0.2
done
grep -q "chatd is listening" "$root/tmp/chatd.log" || { cat "$root/tmp/chatd.log" >&2; exit 1; }
chat=(chroot "$root" env CHAT_SERVER="127.0.0.1:$port" CHAT_CA=/var/lib/chatd/tls/cert.pem
  CHAT_PROFILE=/tmp/profile CHAT_PASSWORD=package-test-pw /usr/bin/chat)
"${chat[@]}" register packager >/dev/null
"${chat[@]}" room create lobby >/dev/null
seq="$("${chat[@]}" send '#lobby' 'installed from the package')"
"${chat[@]}" history '#lobby' | grep -q 'installed from the package'
# A token minted with the generated key (as an app backend would) authenticates.
token="$(in_root env CREDENTIALS_DIRECTORY=/etc/chatd/credentials /usr/bin/chatd token --config /etc/chatd/chatd.toml --user minted)"
mkdir -p "$root/tmp/minted"
printf '{"user":0,"name":"minted","token":"%s"}' "$token" >"$root/tmp/minted/session.json"
"${chat[@]}" --profile /tmp/minted whoami | grep -q '^minted (id '
step "chat send: $seq, read back with history; a token minted with the package's key authenticates"
kill -TERM "$pid"; wait "$pid"; pid=""
grep -q "SIGTERM: draining" "$root/tmp/chatd.log"
if grep -q $'\e\[' "$root/tmp/chatd.log"; then echo "ANSI codes in a non-terminal log" >&2; exit 1; fi

step "an edited conffile and the key survive a reinstall"
before="$(cat "$key")"
echo '# edited by the operator' >>"$root/etc/chatd/chatd.toml"
in_root dpkg -i /tmp/chatd.deb >/dev/null
grep -q 'edited by the operator' "$root/etc/chatd/chatd.toml"
[ "$(cat "$key")" = "$before" ]
in_root dpkg --purge chatd >/dev/null
[ ! -e "$key" ] && [ ! -e "$root/usr/bin/chatd" ]
step "OK: installed on a clean bookworm root, ran, reinstalled keeping the edit, purged"
