//! A cluster's nodes talking to each other (docs/SCALING.md sections 5 and 6), with
//! `cluster.peer` set: each node serves the partitions etcd gives it and forwards the rest.
//!
//! - A client's request for a conversation whose partition another node holds goes to that
//!   node on the connection this node dialed to it ([`wire::Up`], in order), which gives it
//!   to the conversation's owner shard as if its client were local (its [`Origin`] names
//!   the link it came in on, [`Link`]), and the answer comes back the same way.
//! - Every event an owner publishes goes to every node that dialed it ([`wire::Down`], the
//!   feed), which delivers it to its own connections of the audience: a broadcast filtered
//!   where the connections are, with no registry of who is connected where.
//! - The reads a client's node makes for its clients (its account, a catch-up, the
//!   listing) go to the partition's node as calls ([`wire::Call`]), through
//!   [`crate::store::Stores`]' [`Remote`]; so does creating an account whose name another
//!   node's partition claims.
//!
//! The feed has no positions yet: a node whose connection to another node starts or ends
//! (one its view names holder of a partition), or whose view moves a partition between
//! nodes (or which takes a partition), tells every session it serves that it lags
//! (`Lagged`), and the devices catch up from their cursors through the holders' stores. A
//! partition's log entries are delivered only from the node seen holding it, and an entry
//! from another node or ownership term than the last one delivered makes every session lag
//! first ([`feed`]), so a device is never given a moving partition's new entries before its
//! old ones, even across a move its view never showed; a link that breaks costs a catch-up
//! per device.

mod accept;
mod feed;
mod link;
mod operator;
pub(crate) mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::{ConversationId, ErrorCode, Timestamp, UserId};

pub(crate) use feed::Verdict;
pub(crate) use link::{PeerThread, start};
pub(crate) use operator::{Forwarded, MAX_FORWARDED, Order};
use wire::{Call, Down, Refused, Up};

use crate::shard::conversation::Input;
use crate::shard::session::Live;
use crate::shard::{ConnRef, Link, Origin, ShardMsg, Shared, error};
use crate::store::{Error, PartitionMap, Read, Remote, Stores};

/// Messages waiting for one link, each way; a full queue refuses what a shard forwards
/// (`OVERLOADED`) and closes a link whose feed or answers it cannot take.
pub(crate) const LINK_QUEUE: usize = 16_384;

/// Bytes of answers and events waiting for one link another node dialed; beyond, the link
/// is closed (its node has its sessions catch up).
pub(crate) const LINK_BYTES: usize = 64 << 20;

/// Requests forwarded on one link and not answered yet; beyond, `OVERLOADED`.
pub(crate) const MAX_PENDING: usize = 65_536;

/// What a call that timed out is refused with.
pub(crate) const NO_ANSWER: &str = "no answer in time";

/// Users per presence message when a link starts.
const PRESENCE_CHUNK: usize = 4_096;

/// How long a call (a read, an account creation) waits for the other node.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What goes to the node this one dialed.
pub(crate) enum ToOwner {
    Up(Up),
    Call {
        call: Call,
        partition: usize,
        /// How long the call waits for its answer.
        timeout: Duration,
        answer: crossbeam_channel::Sender<Result<Vec<u8>, Error>>,
    },
}

/// A connection this node dialed, while it is up.
pub(crate) struct Outbound {
    tx: tokio::sync::mpsc::Sender<ToOwner>,
}

/// Where a call's answer comes.
type Answering = crossbeam_channel::Receiver<Result<Vec<u8>, Error>>;

impl Outbound {
    /// Queues `call` (about partition `p`, for its errors), answered within `timeout`.
    fn ask(&self, call: Call, p: usize, timeout: Duration) -> Result<Answering, Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx
            .try_send(ToOwner::Call {
                call,
                partition: p,
                timeout,
                answer: tx,
            })
            .map_err(|e| Error::Remote {
                partition: p,
                message: match e {
                    tokio::sync::mpsc::error::TrySendError::Full(_) => "the link is full".into(),
                    tokio::sync::mpsc::error::TrySendError::Closed(_) => "the link ended".into(),
                },
            })?;
        Ok(rx)
    }
}

