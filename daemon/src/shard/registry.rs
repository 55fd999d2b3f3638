//! Device registries: for each user whose id hashes to this shard, the connections of their
//! devices, wherever those connections live: at most `MAX_DEVICES_PER_USER`, one per device
//! (a device that connects again replaces its old connection). The registry gives each
//! connection what all of the user's connections share: the memory budget and the send
//! rate limit ([`SendLimit`], charged on the connection's own shard). Events do not pass
//! through here: owners send them straight to the shards holding the audience's sessions
//! ([`super::placement`]).
//!
//! The registry also owns its users' presence: online while a device is connected, else
//! offline since the last device left (`last_seen`). Connections follow the presence of
//! chosen users (`Watch`); a change is published to them at the next flush, at most once per
//! `presence_interval_ms` per user and only if the state differs from the last one published,
//! so flapping connections and users in many rooms do not cause event storms.

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chat_protocol::{
    DeviceId, Event, GoodbyeCode, PresenceInfo, PresenceStatus, Response, ServerFrame, Timestamp,
    UserId,
};
use crossbeam_queue::ArrayQueue;

use super::{ConnId, ConnRef, Origin, Shard, ShardId, ShardMsg, encode, now_ms, response};
use crate::budget::UserBudget;

/// Most connected devices per user; a further one replaces the oldest.
pub(crate) const MAX_DEVICES_PER_USER: usize = 32;

/// Most last-seen times one registry shard remembers; the oldest is forgotten first (that
/// user then reads as offline with no last-seen time).
pub(crate) const MAX_LAST_SEEN: usize = 1_000_000;

/// Registry changes.
pub(crate) enum Op {
    /// A device of `user` authenticated on a connection.
    Online {
        user: UserId,
        device: DeviceId,
        at: ConnRef,
    },
    /// That connection closed.
    Offline {
        user: UserId,
        device: DeviceId,
        at: ConnRef,
    },
    /// Connection `at` follows the presence of `users` (all owned by this registry); the
    /// current state of each goes into `gather`.
    Watch {
        users: Vec<UserId>,
        at: ConnRef,
        gather: Arc<PresenceGather>,
    },
    /// Connection `at` no longer follows `users`.
    Unwatch { users: Vec<UserId>, at: ConnRef },
}

/// The answer to one `Presence` request, collected from the registry shards of its users:
/// each adds the states it owns; the last one to finish replies.
pub(crate) struct PresenceGather {
    origin: Origin,
    /// Registry shards that have not answered yet.
    pending: AtomicUsize,
    infos: ArrayQueue<PresenceInfo>,
}

impl PresenceGather {
    /// A gather for `users` users from `shards` registry shards (both at least 1).
    pub(crate) fn new(origin: Origin, users: usize, shards: usize) -> Arc<PresenceGather> {
        Arc::new(PresenceGather {
            origin,
            pending: AtomicUsize::new(shards),
            infos: ArrayQueue::new(users.max(1)),
        })
    }

    /// Adds this shard's states; the last shard sends the response.
    fn add(&self, shard: &Shard, infos: impl IntoIterator<Item = PresenceInfo>) {
        for info in infos {
            // Never full: sized for every user of the request.
            let _ = self.infos.push(info);
        }
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut all = Vec::with_capacity(self.infos.len());
            while let Some(info) = self.infos.pop() {
                all.push(info);
            }
            all.sort_unstable_by_key(|info| info.user);
            shard.reply(
                &self.origin,
                response(self.origin.request, Response::Presence(all)),
            );
        }
    }
}

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

/// A user's send rate limit, shared by all of the user's connections wherever they live: a
/// token bucket of `send_burst` tokens refilled at `send_rate` per second, kept as the
/// generic cell rate algorithm's theoretical arrival time in one atomic, so any shard charges
/// it without a lock or a message.
pub(crate) struct SendLimit {
    /// When the bucket would be full again, in microseconds since `epoch`.
    tat: AtomicU64,
    epoch: Instant,
}

impl SendLimit {
    pub(crate) fn new(now: Instant) -> SendLimit {
        SendLimit {
            tat: AtomicU64::new(0),
            epoch: now,
        }
    }

    fn micros(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Takes a token at `now`, or says how many milliseconds until one is there.
    pub(crate) fn take(&self, now: Instant, rate: f64, burst: f64) -> Result<(), u32> {
        let (interval, tolerance) = Self::shape(rate, burst);
        let t = self.micros(now);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let start = tat.max(t);
            if start - t > tolerance {
                let wait_ms = (start - t - tolerance).div_ceil(1_000);
                return Err(u32::try_from(wait_ms).unwrap_or(u32::MAX));
            }
            match self.tat.compare_exchange_weak(
                tat,
                start.saturating_add(interval),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(now_tat) => tat = now_tat,
            }
        }
    }

