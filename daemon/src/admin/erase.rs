//! `POST /v1/users/NAME/erase`: deletes every message of a disabled account, in every
//! conversation it wrote in, as the operator (`shard::erase`). Messages deleted already are
//! left alone, so it can run again after an interruption.
//!
//! It is an account action ([`super::accounts`]): in a cluster of serving nodes, the node
//! holding the account's partition takes it (it keeps the account's restriction, so it
//! knows the account is disabled). That node finds the conversations the user wrote in on
//! every partition (a read of the `sender_ops` column family and of those logs, through
//! `store::Stores`), and has each conversation's owner delete the messages: its own shards
//! for the partitions it holds, the holding node for the others ([`crate::peer::Peers::erase_at`],
//! which answers with [`erase_here`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_protocol::{ConversationId, Seq, UserId};
use hyper::StatusCode;
use serde_json::json;

use super::State;
use super::api::{Outcome, publish, unavailable};
use crate::shard::erase::Erased;
use crate::shard::{AdminOp, ShardMsg, Shared};
use crate::store::outbox;

/// How long an erasure waits for one conversation's deletes.
pub(crate) const ERASE_WAIT: Duration = Duration::from_secs(60);

/// Deletes every message of the disabled account `id` (named `name`), whose partition this
/// node holds (or, without peers, whichever node this is).
pub(super) async fn erase(state: &State, id: UserId, name: String) -> Outcome {
    let shared = &state.shared;
    let _serial = state.actions.lock().await;
    if !shared.restriction(id).disabled {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "{name} is not disabled: erase takes a disabled account (chatd admin disable {name})"
            ),
        ));
    }
    // The conversations it wrote in, on every partition; its messages in those held here
    // (the other nodes find theirs).
    let store = state.store.clone();
    let remote = shared.peers.on();
    let plan = tokio::task::spawn_blocking(move || {
        let mut plan = Vec::new();
        for c in store.conversations_of(id)? {
            if remote && !store.holds(store.map().of_conversation(c)) {
                plan.push((c, None));
                continue;
            }
            plan.push((c, Some(store.messages_of(c, id)?)));
        }
        Ok::<_, crate::store::Error>(plan)
    })
    .await
    .map_err(unavailable)?
    .map_err(unavailable)?;
    let conversations = plan.len();
    let (mut erased, mut unfinished) = (Erased::default(), 0);
    for (conversation, messages) in plan {
        let done = match messages {
            Some(messages) => erase_here(shared, conversation, messages, ERASE_WAIT).await,
            None => {
                let peers = Arc::clone(&shared.peers);
                let asked = tokio::task::spawn_blocking(move || peers.erase_at(conversation, id));
                match asked.await {
                    Ok(Ok(done)) => Some(done),
                    Ok(Err(e)) => {
                        tracing::warn!(target: "chatd::admin", conversation = %conversation, error = %e, "the conversation's node did not erase");
                        None
                    }
                    Err(_) => None,
                }
            }
        };
        match done {
            Some(done) => {
                erased.deleted += done.deleted;
                erased.already += done.already;
                erased.failed += done.failed;
                erased.failure = done.failure.or(erased.failure);
            }
            None => unfinished += 1,
        }
    }
    tracing::info!(
        target: "chatd::admin",
        action = "erase",
        user = %id,
        name = %name,
        conversations,
        deleted = erased.deleted,
        already = erased.already,
        failed = erased.failed,
        unfinished,
        "admin action"
    );
    let detail = format!(
        "{} messages deleted in {conversations} conversations ({} deleted already, {} not \
         deleted, {unfinished} conversations unfinished)",
        erased.deleted, erased.already, erased.failed
    );
    publish(
        state,
        outbox::Event::AdminAction {
            action: "erase".to_owned(),
            user: Some(id),
            name: Some(name.clone()),
            device: None,
            closed: 0,
            detail: Some(detail),
        },
    )
    .await;
    Ok(json!({
        "action": "erase",
        "user": id.0,
        "name": name,
        "conversations": conversations,
        "deleted": erased.deleted,
        "already_deleted": erased.already,
        "not_deleted": erased.failed,
        "failure_code": erased.failure,
        "conversations_unfinished": unfinished,
        "node": shared.peers.on().then(|| shared.config().cluster.node.clone()),
    }))
}

/// Has the owner shard of `conversation` (whose partition this node holds) delete
/// `messages` as the operator, and waits up to `wait` for it: what it did, or `None` when
/// it could not be told or did not finish in time.
pub(crate) async fn erase_here(
    shared: &Shared,
    conversation: ConversationId,
    messages: Vec<Seq>,
    wait: Duration,
) -> Option<Erased> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let owner = shared.owner_of(conversation);
    let deadline = Instant::now() + wait;
    let msg = ShardMsg::Admin(AdminOp::Erase {
        conversation,
        messages,
        reply: tx,
    });
    if !super::api::push_by(shared, owner, msg, deadline).await {
        return None;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, rx).await.ok()?.ok()
}
