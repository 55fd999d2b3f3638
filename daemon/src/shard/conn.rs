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

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_protocol::{
    ClientFrame, ConversationId, DecodeError, DeviceId, ErrorBody, ErrorCode, Event, FrameDecoder,
    Goodbye, GoodbyeCode, Hello, HelloOk, RequestId, Response, Resume, ServerFrame, Session,
    Timestamp, TypingUpdate, UserId,
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
mod requests;
pub(crate) use catch_up::replay;
use catch_up::{catch_up, resume_parked};
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
    /// While a catch-up runs: live log events that arrived meanwhile (charged to the
    /// budgets), delivered after the replay (without what the replay already held).
    catching_up: Option<Vec<(Position, Bytes)>>,
    /// Entries the running catch-up has replayed so far.
    replayed: u32,
    /// The rest of a running catch-up whose next page did not fit the budgets yet; the
    /// writer asks for it once enough has been written.
    replay_parked: Option<Box<CatchUp>>,
    /// Bytes reserved for the answers of requests in flight, by request id (ids are the
    /// client's: a reused one holds several).
    reserved: HashMap<RequestId, Vec<usize>>,
    /// After a catch-up, per conversation, the last entry the device has (its cursor, or
    /// the last the replay sent): a live push of an entry at or before it is late (its
    /// fan-out was still on the way when the catch-up read the log) and is dropped, so
    /// nothing arrives twice. A conversation's mark goes with its first newer entry. At most
    /// `MAX_RESUME_CURSORS` cursors plus the replay's conversations.
    caught_up_to: std::collections::HashMap<ConversationId, chat_protocol::Seq>,
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
        state.catching_up = None;
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

/// Accepts connections until the endpoint closes.
///
/// A new connection is refused while the shard is full, the daemon's memory budget cannot
/// take another connection, the daemon has `max_unauthenticated` connections that have not
/// authenticated, or its address has `max_connections_per_address` on this shard. Beyond
/// `retry_above` unauthenticated connections, it must first prove its address (QUIC Retry),
/// so a flood from spoofed addresses costs a stateless packet each, no handshake.
pub(crate) async fn accept_loop(shard: Rc<Shard>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let config = shard.shared.config();
        let limits = &config.limits;
        let ip = incoming.remote_address().ip();
        let unauthenticated = shard
            .shared
            .unauthenticated
            .load(std::sync::atomic::Ordering::Acquire);
        let conns = shard.conns.borrow();
        if conns.stopping.is_some()
            || conns.map.len() >= limits.max_connections_per_shard
            || !shard.shared.memory.fits(CONNECTION_COST)
            || unauthenticated >= limits.max_unauthenticated
            || conns.per_address.get(&ip).copied().unwrap_or(0)
                >= limits.max_connections_per_address
        {
            drop(conns);
            shard
                .shared
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            incoming.refuse();
            continue;
        }
        drop(conns);
        if unauthenticated >= limits.retry_above && incoming.may_retry() {
            shard
                .shared
                .retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Fails only for an incoming that was validated already (may_retry said no).
            let _ = incoming.retry();
            continue;
        }
        *shard.conns.borrow_mut().per_address.entry(ip).or_insert(0) += 1;
        let unauthenticated = Unauthenticated::new(&shard.shared);
        spawn_local(serve(Rc::clone(&shard), incoming, ip, unauthenticated));
    }
}

