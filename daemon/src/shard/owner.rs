//! Conversation ownership: the shard that owns a conversation orders it.
//!
//! Per conversation the owner keeps a [`State`]: the committed head, each recent sender's
//! window of op ids ([`dedupe`]), the room's membership, and the audience (who receives its
//! events). Operations that add log entries are validated against the state, applied to it,
//! and queued; while one commit of the conversation is with the storage thread, later entries
//! wait in `queued` and go together in the next commit. Sequence numbers are assigned when a
//! commit is submitted, contiguous from the committed head, so a failed commit leaves no hole:
//! the owner answers `UNAVAILABLE` to everything pending and forgets the conversation, which is
//! reloaded from disk on next use.
//!
//! Only after a commit returns does the owner ack the sender and fan the event out (one
//! `Fanout` per registry shard of the audience), so nothing is visible before it is durable.

mod dedupe;

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use chat_protocol::{
    ContentType, ConversationId, Entry, ErrorCode, Event, HistoryPage, HistoryQuery, Marker,
    Member, MemberPage, MembershipChange, MembershipEvent, Message, OpId, Receipt, Response, Role,
    RoomId, RoomInfo, SendAck, SendMessage, Seq, ServerFrame, TypingEvent, UserId,
};

use super::{Done, DoneThen, Origin, Shard, ShardId, ShardMsg, encode, error, now_ms, response};
use crate::config::StorageConfig;
use crate::store::writer::{Batch, WriteError};
use crate::store::{
    Cf, ConversationSnapshot, MemberState, RoomRecord, SenderOp, keys, outbox, to_json,
};
use dedupe::{Lookup, Senders};

/// Operations for a conversation's owner.
pub(crate) enum Op {
    /// Post a message.
    Send {
        origin: Origin,
        message: SendMessage,
    },
    /// Read a page (membership is checked here, the read runs on the pool).
    History { origin: Origin, query: HistoryQuery },
    /// Create a room (the conversation is new).
    Create {
        origin: Origin,
        name: String,
        invite_only: bool,
    },
    /// A membership operation on a room.
    Room { origin: Origin, action: RoomAction },
    /// Someone is typing (or stopped): pushed to the other members, never stored.
    Typing { origin: Origin, active: bool },
    /// Move the sender's delivered or read marker.
    Mark {
        origin: Origin,
        marker: Marker,
        seq: Seq,
    },
    /// The storage thread finished this conversation's commit.
    Committed(Result<(), WriteError>),
    /// The read pool read a sender's recent sends (for deduplication).
    SenderOps {
        sender: UserId,
        result: Result<Vec<SenderOp>, String>,
    },
}

/// Membership operations.
pub(crate) enum RoomAction {
    Join,
    Leave,
    Invite(UserId),
    Kick(UserId),
    Ban(UserId),
    Unban(UserId),
    SetRole(UserId, Role),
    Members {
        after: Option<UserId>,
        limit: u16,
    },
    /// The room's public description (for `FindRoom`).
    Info,
}

/// What the read pool found for a conversation.
pub(crate) struct Loaded {
    pub(crate) snapshot: ConversationSnapshot,
}

/// The conversations this shard owns.
#[derive(Default)]
pub(crate) struct Conversations {
    slots: HashMap<ConversationId, Slot>,
}

enum Slot {
    /// Waiting for the read pool; operations wait with it.
    Loading(Vec<Op>),
    Ready(Box<State>),
}

struct Room {
    record: RoomRecord,
    /// Members, invitations and bans, ordered by user id (for member pages).
    people: BTreeMap<UserId, MemberState>,
    member_count: u32,
}

impl Room {
    fn role(&self, user: UserId) -> Option<Role> {
        match self.people.get(&user) {
            Some(MemberState::Member(role)) => Some(*role),
            _ => None,
        }
    }

    fn owner(&self) -> UserId {
        self.people
            .iter()
            .find_map(|(u, s)| (*s == MemberState::Member(Role::Owner)).then_some(*u))
            .unwrap_or_default()
    }

    fn info(&self) -> RoomInfo {
        RoomInfo {
            room: self.record.id,
            name: self.record.name.clone(),
            invite_only: self.record.invite_only,
            owner: self.owner(),
            members: self.member_count,
        }
    }
}

/// An entry waiting for its commit.
struct Pending {
    origin: Origin,
    entry: Entry,
    /// Who receives the event: the audience when the entry was queued, plus anyone it
    /// concerns who is not (an invited, kicked or banned user).
    audience: Arc<[UserId]>,
    /// The response to send to `origin` once committed; `None` for a send (the ack is built
    /// from the assigned sequence number) and for an entry that follows another of the same
    /// request (one answer per request).
    reply: Option<Response>,
    /// Duplicate sends that arrived while this one was pending: they get its ack.
    waiters: Vec<Origin>,
}

struct State {
    id: ConversationId,
    committed: Seq,
    /// Each recent sender's window of op ids; sends of senders whose window is being read
    /// wait here.
    senders: Senders<(Origin, SendMessage)>,
    /// Entries in the commit with the storage thread, in sequence order.
    committing: Vec<Pending>,
    /// Entries waiting for the next commit.
    queued: Vec<Pending>,
    /// Extra writes of the queued entries (membership rows, conversation lists).
    queued_batch: Batch,
    /// Marker moves waiting for the next commit, and those in the commit in flight.
    queued_receipts: Vec<(Origin, Receipt)>,
    committing_receipts: Vec<(Origin, Receipt)>,
    /// Every member's (delivered, read) markers.
    marks: HashMap<UserId, (Seq, Seq)>,
    room: Option<Room>,
    audience: Arc<[UserId]>,
    /// Whether commits carry outbox events (the bridge is configured).
    outbox: bool,
}

