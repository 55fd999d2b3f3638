//! The admin API under `/v1/`, JSON in and out (docs/OPERATIONS.md lists it):
//!
//! | Method and path | Does |
//! |---|---|
//! | `GET /v1/status[?nodes=1]` | version, uptime, shards, connections, budgets, storage, bridge, partitions held and reached; with `nodes` and `cluster.peer`, every node's summary (`nodes`) |
//! | `GET /v1/connections[?user=NAME][&limit=N]` | the connections (or one user's), from every shard (and every node, with `cluster.peer`): the count, and up to N (1 000; at most 10 000) listed |
//! | `POST /v1/users/NAME/kick[?device=D]` | closes the user's sessions (or one device's) |
//! | `POST /v1/users/NAME/disable` | refuses the account's logins and tokens, closes its sessions |
//! | `POST /v1/users/NAME/enable` | lifts `disable` (tokens revoked stay revoked) |
//! | `POST /v1/users/NAME/revoke` | refuses every token issued so far, closes its sessions |
//! | `POST /v1/users/NAME/erase` | deletes every message of a disabled account, in every conversation it wrote in (each as a `Deletion` by the operator, user 0), erasing their content |
//! | `GET /v1/conversations/SPEC` | a conversation's head, members and markers; SPEC is `room:NAME`, `room:ID`, `dm:A:B` or `notes:A` |
//! | `POST /v1/compact` | compacts the database |
//! | `POST /v1/backup` `{"dir": PATH}` | writes a backup (`crate::backup`) into PATH, which must not exist |
//!
//! Every action is logged (target `chatd::admin`), counted (`chatd_admin_actions_total`) and,
//! with the bridge on, published as an `admin.*` event. The account actions are
//! [`super::accounts`]'s (on every node of a cluster of serving nodes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_protocol::{ConversationId, RoomId, UserId};
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::State;
use crate::http::{failure, json};
use crate::shard::{AdminOp, Done, ShardMsg, Shared};
use crate::store::writer::Batch;
use crate::store::{Restriction, Stores, outbox};

/// How long an action waits for the shards and for its commit.
pub(super) const WAIT: Duration = Duration::from_secs(10);

type Reply = Response<Full<Bytes>>;

pub(crate) async fn handle(state: &State, parts: &Parts, body: &Bytes) -> Reply {
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let segments: Vec<&str> = path
        .trim_start_matches("/v1/")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let result = match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["status"]) => {
            status(state, matches!(param(query, "nodes"), Some("1" | "true"))).await
        }
        (&Method::GET, ["connections"]) => {
            let limit = match param(query, "limit").map(str::parse::<usize>) {
                None => Ok(LIST_DEFAULT),
                Some(Ok(n)) if (1..=LIST_MAX).contains(&n) => Ok(n),
                Some(_) => Err((
                    StatusCode::BAD_REQUEST,
                    format!("limit must be 1 to {LIST_MAX}"),
                )),
            };
            match (limit, param(query, "user")) {
                (Err(e), _) => Err(e),
                // Off the admin thread: another node may hold the name's partition.
                (Ok(limit), Some(name)) => match user_off_thread(state, name).await {
                    Ok((id, _)) => connections(state, Some(id), limit).await,
                    Err(e) => Err(e),
                },
                (Ok(limit), None) => connections(state, None, limit).await,
            }
        }
        (&Method::POST, ["users", name, action]) => {
            super::accounts::requested(state, name, action, query).await
        }
        (&Method::GET, ["conversations", spec]) => conversation(state, spec).await,
        (&Method::POST, ["compact"]) => compact(state).await,
        (&Method::POST, ["backup"]) => backup(state, body).await,
        _ => Err((StatusCode::NOT_FOUND, "no such endpoint".to_owned())),
    };
    match result {
        Ok(value) => json(StatusCode::OK, &value),
        Err((status, reason)) => failure(status, &reason),
    }
}

pub(super) type Outcome = Result<Value, (StatusCode, String)>;

/// The value of `key` in a query string (names and numbers only: nothing to decode).
pub(super) fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// [`user`] on a blocking thread: with serving nodes, the name's partition may be another
/// node's, and the read waits for it.
async fn user_off_thread(
    state: &State,
    name: &str,
) -> Result<(UserId, String), (StatusCode, String)> {
    let (store, name) = (state.store.clone(), name.to_owned());
    tokio::task::spawn_blocking(move || lookup(&store, &name))
        .await
        .map_err(unavailable)?
}