async fn serve(
    shard: Rc<Shard>,
    incoming: quinn::Incoming,
    ip: std::net::IpAddr,
    unauthenticated: Unauthenticated,
) {
    let quic = match incoming.await {
        Ok(quic) => quic,
        Err(e) => {
            shard.conns.borrow_mut().address_left(ip);
            shard.metrics().handshakes_failed.increment(1);
            return tracing::debug!(error = %e, "handshake failed");
        }
    };
    shard.metrics().handshakes.increment(1);
    let id = {
        let mut conns = shard.conns.borrow_mut();
        let id = ConnId(conns.next);
        conns.next += 1;
        id
    };
    let conn = Rc::new(Conn {
        id,
        shard: shard.id,
        since: Instant::now(),
        quic: quic.clone(),
        shared: Arc::clone(&shard.shared),
        unauthenticated,
        user: RefCell::new(None),
        sends: RefCell::new(None),
        state: RefCell::default(),
        out: RefCell::default(),
        wake: tokio::sync::Notify::new(),
        slot: tokio::sync::Notify::new(),
        typing: std::cell::Cell::new((Instant::now(), 0)),
    });
    shard.conns.borrow_mut().map.insert(id, Rc::clone(&conn));
    shard.shared.connections[shard.id].fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    shard.shared.memory.charge(CONNECTION_COST);
    let auth_timeout = Duration::from_secs(shard.shared.config().auth.auth_timeout_secs);
    match tokio::time::timeout(auth_timeout, quic.accept_bi()).await {
        Ok(Ok((send, recv))) => {
            spawn_local(write_loop(Rc::clone(&shard), Rc::clone(&conn), send));
            spawn_local(datagram_loop(Rc::clone(&shard), Rc::clone(&conn)));
            read_loop(&shard, &conn, recv, Instant::now() + auth_timeout).await;
        }
        Ok(Err(_)) => conn.release_all(),
        Err(_) => {
            conn.release_all();
            quic.close(close_code(GoodbyeCode::AUTH_TIMEOUT), b"no session stream");
        }
    }
    {
        let mut conns = shard.conns.borrow_mut();
        conns.map.remove(&id);
        conns.address_left(ip);
    }
    conn.unauthenticated.done();
    shard.shared.connections[shard.id].fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    shard.shared.memory.release(CONNECTION_COST);
    let session = conn.session();
    if let Some((user, device)) = session {
        shard
            .shared
            .sessions
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if shard.conns.borrow_mut().session_ended(user, id) {
            shard.shared.placement.left(user, shard.id);
        }
        let at = ConnRef {
            shard: shard.id,
            conn: id,
        };
        shard.send(
            shard.shared.registry_of(user),
            ShardMsg::Registry(registry::Op::Offline { user, device, at }),
        );
        let followed = std::mem::take(&mut conn.state.borrow_mut().presence);
        requests::unwatch(&shard, at, followed.into_iter().collect());
    }
    // The session is over: if nobody said goodbye yet (the client ended or reset its stream),
    // the writer says it and closes the connection, so no connection outlives its session.
    conn.goodbye(GoodbyeCode::NORMAL, "session stream closed");
}

/// When the session ends unless the client does something: the authentication deadline
/// while unauthenticated, the token's expiry once authenticated.
fn session_deadline(conn: &Conn, auth_deadline: Instant) -> Instant {
    match conn.state.borrow().session.as_ref() {
        None => auth_deadline,
        Some(session) => token_expiry(session.expires_at),
    }
}

/// At the session's deadline: an unauthenticated connection times out (`AUTH_TIMEOUT`), an
/// authenticated one's token has expired (`TOKEN_EXPIRED`); either way the goodbye is
/// queued and `true` returned. `false` when the deadline moved: the hello authenticated
/// the connection after the wait began (its lookup came back), and an idle client that sends
/// nothing more must not be taken for one that never authenticated.
fn deadline_reached(conn: &Conn, auth_deadline: Instant) -> bool {
    let state = conn.state.borrow();
    match state.session.as_ref() {
        None if Instant::now() >= auth_deadline => {
            drop(state);
            conn.push(
                encode(&error_frame(None, ErrorCode::AUTH_TIMEOUT, "")),
                Kind::Control,
            );
            conn.goodbye(
                GoodbyeCode::AUTH_TIMEOUT,
                "authentication did not complete in time",
            );
            true
        }
        Some(session) if crate::unix_now() >= session.expires_at => {
            drop(state);
            conn.goodbye(GoodbyeCode::TOKEN_EXPIRED, "the session's token expired");
            true
        }
        _ => false,
    }
}

