# chatd — the two commands a fresh machine needs are `make run` and `make test`.
#
#   make run     build (profile `local`) and start the daemon on its embedded default configuration
#   make test    rustfmt check, clippy -D warnings, module headers, every test in the workspace,
#                the systemd unit's verify and security checks and the alert rules' promtool
#                checks (systemd/check.sh), the TypeScript client's tests (clients/ts), the
#                web app's build check and its test in a headless chromium (web/)
#   make lint    only the rustfmt, clippy and module-header checks
#   make web-build  rebuild web/dist/app.js (the web app chatd embeds) after changing web/src
#                or clients/ts/src; commit it
#   make bench   the benchmarks, written up in bench/RESULTS.md (bridge: needs RabbitMQ;
#                scenarios: chatd against the floor with chat-loadgen, about 30 minutes); the
#                figures of each run set go to bench/results/summary.json, the per-run files
#                stay local
#   make cluster-parts  what the parts a chatd cluster could stand on cost (etcd, RabbitMQ quorum
#                queues and streams, QUIC between nodes), each engine a cluster of three on
#                127.0.0.1 (bench/cluster-parts.sh; part of make bench), for docs/SCALING.md
#   make cluster a chatd cluster on 127.0.0.1 under load: etcd, a standby pair and three
#                serving nodes, chat-loadgen over them with its checker; a node SIGKILLed,
#                stopped or joining mid-run, and rooms across the nodes (bench/cluster.sh;
#                part of make bench)
#   make cluster-knee  the max rate of three serving nodes against one node's, on the same
#                machine (bench/cluster-knee.sh, about 25 minutes; part of make bench)
#   make bench-report  bench/RESULTS.md's generated sections and plot, again, from
#                bench/results/summary.json alone
#   make faults  the fault suite: SIGKILL loops, SIGSTOP, a full disk, under load, with the
#                checks of bench/src/bin/faults.rs (about 15 minutes; the disk-full part
#                needs root), written up in bench/RESULTS.md
#   make deb     the Debian package (cargo-deb, release build): target/debian/chatd_*.deb
#   make package-test  install that package on a clean debootstrap root and run chatd from it
#                (root and network; systemd/package-test.sh)
#   make fuzz    the cargo-fuzz targets (decode, events, token, config) for FUZZ_SECONDS each
#                (default 60)
#
# CARGO_TARGET_DIR is honoured; .ci/run points it at a persistent folder under ~/.cache.

CARGO ?= cargo
FUZZ_SECONDS ?= 60
CHATD_ARGS ?=

.PHONY: all run test lint fmt-check clippy headers unit unit-checks ts-test web-build web-test deb package-test bench bench-report cluster cluster-knee cluster-parts cluster-bootstrap faults fuzz bootstrap peers-bootstrap clean

all: test

# What a fresh Debian machine lacks for this workspace: libclang for bindgen (rocksdb's
# build), a C++ compiler for RocksDB itself, cmake/pkg-config for native builds, systemd's
# tools for the unit checks, promtool (Debian's prometheus package) for the alert rules,
# protoc and the well-known types (libprotobuf-dev: google/protobuf/*.proto) for etcd-client's build
# (the etcd v3 API's .proto files, compiled by its build script),
# etcd for the partition-ownership test (it starts its own on free ports).
BOOTSTRAP_PACKAGES := libclang-dev clang g++ make pkg-config cmake systemd prometheus protobuf-compiler libprotobuf-dev etcd-server
bootstrap:
	@./.ci/bootstrap $(BOOTSTRAP_PACKAGES)

# The brokers of the load generator's peer tests and of the peer benchmarks (not needed to
# run chatd; Debian's mosquitto package also starts a system broker on port 1883).
PEER_PACKAGES := nats-server mosquitto
peers-bootstrap:
	@./.ci/bootstrap $(PEER_PACKAGES)

# The engines a chatd cluster is weighed on (docs/SCALING.md, bench/cluster-parts.sh): etcd and
# its etcdctl; RabbitMQ is already on every machine this runs on.
CLUSTER_PACKAGES := etcd-server etcd-client
cluster-bootstrap:
	@./.ci/bootstrap $(CLUSTER_PACKAGES)

# The `local` profile (Cargo.toml): release optimisations without fat LTO, for a shorter
# first build; what ships (make deb, make bench) is built with `release`.
run: bootstrap
	$(CARGO) run --profile local --locked --bin chatd -- $(CHATD_ARGS)

test: bootstrap peers-bootstrap lint unit unit-checks ts-test web-test

lint: fmt-check clippy headers

