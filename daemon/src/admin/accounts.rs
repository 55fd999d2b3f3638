//! The account actions of the admin API:
//! `POST /v1/users/NAME/{kick,disable,enable,revoke,erase}` (erase is [`super::erase`]'s).
//!
//! An account's restriction is committed first, then put in place, then the shards close
//! its sessions: from the commit on, no session of it can start. In a cluster of serving
//! nodes (`cluster.peer`) any node takes the request: the node holding the account's
//! partition takes the action (`crate::peer::Peers::act_at_holder`), closes the sessions
//! it serves, and orders every other node to close theirs
//! (`crate::peer::Peers::order_everywhere`); the answer counts them all.

use std::sync::Arc;

use chat_protocol::{DeviceId, GoodbyeCode, UserId};
use hyper::StatusCode;
use serde_json::{Value, json};

use super::State;
use super::api::{Outcome, WAIT, ask_every_shard, commit, param, publish, unavailable, user};
use crate::peer::{Forwarded, NO_ANSWER};
use crate::shard::{AdminOp, Shared};
use crate::store::writer::Batch;
use crate::store::{Cf, Restriction, outbox};

/// An account action of the admin API, as it goes between nodes too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub(crate) enum AccountAction {
    Kick,
    Disable,
    Enable,
    Revoke,
    /// Deletes every message of a disabled account ([`super::erase`]).
    Erase,
}

impl AccountAction {
    /// The action named `name` in `/v1/users/NAME/ACTION`.
    pub(crate) fn parse(name: &str) -> Option<AccountAction> {
        Some(match name {
            "kick" => AccountAction::Kick,
            "disable" => AccountAction::Disable,
            "enable" => AccountAction::Enable,
            "revoke" => AccountAction::Revoke,
            "erase" => AccountAction::Erase,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            AccountAction::Kick => "kick",
            AccountAction::Disable => "disable",
            AccountAction::Enable => "enable",
            AccountAction::Revoke => "revoke",
            AccountAction::Erase => "erase",
        }
    }

    /// What it tells the sessions it closes: their goodbye code and reason (none for
    /// `enable`, which closes none).
    pub(crate) fn goodbye(self) -> Option<(GoodbyeCode, &'static str)> {
        match self {
            AccountAction::Kick => Some((GoodbyeCode::KICKED, "an operator closed the session")),
            AccountAction::Disable => {
                Some((GoodbyeCode::ACCOUNT_DISABLED, "the account is disabled"))
            }
            AccountAction::Revoke => Some((
                GoodbyeCode::TOKEN_REVOKED,
                "the session's token was revoked",
            )),
            AccountAction::Enable | AccountAction::Erase => None,
        }
    }

    /// The restriction it leaves on an account whose restriction was `before`, at `now`
    /// (seconds since the epoch); none for `kick` and `erase`, which leave it as it is.
    fn restriction(self, before: Restriction, now: u64) -> Option<Restriction> {
        // Tokens issued in this second or before are refused from now on.
        let revoked = Restriction {
            tokens_from: now + 1,
            ..before
        };
        match self {
            AccountAction::Kick | AccountAction::Erase => None,
            AccountAction::Disable => Some(Restriction {
                disabled: true,
                ..revoked
            }),
            AccountAction::Enable => Some(Restriction {
                disabled: false,
                ..before
            }),
            AccountAction::Revoke => Some(revoked),
        }
    }
}

/// Closes the sessions of `user` (of `device` only, when given) on every shard of this
/// node that answers within `wait`; returns how many closed and how many shards could not
/// be told.
pub(crate) async fn close_sessions(
    shared: &Shared,
    user: UserId,
    device: Option<DeviceId>,
    code: GoodbyeCode,
    reason: &'static str,
    wait: std::time::Duration,
) -> (usize, usize) {
    let (closed, missing) = ask_every_shard(shared, wait, |reply| AdminOp::Close {
        user,
        device,
        code,
        reason,
        reply,
    })
    .await;
    (closed.into_iter().sum(), missing)
}

/// `POST /v1/users/NAME/ACTION[?device=D]`.
pub(super) async fn requested(state: &State, name: &str, action: &str, query: &str) -> Outcome {
    let Some(action) = AccountAction::parse(action) else {
        return Err((StatusCode::NOT_FOUND, format!("no user action {action:?}")));
    };
    let device = match param(query, "device") {
        Some(d) if action == AccountAction::Kick => Some(DeviceId(d.parse().map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                format!("device {d:?} is not a number"),
            )
        })?)),
        Some(_) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "only kick takes a device".to_owned(),
            ));
        }
        None => None,
    };
    // With serving nodes, the node holding the account's partition looks it up and takes
    // the action.
    let peers = Arc::clone(&state.shared.peers);
    let acted = if peers.on() {
        let asked = name.to_owned();
        tokio::task::spawn_blocking(move || peers.act_at_holder(&asked, action, device))
            .await
            .map_err(unavailable)?
    } else {
        None
    };
    match acted {
        // This node holds it (or no other node is known to).
        None => {
            let (id, name) = user(state, name)?;
            act(state, id, name, action, device).await
        }
        Some(Ok(acted)) => {
            let status = StatusCode::from_u16(acted.status).unwrap_or(StatusCode::BAD_GATEWAY);
            if status.is_success() {
                serde_json::from_str(&acted.body).map_err(unavailable)
            } else {
                let reason: Value = serde_json::from_str(&acted.body).unwrap_or_default();
                let reason = reason["error"].as_str().unwrap_or(&acted.body);
                Err((status, reason.to_owned()))
            }
        }
        Some(Err(crate::store::Error::Remote { message, .. })) if message == NO_ANSWER => {
            Err(unavailable(format!(
                "the node holding {name}'s partition did not answer in time: the action may \
                 have been taken; run it again"
            )))
        }
        Some(Err(e)) => Err(unavailable(format!(
            "the node holding {name}'s partition did not take the action: {e}"
        ))),
    }
}

