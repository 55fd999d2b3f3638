//! The simulated clients' connections: each a real [`Session`] with real budgets, fed the
//! events the owners publish (to the connections placed when they publish, as the
//! connection shards are), catching up after every (re)connection and after a lag with
//! pages the read pool reads from what is stored when it runs, and read by the client a few
//! frames at a time.
//!
//! What it checks, per connection and from each catch-up on (an epoch): every entry arrives
//! once, in order, after the cursor the catch-up started from, and durable; no connection
//! queues more than `outgoing_queue` events; at the end, each client holds its
//! conversations' whole logs (events, replays and its own acks).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::{
    ConversationId, Cursor, DeviceId, ErrorCode, Event, Resume, Seq, ServerFrame, UserId,
    decode_frame,
};

use super::{Message, Node, World};
use crate::budget::UserBudget;
use crate::shard::accounts::Authenticated;
use crate::shard::session::{Limits, Live, Session};
use crate::shard::{ConnId, ConnRef, Position, encode};
use crate::store::CatchUp;

/// The bytes reserved for a catch-up page.
const PAGE: usize = 4096;

pub(super) const LIMITS: Limits = Limits {
    // Room for a page and a few frames, so pages wait for room (parked) now and then.
    connection_memory: PAGE + 256,
    max_in_flight: 16,
    // Small, so connections lag, during catch-ups too.
    outgoing_queue: 4,
};

/// A client's connection.
pub(super) struct Conn {
    pub(super) generation: u64,
    session: Session,
    /// The running catch-up's reading state (next seq per conversation) while it is parked
    /// or between pages; `None` while a page is being read or when none runs.
    parked: Option<BTreeMap<ConversationId, Seq>>,
    /// Since the last catch-up started: per conversation, the cursor it started from and the
    /// last entry received since (by event or replay).
    epoch: HashMap<ConversationId, (Seq, Seq)>,
    catching_up: bool,
    lagged: bool,
}

/// The id a client's connection has, by generation (for a send's `except`).
pub(super) fn conn_id(user: u64, generation: u64) -> ConnId {
    ConnId(user << 32 | generation)
}

impl World {
    /// The user's conversations in the simulation (direct ones with everyone, notes included).
    fn conversations_of(&self, user: u64) -> Vec<ConversationId> {
        (1..=self.users)
            .map(|peer| ConversationId::direct(UserId(user), UserId(peer)))
            .collect()
    }

    /// What the client holds of `conversation` without a hole.
    fn cursor(&self, user: u64, conversation: ConversationId) -> Seq {
        let got = self.clients[&user].got.get(&conversation);
        let mut seq = 0;
        while got.is_some_and(|got| got.contains(&Seq(seq + 1))) {
            seq += 1;
        }
        Seq(seq)
    }

    /// The client (re)connects: its old connection (if any) ends, a new session is set and
    /// placed, and a catch-up from its cursors starts.
    pub(super) fn connect(&mut self, user: u64) {
        self.disconnect(user);
        let client = self.clients.get_mut(&user).expect("a client");
        client.generation += 1;
        let mut session = Session::new(Arc::clone(&self.daemon));
        let hello = chat_protocol::ClientFrame::Hello(chat_protocol::Hello {
            versions: chat_protocol::SUPPORTED_VERSIONS,
            client: "sim".into(),
            device: DeviceId(1),
            auth: None,
        });
        session.frame(hello, std::time::Instant::now());
        let auth = Authenticated {
            user: UserId(user),
            name: format!("user{user}"),
            expires_at: u64::MAX,
            issued_at: None,
            mark: 0,
        };
        session.started(auth).expect("after the hello");
        session.user_budget(Arc::clone(&client.budget));
        client.conn = Some(Conn {
            generation: client.generation,
            session,
            parked: None,
            epoch: HashMap::new(),
            catching_up: false,
            lagged: false,
        });
        self.stats.connections += 1;
        self.sync(user);
    }

    /// The client's connection ends (or the daemon crashed): what it held goes back.
    pub(super) fn disconnect(&mut self, user: u64) {
        let client = self.clients.get_mut(&user).expect("a client");
        if let Some(mut conn) = client.conn.take() {
            conn.session.release_all();
        }
    }