/// What waits to go down a link another node dialed: the answer to a forwarded request, or
/// an event of the feed (its frame and audience shared by every link); encoded as [`Down`]
/// by the link's writer.
pub(crate) enum Queued {
    Reply {
        shard: u32,
        conn: u64,
        request: u32,
        frame: Bytes,
    },
    Event {
        frame: Bytes,
        audience: Arc<[UserId]>,
        except: Option<(u32, u64)>,
        kind: wire::Kind,
    },
    Presence {
        changes: Arc<[(UserId, Option<Timestamp>)]>,
    },
}

impl Queued {
    /// What it holds, for the link's byte budget.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Queued::Reply { frame, .. } => frame.len(),
            Queued::Event {
                frame, audience, ..
            } => frame.len() + audience.len() * 8,
            Queued::Presence { changes } => changes.len() * 24,
        }
    }

    /// As it goes on the wire.
    pub(crate) fn into_down(self) -> Down {
        match self {
            Queued::Reply {
                shard,
                conn,
                request,
                frame,
            } => Down::Reply {
                shard,
                conn,
                request,
                frame: frame.to_vec(),
            },
            Queued::Event {
                frame,
                audience,
                except,
                kind,
            } => Down::Event {
                frame: frame.to_vec(),
                audience: audience.to_vec(),
                except,
                kind,
            },
            Queued::Presence { changes } => Down::Presence {
                changes: changes.to_vec(),
            },
        }
    }
}

/// A connection another node dialed to this one, while it is up.
pub(crate) struct Inbound {
    link: Link,
    tx: tokio::sync::mpsc::Sender<Queued>,
    /// Bytes in `tx` ([`LINK_BYTES`]), given back by the link's writer.
    queued: Arc<AtomicUsize>,
    connection: quinn::Connection,
}

impl Inbound {
    /// Queues `queued`; a link that cannot take it ([`LINK_QUEUE`], [`LINK_BYTES`]) is
    /// closed: its node answers what it waits for `UNAVAILABLE` and has its sessions catch
    /// up.
    fn send(&self, queued: Queued) {
        let bytes = queued.bytes();
        let over = self.queued.fetch_add(bytes, Ordering::AcqRel) + bytes > LINK_BYTES;
        if over || self.tx.try_send(queued).is_err() {
            self.queued.fetch_sub(bytes, Ordering::AcqRel);
            self.connection
                .close(quinn::VarInt::from_u32(1), b"the link's queue is full");
        }
    }
}