impl State {
    fn from_snapshot(
        id: ConversationId,
        snapshot: ConversationSnapshot,
        storage: &StorageConfig,
        outbox: bool,
    ) -> State {
        let room = snapshot.room.map(|(record, people)| {
            let people: BTreeMap<_, _> = people.into_iter().collect();
            let member_count = people
                .values()
                .filter(|s| matches!(s, MemberState::Member(_)))
                .count();
            Room {
                record,
                people,
                member_count: u32::try_from(member_count).unwrap_or(u32::MAX),
            }
        });
        let mut state = State {
            id,
            committed: snapshot.head,
            senders: Senders::new(
                storage.dedupe_window,
                storage.dedupe_cache,
                snapshot.head == Seq(0),
            ),
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
            room,
            audience: Arc::from(Vec::new()),
            outbox,
        };
        state.refresh_audience();
        state
    }

    fn refresh_audience(&mut self) {
        self.audience = match (self.id, &self.room) {
            (ConversationId::Direct { low, high }, _) => Arc::from(vec![low, high]),
            (ConversationId::Notes(user), _) => Arc::from(vec![user]),
            (ConversationId::Room(_), Some(room)) => room
                .people
                .iter()
                .filter_map(|(u, s)| matches!(s, MemberState::Member(_)).then_some(*u))
                .collect(),
            (ConversationId::Room(_), None) => Arc::from(Vec::new()),
        };
    }

    /// A commit of this conversation is with the storage thread.
    fn committing_now(&self) -> bool {
        !self.committing.is_empty() || !self.committing_receipts.is_empty()
    }

