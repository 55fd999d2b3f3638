//! A conversation's rules, without I/O: the state machine that orders a conversation.
//!
//! [`Conversations`] holds the conversations a shard owns; each is loading (its inputs wait)
//! or a [`Conversation`]: the committed head, each recent sender's window of op ids
//! ([`dedupe`]), the room's membership, the members' markers and the audience (who receives
//! its events). Inputs (requests, commit results, reads) go in with a [`Ctx`] (the time and the
//! limits); what must happen comes out as [`Effect`]s, which the owner ([`super::owner`])
//! carries out: reply, publish an event, load, commit, read. Nothing here touches a socket,
//! the store, a clock or another thread, so every rule is tested by feeding inputs (`tests`).
//!
//! Operations that add log entries are checked against the state, applied to it and queued;
//! while one commit of the conversation is with the storage thread, later entries wait in
//! `queued` and go together in the next commit. Sequence numbers are assigned when a commit is
//! asked for, contiguous from the committed head, so a failed commit leaves no hole: every
//! pending request is answered `UNAVAILABLE` and the conversation is forgotten, to be reloaded
//! from disk on next use. Only after a commit returns are the sender acked and the event
//! published, so nothing is visible before it is durable.

mod change;
mod commit;
mod dedupe;
mod marks;
mod rooms;
mod send;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use chat_protocol::{
    ConversationId, Entry, ErrorCode, Event, HistoryQuery, Marker, Receipt, Response, Role, RoomId,
    SendMessage, Seq, Timestamp, UserId, chain,
};

use super::{ConnRef, Origin};
use crate::store::writer::{Batch, WriteError};
use crate::store::{Cf, ConversationSnapshot, SenderOp, encode_link, keys};
pub(crate) use change::Change;
use dedupe::Senders;
pub(crate) use rooms::{Room, RoomAction};
use send::Op;
pub(crate) use send::valid_content;

/// What a conversation is told.
#[derive(Debug)]
pub(crate) enum Input {
    /// Post a message.
    Send {
        origin: Origin,
        message: SendMessage,
    },
    /// Edit or delete a message.
    Change { origin: Origin, change: Change },
    /// Read a page (membership and the page size are checked here, the read runs elsewhere).
    History { origin: Origin, query: HistoryQuery },
    /// Create a room (the conversation is new).
    Create {
        origin: Origin,
        name: String,
        invite_only: bool,
    },
    /// A membership operation on a room.
    Room { origin: Origin, action: RoomAction },
    /// Someone is typing (or stopped): published to the other members, never stored.
    Typing { origin: Origin, active: bool },
    /// Move the sender's delivered or read marker.
    Mark {
        origin: Origin,
        marker: Marker,
        seq: Seq,
    },
    /// The storage thread finished this conversation's commit.
    Committed(Result<(), WriteError>),
    /// The storage queue refused the commit of the last [`Effect::Commit`]; `moved`: the
    /// node no longer holds the conversation's partition (it is being handed over).
    Refused { moved: bool },
    /// A sender's recent sends (for deduplication), as asked by [`Effect::ReadSenderOps`].
    SenderOps {
        instance: u64,
        sender: UserId,
        result: Result<Vec<SenderOp>, ReadError>,
    },
    /// A stored entry that changes wait for, as asked by [`Effect::ReadEntry`].
    EntryRead {
        instance: u64,
        seq: Seq,
        result: Result<Option<Entry>, ReadError>,
    },
}

/// Why a read that a conversation asked for brought no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The read pool's queue was full: the read was not started.
    #[error("the read pool is full")]
    Busy,
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

impl ReadError {
    /// What the requests that waited for the read are told (the owner logged the error).
    fn refusal(&self) -> Refusal {
        match self {
            ReadError::Busy => Refusal {
                code: ErrorCode::OVERLOADED,
                reason: "the read pool is full",
            },
            ReadError::Store(_) => Refusal {
                code: ErrorCode::UNAVAILABLE,
                reason: "storage unavailable",
            },
        }
    }
}

impl Input {
    /// The request this input answers, if it is one.
    fn origin(&self) -> Option<&Origin> {
        match self {
            Input::Send { origin, .. }
            | Input::Change { origin, .. }
            | Input::History { origin, .. }
            | Input::Create { origin, .. }
            | Input::Room { origin, .. }
            | Input::Mark { origin, .. } => Some(origin),
            Input::Committed(_)
            | Input::Refused { .. }
            | Input::Typing { .. }
            | Input::SenderOps { .. }
            | Input::EntryRead { .. } => None,
        }
    }
}

