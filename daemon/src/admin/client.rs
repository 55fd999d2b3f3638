//! The client side of the admin API, for `chatd admin`: one HTTP/1.1 request over TCP
//! (hyper's client connection, no pool), and the human-readable rendering of each answer.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// How long a question waits for the daemon (an account action itself waits up to 10 s).
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a compaction or a backup may take.
const LONG_TIMEOUT: Duration = Duration::from_secs(3600);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No daemon answered at the address.
    #[error("cannot reach the admin listener at {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    /// HTTP failed.
    #[error("admin request failed: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("admin request: {0}")]
    Request(#[from] hyper::http::Error),
    /// No answer in time.
    #[error("the daemon did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// The daemon refused (the status and its reason).
    #[error("{0}: {1}")]
    Refused(u16, String),
    /// The answer is not JSON.
    #[error("the answer is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Sends `method path` (with `body` as JSON, if any) to the admin listener at `addr` (with
/// `token` as bearer token) and returns the JSON answer.
///
/// # Errors
/// When the daemon cannot be reached, refuses, or answers something else than JSON.
pub async fn call(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, Error> {
    // Actions always carry a JSON body (an empty object when they need nothing).
    let body = match (method, body) {
        (_, Some(v)) => Bytes::from(v.to_string()),
        ("GET", None) => Bytes::new(),
        (_, None) => Bytes::from_static(b"{}"),
    };
    let timeout = if matches!(path, "/v1/compact" | "/v1/backup") {
        LONG_TIMEOUT
    } else {
        TIMEOUT
    };
    tokio::time::timeout(timeout, call_once(addr, token, method, path, body))
        .await
        .map_err(|_| Error::Timeout(timeout))?
}

async fn call_once(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<Value, Error> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| Error::Connect(addr, e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string());
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if !body.is_empty() {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let response = sender.send_request(request.body(Full::new(body))?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    driver.abort();
    let value: Value = serde_json::from_slice(&body)?;
    if status.is_success() {
        Ok(value)
    } else {
        let reason = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("refused")
            .to_owned();
        Err(Error::Refused(status.as_u16(), reason))
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Bytes as MiB with one decimal.
#[allow(clippy::cast_precision_loss)] // for display
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// `chatd admin status`, for people.
#[must_use]
pub fn render_status(v: &Value) -> String {
    let c = &v["connections"];
    let m = &v["memory"];
    let s = &v["storage"];
    let b = &v["bridge"];
    let up = num(v, "uptime_secs");
    let mut out = format!(
        "chatd {} on {}, up {}h{:02}m{:02}s, {}\n",
        str_of(v, "version"),
        str_of(v, "listen"),
        up / 3600,
        up / 60 % 60,
        up % 60,
        if v["ready"].as_bool() == Some(true) {
            "ready"
        } else if v["draining"].as_bool() == Some(true) {
            "NOT READY (draining)"
        } else {
            "NOT READY"
        }
    );
    out += &format!(
        "shards       {} (connections per shard {})\n",
        num(v, "shards"),
        c["per_shard"]
    );
    out += &format!(
        "connections  {} open, {} authenticated, {} unauthenticated, {} in their handshake, {} refused since start\n",
        num(c, "open"),
        num(c, "authenticated"),
        num(c, "unauthenticated"),
        num(c, "handshaking"),
        num(c, "refused")
    );
    out += &format!(
        "memory       {} of {} budget in use (peak {}), resident {}\n",
        mib(num(m, "used_bytes")),
        mib(num(m, "limit_bytes")),
        mib(num(m, "peak_bytes")),
        mib(num(m, "resident_bytes"))
    );
    out += &format!(
        "storage      {}, {} queued, durability {}\n",
        if s["failing"].as_bool() == Some(true) {
            "COMMITS FAIL"
        } else {
            "writable"
        },
        num(s, "queued"),
        str_of(s, "durability")
    );
    if b["enabled"].as_bool() == Some(true) {
        out += &format!(
            "bridge       {}, backlog {} events (outbox head {}, confirmed {})\n",
            if b["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "NOT CONNECTED"
            },
            num(b, "backlog"),
            num(b, "outbox_head"),
            num(b, "confirmed")
        );
    } else {
        out += "bridge       off\n";
    }
    out += &format!(
        "accounts     {} restricted (disabled or tokens revoked)\n",
        num(v, "restricted_accounts")
    );
    let p = &v["partitions"];
    let list = |key: &str| {
        let held: Vec<String> = (p[key].as_array().into_iter().flatten())
            .map(ToString::to_string)
            .collect();
        if held.is_empty() {
            "none".to_owned()
        } else {
            held.join(" ")
        }
    };
    if num(p, "count") > 1 {
        out += &format!(
            "partitions   {} in all; held here: {}; reached on links: {}\n",
            num(p, "count"),
            list("held"),
            list("reached")
        );
    }
    for (n, node) in (v["nodes"].as_array().into_iter().flatten()).enumerate() {
        let label = if n == 0 { "nodes" } else { "" };
        let name = str_of(node, "node");
        let line = if node["answered"].as_bool() == Some(false) {
            "NOT ANSWERING".to_owned()
        } else {
            let held: Vec<String> = (node["partitions_held"].as_array().into_iter().flatten())
                .map(ToString::to_string)
                .collect();
            format!(
                "{}, {} connections, {} in use, partitions {}, up {}s",
                if node["ready"].as_bool() == Some(true) {
                    "ready"
                } else {
                    "NOT READY"
                },
                num(node, "connections"),
                mib(num(node, "memory_used_bytes")),
                if held.is_empty() {
                    "none".to_owned()
                } else {
                    held.join(" ")
                },
                num(node, "uptime_secs")
            )
        };
        let asked = if n == 0 { " (asked)" } else { "" };
        out += &format!("{label:<12} {name}{asked}: {line}\n");
    }
    if num(v, "nodes_not_answering") > 0 {
        out += &format!(
            "warning: {} node(s) did not give their status\n",
            num(v, "nodes_not_answering")
        );
    }
    out
}

/// `chatd admin connections`, for people: one line per connection.
#[must_use]
pub fn render_connections(v: &Value) -> String {
    let mut out = format!(
        "{:<6} {:<8} {:<24} {:<13} {:<16} {:<20} {:>8} {:>7} {:>10} {:>6}\n",
        "SHARD",
        "CONN",
        "REMOTE",
        "TRANSPORT",
        "STATE",
        "USER/DEVICE",
        "AGE_S",
        "RTT_MS",
        "QUEUED_B",
        "LAGGED"
    );
    for c in v["connections"].as_array().into_iter().flatten() {
        let who = match (c["name"].as_str(), c["device"].as_u64()) {
            (Some(name), Some(device)) => format!("{name}/{device}"),
            (None, Some(device)) => format!("-/{device}"),
            _ => "-".to_owned(),
        };
        // With serving nodes, each connection's node too.
        let shard = match c["node"].as_str() {
            Some(node) => format!("{node}/{}", num(c, "shard")),
            None => num(c, "shard").to_string(),
        };
        out += &format!(
            "{:<6} {:<8} {:<24} {:<13} {:<16} {:<20} {:>8} {:>7} {:>10} {:>6}\n",
            shard,
            num(c, "id"),
            str_of(c, "remote"),
            str_of(c, "transport"),
            str_of(c, "state"),
            who,
            num(c, "connected_secs"),
            num(c, "rtt_ms"),
            num(c, "queued_bytes"),
            if c["lagged"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
        );
    }
    out += &format!("{} connections\n", num(v, "count"));
    if num(v, "nodes_not_answering") > 0 {
        out += &format!(
            "warning: {} node(s) did not list theirs\n",
            num(v, "nodes_not_answering")
        );
    }
    out
}

/// Whether an answer says the request was carried out only in part: some shards or nodes
/// could not be told, or did not list theirs, or conversations were left unfinished, or
/// messages of an erasure were not deleted. The command may be run again (`chatd admin`
/// exits 75).
#[must_use]
pub fn partial(v: &Value) -> bool {
    [
        "shards_not_answering",
        "nodes_not_answering",
        "conversations_unfinished",
        "not_deleted",
    ]
    .iter()
    .any(|field| num(v, field) > 0)
}

/// An account action's answer, for people.
#[must_use]
pub fn render_action(v: &Value) -> String {
    let action = str_of(v, "action");
    let name = str_of(v, "name");
    let closed = num(v, "closed");
    let mut out = match action {
        "kick" => match v["device"].as_u64() {
            Some(d) => format!("kicked {name} device {d}: {closed} connection(s) closed\n"),
            None => format!("kicked {name}: {closed} connection(s) closed\n"),
        },
        "disable" => {
            format!("disabled {name}: logins and tokens refused, {closed} connection(s) closed\n")
        }
        "enable" => format!("enabled {name}\n"),
        "revoke" => format!(
            "revoked the tokens of {name} issued before {}: {closed} connection(s) closed\n",
            num(v, "tokens_from")
        ),
        _ => format!("{v}\n"),
    };
    if action == "enable" && num(v, "tokens_from") > 0 {
        out += &format!(
            "(tokens issued before {} stay revoked: mint new ones)\n",
            num(v, "tokens_from")
        );
    }
    if let Some(node) = v["node"].as_str() {
        out += &format!("(taken by node {node}, which holds the account)\n");
    }
    let (shards, nodes) = (
        num(v, "shards_not_answering"),
        num(v, "nodes_not_answering"),
    );
    if shards > 0 || nodes > 0 {
        out += &format!(
            "warning: {shards} shard(s) and {nodes} node(s) could not be told to close the sessions: run it again\n"
        );
    }
    out
}

/// An erasure's answer, for people.
#[must_use]
pub fn render_erase(v: &Value) -> String {
    let mut out = format!(
        "erased {}: {} message(s) deleted in {} conversation(s), {} deleted already\n",
        str_of(v, "name"),
        num(v, "deleted"),
        num(v, "conversations"),
        num(v, "already_deleted"),
    );
    if num(v, "not_deleted") > 0 || num(v, "conversations_unfinished") > 0 {
        out += &format!(
            "{} message(s) not deleted (code {}), {} conversation(s) unfinished: run it again\n",
            num(v, "not_deleted"),
            v["failure_code"],
            num(v, "conversations_unfinished"),
        );
    }
    out
}

/// `chatd backup`, for people.
#[must_use]
pub fn render_backup(v: &Value) -> String {
    let m = &v["manifest"];
    if num(m, "partition_count") > 0 {
        let held: Vec<String> = (m["partitions"].as_array().into_iter().flatten())
            .map(|p| num(p, "partition").to_string())
            .collect();
        return format!(
            "backup written to {} in {} ms: store format {}, partitions {} of {} (the ones this \
             node holds; back up every node for the rest)\n",
            str_of(v, "dir"),
            num(v, "took_ms"),
            num(m, "format"),
            held.join(" "),
            num(m, "partition_count"),
        );
    }
    format!(
        "backup written to {} in {} ms: store format {}, outbox head {}, bridge cursor {}\n",
        str_of(v, "dir"),
        num(v, "took_ms"),
        num(m, "format"),
        num(m, "outbox_head"),
        num(m, "bridge_cursor"),
    )
}

/// `chatd admin conversation`, for people.
#[must_use]
pub fn render_conversation(v: &Value) -> String {
    let mut out = format!(
        "{}: head seq {}\n",
        str_of(v, "conversation"),
        num(v, "head")
    );
    if let Some(room) = v["room"].as_object() {
        out += &format!(
            "room {} #{}{}\n",
            room.get("id").and_then(Value::as_u64).unwrap_or(0),
            room.get("name").and_then(Value::as_str).unwrap_or(""),
            if room.get("invite_only").and_then(Value::as_bool) == Some(true) {
                ", invite-only"
            } else {
                ""
            }
        );
    }
    out += "members:\n";
    for m in v["members"].as_array().into_iter().flatten() {
        out += &format!(
            "  {:<10} {:<24} {}\n",
            num(m, "user"),
            str_of(m, "name"),
            str_of(m, "state")
        );
    }
    out += "markers (delivered / read):\n";
    for m in v["markers"].as_array().into_iter().flatten() {
        out += &format!(
            "  {:<10} {:<24} {} / {}\n",
            num(m, "user"),
            str_of(m, "name"),
            num(m, "delivered"),
            num(m, "read")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_as_sentences() {
        let v = serde_json::json!({"action": "kick", "name": "alice", "closed": 2, "device": null});
        assert_eq!(render_action(&v), "kicked alice: 2 connection(s) closed\n");
        let v = serde_json::json!({"action": "disable", "name": "dave", "closed": 3,
            "node": "b", "shards_not_answering": 0, "nodes_not_answering": 1});
        assert_eq!(
            render_action(&v),
            "disabled dave: logins and tokens refused, 3 connection(s) closed\n\
             (taken by node b, which holds the account)\n\
             warning: 0 shard(s) and 1 node(s) could not be told to close the sessions: run it again\n"
        );
        let v =
            serde_json::json!({"action": "enable", "name": "bob", "closed": 0, "tokens_from": 7});
        assert_eq!(
            render_action(&v),
            "enabled bob\n(tokens issued before 7 stay revoked: mint new ones)\n"
        );
    }

    #[test]
    fn status_lists_every_node_and_the_ones_not_answering() {
        let v = serde_json::json!({
            "version": "0.1.0", "listen": "127.0.0.1:4433", "uptime_secs": 61, "ready": true,
            "partitions": {"count": 12, "held": [0, 3], "reached": [1, 2]},
            "nodes": [
                {"node": "a", "ready": true, "connections": 2, "memory_used_bytes": 1_048_576,
                 "partitions_held": [0, 3], "uptime_secs": 61},
                {"node": "b", "ready": false, "connections": 0, "memory_used_bytes": 0,
                 "partitions_held": [], "uptime_secs": 1},
                {"node": "c", "answered": false}
            ],
            "nodes_not_answering": 1
        });
        let out = render_status(&v);
        assert!(
            out.contains(
                "nodes        a (asked): ready, 2 connections, 1.0 MiB in use, partitions 0 3, up 61s\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "             b: NOT READY, 0 connections, 0.0 MiB in use, partitions none, up 1s\n"
            ),
            "{out}"
        );
        assert!(out.contains("             c: NOT ANSWERING\n"), "{out}");
        assert!(
            out.ends_with("warning: 1 node(s) did not give their status\n"),
            "{out}"
        );
        assert!(partial(&v));
    }

    #[test]
    fn an_answer_done_in_part_is_partial() {
        let done = serde_json::json!({"action": "disable", "closed": 3,
            "shards_not_answering": 0, "nodes_not_answering": 0});
        assert!(!partial(&done));
        assert!(!partial(
            &serde_json::json!({"count": 2, "connections": []})
        ));
        for field in [
            "shards_not_answering",
            "nodes_not_answering",
            "conversations_unfinished",
            "not_deleted",
        ] {
            let mut v = done.clone();
            v[field] = serde_json::json!(1);
            assert!(partial(&v), "{field}");
        }
    }
}