/// Takes an account action another node forwarded (this node held the account's partition
/// when it was sent): its status and JSON body.
pub(super) async fn forwarded(state: &State, forwarded: Forwarded) {
    let Forwarded {
        name,
        action,
        device,
        reply,
    } = forwarded;
    let result = if state.store.holds(state.shared.partitions.of_name(&name)) {
        match user(state, &name) {
            Ok((id, name)) => act(state, id, name, action, device).await,
            Err(e) => Err(e),
        }
    } else {
        Err(unavailable(format!(
            "the partition of {name} moved; ask again"
        )))
    };
    let answer = match result {
        Ok(value) => (200, value.to_string()),
        Err((status, reason)) => (status.as_u16(), json!({ "error": reason }).to_string()),
    };
    let _ = reply.send(answer);
}

/// Takes account action `action` on `id` (named `name`), whose partition this node holds
/// (or, without peers, whichever node this is).
async fn act(
    state: &State,
    id: UserId,
    name: String,
    action: AccountAction,
    device: Option<DeviceId>,
) -> Outcome {
    if action == AccountAction::Erase {
        return super::erase::erase(state, id, name).await;
    }
    let shared = &state.shared;
    // One account action at a time: each reads the restriction the previous one left.
    let _serial = state.actions.lock().await;
    let after = action.restriction(shared.restriction(id), crate::unix_now());
    let version = shared.peers.version(shared.partitions.of_id(id.0));
    // The restriction is durable before it applies (the storage thread puts it in place
    // after the commit), and applies before sessions close.
    if let Some(after) = after {
        let mut batch = Batch::default();
        let value = serde_json::to_vec(&after).map_err(unavailable)?;
        if after == Restriction::default() {
            batch.delete(Cf::Meta, crate::store::restriction_key(id));
        } else {
            batch.put(Cf::Meta, crate::store::restriction_key(id), value);
        }
        let partition = state.shared.partitions.of_id(id.0);
        commit(state, partition, batch, Some((id, after))).await?;
    }
    let (mut closed, missing) = match action.goodbye() {
        Some((code, reason)) => close_sessions(shared, id, device, code, reason, WAIT).await,
        None => (0, 0),
    };
    // Then every other node: its sessions of the account, and the restriction for those
    // that are starting.
    let peers = Arc::clone(&shared.peers);
    let (elsewhere, nodes_missing) = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || {
            peers.order_everywhere(id, action, device, after, version)
        }),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or((0, 1));
    closed += usize::try_from(elsewhere).unwrap_or(usize::MAX);
    let closed32 = u32::try_from(closed).unwrap_or(u32::MAX);
    let action = action.name();
    tracing::info!(
        target: "chatd::admin",
        action,
        user = %id,
        name = %name,
        device = device.map(|d| d.0),
        closed,
        "admin action"
    );
    if missing > 0 || nodes_missing > 0 {
        tracing::warn!(
            target: "chatd::admin",
            action,
            shards = missing,
            nodes = nodes_missing,
            "some shards or nodes could not be told to close the sessions; run the action again"
        );
    }
    publish(
        state,
        outbox::Event::AdminAction {
            action: action.to_owned(),
            user: Some(id),
            name: Some(name.clone()),
            device: device.map(|d| d.0),
            closed: closed32,
            detail: None,
        },
    )
    .await;
    let restriction = shared.restriction(id);
    Ok(json!({
        "action": action,
        "user": id.0,
        "name": name,
        "device": device.map(|d| d.0),
        "closed": closed,
        "shards_not_answering": missing,
        "nodes_not_answering": nodes_missing,
        "node": shared.peers.on().then(|| shared.config().cluster.node.clone()),
        "disabled": restriction.disabled,
        "tokens_from": restriction.tokens_from,
    }))
}