    /// Whether the bucket is full at `now` (a new one would be the same).
    fn full(&self, now: Instant) -> bool {
        self.tat.load(Ordering::Acquire) <= self.micros(now)
    }

    /// One token's time and the time `burst - 1` tokens take, in microseconds.
    fn shape(rate: f64, burst: f64) -> (u64, u64) {
        // Configured rates are at least 1 per second and bursts at least 1 (the config's
        // checks); the float is rounded to whole microseconds.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let interval = (1e6 / rate.max(1e-6)).round().clamp(1.0, 1e15) as u64;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let tokens = (burst.max(1.0) - 1.0).min(1e9) as u64;
        (interval, interval.saturating_mul(tokens))
    }
}

/// The registries this shard owns.
#[derive(Default)]
pub(crate) struct Registry {
    users: HashMap<UserId, Vec<(DeviceId, ConnRef)>>,
    /// The memory budget shared by each connected user's connections (dropped with the
    /// last one).
    budgets: HashMap<UserId, Arc<UserBudget>>,
    /// Send rate limits of the users with a connected device, and of users whose last
    /// device left less than a full refill ago (so reconnecting does not refill a bucket).
    buckets: HashMap<UserId, Arc<SendLimit>>,
    /// Users whose last device left, oldest first, with when their bucket is surely full
    /// again and can be dropped: entries live `send_burst / send_rate` seconds, at most 60.
    idle_buckets: std::collections::VecDeque<(UserId, Instant)>,
    presence: PresenceTable,
}

