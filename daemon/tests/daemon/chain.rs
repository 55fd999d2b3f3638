//! The hash chains a daemon keeps: `chatd verify` finds every chain whole after sends,
//! edits, reactions, room changes and deletes, and names the conversation and the first
//! entry when a stored entry was altered or dropped behind the daemon's back.

use std::process::{Command, Output};

use chat_protocol::*;

use crate::TestDaemon;
use crate::client::Client;

fn verify(daemon: &TestDaemon) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["verify", "--data-dir"])
        .arg(&daemon.dir)
        .env_remove("CHATD_CONFIG")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// The stopped daemon's RocksDB, every column family open.
fn raw_db(daemon: &TestDaemon) -> rocksdb::DB {
    let path = daemon.dir.join("db");
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
    rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, names).unwrap()
}

/// Rewrites message `seq` of `c` in the store with another body (its link left as it was).
fn alter_body(db: &rocksdb::DB, c: ConversationId, seq: Seq) {
    let log = db.cf_handle("log").unwrap();
    let key = chatd::store::keys::log(c, seq);
    let stored = db.get_cf(log, key).unwrap().unwrap();
    let Entry::Message(mut m) = Entry::decode_from(&stored).unwrap() else {
        panic!("{c} entry {seq:?} is a message");
    };
    m.body = b"TWO".to_vec();
    let mut altered = Vec::new();
    Entry::Message(m).encode_to(&mut altered);
    db.put_cf(log, key, altered).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_whole_chains_and_names_an_altered_or_dropped_entry() {
    let mut daemon = TestDaemon::start();
    let (mut alice, session) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let (mut bob, bob_session) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    let dm = ConversationId::direct(session.user, bob_session.user);
    let room = alice.create_room("chained", false).await;
    let c = ConversationId::Room(room);
    assert!(matches!(
        bob.ok(Request::JoinRoom { room }).await,
        Response::Room(_)
    ));
    for (op, text) in [(1, "one"), (2, "two"), (3, "three")] {
        alice.send_text(dm, op, text).await;
        bob.send_text(c, op, text).await;
    }
    let changes = [
        Request::Edit(EditMessage {
            conversation: dm,
            op: OpId(10),
            target: Seq(1),
            content_type: ContentType::TEXT,
            body: b"uno".to_vec(),
        }),
        Request::React(ReactMessage {
            conversation: dm,
            op: OpId(11),
            target: Seq(2),
            reaction: "👍".into(),
            remove: false,
        }),
        Request::Delete(DeleteMessage {
            conversation: dm,
            op: OpId(12),
            target: Seq(1),
        }),
    ];
    for change in changes {
        assert!(matches!(alice.ok(change).await, Response::Sent(_)));
    }
    let notes = ConversationId::Notes(session.user);
    for op in 20..23 {
        alice.send_text(notes, op, "a note").await;
    }
    alice.close().await;
    bob.close().await;
    daemon.stop();

    let whole = verify(&daemon);
    assert!(whole.status.success(), "{}", text(&whole));
    // Three conversations: the direct one (3 messages, an edit, a reaction, a deletion), the
    // room (created, joined, 3 messages) and alice's notes (3). The deleted message and its
    // erased edit are checked by their kept digests.
    assert!(
        text(&whole).starts_with("3 conversations, 14 entries checked (2 erased"),
        "{}",
        text(&whole)
    );

    // A message's content altered in place: its digest no longer matches.
    let db = raw_db(&daemon);
    let log = db.cf_handle("log").unwrap();
    alter_body(&db, c, Seq(4));
    // An entry dropped: the next one does not follow.
    db.delete_cf(log, chatd::store::keys::log(dm, Seq(3)))
        .unwrap();
    // The last entry dropped: its link remains.
    db.delete_cf(log, chatd::store::keys::log(notes, Seq(3)))
        .unwrap();
    drop(db);
    let broken = verify(&daemon);
    assert_eq!(broken.status.code(), Some(65), "{}", text(&broken));
    let report = text(&broken);
    assert!(
        report.contains(&format!(
            "broken: {c} entry 4: the entry does not match its digest"
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!("broken: {dm} entry 4: expected entry 3, found 4")),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "broken: {notes} entry 3: missing from the log (its link remains)"
        )),
        "{report}"
    );
}

