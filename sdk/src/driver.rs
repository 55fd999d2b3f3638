//! The connection task: owns the QUIC connection, writes requests and matches their answers,
//! queues events for the application, keeps the per-conversation cursors, and — when
//! reconnecting is enabled — replaces a lost connection with a new one that resumes from the
//! cursors, resending the requests that are safe to repeat.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chat_protocol::chain::{Hash, Tracker};
use chat_protocol::positions::{Positions, Pushed};
use chat_protocol::{
    Auth, ClientFrame, ConversationId, Cursor, ErrorCode, Event, FrameDecoder, Goodbye,
    GoodbyeCode, Hello, HelloOk, Request, RequestId, Response, Resume, Seq, ServerFrame,
    TypingUpdate, decode_datagram, encode_frame_to_vec,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{Error, Reconnect, Status};

/// Where a request's answer goes.
pub(crate) type Reply = oneshot::Sender<Result<Response, Error>>;

/// What the [`crate::Client`] asks of its connection task.
pub(crate) enum Command {
    Request {
        request: Request,
        reply: Reply,
    },
    /// A typing update: a datagram when the connection takes them, else on the stream.
    Typing(TypingUpdate),
    /// Cursors of conversations seen for the first time (their heads at connect): kept unless
    /// an event already moved them further.
    Baseline(Vec<Cursor>),
    /// Close the connection and stop; answered once the daemon has been told.
    Close(oneshot::Sender<()>),
}

/// One established connection: the hello is done.
pub(crate) struct Live {
    pub(crate) connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder<ServerFrame>,
}

/// How to (re)connect.
pub(crate) struct Dial {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) client_name: String,
    pub(crate) device: chat_protocol::DeviceId,
    pub(crate) token: Option<String>,
    pub(crate) token_source: Option<crate::TokenSource>,
}

impl Dial {
    /// Connects and says hello; `resume` asks for what was missed after the cursors.
    pub(crate) async fn connect(&self, resume: Option<Resume>) -> Result<(Live, HelloOk), Error> {
        let connection = self
            .endpoint
            .connect(self.addr, &self.host)
            .map_err(|e| Error::Connect(e.to_string()))?
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let hello = ClientFrame::Hello(Hello {
            versions: chat_protocol::SUPPORTED_VERSIONS,
            client: self.client_name.clone(),
            device: self.device,
            auth: self.token.clone().map(|token| Auth { token, resume }),
        });
        write_frame(&mut send, &hello).await?;
        let mut decoder = FrameDecoder::<ServerFrame>::new();
        let hello_ok = match read_frame(&mut recv, &mut decoder).await? {
            ServerFrame::HelloOk(ok) => ok,
            ServerFrame::Error { error, .. } => return Err(error.into()),
            ServerFrame::Goodbye(goodbye) => return Err(Error::Closed(Some(goodbye))),
            other => return Err(Error::Protocol(format!("expected HelloOk, got {other:?}"))),
        };
        if self.token.is_some() && hello_ok.session.is_none() {
            // The daemon explains why in an error frame right after the HelloOk.
            return Err(match read_frame(&mut recv, &mut decoder).await? {
                ServerFrame::Error { error, .. } => error.into(),
                other => Error::Protocol(format!("hello did not authenticate: {other:?}")),
            });
        }
        Ok((
            Live {
                connection,
                send,
                recv,
                decoder,
            },
            hello_ok,
        ))
    }
}

/// Why [`Driver::serve`] returned.
enum Ended {
    /// The application closed the client (or dropped it).
    ByClient(Option<oneshot::Sender<()>>),
    /// The connection was lost.
    Lost,
}

/// The task's ends of the channels to its [`crate::Client`].
pub(crate) struct Channels {
    pub(crate) commands: mpsc::Receiver<Command>,
    /// Notified by [`crate::Client::close`], so a close is seen while reconnecting too.
    pub(crate) closing: std::sync::Arc<tokio::sync::Notify>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) goodbye: watch::Sender<Option<Goodbye>>,
    pub(crate) status: watch::Sender<Status>,
}

