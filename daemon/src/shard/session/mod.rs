//! A connection's session as a state machine without I/O: what a connection may do and what
//! it holds, given the frames that arrive, the answers and events that reach it, and the
//! current time (always passed in; nothing here reads a clock, a socket or a shard).
//!
//! [`Session`] keeps
//! - the authentication state: hello first, then anonymous, authenticating or authenticated,
//!   and the deadlines that follow from it (the authentication timeout, the token's expiry);
//! - the requests in flight, each with the bytes reserved for its answer when it was read;
//! - the outgoing queue, every frame in it charged in bytes to the connection's, its user's
//!   and the daemon's budgets ([`crate::budget`]), and the lag: an event that does not fit (or
//!   beyond `outgoing_queue` events) makes the connection lag, once;
//! - the catch-up (resume, `Sync`): live log events held back by the [`gate`] while pages of
//!   what the device missed are read, then the held events it still needs, then `CaughtUp`;
//! - the presence it follows, with events about a user held back while an answer about that
//!   user is on its way (so an answer never overtakes a later change);
//! - the typing rate.
//!
//! The connection's tasks ([`super::conn`]) carry it out: they read frames and pass them to
//! [`Session::frame`], ask [`Session::admit`] before reading a request, write what
//! [`Session::transmit`] hands them and report it with [`Session::written`], and after every
//! call act on [`Session::signals`] (wake the writer, wake a reader waiting for room, count a
//! lag). The budgets are shared atomics (the user's and the daemon's), the one piece of state
//! a session shares with others.

mod catch_up;
pub(crate) mod gate;
mod queue;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_protocol::{
    ClientFrame, DecodeError, DeviceId, ErrorCode, GoodbyeCode, Hello, PROTOCOL_VERSION, Request,
    RequestId, Resume, TypingUpdate, UserId,
};

use super::accounts::Authenticated;
use super::{Position, encode, error, error_frame, in_version_1};
use crate::budget::{Budget, UserBudget};
use crate::store::CatchUp;
use gate::Gate;

/// Most typing updates a connection may send per second; more are dropped.
pub(crate) const TYPING_PER_SECOND: u32 = 10;

/// What a client refused for memory is told to wait before trying again.
pub(crate) const OVERLOADED_RETRY_MS: u32 = 1_000;

/// The limits a session works within (read from the configuration on every call, so a
/// reload applies at once).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Bytes one connection may hold.
    pub(crate) connection_memory: usize,
    /// Requests read and not yet answered.
    pub(crate) max_in_flight: u32,
    /// Events queued (or held back) for one connection.
    pub(crate) outgoing_queue: usize,
}

/// What a queued frame is, for the limits that apply to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Answers a request: counted in flight until written.
    Reply,
    /// A pushed event: counted against `outgoing_queue`.
    Event,
    /// Hello, goodbye, connection-level errors, catch-up pages.
    Control,
}

/// What a live event is, for the rules of the connections it reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Live {
    /// A log entry (message, membership) at this position: held back during a catch-up,
    /// dropped when the device has it already.
    Entry(Position),
    /// A followed user's presence: held back while an answer about that user is on its way.
    Presence(UserId),
    /// Typing: a datagram where possible, dropped rather than lagging anyone.
    Ephemeral,
    /// Anything else (receipts): queued in order.
    Other,
}

/// What the connection's tasks must do after a call (taken with [`Session::signals`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Signals {
    /// Something was queued (or the connection started closing): wake the writer.
    pub(crate) writer: bool,
    /// Room was freed or a request slot opened: wake a reader waiting to read a request.
    pub(crate) room: bool,
    /// The connection just lagged (count it).
    pub(crate) lagged: bool,
}

/// What a frame asks of the connection's tasks (the rest the session did itself: refusals
/// are queued, violations close it).
#[derive(Debug)]
pub(crate) enum Step {
    /// Nothing more.
    Done,
    /// A hello without credentials: answer with a `HelloOk` without a session.
    HelloOk,
    /// Authenticate `token` (for the hello when `request` is `None`).
    Authenticate {
        token: String,
        request: Option<RequestId>,
    },
    /// A request allowed in this state, for its handler; `user` is the session's (0 before
    /// authentication, for the requests that need none).
    Request {
        id: RequestId,
        request: Request,
        user: UserId,
    },
    /// A typing update within the rate, from `user`.
    Typing { user: UserId, update: TypingUpdate },
    /// The frame broke the protocol: the connection is closing.
    Closed,
}