/// A refused request: its error code and the reason given (empty: the code's own text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) reason: &'static str,
}

/// The answer to a request.
pub(crate) type Answer = Result<Response, Refusal>;

fn refuse(code: ErrorCode, reason: &'static str) -> Answer {
    Err(Refusal { code, reason })
}

/// What the owner must do, in order.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Answer request `to`.
    Reply { to: Origin, answer: Answer },
    /// Send `event` to the connected devices of `audience`, except the connection `except`.
    Publish {
        event: Event,
        audience: Arc<[UserId]>,
        except: Option<ConnRef>,
    },
    /// Read the conversation's stored state; answer with [`Conversations::loaded`].
    Load(ConversationId),
    /// Commit `batch`; answer with [`Input::Committed`], or [`Input::Refused`] when the
    /// storage queue does not take it. At most one per conversation is in flight.
    Commit {
        conversation: ConversationId,
        batch: Batch,
    },
    /// Read the `rows` most recent stored sends of `sender` (its window); answer with
    /// [`Input::SenderOps`] with the same `instance`.
    ReadSenderOps {
        conversation: ConversationId,
        instance: u64,
        sender: UserId,
        rows: usize,
    },
    /// Read the stored entry `seq`; answer with [`Input::EntryRead`] with the same
    /// `instance`.
    ReadEntry {
        conversation: ConversationId,
        instance: u64,
        seq: Seq,
    },
    /// Read a history page (checked) no further than `head`, and answer `to` with it.
    ReadHistory {
        to: Origin,
        query: HistoryQuery,
        head: Seq,
    },
    /// Read the names of a page of members and answer `to` with it.
    ReadMembers {
        to: Origin,
        room: RoomId,
        page: Vec<(UserId, Role)>,
        next: Option<UserId>,
    },
}

/// What the rules read besides the conversation: the time and the running configuration.
pub(crate) struct Ctx<'a> {
    pub(crate) now: Timestamp,
    /// The largest page a client may ask for.
    pub(crate) max_page: u16,
    pub(crate) max_room_members: u32,
    /// Sends remembered per sender (`storage.dedupe_window`) and in all
    /// (`storage.dedupe_cache`), for conversations loaded from now on.
    pub(crate) dedupe_window: usize,
    pub(crate) dedupe_cache: usize,
    /// Whether commits carry outbox events (the bridge is configured).
    pub(crate) outbox: bool,
    /// Whether a user has a connected device (for the offline recipients of an event).
    pub(crate) online: &'a dyn Fn(UserId) -> bool,
}

/// The conversations one shard owns.
#[derive(Default)]
pub(crate) struct Conversations {
    slots: HashMap<ConversationId, Slot>,
    /// Numbers each conversation loaded or created: a read asked for by one that was
    /// forgotten since is told from one asked for by its reload.
    instances: u64,
}

enum Slot {
    /// Waiting for [`Effect::Load`]; inputs wait with it.
    Loading(Vec<Input>),
    Ready(Box<Conversation>),
}

/// Whether the conversation stays in memory after an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
enum Fate {
    Keep,
    /// A write failed or was refused: the state in memory may be ahead of the disk. Forget
    /// it; the next input reloads what is stored.
    Forget,
}

impl Conversations {
    /// Gives `input` to conversation `id`, loading it first when it is not in memory.
    pub(crate) fn handle(
        &mut self,
        id: ConversationId,
        input: Input,
        ctx: &Ctx<'_>,
        out: &mut Vec<Effect>,
    ) {
        match self.slots.get_mut(&id) {
            Some(Slot::Ready(conversation)) => {
                if conversation.handle(input, ctx, out) == Fate::Forget {
                    self.slots.remove(&id);
                }
            }
            Some(Slot::Loading(waiting)) => waiting.push(input),
            None => match input {
                Input::Create {
                    origin,
                    name,
                    invite_only,
                } => self.create(id, origin, name, invite_only, ctx, out),
                Input::Committed(_) | Input::Refused { .. } => {
                    tracing::warn!(conversation = %id, "commit result for an unknown conversation");
                }
                // The conversation was forgotten (and its waiting requests answered) meanwhile.
                Input::SenderOps { .. } | Input::EntryRead { .. } => {}
                input => {
                    self.slots.insert(id, Slot::Loading(vec![input]));
                    out.push(Effect::Load(id));
                }
            },
        }
    }