/// The connection task's state, which outlives each connection.
pub(crate) struct Driver {
    pub(crate) dial: Dial,
    pub(crate) reconnect: Option<Reconnect>,
    pub(crate) commands: mpsc::Receiver<Command>,
    closing: std::sync::Arc<tokio::sync::Notify>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) goodbye: watch::Sender<Option<Goodbye>>,
    pub(crate) status: watch::Sender<Status>,
    /// Users whose presence the application follows (answered `Presence` requests).
    followed: std::collections::BTreeSet<chat_protocol::UserId>,
    /// Per conversation, the last entry queued for the application or acknowledged as its
    /// own send (`chat_protocol::positions`): a resume of this run asks for what follows,
    /// entries at or before it are repeats, and a replayed own send is skipped.
    positions: Positions,
    pub(crate) cursor_file: Option<PathBuf>,
    /// What the application has taken: the cursors the cursor file keeps.
    progress: std::sync::Arc<parking_lot::Mutex<Progress>>,
    /// The application fell [`crate::EVENT_BUFFER`] behind: events are dropped until it
    /// has read `Lagged`.
    lagged: bool,
    next_id: u32,
    /// Entries to read for the chain check: own entries acknowledged without their place in
    /// the chain (a retry answered from the daemon's stored op ids); at most
    /// [`MAX_FETCHES`], sent after the frame that asked for them.
    fetches: Vec<(ConversationId, Seq)>,
}

/// Own entries read back for the chain check at once, at most; beyond, the tracker takes the
/// chain up again after the hole (`chain::Tracker`).
const MAX_FETCHES: usize = 64;

/// What the application has taken from its event queue, per conversation: the cursors a
/// cursor file keeps and [`crate::Client::cursors`] reports, so a later run resumes after
/// what the application saw, not after what was queued for it (a program that stops
/// reading, or reads only `--count` events, loses nothing). Shared by the driver and
/// [`crate::Client::next_event`]; the lock is held for a map update, never across an await.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    taken: HashMap<ConversationId, Seq>,
    /// The first entry of each conversation that was dropped because the application's
    /// queue was full (it got `Lagged` instead): saved cursors stay before it.
    dropped: HashMap<ConversationId, Seq>,
    changed: bool,
    /// Every conversation's hash chain as received (pushes, acks, history pages), checked
    /// as it comes; its tips are saved with the cursors.
    pub(crate) chains: Tracker,
}

impl Progress {
    /// Starts from what a cursor file kept. A chain tip before its conversation's cursor is
    /// dropped: a resume replays only what follows the cursor, so the entries between would
    /// never come to be checked (the chain is taken up again at the first entry received).
    pub(crate) fn from_saved(saved: &Saved) -> Progress {
        let taken: HashMap<ConversationId, Seq> = saved
            .cursors
            .iter()
            .map(|c| (c.conversation, c.seq))
            .collect();
        let tips = saved
            .tips
            .iter()
            .filter(|(c, seq, _)| taken.get(c).is_some_and(|cursor| seq >= cursor))
            .copied();
        Progress {
            chains: Tracker::from_tips(tips),
            taken,
            ..Progress::default()
        }
    }

    /// The application took (or, for its own sends, already has) entry `seq`.
    pub(crate) fn taken(&mut self, conversation: ConversationId, seq: Seq) {
        let cursor = self.taken.entry(conversation).or_insert(seq);
        *cursor = (*cursor).max(seq);
        self.changed = true;
    }

    /// A conversation's head at the first connect: nothing before it is owed.
    fn baseline(&mut self, conversation: ConversationId, seq: Seq) {
        self.taken.entry(conversation).or_insert(seq);
        self.changed = true;
    }

    /// The client's own sends after `from` up to `to` were acknowledged, directly after the
    /// entries queued for the application: it has them once it has taken `from`.
    fn own(&mut self, conversation: ConversationId, from: Seq, to: Seq) {
        if self.taken.get(&conversation).copied().unwrap_or(Seq(0)) >= from {
            self.taken(conversation, to);
        }
    }

    fn dropped(&mut self, conversation: ConversationId, seq: Seq) {
        self.dropped.entry(conversation).or_insert(seq);
        self.changed = true;
    }

    /// The cursors to keep: what was taken, but before anything dropped.
    pub(crate) fn cursors(&self) -> Vec<Cursor> {
        let mut cursors: Vec<Cursor> = self
            .taken
            .iter()
            .map(|(conversation, seq)| Cursor {
                conversation: *conversation,
                seq: match self.dropped.get(conversation) {
                    Some(first) => (*seq).min(Seq(first.0.saturating_sub(1))),
                    None => *seq,
                },
            })
            .collect();
        cursors.sort_by_key(|c| c.conversation);
        cursors
    }
}