/// Whether the next request may be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Its answer's reservation is charged to every budget.
    Admitted,
    /// The daemon's budget is full: the request is answered `OVERLOADED` (queued).
    Refused,
    /// Not now: wait until the connection frees room or a request slot, or (`user`) until
    /// any of the user's connections frees room in the user's budget.
    Wait { user: bool },
    /// Authenticated, and the user's shared budget has not arrived yet: wait for it.
    AwaitBudget,
    /// The connection is over.
    Closed,
}

/// Frames of room an emptied queue (the session's, its writer's batch) keeps: one that grew
/// for a burst gives the rest back, so an idle connection holds no more than this.
pub(crate) const IDLE_FRAMES: usize = 8;

/// A batch for the writer ([`Session::transmit`]).
#[derive(Debug, Default)]
pub(crate) struct Transmit {
    /// Bytes of the frames taken, to give back once written ([`Session::written`]).
    pub(crate) bytes: usize,
    /// Set when the connection is closing and nothing more will be queued.
    pub(crate) closing: Option<GoodbyeCode>,
}

/// The session started (see [`Session::started`]).
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) user: UserId,
    pub(crate) device: DeviceId,
    /// The resume the hello or `Authenticate` carried: start a catch-up with it.
    pub(crate) resume: Option<Resume>,
}

/// A connection's session state.
pub(crate) struct Session {
    /// The hello's device, once the hello arrived.
    device: Option<DeviceId>,
    auth: Option<Authenticated>,
    authenticating: bool,
    /// The resume of the hello or `Authenticate` being authenticated.
    resume: Option<Resume>,
    /// The daemon's budget, and the user's once it arrives from the user's registry shard.
    daemon: Arc<Budget>,
    user: Option<Arc<UserBudget>>,
    /// Bytes charged for this connection: queued and held frames, reserved answers and
    /// catch-up pages.
    bytes: usize,
    /// The connection is over and gave its bytes back: nothing is charged any more.
    released: bool,
    in_flight: u32,
    /// Bytes reserved for the answers of requests in flight, by request id (ids are the
    /// client's: a reused one holds several).
    reserved: HashMap<RequestId, Vec<usize>>,
    frames: VecDeque<(Bytes, Kind)>,
    events: usize,
    lagged: bool,
    /// Set with the goodbye: the writer finishes the stream after it and closes.
    closing: Option<GoodbyeCode>,
    gate: Gate,
    /// Entries the running catch-up has replayed so far.
    replayed: u32,
    /// The rest of a running catch-up whose next page did not fit the budgets yet.
    parked: Option<Box<CatchUp>>,
    /// The users whose presence this connection follows.
    presence: HashSet<UserId>,
    /// `Presence` requests whose answers are on their way, with the users they ask about (at
    /// most `max_in_flight` requests of at most 256 users); presence events about those users
    /// wait in `presence_held` (charged, at most `outgoing_queue`) until then.
    presence_asked: Vec<(RequestId, Vec<UserId>)>,
    presence_held: Vec<(UserId, Bytes)>,
    /// Typing updates accepted in the current one-second window: (window start, count).
    typing: Option<(Instant, u32)>,
    signals: Signals,
}

impl Session {
    /// A new connection's session, charging to the daemon's budget `daemon`.
    pub(crate) fn new(daemon: Arc<Budget>) -> Session {
        Session {
            device: None,
            auth: None,
            authenticating: false,
            resume: None,
            daemon,
            user: None,
            bytes: 0,
            released: false,
            in_flight: 0,
            reserved: HashMap::new(),
            frames: VecDeque::new(),
            events: 0,
            lagged: false,
            closing: None,
            gate: Gate::default(),
            replayed: 0,
            parked: None,
            presence: HashSet::new(),
            presence_asked: Vec::new(),
            presence_held: Vec::new(),
            typing: None,
            signals: Signals::default(),
        }
    }

    /// What the connection's tasks must do after the last calls; resets them.
    pub(crate) fn signals(&mut self) -> Signals {
        std::mem::take(&mut self.signals)
    }

