//! `Edit`, `Delete` and `React`: changes to a stored message, each a log entry of its own.
//!
//! A change needs the message as stored (its author, its edits, whether it was deleted),
//! which the conversation does not keep in memory: the message is read from the store once
//! ([`Effect::ReadEntry`]), the changes that want it wait ([`Target::Reading`]), and it stays
//! in `targets` with the changes applied ([`Target::Known`]) until they are committed, so a
//! later change builds on them without reading a stale row. A change of a message that is not
//! committed yet (sent in the same breath) waits for that commit.
//!
//! An edit appends an `Edit` entry with the new content and rewrites the message's row with
//! it (`Message::edited`: every version's entry, the current content). A delete appends a
//! `Deletion` entry, rewrites the message's row without its body or edits, and each edit's
//! row as `Erased`: no body of the message is left in the log (RocksDB drops the overwritten
//! values at its next compaction of those keys). A reaction appends a `Reaction` entry and
//! rewrites the message's row with the user added to (or taken from) the reaction's users.
//! Each is in the same commit as the new entry, so no reader sees one without the other; a
//! message's row is written once per commit, however many of its changes the commit holds.

use std::sync::Arc;

use chat_protocol::limits::{MAX_EDITS, MAX_REACTION_KINDS, MAX_REACTIONS};
use chat_protocol::{
    Chain, DeleteMessage, Deleted, Deletion, Edit, EditMessage, Edited, Entry, Erased, ErrorCode,
    Message, OpId, ReactMessage, Reaction, Reactions, Role, Seq, UserId, chain,
};

use super::{Conversation, Ctx, Effect, Op, Pending, ReadError, Refusal, refuse, reply};
use crate::shard::{OPERATOR, Origin};
use crate::store::writer::Batch;
use crate::store::{Cf, keys, outbox};

/// Changes that may wait at once in one conversation, for a message's read or for the
/// commit of the message they change; beyond, `OVERLOADED`.
pub(crate) const MAX_WAITING_CHANGES: usize = 1024;

/// Messages being read at once for changes, in one conversation; beyond, `OVERLOADED`.
pub(crate) const MAX_TARGET_READS: usize = 64;

/// A change to a stored message.
#[derive(Debug, bincode::Encode, bincode::Decode)]
pub(crate) enum Change {
    Edit(EditMessage),
    Delete(DeleteMessage),
    React(ReactMessage),
}

impl Change {
    pub(super) fn op(&self) -> OpId {
        match self {
            Change::Edit(edit) => edit.op,
            Change::Delete(delete) => delete.op,
            Change::React(react) => react.op,
        }
    }

    fn target(&self) -> Seq {
        match self {
            Change::Edit(edit) => edit.target,
            Change::Delete(delete) => delete.target,
            Change::React(react) => react.target,
        }
    }
}

/// A message that changes want.
pub(super) enum Target {
    /// Being read from the store; these changes wait for it, in arrival order.
    Reading(Vec<(Origin, Change)>),
    /// The entry as stored with the changes queued since applied; `last` is the newest of
    /// those changes (`Seq(0)`: none), kept until it is committed.
    Known { entry: Box<Entry>, last: Seq },
}

impl Conversation {
    /// An edit or delete whose op id is new.
    pub(super) fn change(
        &mut self,
        origin: Origin,
        change: Change,
        ctx: &Ctx<'_>,
        out: &mut Vec<Effect>,
    ) {
        let target = change.target();
        if target == Seq(0) || target >= self.next_seq() {
            return reply(out, origin, refuse(ErrorCode::UNKNOWN_MESSAGE, ""));
        }
        if target > self.committed {
            // Changes the entry of a commit still in flight: after that commit.
            return self.wait(origin, change, Wait::Commit, out);
        }
        match self.targets.get_mut(&target) {
            Some(Target::Known { .. }) => self.apply(origin, change, ctx, out),
            Some(Target::Reading(_)) => self.wait(origin, change, Wait::Read, out),
            None => {
                let reading = self.targets.values();
                if reading.filter(|t| matches!(t, Target::Reading(_))).count() >= MAX_TARGET_READS {
                    let overloaded = refuse(ErrorCode::OVERLOADED, "too many messages being read");
                    return reply(out, origin, overloaded);
                }
                self.targets
                    .insert(target, Target::Reading(vec![(origin, change)]));
                out.push(Effect::ReadEntry {
                    conversation: self.id,
                    instance: self.instance,
                    seq: target,
                });
            }
        }
    }

