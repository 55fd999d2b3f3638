//! One simulated client: a QUIC connection speaking chat-protocol, driven by commands
//! (scheduled sends, setup requests) and measuring what comes back.
//!
//! Each client is one task on a client thread. Inside it, a reader and a writer run
//! concurrently over the session stream and share the connection's bookkeeping (requests in
//! flight, cursors) through an uncontended lock that is never held across an await. The
//! task reconnects after a churn request or a lost connection, resuming from the cursors of
//! what it received, and resends the sends that were unanswered with their op ids, as a real
//! client does; the daemon deduplicates them.
//!
//! A send's op id is its scheduled time on the run's [`Clock`](crate::metrics::Clock), and
//! its body starts with the same eight bytes: any recipient computes the latency from the
//! schedule, not from when the send actually left (no coordinated omission), and a body that
//! does not match its op id is counted as corrupted.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chat_protocol::positions::Positions;
use chat_protocol::{
    Appended, Auth, Chain, ClientFrame, ContentType, ConversationId, DeviceId, ErrorBody,
    ErrorCode, Event, FrameDecoder, Hello, Message, OpId, Request, RequestId, Response, Resume,
    SUPPORTED_VERSIONS, SendAck, SendMessage, ServerFrame, UserId, encode_frame,
};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::check::ClientId;
use crate::metrics::{self, Clock, Record, record_latency};

/// Commands a client's queue holds at most; a full queue drops the send (counted).
pub(crate) const QUEUE: usize = 4096;

/// How a client proves who it is.
#[derive(Clone, Debug)]
pub(crate) enum Credentials {
    /// A minted token.
    Token(String),
    /// Register this name with a password on the first connection, then use the token.
    Register(String),
    /// The floor: any token is accepted.
    Floor,
}

/// What the coordinator and the scheduler hold of a client.
pub(crate) struct Shared {
    /// The client's number.
    pub id: ClientId,
    /// Its command queue.
    pub commands: mpsc::Sender<Command>,
    /// Its user id once the first hello succeeded (0 before).
    pub user: AtomicU64,
    /// Asks the client to disconnect and resume.
    pub churn: Notify,
    /// Sends queued or in flight and not yet answered (acked or refused): the scheduler adds,
    /// the reader subtracts. A phase is drained when every client's is zero.
    pub outstanding: AtomicUsize,
}

/// What a client is asked to do.
pub(crate) enum Command {
    /// Post a message scheduled at `op` (nanoseconds on the run clock).
    Send {
        /// Where.
        conversation: ConversationId,
        /// The scheduled time, used as op id.
        op: OpId,
    },
    /// A setup request; the answer goes to `reply`.
    Request {
        /// What to ask.
        request: Request,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Response, String>>,
    },
}

/// What every client of a run shares.
pub(crate) struct Context {
    /// The run clock.
    pub clock: Clock,
    /// The server, or a cluster's nodes: each client starts on one (by its id) and moves to
    /// the next when its connection is lost or refused.
    pub servers: Vec<SocketAddr>,
    /// The certificate name.
    pub server_name: String,
    /// Message body size.
    pub size: usize,
    /// Whether deliveries are recorded for the checker (not against the floor).
    pub check: bool,
    /// How long a churned client stays away.
    pub churn_pause: Duration,
    /// Becomes `true` when the run is over.
    pub stop: watch::Receiver<bool>,
    /// The broker and names of a peer target (`None` for chatd and the floor).
    pub peer: Option<crate::peer::Settings>,
}

/// Why a session ended.
enum Outcome {
    Stop,
    Churn,
    Lost,
}

/// A request in flight.
enum Pending {
    Send(ConversationId, OpId),
    Request(oneshot::Sender<Result<Response, String>>),
    Sync,
}

/// The bookkeeping of one connection, shared by its reader and writer.
struct ConnState {
    pending: HashMap<RequestId, Pending>,
    next_id: u32,
    positions: Positions,
    /// Between a resume (or `Sync`) and `CaughtUp`: deliveries are replays.
    catching_up: bool,
    /// A `Lagged` arrived: the writer sends `Sync` (once no catch-up runs: a `Sync` during
    /// one is refused).
    need_sync: bool,
    /// A `Sync` was refused (a cluster's partition moving, `UNAVAILABLE`): not again before.
    sync_at: Option<Instant>,
    /// Sends answered `UNAVAILABLE` (retryable: a cluster's partition moving), resent with
    /// their op ids when due, as the SDK does.
    retry: VecDeque<(Instant, ConversationId, OpId)>,
}

