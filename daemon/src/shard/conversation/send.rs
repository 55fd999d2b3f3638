//! `Send`, and what sends, edits and deletes share: membership, deduplication by the
//! sender's op id, then for a send the reply reference and the message's writes (log entry,
//! sender op, conversation lists, outbox event). Edits and deletes go on in [`super::change`].

use std::sync::Arc;

use chat_protocol::{
    Appended, Chain, ContentType, Entry, ErrorCode, Message, OpId, Response, SendAck, SendMessage,
    Seq, Timestamp, UserId,
};

use super::change::Change;
use super::dedupe::Lookup;
use super::{Conversation, Ctx, Effect, Pending, ReadError, refuse, reply};
use crate::shard::Origin;
use crate::store::{Cf, SenderOp, keys, outbox};

/// A request that adds a log entry for its sender, deduplicated by its op id.
#[derive(Debug)]
pub(crate) enum Op {
    Send(SendMessage),
    Change(Change),
}

impl Op {
    fn id(&self) -> OpId {
        match self {
            Op::Send(message) => message.op,
            Op::Change(change) => change.op(),
        }
    }
}

/// Whether a body fits its content type (text types must be UTF-8).
pub(crate) fn valid_content(content_type: ContentType, body: &[u8]) -> bool {
    !content_type.is_text() || std::str::from_utf8(body).is_ok()
}

impl Conversation {
    /// A send, an edit or a delete: the member's op id is looked up first (a retry gets the
    /// first attempt's ack).
    pub(super) fn post(&mut self, origin: Origin, op: Op, ctx: &Ctx<'_>, out: &mut Vec<Effect>) {
        if !self.may_post(origin.user, matches!(op, Op::Change(Change::Delete(_)))) {
            return reply(out, origin, refuse(ErrorCode::NOT_MEMBER, ""));
        }
        let id = op.id();
        match self.senders.lookup(origin.user, id) {
            Lookup::Seen(stored) if stored.seq <= self.committed => {
                let ack = SendAck {
                    conversation: self.id,
                    op: id,
                    seq: stored.seq,
                    ts: stored.ts,
                    duplicate: true,
                    // The op store keeps no links: the entry comes again in a catch-up.
                    chain: None,
                };
                return reply(out, origin, Ok(Response::Sent(ack)));
            }
            Lookup::Cold => {
                let in_flight = self.in_flight_ops(origin.user);
                if let Some(rows) = self.senders.park(origin.user, (origin, op), in_flight) {
                    out.push(Effect::ReadSenderOps {
                        conversation: self.id,
                        instance: self.instance,
                        sender: origin.user,
                        rows,
                    });
                }
                return;
            }
            // Still being committed (found below), or new.
            Lookup::Seen(_) | Lookup::New => {}
        }
        if let Some(pending) = self.pending_op(origin.user, id) {
            pending.waiters.push(origin);
            return;
        }
        match op {
            Op::Send(message) => self.send(origin, message, ctx, out),
            Op::Change(change) => self.change(origin, change, ctx, out),
        }
    }

    /// A new send: the reply reference must name an entry, the mentions members.
    fn send(&mut self, origin: Origin, message: SendMessage, ctx: &Ctx<'_>, out: &mut Vec<Effect>) {
        if let Some(reply_to) = message.reply_to
            && (reply_to == Seq(0) || reply_to >= self.next_seq())
        {
            return reply(out, origin, refuse(ErrorCode::UNKNOWN_MESSAGE, ""));
        }
        if !message.mentions.iter().all(|user| self.is_member(*user)) {
            let refusal = refuse(
                ErrorCode::INVALID_MENTION,
                "a mentioned user is not a member",
            );
            return reply(out, origin, refusal);
        }
        self.queue_message(origin, message, ctx);
    }

    /// Queues an accepted message with its writes.
    fn queue_message(&mut self, origin: Origin, message: SendMessage, ctx: &Ctx<'_>) {
        let seq = self.next_seq();
        if seq == Seq(1) && self.room.is_none() {
            // First entry of a direct or notes conversation: list it for its members.
            for user in self.audience.iter() {
                self.queued_batch.put(
                    Cf::UserConversations,
                    keys::user_conversation(*user, self.id).to_vec(),
                    Vec::new(),
                );
            }
        }
        if self.outbox {
            let offline_recipients = self
                .audience
                .iter()
                .filter(|user| **user != origin.user && !(ctx.online)(**user))
                .copied()
                .collect();
            self.queued_batch.event(outbox::Event::MessageCreated {
                conversation: self.id.into(),
                message: outbox::MessageBody::new(
                    seq,
                    origin.user,
                    message.op.0,
                    message.content_type,
                    message.reply_to,
                    &message.body,
                ),
                offline_recipients,
                mentions: message.mentions.clone(),
            });
        }
        if let Some(root) = message.reply_to {
            // The thread index: `History` pages a root's replies from it.
            self.queued_batch.put(
                Cf::Threads,
                keys::thread(self.id, root, seq).to_vec(),
                Vec::new(),
            );
        }
        self.record_op(origin.user, message.op, seq, ctx.now);
        let entry = Entry::Message(Message {
            conversation: self.id,
            seq,
            ts: ctx.now,
            sender: origin.user,
            op: message.op,
            content_type: message.content_type,
            reply_to: message.reply_to,
            body: message.body,
            edited: None,
            deleted: None,
            mentions: message.mentions,
            reactions: Vec::new(),
            chain: Chain::default(),
        });
        let audience = Arc::clone(&self.audience);
        self.queued.push(Pending {
            origin,
            entry,
            audience,
            reply: None,
            waiters: Vec::new(),
            digest: [0; 32],
        });
    }