/// When a session authenticated by a token expiring at `expires_at` (seconds since the
/// epoch) must end, on this process's monotonic clock.
fn token_expiry(expires_at: u64) -> Instant {
    let left = expires_at.saturating_sub(crate::unix_now());
    let now = Instant::now();
    now.checked_add(Duration::from_secs(left))
        .unwrap_or(now + Duration::from_secs(86_400 * 365))
}

fn close_code(code: GoodbyeCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(u32::from(code.0))
}

async fn read_loop(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    mut recv: quinn::RecvStream,
    auth_deadline: Instant,
) {
    let mut decoder = FrameDecoder::<ClientFrame>::new();
    loop {
        let chunk = tokio::select! {
            chunk = recv.read_chunk(decoder.space(), true) => chunk,
            () = tokio::time::sleep_until(session_deadline(conn, auth_deadline).into()) => {
                if deadline_reached(conn, auth_deadline) {
                    return;
                }
                continue;
            }
        };
        let bytes = match chunk {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) | Err(_) => return,
        };
        if let Err(e) = decoder.push(&bytes) {
            return violation(conn, &e);
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if let ClientFrame::Request { id, request } = &frame {
                        let reserve = budget::reply_reservation(request);
                        match admit(conn, reserve, auth_deadline).await {
                            Admission::Closed => return,
                            Admission::Admitted => {
                                let mut state = conn.state.borrow_mut();
                                state.reserved.entry(*id).or_default().push(reserve);
                            }
                            Admission::Overloaded => {
                                overloaded(shard, conn, *id);
                                continue;
                            }
                        }
                    }
                    if !frame_arrived(shard, conn, frame) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => return violation(conn, &e),
            }
        }
        if conn.out.borrow().closing.is_some() {
            return;
        }
    }
}

/// Whether the next request may be read.
enum Admission {
    /// Its answer's reservation is charged to every budget.
    Admitted,
    /// The daemon's budget is full: the request is refused with `OVERLOADED`.
    Overloaded,
    /// The connection closed while waiting.
    Closed,
}

/// Waits until the connection has fewer than `max_in_flight` unanswered requests and
/// `reserve` more bytes fit its budget and its user's, then charges them: a client that does
/// not read its answers (or whose other devices do not) stops being read, and QUIC flow
/// control slows it, so what it pins stays within its budgets. The daemon's budget is not
/// waited for: when it is full the request is refused.
async fn admit(conn: &Conn, reserve: usize, auth_deadline: Instant) -> Admission {
    loop {
        // Read on every pass (a reload may change the budget) and not held across awaits.
        let (connection_memory, max_in_flight) = {
            let config = conn.shared.config();
            (config.limits.connection_memory, config.limits.max_in_flight)
        };
        // A reservation never exceeds one page (`budget::reply_reservation`), far below any
        // budget; clamped anyway, so a request can always be read once the connection is
        // empty.
        let reserve = reserve.min(connection_memory);
        if conn.out.borrow().released {
            // The writer ended the connection: nothing may be charged any more.
            return Admission::Closed;
        }
        // The session's deadline holds while the reader waits here too: a client that stops
        // reading must still time out unauthenticated, or end when its token expires.
        let deadline = session_deadline(conn, auth_deadline);
        let user = conn.user.borrow().clone();
        if user.is_none() && conn.state.borrow().session.is_some() {
            // Authenticated: the user's shared budget is on its way from their registry
            // shard; nothing is read until it is here.
            tokio::select! {
                () = conn.slot.notified() => continue,
                () = tokio::time::sleep_until(deadline.into()) => {
                    if deadline_reached(conn, auth_deadline) {
                        return Admission::Closed;
                    }
                    continue;
                }
                _ = conn.quic.closed() => return Admission::Closed,
            }
        }
        let freed = user.as_ref().map(|u| u.freed.notified());
        let mut freed = std::pin::pin!(freed);
        if let Some(freed) = freed.as_mut().as_pin_mut() {
            // Registered before the check, so a release in between is not missed.
            freed.enable();
        }
        let (in_flight, bytes) = (conn.state.borrow().in_flight, conn.out.borrow().bytes);
        let connection_fits =
            in_flight < max_in_flight && bytes.saturating_add(reserve) <= connection_memory;
        let user_fits = match user.as_ref() {
            None => true,
            Some(user) => connection_fits && user.bytes.try_charge(reserve),
        };
        if connection_fits && user_fits {
            if !conn.shared.memory.try_charge(reserve) {
                if let Some(user) = user.as_ref() {
                    user.release(reserve);
                }
                return Admission::Overloaded;
            }
            conn.out.borrow_mut().bytes += reserve;
            return Admission::Admitted;
        }
        // When the connection's own budget is what is missing, its writer frees it; when it
        // is the user's, any of the user's connections may.
        let wait_for_user = connection_fits;
        tokio::select! {
            () = conn.slot.notified() => {}
            () = async {
                match freed.as_mut().as_pin_mut() {
                    Some(freed) => freed.await,
                    None => std::future::pending().await,
                }
            }, if wait_for_user => {}
            () = tokio::time::sleep_until(deadline.into()) => {
                if deadline_reached(conn, auth_deadline) {
                    return Admission::Closed;
                }
            }
            _ = conn.quic.closed() => return Admission::Closed,
        }
    }
}

