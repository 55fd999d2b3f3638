//! # chat-sdk — the Rust client for chatd
//!
//! An async client (tokio + quinn) built on `chat-protocol`: connect with a [`Trust`] choice,
//! register or log in, say hello with a token, then call one typed method per request and read
//! a stream of typed events.
//!
//! ```no_run
//! # async fn demo() -> Result<(), chat_sdk::Error> {
//! use chat_sdk::{Client, Options, Trust};
//! use chat_sdk::protocol::ConversationId;
//!
//! let mut options = Options::new("127.0.0.1:4433", Trust::CaFile("chatd-data/tls/cert.pem".into()));
//! let anonymous = Client::connect(&options).await?;
//! let grant = anonymous.login("alice", "correct horse").await?;
//! options.token = Some(grant.token);
//! let alice = Client::connect(&options).await?;
//! let me = alice.session().expect("authenticated").user;
//! alice.send_text(ConversationId::Notes(me), "buy milk").await?;
//! while let Some(event) = alice.next_event().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! One background task per client owns the QUIC connection: it writes requests, matches
//! responses to them by request id, and queues events (at most [`EVENT_BUFFER`]; an
//! application that falls further behind gets `Event::Lagged`, like a lagging connection gets
//! from the daemon, and catches up through history).
//!
//! ## Never losing the thread
//!
//! The client keeps a cursor per conversation: the last sequence number it handed to the
//! application ([`Client::cursors`]), optionally persisted in [`Options::cursor_file`]. With
//! [`Options::reconnect`] set (and a token), a lost connection is replaced automatically, with
//! exponential backoff and jitter; the new hello resumes from the cursors, so the daemon sends
//! exactly what was missed (or a `Gap` to page through history), then `CaughtUp`. Entries at
//! or before a cursor are never handed out twice. Requests that were unanswered when the
//! connection dropped are sent again if repeating them is safe — reads, marks, presence, and
//! sends, which keep their op id so the daemon stores them once — and fail with
//! [`Error::Interrupted`] otherwise (room changes, registration). Followed presence is
//! followed again, and the current states arrive as `Event::Presence`. [`Client::status`]
//! tells whether the client is connected.

#![forbid(unsafe_code)]

mod driver;
pub mod token;
mod trust;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use chat_protocol::{
    Auth, ContentType, ConversationId, ConversationPage, Cursor, DeleteMessage, DeviceId,
    EditMessage, ErrorBody, ErrorCode, Event, Goodbye, HelloOk, HistoryFrom, HistoryPage,
    HistoryQuery, Limits, Marker, MemberPage, OpId, Order, PresenceInfo, ReactMessage, Request,
    Response, Resume, Role, RoomId, RoomInfo, SendAck, SendMessage, Seq, Session, Timestamp,
    TokenGrant, TypingUpdate, UserId, UserInfo, UserRef,
};
use tokio::sync::{mpsc, oneshot, watch};

use driver::{Command, Dial, Driver};

/// Unpacks the expected response variant or reports what came instead.
macro_rules! expect_response {
    ($response:expr, $pattern:pat => $value:expr) => {
        match $response {
            $pattern => Ok($value),
            other => Err(Error::Protocol(format!("unexpected response {other:?}"))),
        }
    };
}

pub use chat_protocol as protocol;
pub use trust::{Trust, quic_client_config};

/// Events buffered for the application before it is told it lags.
pub const EVENT_BUFFER: usize = 4096;

/// Requests queued for the connection task.
const REQUEST_BUFFER: usize = 256;

/// What can go wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad options (address, trust file, fingerprint).
    #[error("configuration: {0}")]
    Config(String),
    /// The QUIC/TLS connection could not be established.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The daemon answered with an error.
    #[error("{code}: {reason}")]
    Server {
        /// The stable wire code.
        code: ErrorCode,
        /// The daemon's explanation.
        reason: String,
        /// When retrying can help: wait this long.
        retry_after_ms: Option<u32>,
    },
    /// The connection closed (with the daemon's goodbye, when it sent one).
    #[error("connection closed{}", .0.as_ref().map(|g| format!(": {} ({})", g.reason, g.code)).unwrap_or_default())]
    Closed(Option<Goodbye>),
    /// The daemon sent something this client cannot decode or did not expect.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The connection dropped before the answer came, and the request is not one that is
    /// safe to repeat: it may or may not have taken effect.
    #[error(
        "the connection dropped before the answer; the request may or may not have taken effect"
    )]
    Interrupted,
}