    /// The session's user and device, once authenticated.
    pub(crate) fn user(&self) -> Option<(UserId, DeviceId)> {
        Some((self.auth.as_ref()?.user, self.device?))
    }

    pub(crate) fn authentication(&self) -> Option<&Authenticated> {
        self.auth.as_ref()
    }

    /// The hello's device, once the hello arrived.
    pub(crate) fn device(&self) -> Option<DeviceId> {
        self.device
    }

    /// A decoded frame arrived at `now`. A request must have been admitted first
    /// ([`Session::admit`]).
    pub(crate) fn frame(&mut self, frame: ClientFrame, now: Instant) -> Step {
        let has_hello = self.device.is_some();
        match frame {
            ClientFrame::Hello(hello) if !has_hello => self.hello(hello),
            ClientFrame::Hello(_) => self.unexpected("a second hello"),
            ClientFrame::Request { .. } | ClientFrame::Typing(_) if !has_hello => {
                self.unexpected("hello must come first")
            }
            ClientFrame::Request { id, request } => {
                self.in_flight += 1;
                self.request(id, request)
            }
            ClientFrame::Typing(update) => match self.typing(now) {
                Some(user) => Step::Typing { user, update },
                None => Step::Done,
            },
        }
    }

    fn hello(&mut self, hello: Hello) -> Step {
        if hello.client.len() > chat_protocol::limits::MAX_CLIENT_NAME {
            let refusal = "Hello.client is longer than 64 bytes";
            self.control(error_frame(None, ErrorCode::INVALID_REQUEST, refusal));
            self.goodbye(GoodbyeCode::PROTOCOL_VIOLATION, "invalid hello");
            return Step::Closed;
        }
        let ours = crate::PROTOCOL_VERSIONS;
        if hello.versions.min > ours.max
            || hello.versions.max < ours.min
            || hello.versions.min > hello.versions.max
        {
            self.refuse_version("no version of the hello's range");
            return Step::Closed;
        }
        self.device = Some(hello.device);
        match hello.auth {
            None => Step::HelloOk,
            Some(auth) => {
                self.authenticating = true;
                self.resume = auth.resume;
                Step::Authenticate {
                    token: auth.token,
                    request: None,
                }
            }
        }
    }

    /// The session gate: ping and the account requests need no session; `Authenticate` once
    /// per connection, one at a time; everything else needs a session.
    fn request(&mut self, id: RequestId, request: Request) -> Step {
        let user = self.auth.as_ref().map_or(UserId(0), |auth| auth.user);
        match request {
            Request::Ping | Request::Register { .. } | Request::Login { .. } => {}
            Request::Authenticate(auth) => {
                let cursors = auth.resume.as_ref().map_or(0, |r| r.cursors.len());
                let refusal = if self.auth.is_some() {
                    Some((ErrorCode::ALREADY_AUTHENTICATED, ""))
                } else if self.authenticating {
                    Some((
                        ErrorCode::INVALID_REQUEST,
                        "authentication already in progress",
                    ))
                } else if cursors > chat_protocol::limits::MAX_RESUME_CURSORS {
                    Some((ErrorCode::INVALID_REQUEST, "too many resume cursors"))
                } else {
                    None
                };
                if let Some((code, reason)) = refusal {
                    self.reply(id, error(id, code, reason));
                    return Step::Done;
                }
                self.authenticating = true;
                self.resume = auth.resume;
                return Step::Authenticate {
                    token: auth.token,
                    request: Some(id),
                };
            }
            _ if self.auth.is_none() => {
                self.reply(id, error(id, ErrorCode::NOT_AUTHENTICATED, ""));
                return Step::Done;
            }
            _ => {}
        }
        Step::Request { id, request, user }
    }

    /// A typing update at `now`: from whom, if the session may send one now.
    pub(crate) fn typing(&mut self, now: Instant) -> Option<UserId> {
        let user = self.auth.as_ref()?.user;
        let (start, count) = match self.typing {
            Some((start, count)) if now.duration_since(start) < Duration::from_secs(1) => {
                (start, count)
            }
            _ => (now, 0),
        };
        if count >= TYPING_PER_SECOND {
            return None;
        }
        self.typing = Some((start, count + 1));
        Some(user)
    }

