//! Connections: accepting QUIC connections, reading frames from the session stream, gating
//! requests by authentication state, and writing responses and events through a bounded
//! per-connection queue.
//!
//! Each connection has two tasks on its shard: the reader (decodes frames with a bounded
//! `FrameDecoder`, dispatches requests) and the writer (drains the outgoing queue into the
//! stream). Everything queued is charged in bytes to the connection's, its user's and the
//! daemon's budgets ([`crate::budget`]): a request is read only when its largest possible
//! answer fits (and fewer than `max_in_flight` are unanswered), so a client that does not
//! read stops being read; an event that does not fit (or beyond `outgoing_queue` events)
//! makes the connection lag; a catch-up is read page by page as the client takes it.
//! A malformed or oversize frame closes that connection only.
//!
//! Here: the connection's state and its byte accounting. By concern: [`io`] (admission, the
//! reader and writer tasks, datagrams, deadlines), [`session`] (hello, typing,
//! authentication's outcome), [`requests`] (one module per request kind), [`delivery`]
//! (answers, events, lag), [`catch_up`] (resume and `Sync`), [`operators`] (listing,
//! closing, the stop).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_protocol::{
    ClientFrame, DecodeError, DeviceId, ErrorBody, ErrorCode, Event, FrameDecoder, Goodbye,
    GoodbyeCode, Hello, HelloOk, RequestId, Response, Resume, ServerFrame, Session, Timestamp,
    TypingUpdate, UserId,
};

use super::accounts::{self, Authenticated};
use super::conversation::Input;
use super::owner;
use super::registry;
use super::{ConnId, ConnRef, Origin, Position, Shard, ShardMsg, encode, error_frame, response};
use crate::budget::{self, CONNECTION_COST, UserBudget};
use crate::runtime::spawn_local;
use crate::store::CatchUp;

mod catch_up;
mod delivery;
mod gate;
mod io;
mod operators;
mod requests;
mod session;

pub(crate) use catch_up::replay;
use catch_up::{catch_up, resume_parked};
use delivery::*;
pub(crate) use delivery::{deliver, lag, lag_audiences, publish, reply};
pub(crate) use io::accept_loop;
use io::*;
pub(crate) use operators::{ConnInfo, close, close_user, finished, list, shutdown, stop_deadlines};
pub(crate) use requests::presence;
pub(crate) use session::authenticated;
use session::*;

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

/// What a queued frame is, for the limits that apply to it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Answers a request: counted in `in_flight` until written.
    Reply,
    /// A pushed event: counted against `outgoing_queue`.
    Event,
    /// Hello, goodbye, connection-level errors: a handful per connection.
    Control,
}

struct Conn {
    id: ConnId,
    /// Its shard.
    shard: super::ShardId,
    /// When its handshake completed.
    since: Instant,
    quic: quinn::Connection,
    shared: Arc<super::Shared>,
    /// Counted among the unauthenticated connections until the session is set.
    unauthenticated: Unauthenticated,
    /// The budget shared by the user's connections, from the user's registry shard soon
    /// after authentication.
    user: RefCell<Option<Arc<UserBudget>>>,
    /// The user's send rate limit, shared by the user's connections; it comes with `user`.
    sends: RefCell<Option<Arc<registry::SendLimit>>>,
    state: RefCell<ConnState>,
    out: RefCell<Outgoing>,
    wake: tokio::sync::Notify,
    /// Signalled when a reply leaves the queue (a request slot frees up).
    slot: tokio::sync::Notify,
    /// Typing updates accepted in the current one-second window: (window start, count).
    typing: std::cell::Cell<(Instant, u32)>,
}

#[derive(Default)]
struct ConnState {
    hello: Option<DeviceId>,
    session: Option<Authenticated>,
    authenticating: bool,
    in_flight: u32,
    /// The resume of the hello or `Authenticate` being authenticated.
    resume: Option<Resume>,
    /// Which live log events the device gets around a catch-up ([`gate`]); what it holds is
    /// charged to the budgets.
    gate: gate::Gate,
    /// Entries the running catch-up has replayed so far.
    replayed: u32,
    /// The rest of a running catch-up whose next page did not fit the budgets yet; the
    /// writer asks for it once enough has been written.
    replay_parked: Option<Box<CatchUp>>,
    /// Bytes reserved for the answers of requests in flight, by request id (ids are the
    /// client's: a reused one holds several).
    reserved: HashMap<RequestId, Vec<usize>>,
    /// The users whose presence this connection follows.
    presence: std::collections::HashSet<UserId>,
}

