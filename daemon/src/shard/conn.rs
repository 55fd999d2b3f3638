//! Connections: accepting QUIC connections, reading frames from the session stream and
//! writing responses and events to it, carrying out what each connection's [`Session`] (the
//! rules, without I/O) decides.
//!
//! Each connection has two tasks on its shard: the reader (decodes frames with a bounded
//! `FrameDecoder`, asks the session to admit each request, dispatches it) and the writer
//! (drains the session's queue into the stream). What a connection holds is charged in bytes
//! to its, its user's and the daemon's budgets ([`crate::budget`]): a request is read only
//! when its largest possible answer fits (and fewer than `max_in_flight` are unanswered), so a
//! client that does not read stops being read; an event that does not fit (or beyond
//! `outgoing_queue` events) makes the connection lag; a catch-up is read page by page as the
//! client takes it. A malformed or oversize frame closes that connection only.
//!
//! Here: the shard's table of connections and the [`Conn`] around a session. By concern:
//! [`io`] (admission, the reader and writer tasks, datagrams, deadlines), [`auth`] (hello,
//! typing, authentication's outcome), [`requests`] (one module per request kind),
//! [`delivery`] (answers, events, lag), [`catch_up`] (resume and `Sync`), [`operators`]
//! (listing, closing, the stop).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_protocol::{ClientFrame, DeviceId, FrameDecoder, GoodbyeCode, RequestId, UserId};

use super::registry;
use super::session::{
    Admission, IDLE_FRAMES, Limits as SessionLimits, Live, Session, Step, Transmit,
};
use super::{ConnId, ConnRef, Origin, Shard, ShardMsg};
use crate::budget::{self, CONNECTION_COST, UserBudget};
use crate::runtime::spawn_local;

mod auth;
mod catch_up;
mod delivery;
mod io;
mod operators;
mod requests;

pub(crate) use auth::authenticated;
use auth::*;
pub(crate) use catch_up::replay;
use catch_up::{catch_up, resume_parked};
use delivery::*;
pub(crate) use delivery::{deliver, lag, lag_all, lag_audiences, publish, reply};
pub(crate) use io::accept_loop;

pub(crate) use operators::{ConnInfo, close, close_user, finished, list, shutdown, stop_deadlines};
pub(crate) use requests::presence;

/// The connections of one shard.
pub(crate) struct Connections {
    next: u64,
    map: HashMap<ConnId, Rc<Conn>>,
    /// The authenticated connections of each user on this shard (where events for the user
    /// go); a user is in [`super::placement`] for this shard while it has an entry here.
    by_user: HashMap<UserId, Vec<ConnId>>,
    /// Connections (from their first packet on) per source address.
    per_address: HashMap<std::net::IpAddr, usize>,
    /// Set when the shard was told to stop.
    stopping: Option<super::StopDeadlines>,
}

impl Connections {
    pub(crate) fn new() -> Connections {
        Connections {
            next: 1,
            map: HashMap::new(),
            by_user: HashMap::new(),
            per_address: HashMap::new(),
            stopping: None,
        }
    }

    /// A session of `user` started on connection `conn`; returns whether it is the user's
    /// first on this shard.
    fn session_started(&mut self, user: UserId, conn: ConnId) -> bool {
        let conns = self.by_user.entry(user).or_default();
        conns.push(conn);
        conns.len() == 1
    }

    /// The session of `user` on `conn` ended; returns whether it was the user's last here.
    fn session_ended(&mut self, user: UserId, conn: ConnId) -> bool {
        let Some(conns) = self.by_user.get_mut(&user) else {
            return false;
        };
        conns.retain(|c| *c != conn);
        if conns.is_empty() {
            self.by_user.remove(&user);
            return true;
        }
        false
    }

    /// This shard's connections of `users`, except `except`, into `out`.
    fn of_users(&self, users: &[UserId], except: Option<ConnId>, out: &mut Vec<ConnId>) {
        for user in users {
            if let Some(conns) = self.by_user.get(user) {
                out.extend(conns.iter().filter(|c| Some(**c) != except));
            }
        }
    }

