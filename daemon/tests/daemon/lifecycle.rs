//! Restarts and signals: acked messages survive, deduplication survives, SIGTERM exits 0.

use std::process::Command;
use std::time::Duration;

use chat_protocol::*;

use crate::client::Client;
use crate::{TestDaemon, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let mut daemon = TestDaemon::start_in(temp.path(), test_config(temp.path()));
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let notes = ConversationId::Notes(a.user);
    let mut acks = Vec::new();
    for op in 1..=25 {
        acks.push(alice.send_text(notes, op, &format!("note {op}")).await);
    }
    drop(alice);
    daemon.stop();

    let daemon = TestDaemon::start_in(temp.path(), test_config(temp.path()));
    let (mut alice, again) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    assert_eq!(again.user, a.user);
    let page = alice.history(notes, HistoryFrom::After(Seq(0)), 100).await;
    assert_eq!(page.entries.len(), 25);
    for (entry, ack) in page.entries.iter().zip(&acks) {
        let Entry::Message(m) = entry else { panic!() };
        assert_eq!((m.seq, m.ts), (ack.seq, ack.ts));
    }
    // The sender's window is read from disk: a retry of an old op is still recognised.
    let retry = alice.send_text(notes, 25, "note 25").await;
    assert_eq!((retry.seq, retry.duplicate), (Seq(25), true));
    assert_eq!(alice.send_text(notes, 26, "note 26").await.seq, Seq(26));
}

/// The window is per sender: other members' sends (and the restart) do not push a user's
/// retried op out of it; only the user's own later sends do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_is_recognised_however_far_the_conversation_moved() {
    let temp = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = test_config(temp.path());
        config.limits.max_in_flight = 4;
        config.storage.dedupe_window = 4;
        config.storage.dedupe_cache = 8;
        config
    };
    let mut daemon = TestDaemon::start_in(temp.path(), config());
    let login = |daemon: &TestDaemon, name: &'static str| {
        let (addr, cert, token) = (daemon.addr, daemon.cert.clone(), daemon.token(name));
        async move { Client::login(addr, &cert, &token, 1).await.0 }
    };
    let mut alice = login(&daemon, "alice").await;
    let room = alice.create_room("far", false).await;
    let conversation = ConversationId::Room(room);
    let first = alice.send_text(conversation, 1, "first").await;
    // Bob and Carol move the conversation on ten times the window; their windows also
    // crowd Alice's out of the owner's memory (cache 8), so her retry is read from disk.
    for (name, base) in [("bob", 100), ("carol", 200)] {
        let mut other = login(&daemon, name).await;
        other.ok(Request::JoinRoom { room }).await;
        for op in base..base + 20 {
            other.send_text(conversation, op, "chatter").await;
        }
    }
    let retry = alice.send_text(conversation, 1, "first").await;
    assert_eq!(
        (retry.seq, retry.ts, retry.duplicate),
        (first.seq, first.ts, true)
    );
    drop(alice);
    daemon.stop();

    // After a restart the window is read from disk.
    let daemon = TestDaemon::start_in(temp.path(), config());
    let mut alice = login(&daemon, "alice").await;
    let retry = alice.send_text(conversation, 1, "first").await;
    assert_eq!(
        (retry.seq, retry.ts, retry.duplicate),
        (first.seq, first.ts, true)
    );
    // Four later sends of Alice's own push op 1 out of her window of four: a retry now is
    // a new message (the documented bound).
    for op in 2..=5 {
        assert!(!alice.send_text(conversation, op, "mine").await.duplicate);
    }
    let late = alice.send_text(conversation, 1, "first").await;
    assert!(!late.duplicate);
    // Her window is now ops 3, 4, 5 and the new 1: 5 is recognised, 2 no longer.
    assert!(alice.send_text(conversation, 5, "mine").await.duplicate);
    assert!(!alice.send_text(conversation, 2, "mine").await.duplicate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_says_goodbye_and_exits_zero() {
    let temp = tempfile::tempdir().unwrap();
    // Play systemd: the daemon reports READY=1 and STOPPING=1 on NOTIFY_SOCKET.
    let notify_path = temp.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let notify_env = notify_path.to_str().unwrap().to_owned();
    let (mut child, addr) = crate::spawn_chatd(temp.path(), &[("NOTIFY_SOCKET", &notify_env)]);
    let cert = temp.path().join("tls/cert.pem");
    // Wait for the daemon to come up: the certificate appears, then a hello is answered.
    let mut client = None;
    for _ in 0..200 {
        if cert.exists()
            && let Ok(Ok(c)) =
                tokio::time::timeout(Duration::from_secs(2), try_connect(addr, &cert)).await
        {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client.expect("the daemon did not come up");
    assert_eq!(notification(&notify), "READY=1");
    let ok = client.hello(None, 1).await;
    assert!(ok.session.is_none());

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut goodbye = None;
    while let Some(frame) = client.next_frame().await {
        if let ServerFrame::Goodbye(g) = frame {
            goodbye = Some(g.code);
        }
    }
    assert_eq!(goodbye, Some(GoodbyeCode::SHUTTING_DOWN));
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "chatd exited with {exit:?}");
    assert_eq!(notification(&notify), "STOPPING=1");
}

fn notification(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("no sd_notify message");
    String::from_utf8_lossy(&buf[..n]).trim().to_owned()
}

async fn try_connect(addr: std::net::SocketAddr, cert: &std::path::Path) -> Result<Client, ()> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|_| ())?;
    endpoint.set_default_client_config(crate::client::client_config(cert));
    let conn = endpoint
        .connect(addr, "localhost")
        .map_err(|_| ())?
        .await
        .map_err(|_| ())?;
    drop(conn);
    Ok(Client::connect(addr, cert).await)
}