    /// A delete of a message with an edit not committed yet (queued or in the commit in
    /// flight): erasing the edit's row must come in a later commit than the row itself.
    fn erases_uncommitted_edit(&self, change: &Change) -> bool {
        let Change::Delete(delete) = change else {
            return false;
        };
        match self.targets.get(&delete.target) {
            Some(Target::Known { entry, .. }) => match entry.as_ref() {
                Entry::Message(m) => m
                    .edited
                    .as_ref()
                    .is_some_and(|e| e.versions.iter().any(|v| *v > self.committed)),
                _ => false,
            },
            _ => false,
        }
    }

    fn wait(&mut self, origin: Origin, change: Change, on: Wait, out: &mut Vec<Effect>) {
        let read = self.targets.values().map(|t| match t {
            Target::Reading(waiting) => waiting.len(),
            Target::Known { .. } => 0,
        });
        if read.sum::<usize>() + self.after_commit.len() >= MAX_WAITING_CHANGES {
            let overloaded = refuse(ErrorCode::OVERLOADED, "too many changes waiting");
            return reply(out, origin, overloaded);
        }
        match on {
            Wait::Commit => self.after_commit.push((origin, change)),
            Wait::Read => {
                if let Some(Target::Reading(waiting)) = self.targets.get_mut(&change.target()) {
                    waiting.push((origin, change));
                }
            }
        }
    }

    /// The message that changes waited for was read.
    pub(super) fn entry_read(
        &mut self,
        seq: Seq,
        result: Result<Option<Entry>, ReadError>,
        ctx: &Ctx<'_>,
        out: &mut Vec<Effect>,
    ) {
        let Some(Target::Reading(waiting)) = self.targets.remove(&seq) else {
            return;
        };
        let refusal = match result {
            Ok(Some(entry)) => {
                let entry = Box::new(entry);
                let last = Seq(0);
                self.targets.insert(seq, Target::Known { entry, last });
                for (origin, change) in waiting {
                    self.apply(origin, change, ctx, out);
                }
                if let Some(Target::Known { last: Seq(0), .. }) = self.targets.get(&seq) {
                    // Nothing changed it: the store has it as it is.
                    self.targets.remove(&seq);
                }
                return;
            }
            Ok(None) => Refusal {
                code: ErrorCode::UNKNOWN_MESSAGE,
                reason: "",
            },
            Err(e) => e.refusal(),
        };
        for (origin, _) in waiting {
            reply(out, origin, Err(refusal));
        }
    }

    /// The rows of the messages the queued changes changed, as they are after all of them,
    /// for the commit being built (none is in flight: every change since the last commit is
    /// in it).
    pub(super) fn changed_rows(&self, batch: &mut Batch) {
        for (seq, target) in &self.targets {
            if let Target::Known { entry, last } = target
                && *last > self.committed
            {
                let mut row = Vec::with_capacity(256);
                entry.encode_to(&mut row);
                batch.put(Cf::Log, keys::log(self.id, *seq).to_vec(), row);
            }
        }
    }

    /// The last commit is durable: the messages it changed are as stored now, and the changes
    /// that waited for it go on.
    pub(super) fn changes_committed(&mut self, ctx: &Ctx<'_>, out: &mut Vec<Effect>) {
        let committed = self.committed;
        self.targets.retain(|_, target| match target {
            Target::Reading(_) => true,
            Target::Known { last, .. } => *last > committed,
        });
        for (origin, change) in std::mem::take(&mut self.after_commit) {
            self.change(origin, change, ctx, out);
        }
    }

