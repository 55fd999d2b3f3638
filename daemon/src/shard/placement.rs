//! Where each user's sessions are: the shards holding at least one authenticated connection
//! of the user, in a lock-free map that connection shards write (when their first session of a
//! user starts, when their last one ends) and owners read to send a committed event straight
//! to the shards with members online, one item per shard.
//!
//! A shard joins a user's set before it reads the user's catch-up from the store, and an
//! owner reads the sets only after the event's commit: with a sequentially consistent fence on
//! each side, either the owner sees the shard (the event goes there live) or the catch-up sees
//! the event (it is replayed); the connection drops what arrives twice by position.

use std::sync::atomic::{Ordering, fence};

use chat_protocol::UserId;
use papaya::{Compute, Operation};

use super::ShardId;

/// The shards with sessions of each online user.
#[derive(Default)]
pub(crate) struct Placement {
    /// Each online user's shards, sorted; absent for a user with no session.
    users: papaya::HashMap<UserId, Box<[ShardId]>>,
}

impl Placement {
    /// Shard `shard` holds its first session of `user`. Call before the session's catch-up
    /// reads the store.
    pub(crate) fn arrived(&self, user: UserId, shard: ShardId) {
        let users = self.users.pin();
        users.compute(user, |entry| {
            let mut shards: Vec<ShardId> = entry.map(|(_, s)| s.to_vec()).unwrap_or_default();
            match shards.binary_search(&shard) {
                Ok(_) => Operation::Abort(()),
                Err(at) => {
                    shards.insert(at, shard);
                    Operation::Insert(shards.into_boxed_slice())
                }
            }
        });
        fence(Ordering::SeqCst);
    }

    /// Shard `shard` holds no session of `user` any more.
    pub(crate) fn left(&self, user: UserId, shard: ShardId) {
        let users = self.users.pin();
        let _: Compute<'_, _, _, ()> = users.compute(user, |entry| match entry {
            Some((_, shards)) if shards[..] == [shard] => Operation::Remove,
            Some((_, shards)) if shards.contains(&shard) => {
                Operation::Insert(shards.iter().copied().filter(|s| *s != shard).collect())
            }
            _ => Operation::Abort(()),
        });
    }

    /// Whether `user` has a session anywhere.
    pub(crate) fn is_online(&self, user: UserId) -> bool {
        self.users.pin().contains_key(&user)
    }

    /// The shards with sessions of any of `users`, sorted, into `shards` (cleared first).
    /// Call after the event being routed has committed.
    pub(crate) fn shards_of(&self, users: &[UserId], shards: &mut Vec<ShardId>) {
        fence(Ordering::SeqCst);
        shards.clear();
        let map = self.users.pin();
        for user in users {
            if let Some(found) = map.get(user) {
                shards.extend_from_slice(found);
            }
        }
        shards.sort_unstable();
        shards.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_placed_on_the_shards_holding_its_sessions_until_the_last_leaves() {
        let placement = Placement::default();
        let (alice, bob, carol) = (UserId(1), UserId(2), UserId(3));
        placement.arrived(alice, 1);
        placement.arrived(alice, 0);
        placement.arrived(alice, 1);
        placement.arrived(bob, 3);
        let mut shards = Vec::new();
        placement.shards_of(&[alice, bob, carol], &mut shards);
        assert_eq!(shards, [0, 1, 3]);
        placement.shards_of(&[carol], &mut shards);
        assert!(shards.is_empty(), "nobody online: no shard");
        placement.left(alice, 1);
        placement.shards_of(&[alice], &mut shards);
        assert_eq!(shards, [0]);
        assert!(placement.is_online(alice));
        placement.left(alice, 0);
        placement.left(alice, 0);
        assert!(!placement.is_online(alice), "the last session left");
        placement.left(carol, 2);
        assert!(!placement.is_online(carol));
    }

    #[test]
    fn concurrent_arrivals_and_departures_leave_exactly_the_shards_still_present() {
        let placement = std::sync::Arc::new(Placement::default());
        let user = UserId(9);
        let threads: Vec<_> = (0..4)
            .map(|shard| {
                let placement = std::sync::Arc::clone(&placement);
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        placement.arrived(user, shard);
                        placement.left(user, shard);
                    }
                    if shard % 2 == 0 {
                        placement.arrived(user, shard);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let mut shards = Vec::new();
        placement.shards_of(&[user], &mut shards);
        assert_eq!(shards, [0, 2]);
    }
}