/// Checks `entries` (in log order, from entry `after + 1`) from the link `prior`: each carries
/// a link that follows from the one before it.
fn follows(prior: chain::Hash, after: u64, entries: &[Entry]) -> Result<chain::Hash, String> {
    let mut verifier = chain::Verifier::after(after, prior);
    for entry in entries {
        verifier
            .check_entry(entry)
            .map_err(|e| format!("{:?}: {e}", entry.seq()))?;
    }
    Ok(verifier.tip().1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_get_every_link_and_find_an_altered_entry() {
    let mut daemon = TestDaemon::start();
    let (mut alice, session) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let (mut bob, bob_session) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    let dm = ConversationId::direct(session.user, bob_session.user);
    // Alice's acks carry each entry's link and digest: the digest of what she sent.
    let mut acked = Vec::new();
    for (op, text) in [(1, "one"), (2, "two"), (3, "three")] {
        let ack = alice.send_text(dm, op, text).await;
        let appended = ack
            .chain
            .expect("a new entry's ack carries its place in the chain");
        let sent = Message {
            conversation: dm,
            seq: ack.seq,
            ts: ack.ts,
            sender: session.user,
            op: OpId(op),
            content_type: ContentType::TEXT,
            reply_to: None,
            body: text.as_bytes().to_vec(),
            edited: None,
            deleted: None,
            mentions: Vec::new(),
            reactions: Vec::new(),
            chain: Chain::default(),
        };
        assert_eq!(appended.digest, chain::message_digest(&sent));
        acked.push(appended);
    }
    let mut tip = chain::genesis(dm);
    for appended in &acked {
        tip = chain::link(&tip, &appended.digest);
        assert_eq!(tip, appended.link);
    }
    // Bob is pushed the same entries with the same links.
    let mut pushed = Vec::new();
    for _ in 0..3 {
        pushed.push(Entry::Message(bob.message().await));
    }
    assert_eq!(follows(chain::genesis(dm), 0, &pushed), Ok(acked[2].link));
    // An edit and a delete: the deleted message and its erased edit keep their digests.
    for change in [
        Request::Edit(EditMessage {
            conversation: dm,
            op: OpId(4),
            target: Seq(1),
            content_type: ContentType::TEXT,
            body: b"uno".to_vec(),
        }),
        Request::Delete(DeleteMessage {
            conversation: dm,
            op: OpId(5),
            target: Seq(1),
        }),
    ] {
        assert!(matches!(alice.ok(change).await, Response::Sent(_)));
    }
    let whole = alice.history(dm, HistoryFrom::After(Seq(0)), 100).await;
    assert_eq!(whole.prior, Some(chain::genesis(dm)));
    assert_eq!(whole.entries.len(), 5);
    assert!(
        matches!(&whole.entries[0], Entry::Message(m) if m.deleted.is_some() && m.chain.kept.is_some())
    );
    assert!(matches!(&whole.entries[3], Entry::Erased(e) if e.chain.kept.is_some()));
    let head = follows(chain::genesis(dm), 0, &whole.entries).unwrap();
    // A page from the middle is checked from its prior link.
    let middle = alice.history(dm, HistoryFrom::After(Seq(2)), 2).await;
    assert_eq!(middle.prior, Some(acked[1].link));
    assert!(follows(middle.prior.unwrap(), 2, &middle.entries).is_ok());
    // Bob resumes after entry 3: the replay carries the links on from there.
    bob.close().await;
    let cursors = vec![Cursor {
        conversation: dm,
        seq: Seq(3),
    }];
    let (mut bob, _) =
        Client::resume(daemon.addr, &daemon.cert, &daemon.token("bob"), 1, cursors).await;
    let mut replayed = Vec::new();
    while replayed.len() < 2 {
        if let Ok(entry) = bob.event().await.into_entry() {
            replayed.push(entry);
        }
    }
    assert_eq!(follows(acked[2].link, 3, &replayed), Ok(head));
    alice.close().await;
    bob.close().await;

    // Across a restart the links are the same.
    daemon.restart();
    let (mut alice, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let again = alice.history(dm, HistoryFrom::After(Seq(0)), 100).await;
    assert_eq!(again, whole);
    alice.close().await;

    // A body altered in the store behind the daemon's back, its link left as it was: the
    // client's check fails at that entry.
    daemon.stop();
    alter_body(&raw_db(&daemon), dm, Seq(2));
    daemon.restart();
    let (mut alice, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let tampered = alice.history(dm, HistoryFrom::After(Seq(0)), 100).await;
    assert_eq!(
        follows(chain::genesis(dm), 0, &tampered.entries),
        Err(format!("{:?}: {}", Seq(2), chain::ChainError::Link))
    );
    alice.close().await;
}
