//! Shards: one pinned thread per core (`shard-N`), each running its own event loop with its
//! own quinn endpoint on the shared UDP port, owning:
//!
//! - the connections the kernel steered to its socket ([`conn`]);
//! - the conversations whose id hashes to it ([`conversation`], the rules without I/O, carried
//!   out by [`owner`]): sequence counter, membership, deduplication window, in-flight commits;
//! - the device registries of the users whose id hashes to it ([`registry`]).
//!
//! A committed event goes from its owner straight to the shards holding sessions of its
//! audience ([`placement`]), several events per message: each of those shards finds its own
//! connections of the audience (`conn::Connections` indexes them by user).
//!
//! Shards share nothing mutable. They talk through [`Inbox`]es (bounded lock-free queues with
//! one wake-up per batch) carrying [`ShardMsg`]; blocking work goes to the read pool and the
//! storage thread, whose results come back through the same inboxes.

pub(crate) mod accounts;
pub(crate) mod conn;
pub(crate) mod conversation;
mod done;
pub(crate) mod erase;
mod frames;
pub(crate) mod owner;
pub(crate) mod placement;
mod presence;
mod readings;
pub(crate) mod registry;
mod route;
pub(crate) mod session;
#[cfg(test)]
mod sim;
mod thread;

pub(crate) use done::{CommitRefused, Done, Written};
pub(crate) use frames::{encode, error, error_body, error_frame, in_version_1, now_ms, response};
pub use thread::StartError;
pub(crate) use thread::{EndpointParts, run};

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::UdpSocket;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::{
    ConversationId, ErrorBody, ErrorCode, GoodbyeCode, RequestId, Response, ServerFrame, UserId,
    encode_frame_exact, encode_frame_to_vec,
};

use crate::config::Config;
use crate::inbox::{Inbox, Receiver};
use crate::pool::ReadPool;
use crate::store::writer::{Completion, WriteError, Writers};
use crate::token::Keys;

/// Index of a shard.
pub(crate) type ShardId = usize;

/// A log position: (conversation, sequence number).
pub(crate) type Position = (ConversationId, chat_protocol::Seq);

/// A connection, unique within its shard for the daemon's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ConnId(pub(crate) u64);

impl ConnId {
    /// No connection: where an operator's requests come from ([`erase`]); their answers go
    /// back to the admin listener.
    pub(crate) const OPERATOR: ConnId = ConnId(u64::MAX);
}

/// The user an operator's requests carry: no account has id 0, no session can have it. It
/// may delete any message of any conversation (`chatd admin erase`), nothing else.
pub(crate) const OPERATOR: UserId = UserId(0);

/// The node a connection is on: this one, or the peer link a forwarded request came in on
/// (`crate::peer`), whose node knows the connection by its shard and id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Link(pub(crate) u32);

impl Link {
    /// This node.
    pub(crate) const HERE: Link = Link(0);
}

/// Where a connection lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnRef {
    pub(crate) link: Link,
    pub(crate) shard: ShardId,
    pub(crate) conn: ConnId,
}

/// Who asked, and where the answer goes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Origin {
    pub(crate) at: ConnRef,
    pub(crate) request: RequestId,
    pub(crate) user: UserId,
}

#[cfg(test)]
impl Origin {
    /// Request `request` of user `user`'s one connection (id = the user id) on shard 0.
    pub(crate) fn for_test(user: u64, request: u32) -> Origin {
        Origin {
            at: ConnRef {
                link: Link::HERE,
                shard: 0,
                conn: ConnId(user),
            },
            request: RequestId(request),
            user: UserId(user),
        }
    }
}

