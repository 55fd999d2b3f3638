//! The `chat` CLI end to end: two users register, create and join a room, exchange messages,
//! page history, and `listen --count` sees exactly what was sent.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::{SdkDaemon as _, TestDaemon};

/// `chat ARGS` as `profile` against `daemon`, printing for people.
fn chat_text(daemon: &TestDaemon, profile: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat"));
    command
        .env("CHAT_SERVER", daemon.addr.to_string())
        .env("CHAT_CA", &daemon.cert)
        .env("CHAT_PROFILE", daemon.path().join(profile))
        .env_remove("CHAT_PASSWORD")
        .args(args);
    command
}

/// `chat --json ARGS` as `profile` against `daemon`.
fn chat(daemon: &TestDaemon, profile: &str, args: &[&str]) -> Command {
    let mut command = chat_text(daemon, profile, &["--json"]);
    command.args(args);
    command
}

/// Registers alice and bob, each in a profile of that name.
fn register_alice_and_bob(daemon: &TestDaemon) {
    run(
        daemon,
        "alice",
        &["register", "alice", "--password", "correct horse"],
    );
    run(
        daemon,
        "bob",
        &["register", "bob", "--password", "battery staple"],
    );
}

fn run(daemon: &TestDaemon, profile: &str, args: &[&str]) -> Vec<Value> {
    let output = chat(daemon, profile, args).output().unwrap();
    assert!(
        output.status.success(),
        "chat {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    lines(&output)
}

fn lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn bodies(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .filter(|v| v["type"] == "message")
        .map(|v| v["body"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn two_users_chat_through_the_cli() {
    let daemon = TestDaemon::start();
    let registered = run(
        &daemon,
        "alice",
        &["register", "alice", "--password", "correct horse"],
    );
    assert_eq!(registered[0]["type"], "registered");
    run(
        &daemon,
        "bob",
        &["register", "bob", "--password", "battery staple"],
    );
    // Login again from another profile keeps working the same way.
    run(
        &daemon,
        "bob2",
        &["login", "bob", "--password", "battery staple"],
    );
    let who = run(&daemon, "bob2", &["whoami"]);
    assert_eq!(who[0]["name"], "bob");

    run(&daemon, "alice", &["room", "create", "general"]);
    // A room command takes the room as conversations are addressed, too.
    run(&daemon, "bob", &["room", "join", "room:general"]);
    let members = run(&daemon, "bob", &["room", "members", "#general"]);
    assert_eq!(
        members
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );

    // Bob listens for three messages; Alice sends them once he is listening.
    let mut listener = chat(
        &daemon,
        "bob",
        &["listen", "#general", "--count", "3", "--timeout", "60"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(listener.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&first).unwrap()["type"],
        "listening"
    );
    let sent: Vec<String> = (1..=3).map(|n| format!("message {n}")).collect();
    let mut seqs = Vec::new();
    for text in &sent {
        let ack = run(&daemon, "alice", &["send", "#general", text]);
        seqs.push(ack[0]["seq"].as_u64().unwrap());
    }
    let status = listener.wait().unwrap();
    assert!(status.success());
    let rest: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(
        bodies(&rest),
        sent,
        "listen --count 3 saw exactly what was sent"
    );
    for (event, seq) in rest.iter().filter(|v| v["type"] == "message").zip(&seqs) {
        assert_eq!(
            (
                event["seq"].as_u64().unwrap(),
                event["sender"].as_str().unwrap()
            ),
            (*seq, "alice")
        );
        assert_eq!(event["conversation"], "#general");
        assert!(event["ts"].as_u64().is_some());
    }

    // History pages: everything, then a bounded page after a sequence number.
    let all = run(&daemon, "bob", &["history", "#general"]);
    assert_eq!(all.len(), 5); // created, joined, three messages
    assert_eq!(bodies(&all), sent);
    let tail = run(
        &daemon,
        "bob",
        &["history", "#general", "--after", "3", "--limit", "1"],
    );
    assert_eq!(bodies(&tail), ["message 2"]);

    // Direct messages and notes to self.
    run(&daemon, "alice", &["send", "@bob", "psst"]);
    assert_eq!(
        bodies(&run(&daemon, "bob", &["history", "@alice"])),
        ["psst"]
    );
    run(&daemon, "alice", &["send", "@alice", "note"]);
    assert_eq!(
        bodies(&run(&daemon, "alice", &["history", "@alice"])),
        ["note"]
    );
    run(&daemon, "bob", &["read", "#general", "4"]);
    let rooms = run(&daemon, "bob", &["rooms"]);
    assert_eq!(rooms.len(), 2);
    let general = rooms
        .iter()
        .find(|r| r["conversation"] == "#general")
        .unwrap();
    assert_eq!(
        (general["head"].as_u64(), general["read"].as_u64()),
        (Some(5), Some(4))
    );

    // Errors: non-zero exit, a message on stderr with the wire code.
    let output = chat(&daemon, "bob", &["send", "#nowhere", "x"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error: Value = serde_json::from_slice(&output.stderr).unwrap();
    assert_eq!(
        (error["code"].as_u64(), error["name"].as_str()),
        (Some(305), Some("UNKNOWN_ROOM"))
    );
    let output = chat(&daemon, "nobody", &["whoami"]).output().unwrap();
    assert!(!output.status.success());
}

#[test]
fn listen_shows_what_arrived_meanwhile_and_saves_a_cursor_only_for_what_it_printed() {
    let daemon = TestDaemon::start();
    register_alice_and_bob(&daemon);
    run(&daemon, "alice", &["room", "create", "general"]);
    run(&daemon, "bob", &["room", "join", "general"]);
    // Bob's first listen starts at the heads and saves them. `room:` needs no quoting.
    let listen = |count: &str, extra: &[&str]| {
        let mut args = vec![
            "listen",
            "room:general",
            "--count",
            count,
            "--timeout",
            "60",
        ];
        args.extend_from_slice(extra);
        run(&daemon, "bob", &args)
    };
    listen("0", &[]);
    let sent: Vec<String> = (1..=3).map(|n| format!("while away {n}")).collect();
    for text in &sent {
        run(&daemon, "alice", &["send", "#general", text]);
    }
    // One printed, so only it is behind the saved cursor: the next run shows the other two
    // (`--resume`, what listen does by default, is still accepted).
    assert_eq!(bodies(&listen("1", &[])), sent[..1]);
    assert_eq!(bodies(&listen("2", &["--resume"])), sent[1..]);
    // `--from-now` shows nothing that arrived before it and leaves the cursors alone.
    run(&daemon, "alice", &["send", "room:general", "later"]);
    let live = run(
        &daemon,
        "bob",
        &["listen", "room:general", "--from-now", "--timeout", "2"],
    );
    assert_eq!(bodies(&live), Vec::<String>::new());
    assert_eq!(bodies(&listen("1", &[])), ["later"]);
}

#[test]
fn the_cli_names_itself_gives_up_on_a_silent_daemon_and_completes() {
    let version = Command::new(env!("CARGO_BIN_EXE_chat"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(version.starts_with("chat "), "{version}");
    // Something holds the port but never answers, as a daemon that hangs or a firewall that
    // drops would: the command gives up after --timeout, naming the address.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args([
            "--server",
            &addr,
            "--timeout",
            "1",
            "--json",
            "--fingerprint",
        ])
        .arg("00".repeat(32))
        .args(["register", "nobody", "--password", "correct horse"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error: Value = serde_json::from_slice(&output.stderr).unwrap();
    let reason = error["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("daemon not reachable at {addr}")),
        "{reason}"
    );
    let completions = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(completions.status.success());
    let script = String::from_utf8_lossy(&completions.stdout);
    assert!(
        script.contains("complete -F") && script.contains("react"),
        "{script}"
    );
}

#[test]
fn edits_and_deletes_through_the_cli() {
    let daemon = TestDaemon::start();
    register_alice_and_bob(&daemon);
    let sent = run(&daemon, "alice", &["send", "@bob", "helo"]);
    let seq = sent[0]["seq"].as_u64().unwrap().to_string();
    let edited = run(&daemon, "alice", &["edit", "@bob", &seq, "hello"]);
    assert_eq!(
        (edited[0]["type"].as_str(), edited[0]["seq"].as_u64()),
        (Some("ack"), Some(2))
    );
    // Bob's history shows the current text, marked, and the edit's own entry.
    let history = run(&daemon, "bob", &["history", "@alice"]);
    assert_eq!(bodies(&history), ["hello"]);
    assert_eq!(history[0]["edits"], serde_json::json!([2]));
    assert_eq!(
        (history[1]["type"].as_str(), history[1]["target"].as_u64()),
        (Some("edit"), Some(1))
    );
    // Only the author may edit: the wire code on stderr, a failing exit.
    let output = chat(&daemon, "bob", &["edit", "@alice", &seq, "mine now"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error: Value = serde_json::from_slice(&output.stderr).unwrap();
    assert_eq!(error["name"].as_str(), Some("NOT_AUTHOR"));

    let deleted = run(&daemon, "alice", &["delete", "@bob", &seq]);
    assert_eq!(deleted[0]["seq"].as_u64(), Some(3));
    let history = run(&daemon, "bob", &["history", "@alice"]);
    assert_eq!(bodies(&history), [""]);
    assert_eq!(history[0]["deleted"].as_u64(), Some(3));
    assert_eq!(
        history
            .iter()
            .map(|v| v["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["message", "erased", "deletion"]
    );
    // Both ends find the whole history following its hash chain, the deleted message and its
    // erased edit by their kept digests, and print the same head link.
    let alice_view = run(&daemon, "alice", &["verify", "@bob"]);
    let bob_view = run(&daemon, "bob", &["verify", "@alice"]);
    assert_eq!(
        (
            alice_view[0]["entries"].as_u64(),
            alice_view[0]["erased"].as_u64(),
            alice_view[0]["head"].as_u64()
        ),
        (Some(3), Some(2), Some(3))
    );
    assert_eq!(alice_view[0]["link"].as_str().map(str::len), Some(64));
    assert_eq!(alice_view[0]["link"], bob_view[0]["link"]);
}

#[test]
fn reactions_mentions_and_threads_through_the_cli() {
    let daemon = TestDaemon::start();
    register_alice_and_bob(&daemon);
    let sent = run(&daemon, "alice", &["send", "@bob", "lunch?"]);
    let root = sent[0]["seq"].as_u64().unwrap().to_string();
    let reacted = run(&daemon, "bob", &["react", "@alice", &root, "👍"]);
    assert_eq!(
        (reacted[0]["type"].as_str(), reacted[0]["seq"].as_u64()),
        (Some("ack"), Some(2))
    );
    // A second time is refused with its wire code.
    let output = chat(&daemon, "bob", &["react", "@alice", &root, "👍"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error: Value = serde_json::from_slice(&output.stderr).unwrap();
    assert_eq!(error["name"].as_str(), Some("ALREADY_REACTED"));
    // A reply in the thread, mentioning bob (@ optional).
    let reply = run(
        &daemon,
        "alice",
        &[
            "send",
            "@bob",
            "noon?",
            "--reply-to",
            &root,
            "--mention",
            "@bob",
        ],
    );
    assert_eq!(reply[0]["seq"].as_u64(), Some(3));
    run(&daemon, "alice", &["send", "@bob", "unrelated"]);
    let history = run(&daemon, "bob", &["history", "@alice"]);
    assert_eq!(
        history[0]["reactions"],
        serde_json::json!([{ "reaction": "👍", "users": [2] }])
    );
    assert_eq!(history[1]["type"].as_str(), Some("reaction"));
    assert_eq!(history[2]["mentions"], serde_json::json!(["bob"]));
    assert_eq!(history[2]["reply_to"].as_u64(), Some(1));
    // The thread holds the reply only.
    let thread = run(&daemon, "bob", &["thread", "@alice", &root]);
    assert_eq!(bodies(&thread), ["noon?"]);
    // Taken back: the message has no reactions left.
    run(
        &daemon,
        "bob",
        &["react", "@alice", &root, "👍", "--remove"],
    );
    let history = run(
        &daemon,
        "alice",
        &["history", "@bob", "--limit", "1", "--after", "0"],
    );
    assert_eq!(history[0]["reactions"], serde_json::json!([]));
    // The plain output shows the counts.
    run(&daemon, "bob", &["react", "@alice", &root, "🎉"]);
    let output = chat_text(
        &daemon,
        "alice",
        &["history", "@bob", "--limit", "1", "--after", "0"],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("lunch? [🎉 1]"), "{text}");
}

/// `POST /v1/users/NAME/ACTION` to the daemon's admin listener, as `chatd admin` sends it.
fn admin_action(daemon: &TestDaemon, name: &str, action: &str) -> String {
    use std::io::{Read as _, Write as _};
    let addr = daemon.admin_addr();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /v1/users/{name}/{action} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[test]
fn an_operators_erasure_shows_as_such() {
    let daemon = TestDaemon::start();
    register_alice_and_bob(&daemon);
    run(&daemon, "alice", &["send", "@bob", "my last words"]);
    admin_action(&daemon, "alice", "disable");
    let erased = admin_action(&daemon, "alice", "erase");
    let body: Value = serde_json::from_str(erased.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["deleted"].as_u64(), Some(1), "{erased}");
    let output = chat_text(&daemon, "bob", &["history", "@alice"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("an operator deleted #1"), "{text}");
    assert!(!text.contains("my last words"), "{text}");
}