/// Refuses a request because the daemon's memory budget is full. The answer is small and
/// charged as it is; the client is told when to try again.
fn overloaded(shard: &Shard, conn: &Conn, id: RequestId) {
    conn.state.borrow_mut().in_flight += 1;
    let frame = encode(&ServerFrame::Error {
        id: Some(id),
        error: ErrorBody {
            code: ErrorCode::OVERLOADED,
            reason: "the daemon's memory budget is full".to_owned(),
            retry_after_ms: Some(OVERLOADED_RETRY_MS),
        },
    });
    reply(shard, conn.id, id, frame);
}

/// What a client refused for memory is told to wait before trying again.
const OVERLOADED_RETRY_MS: u32 = 1_000;

/// A frame that cannot be decoded: tell the client why and close this connection only. An
/// unknown version byte on the first frame is a version mismatch (section 7); on a later
/// frame, after version 1 was agreed, it is an invalid frame like any other.
fn violation(conn: &Conn, e: &DecodeError) {
    let agreed = conn.state.borrow().hello.is_some();
    let (code, goodbye) = match e {
        DecodeError::TooLarge { .. } => {
            (ErrorCode::FRAME_TOO_LARGE, GoodbyeCode::PROTOCOL_VIOLATION)
        }
        DecodeError::UnsupportedVersion(_) if !agreed => (
            ErrorCode::UNSUPPORTED_VERSION,
            GoodbyeCode::UNSUPPORTED_VERSION,
        ),
        _ => (ErrorCode::MALFORMED_FRAME, GoodbyeCode::PROTOCOL_VIOLATION),
    };
    let mut reason = e.to_string();
    reason.truncate(chat_protocol::limits::MAX_REASON);
    conn.push(encode(&error_frame(None, code, &reason)), Kind::Control);
    conn.goodbye(goodbye, "protocol violation");
}

fn unexpected(conn: &Conn, what: &str) -> bool {
    conn.push(
        encode(&error_frame(None, ErrorCode::UNEXPECTED_FRAME, what)),
        Kind::Control,
    );
    conn.goodbye(GoodbyeCode::PROTOCOL_VIOLATION, "protocol violation");
    false
}

/// Handles one decoded frame; `false` when the connection is closing.
fn frame_arrived(shard: &Rc<Shard>, conn: &Rc<Conn>, frame: ClientFrame) -> bool {
    let has_hello = conn.state.borrow().hello.is_some();
    match frame {
        ClientFrame::Hello(hello) if !has_hello => hello_arrived(shard, conn, hello),
        ClientFrame::Hello(_) => unexpected(conn, "a second hello"),
        ClientFrame::Request { .. } | ClientFrame::Typing(_) if !has_hello => {
            unexpected(conn, "hello must come first")
        }
        ClientFrame::Request { id, request } => {
            conn.state.borrow_mut().in_flight += 1;
            requests::arrived(shard, conn, id, request);
            true
        }
        ClientFrame::Typing(update) => {
            typing_arrived(shard, conn, update);
            true
        }
    }
}