#[derive(Default)]
struct Outgoing {
    /// Frames to write, with whether each is an event (counted against the queue limit).
    frames: VecDeque<(Bytes, Kind)>,
    events: usize,
    lagged: bool,
    /// Set with the goodbye: the writer finishes the stream after it and closes.
    closing: Option<GoodbyeCode>,
    /// Bytes charged to the budgets for this connection: queued and held frames, reserved
    /// answers and catch-up pages.
    bytes: usize,
    /// The connection is over and gave its bytes back: nothing is charged any more.
    released: bool,
}

impl Conn {
    /// Queues a frame, charging its bytes whatever the budgets say (it exists already).
    fn push(&self, frame: Bytes, kind: Kind) {
        if self.out.borrow().closing.is_some() {
            return;
        }
        self.charge(budget::cost(&frame));
        self.enqueue(frame, kind);
    }

    /// Queues a frame whose bytes are charged already.
    fn enqueue(&self, frame: Bytes, kind: Kind) {
        let mut out = self.out.borrow_mut();
        if out.closing.is_some() {
            return;
        }
        out.events += usize::from(kind == Kind::Event);
        out.frames.push_back((frame, kind));
        drop(out);
        self.wake.notify_one();
    }

    /// Charges `n` bytes to the connection, its user and the daemon, beyond their limits if
    /// need be.
    fn charge(&self, n: usize) {
        let mut out = self.out.borrow_mut();
        if out.released {
            return;
        }
        out.bytes += n;
        drop(out);
        if let Some(user) = self.user.borrow().as_ref() {
            user.bytes.charge(n);
        }
        self.shared.memory.charge(n);
    }

    /// Charges `n` bytes if they fit every budget (the connection's, its user's, the
    /// daemon's); else charges nothing.
    fn try_charge(&self, n: usize) -> bool {
        let limit = self.shared.config().limits.connection_memory;
        {
            let out = self.out.borrow();
            if out.released || out.bytes.saturating_add(n) > limit {
                return false;
            }
        }
        let user = self.user.borrow();
        if let Some(user) = user.as_ref()
            && !user.bytes.try_charge(n)
        {
            return false;
        }
        if !self.shared.memory.try_charge(n) {
            if let Some(user) = user.as_ref() {
                user.release(n);
            }
            return false;
        }
        self.out.borrow_mut().bytes += n;
        true
    }

    /// Gives `n` charged bytes back, and wakes a reader waiting for room.
    fn release(&self, n: usize) {
        let mut out = self.out.borrow_mut();
        if out.released || n == 0 {
            return;
        }
        debug_assert!(
            out.bytes >= n,
            "a connection released more than it was charged"
        );
        out.bytes = out.bytes.saturating_sub(n);
        drop(out);
        if let Some(user) = self.user.borrow().as_ref() {
            user.release(n);
        }
        self.shared.memory.release(n);
        self.slot.notify_one();
    }

    /// The connection is over: everything it still holds goes back to the budgets, and
    /// nothing is queued or charged after this.
    fn release_all(&self) {
        let mut out = self.out.borrow_mut();
        if out.released {
            return;
        }
        out.released = true;
        out.closing.get_or_insert(GoodbyeCode::NORMAL);
        out.frames.clear();
        let n = std::mem::take(&mut out.bytes);
        drop(out);
        if let Some(user) = self.user.borrow().as_ref() {
            user.release(n);
        }
        self.shared.memory.release(n);
        let mut state = self.state.borrow_mut();
        state.gate.clear();
        state.replay_parked = None;
        state.reserved.clear();
    }

    /// Marks the connection lagged: it gets `Lagged` once and no more live events.
    fn lag(&self) {
        let mut out = self.out.borrow_mut();
        if out.lagged {
            return;
        }
        out.lagged = true;
        drop(out);
        self.shared.metrics.shards[self.shard].lagged.increment(1);
        self.push(encode(&ServerFrame::Event(Event::Lagged)), Kind::Control);
    }

    fn session(&self) -> Option<(UserId, DeviceId)> {
        let state = self.state.borrow();
        Some((state.session.as_ref()?.user, state.hello?))
    }

    /// Queues a goodbye and closes once it is written.
    fn goodbye(&self, code: GoodbyeCode, reason: &str) {
        let frame = encode(&ServerFrame::Goodbye(Goodbye {
            code,
            reason: reason.to_owned(),
        }));
        if self.out.borrow().closing.is_none() {
            self.charge(budget::cost(&frame));
            let mut out = self.out.borrow_mut();
            out.frames.push_back((frame, Kind::Control));
            out.closing = Some(code);
        }
        self.wake.notify_one();
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
    let out = conn.out.borrow();
    if out.released {
        return;
    }
    budget.bytes.charge(out.bytes);
    drop(out);
    let old = conn.user.borrow_mut().replace(budget);
    if let Some(old) = old {
        // Not expected (a connection authenticates once); keep the counts right anyway.
        old.release(conn.out.borrow().bytes);
    }
    // A reader may be waiting for it.
    conn.slot.notify_one();
}