/// What [`Client::verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked.
    pub entries: u64,
    /// Of them, entries whose content was erased, checked by their kept digest.
    pub erased: u64,
    /// The last entry that follows the chain (0: none) ...
    pub head: Seq,
    /// ... and its link (the chain's start for 0).
    pub link: chat_protocol::Hash,
    /// The first entry that does not, if one does not.
    pub broken: Option<chat_protocol::chain::Break>,
}

impl Error {
    /// The wire error code, for errors the daemon sent.
    #[must_use]
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<ErrorBody> for Error {
    fn from(body: ErrorBody) -> Self {
        Error::Server {
            code: body.code,
            reason: body.reason,
            retry_after_ms: body.retry_after_ms,
        }
    }
}

/// How to reach and trust the daemon, and who this device is.
#[derive(Clone, Debug)]
pub struct Options {
    /// `HOST:PORT` of the daemon's UDP endpoint.
    pub server: String,
    /// Which certificate to accept.
    pub trust: Trust,
    /// This device (keep it stable per installation).
    pub device: DeviceId,
    /// An access token: hello authenticates with it. `None`: anonymous (register, log in).
    pub token: Option<String>,
    /// Where a fresh token comes from (the app's backend) when the daemon ends the session
    /// because its token expired (`Goodbye(TOKEN_EXPIRED)`), or refuses a reconnect's token
    /// as expired: with `reconnect`, the client then reconnects with the new token and
    /// resumes, losing nothing. `None`: an expired token ends the client.
    pub token_source: Option<TokenSource>,
    /// Client software name sent in the hello.
    pub client_name: String,
    /// Reconnect automatically when the connection is lost (needs `token`). `None`: a lost
    /// connection ends the client.
    pub reconnect: Option<Reconnect>,
    /// Where the per-conversation cursors are kept between runs. When the file holds cursors,
    /// the first hello resumes from them too, so what arrived while the program was not
    /// running is delivered first.
    pub cursor_file: Option<PathBuf>,
    /// QUIC keep-alive: how often an otherwise idle connection sends a packet. It bounds how
    /// long a client takes to notice a daemon that crashed and came back (the new process
    /// answers that packet with a stateless reset, and the client reconnects and resumes):
    /// 1 s by default. Each keep-alive is one small packet and its acknowledgement; an app
    /// on a battery-powered or metered device may choose 10 to 25 s (NAT bindings usually
    /// last 30 s).
    pub keep_alive: Duration,
    /// A connection from which nothing arrives for this long (not even the answers to its
    /// keep-alives) is given up, and replaced with `reconnect`: how long a client takes to
    /// notice a daemon that is down or unreachable. 10 s by default; the daemon's own limit
    /// (`limits.idle_timeout_secs`) applies when it is lower. Longer than `keep_alive`.
    pub idle_timeout: Duration,
}

/// Gives a fresh access token, or says why it cannot ([`Options::token_source`]): usually a
/// call to the app's backend, which mints tokens with the daemon's secret.
#[derive(Clone)]
pub struct TokenSource(std::sync::Arc<dyn Fn() -> TokenFuture + Send + Sync>);

type TokenFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>;

impl TokenSource {
    /// A source that runs `fetch` for each new token.
    pub fn new<F, Fut>(fetch: F) -> TokenSource
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, String>> + Send + 'static,
    {
        TokenSource(std::sync::Arc::new(move || Box::pin(fetch())))
    }

    /// A fresh token, or why there is none.
    pub(crate) async fn fetch(&self) -> Result<String, String> {
        (self.0)().await
    }
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSource")
    }
}

/// How to reconnect: exponential backoff from `initial_delay` to `max_delay`, each wait
/// shortened by a random 0-50 % so clients of a restarted daemon do not return all at once.
#[derive(Clone, Debug)]
pub struct Reconnect {
    /// The first wait.
    pub initial_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// Stop trying after this long without a connection; `None`: never. A refused token
    /// (expired, unknown key, ...) stops at once.
    pub give_up_after: Option<Duration>,
    /// How long one attempt may take (a daemon that is down does not answer at all).
    pub connect_timeout: Duration,
}

