//! What the storage thread calls back with when a write is done: a shard's write comes back
//! through the slot of its inbox's reserved lane, an operator's write to the admin listener.

use super::*;

/// What the storage thread calls back when a write is done.
pub(crate) enum Done {
    /// A shard's write: the result goes back to the shard through the slot of its inbox's
    /// reserved lane taken when the write was submitted ([`Shared::commit`]), so the storage
    /// thread never waits for a full inbox.
    Shard {
        slot: crate::inbox::Reservation<ShardMsg>,
        what: Written,
    },
    /// An operator's write (the admin listener waits for it); once committed, the account
    /// restriction it wrote is put in place here, whether or not anyone still waits.
    Admin {
        shared: Arc<Shared>,
        restriction: Option<(UserId, crate::store::Restriction)>,
        reply: tokio::sync::oneshot::Sender<Result<(), WriteError>>,
    },
}

/// What a shard's completed write was for.
pub(crate) enum Written {
    /// A commit of a conversation this shard owns.
    Conversation(ConversationId),
    /// An account creation (register, or first sight of a backend-minted token).
    Account(accounts::AccountWrite),
}

impl Completion for Done {
    fn complete(self, result: Result<(), WriteError>) {
        match self {
            Done::Shard { slot, what } => slot.push(ShardMsg::Written { what, result }),
            Done::Admin {
                shared,
                restriction,
                reply,
            } => {
                if let (Ok(()), Some((user, restriction))) = (&result, restriction) {
                    let map = shared.restrictions.pin();
                    if restriction == crate::store::Restriction::default() {
                        map.remove(&user);
                    } else {
                        map.insert(user, restriction);
                    }
                }
                let _ = reply.send(result);
            }
        }
    }
}

/// Why a shard's write was not submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CommitRefused {
    /// The shard has as many writes in flight as its inbox has reserved slots.
    #[error("too many writes in flight for this shard")]
    InFlight,
    /// The storage thread's queue is full (or storage stopped).
    #[error("the storage queue is full")]
    QueueFull,
    /// This node does not hold the partition the write belongs to (it moved).
    #[error("the partition is not held by this node")]
    NotHere,
}