    /// Remembers, in memory and in the next commit, that `sender` used `op` for the entry
    /// `seq`; the send that leaves the sender's window is deleted in the same commit.
    pub(super) fn record_op(&mut self, sender: UserId, op: OpId, seq: Seq, ts: Timestamp) {
        let sent = SenderOp { op, seq, ts };
        self.queued_batch.put(
            Cf::SenderOps,
            keys::sender_op(self.id, sender, seq).to_vec(),
            sent.value().to_vec(),
        );
        if let Some(dropped) = self.senders.record(sender, sent) {
            self.delete_sender_op(sender, dropped);
        }
    }

    /// A cold sender's window arrived: its parked sends go on, in order.
    pub(super) fn sender_ops(
        &mut self,
        sender: UserId,
        result: Result<Vec<SenderOp>, ReadError>,
        ctx: &Ctx<'_>,
        out: &mut Vec<Effect>,
    ) {
        match result {
            Ok(ops) => {
                // The sender's sends in flight were given with `park`: its sends since wait.
                let (parked, beyond) = self.senders.loaded(sender, ops);
                for op in beyond {
                    self.delete_sender_op(sender, op.seq);
                }
                for (origin, op) in parked {
                    self.post(origin, op, ctx, out);
                }
            }
            Err(e) => {
                let refusal = e.refusal();
                for (origin, _) in self.senders.failed(sender) {
                    reply(out, origin, Err(refusal));
                }
            }
        }
    }

    /// The sends, edits and deletes of `sender` that are being committed or queued, oldest
    /// first.
    fn in_flight_ops(&self, sender: UserId) -> Vec<SenderOp> {
        let pending = self.committing.iter().chain(&self.queued);
        pending
            .filter_map(|p| match (p.entry.op(), p.entry.ts()) {
                (Some((user, op)), Some(ts)) if user == sender => Some(SenderOp {
                    op,
                    seq: p.entry.seq(),
                    ts,
                }),
                _ => None,
            })
            .collect()
    }

    /// Deletes, in the next commit, the stored row of a send that left its sender's window.
    fn delete_sender_op(&mut self, sender: UserId, seq: Seq) {
        self.queued_batch.delete(
            Cf::SenderOps,
            keys::sender_op(self.id, sender, seq).to_vec(),
        );
    }

    pub(super) fn pending_op(&mut self, sender: UserId, op: OpId) -> Option<&mut Pending> {
        self.committing
            .iter_mut()
            .chain(self.queued.iter_mut())
            .find(|p| p.entry.op() == Some((sender, op)))
    }
}

/// Acks and publishes one committed entry.
pub(super) fn publish(pending: Pending, out: &mut Vec<Effect>) {
    let Pending {
        origin,
        entry,
        reply: answer,
        audience,
        waiters,
        digest,
    } = pending;
    // A send, an edit or a delete is acked to its connection, which gets no event for it;
    // membership events go to every connection of the audience, the actor's included, so
    // its log has no hole.
    let except = match (entry.op(), entry.ts()) {
        (Some((_, op)), Some(ts)) => {
            let ack = SendAck {
                conversation: entry.conversation(),
                op,
                seq: entry.seq(),
                ts,
                duplicate: false,
                chain: Some(Appended {
                    link: entry.chain().link,
                    digest,
                }),
            };
            reply(out, origin, Ok(Response::Sent(ack)));
            for waiter in waiters {
                let duplicate = SendAck {
                    duplicate: true,
                    ..ack
                };
                reply(out, waiter, Ok(Response::Sent(duplicate)));
            }
            Some(origin.at)
        }
        _ => {
            if let Some(answer) = answer {
                reply(out, origin, Ok(answer));
            }
            None
        }
    };
    out.push(Effect::Publish {
        event: entry.into_event(),
        audience,
        except,
    });
}
