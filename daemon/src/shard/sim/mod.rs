//! A deterministic simulator of the daemon's rules across shards: several owner shards
//! ([`Conversations`]), a fake storage that group-commits in memory and fails whole groups on
//! demand, a read pool that reads whatever is stored when it runs, clients that send, edit
//! and delete their own messages, retry and resend after a crash, each on a connection with a real [`Session`](super::session)
//! that reconnects, lags and catches up ([`sessions`]), and a seeded scheduler that
//! interleaves every channel (one queue per sender and receiver, first in first out, as the
//! shard inboxes are) in a random order. Virtual time only: a run is a function of its seed.
//!
//! After every step it checks what the daemon promises: each conversation's stored log is
//! contiguous from 1 (no hole after a failed commit or a crash); no send, edit or delete is
//! stored twice; every message agrees with its stored edits and deletion; an acked op
//! always names the same entry, which is durable before the ack arrives; on each
//! connection, from each catch-up on, every entry arrives once, in order, durable. At the
//! end, with failures off, every op is acked, every client holds the whole log of each of
//! its conversations, and every byte budget is back to zero. A failing seed says how to
//! replay it.

mod clients;
mod sessions;
mod store;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::{ConversationId, RequestId, Seq, ServerFrame, Timestamp, UserId};

use super::conversation::{Answer, Conversations, Ctx, Effect, Input};
use super::{Position, encode};
use crate::budget::Budget;
use crate::store::writer::{Batch, WriteError};
use crate::store::{ConversationSnapshot, keys};
use clients::{Client, Send};
use store::FakeStore;

/// SplitMix64: a small, good, seeded generator (no dependency, stable across versions).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (at least 1).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The ends of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Node {
    Client(u64),
    Shard(usize),
    Pool,
    Storage,
}

/// What travels on a channel.
#[derive(Debug)]
enum Message {
    /// An input for conversation `conversation` on its owner.
    Input {
        conversation: ConversationId,
        input: Input,
    },
    /// The read pool's answer to a load.
    Loaded {
        conversation: ConversationId,
        snapshot: ConversationSnapshot,
    },
    /// A read for the pool to run on whatever is stored when it runs.
    Read { shard: usize, read: Read },
    /// A batch for the storage thread.
    Commit {
        shard: usize,
        conversation: ConversationId,
        batch: Batch,
    },
    /// An answer for a client.
    Answer { request: RequestId, answer: Answer },
    /// A log event for a client's connection `generation` (the one placed when it was
    /// published).
    Live {
        generation: u64,
        frame: Bytes,
        at: Position,
    },
    /// A catch-up page for the pool to read, from `reading` (the next seq per conversation).
    PageRead {
        user: u64,
        generation: u64,
        reading: BTreeMap<ConversationId, Seq>,
    },
    /// A catch-up page for a client's connection; `next` is where the next one starts.
    Page {
        generation: u64,
        frames: Vec<(Option<Position>, Bytes)>,
        next: Option<BTreeMap<ConversationId, Seq>>,
    },
}

#[derive(Debug)]
enum Read {
    Load(ConversationId),
    SenderOps {
        conversation: ConversationId,
        instance: u64,
        sender: UserId,
        rows: usize,
    },
    Entry {
        conversation: ConversationId,
        instance: u64,
        seq: Seq,
    },
}

/// One simulated world.
struct World {
    rng: Rng,
    shards: Vec<Conversations>,
    /// Every channel's queue, by (from, to).
    channels: BTreeMap<(Node, Node), VecDeque<Message>>,
    /// The storage thread's queue.
    storage: VecDeque<(usize, ConversationId, Batch)>,
    store: FakeStore,
    clients: BTreeMap<u64, Client>,
    /// The daemon's memory budget, shared by every connection.
    daemon: Arc<Budget>,
    users: u64,
    now: u64,
    /// Percent of storage groups that fail, and of steps that crash the daemon.
    fail_percent: u64,
    crash_percent: u64,
    steps: u64,
    stats: Stats,
    /// `storage.dedupe_cache` of this run.
    dedupe_cache: usize,
}

