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

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chat_protocol::{
    DeviceId, Event, GoodbyeCode, PresenceInfo, Response, ServerFrame, Timestamp, UserId,
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
    /// Node `node` reports, on link `link`, these users (all owned by this registry)
    /// online (`None`) or offline since the time given, in order (`cluster.peer`).
    Remote {
        node: Arc<str>,
        link: u32,
        changes: Vec<(UserId, Option<Timestamp>)>,
    },
    /// Link `link` to node `node` ended: the users only it reported online are offline.
    NodeGone { node: Arc<str>, link: u32 },
    /// A link another node dialed started: report every user of this registry with a
    /// device here online to it ([`crate::peer::Peers::presence_to`]).
    ReportTo { link: super::Link },
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
    presence: super::presence::PresenceTable,
    /// Users other nodes report online (`cluster.peer`).
    remote: super::presence::RemoteOnline,
    /// This shard's users whose first device arrived or last device left since the last
    /// turn, in order: for the other nodes (`cluster.peer`).
    outgoing: Vec<(UserId, Option<Timestamp>)>,
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
                    let at = now_ms();
                    if !registry.remote.contains(user) {
                        registry.presence.changed(user, Some(at));
                    }
                    if shard.shared.peers.on() {
                        registry.outgoing.push((user, Some(at)));
                    }
                }
            }
        }
        Op::Watch { users, at, gather } => {
            let now = Instant::now();
            let mut infos = Vec::with_capacity(users.len());
            for user in users {
                let online = registry.users.contains_key(&user) || registry.remote.contains(user);
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
        Op::Remote {
            node,
            link,
            changes,
        } => {
            let Registry {
                users,
                presence,
                remote,
                ..
            } = &mut *registry;
            for (user, offline_at) in changes {
                let before = users.contains_key(&user) || remote.contains(user);
                match offline_at {
                    None if !remote.online(user, &node, link) => {
                        crate::logging::throttled!(
                            warn,
                            max = super::presence::MAX_REMOTE_ONLINE,
                            "too many users online on other nodes: some read as offline here"
                        );
                    }
                    None => {}
                    Some(_) => remote.offline(user, &node),
                }
                let after = users.contains_key(&user) || remote.contains(user);
                if before != after {
                    presence.changed(user, offline_at);
                }
            }
        }
        Op::NodeGone { node, link } => {
            let at = now_ms();
            let Registry {
                users,
                presence,
                remote,
                ..
            } = &mut *registry;
            for user in remote.forget(&node, link) {
                if !users.contains_key(&user) {
                    presence.changed(user, Some(at));
                }
            }
        }
        Op::ReportTo { link } => {
            // What waits for this turn's end goes first, to every link; then the whole state
            // to the new one.
            let changes = std::mem::take(&mut registry.outgoing);
            let online: Vec<UserId> = registry.users.keys().copied().collect();
            drop(registry);
            shard.shared.peers.presence_changed(changes);
            shard.shared.peers.presence_to(link, online);
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
    if came_online && !registry.remote.contains(user) {
        registry.presence.changed(user, None);
    }
    if came_online && shard.shared.peers.on() {
        registry.outgoing.push((user, None));
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

/// Sends this turn's arrivals and departures to the other nodes (`cluster.peer`), and
/// publishes the presence changes that are due: for each changed watched user last
/// published at least `presence_interval_ms` ago, the new state if it differs from the
/// published one. Called at every turn of the shard's loop.
pub(crate) fn flush_presence(shard: &Rc<Shard>) {
    let mut registry = shard.registry.borrow_mut();
    if !registry.outgoing.is_empty() {
        let changes = std::mem::take(&mut registry.outgoing);
        shard.shared.peers.presence_changed(changes);
    }
    if !registry.presence.pending() {
        return;
    }
    let interval = Duration::from_millis(shard.shared.config().limits.presence_interval_ms);
    let Registry {
        users,
        presence,
        remote,
        ..
    } = &mut *registry;
    let due = presence.due(Instant::now(), interval, |user| {
        users.contains_key(&user) || remote.contains(user)
    });
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