/// Presence bookkeeping of a registry shard: last-seen times, followers, pending changes.
/// Time is passed in, so the coalescing rules are tested without clocks.
#[derive(Default)]
struct PresenceTable {
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
    /// A user's presence, given whether a device of theirs is connected.
    fn state(&self, user: UserId, online: bool) -> PresenceInfo {
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
    fn changed(&mut self, user: UserId, offline_at: Option<Timestamp>) {
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
    fn watch(&mut self, info: PresenceInfo, at: ConnRef, now: Instant) {
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
    fn unwatch(&mut self, user: UserId, at: ConnRef) {
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
    fn due(
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

/// The longest an offline user's send bucket is kept, in seconds.
const IDLE_BUCKET_SECS: f64 = 60.0;

impl Registry {
    /// Forgets the buckets of offline users that have refilled completely by `now` (a new
    /// bucket would be the same). A bucket spent again since (the user came back and left
    /// again) is forgotten by that later departure's entry.
    fn drop_full_buckets(&mut self, now: Instant, rate: f64, burst: f64) {
        while let Some(&(user, full_at)) = self.idle_buckets.front() {
            if full_at > now {
                break;
            }
            self.idle_buckets.pop_front();
            let full = self
                .buckets
                .get(&user)
                .is_some_and(|bucket| bucket.full(now));
            // With a refill longer than the minute an entry waits, the bucket goes anyway:
            // the map of offline users' buckets stays bounded.
            let capped = burst / rate > IDLE_BUCKET_SECS;
            if (full || capped) && !self.users.contains_key(&user) {
                self.buckets.remove(&user);
            }
        }
    }
}

/// Applies a registry change.
pub(crate) fn handle(shard: &Rc<Shard>, op: Op) {
    let mut registry = shard.registry.borrow_mut();
    match op {
        Op::Online { user, device, at } => {
            drop(registry);
            online(shard, user, device, at);
        }
        Op::Offline { user, device, at } => {
            if let Some(devices) = registry.users.get_mut(&user) {
                devices.retain(|entry| *entry != (device, at));
                if devices.is_empty() {
                    registry.users.remove(&user);
                    // Kept until a full refill (at most a minute, so the queue stays short
                    // with a huge burst): coming back sooner finds the same bucket.
                    let config = shard.shared.config();
                    let limits = &config.limits;
                    let refill = Duration::from_secs_f64(
                        (f64::from(limits.send_burst) / f64::from(limits.send_rate))
                            .min(IDLE_BUCKET_SECS),
                    );
                    let now = Instant::now();
                    let (rate, burst) = (f64::from(limits.send_rate), f64::from(limits.send_burst));
                    registry.drop_full_buckets(now, rate, burst);
                    registry.idle_buckets.push_back((user, now + refill));
                    registry.budgets.remove(&user);
                    registry.presence.changed(user, Some(now_ms()));
                }
            }
        }
        Op::Watch { users, at, gather } => {
            let now = Instant::now();
            let mut infos = Vec::with_capacity(users.len());
            for user in users {
                let online = registry.users.contains_key(&user);
                let info = registry.presence.state(user, online);
                registry.presence.watch(info, at, now);
                infos.push(info);
            }
            drop(registry);
            gather.add(shard, infos);
        }
        Op::Unwatch { users, at } => {
            for user in users {
                registry.presence.unwatch(user, at);
            }
        }
    }
}

/// A device of `user` authenticated on connection `at`: it joins the user's devices (closing
/// an older connection of the same device, and the oldest beyond `MAX_DEVICES_PER_USER`),
/// and the connection gets what the user's connections share.
fn online(shard: &Rc<Shard>, user: UserId, device: DeviceId, at: ConnRef) {
    let mut registry = shard.registry.borrow_mut();
    let devices = registry.users.entry(user).or_default();
    let mut replaced = Vec::new();
    devices.retain(|(d, old)| {
        let same_device = *d == device && *old != at;
        if same_device {
            replaced.push(*old);
        }
        !same_device
    });
    if devices.len() >= MAX_DEVICES_PER_USER {
        replaced.push(devices.remove(0).1);
    }
    let came_online = devices.is_empty();
    devices.push((device, at));
    let limit = shard.shared.config().limits.user_memory;
    let budget = Arc::clone(
        registry
            .budgets
            .entry(user)
            .or_insert_with(|| Arc::new(UserBudget::new(limit))),
    );
    let sends = Arc::clone(
        registry
            .buckets
            .entry(user)
            .or_insert_with(|| Arc::new(SendLimit::new(Instant::now()))),
    );
    shard.send(
        at.shard,
        ShardMsg::UserBudget {
            conn: at.conn,
            budget,
            sends,
        },
    );
    if came_online {
        registry.presence.changed(user, None);
    }
    drop(registry);
    for old in replaced {
        shard.send(
            old.shard,
            ShardMsg::Close {
                conn: old.conn,
                code: GoodbyeCode::REPLACED,
                reason: "the same device connected again",
            },
        );
    }
}

/// Publishes the presence changes that are due: for each changed watched user last
/// published at least `presence_interval_ms` ago, the new state if it differs from the
/// published one. Called at every turn of the shard's loop.
pub(crate) fn flush_presence(shard: &Rc<Shard>) {
    let mut registry = shard.registry.borrow_mut();
    if registry.presence.dirty.is_empty() {
        return;
    }
    let interval = Duration::from_millis(shard.shared.config().limits.presence_interval_ms);
    let Registry {
        users, presence, ..
    } = &mut *registry;
    let due = presence.due(Instant::now(), interval, |user| users.contains_key(&user));
    drop(registry);
    for (info, conns) in due {
        let frame = encode(&ServerFrame::Event(Event::Presence(info)));
        for (target, conns) in by_shard(conns) {
            shard.send(
                target,
                ShardMsg::Deliver {
                    conns,
                    frame: frame.clone(),
                    live: super::session::Live::Presence(info.user),
                },
            );
        }
    }
}

/// Connections grouped by the shard they live on.
pub(crate) fn by_shard(conns: impl IntoIterator<Item = ConnRef>) -> Vec<(ShardId, Vec<ConnId>)> {
    let mut targets: Vec<(ShardId, Vec<ConnId>)> = Vec::new();
    for at in conns {
        match targets.iter_mut().find(|(s, _)| *s == at.shard) {
            Some((_, conns)) => conns.push(at.conn),
            None => targets.push((at.shard, vec![at.conn])),
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_send_limit_takes_a_burst_then_one_token_per_interval() {
        let t0 = Instant::now();
        let limit = SendLimit::new(t0);
        let (rate, burst) = (20.0, 40.0);
        for _ in 0..40 {
            assert_eq!(limit.take(t0, rate, burst), Ok(()));
        }
        assert_eq!(
            limit.take(t0, rate, burst),
            Err(50),
            "one token every 50 ms"
        );
        assert_eq!(
            limit.take(t0 + Duration::from_millis(20), rate, burst),
            Err(30)
        );
        let later = t0 + Duration::from_millis(50);
        assert_eq!(limit.take(later, rate, burst), Ok(()));
        assert_eq!(limit.take(later, rate, burst), Err(50));
        assert!(!limit.full(later));
        // Two seconds refill the whole burst, no more.
        let rested = later + 2 * SECOND;
        assert!(limit.full(rested));
        for _ in 0..40 {
            assert_eq!(limit.take(rested, rate, burst), Ok(()));
        }
        assert!(limit.take(rested, rate, burst).is_err());
    }

    #[test]
    fn devices_on_several_threads_share_one_send_limit() {
        let t0 = Instant::now();
        let limit = Arc::new(SendLimit::new(t0));
        let taken: usize = (0..4)
            .map(|_| {
                let limit = Arc::clone(&limit);
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| limit.take(t0, 1.0, 10.0).is_ok())
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(taken, 10, "the burst, once, across all devices");
    }
}
