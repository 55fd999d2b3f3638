//! Presence bookkeeping of a registry shard ([`super::registry`]): last-seen times, the
//! followers of each user, and the changes not yet published.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chat_protocol::{PresenceInfo, PresenceStatus, Timestamp, UserId};

use super::ConnRef;
use super::registry::MAX_LAST_SEEN;

/// The followers of one user's presence.
struct Watched {
    /// Each follower with the state it was last told (followers who subscribed at different
    /// times may have been told different states).
    conns: Vec<(ConnRef, PresenceStatus)>,
    /// When a change was last published (or the first follower subscribed).
    published_at: Instant,
    /// In `Registry::dirty`.
    dirty: bool,
}

/// Presence bookkeeping of a registry shard: last-seen times, followers, pending changes.
/// Time is passed in, so the coalescing rules are tested without clocks.
#[derive(Default)]
pub(crate) struct PresenceTable {
    /// When each offline user's last device disconnected, oldest first in `seen_order`;
    /// at most `MAX_LAST_SEEN`.
    last_seen: HashMap<UserId, Timestamp>,
    seen_order: BTreeSet<(Timestamp, UserId)>,
    /// Users whose presence someone follows.
    watched: HashMap<UserId, Watched>,
    /// Watched users whose state changed since it was last published.
    dirty: Vec<UserId>,
}

impl PresenceTable {
    /// Whether a change waits to be published.
    pub(super) fn pending(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// A user's presence, given whether a device of theirs is connected.
    pub(super) fn state(&self, user: UserId, online: bool) -> PresenceInfo {
        PresenceInfo {
            user,
            status: if online {
                PresenceStatus::Online
            } else {
                PresenceStatus::Offline
            },
            last_seen: if online {
                None
            } else {
                self.last_seen.get(&user).copied()
            },
        }
    }

    /// Notes that `user` came online (`offline_at` is `None`) or went offline.
    pub(super) fn changed(&mut self, user: UserId, offline_at: Option<Timestamp>) {
        if let Some(old) = self.last_seen.remove(&user) {
            self.seen_order.remove(&(old, user));
        }
        if let Some(at) = offline_at {
            if self.last_seen.len() >= MAX_LAST_SEEN
                && let Some((_, oldest)) = self.seen_order.pop_first()
            {
                self.last_seen.remove(&oldest);
            }
            self.last_seen.insert(user, at);
            self.seen_order.insert((at, user));
        }
        if let Some(watched) = self.watched.get_mut(&user)
            && !watched.dirty
        {
            watched.dirty = true;
            self.dirty.push(user);
        }
    }

    /// Connection `at` follows `user`, whose state is `info`.
    pub(super) fn watch(&mut self, info: PresenceInfo, at: ConnRef, now: Instant) {
        let watched = self.watched.entry(info.user).or_insert_with(|| Watched {
            conns: Vec::new(),
            published_at: now,
            dirty: false,
        });
        // The answer tells it the current state.
        match watched.conns.iter_mut().find(|(c, _)| *c == at) {
            Some((_, told)) => *told = info.status,
            None => watched.conns.push((at, info.status)),
        }
    }

    /// Connection `at` no longer follows `user`.
    pub(super) fn unwatch(&mut self, user: UserId, at: ConnRef) {
        if let Some(watched) = self.watched.get_mut(&user) {
            watched.conns.retain(|(c, _)| *c != at);
            if watched.conns.is_empty() {
                self.watched.remove(&user);
            }
        }
    }

    /// The changes due at `now`: for each changed watched user last published at least
    /// `interval` ago, the new state and the followers who were told another one.
    /// Changes not yet due stay pending.
    pub(super) fn due(
        &mut self,
        now: Instant,
        interval: Duration,
        online: impl Fn(UserId) -> bool,
    ) -> Vec<(PresenceInfo, Vec<ConnRef>)> {
        let mut due = Vec::new();
        for user in std::mem::take(&mut self.dirty) {
            let info = self.state(user, online(user));
            let Some(watched) = self.watched.get_mut(&user) else {
                continue; // nobody follows them any more
            };
            if now.saturating_duration_since(watched.published_at) < interval {
                self.dirty.push(user);
                continue;
            }
            watched.dirty = false;
            let mut told = Vec::new();
            for (conn, last) in &mut watched.conns {
                if *last != info.status {
                    *last = info.status;
                    told.push(*conn);
                }
            }
            if told.is_empty() {
                continue; // flapped back within the interval: nothing to tell
            }
            watched.published_at = now;
            due.push((info, told));
        }
        due
    }
}

/// Users other nodes report online at most, per registry shard; beyond, a user another
/// node reports is not noted (reads offline here unless a device is connected here).
pub(crate) const MAX_REMOTE_ONLINE: usize = 1_000_000;

/// With serving nodes (`cluster.peer`): the users of this registry shard that other nodes
/// report online, with those nodes and the link each report came on. Each node reports its
/// own users' devices coming and going (`crate::peer::Peers::presence_changed`), and all of
/// them when a link to it starts; what a link reported is forgotten when it ends (a later
/// link's reports stay, whichever is told first).
#[derive(Default)]
pub(crate) struct RemoteOnline {
    users: HashMap<UserId, Vec<(std::sync::Arc<str>, u32)>>,
}

impl RemoteOnline {
    /// Whether another node reports `user` online.
    pub(super) fn contains(&self, user: UserId) -> bool {
        self.users.contains_key(&user)
    }