/// How long a refused `Sync` or an `UNAVAILABLE` send waits before it is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

impl ConnState {
    fn id(&mut self) -> RequestId {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        RequestId(self.next_id)
    }
}

/// An established session.
struct Live {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder<ServerFrame>,
    max_in_flight: usize,
    /// The hello asked for a catch-up (the daemon ends it with `CaughtUp`).
    resumed: bool,
}

/// Runs client `shared.id` until the run stops. `ready` gets its user id after the first
/// hello, or why it could not connect (then the task ends).
pub(crate) async fn run(
    context: Arc<Context>,
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut credentials: Credentials,
    mut commands: mpsc::Receiver<Command>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let mut ready = Some(ready);
    let mut stop = context.stop.clone();
    let mut positions = Positions::default();
    let mut resend: VecDeque<Command> = VecDeque::new();
    let mut held: Option<Held> = None;
    let mut resume: Option<Resume> = None;
    let mut failures = 0u32;
    let mut at = usize::try_from(shared.id).unwrap_or(0) % context.servers.len().max(1);
    loop {
        if *stop.borrow() {
            return;
        }
        let device = u64::from(shared.id) + 1;
        let connected = tokio::select! {
            result = connect_any(&context, &endpoint, &mut credentials, resume.take(), device, &mut at) => result,
            _ = stop.changed() => return,
        };
        let (live, user) = match connected {
            Ok(live) => live,
            Err(e) => {
                metrics::with(|m| m.connect_failures += 1);
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e));
                    return;
                }
                failures += 1;
                let backoff = Duration::from_millis(50 << failures.min(6));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                resume = Some(positions.resume());
                continue;
            }
        };
        failures = 0;
        shared.user.store(user, Ordering::Release);
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        let state = Mutex::new(ConnState {
            pending: HashMap::new(),
            next_id: 0,
            positions: std::mem::take(&mut positions),
            catching_up: live.resumed,
            need_sync: false,
            sync_at: None,
            retry: VecDeque::new(),
        });
        let outcome = session(
            &context,
            &shared,
            live,
            &state,
            &mut commands,
            &mut resend,
            &mut held,
            &mut stop,
        )
        .await;
        let state = state.into_inner();
        positions = state.positions;
        // Unanswered requests go first, in the order they were written, then what was held.
        let mut unanswered: Vec<_> = state.pending.into_iter().collect();
        unanswered.sort_by_key(|(id, _)| id.0);
        let mut first = VecDeque::new();
        for (_, conversation, op) in state.retry {
            first.push_back(Command::Send { conversation, op });
        }
        for (_, pending) in unanswered {
            match pending {
                Pending::Send(conversation, op) => {
                    first.push_back(Command::Send { conversation, op });
                }
                Pending::Request(reply) => {
                    let _ = reply.send(Err("the connection was lost".into()));
                }
                Pending::Sync => {}
            }
        }
        if let Some(Held::Command { command, .. }) = held.take() {
            first.push_back(command);
        }
        first.append(&mut resend);
        resend = first;
        match outcome {
            Outcome::Stop => return,
            Outcome::Churn => {
                tokio::select! {
                    () = tokio::time::sleep(context.churn_pause) => {}
                    _ = stop.changed() => return,
                }
            }
            Outcome::Lost => {
                metrics::with(|m| m.disconnects += 1);
                // Its node may be gone: the next one first.
                at = (at + 1) % context.servers.len().max(1);
            }
        }
        resume = Some(positions.resume());
    }
}