impl Default for Reconnect {
    /// 100 ms doubling up to 5 s, 5 s per attempt; never gives up.
    fn default() -> Self {
        Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            give_up_after: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The state of a client's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Connected and authenticated (or anonymous).
    Connected,
    /// The connection was lost; trying again (attempt number, from 1).
    Reconnecting {
        /// How many attempts so far, counting the one under way.
        attempt: u32,
    },
    /// Closed for good: by [`Client::close`], or the connection was lost and reconnecting is
    /// off or gave up.
    Closed,
}

impl Options {
    /// Options with a random device id and no token.
    #[must_use]
    pub fn new(server: impl Into<String>, trust: Trust) -> Options {
        Options {
            server: server.into(),
            trust,
            device: DeviceId(random_u64()),
            token: None,
            token_source: None,
            client_name: concat!("chat-sdk/", env!("CARGO_PKG_VERSION")).into(),
            reconnect: None,
            cursor_file: None,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// The log position of an entry event (a message, a membership change, an edit, a
/// deletion or an erased edit).
#[must_use]
pub fn position(event: &Event) -> Option<(ConversationId, Seq)> {
    event.entry_position()
}

/// A random `u64` from the OS (device ids, op ids).
#[must_use]
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // The OS generator does not fail on supported platforms; a zero id still works.
    let _ = getrandom(&mut bytes);
    u64::from_le_bytes(bytes)
}

fn getrandom(bytes: &mut [u8]) -> Result<(), rustls::Error> {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(bytes)
        .map_err(|_| rustls::Error::FailedToGetRandomBytes)
}

/// A connection to the daemon (and, with [`Options::reconnect`], its replacements).
pub struct Client {
    commands: mpsc::Sender<Command>,
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    progress: std::sync::Arc<parking_lot::Mutex<driver::Progress>>,
    hello: HelloOk,
    goodbye: watch::Receiver<Option<Goodbye>>,
    status: watch::Receiver<Status>,
    closing: std::sync::Arc<tokio::sync::Notify>,
}

impl Client {
    /// Connects, says hello (with `options.token` when set) and starts the connection task.
    /// With a cursor file holding cursors, the hello resumes from them. With reconnecting on
    /// and no stored cursors, the cursors start at the heads of the user's conversations, so a
    /// later resume asks only for what is new.
    ///
    /// # Errors
    /// Bad options, an unreadable cursor file, an unreachable daemon or refused certificate,
    /// no common protocol version. A refused token is [`Error::Server`] with its code.
    pub async fn connect(options: &Options) -> Result<Client, Error> {
        let addr = resolve(&options.server)?;
        let host = options
            .server
            .rsplit_once(':')
            .map_or(options.server.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .map_err(|e| Error::Config(format!("{e}")))?;
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| Error::Connect(e.to_string()))?;
        if options.keep_alive.is_zero() || options.keep_alive >= options.idle_timeout {
            return Err(Error::Config(
                "keep_alive must be above zero and below idle_timeout".into(),
            ));
        }
        let mut config = trust::quic_client_config(&options.trust)?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(options.keep_alive))
            .max_idle_timeout(Some(
                options
                    .idle_timeout
                    .try_into()
                    .map_err(|_| Error::Config("idle_timeout too large".into()))?,
            ));
        config.transport_config(std::sync::Arc::new(transport));
        endpoint.set_default_client_config(config);
        let saved = match &options.cursor_file {
            Some(path) => driver::load_cursor_file(path)?,
            None => driver::Saved::default(),
        };
        let stored = saved.cursors.clone();
        let dial = Dial {
            endpoint,
            addr,
            host: host.to_owned(),
            client_name: options.client_name.clone(),
            device: options.device,
            token: options.token.clone(),
            token_source: options.token_source.clone(),
        };
        let resume = (!stored.is_empty()).then(|| Resume {
            cursors: stored.clone(),
        });
        let (live, hello) = dial.connect(resume).await?;
        let (commands, command_rx) = mpsc::channel(REQUEST_BUFFER);
        let (event_tx, events) = mpsc::channel(EVENT_BUFFER);
        let (goodbye_tx, goodbye) = watch::channel(None);
        let (status_tx, status) = watch::channel(Status::Connected);
        let closing = std::sync::Arc::new(tokio::sync::Notify::new());
        let baseline = options.reconnect.is_some() && hello.session.is_some() && stored.is_empty();
        let progress = std::sync::Arc::new(parking_lot::Mutex::new(driver::Progress::from_saved(
            &saved,
        )));
        let driver = Driver::new(
            dial,
            options,
            &stored,
            std::sync::Arc::clone(&progress),
            driver::Channels {
                commands: command_rx,
                closing: std::sync::Arc::clone(&closing),
                events: event_tx,
                goodbye: goodbye_tx,
                status: status_tx,
            },
        );
        tokio::spawn(driver.run(live));
        let client = Client {
            commands,
            events: tokio::sync::Mutex::new(events),
            progress,
            hello,
            goodbye,
            status,
            closing,
        };
        if baseline {
            client.start_cursors_at_heads().await?;
        }
        Ok(client)
    }

    /// Sets the cursor of every conversation of the user without one to its head.
    async fn start_cursors_at_heads(&self) -> Result<(), Error> {
        let mut after = None;
        let mut heads = Vec::new();
        loop {
            let page = self.conversations(after, self.limits().max_page).await?;
            heads.extend(page.conversations.iter().map(|c| Cursor {
                conversation: c.conversation,
                seq: c.head,
            }));
            match page.next {
                Some(next) if heads.len() < chat_protocol::limits::MAX_RESUME_CURSORS => {
                    after = Some(next);
                }
                _ => break,
            }
        }
        self.commands
            .send(Command::Baseline(heads))
            .await
            .map_err(|_| Error::Closed(self.goodbye()))
    }

    /// Who the connection is authenticated as, if the hello carried a valid token.
    #[must_use]
    pub fn session(&self) -> Option<&Session> {
        self.hello.session.as_ref()
    }

    /// The limits the daemon enforces.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.hello.limits
    }

