//! Device registries: for each user whose id hashes to this shard, the connections of their
//! devices, wherever those connections live. Fan-out of an event goes through the registry
//! shards of its audience; each turns "these users" into "these connections", grouped into
//! one `Deliver` per connection shard.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use chat_protocol::{DeviceId, GoodbyeCode, UserId};

use super::{ConnId, ConnRef, Shard, ShardId, ShardMsg};

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
}

/// The registries this shard owns.
#[derive(Default)]
pub(crate) struct Registry {
    users: HashMap<UserId, Vec<(DeviceId, ConnRef)>>,
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