/// Connects to the servers from `*at` on, the first that takes the client (a cluster's node
/// standing by refuses it), and leaves `*at` there; the last error when none does.
async fn connect_any(
    context: &Context,
    endpoint: &quinn::Endpoint,
    credentials: &mut Credentials,
    resume: Option<Resume>,
    device: u64,
    at: &mut usize,
) -> Result<(Live, u64), String> {
    let mut error = String::from("no server");
    for _ in 0..context.servers.len() {
        let server = context.servers[*at];
        match connect(
            context,
            endpoint,
            server,
            credentials,
            resume.clone(),
            device,
        )
        .await
        {
            Ok(connected) => return Ok(connected),
            Err(e) => error = format!("{server}: {e}"),
        }
        *at = (*at + 1) % context.servers.len();
    }
    Err(error)
}

/// Connects, says hello (registering first when asked), and returns the session and the
/// user id; records the handshake time.
async fn connect(
    context: &Context,
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    credentials: &mut Credentials,
    resume: Option<Resume>,
    device: u64,
) -> Result<(Live, u64), String> {
    let started = Instant::now();
    let connection = endpoint
        .connect(server, &context.server_name)
        .map_err(|e| format!("connect: {e}"))?
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| format!("open stream: {e}"))?;
    let token = match credentials {
        Credentials::Token(token) => Some(token.clone()),
        Credentials::Floor => Some("floor".to_owned()),
        Credentials::Register(_) => None,
    };
    let mut live = Live {
        connection,
        send,
        recv,
        decoder: FrameDecoder::new(),
        max_in_flight: 1,
        resumed: resume.is_some(),
    };
    let hello = ClientFrame::Hello(Hello {
        versions: SUPPORTED_VERSIONS,
        client: concat!("chat-loadgen/", env!("CARGO_PKG_VERSION")).into(),
        device: DeviceId(device),
        auth: token.map(|token| Auth {
            token,
            resume: resume.clone(),
        }),
    });
    write(&mut live.send, &hello).await?;
    let ok = match next_frame(&mut live).await? {
        ServerFrame::HelloOk(ok) => ok,
        ServerFrame::Error { error, .. } => return Err(describe(&error)),
        other => return Err(format!("unexpected answer to hello: {other:?}")),
    };
    let session = match (ok.session, credentials.clone()) {
        (Some(session), _) => session,
        (None, Credentials::Register(name)) => {
            let Response::Token(grant) = exchange(
                &mut live,
                Request::Register {
                    name,
                    password: "chat-loadgen-password".into(),
                },
            )
            .await?
            else {
                return Err("register: unexpected answer".into());
            };
            *credentials = Credentials::Token(grant.token.clone());
            let Response::Session(session) = exchange(
                &mut live,
                Request::Authenticate(Auth {
                    token: grant.token,
                    resume,
                }),
            )
            .await?
            else {
                return Err("authenticate: unexpected answer".into());
            };
            session
        }
        (None, _) => return Err("the hello did not authenticate".into()),
    };
    live.max_in_flight = usize::try_from(ok.limits.max_in_flight)
        .unwrap_or(1)
        .clamp(1, 1 << 20);
    metrics::connected(started);
    Ok((live, session.user.0))
}

/// One request during the handshake, answered before anything else can arrive.
async fn exchange(live: &mut Live, request: Request) -> Result<Response, String> {
    write(
        &mut live.send,
        &ClientFrame::Request {
            id: RequestId(u32::MAX),
            request,
        },
    )
    .await?;
    loop {
        match next_frame(live).await? {
            ServerFrame::Response { response, .. } => return Ok(response),
            ServerFrame::Error { error, .. } => return Err(describe(&error)),
            ServerFrame::Event(_) => {}
            other => return Err(format!("unexpected frame: {other:?}")),
        }
    }
}

fn describe(error: &ErrorBody) -> String {
    format!("{}: {}", error.code, error.reason)
}

async fn write(send: &mut quinn::SendStream, frame: &ClientFrame) -> Result<(), String> {
    let mut buf = Vec::new();
    encode_frame(frame, &mut buf).map_err(|e| format!("encode: {e}"))?;
    send.write_all(&buf)
        .await
        .map_err(|e| format!("write: {e}"))
}