    fn address_left(&mut self, ip: std::net::IpAddr) {
        if let Some(n) = self.per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&ip);
            }
        }
    }
}

/// Counts a connection in the daemon's unauthenticated connections from its first packet
/// until it authenticates ([`Unauthenticated::done`]) or ends.
struct Unauthenticated {
    shared: Arc<super::Shared>,
    counted: std::cell::Cell<bool>,
}

impl Unauthenticated {
    fn new(shared: &Arc<super::Shared>) -> Unauthenticated {
        shared
            .unauthenticated
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Unauthenticated {
            shared: Arc::clone(shared),
            counted: std::cell::Cell::new(true),
        }
    }

    fn done(&self) {
        if self.counted.replace(false) {
            self.shared
                .unauthenticated
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.done();
    }
}

struct Conn {
    id: ConnId,
    /// Its shard.
    shard: super::ShardId,
    /// When its handshake completed.
    since: Instant,
    /// A native connection (`Session::raw`) or a browser's WebTransport session: the same
    /// streams, datagrams and close.
    quic: web_transport_quinn::Session,
    shared: Arc<super::Shared>,
    /// Counted among the unauthenticated connections until the session is set.
    unauthenticated: Unauthenticated,
    /// The user's send rate limit, shared by the user's connections; it comes with the
    /// user's budget soon after authentication.
    sends: RefCell<Option<Arc<registry::SendLimit>>>,
    /// The rules and the queue ([`Session`]); change it through [`Conn::with`].
    session: RefCell<Session>,
    /// Wakes the writer.
    wake: tokio::sync::Notify,
    /// Wakes a reader waiting for room or a request slot.
    slot: tokio::sync::Notify,
}

impl Conn {
    /// Runs `f` on the session, then does what it signalled: wakes the writer, wakes a reader
    /// waiting for room, counts a lag.
    fn with<R>(&self, f: impl FnOnce(&mut Session) -> R) -> R {
        let mut session = self.session.borrow_mut();
        let result = f(&mut session);
        let signals = session.signals();
        drop(session);
        if signals.writer {
            self.wake.notify_one();
        }
        if signals.room {
            self.slot.notify_one();
        }
        if signals.lagged {
            self.shared.metrics.shards[self.shard].lagged.increment(1);
        }
        result
    }

    /// The session's limits as configured now (a reload applies at once).
    fn limits(&self) -> SessionLimits {
        session_limits(&self.shared)
    }

    fn user(&self) -> Option<(UserId, DeviceId)> {
        self.session.borrow().user()
    }

    /// Queues a goodbye and closes once it is written.
    fn goodbye(&self, code: GoodbyeCode, reason: &str) {
        self.with(|s| s.goodbye(code, reason));
    }

    /// Marks the connection lagged.
    fn lag(&self) {
        self.with(Session::lag);
    }
}

/// Every session's limits as configured now.
fn session_limits(shared: &super::Shared) -> SessionLimits {
    let config = shared.config();
    SessionLimits {
        connection_memory: config.limits.connection_memory,
        max_in_flight: config.limits.max_in_flight,
        outgoing_queue: config.limits.outgoing_queue,
    }
}

fn get(shard: &Shard, conn: ConnId) -> Option<Rc<Conn>> {
    shard.conns.borrow().map.get(&conn).cloned()
}

/// The budget a local connection shares with its user's other connections arrived: it is
/// charged with what the connection holds already.
pub(crate) fn user_budget(
    shard: &Shard,
    conn: ConnId,
    budget: Arc<UserBudget>,
    sends: Arc<registry::SendLimit>,
) {
    let Some(conn) = get(shard, conn) else { return };
    conn.sends.borrow_mut().replace(sends);
    conn.with(|s| s.user_budget(budget));
}