impl Driver {
    pub(crate) fn new(
        dial: Dial,
        options: &crate::Options,
        cursors: &[Cursor],
        progress: std::sync::Arc<parking_lot::Mutex<Progress>>,
        channels: Channels,
    ) -> Driver {
        Driver {
            dial,
            reconnect: options.reconnect.clone(),
            commands: channels.commands,
            closing: channels.closing,
            followed: std::collections::BTreeSet::new(),
            events: channels.events,
            goodbye: channels.goodbye,
            status: channels.status,
            positions: Positions::from_cursors(cursors),
            cursor_file: options.cursor_file.clone(),
            progress,
            lagged: false,
            next_id: 1,
            fetches: Vec::new(),
        }
    }

    /// Serves `live`, then its replacements, until the client closes or reconnecting gives
    /// up.
    pub(crate) async fn run(mut self, mut live: Live) {
        let mut resend: Vec<(Request, Reply)> = Vec::new();
        loop {
            let (ended, unanswered) = self.serve(&mut live, resend).await;
            self.save_cursors();
            // Replaced by the same device elsewhere, or told it broke the protocol: coming
            // back would only repeat it.
            let final_goodbye = self.goodbye.borrow().as_ref().is_some_and(|g| {
                [GoodbyeCode::REPLACED, GoodbyeCode::PROTOCOL_VIOLATION].contains(&g.code)
            });
            let can_reconnect =
                self.reconnect.is_some() && self.dial.token.is_some() && !final_goodbye;
            let done = match ended {
                Ended::ByClient(done) => {
                    live.connection.close(0u32.into(), b"bye");
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        self.dial.endpoint.wait_idle(),
                    )
                    .await;
                    Some(done)
                }
                Ended::Lost if !can_reconnect => Some(None),
                Ended::Lost => None,
            };
            if let Some(done) = done {
                for (_, reply) in unanswered {
                    let _ = reply.send(Err(Error::Closed(self.goodbye.borrow().clone())));
                }
                let _ = self.status.send(Status::Closed);
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            resend = Vec::new();
            for (request, reply) in unanswered {
                if reply.is_closed() {
                    continue; // nobody waits for it (or it is a re-follow, redone below)
                }
                if request.repeatable() {
                    resend.push((request, reply));
                } else {
                    let _ = reply.send(Err(Error::Interrupted));
                }
            }
            match self.redial().await {
                Some(next) => {
                    live = next;
                    let mut again = self.refollow();
                    again.append(&mut resend);
                    resend = again;
                }
                None => {
                    for (_, reply) in resend {
                        let _ = reply.send(Err(Error::Closed(self.goodbye.borrow().clone())));
                    }
                    let _ = self.status.send(Status::Closed);
                    return;
                }
            }
        }
    }

    /// Connects again with backoff, resuming from the cursors; `None` when it gives up (a
    /// refused token, or `give_up_after` passed).
    async fn redial(&mut self) -> Option<Live> {
        let reconnect = self.reconnect.clone()?;
        let expired = self
            .goodbye
            .borrow()
            .as_ref()
            .is_some_and(|g| g.code == GoodbyeCode::TOKEN_EXPIRED);
        if expired && self.dial.token_source.is_some() {
            // A failure is tried again at the first attempt's refusal.
            let _ = self.renew_token().await;
        }
        let started = Instant::now();
        let mut delay = reconnect.initial_delay;
        for attempt in 1u32.. {
            if self.commands.is_closed() {
                return None; // the client is gone
            }
            let _ = self.status.send(Status::Reconnecting { attempt });
            // Jitter: 50-100% of the delay, so a restarted daemon is not hit all at once.
            let jitter =
                0.5 + f64::from(u32::try_from(crate::random_u64() % 1000).unwrap_or(0)) / 2000.0;
            tokio::select! {
                () = tokio::time::sleep(delay.mul_f64(jitter)) => {}
                () = self.closing.notified() => return None,
            }
            let resume = Resume {
                cursors: self.positions.resume().cursors,
            };
            let attempt =
                tokio::time::timeout(reconnect.connect_timeout, self.dial.connect(Some(resume)));
            let outcome = tokio::select! {
                outcome = attempt => outcome.unwrap_or_else(|_| Err(Error::Connect("timed out".into()))),
                () = self.closing.notified() => return None,
            };
            match outcome {
                Ok((live, _)) => {
                    let _ = self.goodbye.send(None);
                    let _ = self.status.send(Status::Connected);
                    return Some(live);
                }
                Err(Error::Server {
                    code: ErrorCode::TOKEN_EXPIRED,
                    ..
                }) if self.dial.token_source.is_some() => {
                    // Renew the token and try again (nothing is lost meanwhile: the resume
                    // carries the cursors). A renewal that fails is tried again at the next
                    // attempt, within the same backoff and `give_up_after`.
                    let _ = self.renew_token().await;
                }
                Err(Error::Server { code, .. }) if fatal(code) => return None,
                Err(_) => {}
            }
            if reconnect
                .give_up_after
                .is_some_and(|limit| started.elapsed() >= limit)
            {
                return None;
            }
            delay = (delay * 2).min(reconnect.max_delay);
        }
        None
    }