async fn next_frame(live: &mut Live) -> Result<ServerFrame, String> {
    loop {
        if let Some(frame) = live
            .decoder
            .next_frame()
            .map_err(|e| format!("decode: {e}"))?
        {
            return Ok(frame);
        }
        match live.recv.read_chunk(live.decoder.space(), true).await {
            Ok(Some(chunk)) => live
                .decoder
                .push(&chunk.bytes)
                .map_err(|e| format!("decode: {e}"))?,
            Ok(None) => return Err("the server closed the stream".into()),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Runs one connection until the run stops, a churn is asked for, or it is lost.
#[allow(clippy::too_many_arguments)]
async fn session(
    context: &Context,
    shared: &Shared,
    live: Live,
    state: &Mutex<ConnState>,
    commands: &mut mpsc::Receiver<Command>,
    resend: &mut VecDeque<Command>,
    held: &mut Option<Held>,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let Live {
        connection,
        mut send,
        mut recv,
        mut decoder,
        max_in_flight,
        resumed: _,
    } = live;
    let room = Notify::new();
    let wake = Notify::new();
    let outcome = tokio::select! {
        outcome = reader(context, shared, &mut recv, &mut decoder, state, &room, &wake) => outcome,
        outcome = writer(context, &mut send, commands, resend, held, state, &room, &wake, max_in_flight) => outcome,
        () = shared.churn.notified() => Outcome::Churn,
        _ = stop.changed() => Outcome::Stop,
    };
    connection.close(0u32.into(), b"bye");
    outcome
}

/// What the writer has taken and not yet written. It lives in [`run`], outside the session,
/// so a command taken just before the session ends (a churn, a lost connection) is not lost:
/// it goes back to the front of the resend queue.
enum Held {
    /// A command; `resent` when it comes from the resend queue (not counted as a new send).
    Command { command: Command, resent: bool },
    /// A `Sync` after `Lagged` (not kept across connections: the resume does its work).
    Sync(Resume),
}

#[allow(clippy::too_many_arguments)]
async fn writer(
    context: &Context,
    send: &mut quinn::SendStream,
    commands: &mut mpsc::Receiver<Command>,
    resend: &mut VecDeque<Command>,
    held: &mut Option<Held>,
    state: &Mutex<ConnState>,
    room: &Notify,
    wake: &Notify,
    max_in_flight: usize,
) -> Outcome {
    let mut buf = Vec::with_capacity(context.size + 64);
    loop {
        if held.is_none() {
            let now = Instant::now();
            let (sync, retry, next_due) = {
                let mut state = state.lock();
                let sync = if state.need_sync
                    && !state.catching_up
                    && state.sync_at.is_none_or(|at| at <= now)
                {
                    state.need_sync = false;
                    state.sync_at = None;
                    state.catching_up = true;
                    Some(state.positions.resume())
                } else {
                    None
                };
                // Taken only when it goes now: a `Sync` or a resend goes first, and a retry
                // taken and not sent would never be answered.
                let retry = if sync.is_none()
                    && resend.is_empty()
                    && state.retry.front().is_some_and(|(at, ..)| *at <= now)
                {
                    state.retry.pop_front()
                } else {
                    None
                };
                let sync_due = state.sync_at.filter(|_| state.need_sync);
                let retry_due = state.retry.front().map(|(at, ..)| *at);
                (sync, retry, sync_due.into_iter().chain(retry_due).min())
            };
            *held = if let Some(resume) = sync {
                Some(Held::Sync(resume))
            } else if let Some(command) = resend.pop_front() {
                Some(Held::Command {
                    command,
                    resent: true,
                })
            } else if let Some((_, conversation, op)) = retry {
                Some(Held::Command {
                    command: Command::Send { conversation, op },
                    resent: true,
                })
            } else {
                let due = next_due.unwrap_or(now);
                // `recv` is cancel-safe: a command is either taken here or still queued.
                tokio::select! {
                    command = commands.recv() => match command {
                        Some(command) => Some(Held::Command { command, resent: false }),
                        None => return Outcome::Stop,
                    },
                    () = wake.notified() => None,
                    () = tokio::time::sleep_until(due.into()), if next_due.is_some() => None,
                }
            };
            if held.is_none() {
                continue;
            }
        }
        // Wait for room under the daemon's in-flight limit (the command stays held).
        loop {
            let notified = room.notified();
            if state.lock().pending.len() < max_in_flight {
                break;
            }
            notified.await;
        }
        let Some(taken) = held.take() else { continue };
        let (frame, new_send) = {
            let mut state = state.lock();
            let id = state.id();
            match taken {
                Held::Command {
                    command: Command::Send { conversation, op },
                    resent,
                } => {
                    state.pending.insert(id, Pending::Send(conversation, op));
                    let frame = ClientFrame::Request {
                        id,
                        request: Request::Send(SendMessage {
                            conversation,
                            op,
                            content_type: ContentType::BINARY,
                            reply_to: None,
                            body: body(op, context.size),
                            mentions: Vec::new(),
                        }),
                    };
                    (frame, !resent)
                }
                Held::Command {
                    command: Command::Request { request, reply },
                    ..
                } => {
                    state.pending.insert(id, Pending::Request(reply));
                    (ClientFrame::Request { id, request }, false)
                }
                Held::Sync(resume) => {
                    state.pending.insert(id, Pending::Sync);
                    let request = Request::Sync(resume);
                    (ClientFrame::Request { id, request }, false)
                }
            }
        };
        // From here the request is in `pending`: if the connection drops during the write,
        // it is resent from there.
        buf.clear();
        if encode_frame(&frame, &mut buf).is_err() || send.write_all(&buf).await.is_err() {
            return Outcome::Lost;
        }
        if new_send {
            metrics::with(|m| m.sends += 1);
        }
    }
}

/// A message body: the op id's eight bytes, then filler up to `size`.
fn body(op: OpId, size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(&op.0.to_le_bytes());
    body.resize(size.max(8), b'.');
    body
}

/// The chain digest of the message this client sent as `op`, stored as `ack` says.
fn sent_digest(
    context: &Context,
    sender: UserId,
    conversation: ConversationId,
    op: OpId,
    ack: &SendAck,
) -> chat_protocol::Hash {
    chat_protocol::chain::message_digest(&Message {
        conversation,
        seq: ack.seq,
        ts: ack.ts,
        sender,
        op,
        content_type: ContentType::BINARY,
        reply_to: None,
        body: body(op, context.size),
        edited: None,
        deleted: None,
        mentions: Vec::new(),
        reactions: Vec::new(),
        chain: Chain::default(),
    })
}

/// The first eight bytes of a link: what the checker compares between clients.
pub(crate) fn link_prefix(link: &chat_protocol::Hash) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&link[..8]);
    u64::from_le_bytes(prefix)
}

async fn reader(
    context: &Context,
    shared: &Shared,
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder<ServerFrame>,
    state: &Mutex<ConnState>,
    room: &Notify,
    wake: &Notify,
) -> Outcome {
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if !handle(context, shared, frame, state, room, wake) {
                        return Outcome::Lost;
                    }
                }
                Ok(None) => break,
                Err(_) => return Outcome::Lost,
            }
        }
        match recv.read_chunk(decoder.space(), true).await {
            Ok(Some(chunk)) => {
                if decoder.push(&chunk.bytes).is_err() {
                    return Outcome::Lost;
                }
            }
            Ok(None) | Err(_) => return Outcome::Lost,
        }
    }
}