    /// A frame that cannot be decoded: the client is told why and the connection closes. An
    /// unknown version byte on the first frame is a version mismatch (section 7); on a later
    /// frame, after version 1 was agreed, it is an invalid frame like any other.
    pub(crate) fn violation(&mut self, e: &DecodeError) {
        let agreed = self.device.is_some();
        let (code, goodbye) = match e {
            DecodeError::TooLarge { .. } => {
                (ErrorCode::FRAME_TOO_LARGE, GoodbyeCode::PROTOCOL_VIOLATION)
            }
            DecodeError::UnsupportedVersion(_) if !agreed => {
                return self.refuse_version(&e.to_string());
            }
            _ => (ErrorCode::MALFORMED_FRAME, GoodbyeCode::PROTOCOL_VIOLATION),
        };
        let mut reason = e.to_string();
        reason.truncate(chat_protocol::limits::MAX_REASON);
        self.control(error_frame(None, code, &reason));
        self.goodbye(goodbye, "protocol violation");
    }

    /// No version in common: the error and the goodbye go in version-1 frames, which every
    /// client can read (their layout is the same in every version), and the connection
    /// closes.
    fn refuse_version(&mut self, reason: &str) {
        let mut reason = format!("{reason}; this daemon speaks version {PROTOCOL_VERSION}");
        reason.truncate(chat_protocol::limits::MAX_REASON);
        let error = error_frame(None, ErrorCode::UNSUPPORTED_VERSION, &reason);
        self.control_bytes(in_version_1(encode(&error)));
        self.goodbye_in(
            GoodbyeCode::UNSUPPORTED_VERSION,
            "no protocol version in common",
            in_version_1,
        );
    }

    fn unexpected(&mut self, what: &str) -> Step {
        self.control(error_frame(None, ErrorCode::UNEXPECTED_FRAME, what));
        self.goodbye(GoodbyeCode::PROTOCOL_VIOLATION, "protocol violation");
        Step::Closed
    }

    /// Authentication succeeded: the session starts (when the hello came first; else `None`
    /// and nothing changes).
    pub(crate) fn started(&mut self, auth: Authenticated) -> Option<Started> {
        let device = self.device?;
        self.authenticating = false;
        let user = auth.user;
        self.auth = Some(auth);
        Some(Started {
            user,
            device,
            resume: self.resume.take(),
        })
    }

    /// Authentication failed: the client may try again (the caller answers the hello or the
    /// request with the error).
    pub(crate) fn refused(&mut self) {
        self.authenticating = false;
        self.resume = None;
    }

    /// When the session ends unless the client does something: `auth_deadline` while
    /// unauthenticated, the token's expiry once authenticated (on the monotonic clock, given
    /// `now` and the wall clock's `unix_now` in seconds).
    pub(crate) fn deadline(&self, auth_deadline: Instant, now: Instant, unix_now: u64) -> Instant {
        match self.auth.as_ref() {
            None => auth_deadline,
            Some(auth) => {
                let left = Duration::from_secs(auth.expires_at.saturating_sub(unix_now));
                now.checked_add(left)
                    .unwrap_or(now + Duration::from_secs(86_400 * 365))
            }
        }
    }

    /// At the session's deadline: an unauthenticated connection times out (`AUTH_TIMEOUT`), an
    /// authenticated one's token has expired (`TOKEN_EXPIRED`); either way the goodbye is
    /// queued and `true` returned. `false` when the deadline moved: the hello authenticated
    /// the connection after the wait began, and an idle client that sends nothing more must
    /// not be taken for one that never authenticated.
    pub(crate) fn deadline_reached(
        &mut self,
        auth_deadline: Instant,
        now: Instant,
        unix_now: u64,
    ) -> bool {
        match self.auth.as_ref() {
            None if now >= auth_deadline => {
                self.control(error_frame(None, ErrorCode::AUTH_TIMEOUT, ""));
                let reason = "authentication did not complete in time";
                self.goodbye(GoodbyeCode::AUTH_TIMEOUT, reason);
                true
            }
            Some(auth) if unix_now >= auth.expires_at => {
                self.goodbye(GoodbyeCode::TOKEN_EXPIRED, "the session's token expired");
                true
            }
            _ => false,
        }
    }
}