    /// The daemon's goodbye, once it said one.
    #[must_use]
    pub fn goodbye(&self) -> Option<Goodbye> {
        self.goodbye.borrow().clone()
    }

    /// The connection's state now.
    #[must_use]
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// A receiver of the connection's state, to wait for changes
    /// (`watch::Receiver::changed`).
    #[must_use]
    pub fn status_changes(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The per-conversation cursors: the last sequence number the application has taken
    /// with [`Client::next_event`] (or sent itself), and never past an entry it missed because
    /// it fell behind (it got `Lagged`). What [`Options::cursor_file`] keeps.
    #[must_use]
    pub fn cursors(&self) -> Vec<Cursor> {
        self.progress.lock().cursors()
    }

    /// What checking the conversations' hash chains found so far (docs/PROTOCOL.md section
    /// 8.12): entries checked, chains taken on trust (a conversation's first link seen, or
    /// after a hole), and the chains that broke — a daemon (or store) that altered, dropped
    /// or reordered an entry, or gave this client another history than before.
    #[must_use]
    pub fn chain_report(&self) -> chat_protocol::chain::Report {
        self.progress.lock().chains.report().clone()
    }

    /// The last entry of `conversation` whose chain this client followed, and its link: two
    /// clients holding the same link for the same entry hold the same history up to it.
    #[must_use]
    pub fn chain_tip(&self, conversation: ConversationId) -> Option<(Seq, chat_protocol::Hash)> {
        self.progress.lock().chains.tip(conversation)
    }

    /// Sends any request and waits for its response.
    ///
    /// # Errors
    /// [`Error::Server`] with the daemon's code, or [`Error::Closed`].
    pub async fn request(&self, request: Request) -> Result<Response, Error> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Request { request, reply })
            .await
            .is_err()
        {
            return Err(Error::Closed(self.goodbye()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Error::Closed(self.goodbye())))
    }

    /// The next event; `None` once the connection is closed and every event was read.
    pub async fn next_event(&self) -> Option<Event> {
        let event = self.next_event_unmarked().await?;
        if let Some((conversation, seq)) = position(&event) {
            self.mark_handled(conversation, seq);
        }
        Some(event)
    }

    /// Like [`Client::next_event`], but the cursors do not move: the application says what
    /// it has dealt with (shown, stored) with [`Client::mark_handled`], and the cursor file
    /// keeps only that, so a program that skips or does not finish an event sees it again
    /// in its next run.
    pub async fn next_event_unmarked(&self) -> Option<Event> {
        self.events.lock().await.recv().await
    }

    /// The application has dealt with entry `seq` of `conversation` (and needs nothing
    /// before it again): [`Client::cursors`] and the cursor file move to it.
    pub fn mark_handled(&self, conversation: ConversationId, seq: Seq) {
        self.progress.lock().taken(conversation, seq);
    }

    /// Closes the connection (code 0) and waits, briefly, until the daemon has been told.
    /// The cursor file, if any, is written first.
    pub async fn close(self) {
        // Heard even while the client is reconnecting and not reading commands.
        self.closing.notify_one();
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }

    /// Creates an account; returns a token for it.
    ///
    /// # Errors
    /// `USERNAME_TAKEN`, `INVALID_USERNAME`, `INVALID_PASSWORD`, or a connection error.
    pub async fn register(&self, name: &str, password: &str) -> Result<TokenGrant, Error> {
        let request = Request::Register {
            name: name.into(),
            password: password.into(),
        };
        expect_response!(self.request(request).await?, Response::Token(grant) => grant)
    }

