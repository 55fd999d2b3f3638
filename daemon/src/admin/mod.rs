//! The admin listener: HTTP/1.1 on a private TCP address (`[admin]`), on its own `admin`
//! thread ([`crate::http`]). It answers:
//!
//! - `GET /healthz`: 200 while the process lives (and its admin thread answers);
//! - `GET /readyz`: 200 when the daemon should get new clients: every shard's loop turned in
//!   the last [`READY_HEARTBEAT`], the last group commit succeeded, and no stop began; else
//!   503 with the failing checks, so a load balancer takes the instance out of rotation while
//!   it drains or its disk is full;
//! - `GET /metrics`: the Prometheus text exposition ([`crate::metrics`]);
//! - `/v1/...`: the admin API that `chatd admin` speaks ([`api`]).
//!
//! `/metrics` and `/v1/` need `Authorization: Bearer TOKEN` when `admin.token` is set (it
//! must be, for a non-loopback address); the health checks never do, since load balancers
//! cannot send headers. Bounded as every listener of [`crate::http`] is, with bodies of at
//! most [`MAX_BODY`] bytes.

pub(crate) mod accounts;
pub(crate) mod api;
pub mod client;
pub(crate) mod erase;

use crate::http::{failure, reply};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::bridge::BridgeStats;
use crate::shard::Shared;
use crate::store::Stores;

/// A shard whose loop has not turned for this long is not ready (it turns at least every
/// 250 ms).
pub(crate) const READY_HEARTBEAT: Duration = Duration::from_secs(2);
/// Largest request body.
const MAX_BODY: usize = 64 * 1024;
/// How often histogram samples are folded into their buckets.
const UPKEEP: Duration = Duration::from_secs(5);

/// What the handlers read and act on.
pub(crate) struct State {
    pub(crate) shared: Arc<Shared>,
    pub(crate) store: Stores,
    pub(crate) bridge: Arc<BridgeStats>,
    pub(crate) data_dir: std::path::PathBuf,
    /// Held by each account action from reading the restriction to its commit.
    pub(crate) actions: tokio::sync::Mutex<()>,
}

/// Starts the admin listener's thread serving `listener`.
pub(crate) fn start(
    listener: std::net::TcpListener,
    state: State,
) -> std::io::Result<crate::http::Listener> {
    let admin = crate::http::Listener::start("admin", listener, state)?;
    tracing::info!(addr = %admin.addr(), "admin listener up: /metrics, /healthz, /readyz, /v1/");
    Ok(admin)
}

impl crate::http::Service for State {
    fn enter(&self) {
        crate::metrics::enter(&self.shared.metrics);
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        handle(&self, request).await
    }