/// Waits until a daemon answers on `addr`; returns a connected client (no hello yet).
pub(crate) async fn connect_when_up(addr: std::net::SocketAddr, cert: &std::path::Path) -> Client {
    for _ in 0..400 {
        if cert.exists()
            && let Ok(Ok(c)) =
                tokio::time::timeout(Duration::from_secs(2), try_connect(addr, cert)).await
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the daemon did not come up on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_killed_daemon_is_reset_at_its_next_packet_after_the_restart() {
    let temp = tempfile::tempdir().unwrap();
    let cert = temp.path().join("tls/cert.pem");
    let (mut first, addr) = crate::spawn_chatd(temp.path(), &[]);
    let mut old = connect_when_up(addr, &cert).await;
    let keys =
        chatd::token::Keys::load(&chatd::config::AuthConfig::default(), temp.path()).unwrap();
    let now = chatd::unix_now();
    let token = keys.mint("alice", now, now + 3600);
    old.hello(Some(&token), 1).await.session.unwrap();
    assert!(matches!(old.ok(Request::Ping).await, Response::Pong { .. }));
    // A crash: nothing is said to the client.
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = crate::spawn_chatd_at(temp.path(), addr, &[]);
    drop(connect_when_up(addr, &cert).await);
    // The old connection's next packet reaches the new process, which answers with a
    // stateless reset its predecessor's token matches: the client knows at once, long before
    // its idle timeout (quinn's default, 30 s, is beyond the wait below). (Its QUIC stack may
    // have sent a packet of its own already, and be reset before this write.)
    let closed = old.ended_after_a_packet().await;
    assert!(
        matches!(closed, quinn::ConnectionError::Reset),
        "{closed:?}"
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

/// `chatd::run`, the lifecycle that `chatd run` drives from signals: a reload is applied; a
/// graceful stop drains (`/readyz` 503) and refuses reloads meanwhile; a second stop ends the
/// drain; a connected client is told goodbye and `run` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_applies_reloads_drains_and_stops_on_commands() {
    let temp = tempfile::tempdir().unwrap();
    let port = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = test_config(temp.path());
    config.listen = addr;
    // Long enough that only the fast stop below ends the drain.
    config.shutdown_drain_secs = 600;
    let (commands, received) = tokio::sync::mpsc::channel(4);
    let running = tokio::spawn(chatd::run(config.clone(), received));
    let cert = temp.path().join("tls/cert.pem");
    drop(connect_when_up(addr, &cert).await);
    let keys =
        chatd::token::Keys::load(&chatd::config::AuthConfig::default(), temp.path()).unwrap();
    let now = chatd::unix_now();
    let (mut alice, _) = Client::login(addr, &cert, &keys.mint("alice", now, now + 3600), 1).await;

    let reload = |config: chatd::config::Config| {
        let (done, answer) = tokio::sync::oneshot::channel();
        let command = chatd::Command::Reload {
            config: Box::new(config),
            done,
        };
        (command, answer)
    };
    let mut changed = config.clone();
    changed.shutdown_grace_secs = 2;
    let (command, answer) = reload(changed);
    commands.send(command).await.unwrap();
    let reloaded = answer.await.unwrap().expect("the reload is applied");
    assert_eq!(reloaded.late_shards, 0);
    assert!(
        reloaded.restart_needed.is_empty(),
        "{:?}",
        reloaded.restart_needed
    );

    commands
        .send(chatd::Command::Stop(chatd::Stop::Graceful))
        .await
        .unwrap();
    let (command, answer) = reload(config);
    commands.send(command).await.unwrap();
    assert!(
        matches!(answer.await.unwrap(), Err(chatd::server::Error::Stopping)),
        "no reload once the stop began"
    );
    assert!(!running.is_finished(), "draining: it serves on");
    commands
        .send(chatd::Command::Stop(chatd::Stop::Graceful))
        .await
        .unwrap();
    let mut goodbye = None;
    while let Some(frame) = alice.next_frame().await {
        if let ServerFrame::Goodbye(g) = frame {
            goodbye = Some(g.code);
        }
    }
    assert_eq!(goodbye, Some(GoodbyeCode::SHUTTING_DOWN));
    let ran = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("run returns once stopped")
        .unwrap();
    assert!(ran.is_ok());
}