    /// `node` reports `user` online on link `link`; false when the table is full and
    /// `user` was not noted.
    pub(super) fn online(&mut self, user: UserId, node: &std::sync::Arc<str>, link: u32) -> bool {
        if !self.users.contains_key(&user) && self.users.len() >= MAX_REMOTE_ONLINE {
            return false;
        }
        let nodes = self.users.entry(user).or_default();
        match nodes.iter_mut().find(|(n, _)| n == node) {
            Some((_, on)) => *on = link,
            None => nodes.push((std::sync::Arc::clone(node), link)),
        }
        true
    }

    /// `node` reports `user` offline.
    pub(super) fn offline(&mut self, user: UserId, node: &str) {
        if let Some(nodes) = self.users.get_mut(&user) {
            nodes.retain(|(n, _)| **n != *node);
            if nodes.is_empty() {
                self.users.remove(&user);
            }
        }
    }

    /// Forgets what `node` reported on link `link`: returns the users no node reports
    /// online any more.
    pub(super) fn forget(&mut self, node: &str, link: u32) -> Vec<UserId> {
        let mut gone = Vec::new();
        self.users.retain(|user, nodes| {
            nodes.retain(|(n, on)| !(**n == *node && *on == link));
            if nodes.is_empty() {
                gone.push(*user);
            }
            !nodes.is_empty()
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ConnId;

    const SECOND: Duration = Duration::from_secs(1);

    fn conn(n: u64) -> ConnRef {
        ConnRef {
            link: crate::shard::Link::HERE,
            shard: 0,
            conn: ConnId(n),
        }
    }

    /// A table where `alice` (online at t0) is followed by connection 1.
    fn followed(alice: UserId, t0: Instant) -> PresenceTable {
        let mut table = PresenceTable::default();
        let info = table.state(alice, true);
        table.watch(info, conn(1), t0);
        table
    }

    #[test]
    fn a_change_is_published_once_to_the_followers() {
        let (alice, t0) = (UserId(7), Instant::now());
        let mut table = followed(alice, t0);
        table.watch(table.state(alice, true), conn(2), t0);
        table.changed(alice, Some(Timestamp(5_000)));
        let due = table.due(t0 + SECOND, SECOND, |_| false);
        assert_eq!(due.len(), 1);
        let (info, conns) = &due[0];
        assert_eq!(info.status, PresenceStatus::Offline);
        assert_eq!(info.last_seen, Some(Timestamp(5_000)));
        assert_eq!(conns, &vec![conn(1), conn(2)]);
        // Nothing more until the next change.
        assert!(table.due(t0 + 5 * SECOND, SECOND, |_| false).is_empty());
    }

    #[test]
    fn changes_within_the_interval_are_coalesced() {
        let (alice, t0) = (UserId(7), Instant::now());
        let mut table = followed(alice, t0);
        // Offline and back within the interval: held back, then nothing to tell.
        table.changed(alice, Some(Timestamp(1)));
        assert!(table.due(t0 + SECOND / 2, SECOND, |_| false).is_empty());
        table.changed(alice, None);
        assert!(table.due(t0 + SECOND, SECOND, |_| true).is_empty());
        // A hundred flaps ending offline: one event, the last state.
        for i in 0..100 {
            table.changed(alice, Some(Timestamp(i)));
            table.changed(alice, None);
        }
        table.changed(alice, Some(Timestamp(100)));
        let due = table.due(t0 + 2 * SECOND, SECOND, |_| false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0.last_seen, Some(Timestamp(100)));
    }

    #[test]
    fn one_event_per_interval_per_user_at_most() {
        let (alice, t0) = (UserId(7), Instant::now());
        let mut table = followed(alice, t0);
        table.changed(alice, Some(Timestamp(1)));
        assert_eq!(table.due(t0 + SECOND, SECOND, |_| false).len(), 1);
        // Back online right after: due only a full interval after the last event.
        table.changed(alice, None);
        assert!(
            table
                .due(t0 + SECOND + SECOND / 2, SECOND, |_| true)
                .is_empty()
        );
        let due = table.due(t0 + 2 * SECOND, SECOND, |_| true);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0.status, PresenceStatus::Online);
        assert_eq!(due[0].0.last_seen, None);
    }

    #[test]
    fn a_late_follower_is_told_what_differs_from_its_answer() {
        let (alice, t0) = (UserId(7), Instant::now());
        let mut table = followed(alice, t0);
        table.changed(alice, Some(Timestamp(1)));
        assert_eq!(table.due(t0 + SECOND, SECOND, |_| false).len(), 1);
        // Back online (held back); a second follower subscribes and is answered "online".
        table.changed(alice, None);
        table.watch(table.state(alice, true), conn(2), t0 + SECOND);
        // Offline again before the interval ends: follower 1 was last told offline (nothing
        // to tell), follower 2 was told online and must hear of it.
        table.changed(alice, Some(Timestamp(2)));
        let due = table.due(t0 + 2 * SECOND, SECOND, |_| false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0.status, PresenceStatus::Offline);
        assert_eq!(due[0].1, vec![conn(2)]);
    }

    #[test]
    fn unfollowed_users_are_forgotten_and_changes_of_others_ignored() {
        let (alice, bob, t0) = (UserId(7), UserId(8), Instant::now());
        let mut table = followed(alice, t0);
        table.changed(bob, Some(Timestamp(3)));
        assert!(table.dirty.is_empty(), "nobody follows bob");
        table.unwatch(alice, conn(1));
        assert!(table.watched.is_empty());
        table.changed(alice, Some(Timestamp(4)));
        assert!(table.due(t0 + 2 * SECOND, SECOND, |_| false).is_empty());
        // Last-seen is still known to a new follower.
        assert_eq!(table.state(bob, false).last_seen, Some(Timestamp(3)));
        assert_eq!(table.state(bob, true).last_seen, None);
    }

    #[test]
    fn a_user_is_online_elsewhere_while_any_node_reports_it() {
        let (a, b): (std::sync::Arc<str>, std::sync::Arc<str>) = ("a".into(), "b".into());
        let (alice, bob) = (UserId(7), UserId(8));
        let mut remote = RemoteOnline::default();
        assert!(remote.online(alice, &a, 1));
        assert!(
            remote.online(alice, &a, 1),
            "a repeated report changes nothing"
        );
        assert!(remote.online(alice, &b, 2));
        assert!(remote.online(bob, &b, 2));
        remote.offline(alice, "a");
        assert!(remote.contains(alice), "b still reports alice");
        let mut gone = remote.forget("b", 2);
        gone.sort();
        assert_eq!(gone, vec![alice, bob], "the users only b reported");
        assert!(!remote.contains(alice) && !remote.contains(bob));
    }

    #[test]
    fn a_link_that_ended_forgets_only_its_own_reports() {
        let b: std::sync::Arc<str> = "b".into();
        let (alice, bob) = (UserId(7), UserId(8));
        let mut remote = RemoteOnline::default();
        remote.online(alice, &b, 1);
        remote.online(bob, &b, 1);
        // b's next link reports alice before the end of its first link is told.
        remote.online(alice, &b, 3);
        assert_eq!(remote.forget("b", 1), vec![bob]);
        assert!(remote.contains(alice), "reported again on the new link");
        assert!(remote.forget("b", 1).is_empty());
        assert_eq!(remote.forget("b", 3), vec![alice]);
    }
}
