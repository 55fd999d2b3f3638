//! The admin listener: `/metrics` moves with real traffic, `/readyz` follows draining and
//! failing storage, and `chatd admin` kicks, disables, enables and revokes on a real daemon.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use chat_protocol::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use chatd_testkit::{Tmpfs, fill};

use crate::TestDaemon;
use crate::client::Client;
use crate::operations::{Proc, exit_code, login, try_hello};

/// One HTTP/1.1 request, written by hand (so the daemon's own client is not what checks
/// its server); returns the status and the body.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_raw(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
}

/// Sends `request` as it is; returns the status and the body.
pub(crate) async fn http_raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    // Bodies come with Content-Length (no chunking) from this server.
    (status, body.to_owned())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, None).await
}

/// The sum of every sample of `name` whose labels contain each of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (metric, rest) = key.split_once('{').unwrap_or((key, ""));
            (metric == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_real_traffic() {
    let daemon = TestDaemon::start();
    let admin = daemon.admin_addr();
    let (status, before) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "chatd_sends_acknowledged_total",
        "chatd_deliveries_total",
        "chatd_storage_commits_total",
    ] {
        assert!(before.contains(&format!("# TYPE {name} counter")), "{name}");
        assert_eq!(metric(&before, name, &[]), 0.0, "{name}");
    }
    assert_eq!(metric(&before, "chatd_connections", &[]), 0.0);

    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let (mut bob, b) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    let dm = ConversationId::direct(a.user, b.user);
    for op in 1..=5 {
        alice.send_text(dm, op, "hello").await;
    }
    for _ in 0..5 {
        bob.message().await;
    }
    // Refused: bob's notes are not alice's.
    assert_eq!(
        alice
            .code(Request::History(HistoryQuery {
                conversation: ConversationId::Notes(b.user),
                from: HistoryFrom::Latest,
                limit: 10,
                order: Order::NewestFirst,
                thread: None,
            }))
            .await,
        ErrorCode::NOT_MEMBER
    );
    // Refused by the session itself: counted like any other request.
    let again = Request::Authenticate(Auth {
        token: daemon.token("alice"),
        resume: None,
    });
    assert_eq!(alice.code(again).await, ErrorCode::ALREADY_AUTHENTICATED);

    let (_, after) = get(admin, "/metrics").await;
    let m = |name, labels: &[&str]| metric(&after, name, labels);
    assert_eq!(m("chatd_sends_acknowledged_total", &[]), 5.0);
    assert_eq!(m("chatd_requests_total", &["request=\"send\""]), 5.0);
    assert_eq!(m("chatd_requests_total", &["request=\"history\""]), 1.0);
    assert_eq!(
        m("chatd_requests_total", &["request=\"authenticate\""]),
        1.0
    );
    assert_eq!(m("chatd_errors_total", &["code=\"NOT_MEMBER\""]), 1.0);
    assert_eq!(
        m("chatd_errors_total", &["code=\"ALREADY_AUTHENTICATED\""]),
        1.0
    );
    assert_eq!(m("chatd_errors_total", &[]), 2.0);
    // Bob's device got the five messages; alice's has the acks instead.
    assert_eq!(m("chatd_deliveries_total", &[]), 5.0);
    assert_eq!(m("chatd_handshakes_total", &["result=\"ok\""]), 2.0);
    assert_eq!(m("chatd_sessions_total", &[]), 2.0);
    assert_eq!(m("chatd_connections", &["state=\"authenticated\""]), 2.0);
    assert_eq!(m("chatd_shard_connections", &[]), 2.0);
    // Five sends and the two accounts, in as many group commits or fewer.
    let commits = m("chatd_storage_commits_total", &["result=\"ok\""]);
    assert!((1.0..=7.0).contains(&commits), "{commits}");
    assert_eq!(m("chatd_storage_commit_seconds_count", &[]), commits);
    assert_eq!(m("chatd_storage_fsync_seconds_count", &[]), commits);
    // Real durations: the fsync timer is RocksDB's own, the commit one ours.
    assert!(m("chatd_storage_fsync_seconds_sum", &[]) > 0.0, "{after}");
    assert!(m("chatd_storage_commit_seconds_sum", &[]) > 0.0);
    assert_eq!(m("chatd_storage_group_commit_requests_sum", &[]), 7.0);
    assert!(m("chatd_process_resident_memory_bytes", &[]) > 1e6);
    assert!(m("chatd_memory_used_bytes", &[]) > 0.0);
    assert_eq!(m("chatd_ready", &[]), 1.0);
    assert_eq!(m("chatd_storage_failing", &[]), 0.0);

    // The admin API sees the same two sessions.
    let (status, body) = get(admin, "/v1/connections?user=bob").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["count"], 1);
    assert_eq!(v["connections"][0]["name"], "bob");
    assert_eq!(v["connections"][0]["state"], "authenticated");
    let (_, body) = get(admin, "/v1/status").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["connections"]["authenticated"], 2);
    assert_eq!(v["ready"], true);
    let (status, body) = get(admin, "/v1/conversations/dm:alice:bob").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["head"], 5);
    assert_eq!(v["members"].as_array().unwrap().len(), 2);
    assert_eq!(get(admin, "/v1/conversations/dm:alice:nobody").await.0, 404);
    assert_eq!(get(admin, "/nothing").await.0, 404);
    assert_eq!(get(admin, "/healthz").await, (200, "ok\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_metrics_and_the_api_but_not_the_health_checks() {
    let token = "0123456789abcdef-admin";
    let daemon = TestDaemon::start_with(|c| c.admin.token = chatd::config::Secret::inline(token));
    let admin = daemon.admin_addr();
    assert_eq!(get(admin, "/metrics").await.0, 401);
    assert_eq!(get(admin, "/v1/status").await.0, 401);
    assert_eq!(
        http(admin, "GET", "/v1/status", Some("0123456789abcdef-wrong"))
            .await
            .0,
        401
    );
    assert_eq!(http(admin, "GET", "/metrics", Some(token)).await.0, 200);
    assert_eq!(http(admin, "GET", "/v1/status", Some(token)).await.0, 200);
    assert_eq!(get(admin, "/healthz").await.0, 200);
    assert_eq!(get(admin, "/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_api_refuses_what_a_browser_could_send() {
    let daemon = TestDaemon::start();
    let admin = daemon.admin_addr();
    let (_alice, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let post = |content_type: &str, host: &str| {
        format!(
            "POST /v1/users/alice/kick HTTP/1.1\r\nHost: {host}\r\n{content_type}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
    };
    // A form or text/plain post (what a page may send anywhere): refused.
    let (status, body) = http_raw(
        admin,
        &post("Content-Type: text/plain\r\n", &admin.to_string()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // DNS rebinding: the browser sends the attacker's name as Host.
    let (status, _) = http_raw(
        admin,
        &post("Content-Type: application/json\r\n", "evil.example:4480"),
    )
    .await;
    assert_eq!(status, 403);
    let get = "GET /v1/status HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    assert_eq!(http_raw(admin, get).await.0, 403);
    // What chatd admin sends: done.
    let (status, body) = http_raw(
        admin,
        &post(
            "Content-Type: application/json\r\n",
            &format!("localhost:{}", admin.port()),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Health checks and metrics are not the API.
    let get = "GET /readyz HTTP/1.1\r\nHost: 10.0.0.7:4480\r\nConnection: close\r\n\r\n";
    assert_eq!(http_raw(admin, get).await.0, 200);
}

#[test]
fn chatd_admin_refuses_a_name_that_would_change_the_request() {
    let out = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["admin", "--addr", "127.0.0.1:9", "kick", "bob/disable?"])
        .env_remove("CHATD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid user name"));
}

#[test]
fn a_public_admin_address_needs_a_token() {
    let mut config = chatd::config::Config::default();
    config.admin.listen = "0.0.0.0:4480".parse().unwrap();
    let e = config.validate().unwrap_err().to_string();
    assert!(e.contains("admin.token"), "{e}");
    config.admin.token = chatd::config::Secret::inline("0123456789abcdef");
    config.validate().unwrap();
}

/// Polls `/readyz` until it answers `status`; returns the body.
async fn readyz_becomes(admin: SocketAddr, status: u16) -> String {
    for _ in 0..400 {
        let (got, body) = get(admin, "/readyz").await;
        if got == status {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never answered {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_from_sigterm_on_while_the_daemon_serves_on() {
    let temp = tempfile::tempdir().unwrap();
    let mut chatd = Proc::start(temp.path(), "shutdown_drain_secs = 30", None, &[]);
    chatd.ready().await;
    let cert = temp.path().join("tls/cert.pem");
    let mut alice = login(chatd.addr, &cert, &chatd.token("alice"), 1).await;
    assert_eq!(get(chatd.admin, "/readyz").await.0, 200);
    chatd.signal("TERM");
    let body = readyz_becomes(chatd.admin, 503).await;
    assert!(body.contains("draining: yes"), "{body}");
    // Still serving: the connection works, a new client gets in, the process lives.
    assert!(matches!(
        alice.ok(Request::Ping).await,
        Response::Pong { .. }
    ));
    let mut bob = login(chatd.addr, &cert, &chatd.token("bob"), 1).await;
    assert!(matches!(bob.ok(Request::Ping).await, Response::Pong { .. }));
    assert_eq!(get(chatd.admin, "/healthz").await.0, 200);
    // A second SIGTERM ends the wait: goodbyes, then exit 0.
    chatd.signal("TERM");
    assert_eq!(goodbye(&mut alice).await, GoodbyeCode::SHUTTING_DOWN);
    assert_eq!(exit_code(&mut chatd.child).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_while_commits_fail_and_200_once_they_succeed() {
    // RocksDB resumes after a full disk once the free space exceeds its write buffer (64 MiB)
    // besides the rest: smaller, it would never recover.
    let tmpfs = Tmpfs::mount(256);
    let dir = tmpfs.path().join("data");
    let unlimited = "[limits]\nsend_rate = 1000000\nsend_burst = 1000000";
    let mut chatd = Proc::start(&dir, unlimited, None, &[]);
    chatd.ready().await;
    let cert = dir.join("tls/cert.pem");
    let (mut alice, session) = Client::login(chatd.addr, &cert, &chatd.token("alice"), 1).await;
    let notes = ConversationId::Notes(session.user);
    alice.send_text(notes, 1, "before").await;
    assert_eq!(get(chatd.admin, "/readyz").await.0, 200);

    let filler = fill(tmpfs.path());
    // Sends fail with UNAVAILABLE while the disk is full (RocksDB stops writing).
    let mut op = 2;
    loop {
        let sent = alice
            .request(Request::Send(SendMessage {
                conversation: notes,
                op: OpId(op),
                content_type: ContentType::TEXT,
                reply_to: None,
                body: vec![b'x'; 4096],
                mentions: Vec::new(),
            }))
            .await;
        op += 1;
        match sent {
            Ok(_) => assert!(op < 100_000, "the disk never filled"),
            Err(e) => {
                assert_eq!(e.code, ErrorCode::UNAVAILABLE, "{e:?}");
                break;
            }
        }
    }
    let body = readyz_becomes(chatd.admin, 503).await;
    assert!(body.contains("storage: commits fail"), "{body}");
    let (_, metrics) = get(chatd.admin, "/metrics").await;
    assert_eq!(metric(&metrics, "chatd_storage_failing", &[]), 1.0);
    assert!(
        metric(
            &metrics,
            "chatd_storage_commits_total",
            &["result=\"failed\""]
        ) >= 1.0
    );

    std::fs::remove_file(&filler).unwrap();
    // RocksDB notices the freed space by itself; the next commit that succeeds clears it.
    let mut recovered = false;
    for _ in 0..600 {
        let sent = alice
            .request(Request::Send(SendMessage {
                conversation: notes,
                op: OpId(op),
                content_type: ContentType::TEXT,
                reply_to: None,
                body: b"after".to_vec(),
                mentions: Vec::new(),
            }))
            .await;
        op += 1;
        if sent.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "commits never succeeded again:\n{}",
        chatd.log_text()
    );
    let body = readyz_becomes(chatd.admin, 200).await;
    assert!(body.contains("storage: writable"), "{body}");
    chatd.signal("TERM");
    assert_eq!(exit_code(&mut chatd.child).await, 0);
}

/// Runs `chatd admin ARGS` against `chatd`; returns its exit code and standard output.
fn chatd_admin(chatd: &Proc, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("admin")
        .args(["--addr", &chatd.admin.to_string()])
        .args(args)
        .env_remove("CHATD_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    (
        out.status.code().unwrap_or(-1),
        stdout + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Reads frames until the goodbye; returns its code.
pub(crate) async fn goodbye(client: &mut Client) -> GoodbyeCode {
    loop {
        match client.next_frame().await {
            Some(ServerFrame::Goodbye(g)) => return g.code,
            Some(_) => {}
            None => panic!("the stream ended without a goodbye"),
        }
    }
}

/// The error a hello with `token` gets.
async fn hello_error(addr: SocketAddr, cert: &std::path::Path, token: &str) -> ErrorCode {
    try_hello(addr, cert, token)
        .await
        .expect("the hello authenticated")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatd_admin_kicks_disables_enables_and_revokes() {
    let temp = tempfile::tempdir().unwrap();
    let mut chatd = Proc::start(temp.path(), "", None, &[]);
    chatd.ready().await;
    let cert = temp.path().join("tls/cert.pem");
    let old_token = chatd.token("alice");
    let mut phone = login(chatd.addr, &cert, &old_token, 1).await;
    let mut laptop = login(chatd.addr, &cert, &old_token, 2).await;
    let mut bob = login(chatd.addr, &cert, &chatd.token("bob"), 1).await;

    // Kick one device, then the rest; bob is untouched and the user may come back.
    let (code, out) = chatd_admin(&chatd, &["kick", "alice", "--device", "2"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "kicked alice device 2: 1 connection(s) closed\n")
    );
    assert_eq!(goodbye(&mut laptop).await, GoodbyeCode::KICKED);
    let (code, out) = chatd_admin(&chatd, &["--json", "kick", "alice"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["closed"], 1);
    assert_eq!(goodbye(&mut phone).await, GoodbyeCode::KICKED);
    assert!(matches!(bob.ok(Request::Ping).await, Response::Pong { .. }));
    let mut phone = login(chatd.addr, &cert, &old_token, 1).await;

    // Disable: the session ends, the old token and a new one are refused.
    let (code, out) = chatd_admin(&chatd, &["disable", "alice"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("disabled alice"), "{out}");
    assert_eq!(goodbye(&mut phone).await, GoodbyeCode::ACCOUNT_DISABLED);
    assert_eq!(
        hello_error(chatd.addr, &cert, &old_token).await,
        ErrorCode::ACCOUNT_DISABLED
    );
    let (code, out) = chatd_admin(&chatd, &["--json", "connections", "--user", "alice"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The closed session may still be listed until its connection is gone, as closing.
    assert!(
        v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "closing"),
        "{out}"
    );

    // Enable: tokens issued before the disable stay revoked; one minted after works.
    let (code, out) = chatd_admin(&chatd, &["--json", "enable", "alice"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["disabled"], false);
    let tokens_from = v["tokens_from"].as_u64().unwrap();
    assert!(tokens_from > 0);
    assert_eq!(
        hello_error(chatd.addr, &cert, &old_token).await,
        ErrorCode::TOKEN_REVOKED
    );
    while chatd::unix_now() < tokens_from {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_token = chatd.token("alice");
    let mut phone = login(chatd.addr, &cert, &new_token, 1).await;

    // Revoke: the session ends with TOKEN_REVOKED and its token no longer works.
    while chatd::unix_now() < tokens_from + 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, out) = chatd_admin(&chatd, &["revoke", "alice"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(goodbye(&mut phone).await, GoodbyeCode::TOKEN_REVOKED);
    assert_eq!(
        hello_error(chatd.addr, &cert, &new_token).await,
        ErrorCode::TOKEN_REVOKED
    );

    // Unknown users and actions are refused with the reason.
    let (code, out) = chatd_admin(&chatd, &["kick", "nobody"]);
    assert_eq!(code, 69);
    assert!(out.contains("no user named \"nobody\""), "{out}");
    let (_, metrics) = get(chatd.admin, "/metrics").await;
    assert_eq!(
        metric(&metrics, "chatd_admin_actions_total", &["action=\"kick\""]),
        2.0
    );
    assert_eq!(metric(&metrics, "chatd_kicked_total", &[]), 4.0);
    assert!(chatd.log_text().contains("admin action"));

    // The restriction is stored: after a restart the revoked token is still refused.
    chatd.signal("TERM");
    assert_eq!(exit_code(&mut chatd.child).await, 0);
    let mut again = Proc::start(temp.path(), "", Some(chatd.addr), &[]);
    again.ready().await;
    assert_eq!(
        hello_error(again.addr, &cert, &new_token).await,
        ErrorCode::TOKEN_REVOKED
    );
    let (code, out) = chatd_admin(&again, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 restricted"), "{out}");
}

/// Every entry of `conversation`, oldest first, through history pages.
async fn all_entries(client: &mut Client, conversation: ConversationId) -> Vec<Entry> {
    let mut entries = Vec::new();
    loop {
        let after = Seq(entries.len() as u64);
        let page = client
            .history(conversation, HistoryFrom::After(after), limits::MAX_PAGE)
            .await;
        let more = page.more;
        entries.extend(page.entries);
        if !more {
            return entries;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_message_acknowledged_before_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let temp = tempfile::tempdir().unwrap();
    let unlimited = "[limits]\nsend_rate = 1000000\nsend_burst = 1000000";
    let mut chatd = Proc::start(&temp.path().join("data"), unlimited, None, &[]);
    chatd.ready().await;
    let cert = temp.path().join("data/tls/cert.pem");
    let (mut owner, _) = Client::login(chatd.addr, &cert, &chatd.token("owner"), 1).await;
    let room_id = owner.create_room("busy", false).await;
    let room = ConversationId::Room(room_id);
    let began = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = Vec::new();
    for name in ["ann", "ben", "cat"] {
        let (mut client, _) = Client::login(chatd.addr, &cert, &chatd.token(name), 1).await;
        client.ok(Request::JoinRoom { room: room_id }).await;
        let (began, stop, acked) = (Arc::clone(&began), Arc::clone(&stop), Arc::clone(&acked));
        senders.push(tokio::spawn(async move {
            let (mut before, mut after) = (Vec::new(), 0u64);
            let mut op = 0;
            while !stop.load(Ordering::SeqCst) {
                op += 1;
                let ack = client.send_text(room, op, "load").await;
                acked.fetch_add(1, Ordering::SeqCst);
                // Acknowledged before the flag was raised: before the backup began.
                if began.load(Ordering::SeqCst) {
                    after += 1;
                } else {
                    before.push((ack.seq, ack.op));
                }
            }
            (before, after)
        }));
    }
    // Let the load run, then back up in the middle of it.
    let until_acked = |n: usize| {
        let acked = Arc::clone(&acked);
        async move {
            while acked.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    until_acked(300).await;
    let backup = temp.path().join("backups/under-load");
    began.store(true, Ordering::SeqCst);
    let (code, out) = {
        let (admin, backup) = (chatd.admin, backup.clone());
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_chatd"))
                .args(["backup", "--addr", &admin.to_string()])
                .arg(&backup)
                .env_remove("CHATD_CONFIG")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("backup written to"), "{out}");
    // More load after the backup too (what it must not be asked to hold).
    let at_backup_end = acked.load(Ordering::SeqCst);
    until_acked(at_backup_end + 300).await;
    stop.store(true, Ordering::SeqCst);
    let (mut before, mut after) = (Vec::new(), 0);
    for sender in senders {
        let (b, a) = sender.await.unwrap();
        before.extend(b);
        after += a;
    }
    assert!(before.len() >= 300, "{}", before.len());
    assert!(after >= 300, "{after}");
    chatd.signal("TERM");
    assert_eq!(exit_code(&mut chatd.child).await, 0);

    // A second backup into the same folder is refused; a restore over a store too.
    let restored = temp.path().join("restored");
    let restore = |into: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_chatd"))
            .arg("restore")
            .arg(&backup)
            .arg("--data-dir")
            .arg(into)
            .env_remove("CHATD_CONFIG")
            .output()
            .unwrap()
    };
    let over = restore(&temp.path().join("data"));
    assert_eq!(over.status.code(), Some(69));
    let out = restore(&restored);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut again = Proc::start(&restored, "", None, &[]);
    again.ready().await;
    // The restored daemon is the same server: the generated token secret and certificate came
    // with the backup.
    let (mut reader, _) = again.login("owner").await;
    let entries = all_entries(&mut reader, room).await;
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq().0).collect();
    // Contiguous from 1: nothing half-written.
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let stored: std::collections::HashSet<(Seq, OpId)> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Message(m) => Some((m.seq, m.op)),
            _ => None,
        })
        .collect();
    let missing: Vec<_> = before.iter().filter(|a| !stored.contains(a)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the backup but not restored: {missing:?}"
    );
    again.signal("TERM");
    assert_eq!(exit_code(&mut again.child).await, 0);
}