/// What a run exercised, so a sweep can show it reached the cases it is for.
#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    acks: u64,
    duplicate_acks: u64,
    refusals: u64,
    failed_groups: u64,
    crashes: u64,
    window_reads: u64,
    events: u64,
    connections: u64,
    catch_ups: u64,
    syncs_refused: u64,
    parked: u64,
    replayed: u64,
    lags: u64,
    /// Edits, deletes and reactions acked, and refused because their message was deleted
    /// meanwhile (or the reaction was there, or was not); of them, reactions acked.
    changes: u64,
    refused_changes: u64,
    reactions: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, other: Stats) {
        self.acks += other.acks;
        self.duplicate_acks += other.duplicate_acks;
        self.refusals += other.refusals;
        self.failed_groups += other.failed_groups;
        self.crashes += other.crashes;
        self.window_reads += other.window_reads;
        self.events += other.events;
        self.connections += other.connections;
        self.catch_ups += other.catch_ups;
        self.syncs_refused += other.syncs_refused;
        self.parked += other.parked;
        self.replayed += other.replayed;
        self.lags += other.lags;
        self.changes += other.changes;
        self.refused_changes += other.refused_changes;
        self.reactions += other.reactions;
    }
}

const WINDOW: usize = 8;

impl World {
    fn new(seed: u64, shards: usize, users: u64) -> World {
        World {
            rng: Rng(seed),
            shards: (0..shards).map(|_| Conversations::default()).collect(),
            channels: BTreeMap::new(),
            storage: VecDeque::new(),
            store: FakeStore::default(),
            clients: (1..=users).map(|u| (u, Client::new())).collect(),
            daemon: Arc::new(Budget::new(1 << 30)),
            users,
            now: 1_000,
            fail_percent: 10,
            crash_percent: 1,
            steps: 0,
            stats: Stats::default(),
            // Odd seeds hold one whole window per conversation: the other sender is kept as
            // fingerprints, its rows beyond the window trimmed by reads.
            dedupe_cache: if seed.is_multiple_of(2) {
                4 * WINDOW
            } else {
                WINDOW
            },
        }
    }