    /// A catch-up from the client's cursors (after connecting, or a `Sync` after a lag). A
    /// `Sync` while one runs is refused.
    pub(super) fn sync(&mut self, user: u64) {
        let cursors: Vec<Cursor> = self
            .conversations_of(user)
            .into_iter()
            .map(|conversation| Cursor {
                conversation,
                seq: self.cursor(user, conversation),
            })
            .collect();
        let client = self.clients.get_mut(&user).expect("a client");
        let Some(conn) = client.conn.as_mut() else {
            return;
        };
        let resume = Resume {
            cursors: cursors.clone(),
        };
        match conn.session.start_catch_up(&resume, 1_000, 100_000) {
            Ok(_) => assert!(!conn.catching_up, "a second catch-up started"),
            Err(refusal) => {
                assert!(
                    conn.catching_up,
                    "refused {refusal:?} with no catch-up running"
                );
                assert_eq!(refusal.0, ErrorCode::INVALID_REQUEST);
                self.stats.syncs_refused += 1;
                return;
            }
        }
        self.stats.catch_ups += 1;
        conn.catching_up = true;
        conn.lagged = false;
        conn.epoch = cursors
            .iter()
            .map(|c| (c.conversation, (c.seq, c.seq)))
            .collect();
        let reading = cursors.iter().map(|c| (c.conversation, c.seq)).collect();
        conn.parked = Some(reading);
        self.next_page(user);
    }

    /// Asks the pool for the next page of the running catch-up if it fits the budgets; else
    /// it stays parked until the client reads.
    fn next_page(&mut self, user: u64) {
        let client = self.clients.get_mut(&user).expect("a client");
        let Some(conn) = client.conn.as_mut() else {
            return;
        };
        if conn.parked.is_none() {
            return;
        }
        if !conn.session.reserve_page(PAGE, &LIMITS) {
            conn.session
                .park(Box::new(CatchUp::new(UserId(user), HashMap::new(), 0, 0)));
            self.stats.parked += 1;
            return;
        }
        let reading = conn.parked.take().expect("parked");
        let generation = conn.generation;
        self.send(
            Node::Client(user),
            Node::Pool,
            Message::PageRead {
                user,
                generation,
                reading,
            },
        );
    }

    /// The pool reads a page: a few entries after the reading position, of one conversation
    /// after another, from what is stored now.
    pub(super) fn read_page(
        &mut self,
        user: u64,
        generation: u64,
        mut reading: BTreeMap<ConversationId, Seq>,
    ) {
        let mut left = 1 + self.rng.below(4);
        let mut frames = Vec::new();
        for (conversation, next) in &mut reading {
            let head = self.store.head(*conversation);
            while left > 0 && *next < head {
                next.0 += 1;
                left -= 1;
                let Some(entry) = self.store.entry(*conversation, *next) else {
                    panic!("the stored log of {conversation} has a hole at {next:?}");
                };
                let position = (*conversation, *next);
                frames.push((
                    Some(position),
                    encode(&ServerFrame::Event(entry.into_event())),
                ));
            }
        }
        let last = reading
            .iter()
            .all(|(conversation, next)| *next >= self.store.head(*conversation));
        self.send(
            Node::Pool,
            Node::Client(user),
            Message::Page {
                generation,
                frames,
                next: (!last).then_some(reading),
            },
        );
    }

    /// A page arrived at the client's connection.
    pub(super) fn page_arrived(
        &mut self,
        user: u64,
        generation: u64,
        frames: Vec<(Option<Position>, Bytes)>,
        next: Option<BTreeMap<ConversationId, Seq>>,
    ) {
        let client = self.clients.get_mut(&user).expect("a client");
        let Some(conn) = client.conn.as_mut().filter(|c| c.generation == generation) else {
            return; // that connection is gone
        };
        let replayed = u32::try_from(frames.len()).unwrap_or(u32::MAX);
        self.stats.replayed += u64::from(replayed);
        let last = next.is_none();
        let running = conn.session.page(PAGE, frames, replayed, last, &LIMITS);
        assert!(running, "a page arrived with no catch-up running");
        if let Some(next) = next {
            conn.parked = Some(next);
            self.next_page(user);
        }
    }

    /// A live event reaches the client's connection (if it is the one it was published to).
    pub(super) fn live_arrived(&mut self, user: u64, generation: u64, frame: &Bytes, at: Position) {
        let client = self.clients.get_mut(&user).expect("a client");
        let Some(conn) = client.conn.as_mut().filter(|c| c.generation == generation) else {
            return;
        };
        conn.session.event(frame, Live::Entry(at), &LIMITS);
        let queued = conn.session.events_queued();
        assert!(
            queued <= LIMITS.outgoing_queue,
            "user {user}'s connection queues {queued} events"
        );
        if conn.session.signals().lagged {
            self.stats.lags += 1;
        }
    }

