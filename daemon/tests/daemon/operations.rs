//! What an operator does to a running `chatd` binary: SIGHUP reloads (certificate, token
//! keys, a broken file), the start-up guards (data dir lock, port), both runtimes,
//! `check-config`, and log output fit for the journal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chat_protocol::*;
use chatd::config::RuntimeChoice;

use crate::TestDaemon;
use crate::client::Client;

/// A `chatd` process with its configuration file and its standard error in a file.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    /// The admin listener (a free TCP port).
    pub(crate) admin: SocketAddr,
    pub(crate) dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Proc {
    /// Starts `chatd run --config FILE` where FILE holds `extra` below the listen address
    /// (a free port unless `addr`), two shards and `dir` as the data dir.
    pub(crate) fn start(
        dir: &Path,
        extra: &str,
        addr: Option<SocketAddr>,
        env: &[(&str, &str)],
    ) -> Proc {
        let addr = addr.unwrap_or_else(|| {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap()
        });
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("chatd.toml");
        write_config(&config, addr, dir, extra);
        let log = dir.join(format!("stderr-{}.log", addr.port()));
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .env("CHATD_ADMIN_LISTEN", admin.to_string())
            .env("CHATD_WEB_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc {
            child,
            addr,
            admin,
            dir: dir.to_owned(),
            config,
            log,
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle` `count` times.
    pub(crate) async fn wait_log(&mut self, needle: &str, count: usize) {
        for _ in 0..600 {
            if self.log_text().matches(needle).count() >= count {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // It may have logged it just before it exited, after the read above.
                let log = self.log_text();
                assert!(
                    log.matches(needle).count() >= count,
                    "chatd exited ({status}) before logging {needle:?}:\n{log}"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {needle:?} x{count} in the log:\n{}", self.log_text());
    }

    pub(crate) fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Waits until the daemon is up (and has generated its local token secret, which
    /// [`Proc::token`] must only read).
    pub(crate) async fn ready(&mut self) {
        self.wait_log("chatd is listening", 1).await;
    }

    /// A token from the daemon's generated local secret (after [`Proc::ready`]).
    pub(crate) fn token(&self, user: &str) -> String {
        let keys =
            chatd::token::Keys::load(&chatd::config::AuthConfig::default(), &self.dir).unwrap();
        let now = chatd::unix_now();
        keys.mint(user, now, now + 3600)
    }

    /// A session of `user` (device 1), with a token from [`Proc::token`] and the daemon's
    /// generated development certificate.
    pub(crate) async fn login(
        &self,
        user: &str,
    ) -> (crate::client::Client, chat_protocol::Session) {
        let cert = self.dir.join("tls/cert.pem");
        crate::client::Client::login(self.addr, &cert, &self.token(user), 1).await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(path: &Path, addr: SocketAddr, dir: &Path, extra: &str) {
    let text = format!(
        "listen = \"{addr}\"\nshards = 2\nshutdown_grace_secs = 5\ndata_dir = {dir:?}\n{extra}\n"
    );
    // Written whole and renamed: a reload never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits for a process that must exit by itself; returns its exit code.
pub(crate) async fn exit_code(child: &mut Child) -> i32 {
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chatd did not exit");
}

/// A self-signed certificate for "localhost": (certificate PEM, key PEM).
fn certificate() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

/// Replaces the daemon's certificate and key files as a renewal tool does (write, rename).
fn install_certificate(tls: &Path, pair: &(String, String)) {
    for (name, text) in [("cert.pem", &pair.0), ("key.pem", &pair.1)] {
        let tmp = tls.join(format!("{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, tls.join(name)).unwrap();
    }
}

/// A QUIC handshake with the daemon when only `trusted` is trusted: why it failed, if it did.
async fn handshake(addr: SocketAddr, trusted: &Path) -> Result<(), String> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(crate::client::client_config(trusted));
    let connecting = endpoint.connect(addr, "localhost").unwrap();
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// Whether a QUIC handshake succeeds when only `trusted` is trusted.
async fn handshake_ok(addr: SocketAddr, trusted: &Path) -> bool {
    handshake(addr, trusted).await.is_ok()
}

/// Asserts that a handshake trusting only `trusted` fails on the daemon's certificate (not on
/// anything else, such as a daemon that stopped answering).
async fn assert_certificate_refused(addr: SocketAddr, trusted: &Path, context: &str) {
    match handshake(addr, trusted).await {
        Ok(()) => panic!("{context}: the handshake succeeded"),
        Err(e) => assert!(
            e.contains("certificate"),
            "{context}: failed otherwise: {e}"
        ),
    }
}

/// Connects trusting `cert` and says hello with `token`, retrying until the daemon is up.
pub(crate) async fn login(addr: SocketAddr, cert: &Path, token: &str, device: u64) -> Client {
    for _ in 0..400 {
        if cert.exists() && handshake_ok(addr, cert).await {
            let mut client = Client::connect(addr, cert).await;
            let ok = client.hello(Some(token), device).await;
            assert!(ok.session.is_some());
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the daemon did not come up on {addr}");
}

/// Sends numbered messages into `room` until `stop`, counting acks in `acks`; returns (seq,
/// body) of every ack. Any error (a dropped connection, a refused send) fails the test.
async fn keep_sending(
    mut client: Client,
    room: ConversationId,
    who: &'static str,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
) -> (Client, Vec<(Seq, String)>) {
    let mut acked = Vec::new();
    let mut op = 1;
    while !stop.load(Ordering::Acquire) {
        let body = format!("{who}-{op}");
        let ack = client.send_text(room, op, &body).await;
        assert!(!ack.duplicate);
        acked.push((ack.seq, body));
        acks.fetch_add(1, Ordering::AcqRel);
        op += 1;
        // Stay under the default send rate (20/s, burst 40): a refusal would fail the test.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    (client, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_under_load_without_dropping_anyone() {
    let temp = tempfile::tempdir().unwrap();
    let tls = temp.path().join("tls-files");
    std::fs::create_dir_all(&tls).unwrap();
    let pairs = [certificate(), certificate(), certificate(), certificate()];
    install_certificate(&tls, &pairs[0]);
    let trust: Vec<PathBuf> = pairs
        .iter()
        .enumerate()
        .map(|(i, pair)| {
            let path = temp.path().join(format!("trust-{i}.pem"));
            std::fs::write(&path, &pair.0).unwrap();
            path
        })
        .collect();
    let extra = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        tls.join("cert.pem"),
        tls.join("key.pem")
    );
    let mut proc = Proc::start(&temp.path().join("data"), &extra, None, &[]);
    proc.ready().await;
    let addr = proc.addr;
    let mut alice = login(addr, &trust[0], &proc.token("alice"), 1).await;
    let mut bob = login(addr, &trust[0], &proc.token("bob"), 1).await;
    let room = alice.create_room("ops", false).await;
    bob.ok(Request::JoinRoom { room }).await;
    let room = ConversationId::Room(room);

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let senders = [
        tokio::spawn(keep_sending(
            alice,
            room,
            "alice",
            Arc::clone(&stop),
            Arc::clone(&acks),
        )),
        tokio::spawn(keep_sending(
            bob,
            room,
            "bob",
            Arc::clone(&stop),
            Arc::clone(&acks),
        )),
    ];
    // Each reload happens while both senders are acked again and again.
    let progress = |acks: Arc<AtomicUsize>| async move {
        let from = acks.load(Ordering::Acquire);
        for _ in 0..1200 {
            if acks.load(Ordering::Acquire) >= from + 6 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the senders stopped getting acks");
    };
    for (round, pair) in pairs.iter().enumerate().skip(1) {
        progress(Arc::clone(&acks)).await;
        install_certificate(&tls, pair);
        proc.signal("HUP");
        proc.wait_log("reloaded: new connections get this certificate", round)
            .await;
        assert!(
            handshake_ok(addr, &trust[round]).await,
            "round {round}: a new connection does not get the new certificate"
        );
        assert_certificate_refused(
            addr,
            &trust[round - 1],
            &format!("round {round}: the old certificate"),
        )
        .await;
        let mut carol = login(addr, &trust[round], &proc.token("carol"), round as u64).await;
        let _ = carol.conversations().await;
    }
    progress(Arc::clone(&acks)).await;
    stop.store(true, Ordering::Release);
    let mut acked = Vec::new();
    let mut clients = Vec::new();
    for sender in senders {
        let (client, mine) = sender.await.unwrap();
        acked.extend(mine);
        clients.push(client);
    }
    // The connections made before the first reload still work, and every acknowledged
    // message is in the room's history at its seq.
    let mut reader = clients.pop().unwrap();
    let mut stored = std::collections::BTreeMap::new();
    let mut from = HistoryFrom::After(Seq(0));
    loop {
        let page = reader.history(room, from, 100).await;
        for entry in &page.entries {
            if let Entry::Message(message) = entry {
                stored.insert(
                    message.seq,
                    String::from_utf8(message.body.clone()).unwrap(),
                );
            }
        }
        match page.entries.last() {
            Some(last) if page.more => from = HistoryFrom::After(last.seq()),
            _ => break,
        }
    }
    for (seq, body) in &acked {
        assert_eq!(stored.get(seq), Some(body), "acked message at seq {seq:?}");
    }
    assert!(!proc.log_text().contains("reload failed"));

    // A key that does not match its certificate (a renewal caught between its two renames)
    // is refused; the last good certificate stays.
    let last = pairs.len() - 1;
    install_certificate(&tls, &(pairs[0].0.clone(), pairs[1].1.clone()));
    proc.signal("HUP");
    proc.wait_log("reload failed", 1).await;
    assert!(handshake_ok(addr, &trust[last]).await);
    let _ = reader.conversations().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_token_keys_and_a_broken_one_changes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let old = [0x11u8; 32];
    let new = [0x22u8; 32];
    let key_file = temp.path().join("new-key");
    std::fs::write(&key_file, format!("{}\n", hex(&new))).unwrap();
    let keys_old = format!("[[auth.keys]]\nid = \"old\"\nsecret = \"{}\"\n", hex(&old));
    let mut proc = Proc::start(&dir, &keys_old, None, &[]);
    let cert = dir.join("tls/cert.pem");
    let mint = |id: &str, secret: &[u8]| {
        let now = chatd::unix_now();
        chatd::token::Keys::from_secrets(&[(id, secret)]).mint("dave", now, now + 600)
    };
    let _ = login(proc.addr, &cert, &mint("old", &old), 1).await;
    assert_eq!(
        try_hello(proc.addr, &cert, &mint("new", &new)).await,
        Some(ErrorCode::TOKEN_UNKNOWN_KEY)
    );

    // Rotate: the new key (from a file) signs, the old one still verifies.
    let rotated = format!(
        "[[auth.keys]]\nid = \"new\"\nsecret = {{ file = {key_file:?} }}\n\
         [[auth.keys]]\nid = \"old\"\nsecret = \"{}\"\n",
        hex(&old)
    );
    write_config(&proc.config, proc.addr, &dir, &rotated);
    proc.signal("HUP");
    proc.wait_log("reloaded:", 1).await;
    assert_eq!(try_hello(proc.addr, &cert, &mint("new", &new)).await, None);
    assert_eq!(try_hello(proc.addr, &cert, &mint("old", &old)).await, None);

    // A file that does not parse, then a key file that is gone: each reload fails, says
    // why, and the daemon runs on as before.
    std::fs::write(&proc.config, "listen = [").unwrap();
    proc.signal("HUP");
    proc.wait_log("reload failed", 1).await;
    std::fs::remove_file(&key_file).unwrap();
    write_config(&proc.config, proc.addr, &dir, &rotated);
    proc.signal("HUP");
    proc.wait_log("reload failed", 2).await;
    assert!(proc.log_text().contains("new-key"), "{}", proc.log_text());
    assert_eq!(try_hello(proc.addr, &cert, &mint("new", &new)).await, None);

    // A field that only a restart applies is named, and kept.
    let restart = format!("{rotated}\n[limits]\nmax_in_flight = 8\n");
    std::fs::write(&key_file, format!("{}\n", hex(&new))).unwrap();
    write_config(&proc.config, proc.addr, &dir, &restart);
    proc.signal("HUP");
    proc.wait_log("reloaded:", 2).await;
    proc.wait_log("limits.max_in_flight", 1).await;
    let mut client = Client::connect(proc.addr, &cert).await;
    let ok = client.hello(Some(&mint("new", &new)), 2).await;
    assert_eq!(
        ok.limits.max_in_flight, 64,
        "a promise to clients changed at runtime"
    );
}

/// Says hello with `token`: `None` when it authenticates, else the error code.
pub(crate) async fn try_hello(addr: SocketAddr, cert: &Path, token: &str) -> Option<ErrorCode> {
    let mut client = Client::connect(addr, cert).await;
    if client.hello(Some(token), 9).await.session.is_some() {
        return None;
    }
    loop {
        if let Some(ServerFrame::Error { id: None, error }) = client.other.pop_front() {
            return Some(error.code);
        }
        match client.next_frame().await.expect("stream ended") {
            ServerFrame::Error { id: None, error } => return Some(error.code),
            other => client.other.push_back(other),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_data_dir_exits_75_naming_the_holder() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let mut first = Proc::start(&dir, "", None, &[]);
    first.ready().await;
    let _ = login(
        first.addr,
        &dir.join("tls/cert.pem"),
        &first.token("erin"),
        1,
    )
    .await;
    let mut second = Proc::start(&dir, "", None, &[]);
    assert_eq!(exit_code(&mut second.child).await, 75);
    let log = second.log_text();
    assert!(
        log.contains(&format!(
            "in use by another chatd (pid {})",
            first.child.id()
        )),
        "{log}"
    );
    // The first one is untouched.
    let _ = login(
        first.addr,
        &dir.join("tls/cert.pem"),
        &first.token("erin"),
        2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_port_fails_instead_of_splitting_the_traffic() {
    let temp = tempfile::tempdir().unwrap();
    let mut first = Proc::start(&temp.path().join("one"), "", None, &[]);
    first.ready().await;
    let cert = temp.path().join("one/tls/cert.pem");
    let _ = login(first.addr, &cert, &first.token("frank"), 1).await;
    let mut second = Proc::start(&temp.path().join("two"), "", Some(first.addr), &[]);
    assert_eq!(exit_code(&mut second.child).await, 69);
    let log = second.log_text();
    assert!(
        log.contains(&format!(
            "UDP port {} is already bound by another process",
            first.addr.port()
        )),
        "{log}"
    );
    // Every new connection still reaches the first daemon (none lands on a dead socket).
    for device in 2..12 {
        let _ = login(first.addr, &cert, &first.token("frank"), device).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_runtimes_serve_clients() {
    // Where the host refuses io_uring (a seccomp filter), asking for it must fail the start
    // with a runtime error instead; this machine's CI has it, and runs both.
    let temp = tempfile::tempdir().unwrap();
    let mut config = crate::test_config(temp.path());
    config.runtime = RuntimeChoice::IoUring;
    let io_uring = match chatd::Daemon::start(config) {
        Ok(daemon) => {
            daemon.stop_fast_and_close();
            true
        }
        Err(chatd::server::Error::Runtime(reason)) => {
            assert!(reason.contains("io_uring cannot be set up"), "{reason}");
            false
        }
        Err(e) => panic!("{e}"),
    };
    let runtimes: &[(RuntimeChoice, &str)] = if io_uring {
        &[
            (RuntimeChoice::IoUring, "io-uring"),
            (RuntimeChoice::Epoll, "epoll"),
            (RuntimeChoice::Auto, "io-uring"),
        ]
    } else {
        &[
            (RuntimeChoice::Epoll, "epoll"),
            (RuntimeChoice::Auto, "epoll"),
        ]
    };
    for &(runtime, expected) in runtimes {
        let daemon = TestDaemon::start_with(|c| c.runtime = runtime);
        assert_eq!(daemon.runtime(), expected, "{runtime:?}");
        let (mut grace, _) =
            Client::login(daemon.addr, &daemon.cert, &daemon.token("grace"), 1).await;
        let room = ConversationId::Room(grace.create_room("rt", false).await);
        let ack = grace.send_text(room, 1, "hello").await;
        let page = grace.history(room, HistoryFrom::After(Seq(0)), 10).await;
        // The room's creation, then the message.
        let seqs: Vec<Seq> = page.entries.iter().map(Entry::seq).collect();
        assert_eq!(seqs, [Seq(1), ack.seq], "{runtime:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_colour_into_a_pipe_and_json_lines_parse() {
    for (format, check) in [
        (
            "text",
            Box::new(|line: &str| assert!(!line.contains('\u{1b}'), "{line}")) as Box<dyn Fn(&str)>,
        ),
        (
            "json",
            Box::new(|line: &str| {
                let value: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(
                    value.get("level").is_some() && value.get("fields").is_some(),
                    "{line}"
                );
            }),
        ),
    ] {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("data");
        let mut proc = Proc::start(&dir, &format!("log_format = \"{format}\""), None, &[]);
        proc.ready().await;
        let text = proc.log_text();
        for line in text.lines() {
            check(line);
        }
        // The line `ready` waited for is itself in the format (JSON: its message field).
        let listening = text
            .lines()
            .find(|l| l.contains("chatd is listening"))
            .unwrap();
        if format == "json" {
            let value: serde_json::Value = serde_json::from_str(listening).unwrap();
            assert_eq!(
                value["fields"]["message"], "chatd is listening",
                "{listening}"
            );
        } else {
            assert!(listening.contains(" INFO "), "{listening}");
        }
    }
}

#[test]
fn check_config_validates_without_starting() {
    let temp = tempfile::tempdir().unwrap();
    let good = temp.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:4999\"\n[limits]\nmax_body = 100\n",
    )
    .unwrap();
    let bad = temp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[limits]\nmax_body = 0\n[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    )
    .unwrap();
    let run = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(["check-config", "--data-dir"])
            .arg(temp.path().join("data"))
            .arg("--config")
            .arg(file)
            .output()
            .unwrap()
    };
    let ok = run(&good);
    assert_eq!(ok.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("configuration OK"));
    assert!(
        !temp.path().join("data").exists(),
        "check-config created the data dir"
    );
    let refused = run(&bad);
    assert_eq!(refused.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("limits.max_body"));
    let cert_missing = temp.path().join("cert.toml");
    std::fs::write(
        &cert_missing,
        "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    )
    .unwrap();
    let refused = run(&cert_missing);
    assert_eq!(refused.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("/nonexistent/cert.pem"));
    // A key that is not the certificate's.
    let (cert, _) = certificate();
    let (_, other_key) = certificate();
    std::fs::write(temp.path().join("cert.pem"), cert).unwrap();
    std::fs::write(temp.path().join("key.pem"), other_key).unwrap();
    let mismatched = temp.path().join("mismatched.toml");
    std::fs::write(
        &mismatched,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            temp.path().join("cert.pem"),
            temp.path().join("key.pem")
        ),
    )
    .unwrap();
    let refused = run(&mismatched);
    assert_eq!(refused.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("tls:") && stderr.to_lowercase().contains("key"),
        "{stderr}"
    );
}