/// Everything shards send each other, and what the read pool and storage thread send back.
pub(crate) enum ShardMsg {
    /// A response or error frame for request `request` of a local connection.
    Reply {
        conn: ConnId,
        request: RequestId,
        frame: Bytes,
    },
    /// An event frame for local connections (what it is decides how each connection takes
    /// it: [`session::Live`]).
    Deliver {
        conns: Vec<ConnId>,
        frame: Bytes,
        live: session::Live,
    },
    /// Close a local connection with a goodbye.
    Close {
        conn: ConnId,
        code: GoodbyeCode,
        reason: &'static str,
    },
    /// The result of authenticating a local connection.
    Authenticated {
        conn: ConnId,
        request: Option<RequestId>,
        result: Result<accounts::Authenticated, ErrorBody>,
    },
    /// A write this shard submitted finished (through the inbox's reserved lane).
    Written {
        what: Written,
        result: Result<(), WriteError>,
    },
    /// For the conversation's owner.
    Conversation {
        conversation: ConversationId,
        op: conversation::Input,
    },
    /// A conversation's stored state arrived from the read pool.
    Loaded {
        conversation: ConversationId,
        result: Result<Option<crate::store::ConversationSnapshot>, conversation::ReadError>,
    },
    /// For the registry owner of a user.
    Registry(registry::Op),
    /// Events for this shard's connections of their audiences, in order.
    Publish(Vec<Publication>),
    /// A page of a catch-up, encoded on the read pool: gaps and entries in order, the number
    /// of entries in it, and the rest of the catch-up unless it was the last page; `failed`:
    /// the page could not be read for a reason that passes (a partition between nodes;
    /// `frames` holds the error), which ends the catch-up with the connection lagging.
    Replay {
        conn: ConnId,
        frames: Vec<(Option<Position>, Bytes)>,
        replayed: u32,
        next: Option<Box<crate::store::CatchUp>>,
        failed: bool,
    },
    /// What a local connection shares with its user's other connections: the memory budget
    /// and the send rate limit.
    UserBudget {
        conn: ConnId,
        budget: Arc<crate::budget::UserBudget>,
        sends: Arc<registry::SendLimit>,
    },
    /// A `Publish` could not be queued: this shard's connections of these audiences (except
    /// the one given with each) must learn they lag.
    Lag(Vec<(Arc<[UserId]>, Option<ConnRef>)>),
    /// A `Deliver` for these local connections could not be queued: they lag.
    LagConns { conns: Vec<ConnId> },
    /// Every session of this shard lags: a peer link started or ended, or a partition moved
    /// between other nodes, so events may have been missed (`crate::peer`).
    LagAll,
    /// A presence change of a local connection, checked on the read pool.
    Presence {
        origin: Origin,
        subscribe: Vec<UserId>,
        unsubscribe: Vec<UserId>,
    },
    /// An operator's request about this shard's connections (the admin listener).
    Admin(AdminOp),
    /// Stop: close connections with `SHUTTING_DOWN` and exit once drained, or when the
    /// deadlines of the stop have passed.
    Shutdown(StopDeadlines),
    /// A reload: new handshakes use `config` (a new certificate); open connections keep
    /// theirs. `done` hears once the endpoint has it.
    ServerConfig {
        config: Arc<quinn::ServerConfig>,
        done: std::sync::mpsc::Sender<()>,
    },
}

/// The two deadlines of a stop, the same for every thread: connections may close by
/// themselves until `grace` (the goodbye was sent); from then on, nothing waits for them, and
/// the rest (commits in flight, the endpoint, storage) may take until `hard`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StopDeadlines {
    pub(crate) grace: std::time::Instant,
    pub(crate) hard: std::time::Instant,
}

/// One event for the connections of its audience on one shard.
pub(crate) struct Publication {
    /// The event frame, encoded once for every shard.
    pub(crate) frame: Bytes,
    pub(crate) audience: Arc<[UserId]>,
    /// The connection that must not get it (a message's sender has the ack).
    pub(crate) except: Option<ConnRef>,
    /// What the event is, for the connections' rules (a log entry's position, typing).
    pub(crate) live: session::Live,
}

