//! What operators and the daemon's stop ask of a shard's connections: listing, closing,
//! the goodbye to all and when the shard is done.

use super::*;

/// One connection, as `chatd admin connections` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct ConnInfo {
    pub(crate) shard: usize,
    pub(crate) id: u64,
    pub(crate) remote: std::net::SocketAddr,
    /// `quic` (a native client) or `webtransport` (a browser).
    pub(crate) transport: &'static str,
    pub(crate) state: &'static str,
    pub(crate) user: Option<u64>,
    pub(crate) name: Option<String>,
    pub(crate) device: Option<u64>,
    pub(crate) connected_secs: u64,
    pub(crate) rtt_ms: u64,
    pub(crate) queued_frames: usize,
    pub(crate) queued_bytes: usize,
    pub(crate) lagged: bool,
}

/// How many connections this shard holds (of `user` only, when given), and the `limit`
/// oldest of them.
pub(crate) fn list(shard: &Shard, user: Option<UserId>, limit: usize) -> (usize, Vec<ConnInfo>) {
    let conns = shard.conns.borrow();
    let mut chosen: Vec<&Rc<Conn>> = conns
        .map
        .values()
        .filter(|conn| user.is_none() || conn.user().map(|(u, _)| u) == user)
        .collect();
    let total = chosen.len();
    if chosen.len() > limit {
        chosen.select_nth_unstable_by_key(limit, |c| c.id);
        chosen.truncate(limit);
    }
    let mut list: Vec<ConnInfo> = chosen
        .into_iter()
        .map(|conn| {
            let session = conn.session.borrow();
            let auth = session.authentication();
            let (queued_frames, queued_bytes, lagged) = session.queue();
            ConnInfo {
                shard: shard.id,
                id: conn.id.0,
                remote: conn.quic.remote_address(),
                transport: if conn.quic.request().is_some() {
                    "webtransport"
                } else {
                    "quic"
                },
                state: match (auth, session.closing()) {
                    (_, Some(_)) => "closing",
                    (Some(_), None) => "authenticated",
                    (None, None) => "unauthenticated",
                },
                user: auth.map(|s| s.user.0),
                name: auth.map(|s| s.name.clone()),
                device: session.device().map(|d| d.0),
                connected_secs: conn.since.elapsed().as_secs(),
                rtt_ms: u64::try_from(conn.quic.rtt().as_millis()).unwrap_or(u64::MAX),
                queued_frames,
                queued_bytes,
                lagged,
            }
        })
        .collect();
    list.sort_by_key(|c| c.id);
    (total, list)
}

/// Closes this shard's connections of `user` (of its device `device` only, when given)
/// with `code`; returns how many. An operator's order: counted in `chatd_kicked_total`.
pub(crate) fn close_user(
    shard: &Shard,
    user: UserId,
    device: Option<DeviceId>,
    code: GoodbyeCode,
    reason: &str,
) -> usize {
    let conns: Vec<Rc<Conn>> = shard
        .conns
        .borrow()
        .map
        .values()
        .filter(|conn| {
            conn.session.borrow().closing().is_none()
                && conn
                    .user()
                    .is_some_and(|(u, d)| u == user && device.is_none_or(|want| want == d))
        })
        .cloned()
        .collect();
    for conn in &conns {
        conn.goodbye(code, reason);
    }
    shard.metrics().kicked.increment(conns.len() as u64);
    conns.len()
}

/// Closes a local connection with a goodbye.
pub(crate) fn close(shard: &Shard, conn: ConnId, code: GoodbyeCode, reason: &str) {
    if let Some(conn) = get(shard, conn) {
        conn.goodbye(code, reason);
    }
}

/// Starts the shutdown: refuse new connections, say goodbye to every connection.
pub(crate) fn shutdown(shard: &Shard, deadlines: crate::shard::StopDeadlines) {
    let conns: Vec<_> = {
        let mut all = shard.conns.borrow_mut();
        all.stopping.get_or_insert(deadlines);
        all.map.values().cloned().collect()
    };
    for conn in conns {
        conn.goodbye(GoodbyeCode::SHUTTING_DOWN, "the daemon is shutting down");
    }
}

/// The deadlines of the stop this shard was told of, if any.
pub(crate) fn stop_deadlines(shard: &Shard) -> Option<crate::shard::StopDeadlines> {
    shard.conns.borrow().stopping
}

/// Whether a stopping shard is done: no connections left (or the grace deadline passed) and
/// no commits of its conversations in flight (or the hard deadline passed).
pub(crate) fn finished(shard: &Shard) -> bool {
    let conns = shard.conns.borrow();
    let Some(deadlines) = conns.stopping else {
        return false;
    };
    let now = Instant::now();
    (conns.map.is_empty() || now >= deadlines.grace)
        && (crate::shard::owner::idle(shard) || now >= deadlines.hard)
}
