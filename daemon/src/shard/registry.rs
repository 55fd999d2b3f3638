//! Device registries: for each user whose id hashes to this shard, the connections of their
//! devices, wherever those connections live. Fan-out of an event goes through the registry
//! shards of its audience; each turns "these users" into "these connections", grouped into
//! one `Deliver` per connection shard.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use chat_protocol::{
    DeviceId, ErrorBody, ErrorCode, GoodbyeCode, SendMessage, ServerFrame, UserId,
};

use super::{ConnId, ConnRef, Origin, Shard, ShardId, ShardMsg, encode};

/// Most connected devices per user; a further one replaces the oldest.
pub(crate) const MAX_DEVICES_PER_USER: usize = 32;

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
    /// A send of `origin.user`: charged to the user's rate limit, then passed to the
    /// conversation's owner, or refused with `RATE_LIMITED` and when to retry.
    Send {
        origin: Origin,
        message: SendMessage,
    },
}

/// A token bucket: `send_burst` tokens, refilled at `send_rate` per second.
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// Takes a token, or says how many milliseconds until one is there.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), u32> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - self.tokens) / rate * 1000.0).ceil();
        // At most a few seconds for any sane rate; saturate rather than wrap.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        // non-negative, below u32::MAX
        let wait = if wait >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            wait as u32
        };
        Err(wait)
    }
}

/// The registries this shard owns.
#[derive(Default)]
pub(crate) struct Registry {
    users: HashMap<UserId, Vec<(DeviceId, ConnRef)>>,
    /// Send rate buckets of the users with a connected device (dropped with the last one).
    buckets: HashMap<UserId, Bucket>,
}

/// Applies a registry change.
pub(crate) fn handle(shard: &Rc<Shard>, op: Op) {
    let mut registry = shard.registry.borrow_mut();
    match op {
        Op::Online { user, device, at } => {
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
            devices.push((device, at));
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
        Op::Offline { user, device, at } => {
            if let Some(devices) = registry.users.get_mut(&user) {
                devices.retain(|entry| *entry != (device, at));
                if devices.is_empty() {
                    registry.users.remove(&user);
                    registry.buckets.remove(&user);
                }
            }
        }
        Op::Send { origin, message } => {
            let limits = &shard.shared.config.limits;
            let (rate, burst) = (f64::from(limits.send_rate), f64::from(limits.send_burst));
            let now = Instant::now();
            let bucket = registry.buckets.entry(origin.user).or_insert(Bucket {
                tokens: burst,
                refilled: now,
            });
            match bucket.take(now, rate, burst) {
                Ok(()) => {
                    drop(registry);
                    let conversation = message.conversation;
                    let op = super::owner::Op::Send { origin, message };
                    shard.send(
                        shard.shared.owner_of(conversation),
                        ShardMsg::Conversation { conversation, op },
                    );
                }
                Err(wait_ms) => {
                    drop(registry);
                    let error = ErrorBody {
                        code: ErrorCode::RATE_LIMITED,
                        reason: format!("at most {} messages per second", limits.send_rate),
                        retry_after_ms: Some(wait_ms),
                    };
                    shard.reply(
                        &origin,
                        encode(&ServerFrame::Error {
                            id: Some(origin.request),
                            error,
                        }),
                    );
                }
            }
        }
    }
}

/// Sends `frame` to every connected device of the users in `users` that this shard's registry
/// owns, except the connection `except`: one `Deliver` per connection shard.
pub(crate) fn fanout(
    shard: &Rc<Shard>,
    users: &[UserId],
    frame: &Bytes,
    except: Option<ConnRef>,
    ephemeral: bool,
    entry: Option<super::Position>,
) {
    for (target, conns) in connections(shard, users, except) {
        shard.send(
            target,
            ShardMsg::Deliver {
                conns,
                frame: frame.clone(),
                ephemeral,
                entry,
            },
        );
    }
}

/// An event for `users` was lost on the way here: tells their connections they lag.
pub(crate) fn lag(shard: &Rc<Shard>, users: &[UserId], except: Option<ConnRef>) {
    for (target, conns) in connections(shard, users, except) {
        shard.send(target, ShardMsg::LagConns { conns });
    }
}

/// The connections of the users this registry owns among `users`, grouped by shard.
fn connections(
    shard: &Shard,
    users: &[UserId],
    except: Option<ConnRef>,
) -> Vec<(ShardId, Vec<ConnId>)> {
    let mut targets: Vec<(ShardId, Vec<ConnId>)> = Vec::new();
    let registry = shard.registry.borrow();
    for user in users {
        if shard.shared.registry_of(*user) != shard.id {
            continue;
        }
        for (_, at) in registry.users.get(user).into_iter().flatten() {
            if Some(*at) == except {
                continue;
            }
            match targets.iter_mut().find(|(s, _)| *s == at.shard) {
                Some((_, conns)) => conns.push(at.conn),
                None => targets.push((at.shard, vec![at.conn])),
            }
        }
    }
    targets
}