    /// Asks the token source for a fresh token; `false` when there is none or it failed.
    async fn renew_token(&mut self) -> bool {
        let Some(source) = self.dial.token_source.clone() else {
            return false;
        };
        match source.fetch().await {
            Ok(token) => {
                self.dial.token = Some(token);
                true
            }
            Err(e) => {
                eprintln!("chat-sdk: cannot renew the access token: {e}");
                false
            }
        }
    }

    /// Serves one connection until it is lost or the client closes; returns the requests
    /// still unanswered, in the order they were sent.
    async fn serve(
        &mut self,
        live: &mut Live,
        resend: Vec<(Request, Reply)>,
    ) -> (Ended, Vec<(Request, Reply)>) {
        let mut pending: Vec<(RequestId, Request, Reply)> = Vec::new();
        for (request, reply) in resend {
            if self
                .write_request(live, &mut pending, request, reply)
                .await
                .is_err()
            {
                return (Ended::Lost, unanswered(pending));
            }
        }
        let mut save = tokio::time::interval(Duration::from_secs(1));
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Frames already buffered first.
            match live.decoder.next_frame() {
                Ok(Some(frame)) => {
                    self.frame(frame, &mut pending);
                    for (conversation, seq) in std::mem::take(&mut self.fetches) {
                        // Its answer goes through `frame` to the tracker, and nowhere else.
                        let (reply, _) = oneshot::channel();
                        let request = Request::History(chat_protocol::HistoryQuery {
                            conversation,
                            from: chat_protocol::HistoryFrom::After(Seq(seq.0 - 1)),
                            limit: 1,
                            order: chat_protocol::Order::OldestFirst,
                            thread: None,
                        });
                        if self
                            .write_request(live, &mut pending, request, reply)
                            .await
                            .is_err()
                        {
                            return (Ended::Lost, unanswered(pending));
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(_) => return (Ended::Lost, unanswered(pending)),
            }
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Request { request, reply }) => {
                        if self.write_request(live, &mut pending, request, reply).await.is_err() {
                            return (Ended::Lost, unanswered(pending));
                        }
                    }
                    Some(Command::Typing(update)) => {
                        if send_typing(live, update).await.is_err() {
                            return (Ended::Lost, unanswered(pending));
                        }
                    }
                    Some(Command::Baseline(cursors)) => {
                        let mut progress = self.progress.lock();
                        for cursor in cursors {
                            self.positions.baseline(cursor.conversation, cursor.seq);
                            progress.baseline(cursor.conversation, cursor.seq);
                        }
                    }
                    Some(Command::Close(done)) => {
                        return (Ended::ByClient(Some(done)), unanswered(pending));
                    }
                    None => return (Ended::ByClient(None), unanswered(pending)),
                },
                datagram = live.connection.read_datagram() => match datagram {
                    // Datagrams are the ephemeral lane (typing): never worth a lag.
                    Ok(bytes) => {
                        if let Ok(ServerFrame::Event(event)) = decode_datagram::<ServerFrame>(&bytes)
                            && !self.lagged {
                                let _ = self.events.try_send(event);
                            }
                    }
                    Err(_) => return (Ended::Lost, unanswered(pending)),
                },
                chunk = live.recv.read_chunk(live.decoder.space(), true) => match chunk {
                    Ok(Some(chunk)) => {
                        if live.decoder.push(&chunk.bytes).is_err() {
                            return (Ended::Lost, unanswered(pending));
                        }
                    }
                    Ok(None) | Err(_) => return (Ended::Lost, unanswered(pending)),
                },
                _ = save.tick(), if self.cursor_file.is_some() => self.save_cursors(),
            }
        }
    }

    /// Sends `request` under a fresh id and keeps it with `reply` until it is answered.
    async fn write_request(
        &mut self,
        live: &mut Live,
        pending: &mut Vec<(RequestId, Request, Reply)>,
        request: Request,
        reply: Reply,
    ) -> Result<(), Error> {
        let id = self.id();
        let frame = ClientFrame::Request {
            id,
            request: request.clone(),
        };
        pending.push((id, request, reply));
        write_frame(&mut live.send, &frame).await
    }

    fn id(&mut self) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Handles one frame from the daemon.
    fn frame(&mut self, frame: ServerFrame, pending: &mut Vec<(RequestId, Request, Reply)>) {
        let (id, answer) = match frame {
            ServerFrame::Response { id, response } => {
                match &response {
                    Response::Sent(ack) => match &ack.chain {
                        Some(appended) => {
                            let mut progress = self.progress.lock();
                            progress.chains.acked(ack.conversation, ack.seq, appended);
                            progress.changed = true;
                        }
                        // The entry is read back, so the chain goes on over it.
                        None if ack.seq.0 > 0 && self.fetches.len() < MAX_FETCHES => {
                            self.fetches.push((ack.conversation, ack.seq));
                        }
                        None => {}
                    },
                    Response::History(page) => {
                        let mut progress = self.progress.lock();
                        progress.chains.page(page);
                        progress.changed = true;
                    }
                    _ => {}
                }
                if let Response::Sent(ack) = &response {
                    let before = self.positions.cursor(ack.conversation);
                    if let Some(after) = self.positions.acked(ack.conversation, ack.seq) {
                        // The ack moved the cursor over own sends: the application has them
                        // if it has taken what came before.
                        self.progress.lock().own(ack.conversation, before, after);
                    }
                }
                (id, Ok(response))
            }
            ServerFrame::Error {
                id: Some(id),
                error,
            } => (id, Err(Error::from(error))),
            ServerFrame::Error { id: None, .. } | ServerFrame::HelloOk(_) => return,
            ServerFrame::Goodbye(g) => {
                let _ = self.goodbye.send(Some(g));
                return;
            }
            ServerFrame::Event(event) => return self.event(event),
        };
        if let Some(at) = pending.iter().position(|(p, _, _)| *p == id) {
            let (_, request, reply) = pending.remove(at);
            if let (
                Request::Presence {
                    subscribe,
                    unsubscribe,
                },
                Ok(Response::Presence(states)),
            ) = (&request, &answer)
            {
                for user in unsubscribe {
                    self.followed.remove(user);
                }
                self.followed.extend(subscribe.iter().copied());
                if reply.is_closed() {
                    // The driver's own re-subscription after a reconnect: the application
                    // learns the states as events.
                    for state in states {
                        self.event(Event::Presence(*state));
                    }
                }
            }
            let _ = reply.send(answer);
        }
    }

    /// Requests that follow again, on a new connection, the users followed on the old one
    /// (following belongs to a connection); answered into events.
    fn refollow(&self) -> Vec<(Request, Reply)> {
        let users: Vec<_> = self.followed.iter().copied().collect();
        users
            .chunks(chat_protocol::limits::MAX_USERS_PER_REQUEST)
            .map(|chunk| {
                let (reply, _) = oneshot::channel();
                (
                    Request::Presence {
                        subscribe: chunk.to_vec(),
                        unsubscribe: Vec::new(),
                    },
                    reply,
                )
            })
            .collect()
    }

    /// Passes an event to the application, unless it is a log entry at or before the
    /// conversation's cursor (a repeat after a resume); moves the cursor.
    fn event(&mut self, event: Event) {
        // Every entry is checked against its conversation's chain, repeats included (the
        // one at the chain's tip must carry the link held for it).
        let event = match event.into_entry() {
            Ok(entry) => {
                let mut progress = self.progress.lock();
                progress.chains.entry(&entry);
                progress.changed = true;
                entry.into_event()
            }
            Err(Event::Gap(gap)) => {
                self.progress.lock().chains.gap(&gap);
                Event::Gap(gap)
            }
            Err(other) => other,
        };
        let position = event.entry_position();
        if let Some((conversation, seq)) = position {
            match self.positions.pushed(conversation, seq) {
                Pushed::Repeat => return,
                Pushed::Own => {
                    // The application has the ack of its own message.
                    self.progress.lock().taken(conversation, seq);
                    return;
                }
                Pushed::New => {}
            }
        }
        if self.lagged && self.events.try_send(Event::Lagged).is_ok() {
            self.lagged = false;
        }
        if !self.lagged && self.events.try_send(event).is_ok() {
            return;
        }
        self.lagged = true;
        if let Some((conversation, seq)) = position {
            self.progress.lock().dropped(conversation, seq);
        }
    }

    /// Writes the cursors to the cursor file, if there is one and they changed.
    fn save_cursors(&mut self) {
        let Some(path) = &self.cursor_file else {
            return;
        };
        let saved = {
            let mut progress = self.progress.lock();
            if !progress.changed {
                return;
            }
            progress.changed = false;
            Saved {
                cursors: progress.cursors(),
                tips: progress.chains.tips(),
            }
        };
        if let Err(e) = save_cursor_file(path, &saved) {
            eprintln!("chat-sdk: cannot save cursors to {}: {e}", path.display());
            self.progress.lock().changed = true; // try again at the next save
        }
    }
}