/// An operator's request to one shard, answered on `reply`.
pub(crate) enum AdminOp {
    /// Count the shard's connections (of `user` only, when given) and list `limit` of them.
    Connections {
        user: Option<UserId>,
        limit: usize,
        reply: tokio::sync::oneshot::Sender<(usize, Vec<conn::ConnInfo>)>,
    },
    /// Close the shard's connections of `user` (of its `device` only, when given).
    Close {
        user: UserId,
        device: Option<chat_protocol::DeviceId>,
        code: GoodbyeCode,
        reason: &'static str,
        reply: tokio::sync::oneshot::Sender<usize>,
    },
    /// Forget the conversations of `partition`, which this node no longer holds or has just
    /// taken (answering what waits in them with `UNAVAILABLE`), then answer on `reply`.
    Evict {
        partition: usize,
        reply: std::sync::mpsc::Sender<()>,
    },
    /// Delete `messages` of `conversation`, owned by this shard, as the operator ([`erase`]).
    Erase {
        conversation: ConversationId,
        messages: Vec<chat_protocol::Seq>,
        reply: tokio::sync::oneshot::Sender<erase::Erased>,
    },
}

/// What every shard shares, read-only after start-up (plus atomic id counters).
pub(crate) struct Shared {
    /// The running configuration; a reload swaps it whole ([`crate::reload`]).
    pub(crate) config: arc_swap::ArcSwap<Config>,
    /// Token keys; a reload swaps them.
    pub(crate) keys: arc_swap::ArcSwap<Keys>,
    /// The storage threads, one per partition.
    pub(crate) writer: Writers<Done>,
    pub(crate) reads: ReadPool,
    /// Password hashing and verification.
    pub(crate) passwords: ReadPool,
    pub(crate) inboxes: Vec<Inbox<ShardMsg>>,
    /// Where what is stored, and the next user and room ids of each partition.
    pub(crate) partitions: crate::store::PartitionMap,
    pub(crate) ids: crate::store::NextIds,
    pub(crate) limits: chat_protocol::Limits,
    pub(crate) shutting_down: AtomicBool,
    /// Per shard: its thread has left its loop (nothing will drain its inbox again).
    pub(crate) exited: Vec<AtomicBool>,
    /// Per shard: milliseconds since start of its last loop turn, for the watchdog.
    pub(crate) heartbeats: Vec<AtomicU64>,
    /// Per shard: open connections.
    pub(crate) connections: Vec<std::sync::atomic::AtomicUsize>,
    /// Authenticated connections, daemon-wide.
    pub(crate) sessions: std::sync::atomic::AtomicUsize,
    /// Connections in their handshake or not yet authenticated, daemon-wide.
    pub(crate) unauthenticated: std::sync::atomic::AtomicUsize,
    /// New connections refused (full, over budget, too many unauthenticated or from one
    /// address), and sent a QUIC Retry.
    pub(crate) refused: AtomicU64,
    pub(crate) retries: AtomicU64,
    /// Bytes held by every connection's queues plus a fixed cost per connection, against
    /// `limits.daemon_memory` ([`crate::budget`]).
    pub(crate) memory: Arc<crate::budget::Budget>,
    /// Per shard: the most events ever queued for one of its connections (a gauge of the
    /// `outgoing_queue` bound).
    pub(crate) event_queue_peak: Vec<std::sync::atomic::AtomicUsize>,
    pub(crate) started: std::time::Instant,
    /// Per partition: its outbox's newest event seq and the bridge's wake-up.
    pub(crate) outboxes: Vec<Arc<crate::store::writer::OutboxHead>>,
    /// The shards holding each online user's sessions: where owners send events, and who
    /// is offline for `message.created`. Lock-free from any shard.
    pub(crate) placement: placement::Placement,
    /// The other nodes of the cluster, when this node forwards to them (`cluster.peer`).
    pub(crate) peers: Arc<crate::peer::Peers>,
    /// The daemon's Prometheus metrics.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// What operators set on accounts (disabled, tokens revoked), as stored; one entry per
    /// restricted account, changed only by the admin listener after the write committed.
    pub(crate) restrictions: papaya::HashMap<UserId, crate::store::Restriction>,
}