/// A user by name (a point read on this thread).
pub(super) fn user(state: &State, name: &str) -> Result<(UserId, String), (StatusCode, String)> {
    lookup(&state.store, name)
}

fn lookup(
    store: &crate::store::Stores,
    name: &str,
) -> Result<(UserId, String), (StatusCode, String)> {
    match store.user_by_name(name) {
        Ok(Some(record)) => Ok((record.id, record.name)),
        Ok(None) => Err((StatusCode::NOT_FOUND, format!("no user named {name:?}"))),
        Err(e) => Err(unavailable(e)),
    }
}

/// This node in a few fields, as every node's `/v1/status` lists it under `nodes`
/// (answered to the others too: `Call::Status`).
pub(crate) fn summary(shared: &Shared) -> Value {
    let states = shared.connection_states();
    let readiness = super::readiness(shared);
    json!({
        "node": shared.config().cluster.node,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": shared.started.elapsed().as_secs(),
        "ready": readiness.ready(),
        "draining": readiness.draining,
        "connections": states.authenticated + states.unauthenticated,
        "memory_used_bytes": shared.memory.used(),
        "partitions_held": shared.peers.held(),
    })
}

/// `GET /v1/status[?nodes=1]`: this node's status, and when asked with serving nodes
/// every node's summary (`nodes`, with `nodes_not_answering`; each other node is asked on
/// its link, so a poller of this node's status does not ask them).
async fn status(state: &State, nodes: bool) -> Outcome {
    let mut here = status_here(state);
    let shared = &state.shared;
    if !nodes || !shared.peers.on() {
        return Ok(here);
    }
    let peers = Arc::clone(&shared.peers);
    let elsewhere = tokio::task::spawn_blocking(move || peers.statuses_elsewhere())
        .await
        .map_err(unavailable)?;
    let mut nodes = vec![summary(shared)];
    let mut missing = 0;
    for (node, answered) in elsewhere {
        match answered {
            Some(summary) => nodes.push(summary),
            None => {
                tracing::warn!(target: "chatd::admin", node, "a node did not give its status");
                nodes.push(json!({ "node": node, "answered": false }));
                missing += 1;
            }
        }
    }
    here["nodes"] = json!(nodes);
    here["nodes_not_answering"] = json!(missing);
    Ok(here)
}

/// This node's status.
fn status_here(state: &State) -> Value {
    use std::sync::atomic::Ordering;
    let shared = &state.shared;
    let config = shared.config();
    let states = shared.connection_states();
    let head = shared.outbox_head();
    let confirmed = state.bridge.confirmed.load(Ordering::Acquire);
    let readiness = super::readiness(shared);
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": shared.started.elapsed().as_secs(),
        "ready": readiness.ready(),
        "draining": readiness.draining,
        "shards": states.per_shard.len(),
        "stuck_shards": readiness.stuck_shards,
        "listen": config.listen.to_string(),
        "data_dir": state.data_dir.display().to_string(),
        "connections": {
            "open": states.authenticated + states.unauthenticated,
            "authenticated": states.authenticated,
            "unauthenticated": states.unauthenticated,
            "handshaking": states.handshaking,
            "per_shard": states.per_shard,
            "refused": shared.refused.load(Ordering::Relaxed),
        },
        "memory": {
            "used_bytes": shared.memory.used(),
            "peak_bytes": shared.memory.peak(),
            "limit_bytes": shared.memory.limit(),
            "resident_bytes": crate::metrics::resident_bytes(),
        },
        "storage": {
            "failing": readiness.storage_failing,
            "queued": shared.writer.queued(),
            "durability": format!("{:?}", config.storage.durability).to_lowercase(),
        },
        "bridge": {
            "enabled": config.bridge.enabled(),
            "connected": state.bridge.connected(),
            "outbox_head": head,
            "confirmed": confirmed,
            "backlog": head.saturating_sub(confirmed),
        },
        "restricted_accounts": shared.restrictions.len(),
        "partitions": {
            "count": shared.partitions.count(),
            "held": shared.peers.held(),
            "reached": shared.peers.reached(),
        },
    })
}