/// Token and version refusals: reconnecting cannot help.
fn fatal(code: ErrorCode) -> bool {
    [
        ErrorCode::TOKEN_EXPIRED,
        ErrorCode::TOKEN_INVALID,
        ErrorCode::TOKEN_UNKNOWN_KEY,
        ErrorCode::TOKEN_MALFORMED,
        ErrorCode::UNKNOWN_USER,
        ErrorCode::UNSUPPORTED_VERSION,
    ]
    .contains(&code)
}

fn unanswered(pending: Vec<(RequestId, Request, Reply)>) -> Vec<(Request, Reply)> {
    pending
        .into_iter()
        .map(|(_, r, reply)| (r, reply))
        .collect()
}

async fn send_typing(live: &mut Live, update: TypingUpdate) -> Result<(), Error> {
    let frame = encode_frame_to_vec(&ClientFrame::Typing(update))
        .map_err(|e| Error::Protocol(e.to_string()))?;
    if live
        .connection
        .max_datagram_size()
        .is_some_and(|max| frame.len() <= max)
    {
        // Unreliable by design: a full datagram buffer drops it.
        let _ = live.connection.send_datagram(frame.into());
        return Ok(());
    }
    write_frame(&mut live.send, &ClientFrame::Typing(update)).await
}

/// What a cursor file keeps: the cursors, and the tips of the conversations' hash chains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Saved {
    pub(crate) cursors: Vec<Cursor>,
    pub(crate) tips: Vec<(ConversationId, Seq, Hash)>,
}

