//! The daemon's Prometheus metrics: one `metrics_exporter_prometheus` recorder per daemon (not
//! the process-global one, so several daemons in one test process keep their own numbers),
//! with every handle registered once at start. Hot paths only bump an atomic: counters that
//! every message touches are per shard (`shard` label), so shards never share a cache line
//! for them. Gauges of state the daemon keeps anyway (connections, budgets, queue depths,
//! the bridge's cursor) are read when `/metrics` is scraped ([`crate::admin`]), not
//! maintained on the way.
//!
//! Errors are counted where they are encoded (`shard::encode`), on whichever daemon thread
//! that is: each thread [`enter`]s its daemon's metrics once.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use chat_protocol::codes::ERROR_CODES;
use chat_protocol::{ErrorCode, Request};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: 50 µs to 10 s.
const SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];
/// Group commit sizes, in requests.
const GROUP_SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The request kinds, in the order of [`request_kind`].
pub(crate) const REQUESTS: [&str; 24] = [
    "authenticate",
    "register",
    "login",
    "ping",
    "lookup_users",
    "create_room",
    "find_room",
    "join_room",
    "leave_room",
    "invite",
    "kick",
    "ban",
    "unban",
    "set_role",
    "members",
    "conversations",
    "send",
    "history",
    "mark",
    "presence",
    "sync",
    "edit",
    "delete",
    "react",
];

/// The index of a request's kind in [`REQUESTS`].
pub(crate) fn request_kind(request: &Request) -> usize {
    match request {
        Request::Authenticate(_) => 0,
        Request::Register { .. } => 1,
        Request::Login { .. } => 2,
        Request::Ping => 3,
        Request::LookupUsers(_) => 4,
        Request::CreateRoom { .. } => 5,
        Request::FindRoom { .. } => 6,
        Request::JoinRoom { .. } => 7,
        Request::LeaveRoom { .. } => 8,
        Request::Invite { .. } => 9,
        Request::Kick { .. } => 10,
        Request::Ban { .. } => 11,
        Request::Unban { .. } => 12,
        Request::SetRole { .. } => 13,
        Request::Members { .. } => 14,
        Request::Conversations { .. } => 15,
        Request::Send(_) => 16,
        Request::History(_) => 17,
        Request::Mark { .. } => 18,
        Request::Presence { .. } => 19,
        Request::Sync(_) => 20,
        Request::Edit(_) => 21,
        Request::Delete(_) => 22,
        Request::React(_) => 23,
    }
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Registers handles on one recorder.
struct Registry<'a>(&'a metrics_exporter_prometheus::PrometheusRecorder);

impl Registry<'_> {
    fn describe(&self, name: &'static str, unit: Option<Unit>, help: &'static str) {
        self.0
            .describe_counter(KeyName::from(name), unit, help.into());
    }

    fn describe_gauge(&self, name: &'static str, unit: Option<Unit>, help: &'static str) {
        self.0
            .describe_gauge(KeyName::from(name), unit, help.into());
    }

    fn describe_histogram(&self, name: &'static str, unit: Option<Unit>, help: &'static str) {
        self.0
            .describe_histogram(KeyName::from(name), unit, help.into());
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, String)]) -> Counter {
        self.0.register_counter(&key(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, String)]) -> Gauge {
        self.0.register_gauge(&key(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str) -> Histogram {
        self.0.register_histogram(&key(name, &[]), &METADATA)
    }
}

fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect::<Vec<_>>(),
    )
}

/// Counters one shard bumps.
pub(crate) struct ShardMetrics {
    /// Requests read, by kind ([`REQUESTS`]).
    pub(crate) requests: Vec<Counter>,
    /// QUIC handshakes that completed.
    pub(crate) handshakes: Counter,
    /// QUIC handshakes that failed.
    pub(crate) handshakes_failed: Counter,
    /// Sessions authenticated.
    pub(crate) sessions: Counter,
    /// Sends committed and acknowledged (on the conversation's owner shard).
    pub(crate) sends_acknowledged: Counter,
    /// Event frames queued for connections.
    pub(crate) deliveries: Counter,
    /// Connections told they lag.
    pub(crate) lagged: Counter,
    /// Sends refused by the rate limit.
    pub(crate) rate_limited: Counter,
    /// Connections closed by an operator (`chatd admin kick`, `disable`, `revoke`).
    pub(crate) kicked: Counter,
    /// Conversations cached now (set by the shard).
    pub(crate) conversations_cached: Gauge,
}