    fn owner_of(&self, conversation: ConversationId) -> usize {
        let key = keys::conversation(conversation);
        let hash = key
            .iter()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)));
        usize::try_from(hash % self.shards.len() as u64).unwrap_or(0)
    }

    fn send(&mut self, from: Node, to: Node, message: Message) {
        self.channels
            .entry((from, to))
            .or_default()
            .push_back(message);
    }

    fn ctx_now(&self) -> Timestamp {
        Timestamp(self.now)
    }

    /// Runs one owner input and routes what it asks for.
    fn at_owner(&mut self, shard: usize, conversation: ConversationId, input: Input) {
        let mut out = Vec::new();
        let now = self.ctx_now();
        let online = |_| true;
        let ctx = ctx(now, &online, self.dedupe_cache);
        self.shards[shard].handle(conversation, input, &ctx, &mut out);
        self.route(shard, out);
    }

    fn route(&mut self, shard: usize, effects: Vec<Effect>) {
        let from = Node::Shard(shard);
        for effect in effects {
            match effect {
                Effect::Reply { to, answer } => self.send(
                    from,
                    Node::Client(to.user.0),
                    Message::Answer {
                        request: to.request,
                        answer,
                    },
                ),
                Effect::Publish {
                    event,
                    audience,
                    except,
                } => {
                    let Some(at) = event.entry_position() else {
                        panic!("only log entries are published in the simulation: {event:?}");
                    };
                    let frame = encode(&ServerFrame::Event(event.clone()));
                    for user in audience.iter() {
                        let client = &self.clients[&user.0];
                        let Some(generation) = sessions::audience_conn(client, user.0, except)
                        else {
                            continue;
                        };
                        let frame = frame.clone();
                        let live = Message::Live {
                            generation,
                            frame,
                            at,
                        };
                        self.send(from, Node::Client(user.0), live);
                    }
                }
                Effect::Load(conversation) => self.send(
                    from,
                    Node::Pool,
                    Message::Read {
                        shard,
                        read: Read::Load(conversation),
                    },
                ),
                Effect::ReadSenderOps {
                    conversation,
                    instance,
                    sender,
                    rows,
                } => self.send(
                    from,
                    Node::Pool,
                    Message::Read {
                        shard,
                        read: Read::SenderOps {
                            conversation,
                            instance,
                            sender,
                            rows,
                        },
                    },
                ),
                Effect::ReadEntry {
                    conversation,
                    instance,
                    seq,
                } => self.send(
                    from,
                    Node::Pool,
                    Message::Read {
                        shard,
                        read: Read::Entry {
                            conversation,
                            instance,
                            seq,
                        },
                    },
                ),
                Effect::Commit {
                    conversation,
                    batch,
                } => self.send(
                    from,
                    Node::Storage,
                    Message::Commit {
                        shard,
                        conversation,
                        batch,
                    },
                ),
                Effect::ReadHistory { .. } | Effect::ReadMembers { .. } => {}
            }
        }
    }

    /// The pool runs a read on what is stored now.
    fn read(&mut self, shard: usize, read: Read) {
        let message = match read {
            Read::Load(conversation) => Message::Loaded {
                conversation,
                snapshot: {
                    let head = self.store.head(conversation);
                    ConversationSnapshot {
                        head,
                        tip: self.store.tip(conversation, head),
                        ..ConversationSnapshot::default()
                    }
                },
            },
            Read::SenderOps {
                conversation,
                instance,
                sender,
                rows,
            } => {
                self.stats.window_reads += 1;
                let ops = self.store.sender_ops(conversation, sender, rows);
                Message::Input {
                    conversation,
                    input: Input::SenderOps {
                        instance,
                        sender,
                        result: Ok(ops),
                    },
                }
            }
            Read::Entry {
                conversation,
                instance,
                seq,
            } => Message::Input {
                conversation,
                input: Input::EntryRead {
                    instance,
                    seq,
                    result: Ok(self.store.entry(conversation, seq)),
                },
            },
        };
        self.send(Node::Pool, Node::Shard(shard), message);
    }

    /// The storage thread commits the first few queued batches as one group, or fails them all.
    fn commit_group(&mut self) {
        let take = 1 + self.rng.below(self.storage.len());
        let group: Vec<_> = self.storage.drain(..take).collect();
        let fail = self.rng.chance(self.fail_percent);
        self.stats.failed_groups += u64::from(fail);
        for (shard, conversation, batch) in group {
            let result = if fail {
                Err(WriteError::Storage("injected".into()))
            } else {
                self.store.apply(batch);
                self.store.check_log(conversation);
                Ok(())
            };
            self.send(
                Node::Storage,
                Node::Shard(shard),
                Message::Input {
                    conversation,
                    input: Input::Committed(result),
                },
            );
        }
    }

    /// The daemon crashes and restarts: its memory, its queues and what the storage thread
    /// had not committed are gone; clients lose their answers and resend what is unacked.
    fn crash(&mut self) {
        self.stats.crashes += 1;
        for shard in &mut self.shards {
            *shard = Conversations::default();
        }
        self.channels.clear();
        self.storage.clear();
        let users: Vec<u64> = self.clients.keys().copied().collect();
        for user in users {
            self.disconnect(user);
            let client = self.clients.get_mut(&user).expect("a client");
            client.waiting.clear();
            let unacked = client.unacked.clone();
            for send in unacked {
                self.client_sends(user, send);
            }
        }
    }

    /// One step: a random channel delivers its oldest message, or something happens.
    fn step(&mut self) {
        self.steps += 1;
        self.now += 1;
        match self.rng.below(100) {
            0..=9 => return self.new_send(),
            10..=11 => return self.resend(),
            12 if self.rng.chance(self.crash_percent * 10) => return self.crash(),
            13 => {
                let shard = self.rng.below(self.shards.len());
                return self.shards[shard].evict_idle(0);
            }
            14..=33 => return self.client_step(),
            _ => {}
        }
        if !self.storage.is_empty() && self.rng.chance(20) {
            return self.commit_group();
        }
        self.deliver_any();
    }

    /// Delivers the oldest message of a random busy channel; with none, commits a group if
    /// any is queued.
    fn deliver_any(&mut self) {
        let busy: Vec<(Node, Node)> = self
            .channels
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        match busy.get(self.rng.below(busy.len())).copied() {
            Some(key) => {
                let message = self
                    .channels
                    .get_mut(&key)
                    .and_then(VecDeque::pop_front)
                    .expect("a busy channel");
                self.deliver(key.1, message);
            }
            None if !self.storage.is_empty() => self.commit_group(),
            None => {}
        }
    }

    fn deliver(&mut self, to: Node, message: Message) {
        match (to, message) {
            (
                Node::Shard(shard),
                Message::Input {
                    conversation,
                    input,
                },
            ) => {
                self.at_owner(shard, conversation, input);
            }
            (
                Node::Shard(shard),
                Message::Loaded {
                    conversation,
                    snapshot,
                },
            ) => {
                let mut out = Vec::new();
                let now = self.ctx_now();
                let online = |_| true;
                let ctx = ctx(now, &online, self.dedupe_cache);
                self.shards[shard].loaded(conversation, Ok(Some(snapshot)), &ctx, &mut out);
                self.route(shard, out);
            }
            (Node::Pool, Message::Read { shard, read }) => self.read(shard, read),
            (
                Node::Pool,
                Message::PageRead {
                    user,
                    generation,
                    reading,
                },
            ) => self.read_page(user, generation, reading),
            (
                Node::Storage,
                Message::Commit {
                    shard,
                    conversation,
                    batch,
                },
            ) => {
                self.storage.push_back((shard, conversation, batch));
            }
            (Node::Client(user), message) => self.at_client(user, message),
            (to, message) => panic!("{message:?} sent to {to:?}"),
        }
    }

    /// Runs `steps` random steps, then delivers everything with failures and crashes off,
    /// resending until every send is acked.
    fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.step();
        }
        self.fail_percent = 0;
        self.crash_percent = 0;
        for _ in 0..50 {
            for round in 0.. {
                assert!(round < 100_000, "the clients never settled");
                while self.channels.values().any(|q| !q.is_empty()) || !self.storage.is_empty() {
                    self.step_quietly();
                }
                if !self.settle_clients() {
                    break;
                }
            }
            let unanswered: Vec<(u64, Send)> = self
                .clients
                .iter()
                .flat_map(|(u, c)| c.unacked.iter().map(move |s| (*u, *s)))
                .collect();
            if unanswered.is_empty() {
                break;
            }
            for (user, send) in unanswered {
                self.client_sends(user, send);
            }
        }
        for (user, client) in &self.clients {
            assert!(
                client.unacked.is_empty(),
                "user {user} has unacked sends at the end"
            );
        }
        self.check_complete();
        self.check_budgets();
    }

    /// A step that only delivers (no new sends, no crash).
    fn step_quietly(&mut self) {
        self.steps += 1;
        if !self.storage.is_empty() && self.rng.chance(30) {
            return self.commit_group();
        }
        self.deliver_any();
    }
}

