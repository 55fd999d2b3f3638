//! Edits and deletes: who may, what members see live, what history and resume show, that a
//! retry is applied once, that a restart in the middle loses nothing, and that a deleted
//! message's content is gone from the store's files after compaction.

use chat_protocol::*;

use crate::TestDaemon;
use crate::client::Client;

async fn user(daemon: &TestDaemon, name: &str, device: u64) -> (Client, UserId) {
    let (client, session) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token(name), device).await;
    (client, session.user)
}

fn edit(conversation: ConversationId, op: u64, target: u64, text: &str) -> Request {
    Request::Edit(EditMessage {
        conversation,
        op: OpId(op),
        target: Seq(target),
        content_type: ContentType::TEXT,
        body: text.as_bytes().to_vec(),
    })
}

fn delete(conversation: ConversationId, op: u64, target: u64) -> Request {
    Request::Delete(DeleteMessage {
        conversation,
        op: OpId(op),
        target: Seq(target),
    })
}

async fn acked(client: &mut Client, request: Request) -> SendAck {
    match client.ok(request).await {
        Response::Sent(ack) => ack,
        other => panic!("unexpected {other:?}"),
    }
}

/// The next event that is an edit, a deletion or a message.
async fn entry_event(client: &mut Client) -> Event {
    loop {
        let event = client.event().await;
        if matches!(
            event,
            Event::Edit(_) | Event::Deletion(_) | Event::Message(_)
        ) {
            return event;
        }
    }
}