/// What the storage thread records.
pub(crate) struct StorageMetrics {
    /// Group commits written.
    pub(crate) commits: Counter,
    /// Group commits that failed.
    pub(crate) commits_failed: Counter,
    /// Requests per group commit.
    pub(crate) group_size: Histogram,
    /// From the group's oldest request entering the queue to the group's write returning.
    pub(crate) commit_seconds: Histogram,
    /// The group's RocksDB write: WAL append and sync, memtable.
    pub(crate) write_seconds: Histogram,
    /// RocksDB's WAL write of the group with its fsync (durability `fsync` only).
    pub(crate) fsync_seconds: Histogram,
    /// How many storage threads (one per partition) saw their last group commit fail (a full
    /// or broken disk): any, and `/readyz` says 503.
    pub(crate) failing: std::sync::atomic::AtomicUsize,
}

impl StorageMetrics {
    /// Whether any storage thread's last group commit failed.
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Acquire) > 0
    }
}

/// What the bridge records.
pub(crate) struct BridgeMetrics {
    /// A window of events from its first publish to its last confirm.
    pub(crate) publish_seconds: Histogram,
    /// Events the broker confirmed.
    pub(crate) confirmed: Counter,
    /// Windows the broker refused (nack).
    pub(crate) nacked: Counter,
}

/// Gauges set from the daemon's state when `/metrics` is scraped.
pub(crate) struct ScrapeGauges {
    pub(crate) connections: [Gauge; 3],
    pub(crate) connections_per_shard: Vec<Gauge>,
    pub(crate) inbox_depth: Vec<Gauge>,
    pub(crate) inbox_messages: Vec<Counter>,
    pub(crate) inbox_wakeups: Vec<Counter>,
    pub(crate) heartbeat_age: Vec<Gauge>,
    pub(crate) refused: Counter,
    pub(crate) retries: Counter,
    pub(crate) memory_used: Gauge,
    pub(crate) memory_peak: Gauge,
    pub(crate) memory_limit: Gauge,
    pub(crate) event_queue_peak: Gauge,
    pub(crate) storage_queue: Gauge,
    pub(crate) storage_queue_capacity: Gauge,
    pub(crate) storage_failing: Gauge,
    pub(crate) outbox_head: Gauge,
    pub(crate) bridge_cursor: Gauge,
    pub(crate) bridge_backlog: Gauge,
    pub(crate) bridge_connected: Gauge,
    pub(crate) bridge_publishers: Gauge,
    pub(crate) bridge_connections: Counter,
    pub(crate) rss: Gauge,
    pub(crate) uptime: Gauge,
    pub(crate) ready: Gauge,
    pub(crate) draining: Gauge,
}

/// One daemon's metrics.
pub struct Metrics {
    handle: PrometheusHandle,
    pub(crate) shards: Vec<ShardMetrics>,
    pub(crate) storage: StorageMetrics,
    pub(crate) bridge: BridgeMetrics,
    pub(crate) scrape: ScrapeGauges,
    /// Error frames sent, by code (in [`ERROR_CODES`] order; the last is any other code).
    errors: Vec<Counter>,
    /// Admin actions, by name.
    admin: Vec<(&'static str, Counter)>,
    /// Lags of every session the cluster caused, by reason (in [`PEER_LAG_REASONS`] order).
    peer_lags: Vec<Counter>,
}

/// Why a cluster's node had every session lag (`chatd_peer_lags_total{reason}`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum PeerLag {
    /// A link to a node holding partitions started.
    LinkStart,
    /// A link to a node holding partitions ended.
    LinkEnd,
    /// A view moved a partition to another node or term.
    View,
    /// This node took partitions.
    Take,
    /// A partition's entries came from another node or term than the last ones delivered.
    NewSource,
}