    async fn background(self: Arc<Self>) {
        let mut upkeep = tokio::time::interval(UPKEEP);
        // Account actions other nodes forward (`cluster.peer`), each on a task of its own,
        // at most MAX_FORWARDED at a time (beyond, the channel fills and the asking node is
        // answered that this one is busy).
        let (tx, mut forwarded) = tokio::sync::mpsc::channel(crate::peer::MAX_FORWARDED);
        self.shared.peers.serve_admin(tx);
        let running = Arc::new(tokio::sync::Semaphore::new(crate::peer::MAX_FORWARDED));
        loop {
            tokio::select! {
                _ = upkeep.tick() => self.shared.metrics.upkeep(),
                Some((action, permit)) = next_forwarded(&running, &mut forwarded) => {
                    let state = Arc::clone(&self);
                    tokio::task::spawn_local(async move {
                        accounts::forwarded(&state, action).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// The next forwarded action, once a permit to run it is free. Cancelled only at an await
/// (a permit not yet taken, an action not yet received), so nothing is lost.
async fn next_forwarded(
    running: &Arc<tokio::sync::Semaphore>,
    forwarded: &mut tokio::sync::mpsc::Receiver<crate::peer::Forwarded>,
) -> Option<(crate::peer::Forwarded, tokio::sync::OwnedSemaphorePermit)> {
    let permit = Arc::clone(running).acquire_owned().await.ok()?;
    Some((forwarded.recv().await?, permit))
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::GET | &Method::HEAD, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            let readiness = readiness(&state.shared);
            let status = if readiness.ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "text/plain", readiness.to_string())
        }
        _ if !authorized(state, &request) => {
            let mut response = failure(StatusCode::UNAUTHORIZED, "a bearer token is required");
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            response
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            scrape(state),
        ),
        (_, p) if p.starts_with("/v1/") && from_a_browser(state, &request) => failure(
            StatusCode::FORBIDDEN,
            "without admin.token, the API takes requests to a loopback Host only, and actions \
             with Content-Type: application/json only",
        ),
        (_, p) if p.starts_with("/v1/") => {
            let (parts, body) = request.into_parts();
            let body = match Limited::new(body, MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => {
                    return failure(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large");
                }
            };
            api::handle(state, &parts, &body).await
        }
        _ => failure(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// Whether the request carries the configured bearer token (or none is configured).
fn authorized(state: &State, request: &Request<Incoming>) -> bool {
    let config = state.shared.config();
    let token = config.admin.token.expose();
    if token.is_empty() {
        return true;
    }
    request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, given)| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

/// Whether a request to the admin API could come from a web page in a browser on this
/// host: without a token, the API answers only requests whose `Host` is a loopback address
/// (DNS rebinding sends a foreign name) and actions only with a JSON body type (a page
/// cannot send one to another origin without a preflight, which this server never grants).
fn from_a_browser(state: &State, request: &Request<Incoming>) -> bool {
    if !state.shared.config().admin.token.expose().is_empty() {
        return false;
    }
    let host = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let loopback = name == "localhost"
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let json = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    !loopback || (request.method() != Method::GET && !json)
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The checks of `/readyz`.
pub(crate) struct Readiness {
    /// Shards whose loop did not turn within [`READY_HEARTBEAT`].
    pub(crate) stuck_shards: Vec<usize>,
    /// The last group commit failed.
    pub(crate) storage_failing: bool,
    /// A stop began.
    pub(crate) draining: bool,
    /// Partitions this node does not hold (a cluster's node standing by, or one whose
    /// partitions are moving): it cannot serve their conversations.
    pub(crate) partitions_missing: usize,
}

impl Readiness {
    pub(crate) fn ready(&self) -> bool {
        self.stuck_shards.is_empty()
            && !self.storage_failing
            && !self.draining
            && self.partitions_missing == 0
    }
}

impl std::fmt::Display for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", if self.ready() { "ready" } else { "not ready" })?;
        if self.stuck_shards.is_empty() {
            writeln!(f, "shards: turning")?;
        } else {
            writeln!(f, "shards: stuck {:?}", self.stuck_shards)?;
        }
        writeln!(
            f,
            "storage: {}",
            if self.storage_failing {
                "commits fail"
            } else {
                "writable"
            }
        )?;
        writeln!(f, "draining: {}", if self.draining { "yes" } else { "no" })?;
        match self.partitions_missing {
            0 => writeln!(f, "partitions: all held"),
            n => writeln!(f, "partitions: {n} not held here or by a linked node"),
        }
    }
}

/// Reads the readiness checks.
pub(crate) fn readiness(shared: &Shared) -> Readiness {
    Readiness {
        stuck_shards: shared.stuck_shards(READY_HEARTBEAT),
        storage_failing: shared.metrics.storage.is_failing(),
        draining: shared.shutting_down.load(Ordering::Acquire),
        partitions_missing: shared
            .partitions
            .count()
            .saturating_sub(shared.writer.held())
            .saturating_sub(shared.peers.reached().len()),
    }
}

/// Sets the scrape-time gauges from the daemon's state and renders every metric.
#[allow(clippy::cast_precision_loss)] // counts and bytes far below 2^53
fn scrape(state: &State) -> String {
    let shared = &state.shared;
    let g = &shared.metrics.scrape;
    let states = shared.connection_states();
    g.connections[0].set(states.handshaking as f64);
    g.connections[1].set(states.unauthenticated as f64);
    g.connections[2].set(states.authenticated as f64);
    for (gauge, open) in g.connections_per_shard.iter().zip(&states.per_shard) {
        gauge.set(*open as f64);
    }
    for (i, gauge) in g.inbox_depth.iter().enumerate() {
        gauge.set(shared.inboxes[i].len() as f64);
        let (messages, wakeups) = shared.inboxes[i].traffic();
        g.inbox_messages[i].absolute(messages);
        g.inbox_wakeups[i].absolute(wakeups);
    }
    for (i, gauge) in g.heartbeat_age.iter().enumerate() {
        gauge.set(shared.heartbeat_age(i).as_secs_f64());
    }
    g.refused.absolute(shared.refused.load(Ordering::Relaxed));
    g.retries.absolute(shared.retries.load(Ordering::Relaxed));
    g.memory_used.set(shared.memory.used() as f64);
    g.memory_peak.set(shared.memory.peak() as f64);
    g.memory_limit.set(shared.memory.limit() as f64);
    g.event_queue_peak.set(shared.event_queue_peak() as f64);
    g.storage_queue.set(shared.writer.queued() as f64);
    g.storage_queue_capacity
        .set(shared.writer.capacity() as f64);
    let failing = shared.metrics.storage.is_failing();
    g.storage_failing.set(f64::from(u8::from(failing)));
    let head = shared.outbox_head();
    let confirmed = state.bridge.confirmed.load(Ordering::Acquire);
    g.outbox_head.set(head as f64);
    g.bridge_cursor.set(confirmed as f64);
    g.bridge_backlog.set(head.saturating_sub(confirmed) as f64);
    g.bridge_connected
        .set(f64::from(u8::from(state.bridge.connected())));
    g.bridge_publishers.set(state.bridge.publishers() as f64);
    g.bridge_connections
        .absolute(state.bridge.connections.load(Ordering::Acquire));
    g.rss.set(crate::metrics::resident_bytes() as f64);
    g.uptime.set(shared.started.elapsed().as_secs_f64());
    let readiness = readiness(shared);
    g.ready.set(f64::from(u8::from(readiness.ready())));
    g.draining.set(f64::from(u8::from(readiness.draining)));
    shared.metrics.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
        assert!(!constant_time_eq(b"abcdef", b"abcde"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn readiness_names_every_failing_check() {
        let r = Readiness {
            stuck_shards: vec![1],
            storage_failing: true,
            draining: false,
            partitions_missing: 3,
        };
        assert!(!r.ready());
        let text = r.to_string();
        assert!(text.starts_with("not ready\n"), "{text}");
        assert!(text.contains("shards: stuck [1]"), "{text}");
        assert!(text.contains("storage: commits fail"), "{text}");
        assert!(text.contains("draining: no"), "{text}");
        assert!(
            text.contains("partitions: 3 not held here or by a linked node"),
            "{text}"
        );
        let ok = Readiness {
            stuck_shards: vec![],
            storage_failing: false,
            draining: false,
            partitions_missing: 0,
        };
        assert!(ok.ready());
        assert!(ok.to_string().starts_with("ready\n"));
        let standing_by = Readiness {
            partitions_missing: 1,
            ..ok
        };
        assert!(!standing_by.ready());
    }
}