/// Pushes `msg` into shard `shard`'s inbox, retrying a full inbox until `deadline`: whether
/// it went in.
pub(super) async fn push_by(
    shared: &Shared,
    shard: usize,
    mut msg: ShardMsg,
    deadline: Instant,
) -> bool {
    loop {
        match shared.inboxes[shard].push(msg) {
            Ok(()) => return true,
            Err(_) if Instant::now() >= deadline => return false,
            Err(back) => {
                msg = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Pushes one message to every shard (retrying a full inbox until `wait` has passed) and
/// collects the answers; every shard is asked, whatever happens to the others. Returns the
/// answers and how many shards did not answer (a full inbox, a stopped shard, no answer in
/// time).
pub(super) async fn ask_every_shard<T>(
    shared: &Shared,
    wait: Duration,
    make: impl Fn(tokio::sync::oneshot::Sender<T>) -> AdminOp,
) -> (Vec<T>, usize) {
    let deadline = Instant::now() + wait;
    let mut answers = Vec::new();
    let mut missing = 0;
    for shard in 0..shared.inboxes.len() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if push_by(shared, shard, ShardMsg::Admin(make(tx)), deadline).await {
            answers.push(rx);
        } else {
            missing += 1;
        }
    }
    let mut results = Vec::with_capacity(answers.len());
    for rx in answers {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(answer)) => results.push(answer),
            Ok(Err(_)) | Err(_) => missing += 1,
        }
    }
    (results, missing)
}

/// Connections listed at most, by default and at all (`?limit=`).
const LIST_DEFAULT: usize = 1_000;
const LIST_MAX: usize = 10_000;

/// `/v1/connections`: this node's, and with serving nodes (`cluster.peer`) every other
/// node's, each connection with its `node`; at most `limit` listed in all.
async fn connections(state: &State, user: Option<UserId>, limit: usize) -> Outcome {
    let shared = &state.shared;
    let mut here = connections_here(shared, user, limit, WAIT).await;
    if !shared.peers.on() {
        return Ok(here);
    }
    let me = shared.config().cluster.node.clone();
    let peers = Arc::clone(&shared.peers);
    let elsewhere = tokio::task::spawn_blocking(move || peers.connections_elsewhere(user, limit))
        .await
        .map_err(unavailable)?;
    let mut lists = vec![(me, here.take())];
    let mut missing = 0;
    for (node, listed) in elsewhere {
        match listed {
            Some(listed) => lists.push((node, listed)),
            None => {
                tracing::warn!(target: "chatd::admin", node, "a node did not list its connections");
                missing += 1;
            }
        }
    }
    let (mut count, mut shards_missing, mut all) = (0, 0, Vec::new());
    for (node, mut listed) in lists {
        count += listed["count"].as_u64().unwrap_or(0);
        shards_missing += listed["shards_not_answering"].as_u64().unwrap_or(0);
        if let Value::Array(conns) = listed["connections"].take() {
            for mut conn in conns {
                conn["node"] = json!(node);
                all.push(conn);
            }
        }
    }
    all.truncate(limit);
    Ok(json!({
        "count": count,
        "listed": all.len(),
        "shards_not_answering": shards_missing,
        "nodes_not_answering": missing,
        "connections": all,
    }))
}

/// This node's connections (of `user` only, when given): how many, and at most `limit`
/// listed, from every shard that answers within `wait`.
pub(crate) async fn connections_here(
    shared: &Shared,
    user: Option<UserId>,
    limit: usize,
    wait: Duration,
) -> Value {
    let (lists, missing) = ask_every_shard(shared, wait, |reply| AdminOp::Connections {
        user,
        limit,
        reply,
    })
    .await;
    let total: usize = lists.iter().map(|(total, _)| total).sum();
    let mut all: Vec<_> = lists.into_iter().flat_map(|(_, list)| list).collect();
    all.truncate(limit);
    json!({
        "count": total,
        "listed": all.len(),
        "shards_not_answering": missing,
        "connections": all,
    })
}

/// Commits `batch` through the storage thread and waits for it; once it committed, puts
/// `restriction` (if any) in place, on the storage thread, whether or not this still waits.
pub(super) async fn commit(
    state: &State,
    partition: usize,
    batch: Batch,
    restriction: Option<(UserId, Restriction)>,
) -> Result<(), (StatusCode, String)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done = Done::Admin {
        shared: Arc::clone(&state.shared),
        restriction,
        reply: tx,
    };
    if state.shared.writer.submit(partition, batch, done).is_err() {
        return Err(unavailable("the storage queue is full or storage stopped"));
    }
    match tokio::time::timeout(WAIT, rx).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(unavailable(e)),
        Ok(Err(_)) => Err(unavailable("storage stopped")),
        Err(_) => Err(unavailable("the commit did not finish in time")),
    }
}