/// Handles one frame; `false` when the server said goodbye.
fn handle(
    context: &Context,
    shared: &Shared,
    frame: ServerFrame,
    state: &Mutex<ConnState>,
    room: &Notify,
    wake: &Notify,
) -> bool {
    match frame {
        ServerFrame::Response { id, response } => {
            let pending = state.lock().pending.remove(&id);
            room.notify_one();
            if matches!(pending, Some(Pending::Send(..))) {
                shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            }
            match (pending, response) {
                (Some(Pending::Send(conversation, op)), Response::Sent(ack)) => {
                    state.lock().positions.acked(conversation, ack.seq);
                    let now = context.clock.now();
                    metrics::with(|m| {
                        m.acks += 1;
                        if context.clock.measured(op.0) {
                            record_latency(&mut m.ack, op.0, now);
                        }
                        if context.check {
                            let sender = UserId(shared.user.load(Ordering::Acquire));
                            let chain = ack.chain.map(|appended| Appended {
                                link: appended.link,
                                // What the sender sent, not what the daemon says it stored:
                                // the checker finds the chain broken if they differ.
                                digest: sent_digest(context, sender, conversation, op, &ack),
                            });
                            m.records.push(Record::Acked {
                                sender: shared.id,
                                conversation,
                                seq: ack.seq,
                                chain,
                            });
                        }
                    });
                }
                (Some(Pending::Request(reply)), response) => {
                    let _ = reply.send(Ok(response));
                }
                _ => {}
            }
        }
        ServerFrame::Error { id, error } => {
            metrics::with(|m| *m.errors.entry(error.code.0).or_default() += 1);
            if let Some(id) = id {
                let pending = state.lock().pending.remove(&id);
                room.notify_one();
                match pending {
                    Some(Pending::Request(reply)) => {
                        let _ = reply.send(Err(describe(&error)));
                    }
                    // Retryable: the send goes again with its op id once due, so it is
                    // stored once whatever happened to the first attempt.
                    Some(Pending::Send(conversation, op))
                        if error.code == ErrorCode::UNAVAILABLE =>
                    {
                        let due = Instant::now() + RETRY_PAUSE;
                        state.lock().retry.push_back((due, conversation, op));
                        wake.notify_one();
                    }
                    Some(Pending::Send(..)) => {
                        shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                    }
                    // A refused `Sync` (a partition moving, or one sent as a catch-up began):
                    // sent again once due.
                    Some(Pending::Sync) => {
                        let mut state = state.lock();
                        state.catching_up = false;
                        state.need_sync = true;
                        state.sync_at = Some(Instant::now() + RETRY_PAUSE);
                        wake.notify_one();
                    }
                    _ => {}
                }
            } else if error.code == ErrorCode::UNAVAILABLE && state.lock().catching_up {
                // A catch-up that failed (a partition moving): it ends lagging, and the
                // `Sync` its `Lagged` asks for waits a pause rather than failing again at once.
                state.lock().sync_at = Some(Instant::now() + RETRY_PAUSE);
            }
        }
        ServerFrame::Event(event) => event_arrived(context, shared, event, state, wake),
        ServerFrame::Goodbye(_) => return false,
        ServerFrame::HelloOk(_) => {}
    }
    true
}