fn ctx<'a>(now: Timestamp, online: &'a dyn Fn(UserId) -> bool, dedupe_cache: usize) -> Ctx<'a> {
    Ctx {
        now,
        max_page: 100,
        max_room_members: 100,
        dedupe_window: WINDOW,
        dedupe_cache,
        outbox: false,
        online,
    }
}

/// Runs seed `seed`; a failure names the seed and how to replay it.
fn run_seed(seed: u64) -> Stats {
    let outcome = std::panic::catch_unwind(|| {
        let mut world = World::new(seed, 3, 4);
        world.run(600);
        world.stats
    });
    match outcome {
        Ok(stats) => stats,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!(
                "simulation seed {seed} failed: {message}\nreplay it with: CHATD_SIM_SEED={seed} \
                 cargo test --workspace --lib -- --ignored shard::sim::replay"
            );
        }
    }
}

#[test]
fn a_sweep_of_seeds_keeps_every_promise() {
    let mut total = Stats::default();
    for seed in 0..2_000 {
        total += run_seed(seed);
    }
    // The sweep reached what it is for: failed group commits, crashes, retries answered from
    // the stored window and from memory.
    assert!(total.failed_groups > 1_000, "{total:?}");
    assert!(total.crashes > 100, "{total:?}");
    assert!(total.duplicate_acks > 1_000, "{total:?}");
    assert!(total.window_reads > 1_000, "{total:?}");
    assert!(total.refusals > 1_000, "{total:?}");
    assert!(total.events > 10_000, "{total:?}");
    // And the connections' cases: catch-ups with replays, lags, pages waiting for room, a
    // second `Sync` while one runs.
    assert!(total.catch_ups > 10_000, "{total:?}");
    assert!(total.replayed > 10_000, "{total:?}");
    assert!(total.lags > 1_000, "{total:?}");
    assert!(total.parked > 100, "{total:?}");
    assert!(total.syncs_refused > 500, "{total:?}");
    // Edits, deletes and reactions of the clients' own messages, some refused as already
    // deleted (or reacted to, or not).
    assert!(total.changes > 1_000, "{total:?}");
    assert!(total.refused_changes > 10, "{total:?}");
    assert!(total.reactions > 300, "{total:?}");
    println!("{total:?}");
}

/// Replays the seed in `CHATD_SIM_SEED` (printed by a failing sweep), with the panic's
/// backtrace.
#[test]
#[ignore = "a tool: set CHATD_SIM_SEED to the seed a failing sweep printed"]
fn replay() {
    let seed = std::env::var("CHATD_SIM_SEED")
        .expect("CHATD_SIM_SEED")
        .parse()
        .expect("a number");
    let mut world = World::new(seed, 3, 4);
    world.run(600);
}
