//! `Send`: membership, deduplication by the sender's op id, the reply reference, and the
//! message's writes (log entry, sender op, conversation lists, outbox event).

use std::sync::Arc;

use chat_protocol::{
    ContentType, Entry, ErrorCode, Message, OpId, Response, SendAck, SendMessage, Seq, UserId,
};

use super::dedupe::Lookup;
use super::{Conversation, Ctx, Effect, Pending, ReadError, refuse, reply};
use crate::shard::Origin;
use crate::store::{Cf, SenderOp, keys, outbox};

/// Whether a body fits its content type (text types must be UTF-8).
pub(crate) fn valid_content(content_type: ContentType, body: &[u8]) -> bool {
    !content_type.is_text() || std::str::from_utf8(body).is_ok()
}

impl Conversation {
    pub(super) fn send(
        &mut self,
        origin: Origin,
        message: SendMessage,
        ctx: &Ctx<'_>,
        out: &mut Vec<Effect>,
    ) {
        if !self.is_member(origin.user) {
            return reply(out, origin, refuse(ErrorCode::NOT_MEMBER, ""));
        }
        match self.senders.lookup(origin.user, message.op) {
            Lookup::Seen(stored) if stored.seq <= self.committed => {
                let ack = SendAck {
                    conversation: self.id,
                    op: message.op,
                    seq: stored.seq,
                    ts: stored.ts,
                    duplicate: true,
                };
                return reply(out, origin, Ok(Response::Sent(ack)));
            }
            Lookup::Cold => {
                let in_flight = self.in_flight_ops(origin.user);
                if let Some(rows) = self.senders.park(origin.user, (origin, message), in_flight) {
                    out.push(Effect::ReadSenderOps {
                        conversation: self.id,
                        sender: origin.user,
                        rows,
                    });
                }
                return;
            }
            // Still being committed (found below), or new.
            Lookup::Seen(_) | Lookup::New => {}
        }
        if let Some(pending) = self.pending_send(origin.user, message.op) {
            pending.waiters.push(origin);
            return;
        }
        if let Some(reply_to) = message.reply_to
            && (reply_to == Seq(0) || reply_to >= self.next_seq())
        {
            return reply(out, origin, refuse(ErrorCode::UNKNOWN_MESSAGE, ""));
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
            });
        }
        let sent = SenderOp {
            op: message.op,
            seq,
            ts: ctx.now,
        };
        self.queued_batch.put(
            Cf::SenderOps,
            keys::sender_op(self.id, origin.user, seq).to_vec(),
            sent.value().to_vec(),
        );
        if let Some(dropped) = self.senders.record(origin.user, sent) {
            self.delete_sender_op(origin.user, dropped);
        }
        let entry = Entry::Message(Message {
            conversation: self.id,
            seq,
            ts: sent.ts,
            sender: origin.user,
            op: message.op,
            content_type: message.content_type,
            reply_to: message.reply_to,
            body: message.body,
        });
        let audience = Arc::clone(&self.audience);
        self.queued.push(Pending {
            origin,
            entry,
            audience,
            reply: None,
            waiters: Vec::new(),
        });
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
                for (origin, message) in parked {
                    self.send(origin, message, ctx, out);
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

    /// The sends of `sender` that are being committed or queued, oldest first.
    fn in_flight_ops(&self, sender: UserId) -> Vec<SenderOp> {
        let pending = self.committing.iter().chain(&self.queued);
        pending
            .filter_map(|p| match &p.entry {
                Entry::Message(m) if m.sender == sender => Some(SenderOp {
                    op: m.op,
                    seq: m.seq,
                    ts: m.ts,
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

    fn pending_send(&mut self, sender: UserId, op: OpId) -> Option<&mut Pending> {
        self.committing
            .iter_mut()
            .chain(self.queued.iter_mut())
            .find(|p| matches!(&p.entry, Entry::Message(m) if m.sender == sender && m.op == op))
    }
}