    /// Exchanges a password for a token.
    ///
    /// # Errors
    /// `WRONG_PASSWORD`, `UNKNOWN_USER`, or a connection error.
    pub async fn login(&self, name: &str, password: &str) -> Result<TokenGrant, Error> {
        let request = Request::Login {
            name: name.into(),
            password: password.into(),
        };
        expect_response!(self.request(request).await?, Response::Token(grant) => grant)
    }

    /// Authenticates an anonymous connection.
    ///
    /// # Errors
    /// A token error code, or a connection error.
    pub async fn authenticate(&self, token: &str) -> Result<Session, Error> {
        let request = Request::Authenticate(Auth {
            token: token.into(),
            resume: None,
        });
        expect_response!(self.request(request).await?, Response::Session(session) => session)
    }

    /// Round trip; returns the daemon's clock.
    ///
    /// # Errors
    /// A connection error.
    pub async fn ping(&self) -> Result<Timestamp, Error> {
        expect_response!(self.request(Request::Ping).await?, Response::Pong { server_time } => server_time)
    }

    /// Posts a message with a fresh op id. Retrying a failed call with [`Client::send_with_op`]
    /// and the same op id stores it at most once.
    ///
    /// # Errors
    /// `NOT_MEMBER`, `BODY_TOO_LARGE`, `INVALID_CONTENT`, `RATE_LIMITED`, or a connection error.
    pub async fn send(
        &self,
        conversation: ConversationId,
        content_type: ContentType,
        body: Vec<u8>,
        reply_to: Option<Seq>,
    ) -> Result<SendAck, Error> {
        self.send_with_op(
            conversation,
            OpId(random_u64()),
            content_type,
            body,
            reply_to,
        )
        .await
    }

    /// Posts a message with a given op id (idempotent per sender and op id).
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn send_with_op(
        &self,
        conversation: ConversationId,
        op: OpId,
        content_type: ContentType,
        body: Vec<u8>,
        reply_to: Option<Seq>,
    ) -> Result<SendAck, Error> {
        self.send_message(SendMessage {
            conversation,
            op,
            content_type,
            reply_to,
            body,
            mentions: Vec::new(),
        })
        .await
    }

    /// Posts a message given whole: with mentions (members of the conversation, listed in
    /// the bridge's `message.created` event for push notifications), a reply reference, and
    /// the op id it is retried with.
    ///
    /// # Errors
    /// As [`Client::send`], and `INVALID_MENTION` (a mention of a non-member, or of one user
    /// twice).
    pub async fn send_message(&self, message: SendMessage) -> Result<SendAck, Error> {
        let request = Request::Send(message);
        expect_response!(self.request(request).await?, Response::Sent(ack) => ack)
    }

    /// Posts a UTF-8 text message.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn send_text(
        &self,
        conversation: ConversationId,
        text: &str,
    ) -> Result<SendAck, Error> {
        self.send(
            conversation,
            ContentType::TEXT,
            text.as_bytes().to_vec(),
            None,
        )
        .await
    }

    /// Replaces the content of one of this user's messages, with a fresh op id (retry with
    /// [`Client::edit_with_op`] and the same op id to edit at most once). The ack names the
    /// edit's own entry; members get `Event::Edit`, and history shows the message with its
    /// new content (`Message::edited`).
    ///
    /// # Errors
    /// `UNKNOWN_MESSAGE` (no such message), `NOT_AUTHOR`, `MESSAGE_DELETED`, `TOO_MANY_EDITS`,
    /// `BODY_TOO_LARGE`, `INVALID_CONTENT`, `RATE_LIMITED`, or a connection error.
    pub async fn edit(
        &self,
        conversation: ConversationId,
        target: Seq,
        content_type: ContentType,
        body: Vec<u8>,
    ) -> Result<SendAck, Error> {
        let op = OpId(random_u64());
        self.edit_with_op(conversation, op, target, content_type, body)
            .await
    }

    /// As [`Client::edit`], with a given op id (idempotent per user and op id).
    ///
    /// # Errors
    /// As [`Client::edit`].
    pub async fn edit_with_op(
        &self,
        conversation: ConversationId,
        op: OpId,
        target: Seq,
        content_type: ContentType,
        body: Vec<u8>,
    ) -> Result<SendAck, Error> {
        let request = Request::Edit(EditMessage {
            conversation,
            op,
            target,
            content_type,
            body,
        });
        expect_response!(self.request(request).await?, Response::Sent(ack) => ack)
    }