    /// Answers every waiting change with `refusal` (the conversation is about to be
    /// forgotten).
    pub(super) fn fail_changes(&mut self, refusal: Refusal, out: &mut Vec<Effect>) {
        let waiting = self.targets.drain().flat_map(|(_, target)| match target {
            Target::Reading(waiting) => waiting,
            Target::Known { .. } => Vec::new(),
        });
        for (origin, _) in waiting.chain(self.after_commit.drain(..)) {
            reply(out, origin, Err(refusal));
        }
    }

    /// Checks a change against its message (known now) and queues it.
    fn apply(&mut self, origin: Origin, change: Change, ctx: &Ctx<'_>, out: &mut Vec<Effect>) {
        let (target, op) = (change.target(), change.op());
        // A retry that waited beside its first attempt gets that attempt's ack.
        if let Some(pending) = self.pending_op(origin.user, op) {
            pending.waiters.push(origin);
            return;
        }
        // The member may have left while the change waited.
        if !self.may_post(origin.user, matches!(change, Change::Delete(_))) {
            return reply(out, origin, refuse(ErrorCode::NOT_MEMBER, ""));
        }
        if self.erases_uncommitted_edit(&change) {
            return self.wait(origin, change, Wait::Commit, out);
        }
        if !self.senders.known(origin.user) {
            // The sender's window left memory while the change waited: looked up again (its
            // window read first), it comes back here.
            return self.post(origin, Op::Change(change), ctx, out);
        }
        // A room's admins and owner delete anyone's messages, and so does the operator
        // (`shard::erase`, which sends nothing but deletes).
        let admin = origin.user == OPERATOR
            || self
                .room
                .as_ref()
                .and_then(|room| room.role(origin.user))
                .is_some_and(|role| role >= Role::Admin);
        let (id, seq, now) = (self.id, self.next_seq(), ctx.now);
        let Some(Target::Known { entry, last }) = self.targets.get_mut(&target) else {
            return;
        };
        let Entry::Message(message) = entry.as_mut() else {
            let refusal = refuse(ErrorCode::UNKNOWN_MESSAGE, "that entry is not a message");
            return reply(out, origin, refusal);
        };
        if message.deleted.is_some() {
            return reply(out, origin, refuse(ErrorCode::MESSAGE_DELETED, ""));
        }
        let (added, event, erased) = match change {
            Change::Edit(edit) => {
                if message.sender != origin.user {
                    return reply(out, origin, refuse(ErrorCode::NOT_AUTHOR, ""));
                }
                let versions = message.edited.as_ref().map_or(0, |e| e.versions.len());
                if versions >= MAX_EDITS {
                    return reply(out, origin, refuse(ErrorCode::TOO_MANY_EDITS, ""));
                }
                let mut versions = message
                    .edited
                    .take()
                    .map(|e| e.versions)
                    .unwrap_or_default();
                versions.push(seq);
                message.edited = Some(Edited {
                    versions,
                    ts: now,
                    content_type: edit.content_type,
                    body: edit.body.clone(),
                });
                let event = outbox::Event::MessageEdited {
                    conversation: id.into(),
                    edit: outbox::MessageBody::new(
                        seq,
                        origin.user,
                        edit.op.0,
                        edit.content_type,
                        None,
                        &edit.body,
                    ),
                    target,
                };
                let added = Entry::Edit(Edit {
                    conversation: id,
                    seq,
                    ts: now,
                    sender: origin.user,
                    op: edit.op,
                    target,
                    content_type: edit.content_type,
                    body: edit.body,
                    chain: Chain::default(),
                });
                (added, event, Vec::new())
            }
            Change::Delete(delete) => {
                if message.sender != origin.user && !admin {
                    let refusal = refuse(ErrorCode::NOT_AUTHOR, "only the author or a room admin");
                    return reply(out, origin, refusal);
                }
                let erased = message
                    .edited
                    .take()
                    .map(|e| e.versions)
                    .unwrap_or_default();
                // The digest a client checks the deleted message by, kept as its body goes.
                message.chain.kept = Some(chain::message_digest(message));
                message.body = Vec::new();
                message.reactions = Vec::new();
                message.deleted = Some(Deleted {
                    seq,
                    ts: now,
                    by: origin.user,
                });
                let event = outbox::Event::MessageDeleted {
                    conversation: id.into(),
                    entry_seq: seq,
                    target,
                    actor: origin.user,
                    author: message.sender,
                    op: delete.op.0.to_string(),
                    erased: erased.clone(),
                };
                let added = Entry::Deletion(Deletion {
                    conversation: id,
                    seq,
                    ts: now,
                    actor: origin.user,
                    op: delete.op,
                    target,
                    erased: erased.clone(),
                    chain: Chain::default(),
                });
                (added, event, erased)
            }
            Change::React(react) => {
                if let Err(refusal) = react_to(message, origin.user, &react) {
                    return reply(out, origin, Err(refusal));
                }
                let event = outbox::Event::MessageReacted {
                    conversation: id.into(),
                    entry_seq: seq,
                    target,
                    user: origin.user,
                    op: react.op.0.to_string(),
                    reaction: react.reaction.clone(),
                    removed: react.remove,
                };
                let added = Entry::Reaction(Reaction {
                    conversation: id,
                    seq,
                    ts: now,
                    sender: origin.user,
                    op: react.op,
                    target,
                    reaction: react.reaction,
                    removed: react.remove,
                    chain: Chain::default(),
                });
                (added, event, Vec::new())
            }
        };
        // The message's row is written once per commit, with every change queued for it
        // (`changed_rows`).
        *last = seq;
        for version in erased {
            let erased = Entry::Erased(Erased {
                conversation: id,
                seq: version,
                target,
                deletion: seq,
                chain: Chain::default(),
            });
            let mut row = Vec::with_capacity(48);
            erased.encode_to(&mut row);
            self.queued_batch
                .put(Cf::Log, keys::log(id, version).to_vec(), row);
        }
        if self.outbox {
            self.queued_batch.event(event);
        }
        self.record_op(origin.user, op, seq, now);
        let audience = Arc::clone(&self.audience);
        self.queued.push(Pending {
            origin,
            entry: added,
            audience,
            reply: None,
            waiters: Vec::new(),
            digest: [0; 32],
        });
    }
}