fn event_arrived(
    context: &Context,
    shared: &Shared,
    event: Event,
    state: &Mutex<ConnState>,
    wake: &Notify,
) {
    match event {
        Event::Message(message) => {
            let now = context.clock.now();
            let scheduled = message.op.0;
            let intact = message.body.get(..8) == Some(&scheduled.to_le_bytes()[..]);
            let live = {
                let mut state = state.lock();
                // Every push is counted, repeats too: the checker must see a duplicate.
                state.positions.pushed(message.conversation, message.seq);
                !state.catching_up
            };
            metrics::with(|m| {
                if !intact {
                    m.corrupted += 1;
                }
                if live {
                    m.deliveries += 1;
                    if context.clock.measured(scheduled) {
                        record_latency(&mut m.delivery, scheduled, now);
                    }
                } else {
                    m.replayed += 1;
                }
                if context.check {
                    m.records.push(Record::Delivered(
                        shared.id,
                        message.conversation,
                        message.seq,
                        Some(link_prefix(&message.chain.link)),
                    ));
                }
            });
        }
        // The load generator neither edits, deletes nor reacts; other entries only move its
        // cursors.
        Event::Membership(_)
        | Event::Edit(_)
        | Event::Deletion(_)
        | Event::Erased(_)
        | Event::Reaction(_) => {
            if let Some((conversation, seq)) = event.entry_position() {
                state.lock().positions.pushed(conversation, seq);
            }
        }
        Event::CaughtUp { .. } => {
            let mut state = state.lock();
            state.catching_up = false;
            // A `Lagged` during the catch-up: its `Sync` can go now.
            if state.need_sync {
                wake.notify_one();
            }
        }
        Event::Lagged => {
            metrics::with(|m| m.lagged += 1);
            state.lock().need_sync = true;
            wake.notify_one();
        }
        Event::Gap(_) => metrics::with(|m| m.gaps_announced += 1),
        Event::Receipt(_) | Event::Presence(_) | Event::Typing(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_carries_its_op_id() {
        let body = body(OpId(0x0102_0304_0506_0708), 100);
        assert_eq!(body.len(), 100);
        assert_eq!(body[..8], 0x0102_0304_0506_0708u64.to_le_bytes());
    }
}