    /// Nothing in flight, nothing queued, no sends waiting for a sender's window.
    fn idle(&self) -> bool {
        !self.committing_now()
            && self.queued.is_empty()
            && self.queued_receipts.is_empty()
            && !self.senders.loading()
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

    /// Deletes, in the next commit, the stored row of a send that left its sender's window.
    fn delete_sender_op(&mut self, sender: UserId, op: SenderOp) {
        self.queued_batch.delete(
            Cf::SenderOps,
            keys::sender_op(self.id, sender, op.seq).to_vec(),
        );
    }

    fn pending_send(&mut self, sender: UserId, op: OpId) -> Option<&mut Pending> {
        self.committing
            .iter_mut()
            .chain(self.queued.iter_mut())
            .find(|p| matches!(&p.entry, Entry::Message(m) if m.sender == sender && m.op == op))
    }
}

/// Entry point for operations on a conversation owned by this shard.
pub(crate) fn handle(shard: &Rc<Shard>, conversation: ConversationId, op: Op) {
    let mut conversations = shard.owner.borrow_mut();
    match conversations.slots.get_mut(&conversation) {
        Some(Slot::Ready(state)) => {
            let state = &mut **state;
            let forget = match op {
                Op::Committed(result) => committed(shard, state, result) || !submit(shard, state),
                op => {
                    apply(shard, state, op);
                    !submit(shard, state)
                }
            };
            if forget {
                // A write failed or could not be queued: the state in memory may be ahead of
                // the disk. Forget it; the next operation reloads what is stored.
                conversations.slots.remove(&conversation);
            }
        }
        Some(Slot::Loading(waiting)) => waiting.push(op),
        None => match op {
            Op::Create {
                origin,
                name,
                invite_only,
            } => {
                drop(conversations);
                create(shard, conversation, origin, name, invite_only);
            }
            Op::Committed(_) => {
                tracing::warn!(%conversation, "commit result for an unknown conversation")
            }
            // The conversation was forgotten (and its waiting sends answered) meanwhile.
            Op::SenderOps { .. } => {}
            op => {
                conversations
                    .slots
                    .insert(conversation, Slot::Loading(vec![op]));
                drop(conversations);
                start_load(shard, conversation);
            }
        },
    }
}

/// Starts a new room's conversation with its creation entry.
fn create(
    shard: &Rc<Shard>,
    conversation: ConversationId,
    origin: Origin,
    name: String,
    invite_only: bool,
) {
    let mut state = State::from_snapshot(
        conversation,
        ConversationSnapshot::default(),
        &shard.shared.config().storage,
        shard.shared.config().bridge.enabled(),
    );
    create_room(&mut state, origin, name, invite_only);
    if submit(shard, &mut state) {
        shard
            .owner
            .borrow_mut()
            .slots
            .insert(conversation, Slot::Ready(Box::new(state)));
    }
}

fn start_load(shard: &Rc<Shard>, conversation: ConversationId) {
    let shared = Arc::clone(&shard.shared);
    let id = shard.id;
    let submitted = shard.shared.reads.submit(move |store| {
        let result = (|| {
            // Direct conversations exist between existing users only.
            if let ConversationId::Direct { low, high } = conversation
                && (store.user(low)?.is_none() || store.user(high)?.is_none())
            {
                return Ok(None);
            }
            Ok(store
                .load_conversation(conversation)?
                .map(|snapshot| Loaded { snapshot }))
        })()
        .map_err(|e: crate::store::Error| e.to_string());
        shared.push_blocking(
            id,
            ShardMsg::Loaded {
                conversation,
                result,
            },
        );
    });
    if !submitted {
        loaded(shard, conversation, Err("the read pool is full".into()));
    }
}

/// The read pool loaded a conversation: replay the operations that waited for it.
pub(crate) fn loaded(
    shard: &Rc<Shard>,
    conversation: ConversationId,
    result: Result<Option<Loaded>, String>,
) {
    let removed = shard.owner.borrow_mut().slots.remove(&conversation);
    let waiting = match removed {
        Some(Slot::Loading(waiting)) => waiting,
        Some(ready) => {
            shard.owner.borrow_mut().slots.insert(conversation, ready);
            return;
        }
        None => return,
    };
    let (code, reason) = match result {
        Ok(Some(loaded)) => {
            let config = shard.shared.config();
            let state = State::from_snapshot(
                conversation,
                loaded.snapshot,
                &config.storage,
                config.bridge.enabled(),
            );
            shard
                .owner
                .borrow_mut()
                .slots
                .insert(conversation, Slot::Ready(Box::new(state)));
            for op in waiting {
                handle(shard, conversation, op);
            }
            return;
        }
        Ok(None) => {
            // A room that does not exist yet may be the one being created: someone asked for
            // the next room id while its creation waited behind the load.
            let mut waiting = waiting.into_iter();
            let mut refused = Vec::new();
            for op in waiting.by_ref() {
                if let Op::Create {
                    origin,
                    name,
                    invite_only,
                } = op
                {
                    create(shard, conversation, origin, name, invite_only);
                    break;
                }
                refused.push(op);
            }
            for op in waiting {
                handle(shard, conversation, op);
            }
            let (code, reason) = match conversation {
                ConversationId::Room(_) => (ErrorCode::UNKNOWN_ROOM, ""),
                _ => (ErrorCode::UNKNOWN_USER, "the other user does not exist"),
            };
            for op in refused {
                if let Some(origin) = op_origin(&op) {
                    shard.reply(origin, error(origin.request, code, reason));
                }
            }
            return;
        }
        Err(e) => {
            crate::logging::throttled!(error, %conversation, error = %e, "loading a conversation failed");
            (ErrorCode::UNAVAILABLE, "storage unavailable")
        }
    };
    for op in waiting {
        if let Some(origin) = op_origin(&op) {
            shard.reply(origin, error(origin.request, code, reason));
        }
    }
}

fn op_origin(op: &Op) -> Option<&Origin> {
    match op {
        Op::Send { origin, .. }
        | Op::History { origin, .. }
        | Op::Create { origin, .. }
        | Op::Room { origin, .. }
        | Op::Mark { origin, .. } => Some(origin),
        Op::Committed(_) | Op::Typing { .. } | Op::SenderOps { .. } => None,
    }
}

fn apply(shard: &Rc<Shard>, state: &mut State, op: Op) {
    match op {
        Op::Send { origin, message } => send(shard, state, origin, message),
        Op::History { origin, query } => history(shard, state, origin, query),
        Op::Room { origin, action } => room_action(shard, state, origin, action),
        Op::Mark {
            origin,
            marker,
            seq,
        } => mark(shard, state, origin, marker, seq),
        Op::Typing { origin, active } => typing(shard, state, &origin, active),
        Op::SenderOps { sender, result } => sender_ops(shard, state, sender, result),
        Op::Create { origin, .. } => {
            shard.reply(
                &origin,
                error(origin.request, ErrorCode::INTERNAL, "room id collision"),
            );
        }
        Op::Committed(_) => {}
    }
}

fn send(shard: &Rc<Shard>, state: &mut State, origin: Origin, message: SendMessage) {
    let reply_error = |code, reason| shard.reply(&origin, error(origin.request, code, reason));
    if !state.is_member(origin.user) {
        return reply_error(ErrorCode::NOT_MEMBER, "");
    }
    match state.senders.lookup(origin.user, message.op) {
        Lookup::Seen(stored) if stored.seq <= state.committed => {
            let ack = SendAck {
                conversation: state.id,
                op: message.op,
                seq: stored.seq,
                ts: stored.ts,
                duplicate: true,
            };
            return shard.reply(&origin, response(origin.request, Response::Sent(ack)));
        }
        Lookup::Cold => {
            if state.senders.park(origin.user, (origin, message)) {
                read_sender_ops(shard, state, origin.user);
            }
            return;
        }
        // Still being committed (found below), or new.
        Lookup::Seen(_) | Lookup::New => {}
    }
    if let Some(pending) = state.pending_send(origin.user, message.op) {
        pending.waiters.push(origin);
        return;
    }
    if let Some(reply_to) = message.reply_to
        && (reply_to == Seq(0) || reply_to >= state.next_seq())
    {
        return reply_error(ErrorCode::UNKNOWN_MESSAGE, "");
    }
    let seq = state.next_seq();
    if seq == Seq(1) && state.room.is_none() {
        // First entry of a direct or notes conversation: list it for its members.
        for user in state.audience.iter() {
            state.queued_batch.put(
                Cf::UserConversations,
                keys::user_conversation(*user, state.id).to_vec(),
                Vec::new(),
            );
        }
    }
    if state.outbox {
        let offline_recipients = state
            .audience
            .iter()
            .filter(|user| **user != origin.user && !shard.shared.is_online(**user))
            .copied()
            .collect();
        state.queued_batch.event(outbox::Event::MessageCreated {
            conversation: state.id.into(),
            message: outbox::MessageBody::new(
                seq,
                origin.user,
                message.op.0,
                message.content_type,
                message.reply_to,
                &message.body,
            ),
            offline_recipients,
        });
    }
    let sent = SenderOp {
        op: message.op,
        seq,
        ts: now_ms(),
    };
    state.queued_batch.put(
        Cf::SenderOps,
        keys::sender_op(state.id, origin.user, seq).to_vec(),
        sent.value().to_vec(),
    );
    if let Some(dropped) = state.senders.record(origin.user, sent) {
        state.delete_sender_op(origin.user, dropped);
    }
    let entry = Entry::Message(Message {
        conversation: state.id,
        seq,
        ts: sent.ts,
        sender: origin.user,
        op: message.op,
        content_type: message.content_type,
        reply_to: message.reply_to,
        body: message.body,
    });
    let audience = Arc::clone(&state.audience);
    state.queued.push(Pending {
        origin,
        entry,
        audience,
        reply: None,
        waiters: Vec::new(),
    });
}

/// Reads the window of a cold sender on the read pool; its sends wait in `state.senders`.
fn read_sender_ops(shard: &Rc<Shard>, state: &mut State, sender: UserId) {
    let conversation = state.id;
    let shared = Arc::clone(&shard.shared);
    let id = shard.id;
    let window = shard.shared.config().storage.dedupe_window;
    let submitted = shard.shared.reads.submit(move |store| {
        let result = store
            .sender_ops(conversation, sender, window)
            .map_err(|e| e.to_string());
        shared.push_blocking(
            id,
            ShardMsg::Conversation {
                conversation,
                op: Op::SenderOps { sender, result },
            },
        );
    });
    if !submitted {
        for (origin, _) in state.senders.failed(sender) {
            shard.reply(
                &origin,
                error(
                    origin.request,
                    ErrorCode::OVERLOADED,
                    "the read pool is full",
                ),
            );
        }
    }
}

/// A cold sender's window arrived: its parked sends go on, in order.
fn sender_ops(
    shard: &Rc<Shard>,
    state: &mut State,
    sender: UserId,
    result: Result<Vec<SenderOp>, String>,
) {
    match result {
        Ok(mut ops) => {
            // Sends of this sender still being committed are not in the store yet.
            let stored = ops.last().map_or(Seq(0), |o| o.seq);
            ops.extend(state.committing.iter().chain(&state.queued).filter_map(
                |p| match &p.entry {
                    Entry::Message(m) if m.sender == sender && m.seq > stored => Some(SenderOp {
                        op: m.op,
                        seq: m.seq,
                        ts: m.ts,
                    }),
                    _ => None,
                },
            ));
            let (parked, beyond) = state.senders.loaded(sender, ops);
            for op in beyond {
                state.delete_sender_op(sender, op);
            }
            for (origin, message) in parked {
                send(shard, state, origin, message);
            }
        }
        Err(e) => {
            crate::logging::throttled!(error, conversation = %state.id, error = %e, "reading a sender's recent sends failed");
            for (origin, _) in state.senders.failed(sender) {
                shard.reply(
                    &origin,
                    error(
                        origin.request,
                        ErrorCode::UNAVAILABLE,
                        "storage unavailable",
                    ),
                );
            }
        }
    }
}

fn history(shard: &Rc<Shard>, state: &State, origin: Origin, query: HistoryQuery) {
    if !state.is_member(origin.user) {
        return shard.reply(&origin, error(origin.request, ErrorCode::NOT_MEMBER, ""));
    }
    let max_page = usize::from(shard.shared.limits.max_page);
    let limit = usize::from(query.limit);
    if limit == 0 || limit > max_page {
        return shard.reply(
            &origin,
            error(
                origin.request,
                ErrorCode::INVALID_REQUEST,
                "limit must be 1 to max_page",
            ),
        );
    }
    let head = state.committed;
    shard.read(origin, move |store| {
        let (entries, more) =
            store.history(query.conversation, query.from, limit, query.order, head)?;
        let page = HistoryPage {
            conversation: query.conversation,
            entries,
            head,
            more,
        };
        Ok(response(origin.request, Response::History(page)))
    });
}

fn create_room(state: &mut State, origin: Origin, name: String, invite_only: bool) {
    let ConversationId::Room(room_id) = state.id else {
        return;
    };
    let now = now_ms();
    let record = RoomRecord {
        id: room_id,
        name: name.clone(),
        invite_only,
        created_at: now,
    };
    let batch = &mut state.queued_batch;
    batch.unless_exists = Some((Cf::RoomNames, name.clone().into_bytes()));
    batch.put(
        Cf::RoomNames,
        name.clone().into_bytes(),
        keys::id(room_id.0).to_vec(),
    );
    batch.put(Cf::Rooms, keys::id(room_id.0).to_vec(), to_json(&record));
    let owner = MemberState::Member(Role::Owner);
    batch.put(
        Cf::Members,
        keys::member(room_id, origin.user).to_vec(),
        vec![owner.to_byte()],
    );
    batch.put(
        Cf::UserConversations,
        keys::user_conversation(origin.user, state.id).to_vec(),
        Vec::new(),
    );
    let mut people = BTreeMap::new();
    people.insert(origin.user, owner);
    state.room = Some(Room {
        record,
        people,
        member_count: 1,
    });
    state.refresh_audience();
    let info = state.room.as_ref().map(Room::info);
    queue_membership(
        state,
        origin,
        origin.user,
        MembershipChange::Created { name, invite_only },
        info.map(Response::Room),
        None,
    );
}

fn queue_membership(
    state: &mut State,
    origin: Origin,
    subject: UserId,
    change: MembershipChange,
    reply: Option<Response>,
    also_notify: Option<UserId>,
) {
    if state.outbox {
        if let (MembershipChange::Created { name, invite_only }, ConversationId::Room(room)) =
            (&change, state.id)
        {
            state.queued_batch.event(outbox::Event::RoomCreated {
                room,
                name: name.clone(),
                invite_only: *invite_only,
                owner: origin.user,
            });
        }
        state.queued_batch.event(outbox::Event::MembershipChanged {
            conversation: state.id.into(),
            entry_seq: state.next_seq(),
            actor: origin.user,
            subject,
            change: outbox::Change::from(&change),
        });
    }
    let entry = Entry::Membership(MembershipEvent {
        conversation: state.id,
        seq: state.next_seq(),
        ts: now_ms(),
        actor: origin.user,
        subject,
        change,
    });
    let audience = match also_notify {
        Some(extra) if !state.audience.contains(&extra) => {
            state.audience.iter().copied().chain([extra]).collect()
        }
        _ => Arc::clone(&state.audience),
    };
    state.queued.push(Pending {
        origin,
        entry,
        audience,
        reply,
        waiters: Vec::new(),
    });
}

fn room_action(shard: &Rc<Shard>, state: &mut State, origin: Origin, action: RoomAction) {
    let reply_error =
        |code: ErrorCode, reason: &str| shard.reply(&origin, error(origin.request, code, reason));
    let ConversationId::Room(room_id) = state.id else {
        return reply_error(ErrorCode::UNKNOWN_ROOM, "");
    };
    let max_members = shard.shared.config().limits.max_room_members;
    let Some(room) = state.room.as_mut() else {
        return reply_error(ErrorCode::UNKNOWN_ROOM, "");
    };
    let actor_role = room.role(origin.user);
    let rank = |role: Option<Role>| role.map_or(0, |r| r as u8 + 1);
    let set = |batch: &mut Batch, user: UserId, member: Option<MemberState>| match member {
        Some(s) => batch.put(
            Cf::Members,
            keys::member(room_id, user).to_vec(),
            vec![s.to_byte()],
        ),
        None => batch.delete(Cf::Members, keys::member(room_id, user).to_vec()),
    };
    let listed = |batch: &mut Batch, user: UserId, yes: bool| {
        let key = keys::user_conversation(user, ConversationId::Room(room_id)).to_vec();
        if yes {
            batch.put(Cf::UserConversations, key, Vec::new())
        } else {
            batch.delete(Cf::UserConversations, key)
        }
    };
    let (subject, change, notify_extra) = match action {
        RoomAction::Members { after, limit } => {
            if actor_role.is_none() {
                return reply_error(ErrorCode::NOT_MEMBER, "");
            }
            if limit == 0 || limit > shard.shared.limits.max_page {
                return reply_error(ErrorCode::INVALID_REQUEST, "limit must be 1 to max_page");
            }
            let start = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
            let mut page: Vec<(UserId, Role)> = room
                .people
                .range((start, std::ops::Bound::Unbounded))
                .filter_map(|(u, s)| match s {
                    MemberState::Member(role) => Some((*u, *role)),
                    _ => None,
                })
                .take(usize::from(limit) + 1)
                .collect();
            let next = (page.len() > usize::from(limit)).then(|| {
                page.truncate(usize::from(limit));
                page.last().map(|(u, _)| *u)
            });
            return members_page(shard, origin, room_id, page, next.flatten());
        }
        RoomAction::Info => {
            return shard.reply(
                &origin,
                response(origin.request, Response::Room(room.info())),
            );
        }
        RoomAction::Join => {
            match room.people.get(&origin.user) {
                Some(MemberState::Member(_)) => return reply_error(ErrorCode::ALREADY_MEMBER, ""),
                Some(MemberState::Banned(_)) => return reply_error(ErrorCode::BANNED, ""),
                Some(MemberState::Invited) => {}
                None if room.record.invite_only => {
                    return reply_error(ErrorCode::INVITE_REQUIRED, "");
                }
                None => {}
            }
            if room.member_count >= max_members {
                return reply_error(ErrorCode::ROOM_FULL, "");
            }
            room.people
                .insert(origin.user, MemberState::Member(Role::Member));
            room.member_count += 1;
            set(
                &mut state.queued_batch,
                origin.user,
                Some(MemberState::Member(Role::Member)),
            );
            listed(&mut state.queued_batch, origin.user, true);
            (origin.user, MembershipChange::Joined, None)
        }
        RoomAction::Leave => {
            match actor_role {
                None => return reply_error(ErrorCode::NOT_MEMBER, ""),
                Some(Role::Owner) => {
                    return reply_error(
                        ErrorCode::FORBIDDEN,
                        "the owner must transfer ownership before leaving",
                    );
                }
                Some(_) => {}
            }
            room.people.remove(&origin.user);
            room.member_count -= 1;
            set(&mut state.queued_batch, origin.user, None);
            listed(&mut state.queued_batch, origin.user, false);
            (origin.user, MembershipChange::Left, Some(origin.user))
        }
        RoomAction::Invite(user)
        | RoomAction::Kick(user)
        | RoomAction::Ban(user)
        | RoomAction::Unban(user)
        | RoomAction::SetRole(user, _) => {
            if actor_role.is_none() {
                return reply_error(ErrorCode::NOT_MEMBER, "");
            }
            let target = room.people.get(&user).copied();
            let target_role = room.role(user);
            let outranks = rank(actor_role) > rank(target_role);
            // Invitations and bans are rows too: at most twice the member limit per room
            // (members are counted apart). Checked after the actor's rights, below.
            let crowded = target.is_none()
                && room.people.len().saturating_sub(room.member_count as usize)
                    >= 2 * max_members as usize;
            let too_many = || {
                reply_error(
                    ErrorCode::ROOM_FULL,
                    "too many invitations and bans in this room",
                )
            };
            match action {
                RoomAction::Invite(_) => {
                    if rank(actor_role) < rank(Some(Role::Admin)) {
                        return reply_error(
                            ErrorCode::FORBIDDEN,
                            "only admins and the owner invite",
                        );
                    }
                    match target {
                        Some(MemberState::Member(_)) => {
                            return reply_error(ErrorCode::ALREADY_MEMBER, "");
                        }
                        Some(MemberState::Banned(_)) => {
                            return reply_error(ErrorCode::BANNED, "the user is banned");
                        }
                        // Already invited: nothing changes, nothing is logged.
                        Some(MemberState::Invited) => {
                            return shard.reply(&origin, response(origin.request, Response::Ok));
                        }
                        None if crowded => return too_many(),
                        None => {}
                    }
                    room.people.insert(user, MemberState::Invited);
                    set(&mut state.queued_batch, user, Some(MemberState::Invited));
                    (user, MembershipChange::Invited, Some(user))
                }
                RoomAction::Kick(_) | RoomAction::Ban(_) => {
                    let ban = matches!(action, RoomAction::Ban(_));
                    if rank(actor_role) < rank(Some(Role::Admin))
                        || !outranks
                        || user == origin.user
                    {
                        return reply_error(ErrorCode::FORBIDDEN, "");
                    }
                    // Kicking an invited user withdraws the invitation.
                    if target.is_none() && !ban {
                        return reply_error(ErrorCode::NOT_MEMBER, "the user is not a member");
                    }
                    if matches!(target, Some(MemberState::Banned(_))) {
                        return shard.reply(&origin, response(origin.request, Response::Ok));
                    }
                    if ban && crowded {
                        return too_many();
                    }
                    if target_role.is_some() {
                        room.member_count -= 1;
                        listed(&mut state.queued_batch, user, false);
                    }
                    if ban {
                        let banned = MemberState::Banned(target_role.unwrap_or(Role::Member));
                        room.people.insert(user, banned);
                        set(&mut state.queued_batch, user, Some(banned));
                        (user, MembershipChange::Banned, Some(user))
                    } else {
                        room.people.remove(&user);
                        set(&mut state.queued_batch, user, None);
                        (user, MembershipChange::Kicked, Some(user))
                    }
                }
                RoomAction::Unban(_) => {
                    if rank(actor_role) < rank(Some(Role::Admin)) {
                        return reply_error(ErrorCode::FORBIDDEN, "");
                    }
                    let Some(MemberState::Banned(was)) = target else {
                        return reply_error(ErrorCode::INVALID_REQUEST, "the user is not banned");
                    };
                    // Who could not have banned them (an admin, for a banned admin) cannot
                    // unban them either.
                    if rank(actor_role) <= rank(Some(was)) {
                        return reply_error(
                            ErrorCode::FORBIDDEN,
                            "only the owner unbans a former admin",
                        );
                    }
                    room.people.remove(&user);
                    set(&mut state.queued_batch, user, None);
                    (user, MembershipChange::Unbanned, Some(user))
                }
                RoomAction::SetRole(_, role) => {
                    if actor_role != Some(Role::Owner) {
                        return reply_error(ErrorCode::FORBIDDEN, "only the owner sets roles");
                    }
                    if target_role.is_none() {
                        return reply_error(ErrorCode::NOT_MEMBER, "the user is not a member");
                    }
                    if user == origin.user {
                        return reply_error(
                            ErrorCode::INVALID_REQUEST,
                            "the owner cannot change their own role",
                        );
                    }
                    if target_role == Some(role) {
                        return shard.reply(&origin, response(origin.request, Response::Ok));
                    }
                    room.people.insert(user, MemberState::Member(role));
                    set(
                        &mut state.queued_batch,
                        user,
                        Some(MemberState::Member(role)),
                    );
                    if role == Role::Owner {
                        room.people
                            .insert(origin.user, MemberState::Member(Role::Admin));
                        set(
                            &mut state.queued_batch,
                            origin.user,
                            Some(MemberState::Member(Role::Admin)),
                        );
                    }
                    (user, MembershipChange::RoleChanged(role), None)
                }
                RoomAction::Join
                | RoomAction::Leave
                | RoomAction::Members { .. }
                | RoomAction::Info => return,
            }
        }
    };
    let reply = match change {
        MembershipChange::Joined => state.room.as_ref().map(|r| Response::Room(r.info())),
        _ => None,
    };
    // Joins notify the new audience (including the joiner); departures the old one plus the
    // departed, via `notify_extra`.
    state.refresh_audience();
    let transfer = change == MembershipChange::RoleChanged(Role::Owner);
    queue_membership(
        state,
        origin,
        subject,
        change,
        Some(reply.unwrap_or(Response::Ok)),
        notify_extra,
    );
    if transfer {
        // The previous owner is now an admin: say so in the log too (one answer only).
        let demoted = MembershipChange::RoleChanged(Role::Admin);
        queue_membership(state, origin, origin.user, demoted, None, None);
    }
}

fn members_page(
    shard: &Rc<Shard>,
    origin: Origin,
    room: RoomId,
    page: Vec<(UserId, Role)>,
    next: Option<UserId>,
) {
    shard.read(origin, move |store| {
        let mut members = Vec::with_capacity(page.len());
        for (user, role) in page {
            let name = store
                .user(user)?
                .map(|record| record.name)
                .unwrap_or_default();
            members.push(Member { user, name, role });
        }
        Ok(response(
            origin.request,
            Response::Members(MemberPage {
                room,
                members,
                next,
            }),
        ))
    });
}

/// Submits the queued entries as one commit when none is in flight. Returns `false` when the
/// storage queue refused it: every pending entry was answered `OVERLOADED` and the caller
/// must forget the conversation (its state in memory is ahead of the disk).
fn submit(shard: &Rc<Shard>, state: &mut State) -> bool {
    if state.committing_now() || (state.queued.is_empty() && state.queued_receipts.is_empty()) {
        return true;
    }
    let mut batch = std::mem::take(&mut state.queued_batch);
    let mut encoded = Vec::with_capacity(256);
    for pending in &state.queued {
        encoded.clear();
        pending.entry.encode_to(&mut encoded);
        batch.put(
            Cf::Log,
            keys::log(state.id, pending.entry.seq()).to_vec(),
            encoded.clone(),
        );
    }
    state.committing = std::mem::take(&mut state.queued);
    state.committing_receipts = std::mem::take(&mut state.queued_receipts);
    let done = Done {
        shared: Arc::clone(&shard.shared),
        shard: shard.id,
        then: DoneThen::Conversation(state.id),
    };
    if shard.shared.writer.submit(batch, done).is_err() {
        fail_pending(shard, state, ErrorCode::OVERLOADED, "storage queue full");
        return false;
    }
    true
}

/// The commit came back. Returns whether the conversation must be forgotten (write failed).
fn committed(shard: &Rc<Shard>, state: &mut State, result: Result<(), WriteError>) -> bool {
    match result {
        Ok(()) => {
            for pending in std::mem::take(&mut state.committing) {
                state.committed = pending.entry.seq();
                publish(shard, pending);
            }
            for (origin, receipt) in std::mem::take(&mut state.committing_receipts) {
                shard.reply(&origin, response(origin.request, Response::Ok));
                fan_out(
                    shard,
                    &state.audience,
                    &Event::Receipt(receipt),
                    Some(origin.at),
                );
            }
            false
        }
        Err(WriteError::Exists) => {
            // Only room creation claims a name; the room does not exist after all.
            for pending in std::mem::take(&mut state.committing) {
                shard.reply(
                    &pending.origin,
                    error(pending.origin.request, ErrorCode::ROOM_NAME_TAKEN, ""),
                );
            }
            fail_pending(shard, state, ErrorCode::UNKNOWN_ROOM, "");
            true
        }
        Err(WriteError::Storage(e)) => {
            // The storage thread reports failing writes (once per interval, with a count).
            tracing::debug!(conversation = %state.id, error = %e, "commit failed");
            fail_pending(shard, state, ErrorCode::UNAVAILABLE, "storage write failed");
            true
        }
    }
}

fn fail_pending(shard: &Rc<Shard>, state: &mut State, code: ErrorCode, reason: &str) {
    for pending in state.committing.drain(..).chain(state.queued.drain(..)) {
        for origin in std::iter::once(&pending.origin).chain(&pending.waiters) {
            shard.reply(origin, error(origin.request, code, reason));
        }
    }
    for (origin, _) in state
        .committing_receipts
        .drain(..)
        .chain(state.queued_receipts.drain(..))
    {
        shard.reply(&origin, error(origin.request, code, reason));
    }
    for (origin, _) in state.senders.take_parked() {
        shard.reply(&origin, error(origin.request, code, reason));
    }
    state.queued_batch = Batch::default();
}

/// Acks and fans out one committed entry.
fn publish(shard: &Rc<Shard>, pending: Pending) {
    let Pending {
        origin,
        entry,
        audience,
        reply,
        waiters,
    } = pending;
    // The sending connection has the ack instead of the message event; membership events go
    // to every connection of the audience, the actor's included, so its log has no hole.
    let except = matches!(entry, Entry::Message(_)).then_some(origin.at);
    let event = match entry {
        Entry::Message(m) => {
            let ack = SendAck {
                conversation: m.conversation,
                op: m.op,
                seq: m.seq,
                ts: m.ts,
                duplicate: false,
            };
            shard.reply(&origin, response(origin.request, Response::Sent(ack)));
            shard.metrics().sends_acknowledged.increment(1);
            for waiter in &waiters {
                shard.reply(
                    waiter,
                    response(
                        waiter.request,
                        Response::Sent(SendAck {
                            duplicate: true,
                            ..ack
                        }),
                    ),
                );
            }
            Event::Message(m)
        }
        Entry::Membership(m) => {
            if let Some(reply) = reply {
                shard.reply(&origin, response(origin.request, reply));
            }
            Event::Membership(m)
        }
    };
    fan_out(shard, &audience, &event, except);
}

/// Encodes `event` once and sends it to the registry shard of every user in `audience`, for
/// their connected devices except `except`.
fn fan_out(shard: &Shard, audience: &Arc<[UserId]>, event: &Event, except: Option<super::ConnRef>) {
    let entry = match event {
        Event::Message(m) => Some((m.conversation, m.seq)),
        Event::Membership(m) => Some((m.conversation, m.seq)),
        _ => None,
    };
    let frame = encode(&ServerFrame::Event(event.clone()));
    let mut shards: Vec<ShardId> = audience
        .iter()
        .map(|u| shard.shared.registry_of(*u))
        .collect();
    shards.sort_unstable();
    shards.dedup();
    for target in shards {
        shard.send(
            target,
            ShardMsg::Fanout {
                users: Arc::clone(audience),
                frame: frame.clone(),
                except,
                ephemeral: matches!(event, Event::Typing(_)),
                entry,
            },
        );
    }
}

/// `Typing`: members only; fanned out as an ephemeral event (a datagram where possible),
/// expiring on the clients after the typing TTL. Nothing is stored or answered.
fn typing(shard: &Rc<Shard>, state: &State, origin: &Origin, active: bool) {
    if !state.is_member(origin.user) {
        return;
    }
    let event = Event::Typing(TypingEvent {
        conversation: state.id,
        user: origin.user,
        active,
        expires_in_ms: chat_protocol::limits::TYPING_TTL_MS,
    });
    fan_out(shard, &state.audience, &event, Some(origin.at));
}

/// `Mark`: moves the sender's marker; a value at or below the stored one changes nothing.
/// Reading up to a sequence number implies having received it, so `Read` moves `Delivered` too.
fn mark(shard: &Rc<Shard>, state: &mut State, origin: Origin, marker: Marker, seq: Seq) {
    if !state.is_member(origin.user) {
        return shard.reply(&origin, error(origin.request, ErrorCode::NOT_MEMBER, ""));
    }
    if seq > state.committed {
        return shard.reply(
            &origin,
            error(
                origin.request,
                ErrorCode::INVALID_REQUEST,
                "beyond the conversation's newest entry",
            ),
        );
    }
    let current = state.marks.get(&origin.user).copied().unwrap_or_default();
    let next = match marker {
        Marker::Delivered => (current.0.max(seq), current.1),
        Marker::Read => (current.0.max(seq), current.1.max(seq)),
    };
    if next == current {
        return shard.reply(&origin, response(origin.request, Response::Ok));
    }
    state.marks.insert(origin.user, next);
    let key = keys::marker(state.id, origin.user).to_vec();
    state.queued_batch.put(
        Cf::Markers,
        key,
        crate::store::encode_marks(next.0, next.1).to_vec(),
    );
    if state.outbox {
        state.queued_batch.event(outbox::Event::MarkerMoved {
            conversation: state.id.into(),
            user: origin.user,
            marker: marker.into(),
            up_to: seq,
        });
    }
    let receipt = Receipt {
        conversation: state.id,
        user: origin.user,
        marker,
        seq,
    };
    state.queued_receipts.push((origin, receipt));
}

/// Whether a body fits its content type (text types must be UTF-8).
pub(crate) fn valid_content(content_type: ContentType, body: &[u8]) -> bool {
    !content_type.is_text() || std::str::from_utf8(body).is_ok()
}

/// Drops idle conversations beyond `cap` (none with commits in flight).
impl Conversations {
    /// Conversations held (loading, ready or evicting).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

pub(crate) fn evict_idle(shard: &Shard, cap: usize) {
    let mut conversations = shard.owner.borrow_mut();
    let excess = conversations.slots.len().saturating_sub(cap);
    if excess == 0 {
        return;
    }
    let idle: Vec<ConversationId> = conversations
        .slots
        .iter()
        .filter(|(_, slot)| matches!(slot, Slot::Ready(s) if s.idle()))
        .map(|(c, _)| *c)
        .take(excess)
        .collect();
    for c in idle {
        conversations.slots.remove(&c);
    }
}

/// Whether no conversation of this shard has a commit in flight or queued.
pub(crate) fn idle(shard: &Shard) -> bool {
    shard.owner.borrow().slots.values().all(|slot| match slot {
        Slot::Ready(s) => s.idle(),
        Slot::Loading(waiting) => waiting.is_empty(),
    })
}