# Module headers say what the code does now: none may speak of work "to come" or of an
# issue (they went stale once already).
headers:
	@! git ls-files '*.rs' | xargs grep -nE '^\s*//!.*(to come|will join|[Ii]ssue #?[0-9]|the [a-z-]+ issue)' \
	  || { echo "module headers above speak of work to come or of an issue; say what the code does" >&2; exit 1; }

fmt-check:
	$(CARGO) fmt --all -- --check

# `--profile test`: the same profile as `unit`, so both share every dependency's build (a
# plain clippy run builds RocksDB's C++ a second time).
clippy:
	$(CARGO) clippy --profile test --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --all-targets --locked
	$(CARGO) test --workspace --doc --locked

# The TypeScript client (clients/ts): its codec against every vector of docs/PROTOCOL.md and
# its hash chain against 13.38, with node's test runner (node 20 or newer, and npm; Debian's
# nodejs and npm packages when the machine has neither).
ts-test:
	@command -v npm >/dev/null || ./.ci/bootstrap nodejs npm
	cd clients/ts && npm ci --no-audit --no-fund --loglevel=error && npm test

# The web app (web/, on clients/ts): esbuild bundles it into web/dist/app.js, which chatd
# embeds (so building chatd needs no node). web-test checks that the committed bundle is the
# build of the sources, then runs web/test in a real browser (Debian's chromium, headless,
# through playwright-core) against the debug chatd and chat that `unit` built.
WEB_PACKAGES := chromium
web-build:
	@command -v npm >/dev/null || ./.ci/bootstrap nodejs npm
	cd web && npm ci --no-audit --no-fund --loglevel=error && npm run build

web-test: web-build
	@./.ci/bootstrap $(WEB_PACKAGES)
	@git diff --quiet -- web/dist || { git diff --stat -- web/dist; echo "web/dist is not the build of web/src and clients/ts/src: run make web-build and commit it" >&2; exit 1; }
	$(CARGO) build --workspace --bins --locked
	cd web && npm test

# The systemd unit: systemd-analyze verify and security, and the packaged config, against
# the debug chatd that `unit` built.
unit-checks:
	$(CARGO) test --workspace --all-targets --locked --no-run
	./systemd/check.sh

# cargo-deb: the kept packager for cargo workspaces (conffiles, systemd unit snippets,
# stripping); the package metadata is in daemon/Cargo.toml.
deb: bootstrap
	$(CARGO) build --release --workspace --locked
	@command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked
	$(CARGO) deb -p chatd --no-build --strip

package-test: deb
	./systemd/package-test.sh

bench: bootstrap peers-bootstrap cluster-bootstrap
	./bench/codec.sh
	./bench/bridge.sh
	./bench/bridge-outage.sh
	./bench/run.sh
	./bench/profile.sh
	./bench/nonreader.sh
	./bench/flood.sh
	./bench/reload.sh
	./bench/metrics-cost.sh
	./bench/metrics-knee.sh
	./bench/metrics-plot.sh
	./bench/hops.sh
	./bench/cluster-parts.sh
	./bench/cluster.sh
	./bench/cluster-knee.sh

# The cluster's candidate parts alone (docs/SCALING.md): etcd and RabbitMQ clusters of three
# on 127.0.0.1, started and stopped by the script; about 10 minutes.
cluster-parts: bootstrap cluster-bootstrap
	./bench/cluster-parts.sh

# A cluster on loopback under load, a node killed or joining; about 12 minutes.
cluster: bootstrap cluster-bootstrap
	./bench/cluster.sh

# Three serving nodes' max rate against one node's, on one machine; about 25 minutes.
cluster-knee: bootstrap cluster-bootstrap
	./bench/cluster-knee.sh

bench-report:
	python3 bench/report.py --from-summary

faults: bootstrap
	./bench/faults.sh

fuzz: bootstrap
	@rustup toolchain list | grep -q '^nightly' || { echo "make fuzz needs a nightly toolchain (cargo-fuzz uses -Z flags): rustup toolchain install nightly" >&2; exit 1; }
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	mkdir -p fuzz/corpus/decode fuzz/corpus/events fuzz/corpus/token fuzz/corpus/config
	cd fuzz && $(CARGO) +nightly fuzz run decode corpus/decode seeds/decode -- -max_total_time=$(FUZZ_SECONDS) -max_len=70000
	cd fuzz && $(CARGO) +nightly fuzz run events corpus/events -- -max_total_time=$(FUZZ_SECONDS) -max_len=70000
	cd fuzz && $(CARGO) +nightly fuzz run token corpus/token seeds/token -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096
	cd fuzz && $(CARGO) +nightly fuzz run config corpus/config seeds/config -- -max_total_time=$(FUZZ_SECONDS) -max_len=16384

clean:
	$(CARGO) clean