/// The cursors of a cursor file: a JSON list of `{"conversation": .., "seq": ..}`, each with
/// the conversation's chain tip when it has one (`"chain": {"seq": .., "link": "<hex>"}`). A
/// missing file is no cursors.
///
/// # Errors
/// The file exists but cannot be read or parsed.
pub(crate) fn load_cursor_file(path: &std::path::Path) -> Result<Saved, Error> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Saved::default()),
        Err(e) => return Err(Error::Config(format!("{}: {e}", path.display()))),
    };
    let invalid = |e: &dyn std::fmt::Display| Error::Config(format!("{}: {e}", path.display()));
    let saved: Vec<SavedCursor> = serde_json::from_slice(&bytes).map_err(|e| invalid(&e))?;
    let mut loaded = Saved::default();
    for c in saved {
        // A hand-edited file may name a direct conversation's pair in either order.
        let conversation = match c.conversation {
            ConversationId::Direct { low, high } => ConversationId::direct(low, high),
            other => other,
        };
        loaded.cursors.push(Cursor {
            conversation,
            seq: c.seq,
        });
        if let Some(tip) = c.chain {
            let mut link = [0u8; 32];
            hex::decode_to_slice(&tip.link, &mut link).map_err(|e| invalid(&e))?;
            loaded.tips.push((conversation, tip.seq, link));
        }
    }
    Ok(loaded)
}

