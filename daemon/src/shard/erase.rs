//! An operator's erasure of an account's messages in one conversation (`chatd admin erase`),
//! on the conversation's owner shard: each message is deleted as its author could delete it
//! (a `Deletion` entry, the content erased, the bridge told), by the operator
//! ([`OPERATOR`]). The deletes go to the conversation a few at a time ([`IN_FLIGHT`]), well
//! within what a conversation takes waiting at once, so its members' own changes still fit;
//! their answers come back here, not to a connection, and the last one answers the admin
//! listener.

use std::collections::VecDeque;
use std::rc::Rc;

use chat_protocol::{ConversationId, DeleteMessage, ErrorCode, OpId, RequestId, Seq};

use super::conversation::{Answer, Change, Input};
use super::{ConnId, ConnRef, OPERATOR, Origin, Shard, owner};

/// Deletes of one erasure given to the conversation at once.
pub(crate) const IN_FLIGHT: usize = 16;

/// What an erasure did in one conversation.
#[derive(Clone, Debug, Default, bincode::Encode, bincode::Decode)]
pub(crate) struct Erased {
    /// Messages deleted.
    pub(crate) deleted: usize,
    /// Messages deleted already (by their author, an admin or an earlier erasure).
    pub(crate) already: usize,
    /// Messages that could not be deleted now (storage unavailable, the conversation
    /// overloaded): running the erasure again deletes them.
    pub(crate) failed: usize,
    /// The error code of the last of those.
    pub(crate) failure: Option<u16>,
}

/// One erasure under way on this shard.
pub(crate) struct Erasure {
    conversation: ConversationId,
    waiting: VecDeque<Seq>,
    in_flight: usize,
    done: Erased,
    reply: tokio::sync::oneshot::Sender<Erased>,
}

/// Starts erasing `messages` of `conversation` (owned by this shard); `reply` gets what was
/// done once every delete is answered.
pub(crate) fn start(
    shard: &Rc<Shard>,
    conversation: ConversationId,
    messages: Vec<Seq>,
    reply: tokio::sync::oneshot::Sender<Erased>,
) {
    if messages.is_empty() {
        let _ = reply.send(Erased::default());
        return;
    }
    let id = {
        let mut erasures = shard.erasures.borrow_mut();
        let id = shard.next_erasure.get();
        shard.next_erasure.set(id.wrapping_add(1));
        erasures.insert(
            id,
            Erasure {
                conversation,
                waiting: messages.into(),
                in_flight: 0,
                done: Erased::default(),
                reply,
            },
        );
        id
    };
    feed(shard, id);
}

/// Gives the conversation the next deletes, up to [`IN_FLIGHT`] at once.
fn feed(shard: &Rc<Shard>, id: u32) {
    let (conversation, next) = {
        let mut erasures = shard.erasures.borrow_mut();
        let Some(erasure) = erasures.get_mut(&id) else {
            return;
        };
        let room = IN_FLIGHT.saturating_sub(erasure.in_flight);
        let n = room.min(erasure.waiting.len());
        erasure.in_flight += n;
        let next: Vec<Seq> = erasure.waiting.drain(..n).collect();
        (erasure.conversation, next)
    };
    // No borrow is held here: an answer can come back before `handle` returns.
    for target in next {
        let origin = Origin {
            at: ConnRef {
                link: crate::shard::Link::HERE,
                shard: shard.id,
                conn: ConnId::OPERATOR,
            },
            request: RequestId(id),
            user: OPERATOR,
        };
        let change = Change::Delete(DeleteMessage {
            conversation,
            op: op_id(),
            target,
        });
        owner::handle(shard, conversation, Input::Change { origin, change });
    }
}

/// A fresh op id for an operator's delete: random, so no two collide in the conversation's
/// window of the operator's op ids, across erasures and restarts.
fn op_id() -> OpId {
    let mut bytes = [0u8; 8];
    // The system's random source does not fail on Linux once booted; a zero id would
    // still be a valid one.
    let _ = getrandom::fill(&mut bytes);
    OpId(u64::from_le_bytes(bytes))
}

/// The answer to one of erasure `request`'s deletes.
pub(crate) fn answered(shard: &Rc<Shard>, request: RequestId, answer: Answer) {
    let finished = {
        let mut erasures = shard.erasures.borrow_mut();
        let Some(erasure) = erasures.get_mut(&request.0) else {
            return;
        };
        erasure.in_flight = erasure.in_flight.saturating_sub(1);
        match answer {
            Ok(_) => erasure.done.deleted += 1,
            Err(refusal) if refusal.code == ErrorCode::MESSAGE_DELETED => {
                erasure.done.already += 1;
            }
            Err(refusal) => {
                erasure.done.failed += 1;
                erasure.done.failure = Some(refusal.code.0);
            }
        }
        erasure.in_flight == 0 && erasure.waiting.is_empty()
    };
    if finished {
        if let Some(erasure) = shard.erasures.borrow_mut().remove(&request.0) {
            let _ = erasure.reply.send(erasure.done);
        }
    } else {
        feed(shard, request.0);
    }
}