/// The `reason` labels of [`PeerLag`], in its order.
pub(crate) const PEER_LAG_REASONS: [&str; 5] =
    ["link_start", "link_end", "view", "take", "new_source"];

/// The admin actions counted.
pub(crate) const ADMIN_ACTIONS: [&str; 7] = [
    "kick", "disable", "enable", "revoke", "erase", "compact", "backup",
];

impl Metrics {
    /// Registers every metric of a daemon with `shards` shards.
    ///
    /// # Panics
    /// Never: the bucket lists are constants that the exporter accepts.
    #[must_use]
    #[allow(clippy::too_many_lines)] // one registration per metric, in one place
    pub fn new(shards: usize) -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("chatd_storage_group_commit_requests".into()),
                    GROUP_SIZES,
                )
            })
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        let r = Registry(&recorder);
        help::describe(&r);

        let shard_label = |i: usize| vec![("shard", i.to_string())];
        let shard_metrics = (0..shards)
            .map(|i| {
                let per = |name| r.counter(name, &shard_label(i));
                ShardMetrics {
                    requests: REQUESTS
                        .iter()
                        .map(|kind| {
                            r.counter(
                                "chatd_requests_total",
                                &[("shard", i.to_string()), ("request", (*kind).to_owned())],
                            )
                        })
                        .collect(),
                    handshakes: r.counter(
                        "chatd_handshakes_total",
                        &[("shard", i.to_string()), ("result", "ok".to_owned())],
                    ),
                    handshakes_failed: r.counter(
                        "chatd_handshakes_total",
                        &[("shard", i.to_string()), ("result", "failed".to_owned())],
                    ),
                    sessions: per("chatd_sessions_total"),
                    sends_acknowledged: per("chatd_sends_acknowledged_total"),
                    deliveries: per("chatd_deliveries_total"),
                    lagged: per("chatd_lagged_total"),
                    rate_limited: per("chatd_rate_limited_total"),
                    kicked: per("chatd_kicked_total"),
                    conversations_cached: r.gauge("chatd_conversations_cached", &shard_label(i)),
                }
            })
            .collect();
        let errors = ERROR_CODES
            .iter()
            .map(|(_, name, _)| (*name).to_owned())
            .chain(["OTHER".to_owned()])
            .map(|name| r.counter("chatd_errors_total", &[("code", name)]))
            .collect();
        let peer_lags = PEER_LAG_REASONS
            .iter()
            .map(|reason| r.counter("chatd_peer_lags_total", &[("reason", (*reason).to_owned())]))
            .collect();
        let admin = ADMIN_ACTIONS
            .iter()
            .map(|a| {
                (
                    *a,
                    r.counter("chatd_admin_actions_total", &[("action", (*a).to_owned())]),
                )
            })
            .collect();
        let state = |s: &str| r.gauge("chatd_connections", &[("state", s.to_owned())]);
        let plain = |name| r.gauge(name, &[]);
        let scrape = ScrapeGauges {
            connections: [
                state("handshaking"),
                state("unauthenticated"),
                state("authenticated"),
            ],
            connections_per_shard: (0..shards)
                .map(|i| r.gauge("chatd_shard_connections", &shard_label(i)))
                .collect(),
            inbox_depth: (0..shards)
                .map(|i| r.gauge("chatd_inbox_depth", &shard_label(i)))
                .collect(),
            inbox_messages: (0..shards)
                .map(|i| r.counter("chatd_inbox_messages_total", &shard_label(i)))
                .collect(),
            inbox_wakeups: (0..shards)
                .map(|i| r.counter("chatd_inbox_wakeups_total", &shard_label(i)))
                .collect(),
            heartbeat_age: (0..shards)
                .map(|i| r.gauge("chatd_shard_heartbeat_age_seconds", &shard_label(i)))
                .collect(),
            refused: r.counter("chatd_connections_refused_total", &[]),
            retries: r.counter("chatd_quic_retries_total", &[]),
            memory_used: plain("chatd_memory_used_bytes"),
            memory_peak: plain("chatd_memory_peak_bytes"),
            memory_limit: plain("chatd_memory_limit_bytes"),
            event_queue_peak: plain("chatd_event_queue_peak"),
            storage_queue: plain("chatd_storage_queue_depth"),
            storage_queue_capacity: plain("chatd_storage_queue_capacity"),
            storage_failing: plain("chatd_storage_failing"),
            outbox_head: plain("chatd_outbox_head"),
            bridge_cursor: plain("chatd_bridge_cursor"),
            bridge_backlog: plain("chatd_bridge_backlog_events"),
            bridge_connected: plain("chatd_bridge_connected"),
            bridge_publishers: plain("chatd_bridge_publishers"),
            bridge_connections: r.counter("chatd_bridge_connections_total", &[]),
            rss: plain("chatd_process_resident_memory_bytes"),
            uptime: plain("chatd_uptime_seconds"),
            ready: plain("chatd_ready"),
            draining: plain("chatd_draining"),
        };
        r.gauge(
            "chatd_build_info",
            &[("version", env!("CARGO_PKG_VERSION").to_owned())],
        )
        .set(1.0);
        let storage = StorageMetrics {
            commits: r.counter(
                "chatd_storage_commits_total",
                &[("result", "ok".to_owned())],
            ),
            commits_failed: r.counter(
                "chatd_storage_commits_total",
                &[("result", "failed".to_owned())],
            ),
            group_size: r.histogram("chatd_storage_group_commit_requests"),
            commit_seconds: r.histogram("chatd_storage_commit_seconds"),
            write_seconds: r.histogram("chatd_storage_write_seconds"),
            fsync_seconds: r.histogram("chatd_storage_fsync_seconds"),
            failing: std::sync::atomic::AtomicUsize::new(0),
        };
        let bridge = BridgeMetrics {
            publish_seconds: r.histogram("chatd_bridge_publish_seconds"),
            confirmed: r.counter("chatd_bridge_confirmed_total", &[]),
            nacked: r.counter("chatd_bridge_nacks_total", &[]),
        };
        Metrics {
            handle,
            shards: shard_metrics,
            storage,
            bridge,
            scrape,
            errors,
            admin,
            peer_lags,
        }
    }

    /// The Prometheus text exposition of every metric (the scrape gauges as last set).
    pub(crate) fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds the histograms' recent samples into their buckets. Called every few seconds by
    /// the admin listener, so samples never pile up between scrapes.
    pub(crate) fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Counts an error frame with `code`.
    fn error(&self, code: ErrorCode) {
        let i = ERROR_CODES
            .iter()
            .position(|(c, _, _)| *c == code)
            .unwrap_or(ERROR_CODES.len());
        if let Some(counter) = self.errors.get(i) {
            counter.increment(1);
        }
    }

    /// Counts a lag of every session the cluster caused.
    pub(crate) fn peer_lag(&self, reason: PeerLag) {
        if let Some(counter) = self.peer_lags.get(reason as usize) {
            counter.increment(1);
        }
    }

    /// Counts an admin action.
    pub(crate) fn admin_action(&self, action: &str) {
        if let Some((_, counter)) = self.admin.iter().find(|(a, _)| *a == action) {
            counter.increment(1);
        }
    }
}

/// Records a duration in seconds.
pub(crate) fn seconds(histogram: &Histogram, took: Duration) {
    histogram.record(took.as_secs_f64());
}

thread_local! {
    /// The metrics of the daemon this thread belongs to.
    static CURRENT: RefCell<Option<Arc<Metrics>>> = const { RefCell::new(None) };
}

/// Makes this thread count its errors in `metrics` (called once by each daemon thread).
pub(crate) fn enter(metrics: &Arc<Metrics>) {
    CURRENT.with(|m| *m.borrow_mut() = Some(Arc::clone(metrics)));
}

/// Counts an error frame on this thread's daemon (nothing on a thread that did not enter).
pub(crate) fn count_error(code: ErrorCode) {
    CURRENT.with(|m| {
        if let Some(metrics) = m.borrow().as_ref() {
            metrics.error(code);
        }
    });
}

/// The process's resident set size in bytes (`VmRSS` of `/proc/self/status`), 0 when
/// unreadable.
pub(crate) fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

mod help;
#[cfg(test)]
mod tests;