    /// Starts a new room's conversation with its creation entry.
    fn create(
        &mut self,
        id: ConversationId,
        origin: Origin,
        name: String,
        invite_only: bool,
        ctx: &Ctx<'_>,
        out: &mut Vec<Effect>,
    ) {
        self.instances += 1;
        let snapshot = ConversationSnapshot::default();
        let mut conversation = Conversation::new(id, snapshot, self.instances, ctx);
        conversation.create_room(origin, name, invite_only, ctx);
        conversation.submit(out);
        self.slots.insert(id, Slot::Ready(Box::new(conversation)));
    }

    /// The stored state of conversation `id` arrived (`None`: it does not exist): the inputs
    /// that waited for it go on, in order.
    pub(crate) fn loaded(
        &mut self,
        id: ConversationId,
        result: Result<Option<ConversationSnapshot>, ReadError>,
        ctx: &Ctx<'_>,
        out: &mut Vec<Effect>,
    ) {
        let waiting = match self.slots.remove(&id) {
            Some(Slot::Loading(waiting)) => waiting,
            Some(ready) => {
                self.slots.insert(id, ready);
                return;
            }
            None => return,
        };
        let refusal = match result {
            Ok(Some(snapshot)) => {
                self.instances += 1;
                let conversation = Conversation::new(id, snapshot, self.instances, ctx);
                self.slots.insert(id, Slot::Ready(Box::new(conversation)));
                for input in waiting {
                    self.handle(id, input, ctx, out);
                }
                return;
            }
            Ok(None) => {
                // A room that does not exist yet may be the one being created: someone asked
                // for the next room id while its creation waited behind the load.
                let mut waiting = waiting.into_iter();
                let mut refused = Vec::new();
                for input in waiting.by_ref() {
                    if let Input::Create { .. } = input {
                        self.handle(id, input, ctx, out);
                        break;
                    }
                    refused.push(input);
                }
                for input in waiting {
                    self.handle(id, input, ctx, out);
                }
                let refusal = match id {
                    ConversationId::Room(_) => Refusal {
                        code: ErrorCode::UNKNOWN_ROOM,
                        reason: "",
                    },
                    _ => Refusal {
                        code: ErrorCode::UNKNOWN_USER,
                        reason: "the other user does not exist",
                    },
                };
                answer_all(&refused, refusal, out);
                return;
            }
            Err(e) => e.refusal(),
        };
        answer_all(&waiting, refusal, out);
    }

    /// Forgets the conversations `belongs` picks (their partition left this node, or came
    /// back to it), answering every request waiting in them with `UNAVAILABLE`: whoever holds
    /// the partition next serves them from what is stored. A commit of theirs still in flight
    /// is acknowledged by nobody; a resend of it is recognised by its op id.
    pub(crate) fn evict(
        &mut self,
        belongs: impl Fn(ConversationId) -> bool,
        out: &mut Vec<Effect>,
    ) {
        let refusal = Refusal {
            code: ErrorCode::UNAVAILABLE,
            reason: "the conversation's partition moved",
        };
        let gone: Vec<_> = self.slots.keys().copied().filter(|c| belongs(*c)).collect();
        for c in gone {
            match self.slots.remove(&c) {
                Some(Slot::Ready(mut conversation)) => {
                    conversation.fail_pending(refusal.code, refusal.reason, out);
                }
                Some(Slot::Loading(waiting)) => answer_all(&waiting, refusal, out),
                None => {}
            }
        }
    }

    /// Conversations held (loading or ready).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Drops idle conversations beyond `cap` (none with commits in flight or inputs waiting).
    pub(crate) fn evict_idle(&mut self, cap: usize) {
        let excess = self.slots.len().saturating_sub(cap);
        if excess == 0 {
            return;
        }
        let idle: Vec<ConversationId> = self
            .slots
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Ready(c) if c.idle()))
            .map(|(c, _)| *c)
            .take(excess)
            .collect();
        for c in idle {
            self.slots.remove(&c);
        }
    }

    /// Whether no conversation has a commit in flight or queued, or inputs waiting.
    pub(crate) fn idle(&self) -> bool {
        self.slots.values().all(|slot| match slot {
            Slot::Ready(c) => c.idle(),
            Slot::Loading(waiting) => waiting.is_empty(),
        })
    }
}