/// Counts an action that took effect and, with the bridge on, publishes its event (a failed
/// write is logged: the action is not undone).
pub(super) async fn publish(state: &State, event: outbox::Event) {
    let outbox::Event::AdminAction { action, .. } = &event else {
        return;
    };
    let action = action.clone();
    // An account's event goes with the account (its partition's stream); others with the
    // first partition's.
    let partition = match &event {
        outbox::Event::AdminAction {
            user: Some(user), ..
        } => state.shared.partitions.of_id(user.0),
        _ => 0,
    };
    state.shared.metrics.admin_action(&action);
    if !state.shared.config().bridge.enabled() {
        return;
    }
    let mut batch = Batch::default();
    batch.event(event);
    if let Err((_, e)) = commit(state, partition, batch, None).await {
        tracing::error!(target: "chatd::admin", action, error = %e, "the admin event was not written");
    }
}

/// Parses `room:NAME`, `room:ID`, `dm:A:B` or `notes:A` (user names).
fn conversation_id(store: &Stores, spec: &str) -> Result<ConversationId, (StatusCode, String)> {
    let bad = || {
        (
            StatusCode::BAD_REQUEST,
            format!("{spec:?}: use room:NAME, room:ID, dm:USER:USER or notes:USER"),
        )
    };
    match spec.split(':').collect::<Vec<_>>().as_slice() {
        ["room", room] => {
            if let Ok(id) = room.parse() {
                return Ok(ConversationId::Room(RoomId(id)));
            }
            match store.room_by_name(room) {
                Ok(Some(record)) => Ok(ConversationId::Room(record.id)),
                Ok(None) => Err((StatusCode::NOT_FOUND, format!("no room named {room:?}"))),
                Err(e) => Err(unavailable(e)),
            }
        }
        ["dm", a, b] => Ok(ConversationId::direct(
            lookup(store, a)?.0,
            lookup(store, b)?.0,
        )),
        ["notes", a] => Ok(ConversationId::Notes(lookup(store, a)?.0)),
        _ => Err(bad()),
    }
}

/// `GET /v1/conversations/SPEC`: read off the admin thread (names and the conversation may
/// be other nodes'), by the node holding the conversation's partition.
async fn conversation(state: &State, spec: &str) -> Outcome {
    let (store, peers, spec) = (
        state.store.clone(),
        Arc::clone(&state.shared.peers),
        spec.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        let c = conversation_id(&store, &spec)?;
        let mut answer = if peers.on() && !store.holds(store.map().of_conversation(c)) {
            match peers.conversation_at(c) {
                Ok(Some(mut answer)) => {
                    name_everyone(&store, &mut answer);
                    answer
                }
                Ok(None) => return Err(no_conversation(&spec)),
                Err(e) => return Err(unavailable(e)),
            }
        } else {
            match conversation_here(&store, c, true) {
                Ok(Some(answer)) => answer,
                Ok(None) => return Err(no_conversation(&spec)),
                Err(e) => return Err(unavailable(e)),
            }
        };
        answer["conversation"] = json!(spec);
        Ok(answer)
    })
    .await
    .map_err(unavailable)?
}

/// Names the members and markers of a conversation another node described that it could
/// not name itself (their accounts are in other partitions).
fn name_everyone(store: &Stores, answer: &mut Value) {
    for list in ["members", "markers"] {
        let Some(entries) = answer[list].as_array_mut() else {
            continue;
        };
        for entry in entries {
            if entry["name"].as_str().is_some_and(|name| !name.is_empty()) {
                continue;
            }
            let Some(id) = entry["user"].as_u64() else {
                continue;
            };
            if let Ok(Some(record)) = store.user(UserId(id)) {
                entry["name"] = json!(record.name);
            }
        }
    }
}

fn no_conversation(spec: &str) -> (StatusCode, String) {
    (StatusCode::NOT_FOUND, format!("no conversation {spec:?}"))
}

