//! What reaches a connection from elsewhere: answers to its requests, events (published to
//! this shard for the connections of their audience, or delivered to given connections), and
//! the news that it lags.

use super::*;

/// A response or error for request `request` of a local connection. It counts as in flight
/// until the writer has taken it; the bytes reserved for it when it was read become the
/// frame's own.
pub(crate) fn reply(shard: &Shard, conn: ConnId, request: RequestId, frame: Bytes) {
    let Some(conn) = get(shard, conn) else { return };
    conn.with(|s| s.reply(request, frame));
}

/// An event for local connections; a connection whose event queue is full lags. Ephemeral
/// events go as datagrams when the connection takes them, else on the stream while there is
/// room; they never make a connection lag.
pub(crate) fn deliver(shard: &Shard, conns: &[ConnId], frame: &Bytes, live: Live) {
    // Read once per event, not per connection: a room's fan-out reaches many.
    let limits = session_limits(&shard.shared);
    let mut delivered = 0;
    for id in conns {
        let Some(conn) = get(shard, *id) else {
            continue;
        };
        if live == Live::Ephemeral && frame.len() <= conn.quic.max_datagram_size() {
            // Unreliable by design: a full datagram buffer drops it.
            if conn.quic.send_datagram(frame.clone()).is_ok() {
                delivered += 1;
            }
            continue;
        }
        if conn.with(|s| s.event(frame, live, &limits)) {
            record_event_peak(shard, &conn);
            delivered += 1;
        }
    }
    shard.metrics().deliveries.increment(delivered);
}

/// Events for this shard's connections of their audiences, in order.
pub(crate) fn publish(shard: &Shard, publications: Vec<crate::shard::Publication>) {
    let mut conns = Vec::new();
    for publication in publications {
        conns.clear();
        let except = local(shard, publication.except);
        shard
            .conns
            .borrow()
            .of_users(&publication.audience, except, &mut conns);
        if !conns.is_empty() {
            deliver(shard, &conns, &publication.frame, publication.live);
        }
    }
}

/// Events for these audiences were lost on the way (a full inbox): this shard's connections
/// of them lag.
pub(crate) fn lag_audiences(shard: &Shard, audiences: &[(Arc<[UserId]>, Option<ConnRef>)]) {
    let mut conns = Vec::new();
    for (users, except) in audiences {
        let except = local(shard, *except);
        shard.conns.borrow().of_users(users, except, &mut conns);
    }
    conns.sort_unstable();
    conns.dedup();
    lag(shard, &conns);
}

/// The connection id of `at` if it lives on this shard.
pub(super) fn local(shard: &Shard, at: Option<ConnRef>) -> Option<ConnId> {
    at.filter(|at| at.link == crate::shard::Link::HERE && at.shard == shard.id)
        .map(|at| at.conn)
}

/// Records the shard's peak of events queued for one connection.
pub(super) fn record_event_peak(shard: &Shard, conn: &Conn) {
    let queued = conn.session.borrow().events_queued();
    shard.shared.event_queue_peak[shard.id].fetch_max(queued, std::sync::atomic::Ordering::Relaxed);
}

/// Every session of this shard lags (a peer link started or ended: `crate::peer`).
pub(crate) fn lag_all(shard: &Shard) {
    let conns: Vec<ConnId> = shard
        .conns
        .borrow()
        .by_user
        .values()
        .flatten()
        .copied()
        .collect();
    lag(shard, &conns);
}

/// Events for these local connections were lost on the way (a full inbox): they lag.
pub(crate) fn lag(shard: &Shard, conns: &[ConnId]) {
    for id in conns {
        if let Some(conn) = get(shard, *id) {
            conn.lag();
        }
    }
}