fn answer_all(inputs: &[Input], refusal: Refusal, out: &mut Vec<Effect>) {
    for origin in inputs.iter().filter_map(Input::origin) {
        out.push(Effect::Reply {
            to: *origin,
            answer: Err(refusal),
        });
    }
}

/// An entry waiting for its commit.
struct Pending {
    origin: Origin,
    entry: Entry,
    /// Who receives the event: the audience when the entry was queued, plus anyone it
    /// concerns who is not (an invited, kicked or banned user).
    audience: Arc<[UserId]>,
    /// The answer to `origin` once committed; `None` for a send (the ack is built from the
    /// assigned sequence number) and for an entry that follows another of the same request
    /// (one answer per request).
    reply: Option<Response>,
    /// Duplicate sends that arrived while this one was pending: they get its ack.
    waiters: Vec<Origin>,
    /// The entry's digest in the hash chain, set when it is submitted (acks carry it).
    digest: chain::Hash,
}

/// One loaded conversation.
pub(crate) struct Conversation {
    id: ConversationId,
    /// Which load of the conversation this is (reads answer with it).
    instance: u64,
    committed: Seq,
    /// Each recent sender's window of op ids; sends, edits and deletes of senders whose
    /// window is being read wait here.
    senders: Senders<(Origin, Op)>,
    /// Messages that edits and deletes are reading, or changed in commits not yet durable.
    targets: HashMap<Seq, change::Target>,
    /// Changes of entries in the commit in flight, for after it.
    after_commit: Vec<(Origin, Change)>,
    /// Entries in the commit with the storage thread, in sequence order.
    committing: Vec<Pending>,
    /// Entries waiting for the next commit.
    queued: Vec<Pending>,
    /// Extra writes of the queued entries (membership rows, conversation lists, sender ops,
    /// markers, outbox events).
    queued_batch: Batch,
    /// Marker moves waiting for the next commit, and those in the commit in flight.
    queued_receipts: Vec<(Origin, Receipt)>,
    committing_receipts: Vec<(Origin, Receipt)>,
    /// Every member's (delivered, read) markers.
    marks: HashMap<UserId, (Seq, Seq)>,
    room: Option<Room>,
    audience: Arc<[UserId]>,
    /// Whether commits carry outbox events.
    outbox: bool,
    /// The link of the last entry handed to storage (`chat_protocol::chain`): the next
    /// entry's link starts from it.
    tip: chain::Hash,
}

impl Conversation {
    fn new(
        id: ConversationId,
        snapshot: ConversationSnapshot,
        instance: u64,
        ctx: &Ctx<'_>,
    ) -> Conversation {
        let mut conversation = Conversation {
            id,
            instance,
            committed: snapshot.head,
            senders: Senders::new(ctx.dedupe_window, ctx.dedupe_cache, snapshot.head == Seq(0)),
            targets: HashMap::new(),
            after_commit: Vec::new(),
            committing: Vec::new(),
            queued: Vec::new(),
            queued_batch: Batch::default(),
            queued_receipts: Vec::new(),
            committing_receipts: Vec::new(),
            marks: snapshot
                .marks
                .iter()
                .map(|(u, d, r)| (*u, (*d, *r)))
                .collect(),
            room: snapshot
                .room
                .map(|(record, people)| Room::new(record, people)),
            audience: Arc::from(Vec::new()),
            outbox: ctx.outbox,
            tip: snapshot.tip.unwrap_or_else(|| chain::genesis(id)),
        };
        conversation.refresh_audience();
        conversation
    }