/// Writes a cursor file atomically (a temp file renamed over it). A tip is kept with its
/// conversation's cursor.
fn save_cursor_file(path: &std::path::Path, saved: &Saved) -> std::io::Result<()> {
    let saved: Vec<SavedCursor> = saved
        .cursors
        .iter()
        .map(|c| SavedCursor {
            conversation: c.conversation,
            seq: c.seq,
            chain: saved
                .tips
                .iter()
                .find(|(tip, _, _)| *tip == c.conversation)
                .map(|(_, seq, link)| SavedTip {
                    seq: *seq,
                    link: hex::encode(link),
                }),
        })
        .collect();
    let json = serde_json::to_vec_pretty(&saved).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedCursor {
    conversation: ConversationId,
    seq: Seq,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chain: Option<SavedTip>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedTip {
    seq: Seq,
    link: String,
}

pub(crate) async fn write_frame(
    send: &mut quinn::SendStream,
    frame: &ClientFrame,
) -> Result<(), Error> {
    let bytes = encode_frame_to_vec(frame).map_err(|e| Error::Protocol(e.to_string()))?;
    send.write_all(&bytes)
        .await
        .map_err(|e| Error::Connect(e.to_string()))
}

async fn read_frame(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder<ServerFrame>,
) -> Result<ServerFrame, Error> {
    loop {
        if let Some(frame) = decoder
            .next_frame()
            .map_err(|e| Error::Protocol(e.to_string()))?
        {
            return Ok(frame);
        }
        match recv.read_chunk(decoder.space(), true).await {
            Ok(Some(chunk)) => decoder
                .push(&chunk.bytes)
                .map_err(|e| Error::Protocol(e.to_string()))?,
            Ok(None) | Err(_) => return Err(Error::Closed(None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::{RoomId, UserId};

    #[test]
    fn only_safe_requests_are_repeated() {
        assert!(Request::Ping.repeatable());
        let send = Request::Send(chat_protocol::SendMessage {
            conversation: ConversationId::Notes(UserId(1)),
            op: chat_protocol::OpId(9),
            content_type: chat_protocol::ContentType::TEXT,
            reply_to: None,
            body: Vec::new(),
            mentions: Vec::new(),
        });
        assert!(send.repeatable());
        assert!(!Request::JoinRoom { room: RoomId(1) }.repeatable());
        let register = Request::Register {
            name: "a".into(),
            password: "b".into(),
        };
        assert!(!register.repeatable());
    }

    #[test]
    fn own_sends_count_as_taken_only_after_what_came_before() {
        let room = ConversationId::Room(chat_protocol::RoomId(1));
        let mut progress = Progress::default();
        progress.taken(room, Seq(3));
        // Own sends 4 and 5 acknowledged right after entry 3, which the application took.
        progress.own(room, Seq(3), Seq(5));
        assert_eq!(progress.cursors()[0].seq, Seq(5));
        // Own sends 7 and 8 right after entry 6, which was queued but not taken yet: the
        // saved cursor stays before 6, so a later run gets it.
        progress.own(room, Seq(6), Seq(8));
        assert_eq!(progress.cursors()[0].seq, Seq(5));
    }

    #[test]
    fn cursor_files_round_trip_and_a_missing_one_is_empty() {
        let dir = std::env::temp_dir().join(format!("chat-sdk-cursors-{}", crate::random_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cursors.json");
        assert_eq!(load_cursor_file(&path).unwrap(), Saved::default());
        let room = ConversationId::Room(RoomId(3));
        let saved = Saved {
            cursors: vec![
                Cursor {
                    conversation: ConversationId::direct(UserId(1), UserId(2)),
                    seq: Seq(7),
                },
                Cursor {
                    conversation: room,
                    seq: Seq(4),
                },
            ],
            tips: vec![(room, Seq(5), [0xab; 32])],
        };
        save_cursor_file(&path, &saved).unwrap();
        assert_eq!(load_cursor_file(&path).unwrap(), saved);
        // A tip at or after its cursor is followed on; one before it is dropped.
        let progress = Progress::from_saved(&saved);
        assert_eq!(progress.chains.tips(), saved.tips);
        let mut behind = saved.clone();
        behind.tips[0].1 = Seq(3);
        assert!(Progress::from_saved(&behind).chains.tips().is_empty());
        // A file from before tips were kept still loads.
        let direct = r#"[{"conversation":{"room":3},"seq":4}]"#;
        std::fs::write(&path, direct).unwrap();
        assert_eq!(load_cursor_file(&path).unwrap().cursors, saved.cursors[1..]);
        std::fs::write(&path, b"not json").unwrap();
        assert!(matches!(load_cursor_file(&path), Err(Error::Config(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
