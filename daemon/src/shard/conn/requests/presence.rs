//! `Presence`: who may be followed is checked on the read pool (users who share a
//! conversation), then the change is applied on the connection's shard and the current
//! states are gathered from the followed users' registry shards.

use std::rc::Rc;
use std::sync::Arc;

use chat_protocol::{ErrorCode, Response, UserId};

use super::Asked;
use crate::shard::conn::get;
use crate::shard::{ConnRef, Origin, Shard, ShardMsg, error, registry, response};

/// A presence change asked for.
pub(super) fn change(asked: &Asked<'_>, subscribe: Vec<UserId>, unsubscribe: Vec<UserId>) {
    let (id, origin, user) = (asked.id, asked.origin, asked.origin.user);
    let max = chat_protocol::limits::MAX_USERS_PER_REQUEST;
    if subscribe.len() > max || unsubscribe.len() > max {
        return asked.fail(
            ErrorCode::INVALID_REQUEST,
            "at most 256 users per presence change",
        );
    }
    // Who may be followed is checked on the pool; the change is applied here after.
    let shared = Arc::clone(&asked.shard.shared);
    asked.shard.read_then(origin, move |store| {
        if let Some(other) = store.presence_forbidden(user, &subscribe)? {
            let reason = format!("you share no conversation with user {}", other.0);
            return Ok(Err(error(id, ErrorCode::FORBIDDEN, &reason)));
        }
        shared.push_blocking(
            origin.at.shard,
            ShardMsg::Presence {
                origin,
                subscribe,
                unsubscribe,
            },
        );
        Ok(Ok(()))
    });
}

/// Applies a checked presence change of a local connection: unsubscribes first, then
/// subscribes (a user in both lists stays followed), and answers with the current state of
/// the subscribed users, gathered from their registry shards.
pub(crate) fn presence(
    shard: &Rc<Shard>,
    origin: Origin,
    mut subscribe: Vec<UserId>,
    unsubscribe: Vec<UserId>,
) {
    let Some(conn) = get(shard, origin.at.conn) else {
        return;
    };
    let limit = shard.shared.config().limits.max_presence_subscriptions;
    let id = origin.request;
    let dropped = match conn.with(|s| s.follow(&subscribe, &unsubscribe, limit)) {
        Ok(dropped) => dropped,
        Err(reason) => {
            let frame = error(id, ErrorCode::INVALID_REQUEST, &reason);
            return conn.with(|s| s.reply(id, frame));
        }
    };
    unwatch(shard, origin.at, dropped);
    subscribe.sort_unstable();
    subscribe.dedup();
    if subscribe.is_empty() {
        let frame = response(id, Response::Presence(Vec::new()));
        return conn.with(|s| s.reply(id, frame));
    }
    // Events about these users wait for the answer, which may come after them.
    conn.with(|s| s.presence_asked(id, subscribe.clone()));
    let groups = by_registry(shard, subscribe.iter().copied());
    let gather = registry::PresenceGather::new(origin, subscribe.len(), groups.len());
    for (target, users) in groups {
        let gather = Arc::clone(&gather);
        shard.send(
            target,
            ShardMsg::Registry(registry::Op::Watch {
                users,
                at: origin.at,
                gather,
            }),
        );
    }
}

/// Tells the registry shards of `users` that connection `at` no longer follows them.
pub(in crate::shard::conn) fn unwatch(shard: &Shard, at: ConnRef, users: Vec<UserId>) {
    for (target, users) in by_registry(shard, users) {
        shard.send(
            target,
            ShardMsg::Registry(registry::Op::Unwatch { users, at }),
        );
    }
}

/// Users grouped by the shard that owns their registry.
fn by_registry(
    shard: &Shard,
    users: impl IntoIterator<Item = UserId>,
) -> Vec<(crate::shard::ShardId, Vec<UserId>)> {
    let mut groups: Vec<(crate::shard::ShardId, Vec<UserId>)> = Vec::new();
    for user in users {
        let target = shard.shared.registry_of(user);
        match groups.iter_mut().find(|(s, _)| *s == target) {
            Some((_, users)) => users.push(user),
            None => groups.push((target, vec![user])),
        }
    }
    groups
}