/// Pushes `msg` into shard `shard`'s inbox from the peer or cluster thread, waiting without
/// holding up the thread's other tasks (links, keep-alives, the lease) while it is full.
pub(crate) async fn push(shared: &Shared, shard: usize, mut msg: ShardMsg) {
    loop {
        match shared.inboxes[shard].push(msg) {
            Ok(()) => return,
            Err(back) => msg = back,
        }
        if shared.exited[shard].load(Ordering::Acquire) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Every shard's sessions lag, for `reason` (counted; see [`push`]).
pub(crate) async fn lag_everyone(shared: &Shared, reason: crate::metrics::PeerLag) {
    shared.metrics.peer_lag(reason);
    for shard in 0..shared.inboxes.len() {
        push(shared, shard, ShardMsg::LagAll).await;
    }
}

/// Why a request was not forwarded: answer its origin with this code.
pub(crate) struct NotForwarded {
    origin: Option<Origin>,
    code: ErrorCode,
    reason: &'static str,
}

impl NotForwarded {
    /// Who must be told, and the error frame that tells them (none for typing).
    pub(crate) fn answer(self) -> Option<(Origin, Bytes)> {
        let origin = self.origin?;
        Some((origin, error(origin.request, self.code, self.reason)))
    }
}

/// This node's view of the others, shared by every thread.
pub(crate) struct Peers {
    me: Arc<str>,
    /// Whether the node has peers (`cluster.peer`).
    on: bool,
    stores: Stores,
    map: PartitionMap,
    /// Which node holds each partition, as etcd says.
    owners: arc_swap::ArcSwap<Vec<Option<Arc<str>>>>,
    /// Which node's entries of each partition are delivered here, and when sessions lag.
    feed: feed::Feed,
    /// The ownership term of each partition this node holds (or last held), which its
    /// entries carry on the feed.
    terms: Vec<AtomicI64>,
    /// The nodes and their peer addresses, for the dialer.
    nodes: tokio::sync::watch::Sender<BTreeMap<String, String>>,
    outbound: arc_swap::ArcSwap<HashMap<Arc<str>, Arc<Outbound>>>,
    inbound: arc_swap::ArcSwap<Vec<Arc<Inbound>>>,
    /// The id the next accepted link gets (never reused while the daemon runs, so an
    /// answer for a link that broke finds no link).
    next_link: std::sync::atomic::AtomicU32,
    /// Account restrictions other nodes ordered, for the sessions starting here.
    pub(crate) orders: operator::Orders,
    /// Account actions this node took, numbered ([`Peers::version`]).
    actions: std::sync::atomic::AtomicU64,
    /// The admin listener, for the account actions other nodes forward.
    admin: std::sync::OnceLock<tokio::sync::mpsc::Sender<operator::Forwarded>>,
}

impl Peers {
    /// The peers of node `me` (none when `on` is false: a node alone, or a standby
    /// cluster's).
    pub(crate) fn new(me: &str, on: bool, stores: Stores) -> Peers {
        let map = stores.map();
        Peers {
            me: Arc::from(me),
            on,
            stores,
            map,
            owners: arc_swap::ArcSwap::from_pointee(vec![None; map.count()]),
            feed: feed::Feed::new(map.count()),
            terms: (0..map.count()).map(|_| AtomicI64::new(0)).collect(),
            nodes: tokio::sync::watch::Sender::new(BTreeMap::new()),
            outbound: arc_swap::ArcSwap::default(),
            inbound: arc_swap::ArcSwap::default(),
            next_link: std::sync::atomic::AtomicU32::new(1),
            orders: operator::Orders::default(),
            actions: std::sync::atomic::AtomicU64::new(0),
            admin: std::sync::OnceLock::new(),
        }
    }

    /// Whether the node forwards to other nodes.
    pub(crate) fn on(&self) -> bool {
        self.on
    }

    /// Puts etcd's view in place: the holder and term of each partition, and every node's
    /// peer address. Returns the generation whose lag every shard must be sent, then
    /// reported ([`Peers::lagged`]), when the view moves a partition this node does not
    /// hold ([`feed::Feed::set_view`]).
    pub(crate) fn set_view(
        &self,
        owners: Vec<Option<(String, i64)>>,
        nodes: BTreeMap<String, String>,
    ) -> Option<u64> {
        let before = self.owners.load();
        let owners: Vec<Option<feed::Source>> = owners
            .into_iter()
            .enumerate()
            .map(|(p, owner)| {
                let (node, term) = owner?;
                let node = match before.get(p).cloned().flatten() {
                    Some(kept) if *kept == *node => kept,
                    _ => Arc::from(node),
                };
                Some((node, term))
            })
            .collect();
        let generation = self.feed.set_view(&owners, |p| self.stores.holds(p));
        let names = owners
            .into_iter()
            .map(|owner| owner.map(|(node, _)| node))
            .collect();
        self.owners.store(Arc::new(names));
        self.nodes.send_if_modified(|known| {
            let changed = *known != nodes;
            *known = nodes;
            changed
        });
        generation
    }

    /// Every shard has been sent the lag of view generation `generation`.
    pub(crate) fn lagged(&self, generation: u64) {
        self.feed.lagged(generation);
    }

    /// Whether a link to `node` that starts or ends may have missed entries this node
    /// delivers: when the view names it holder of a partition ([`feed::Feed::names`]).
    pub(crate) fn feeds_from(&self, node: &str) -> bool {
        self.feed.names(node)
    }

    /// This node holds partition `p` in ownership term `term` (before its shards write it).
    pub(crate) fn hold(&self, p: usize, term: i64) {
        if let Some(at) = self.terms.get(p) {
            at.store(term, Ordering::Release);
        }
    }

    /// What to do with an entry of `conversation` written in term `term` that came on the
    /// link to `node` ([`feed::Feed::entry`]).
    pub(crate) fn feeds(&self, conversation: ConversationId, node: &str, term: i64) -> Verdict {
        let p = self.map.of_conversation(conversation);
        self.feed.entry(p, node, term, self.stores.holds(p))
    }

    /// The partitions this node holds.
    pub(crate) fn held(&self) -> Vec<usize> {
        self.stores.holding()
    }

    /// The partitions this node does not hold and reaches on a link to their node: with the
    /// ones it holds, what it serves (`/readyz`).
    pub(crate) fn reached(&self) -> Vec<usize> {
        (0..self.map.count())
            .filter(|&p| matches!(self.elsewhere(p), Some(Ok(_))))
            .collect()
    }

    /// The node holding partition `p` when it is not this one, and the link to it.
    fn elsewhere(&self, p: usize) -> Option<Result<Arc<Outbound>, Arc<str>>> {
        if !self.on || self.stores.holds(p) {
            return None;
        }
        let owner = self.owners.load().get(p).cloned().flatten()?;
        if *owner == *self.me {
            return None;
        }
        Some(self.outbound.load().get(&owner).cloned().ok_or(owner))
    }

    /// Passes `input` to the node that holds `conversation`'s partition (a room creation:
    /// its name's partition) when it is not this one: `Ok(None)` once queued, `Ok(Some)`
    /// with the input back when this node holds it (or nobody is known to).
    pub(crate) fn forward(
        &self,
        conversation: ConversationId,
        input: Input,
    ) -> Result<Option<Input>, NotForwarded> {
        if !self.on {
            return Ok(Some(input));
        }
        let p = match &input {
            Input::Create { name, .. } => self.map.of_name(name),
            _ => self.map.of_conversation(conversation),
        };
        let Some(route) = self.elsewhere(p) else {
            return Ok(Some(input));
        };
        let up = Up::of(conversation, input).map_err(|reason| NotForwarded {
            origin: None,
            code: ErrorCode::INTERNAL,
            reason,
        })?;
        let origin = up.waiting().map(|from| from.origin(Link::HERE));
        let link = route.map_err(|_| NotForwarded {
            origin,
            code: ErrorCode::UNAVAILABLE,
            reason: "the conversation's node is not reachable",
        })?;
        match link.tx.try_send(ToOwner::Up(up)) {
            Ok(()) => Ok(None),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => Err(NotForwarded {
                origin,
                code: ErrorCode::OVERLOADED,
                reason: "the link to the conversation's node is full",
            }),
            // The link ended since it was looked up.
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(NotForwarded {
                origin,
                code: ErrorCode::UNAVAILABLE,
                reason: "the conversation's node is not reachable",
            }),
        }
    }

    /// Sends `frame`, the answer to a request forwarded over `origin`'s link, back.
    pub(crate) fn reply(&self, origin: &Origin, frame: Bytes) {
        let inbound = self.inbound.load();
        if let Some(link) = inbound.iter().find(|l| l.link == origin.at.link) {
            link.send(Queued::Reply {
                shard: u32::try_from(origin.at.shard).unwrap_or(u32::MAX),
                conn: origin.at.conn.0,
                request: origin.request.0,
                frame,
            });
        }
        // A link that is gone: its node answered the request UNAVAILABLE when it broke.
    }

    /// Sends an event this node published to every node that dialed it (the feed), for
    /// their connections of `audience` except `except`.
    pub(crate) fn publish(
        &self,
        frame: &Bytes,
        audience: &Arc<[UserId]>,
        except: Option<ConnRef>,
        live: Live,
    ) {
        let inbound = self.inbound.load();
        if inbound.is_empty() {
            return;
        }
        let kind = wire::Kind::of(live, |c| {
            let p = self.map.of_conversation(c);
            self.terms.get(p).map_or(0, |t| t.load(Ordering::Acquire))
        });
        for link in inbound.iter() {
            let except = except
                .filter(|at| at.link == link.link)
                .map(|at| (u32::try_from(at.shard).unwrap_or(u32::MAX), at.conn.0));
            link.send(Queued::Event {
                frame: frame.clone(),
                audience: Arc::clone(audience),
                except,
                kind,
            });
        }
    }

    /// Users whose first device connected to this node (`None`), or whose last one here
    /// left (since when), in order: told to every node that dialed this one (from a
    /// registry shard, once per turn of its loop).
    pub(crate) fn presence_changed(&self, changes: Vec<(UserId, Option<Timestamp>)>) {
        let inbound = self.inbound.load();
        if inbound.is_empty() || changes.is_empty() {
            return;
        }
        let changes: Arc<[_]> = changes.into();
        for link in inbound.iter() {
            link.send(Queued::Presence {
                changes: Arc::clone(&changes),
            });
        }
    }

    /// Tells the node behind `link`, which just dialed this one, that `online` have a
    /// device here (from a registry shard, after which its changes follow on the link).
    pub(crate) fn presence_to(&self, link: Link, online: Vec<UserId>) {
        let inbound = self.inbound.load();
        let Some(link) = inbound.iter().find(|l| l.link == link) else {
            return;
        };
        for chunk in online.chunks(PRESENCE_CHUNK) {
            link.send(Queued::Presence {
                changes: chunk.iter().map(|user| (*user, None)).collect(),
            });
        }
    }

    /// Sends `call` to the node holding partition `p` and waits for the answer (from a
    /// pool thread: it blocks).
    fn call(&self, p: usize, call: Call) -> Result<Vec<u8>, Error> {
        self.call_within(p, call, CALL_TIMEOUT)
    }

    /// [`Peers::call`], waiting up to `timeout`.
    fn call_within(&self, p: usize, call: Call, timeout: Duration) -> Result<Vec<u8>, Error> {
        let link = match self.elsewhere(p) {
            None => return Err(Error::NotHere(p)),
            Some(Err(node)) => {
                return Err(Error::Remote {
                    partition: p,
                    message: format!("node {node} is not reachable"),
                });
            }
            Some(Ok(link)) => link,
        };
        let answer = link.ask(call, p, timeout)?;
        answer.recv_timeout(timeout).unwrap_or_else(|_| {
            Err(Error::Remote {
                partition: p,
                message: NO_ANSWER.into(),
            })
        })
    }

    /// Whether an account named `name` is created by another node (its partition is
    /// held there).
    pub(crate) fn claims_elsewhere(&self, name: &str) -> bool {
        self.elsewhere(self.map.of_name(name)).is_some()
    }

    /// Creates the account `name` on the node holding its partition (from a pool thread):
    /// its record, or `Ok(None)` when the name is taken.
    pub(crate) fn create_account(
        &self,
        name: &str,
        password_hash: Option<String>,
        created_at: chat_protocol::Timestamp,
    ) -> Result<Option<crate::store::UserRecord>, Error> {
        let p = self.map.of_name(name);
        let call = Call::CreateAccount {
            name: name.to_owned(),
            password_hash,
            created_at,
        };
        match self.call(p, call) {
            Ok(bytes) => wire::decode(&bytes)
                .map(Some)
                .map_err(|message| Error::Remote {
                    partition: p,
                    message,
                }),
            Err(Error::Remote { message, .. }) if message == EXISTS => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What a refused call's `Refused::Exists` becomes on the way back.
const EXISTS: &str = "the name is taken";

impl Refused {
    pub(crate) fn error(self, partition: usize) -> Error {
        match self {
            Refused::NotHere => Error::NotHere(partition),
            Refused::Exists => Error::Remote {
                partition,
                message: EXISTS.into(),
            },
            Refused::Busy => Error::Remote {
                partition,
                message: "the node is busy".into(),
            },
            Refused::Failed(message) => Error::Remote { partition, message },
        }
    }
}

impl Remote for Peers {
    fn read(&self, partition: usize, read: Read) -> Result<Vec<u8>, Error> {
        let p = u32::try_from(partition).unwrap_or(u32::MAX);
        self.call(partition, Call::Read { partition: p, read })
    }
}