    fn handle(&mut self, input: Input, ctx: &Ctx<'_>, out: &mut Vec<Effect>) -> Fate {
        let fate = match input {
            Input::Committed(result) => self.committed(result, ctx, out),
            Input::Refused { moved: false } => {
                self.fail_pending(ErrorCode::OVERLOADED, "storage queue full", out);
                Fate::Forget
            }
            // Sent again, they reach the partition's next holder.
            Input::Refused { moved: true } => {
                let reason = "the conversation's partition moved";
                self.fail_pending(ErrorCode::UNAVAILABLE, reason, out);
                Fate::Forget
            }
            Input::Send { origin, message } => {
                self.post(origin, Op::Send(message), ctx, out);
                Fate::Keep
            }
            Input::Change { origin, change } => {
                self.post(origin, Op::Change(change), ctx, out);
                Fate::Keep
            }
            // A read asked for before the conversation was forgotten and loaded again: what it
            // read may be older than what this load saw since.
            Input::SenderOps { instance, .. } | Input::EntryRead { instance, .. }
                if instance != self.instance =>
            {
                Fate::Keep
            }
            Input::SenderOps { sender, result, .. } => {
                self.sender_ops(sender, result, ctx, out);
                Fate::Keep
            }
            Input::EntryRead { seq, result, .. } => {
                self.entry_read(seq, result, ctx, out);
                Fate::Keep
            }
            Input::History { origin, query } => {
                self.history(origin, query, ctx, out);
                Fate::Keep
            }
            Input::Room { origin, action } => {
                self.room_action(origin, action, ctx, out);
                Fate::Keep
            }
            Input::Mark {
                origin,
                marker,
                seq,
            } => {
                self.mark(origin, marker, seq, out);
                Fate::Keep
            }
            Input::Typing { origin, active } => {
                self.typing(&origin, active, out);
                Fate::Keep
            }
            Input::Create { origin, .. } => {
                reply(
                    out,
                    origin,
                    refuse(ErrorCode::INTERNAL, "room id collision"),
                );
                Fate::Keep
            }
        };
        if fate == Fate::Keep {
            self.submit(out);
        }
        fate
    }

    fn refresh_audience(&mut self) {
        self.audience = match (self.id, &self.room) {
            (ConversationId::Direct { low, high }, _) => Arc::from(vec![low, high]),
            (ConversationId::Notes(user), _) => Arc::from(vec![user]),
            (ConversationId::Room(_), Some(room)) => room.members().collect(),
            (ConversationId::Room(_), None) => Arc::from(Vec::new()),
        };
    }

    /// A commit of this conversation is with the storage thread.
    fn committing_now(&self) -> bool {
        !self.committing.is_empty() || !self.committing_receipts.is_empty()
    }

    /// Nothing in flight, nothing queued, no sends waiting for a sender's window, no changes
    /// waiting for their message.
    fn idle(&self) -> bool {
        !self.committing_now()
            && self.queued.is_empty()
            && self.queued_receipts.is_empty()
            && !self.senders.loading()
            && self.targets.is_empty()
            && self.after_commit.is_empty()
    }

    /// Whether `user` may post here: a member, or the operator deleting a message
    /// (`shard::erase`), who is no member and may do nothing else.
    fn may_post(&self, user: UserId, delete: bool) -> bool {
        self.is_member(user) || (delete && user == crate::shard::OPERATOR)
    }

    fn is_member(&self, user: UserId) -> bool {
        match &self.room {
            Some(room) => room.role(user).is_some(),
            None => self.id.is_direct_member(user),
        }
    }

    /// The next sequence number a queued entry will get.
    fn next_seq(&self) -> Seq {
        Seq(self.committed.0 + (self.committing.len() + self.queued.len()) as u64 + 1)
    }

    /// `History`: members only, a page of 1 to `max_page` entries (of one thread, whose root
    /// must be committed), read up to the committed head (nothing that is not durable yet).
    fn history(&self, origin: Origin, query: HistoryQuery, ctx: &Ctx<'_>, out: &mut Vec<Effect>) {
        if !self.is_member(origin.user) {
            return reply(out, origin, refuse(ErrorCode::NOT_MEMBER, ""));
        }
        if let Err(refusal) = check_page(query.limit, ctx.max_page) {
            return reply(out, origin, Err(refusal));
        }
        if let Some(root) = query.thread
            && (root == Seq(0) || root > self.committed)
        {
            return reply(
                out,
                origin,
                refuse(ErrorCode::UNKNOWN_MESSAGE, "no such thread root"),
            );
        }
        out.push(Effect::ReadHistory {
            to: origin,
            query,
            head: self.committed,
        });
    }
}

/// Whether a page size is 1 to `max_page`.
pub(crate) fn check_page(limit: u16, max_page: u16) -> Result<(), Refusal> {
    if limit == 0 || limit > max_page {
        return Err(Refusal {
            code: ErrorCode::INVALID_REQUEST,
            reason: "limit must be 1 to max_page",
        });
    }
    Ok(())
}

fn reply(out: &mut Vec<Effect>, to: Origin, answer: Answer) {
    out.push(Effect::Reply { to, answer });
}