    /// Deletes a message (this user's, or in a room where this user is an admin or the
    /// owner, anyone's): its content and its edits' content are erased from the daemon's
    /// store. The ack names the deletion's entry; members get `Event::Deletion`.
    ///
    /// # Errors
    /// `UNKNOWN_MESSAGE`, `NOT_AUTHOR`, `MESSAGE_DELETED`, `RATE_LIMITED`, or a connection
    /// error.
    pub async fn delete(
        &self,
        conversation: ConversationId,
        target: Seq,
    ) -> Result<SendAck, Error> {
        let request = Request::Delete(DeleteMessage {
            conversation,
            op: OpId(random_u64()),
            target,
        });
        expect_response!(self.request(request).await?, Response::Sent(ack) => ack)
    }

    /// Adds this user's reaction to a message (any member may react, to any message that is
    /// not deleted). The ack names the reaction's entry; members get `Event::Reaction`, and
    /// history shows the message with its reactions (`Message::reactions`).
    ///
    /// # Errors
    /// `INVALID_REACTION`, `ALREADY_REACTED`, `TOO_MANY_REACTIONS`, `UNKNOWN_MESSAGE`,
    /// `MESSAGE_DELETED`, `RATE_LIMITED`, or a connection error.
    pub async fn react(
        &self,
        conversation: ConversationId,
        target: Seq,
        reaction: &str,
    ) -> Result<SendAck, Error> {
        let op = OpId(random_u64());
        self.react_with_op(conversation, op, target, reaction, false)
            .await
    }

    /// Takes back this user's reaction to a message.
    ///
    /// # Errors
    /// `NOT_REACTED`, and as [`Client::react`].
    pub async fn unreact(
        &self,
        conversation: ConversationId,
        target: Seq,
        reaction: &str,
    ) -> Result<SendAck, Error> {
        let op = OpId(random_u64());
        self.react_with_op(conversation, op, target, reaction, true)
            .await
    }

    /// As [`Client::react`] (or, with `remove`, [`Client::unreact`]) with a given op id
    /// (idempotent per user and op id).
    ///
    /// # Errors
    /// As [`Client::react`] and [`Client::unreact`].
    pub async fn react_with_op(
        &self,
        conversation: ConversationId,
        op: OpId,
        target: Seq,
        reaction: &str,
        remove: bool,
    ) -> Result<SendAck, Error> {
        let request = Request::React(ReactMessage {
            conversation,
            op,
            target,
            reaction: reaction.to_owned(),
            remove,
        });
        expect_response!(self.request(request).await?, Response::Sent(ack) => ack)
    }

    /// Reads one page of a conversation's log.
    ///
    /// # Errors
    /// `NOT_MEMBER`, `INVALID_REQUEST` (limit), or a connection error.
    pub async fn history(
        &self,
        conversation: ConversationId,
        from: HistoryFrom,
        limit: u16,
        order: Order,
    ) -> Result<HistoryPage, Error> {
        self.page(conversation, from, limit, order, None).await
    }

    /// Reads one page of a thread: the messages that reply to `root`, paged by their own
    /// sequence numbers as [`Client::history`] pages the whole log.
    ///
    /// # Errors
    /// `UNKNOWN_MESSAGE` (no entry `root`), and as [`Client::history`].
    pub async fn thread(
        &self,
        conversation: ConversationId,
        root: Seq,
        from: HistoryFrom,
        limit: u16,
        order: Order,
    ) -> Result<HistoryPage, Error> {
        self.page(conversation, from, limit, order, Some(root))
            .await
    }

