//! Receipts and typing: a member's delivered and read markers (stored, published once
//! committed) and typing notices (published at once, never stored).

use chat_protocol::{ErrorCode, Event, Marker, Receipt, Response, Seq, TypingEvent};

use super::{Conversation, Effect, refuse, reply};
use crate::shard::Origin;
use crate::store::{Cf, keys, outbox};

impl Conversation {
    /// `Mark`: moves the sender's marker; a value at or below the stored one changes nothing.
    /// Reading up to a sequence number implies having received it, so `Read` moves
    /// `Delivered` too.
    pub(super) fn mark(&mut self, origin: Origin, marker: Marker, seq: Seq, out: &mut Vec<Effect>) {
        if !self.is_member(origin.user) {
            return reply(out, origin, refuse(ErrorCode::NOT_MEMBER, ""));
        }
        if seq > self.committed {
            return reply(
                out,
                origin,
                refuse(
                    ErrorCode::INVALID_REQUEST,
                    "beyond the conversation's newest entry",
                ),
            );
        }
        let current = self.marks.get(&origin.user).copied().unwrap_or_default();
        let next = match marker {
            Marker::Delivered => (current.0.max(seq), current.1),
            Marker::Read => (current.0.max(seq), current.1.max(seq)),
        };
        if next == current {
            return reply(out, origin, Ok(Response::Ok));
        }
        self.marks.insert(origin.user, next);
        self.queued_batch.put(
            Cf::Markers,
            keys::marker(self.id, origin.user).to_vec(),
            crate::store::encode_marks(next.0, next.1).to_vec(),
        );
        if self.outbox {
            self.queued_batch.event(outbox::Event::MarkerMoved {
                conversation: self.id.into(),
                user: origin.user,
                marker: marker.into(),
                up_to: seq,
            });
        }
        let receipt = Receipt {
            conversation: self.id,
            user: origin.user,
            marker,
            seq,
        };
        self.queued_receipts.push((origin, receipt));
    }

    /// `Typing`: members only; published as an ephemeral event (a datagram where possible),
    /// expiring on the clients after the typing TTL. Nothing is stored or answered.
    pub(super) fn typing(&self, origin: &Origin, active: bool, out: &mut Vec<Effect>) {
        if !self.is_member(origin.user) {
            return;
        }
        out.push(Effect::Publish {
            event: Event::Typing(TypingEvent {
                conversation: self.id,
                user: origin.user,
                active,
                expires_in_ms: chat_protocol::limits::TYPING_TTL_MS,
            }),
            audience: std::sync::Arc::clone(&self.audience),
            except: Some(origin.at),
        });
    }
}