/// A conversation's head, members and markers, read from the partition this node holds
/// (and answered to the other nodes: `Call::Conversation`); `None` when it does not exist.
/// Users are named when `everyone`, else only those whose partition is held here (an
/// answer to another node reads no third node's store: the asker names the rest,
/// [`name_everyone`]).
///
/// # Errors
/// The store's.
pub(crate) fn conversation_here(
    store: &Stores,
    c: ConversationId,
    everyone: bool,
) -> Result<Option<Value>, crate::store::Error> {
    let Some(snapshot) = store.load_conversation(c)? else {
        return Ok(None);
    };
    let name_of = |u: UserId| {
        if !everyone && !store.holds(store.map().of_id(u.0)) {
            return String::new();
        }
        (store.user(u).ok().flatten())
            .map(|r| r.name)
            .unwrap_or_default()
    };
    let members: Vec<Value> = match &snapshot.room {
        Some((_, members)) => members
            .iter()
            .map(|(u, m)| json!({ "user": u.0, "name": name_of(*u), "state": format!("{m:?}") }))
            .collect(),
        None => match c {
            ConversationId::Direct { low, high } => [low, high]
                .iter()
                .map(|u| json!({ "user": u.0, "name": name_of(*u), "state": "Member" }))
                .collect(),
            ConversationId::Notes(u) => {
                vec![json!({ "user": u.0, "name": name_of(u), "state": "Member" })]
            }
            ConversationId::Room(_) => Vec::new(),
        },
    };
    let markers: Vec<Value> = snapshot
        .marks
        .iter()
        .map(|(u, delivered, read)| {
            json!({ "user": u.0, "name": name_of(*u), "delivered": delivered.0, "read": read.0 })
        })
        .collect();
    Ok(Some(json!({
        "head": snapshot.head.0,
        "room": snapshot.room.as_ref().map(|(r, _)| json!({
            "id": r.id.0,
            "name": r.name,
            "invite_only": r.invite_only,
            "created_at_ms": r.created_at.0,
        })),
        "members": members,
        "markers": markers,
    })))
}

async fn compact(state: &State) -> Outcome {
    let store = state.store.clone();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        // The partitions this node holds.
        store
            .held()
            .iter()
            .try_for_each(|(_, store)| store.compact())
    })
    .await
    .map_err(unavailable)?
    .map_err(unavailable)?;
    let took = started.elapsed();
    tracing::info!(target: "chatd::admin", action = "compact", took_ms = took.as_millis(), "admin action");
    publish(
        state,
        outbox::Event::AdminAction {
            action: "compact".to_owned(),
            user: None,
            name: None,
            device: None,
            closed: 0,
            detail: None,
        },
    )
    .await;
    Ok(json!({ "action": "compact", "took_ms": took.as_millis() }))
}

async fn backup(state: &State, body: &Bytes) -> Outcome {
    #[derive(serde::Deserialize)]
    struct Ask {
        dir: std::path::PathBuf,
    }
    let ask: Ask = serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    if !ask.dir.is_absolute() {
        return Err((
            StatusCode::BAD_REQUEST,
            "the backup folder must be an absolute path".to_owned(),
        ));
    }
    if ask.dir.exists() {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "{} exists: a backup goes into a new folder",
                ask.dir.display()
            ),
        ));
    }
    let (store, data_dir, dir) = (state.store.clone(), state.data_dir.clone(), ask.dir.clone());
    let started = Instant::now();
    let manifest =
        tokio::task::spawn_blocking(move || crate::backup::take(&store, &data_dir, &dir))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
    let took = started.elapsed();
    tracing::info!(
        target: "chatd::admin",
        action = "backup",
        dir = %ask.dir.display(),
        took_ms = took.as_millis(),
        outbox_head = manifest.outbox_head,
        "admin action"
    );
    publish(
        state,
        outbox::Event::AdminAction {
            action: "backup".to_owned(),
            user: None,
            name: None,
            device: None,
            closed: 0,
            detail: Some(ask.dir.display().to_string()),
        },
    )
    .await;
    Ok(json!({
        "action": "backup",
        "dir": ask.dir.display().to_string(),
        "took_ms": took.as_millis(),
        "manifest": manifest,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        assert_eq!(param("user=alice&device=3", "device"), Some("3"));
        assert_eq!(param("user=alice", "user"), Some("alice"));
        assert_eq!(param("", "user"), None);
        assert_eq!(param("username=x", "user"), None);
    }
}