    /// The client reads a few frames, and checks each.
    pub(super) fn client_reads(&mut self, user: u64) {
        let max = 1 + self.rng.below(6);
        let client = self.clients.get_mut(&user).expect("a client");
        let Some(conn) = client.conn.as_mut() else {
            return;
        };
        let mut batch = Vec::new();
        let transmit = conn.session.transmit(&mut batch, max);
        conn.session.written(transmit.bytes);
        let resume_parked = conn.session.take_parked().is_some();
        for frame in batch {
            let (frame, _) = decode_frame::<ServerFrame>(&frame).expect("a frame");
            match frame {
                ServerFrame::Event(event) if event.entry_position().is_some() => {
                    if let Some((conversation, seq)) = event.entry_position() {
                        self.received(user, conversation, seq);
                    }
                }
                ServerFrame::Event(Event::Lagged) => {
                    let conn = self.conn(user);
                    conn.lagged = true;
                }
                ServerFrame::Event(Event::CaughtUp { .. }) => {
                    let conn = self.conn(user);
                    assert!(conn.catching_up, "CaughtUp with no catch-up");
                    conn.catching_up = false;
                }
                other => panic!("user {user} read {other:?}"),
            }
        }
        if resume_parked {
            self.next_page(user);
        }
    }

    fn conn(&mut self, user: u64) -> &mut Conn {
        let client = self.clients.get_mut(&user).expect("a client");
        client.conn.as_mut().expect("connected")
    }

    /// Entry `seq` of `conversation` reached the client: once per epoch, in order, after the
    /// epoch's cursor, and durable.
    fn received(&mut self, user: u64, conversation: ConversationId, seq: Seq) {
        self.stats.events += 1;
        let head = self.store.head(conversation);
        assert!(
            seq <= head,
            "{conversation} {seq:?} reached a client before it was durable"
        );
        let conn = self.conn(user);
        let (cursor, last) = conn
            .epoch
            .get_mut(&conversation)
            .expect("a conversation of the user");
        assert!(
            seq > *last,
            "user {user} got {conversation} {seq:?} after {last:?} (cursor {cursor:?})"
        );
        *last = seq;
        self.clients
            .get_mut(&user)
            .expect("a client")
            .got
            .entry(conversation)
            .or_default()
            .insert(seq);
    }

    /// A step of the clients: one reads, reconnects, or syncs after a lag.
    pub(super) fn client_step(&mut self) {
        let user = 1 + self.rng.below(usize::try_from(self.users).unwrap_or(1)) as u64;
        let client = &self.clients[&user];
        match (&client.conn, self.rng.below(20)) {
            (None, _) | (Some(_), 0) => self.connect(user),
            // A second `Sync` while one runs: refused.
            (Some(conn), 1) if conn.session.catching_up() => self.sync(user),
            // A client that read `Lagged` syncs once the running catch-up (if any) is over
            // (section 8.6): what it read is all it has.
            (Some(conn), 2..=4) if conn.lagged && !conn.catching_up => self.sync(user),
            (Some(_), _) => self.client_reads(user),
        }
    }

    /// At the end: every client connected, caught up and not lagging, with nothing left to
    /// read, holds every entry of its conversations.
    pub(super) fn settle_clients(&mut self) -> bool {
        let users: Vec<u64> = self.clients.keys().copied().collect();
        let mut busy = false;
        for user in users {
            let client = &self.clients[&user];
            match &client.conn {
                None => {
                    self.connect(user);
                    busy = true;
                }
                Some(conn) if conn.lagged && !conn.catching_up => {
                    self.sync(user);
                    busy = true;
                }
                Some(conn) => {
                    if conn.session.queue().0 > 0 || conn.session.parked() || conn.catching_up {
                        self.client_reads(user);
                        busy = true;
                    }
                }
            }
        }
        busy
    }

    /// Every client holds the whole log of each of its conversations.
    pub(super) fn check_complete(&self) {
        for (user, client) in &self.clients {
            for conversation in self.conversations_of(*user) {
                let head = self.store.head(conversation);
                let got: BTreeSet<Seq> = client.got.get(&conversation).cloned().unwrap_or_default();
                let missing: Vec<u64> = (1..=head.0).filter(|s| !got.contains(&Seq(*s))).collect();
                assert!(
                    missing.is_empty(),
                    "user {user} never got {missing:?} of {conversation} (head {head:?})"
                );
            }
        }
    }

    /// Every connection gone: every budget is back to zero.
    pub(super) fn check_budgets(&mut self) {
        let users: Vec<u64> = self.clients.keys().copied().collect();
        for user in users {
            self.disconnect(user);
            let used = self.clients[&user].budget.bytes.used();
            assert_eq!(used, 0, "user {user}'s budget still holds {used} bytes");
        }
        assert_eq!(self.daemon.used(), 0, "the daemon's budget");
    }
}

/// The budget of one simulated user's connections.
pub(super) fn user_budget() -> Arc<UserBudget> {
    Arc::new(UserBudget::new(1 << 24))
}

/// The connection an owner publishes to: the client's current one, unless it is `except`.
pub(super) fn audience_conn(
    client: &super::Client,
    user: u64,
    except: Option<ConnRef>,
) -> Option<u64> {
    let conn = client.conn.as_ref()?;
    let id = conn_id(user, conn.generation);
    (except.map(|at| at.conn) != Some(id)).then_some(conn.generation)
}
