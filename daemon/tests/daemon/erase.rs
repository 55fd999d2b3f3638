//! `chatd admin erase`: every message of a disabled account, in every conversation it wrote
//! in (a room it left included), becomes a tombstone deleted by the operator, with its
//! edits erased; everyone else's messages stay; the chains hold; a second run finds nothing.

use std::process::Command;

use chat_protocol::*;

use crate::TestDaemon;
use crate::admin::http_raw;
use crate::client::Client;

/// `POST /v1/users/NAME/ACTION` as `chatd admin` sends it; the status and the body.
async fn act(admin: std::net::SocketAddr, name: &str, action: &str) -> (u16, String) {
    let request = format!(
        "POST /v1/users/{name}/{action} HTTP/1.1\r\nHost: {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    http_raw(admin, &request).await
}

/// The whole log of `c` as `client` reads it.
async fn log(client: &mut Client, c: ConversationId) -> Vec<Entry> {
    client
        .history(c, HistoryFrom::After(Seq(0)), limits::MAX_PAGE)
        .await
        .entries
}

/// Sends `text` and returns its seq.
async fn say(client: &mut Client, c: ConversationId, op: u64, text: &str) -> Seq {
    client.send_text(c, op, text).await.seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_account_leaves_tombstones_everywhere_it_wrote() {
    let mut daemon = TestDaemon::start();
    let admin = daemon.admin_addr();
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let (mut bob, b) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    let dm = ConversationId::direct(a.user, b.user);
    let room = bob.create_room("club", false).await;
    let club = ConversationId::Room(room);
    assert!(matches!(
        alice.ok(Request::JoinRoom { room }).await,
        Response::Room(_)
    ));
    let hers = [
        say(&mut alice, dm, 1, "hi bob").await,
        say(&mut alice, dm, 2, "are you there").await,
        say(&mut alice, club, 3, "hello club").await,
        say(&mut alice, club, 4, "bye club").await,
    ];
    let his = [
        say(&mut bob, dm, 1, "yes").await,
        say(&mut bob, club, 2, "welcome").await,
    ];
    // An edit, which the erasure erases with its message; a reaction of bob's, which goes.
    let edit = match alice
        .ok(Request::Edit(EditMessage {
            conversation: club,
            op: OpId(5),
            target: hers[2],
            content_type: ContentType::TEXT,
            body: b"hello, club".to_vec(),
        }))
        .await
    {
        Response::Sent(ack) => ack.seq,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        bob.ok(Request::React(ReactMessage {
            conversation: dm,
            op: OpId(3),
            target: hers[0],
            reaction: "👋".into(),
            remove: false,
        }))
        .await,
        Response::Sent(_)
    ));
    say(&mut alice, ConversationId::Notes(a.user), 6, "a note").await;
    // She leaves the room: it is no longer in her conversation list.
    assert!(matches!(
        alice.ok(Request::LeaveRoom { room }).await,
        Response::Ok
    ));
    alice.close().await;

    // Only a disabled account is erased.
    let (status, body) = act(admin, "alice", "erase").await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = act(admin, "alice", "disable").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = act(admin, "alice", "erase").await;
    assert_eq!(status, 200, "{body}");
    let done: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            done["conversations"].as_u64(),
            done["deleted"].as_u64(),
            done["already_deleted"].as_u64(),
            done["not_deleted"].as_u64(),
            done["conversations_unfinished"].as_u64(),
        ),
        (Some(3), Some(5), Some(0), Some(0), Some(0)),
        "{body}"
    );

    // Bob sees her messages as tombstones deleted by the operator, live and in history;
    // his own are untouched.
    let mut deletions = 0;
    while deletions < 4 {
        // What came before (her messages, her edit, her leaving) is passed over.
        if let Event::Deletion(d) = bob.event().await {
            assert_eq!(d.actor, UserId(0));
            deletions += 1;
        }
    }
    for c in [dm, club] {
        for entry in log(&mut bob, c).await {
            match entry {
                Entry::Message(m) if m.sender == a.user => {
                    let deleted = m.deleted.expect("her message is deleted");
                    assert_eq!(deleted.by, UserId(0));
                    assert!(m.body.is_empty() && m.reactions.is_empty() && m.edited.is_none());
                    assert!(m.chain.kept.is_some());
                }
                Entry::Message(m) => {
                    assert!(his.contains(&m.seq) && m.deleted.is_none(), "{m:?}");
                }
                Entry::Edit(e) => panic!("an edit of hers survived: {e:?}"),
                Entry::Erased(e) => assert_eq!(e.seq, edit),
                _ => {}
            }
        }
    }

    // Counted, as every admin action is.
    let metrics = http_raw(
        admin,
        &format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"),
    )
    .await
    .1;
    assert!(
        metrics.contains("chatd_admin_actions_total{action=\"erase\"} 1"),
        "{metrics}"
    );
    // A second run finds nothing left to delete.
    let (status, body) = act(admin, "alice", "erase").await;
    assert_eq!(status, 200, "{body}");
    let again: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(again["deleted"].as_u64(), Some(0), "{body}");
    bob.close().await;
    daemon.stop();

    // Her note too, and every chain holds.
    let store = chatd::store::Store::open_read_only(&daemon.dir.join("db")).unwrap();
    let notes = ConversationId::Notes(a.user);
    match store.entry(notes, Seq(1)).unwrap() {
        Some(Entry::Message(m)) => assert_eq!(m.deleted.map(|d| d.by), Some(UserId(0))),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.messages_of(club, a.user).unwrap(), []);
    drop(store);
    let verified = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["verify", "--data-dir"])
        .arg(&daemon.dir)
        .env_remove("CHATD_CONFIG")
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
}