async fn all_entries(client: &mut Client, conversation: ConversationId) -> Vec<Entry> {
    client
        .history(conversation, HistoryFrom::After(Seq(0)), 100)
        .await
        .entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_author_edits_and_deletes_and_members_see_it_live_and_in_history() {
    let daemon = TestDaemon::start();
    let (mut alice, alice_id) = user(&daemon, "alice", 1).await;
    let (mut bob, bob_id) = user(&daemon, "bob", 1).await;
    let dm = ConversationId::direct(alice_id, bob_id);

    assert_eq!(alice.send_text(dm, 1, "helo").await.seq, Seq(1));
    assert_eq!(bob.message().await.body, b"helo");

    // Only the author edits; only messages can be edited, and only existing ones.
    assert_eq!(bob.code(edit(dm, 1, 1, "x")).await, ErrorCode::NOT_AUTHOR);
    assert_eq!(
        alice.code(edit(dm, 2, 9, "x")).await,
        ErrorCode::UNKNOWN_MESSAGE
    );
    assert_eq!(
        alice.code(edit(dm, 3, 0, "x")).await,
        ErrorCode::UNKNOWN_MESSAGE
    );

    let ack = acked(&mut alice, edit(dm, 4, 1, "hello")).await;
    assert_eq!((ack.seq, ack.duplicate), (Seq(2), false));
    // A retry is the same edit, stored once.
    let again = acked(&mut alice, edit(dm, 4, 1, "hello")).await;
    assert_eq!((again.seq, again.duplicate), (Seq(2), true));
    match entry_event(&mut bob).await {
        Event::Edit(e) => assert_eq!(
            (e.seq, e.target, e.sender, e.body.as_slice()),
            (Seq(2), Seq(1), alice_id, &b"hello"[..])
        ),
        other => panic!("expected the edit, got {other:?}"),
    }
    assert_eq!(
        alice.code(edit(dm, 5, 2, "x")).await,
        ErrorCode::UNKNOWN_MESSAGE
    );
    assert_eq!(
        acked(&mut alice, edit(dm, 6, 1, "hello!")).await.seq,
        Seq(3)
    );

    // History: the message with its current content and where its versions are.
    let entries = all_entries(&mut bob, dm).await;
    assert_eq!(entries.len(), 3);
    let Entry::Message(m) = &entries[0] else {
        panic!("{:?}", entries[0]);
    };
    let edited = m.edited.as_ref().expect("edited");
    assert_eq!(m.body, b"helo");
    assert_eq!(
        (edited.versions.as_slice(), edited.body.as_slice()),
        (&[Seq(2), Seq(3)][..], &b"hello!"[..])
    );
    assert_eq!(m.current().1, b"hello!");
    assert!(matches!(&entries[1], Entry::Edit(e) if e.body == b"hello"));

    // Only the author deletes in a direct conversation.
    assert_eq!(bob.code(delete(dm, 7, 1)).await, ErrorCode::NOT_AUTHOR);
    let deleted = acked(&mut alice, delete(dm, 8, 1)).await;
    assert_eq!(deleted.seq, Seq(4));
    loop {
        match entry_event(&mut bob).await {
            Event::Deletion(d) => {
                assert_eq!(
                    (d.target, d.actor, d.erased.as_slice()),
                    (Seq(1), alice_id, &[Seq(2), Seq(3)][..])
                );
                break;
            }
            Event::Edit(e) if e.seq == Seq(3) => {}
            other => panic!("expected the deletion, got {other:?}"),
        }
    }
    let entries = all_entries(&mut bob, dm).await;
    let Entry::Message(m) = &entries[0] else {
        panic!("{:?}", entries[0]);
    };
    assert!(m.body.is_empty() && m.edited.is_none());
    assert_eq!(m.deleted.map(|d| (d.seq, d.by)), Some((Seq(4), alice_id)));
    for (entry, seq) in entries[1..3].iter().zip([2, 3]) {
        assert_eq!(
            entry,
            &Entry::Erased(Erased {
                conversation: dm,
                seq: Seq(seq),
                target: Seq(1),
                deletion: Seq(4),
                chain: *entry.chain(),
            })
        );
        // Checked by the edit's digest, kept.
        assert!(entry.chain().kept.is_some());
    }
    assert!(matches!(&entries[3], Entry::Deletion(d) if d.target == Seq(1)));
    // Nothing more can happen to it.
    assert_eq!(
        alice.code(edit(dm, 9, 1, "x")).await,
        ErrorCode::MESSAGE_DELETED
    );
    assert_eq!(
        alice.code(delete(dm, 10, 1)).await,
        ErrorCode::MESSAGE_DELETED
    );
    // The retried delete is the first one's ack, not a refusal.
    assert!(acked(&mut alice, delete(dm, 8, 1)).await.duplicate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_admins_delete_anyones_messages_members_only_their_own() {
    let daemon = TestDaemon::start();
    let (mut owner, _) = user(&daemon, "owner", 1).await;
    let (mut mia, _) = user(&daemon, "mia", 1).await;
    let (mut max, _) = user(&daemon, "max", 1).await;
    let room = owner.create_room("general", false).await;
    let c = ConversationId::Room(room);
    for member in [&mut mia, &mut max] {
        assert!(matches!(
            member.ok(Request::JoinRoom { room }).await,
            Response::Room(_)
        ));
    }
    let by_owner = owner.send_text(c, 1, "rules").await.seq;
    let by_mia = mia.send_text(c, 1, "spam").await.seq;
    // A member may not delete someone else's message, nor edit it.
    assert_eq!(
        max.code(delete(c, 1, by_mia.0)).await,
        ErrorCode::NOT_AUTHOR
    );
    assert_eq!(
        max.code(delete(c, 2, by_owner.0)).await,
        ErrorCode::NOT_AUTHOR
    );
    // The owner may delete it, but not edit it; an entry that is no message is refused.
    assert_eq!(
        owner.code(edit(c, 2, by_mia.0, "x")).await,
        ErrorCode::NOT_AUTHOR
    );
    assert!(!acked(&mut owner, delete(c, 3, by_mia.0)).await.duplicate);
    assert_eq!(
        owner.code(delete(c, 4, 1)).await,
        ErrorCode::UNKNOWN_MESSAGE
    );
    // Someone who left may not change what they wrote there.
    assert_eq!(max.ok(Request::LeaveRoom { room }).await, Response::Ok);
    assert_eq!(
        max.code(delete(c, 5, by_owner.0)).await,
        ErrorCode::NOT_MEMBER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_sent_with_their_message_and_across_a_restart_are_kept_in_order() {
    let mut daemon = TestDaemon::start();
    let (mut alice, alice_id) = user(&daemon, "alice", 1).await;
    let notes = ConversationId::Notes(alice_id);
    // A send and its edit written back to back: the edit waits for the send's commit.
    let send = Request::Send(SendMessage {
        conversation: notes,
        op: OpId(1),
        content_type: ContentType::TEXT,
        reply_to: None,
        body: b"first".to_vec(),
        mentions: Vec::new(),
    });
    alice
        .write(&ClientFrame::Request {
            id: RequestId(100),
            request: send,
        })
        .await;
    let ack = acked(&mut alice, edit(notes, 2, 1, "second")).await;
    assert_eq!(ack.seq, Seq(2));
    // Several edits in a row, each applied over the one before.
    for (op, text) in [(3u32, "third"), (4, "fourth")] {
        alice
            .write(&ClientFrame::Request {
                id: RequestId(100 + op),
                request: edit(notes, u64::from(op), 1, text),
            })
            .await;
    }
    let last = acked(&mut alice, edit(notes, 5, 1, "fifth")).await;
    assert_eq!(last.seq, Seq(5));
    alice.close().await;

    daemon.restart();
    let (mut alice, _) = user(&daemon, "alice", 2).await;
    let entries = all_entries(&mut alice, notes).await;
    let Entry::Message(m) = &entries[0] else {
        panic!("{:?}", entries[0]);
    };
    let edited = m.edited.as_ref().expect("edited");
    assert_eq!(
        (edited.versions.clone(), edited.body.as_slice()),
        (vec![Seq(2), Seq(3), Seq(4), Seq(5)], &b"fifth"[..])
    );
    // After the restart the message is read from the store again: changes go on from there.
    assert_eq!(acked(&mut alice, delete(notes, 6, 1)).await.seq, Seq(6));
    let entries = all_entries(&mut alice, notes).await;
    assert!(matches!(&entries[0], Entry::Message(m) if m.deleted.is_some()));
    assert!(
        entries[1..5]
            .iter()
            .all(|e| matches!(e, Entry::Erased(x) if x.deletion == Seq(6)))
    );

    // A device that resumes from before the changes gets them replayed in order.
    let cursors = vec![Cursor {
        conversation: notes,
        seq: Seq(0),
    }];
    let token = daemon.token("alice");
    let (mut replayed, _) = Client::resume(daemon.addr, &daemon.cert, &token, 3, cursors).await;
    let mut seqs = Vec::new();
    loop {
        match replayed.event().await {
            Event::CaughtUp { .. } => break,
            event => seqs.extend(event.entry_position().map(|(_, seq)| seq.0)),
        }
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
}

/// Opens the stopped daemon's store, as `chatd admin compact` would compact it, with no
/// recycled WAL files.
fn compact(db: &std::path::Path) {
    let wal = chatd::store::WalOptions {
        recycled: 0,
        ..Default::default()
    };
    chatd::store::Store::open_with(db, wal)
        .unwrap()
        .compact()
        .unwrap();
}

/// Every file under `dir` holding `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            found.push(entry);
        }
    }
    found
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_message_leaves_no_content_in_the_store_after_compaction() {
    // No recycled WAL files: an obsolete WAL is deleted, not kept to be written over
    // (docs/OPERATIONS.md says why this matters for erasure).
    let mut daemon = TestDaemon::start_with(|config| config.storage.recycled_wals = 0);
    let (mut alice, alice_id) = user(&daemon, "alice", 1).await;
    let notes = ConversationId::Notes(alice_id);
    let secret = format!("secret-{:016x}", chat_sdk_free_random());
    let edited = format!("edited-{:016x}", chat_sdk_free_random());
    let kept = format!("kept-{:016x}", chat_sdk_free_random());
    assert_eq!(alice.send_text(notes, 1, &secret).await.seq, Seq(1));
    assert_eq!(
        acked(&mut alice, edit(notes, 2, 1, &edited)).await.seq,
        Seq(2)
    );
    assert_eq!(alice.send_text(notes, 3, &kept).await.seq, Seq(3));
    // Flushed to SST files before the delete: the content is on disk in several places.
    daemon.stop();
    let db = daemon.dir.join("db");
    compact(&db);
    assert!(!files_holding(&db, secret.as_bytes()).is_empty());
    daemon.restart();
    let (mut alice, _) = user(&daemon, "alice", 2).await;
    assert_eq!(acked(&mut alice, delete(notes, 4, 1)).await.seq, Seq(4));
    alice.close().await;
    daemon.stop();
    compact(&db);
    for gone in [&secret, &edited] {
        assert_eq!(
            files_holding(&db, gone.as_bytes()),
            Vec::<std::path::PathBuf>::new()
        );
    }
    // What was not deleted is still there.
    assert!(!files_holding(&db, kept.as_bytes()).is_empty());
}

/// A random number for unique markers, without another dependency.
fn chat_sdk_free_random() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