/// Most typing updates a connection may send per second; more are dropped.
const TYPING_PER_SECOND: u32 = 10;

/// A typing update (from a datagram or the stream): passed to the conversation's owner,
/// which checks membership and fans it out. Never answered, never stored.
fn typing_arrived(shard: &Rc<Shard>, conn: &Rc<Conn>, update: TypingUpdate) {
    let Some((user, _)) = conn.session() else {
        return;
    };
    let (start, count) = conn.typing.get();
    let now = Instant::now();
    let (start, count) = if now.duration_since(start) >= Duration::from_secs(1) {
        (now, 0)
    } else {
        (start, count)
    };
    if count >= TYPING_PER_SECOND {
        return;
    }
    conn.typing.set((start, count + 1));
    let origin = Origin {
        at: ConnRef {
            shard: shard.id,
            conn: conn.id,
        },
        request: RequestId(0),
        user,
    };
    let conversation = update.conversation;
    let op = Input::Typing {
        origin,
        active: update.active,
    };
    shard.send(
        shard.shared.owner_of(conversation),
        ShardMsg::Conversation { conversation, op },
    );
}

/// Reads the ephemeral lane: datagrams carry typing updates only; anything else, or a
/// datagram that does not decode, is dropped (the lane is unreliable by design).
async fn datagram_loop(shard: Rc<Shard>, conn: Rc<Conn>) {
    loop {
        let datagram = tokio::select! {
            d = conn.quic.read_datagram() => d,
            _ = conn.quic.closed() => return,
        };
        let Ok(bytes) = datagram else { return };
        if let Ok(ClientFrame::Typing(update)) =
            chat_protocol::decode_datagram::<ClientFrame>(&bytes)
        {
            typing_arrived(&shard, &conn, update);
        }
    }
}

fn hello_arrived(shard: &Rc<Shard>, conn: &Rc<Conn>, hello: Hello) -> bool {
    if hello.client.len() > chat_protocol::limits::MAX_CLIENT_NAME {
        conn.push(
            encode(&error_frame(
                None,
                ErrorCode::INVALID_REQUEST,
                "Hello.client is longer than 64 bytes",
            )),
            Kind::Control,
        );
        conn.goodbye(GoodbyeCode::PROTOCOL_VIOLATION, "invalid hello");
        return false;
    }
    let ours = crate::PROTOCOL_VERSIONS;
    if hello.versions.min > ours.max
        || hello.versions.max < ours.min
        || hello.versions.min > hello.versions.max
    {
        conn.push(
            encode(&error_frame(
                None,
                ErrorCode::UNSUPPORTED_VERSION,
                "this daemon speaks version 1",
            )),
            Kind::Control,
        );
        conn.goodbye(
            GoodbyeCode::UNSUPPORTED_VERSION,
            "no protocol version in common",
        );
        return false;
    }
    conn.state.borrow_mut().hello = Some(hello.device);
    match hello.auth {
        None => conn.push(hello_ok(shard, None), Kind::Control),
        Some(auth) => {
            let mut state = conn.state.borrow_mut();
            state.authenticating = true;
            state.resume = auth.resume;
            drop(state);
            accounts::authenticate(shard, conn.id, None, &auth.token);
        }
    }
    true
}

fn hello_ok(shard: &Shard, session: Option<Session>) -> Bytes {
    encode(&ServerFrame::HelloOk(HelloOk {
        version: chat_protocol::PROTOCOL_VERSION,
        server: crate::SERVER_NAME.to_owned(),
        session,
        limits: shard.shared.limits,
        server_time: super::now_ms(),
    }))
}