    /// Checks a conversation's whole log, page by page from its first entry, against its hash
    /// chain (docs/PROTOCOL.md section 8.12), and against the link this client was given
    /// before for the entry at its chain tip ([`Client::chain_tip`]), if it holds one. The
    /// head's link is what to compare with other members to show that they were all given
    /// the same history.
    ///
    /// # Errors
    /// `NOT_MEMBER`, or a connection error.
    pub async fn verify(&self, conversation: ConversationId) -> Result<Verified, Error> {
        let held = self.chain_tip(conversation);
        let mut verifier = chat_protocol::chain::Verifier::new(conversation);
        let (mut entries, mut erased) = (0, 0);
        let broken = 'pages: loop {
            let after = verifier.tip().0;
            let limit = self.hello.limits.max_page;
            let page = self
                .history(
                    conversation,
                    HistoryFrom::After(Seq(after)),
                    limit,
                    Order::OldestFirst,
                )
                .await?;
            for entry in &page.entries {
                let seq = entry.seq();
                let mut checked = verifier.check_entry(entry);
                if checked.is_ok()
                    && let Some((held_seq, held_link)) = held
                    && held_seq == seq
                    && held_link != entry.chain().link
                {
                    checked = Err(chat_protocol::chain::ChainError::Link);
                }
                if let Err(error) = checked {
                    break 'pages Some(chat_protocol::chain::Break {
                        conversation,
                        seq,
                        error,
                    });
                }
                entries += 1;
                erased += u64::from(chat_protocol::chain::erased(entry));
            }
            if !page.more || page.entries.is_empty() {
                break None;
            }
        };
        let (head, link) = verifier.tip();
        Ok(Verified {
            entries,
            erased,
            head: Seq(head),
            link,
            broken,
        })
    }

    async fn page(
        &self,
        conversation: ConversationId,
        from: HistoryFrom,
        limit: u16,
        order: Order,
        thread: Option<Seq>,
    ) -> Result<HistoryPage, Error> {
        let request = Request::History(HistoryQuery {
            conversation,
            from,
            limit,
            order,
            thread,
        });
        expect_response!(self.request(request).await?, Response::History(page) => page)
    }

    /// Says that this user is typing in a conversation (`active`), or stopped. Sent as a QUIC
    /// datagram (unreliable, never stored); repeat it before the typing TTL runs out.
    ///
    /// # Errors
    /// A connection error.
    pub async fn typing(&self, conversation: ConversationId, active: bool) -> Result<(), Error> {
        let update = TypingUpdate {
            conversation,
            active,
        };
        self.commands
            .send(Command::Typing(update))
            .await
            .map_err(|_| Error::Closed(self.goodbye()))
    }

    /// Moves this user's delivered or read marker in a conversation (a lower value is
    /// ignored; reading implies delivery).
    ///
    /// # Errors
    /// `NOT_MEMBER`, `INVALID_REQUEST` (beyond the newest entry), or a connection error.
    pub async fn mark(
        &self,
        conversation: ConversationId,
        marker: Marker,
        seq: Seq,
    ) -> Result<(), Error> {
        expect_response!(self.request(Request::Mark { conversation, marker, seq }).await?, Response::Ok => ())
    }

    /// Creates a room; the caller becomes its owner.
    ///
    /// # Errors
    /// `ROOM_NAME_TAKEN`, `INVALID_ROOM_NAME`, or a connection error.
    pub async fn create_room(&self, name: &str, invite_only: bool) -> Result<RoomInfo, Error> {
        let request = Request::CreateRoom {
            name: name.into(),
            invite_only,
        };
        expect_response!(self.request(request).await?, Response::Room(info) => info)
    }

    /// Finds a room by name.
    ///
    /// # Errors
    /// `UNKNOWN_ROOM`, or a connection error.
    pub async fn find_room(&self, name: &str) -> Result<RoomInfo, Error> {
        expect_response!(self.request(Request::FindRoom { name: name.into() }).await?, Response::Room(info) => info)
    }

    /// Joins a room.
    ///
    /// # Errors
    /// `INVITE_REQUIRED`, `BANNED`, `ALREADY_MEMBER`, `ROOM_FULL`, `UNKNOWN_ROOM`, or a
    /// connection error.
    pub async fn join_room(&self, room: RoomId) -> Result<RoomInfo, Error> {
        expect_response!(self.request(Request::JoinRoom { room }).await?, Response::Room(info) => info)
    }

    /// Leaves a room.
    ///
    /// # Errors
    /// `NOT_MEMBER`, `FORBIDDEN` (the owner), or a connection error.
    pub async fn leave_room(&self, room: RoomId) -> Result<(), Error> {
        expect_response!(self.request(Request::LeaveRoom { room }).await?, Response::Ok => ())
    }

    /// Invites a user to a room.
    ///
    /// # Errors
    /// `FORBIDDEN`, `ALREADY_MEMBER`, `BANNED`, or a connection error.
    pub async fn invite(&self, room: RoomId, user: UserId) -> Result<(), Error> {
        expect_response!(self.request(Request::Invite { room, user }).await?, Response::Ok => ())
    }

    /// Removes a member from a room.
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_MEMBER`, or a connection error.
    pub async fn kick(&self, room: RoomId, user: UserId) -> Result<(), Error> {
        expect_response!(self.request(Request::Kick { room, user }).await?, Response::Ok => ())
    }

    /// Removes a user from a room and bars them.
    ///
    /// # Errors
    /// `FORBIDDEN`, or a connection error.
    pub async fn ban(&self, room: RoomId, user: UserId) -> Result<(), Error> {
        expect_response!(self.request(Request::Ban { room, user }).await?, Response::Ok => ())
    }

    /// Lifts a ban.
    ///
    /// # Errors
    /// `FORBIDDEN`, `INVALID_REQUEST` (not banned), or a connection error.
    pub async fn unban(&self, room: RoomId, user: UserId) -> Result<(), Error> {
        expect_response!(self.request(Request::Unban { room, user }).await?, Response::Ok => ())
    }

    /// Sets a member's role (owner only; `Owner` transfers ownership).
    ///
    /// # Errors
    /// `FORBIDDEN`, `NOT_MEMBER`, or a connection error.
    pub async fn set_role(&self, room: RoomId, user: UserId, role: Role) -> Result<(), Error> {
        expect_response!(self.request(Request::SetRole { room, user, role }).await?, Response::Ok => ())
    }

    /// A page of a room's members.
    ///
    /// # Errors
    /// `NOT_MEMBER`, or a connection error.
    pub async fn members(
        &self,
        room: RoomId,
        after: Option<UserId>,
        limit: u16,
    ) -> Result<MemberPage, Error> {
        expect_response!(self.request(Request::Members { room, after, limit }).await?, Response::Members(page) => page)
    }

    /// A page of the user's conversations.
    ///
    /// # Errors
    /// A connection error.
    pub async fn conversations(
        &self,
        after: Option<ConversationId>,
        limit: u16,
    ) -> Result<ConversationPage, Error> {
        expect_response!(self.request(Request::Conversations { after, limit }).await?, Response::Conversations(page) => page)
    }

    /// Resolves users by id or name; unknown ones are left out.
    ///
    /// # Errors
    /// A connection error.
    pub async fn lookup_users(&self, users: Vec<UserRef>) -> Result<Vec<UserInfo>, Error> {
        expect_response!(self.request(Request::LookupUsers(users)).await?, Response::Users(users) => users)
    }

    /// Resolves one user name to its id.
    ///
    /// # Errors
    /// `UNKNOWN_USER` when there is no such user, or a connection error.
    pub async fn user_id(&self, name: &str) -> Result<UserId, Error> {
        self.lookup_users(vec![UserRef::Name(name.into())])
            .await?
            .first()
            .map(|u| u.user)
            .ok_or_else(|| Error::Server {
                code: ErrorCode::UNKNOWN_USER,
                reason: format!("no user named {name}"),
                retry_after_ms: None,
            })
    }
}

impl Client {
    /// Changes which users' presence this connection follows (yourself, users you have a
    /// direct conversation with, members of your rooms); returns the current state of the
    /// newly followed users. Changes then arrive as `Event::Presence`.
    ///
    /// # Errors
    /// `FORBIDDEN` (a user you share no conversation with: nothing changes),
    /// `INVALID_REQUEST` (too many users), or a connection error.
    pub async fn presence(
        &self,
        subscribe: Vec<UserId>,
        unsubscribe: Vec<UserId>,
    ) -> Result<Vec<PresenceInfo>, Error> {
        let request = Request::Presence {
            subscribe,
            unsubscribe,
        };
        expect_response!(self.request(request).await?, Response::Presence(states) => states)
    }
}

fn resolve(server: &str) -> Result<SocketAddr, Error> {
    server
        .to_socket_addrs()
        .map_err(|e| Error::Config(format!("{server}: {e}")))?
        .next()
        .ok_or_else(|| Error::Config(format!("{server}: no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex64 = "ab".repeat(32);
        assert!(matches!(Trust::fingerprint(&hex64), Ok(Trust::Fingerprint(f)) if f == [0xab; 32]));
        let colons = vec!["ab"; 32].join(":");
        assert!(
            matches!(Trust::fingerprint(&colons), Ok(Trust::Fingerprint(f)) if f == [0xab; 32])
        );
        assert!(Trust::fingerprint("abcd").is_err());
    }

    #[test]
    fn server_errors_keep_their_code() {
        let e: Error = ErrorBody {
            code: ErrorCode::NOT_MEMBER,
            reason: "no".into(),
            retry_after_ms: None,
        }
        .into();
        assert_eq!(e.code(), Some(ErrorCode::NOT_MEMBER));
        assert_eq!(Error::Closed(None).code(), None);
    }
}