impl Shared {
    /// The running configuration, as of now.
    pub(crate) fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The newest event seq of every partition's outbox, added up: the events committed
    /// (on a single node, its outbox's head).
    pub(crate) fn outbox_head(&self) -> u64 {
        self.outboxes
            .iter()
            .map(|head| head.seq.load(std::sync::atomic::Ordering::Acquire))
            .sum()
    }

    /// The shard that owns a conversation.
    pub(crate) fn owner_of(&self, c: ConversationId) -> ShardId {
        self.place(&crate::store::keys::conversation(c))
    }

    /// What operators set on an account (nothing: the default).
    pub(crate) fn restriction(&self, user: UserId) -> crate::store::Restriction {
        self.restrictions
            .pin()
            .get(&user)
            .copied()
            .unwrap_or_default()
    }

    /// Whether a user has a session.
    pub(crate) fn is_online(&self, user: UserId) -> bool {
        self.placement.is_online(user)
    }

    /// The shard that owns a user's device registry.
    pub(crate) fn registry_of(&self, user: UserId) -> ShardId {
        self.place(&user.0.to_le_bytes())
    }

    /// The shard for a key: FNV-1a modulo the shard count.
    fn place(&self, key: &[u8]) -> ShardId {
        let shards = self.inboxes.len() as u64; // usize always fits in u64
        usize::try_from(crate::store::fnv1a(key) % shards).unwrap_or(0)
    }