/// The result of authenticating a connection of this shard.
pub(crate) fn authenticated(
    shard: &Rc<Shard>,
    conn_id: ConnId,
    request: Option<RequestId>,
    result: Result<Authenticated, ErrorBody>,
) {
    let Some(conn) = get(shard, conn_id) else {
        return;
    };
    let Some(device) = conn.state.borrow().hello else {
        return;
    };
    conn.state.borrow_mut().authenticating = false;
    // Checked here, on the connection's shard, as the session is set (whichever path read
    // the account): an operator's restriction is in place before the shards are told to
    // close its sessions, so a session is either refused here or closed by that order.
    let result =
        result.and_then(
            |auth| match shard.shared.restriction(auth.user).refuses(auth.issued_at) {
                Some(code) => Err(super::error_body(code, "")),
                None => Ok(auth),
            },
        );
    match result {
        Ok(auth) => {
            let session = Session {
                user: auth.user,
                name: auth.name.clone(),
                device,
                expires_at: Timestamp(auth.expires_at.saturating_mul(1000)),
            };
            let at = ConnRef {
                shard: shard.id,
                conn: conn_id,
            };
            shard.send(
                shard.shared.registry_of(auth.user),
                ShardMsg::Registry(registry::Op::Online {
                    user: auth.user,
                    device,
                    at,
                }),
            );
            let user = auth.user;
            conn.state.borrow_mut().session = Some(auth);
            // Placed before the catch-up below reads the store (see `placement`).
            if shard.conns.borrow_mut().session_started(user, conn_id) {
                shard.shared.placement.arrived(user, shard.id);
            }
            conn.unauthenticated.done();
            shard.metrics().sessions.increment(1);
            shard
                .shared
                .sessions
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            match request {
                None => conn.push(hello_ok(shard, Some(session)), Kind::Control),
                Some(id) => reply(shard, conn_id, id, response(id, Response::Session(session))),
            }
            let resume = conn.state.borrow_mut().resume.take();
            if let Some(resume) = resume {
                catch_up(shard, &conn, resume, request);
            }
        }
        Err(body) => match request {
            None => {
                conn.push(hello_ok(shard, None), Kind::Control);
                conn.push(
                    encode(&ServerFrame::Error {
                        id: None,
                        error: body,
                    }),
                    Kind::Control,
                );
            }
            Some(id) => reply(
                shard,
                conn_id,
                id,
                encode(&ServerFrame::Error {
                    id: Some(id),
                    error: body,
                }),
            ),
        },
    }
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

/// A response or error for request `request` of a local connection. It counts as in flight
/// until the writer has taken it; the bytes reserved for it when it was read become the
/// frame's own.
pub(crate) fn reply(shard: &Shard, conn: ConnId, request: RequestId, frame: Bytes) {
    let Some(conn) = get(shard, conn) else { return };
    let reserved = {
        let mut state = conn.state.borrow_mut();
        match state.reserved.get_mut(&request) {
            Some(list) => {
                let reserved = list.pop().unwrap_or(0);
                if list.is_empty() {
                    state.reserved.remove(&request);
                }
                reserved
            }
            None => 0,
        }
    };
    let len = budget::cost(&frame);
    if len > reserved {
        // Reservations are upper bounds, so this is an answer without one (`OVERLOADED`), or
        // a client that reused a request id and got the answers in another order than the
        // reservations: the bytes exist, so they are charged.
        conn.charge(len - reserved);
    } else {
        conn.release(reserved - len);
    }
    conn.enqueue(frame, Kind::Reply);
}

/// An event for local connections; a connection whose event queue is full lags. Ephemeral
/// events go as datagrams when the connection takes them, else on the stream while there is
/// room; they never make a connection lag.
pub(crate) fn deliver(
    shard: &Shard,
    conns: &[ConnId],
    frame: &Bytes,
    ephemeral: bool,
    entry: Option<Position>,
) {
    let limit = shard.shared.config().limits.outgoing_queue;
    let mut delivered = 0;
    for id in conns {
        let Some(conn) = get(shard, *id) else {
            continue;
        };
        if ephemeral
            && conn
                .quic
                .max_datagram_size()
                .is_some_and(|max| frame.len() <= max)
        {
            // Unreliable by design: a full datagram buffer drops it.
            if conn.quic.send_datagram(frame.clone()).is_ok() {
                delivered += 1;
            }
            continue;
        }
        if let Some(position) = entry {
            let lagged = conn.out.borrow().lagged;
            let mut state = conn.state.borrow_mut();
            if let Some(held) = state.catching_up.as_mut() {
                if lagged {
                    // It lagged during this catch-up: nothing more is held for it.
                    continue;
                }
                if held.len() < limit {
                    drop(state);
                    if conn.try_charge(budget::cost(frame)) {
                        if let Some(held) = conn.state.borrow_mut().catching_up.as_mut() {
                            held.push((position, frame.clone()));
                            delivered += 1;
                        }
                        continue;
                    }
                    state = conn.state.borrow_mut();
                }
                // Too much arrived during the catch-up: this connection lags.
                let dropped = state.catching_up.replace(Vec::new()).unwrap_or_default();
                drop(state);
                conn.release(dropped.iter().map(|(_, frame)| budget::cost(frame)).sum());
                conn.lag();
                continue;
            }
            let (c, seq) = position;
            if let Some(mark) = state.caught_up_to.get(&c).copied() {
                if seq <= mark {
                    // Already sent by the catch-up (or had before it): a late fan-out.
                    continue;
                }
                state.caught_up_to.remove(&c);
            }
        }
        let (lagged, full) = {
            let out = conn.out.borrow();
            (out.lagged, out.events >= limit)
        };
        if lagged {
            continue;
        }
        if !full && conn.try_charge(budget::cost(frame)) {
            conn.enqueue(frame.clone(), Kind::Event);
            record_event_peak(shard, &conn);
            delivered += 1;
        } else if !ephemeral {
            // Beyond `outgoing_queue` events, or beyond a byte budget.
            conn.lag();
        }
    }
    shard.metrics().deliveries.increment(delivered);
}

/// Events for this shard's connections of their audiences, in order.
pub(crate) fn publish(shard: &Shard, publications: Vec<super::Publication>) {
    let mut conns = Vec::new();
    for publication in publications {
        conns.clear();
        let except = local(shard, publication.except);
        shard
            .conns
            .borrow()
            .of_users(&publication.audience, except, &mut conns);
        if !conns.is_empty() {
            deliver(
                shard,
                &conns,
                &publication.frame,
                publication.ephemeral,
                publication.entry,
            );
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
fn local(shard: &Shard, at: Option<ConnRef>) -> Option<ConnId> {
    at.filter(|at| at.shard == shard.id).map(|at| at.conn)
}

/// Records the shard's peak of events queued for one connection.
fn record_event_peak(shard: &Shard, conn: &Conn) {
    let queued = conn.out.borrow().events;
    shard.shared.event_queue_peak[shard.id].fetch_max(queued, std::sync::atomic::Ordering::Relaxed);
}

/// Events for these local connections were lost on the way (a full inbox): they lag.
pub(crate) fn lag(shard: &Shard, conns: &[ConnId]) {
    for id in conns {
        if let Some(conn) = get(shard, *id) {
            conn.lag();
        }
    }
}

/// One connection, as `chatd admin connections` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct ConnInfo {
    pub(crate) shard: usize,
    pub(crate) id: u64,
    pub(crate) remote: std::net::SocketAddr,
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
        .filter(|conn| {
            user.is_none() || conn.state.borrow().session.as_ref().map(|s| s.user) == user
        })
        .collect();
    let total = chosen.len();
    if chosen.len() > limit {
        chosen.select_nth_unstable_by_key(limit, |c| c.id);
        chosen.truncate(limit);
    }
    let mut list: Vec<ConnInfo> = chosen
        .into_iter()
        .map(|conn| {
            let state = conn.state.borrow();
            let session = state.session.as_ref();
            let out = conn.out.borrow();
            ConnInfo {
                shard: shard.id,
                id: conn.id.0,
                remote: conn.quic.remote_address(),
                state: match (session, out.closing) {
                    (_, Some(_)) => "closing",
                    (Some(_), None) => "authenticated",
                    (None, None) => "unauthenticated",
                },
                user: session.map(|s| s.user.0),
                name: session.map(|s| s.name.clone()),
                device: state.hello.map(|d| d.0),
                connected_secs: conn.since.elapsed().as_secs(),
                rtt_ms: u64::try_from(conn.quic.rtt().as_millis()).unwrap_or(u64::MAX),
                queued_frames: out.frames.len(),
                queued_bytes: out.bytes,
                lagged: out.lagged,
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
            conn.out.borrow().closing.is_none()
                && conn
                    .session()
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
pub(crate) fn shutdown(shard: &Shard, deadlines: super::StopDeadlines) {
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
pub(crate) fn stop_deadlines(shard: &Shard) -> Option<super::StopDeadlines> {
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
        && (owner::idle(shard) || now >= deadlines.hard)
}

/// Writes queued frames in batches. Ends after the goodbye (finishing the stream and closing
/// the connection with its code), or when the stream or connection fails (then it closes the
/// connection, so nothing lingers).
async fn write_loop(shard: Rc<Shard>, conn: Rc<Conn>, mut send: quinn::SendStream) {
    let mut batch: Vec<Bytes> = Vec::with_capacity(64);
    let closing = loop {
        let (closing, replies, bytes) = {
            let mut out = conn.out.borrow_mut();
            let (mut replies, mut bytes) = (0u32, 0usize);
            while batch.len() < 64 {
                let Some((frame, kind)) = out.frames.pop_front() else {
                    break;
                };
                match kind {
                    Kind::Event => out.events -= 1,
                    Kind::Reply => replies += 1,
                    Kind::Control => {}
                }
                bytes += budget::cost(&frame);
                batch.push(frame);
            }
            (out.closing, replies, bytes)
        };
        if replies > 0 {
            let mut state = conn.state.borrow_mut();
            state.in_flight = state.in_flight.saturating_sub(replies);
            drop(state);
            conn.slot.notify_one();
        }
        if batch.is_empty() {
            if let Some(code) = closing {
                break Some(code);
            }
            // A parked catch-up page waits for room in budgets that other connections (of
            // the user, of the daemon) may free, or for the read pool: look again now and
            // then (parking wakes this loop, so the timer starts).
            let parked = conn.state.borrow().replay_parked.is_some();
            tokio::select! {
                () = conn.wake.notified() => continue,
                () = tokio::time::sleep(PARKED_RETRY), if parked => {
                    resume_parked(&shard, &conn);
                    continue;
                }
                _ = conn.quic.closed() => break None,
            }
        }
        // Once the connection is closing, what is left gets `GOODBYE_GRACE` to be written: a
        // peer that grants no flow-control credit cannot hold the connection open.
        let written = tokio::select! {
            result = send.write_all_chunks(&mut batch) => result.is_ok(),
            () = closing_grace_over(&conn) => {
                break conn.out.borrow().closing;
            }
        };
        if !written {
            break None;
        }
        batch.clear();
        // Written: quinn holds the bytes now, within its flow-control windows.
        conn.release(bytes);
        resume_parked(&shard, &conn);
    };
    let code = match closing {
        Some(code) => {
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
            code
        }
        None => GoodbyeCode::NORMAL,
    };
    conn.quic.close(close_code(code), b"goodbye");
    conn.release_all();
}

/// How long a closing connection's last frames (its goodbye) may take to be written.
const GOODBYE_GRACE: Duration = Duration::from_secs(2);

/// Completes `GOODBYE_GRACE` after the connection started closing.
async fn closing_grace_over(conn: &Conn) {
    loop {
        if conn.out.borrow().closing.is_some() {
            return tokio::time::sleep(GOODBYE_GRACE).await;
        }
        conn.wake.notified().await;
    }
}

/// How often a parked catch-up page looks for room when nothing else wakes its writer.
const PARKED_RETRY: Duration = Duration::from_millis(50);