/// Adds `user`'s reaction to `message`, or takes it back, within the limits.
fn react_to(message: &mut Message, user: UserId, react: &ReactMessage) -> Result<(), Refusal> {
    let reactions = &mut message.reactions;
    let kind = reactions.iter().position(|r| r.reaction == react.reaction);
    if react.remove {
        let Some(kind) = kind else {
            return Err(refusal(ErrorCode::NOT_REACTED));
        };
        let users = &mut reactions[kind].users;
        let Some(at) = users.iter().position(|u| *u == user) else {
            return Err(refusal(ErrorCode::NOT_REACTED));
        };
        users.remove(at);
        if users.is_empty() {
            reactions.remove(kind);
        }
        return Ok(());
    }
    if kind.is_some_and(|kind| reactions[kind].users.contains(&user)) {
        return Err(refusal(ErrorCode::ALREADY_REACTED));
    }
    let total: usize = reactions.iter().map(|r| r.users.len()).sum();
    if total >= MAX_REACTIONS || (kind.is_none() && reactions.len() >= MAX_REACTION_KINDS) {
        return Err(refusal(ErrorCode::TOO_MANY_REACTIONS));
    }
    match kind {
        Some(kind) => reactions[kind].users.push(user),
        None => reactions.push(Reactions {
            reaction: react.reaction.clone(),
            users: vec![user],
        }),
    }
    Ok(())
}

fn refusal(code: ErrorCode) -> Refusal {
    Refusal { code, reason: "" }
}

/// What a change waits for.
enum Wait {
    /// The commit in flight (its message, or the edit it erases, is in it).
    Commit,
    /// The read of its message.
    Read,
}