    /// Pushes from a read pool thread: waits for room, since these messages (replies, loaded
    /// state) must not be lost. Gives up only when the target shard has exited. (The storage
    /// thread never waits: its results go through reserved slots, [`Shared::commit`].)
    pub(crate) fn push_blocking(&self, shard: ShardId, mut msg: ShardMsg) {
        loop {
            match self.inboxes[shard].push(msg) {
                Ok(()) => return,
                Err(back) => msg = back,
            }
            if self.exited[shard].load(Ordering::Acquire) {
                tracing::warn!(shard, "dropping a message for a shard that has stopped");
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Submits a write for shard `shard`, whose result comes back to it as
    /// [`ShardMsg::Written`]. Callable from any thread.
    pub(crate) fn commit(
        &self,
        shard: ShardId,
        batch: crate::store::writer::Batch,
        what: Written,
    ) -> Result<(), CommitRefused> {
        let partition = match &what {
            Written::Conversation(c) => self.partitions.of_conversation(*c),
            Written::Account(write) => self.partitions.of_name(write.name()),
        };
        let slot = self.inboxes[shard]
            .reserve()
            .ok_or(CommitRefused::InFlight)?;
        // A refused submission drops the slot with it: free again at once.
        self.writer
            .submit(partition, batch, Done::Shard { slot, what })
            .map_err(|(_, held)| {
                if held {
                    CommitRefused::QueueFull
                } else {
                    CommitRefused::NotHere
                }
            })
    }

    /// Replies to a request from a non-shard thread.
    pub(crate) fn reply_blocking(&self, origin: &Origin, frame: Bytes) {
        if origin.at.link != Link::HERE {
            return self.peers.reply(origin, frame);
        }
        self.push_blocking(
            origin.at.shard,
            ShardMsg::Reply {
                conn: origin.at.conn,
                request: origin.request,
                frame,
            },
        );
    }
}

/// FNV-1a: a small, stable hash for placing conversations and users on shards.
/// The shard's own state, reachable from every task on its thread.
pub(crate) struct Shard {
    pub(crate) id: ShardId,
    pub(crate) shared: Arc<Shared>,
    pub(crate) conns: RefCell<conn::Connections>,
    pub(crate) owner: RefCell<conversation::Conversations>,
    pub(crate) registry: RefCell<registry::Registry>,
    /// This shard's QUIC endpoint on the shared port.
    endpoint: quinn::Endpoint,
    /// Messages to other shards that found their inbox full and must not be lost (replies,
    /// commits); retried at every loop turn. Bounded by the requests in flight.
    retry: RefCell<VecDeque<(ShardId, ShardMsg)>>,
    /// Events for each shard (itself included), sent as one `Publish` per shard at the end
    /// of the loop turn; bounded by what one turn handles.
    publications: RefCell<Vec<Vec<Publication>>>,
    /// Operators' erasures under way in conversations this shard owns, by the request id
    /// their deletes carry; one per admin request, which waits for it.
    pub(crate) erasures: RefCell<std::collections::HashMap<u32, erase::Erasure>>,
    pub(crate) next_erasure: std::cell::Cell<u32>,
}

impl Shard {
    /// Sends to a shard (possibly this one), in order per target: while older messages for
    /// the target wait in the retry queue, new ones queue behind them. When the target inbox is
    /// full, replies and commands are kept for a retry; events (`Publish`, `Deliver`) are
    /// replaced by the much smaller news that their recipients lag, so they catch up through
    /// history instead of missing them silently.
    pub(crate) fn send(&self, target: ShardId, msg: ShardMsg) {
        let mut retry = self.retry.borrow_mut();
        let msg = if retry.iter().any(|(t, _)| *t == target) {
            msg
        } else {
            match self.shared.inboxes[target].push(msg) {
                Ok(()) => return,
                Err(msg) => msg,
            }
        };
        let kept = match msg {
            // Ephemeral events are not worth keeping or lagging for.
            ShardMsg::Deliver {
                live: session::Live::Ephemeral,
                ..
            } => return,
            ShardMsg::Deliver { conns, .. } => ShardMsg::LagConns { conns },
            ShardMsg::Publish(publications) => {
                let lagging: Vec<_> = publications
                    .into_iter()
                    .filter(|p| p.live != session::Live::Ephemeral)
                    .map(|p| (p.audience, p.except))
                    .collect();
                if lagging.is_empty() {
                    return;
                }
                ShardMsg::Lag(lagging)
            }
            msg => msg,
        };
        retry.push_back((target, kept));
    }

    /// Queues an event for shard `target`'s connections, sent with the others for that shard
    /// at the end of this loop turn ([`Shard::flush_publications`]).
    pub(crate) fn publish(&self, target: ShardId, publication: Publication) {
        self.publications.borrow_mut()[target].push(publication);
    }

    /// Sends the events queued this turn: one `Publish` per shard (one wake-up at most).
    fn flush_publications(&self) {
        let mut publications = self.publications.borrow_mut();
        let due: Vec<(ShardId, Vec<Publication>)> = publications
            .iter_mut()
            .enumerate()
            .filter(|(_, queued)| !queued.is_empty())
            .map(|(target, queued)| (target, std::mem::take(queued)))
            .collect();
        drop(publications);
        for (target, queued) in due {
            self.send(target, ShardMsg::Publish(queued));
        }
    }

    /// Replies to a request.
    pub(crate) fn reply(&self, origin: &Origin, frame: Bytes) {
        if origin.at.link != Link::HERE {
            return self.shared.peers.reply(origin, frame);
        }
        self.send(
            origin.at.shard,
            ShardMsg::Reply {
                conn: origin.at.conn,
                request: origin.request,
                frame,
            },
        );
    }

    /// This shard's counters.
    pub(crate) fn metrics(&self) -> &crate::metrics::ShardMetrics {
        &self.shared.metrics.shards[self.id]
    }

    /// Runs a read on the pool and answers `origin` with the frame it builds.
    pub(crate) fn read(
        &self,
        origin: Origin,
        job: impl FnOnce(&crate::store::Stores) -> Result<Bytes, crate::store::Error> + Send + 'static,
    ) {
        self.read_then(origin, move |store| job(store).map(Err));
    }

    /// Runs a job on the pool: `Ok(Err(frame))` answers `origin` with `frame`; `Ok(Ok(()))`
    /// means the job passed the request on and someone else answers; a storage error answers
    /// `UNAVAILABLE`. A full pool answers `OVERLOADED` at once.
    pub(crate) fn read_then(
        &self,
        origin: Origin,
        job: impl FnOnce(&crate::store::Stores) -> Result<Result<(), Bytes>, crate::store::Error>
        + Send
        + 'static,
    ) {
        let shared = Arc::clone(&self.shared);
        let submitted = self.shared.reads.submit(move |store| {
            let frame = match job(store) {
                Ok(Ok(())) => return,
                Ok(Err(frame)) => frame,
                Err(e) => {
                    crate::logging::throttled!(error, error = %e, "read failed");
                    error(
                        origin.request,
                        ErrorCode::UNAVAILABLE,
                        "storage unavailable",
                    )
                }
            };
            shared.reply_blocking(&origin, frame);
        });
        if !submitted {
            self.reply(
                &origin,
                error(origin.request, ErrorCode::OVERLOADED, "read pool full"),
            );
        }
    }

    /// Retries queued messages in order; a target whose inbox is still full keeps the rest of
    /// its messages queued behind the first refused one.
    fn flush_retries(&self) {
        let mut retry = self.retry.borrow_mut();
        let mut blocked: Vec<ShardId> = Vec::new();
        let mut kept = VecDeque::with_capacity(retry.len());
        for (target, msg) in retry.drain(..) {
            if blocked.contains(&target) {
                kept.push_back((target, msg));
                continue;
            }
            if let Err(msg) = self.shared.inboxes[target].push(msg) {
                blocked.push(target);
                kept.push_back((target, msg));
            }
        }
        *retry = kept;
    }

    fn handle(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Reply {
                conn,
                request,
                frame,
            } => conn::reply(self, conn, request, frame),
            ShardMsg::Deliver { conns, frame, live } => conn::deliver(self, &conns, &frame, live),
            ShardMsg::Replay {
                conn,
                frames,
                replayed,
                next,
                failed,
            } => conn::replay(self, conn, frames, replayed, next, failed),
            ShardMsg::UserBudget {
                conn,
                budget,
                sends,
            } => conn::user_budget(self, conn, budget, sends),
            ShardMsg::Close { conn, code, reason } => conn::close(self, conn, code, reason),
            ShardMsg::Authenticated {
                conn,
                request,
                result,
            } => conn::authenticated(self, conn, request, result),
            ShardMsg::Written { what, result } => match what {
                Written::Conversation(conversation) => {
                    owner::handle(self, conversation, conversation::Input::Committed(result));
                }
                Written::Account(write) => accounts::account_written(self, write, result),
            },
            ShardMsg::Conversation { conversation, op } => owner::handle(self, conversation, op),
            ShardMsg::Loaded {
                conversation,
                result,
            } => owner::loaded(self, conversation, result),
            ShardMsg::Registry(op) => registry::handle(self, op),
            ShardMsg::Publish(publications) => conn::publish(self, publications),
            ShardMsg::Lag(audiences) => conn::lag_audiences(self, &audiences),
            ShardMsg::LagConns { conns } => conn::lag(self, &conns),
            ShardMsg::LagAll => conn::lag_all(self),
            ShardMsg::Presence {
                origin,
                subscribe,
                unsubscribe,
            } => conn::presence(self, origin, subscribe, unsubscribe),
            ShardMsg::Admin(AdminOp::Connections { user, limit, reply }) => {
                let _ = reply.send(conn::list(self, user, limit));
            }
            ShardMsg::Admin(AdminOp::Close {
                user,
                device,
                code,
                reason,
                reply,
            }) => {
                let _ = reply.send(conn::close_user(self, user, device, code, reason));
            }
            ShardMsg::Admin(AdminOp::Evict { partition, reply }) => {
                owner::evict(self, partition);
                let _ = reply.send(());
            }
            ShardMsg::Admin(AdminOp::Erase {
                conversation,
                messages,
                reply,
            }) => erase::start(self, conversation, messages, reply),
            ShardMsg::Shutdown(deadlines) => conn::shutdown(self, deadlines),
            ShardMsg::ServerConfig { config, done } => {
                self.endpoint.set_server_config(Some((*config).clone()));
                let _ = done.send(());
            }
        }
    }
}
