//! The SDK round trip: register, log in, hello with the token, rooms, messages, events,
//! history; trust by CA file and by fingerprint; typed errors.

use chat_sdk::protocol::*;
use chat_sdk::{Client, Error, Trust};

use crate::{SdkDaemon as _, TestDaemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_round_trip() {
    let daemon = TestDaemon::start();
    let anonymous = Client::connect(&daemon.options()).await.unwrap();
    assert!(anonymous.session().is_none());
    let alice_token = anonymous
        .register("alice", "correct horse")
        .await
        .unwrap()
        .token;
    let bob_token = anonymous
        .register("bob", "battery staple")
        .await
        .unwrap()
        .token;
    let err = anonymous.login("alice", "wrong horse").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::WRONG_PASSWORD));
    let relogin = anonymous.login("alice", "correct horse").await.unwrap();

    let alice = Client::connect(&chat_sdk::Options {
        token: Some(relogin.token),
        ..daemon.options()
    })
    .await
    .unwrap();
    let bob = Client::connect(&chat_sdk::Options {
        token: Some(bob_token),
        ..daemon.options()
    })
    .await
    .unwrap();
    assert_eq!(alice.session().unwrap().name, "alice");
    let _ = alice_token;

    let room = alice.create_room("general", false).await.unwrap();
    let found = bob.find_room("general").await.unwrap();
    assert_eq!((found.room, found.members), (room.room, 1));
    bob.join_room(room.room).await.unwrap();
    let conversation = ConversationId::Room(room.room);
    let ack = alice.send_text(conversation, "hello").await.unwrap();

    // Bob sees his join, then the message.
    let mut got = None;
    while let Some(event) = bob.next_event().await {
        if let Event::Message(m) = event {
            got = Some(m);
            break;
        }
    }
    let got = got.unwrap();
    assert_eq!(
        (got.seq, got.body.as_slice(), got.sender),
        (ack.seq, &b"hello"[..], alice.session().unwrap().user)
    );

    let page = bob
        .history(conversation, HistoryFrom::Latest, 10, Order::OldestFirst)
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 3); // created, joined, message
    let members = bob.members(room.room, None, 10).await.unwrap();
    assert_eq!(members.members.len(), 2);
    assert_eq!(
        bob.user_id("alice").await.unwrap(),
        alice.session().unwrap().user
    );
    assert_eq!(
        bob.user_id("nobody").await.unwrap_err().code(),
        Some(ErrorCode::UNKNOWN_USER)
    );

    // An idempotent retry.
    let op = OpId(7);
    let first = alice
        .send_with_op(conversation, op, ContentType::TEXT, b"once".to_vec(), None)
        .await
        .unwrap();
    let again = alice
        .send_with_op(conversation, op, ContentType::TEXT, b"once".to_vec(), None)
        .await
        .unwrap();
    assert_eq!((again.seq, again.duplicate), (first.seq, true));

    // A typed error from a request keeps the connection.
    let outsider = ConversationId::Room(RoomId(999));
    assert_eq!(
        alice.send_text(outsider, "x").await.unwrap_err().code(),
        Some(ErrorCode::UNKNOWN_ROOM)
    );
    assert!(alice.ping().await.is_ok());

    // Typing goes out as a datagram and arrives as an event (retried: datagrams may drop).
    let mut typed = None;
    'attempts: for _ in 0..50 {
        alice.typing(conversation, true).await.unwrap();
        while let Ok(Some(event)) =
            tokio::time::timeout(std::time::Duration::from_millis(100), bob.next_event()).await
        {
            if let Event::Typing(t) = event {
                typed = Some(t);
                break 'attempts;
            }
        }
    }
    let typed = typed.expect("a typing event arrived");
    assert_eq!(
        (typed.user, typed.active, typed.conversation),
        (alice.session().unwrap().user, true, conversation)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_by_fingerprint_and_refusals() {
    let daemon = TestDaemon::start();
    let pem = std::fs::read(&daemon.cert).unwrap();
    use rustls_pki::pem::PemObject as _;
    let der = rustls_pki::CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    let fingerprint = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(der.as_ref()))
    };
    let pinned = chat_sdk::Options {
        trust: Trust::fingerprint(&fingerprint).unwrap(),
        ..daemon.options()
    };
    assert!(Client::connect(&pinned).await.unwrap().ping().await.is_ok());

    let wrong = chat_sdk::Options {
        trust: Trust::Fingerprint([7; 32]),
        ..daemon.options()
    };
    // Refused for the certificate, not for anything else (a timeout would also be Connect).
    match Client::connect(&wrong).await {
        Err(Error::Connect(m)) => assert!(m.contains("certificate"), "{m}"),
        other => panic!(
            "expected a certificate refusal, got {:?}",
            other.map(|_| ())
        ),
    }

    let bad_token = chat_sdk::Options {
        token: Some("nonsense".into()),
        ..daemon.options()
    };
    let err = Client::connect(&bad_token).await.err().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::TOKEN_MALFORMED));
}

use rustls::pki_types as rustls_pki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_minted_with_the_sdk_is_accepted_and_a_wrong_secret_is_not() {
    let daemon = TestDaemon::start();
    let secret = std::fs::read_to_string(daemon.path().join("auth/secret")).unwrap();
    let key = chat_sdk::token::SigningKey::from_hex("local", &secret).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut options = daemon.options();
    options.token = Some(key.mint("carol", now, now + 60));
    let carol = Client::connect(&options).await.unwrap();
    assert_eq!(carol.session().unwrap().name, "carol");

    let wrong = chat_sdk::token::SigningKey::from_hex("local", &"11".repeat(32)).unwrap();
    options.token = Some(wrong.mint("carol", now, now + 60));
    let refused = Client::connect(&options).await.err().unwrap();
    assert_eq!(refused.code(), Some(ErrorCode::TOKEN_INVALID), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_reach_other_devices_through_the_sdk() {
    let daemon = TestDaemon::start();
    let anonymous = Client::connect(&daemon.options()).await.unwrap();
    let token = anonymous
        .register("alice", "correct horse")
        .await
        .unwrap()
        .token;
    let device = |token: &str| chat_sdk::Options {
        token: Some(token.to_owned()),
        ..daemon.options()
    };
    let laptop = Client::connect(&device(&token)).await.unwrap();
    let phone = Client::connect(&device(&token)).await.unwrap();
    let notes = ConversationId::Notes(laptop.session().unwrap().user);
    let sent = laptop.send_text(notes, "draft").await.unwrap();
    let edit = laptop
        .edit(notes, sent.seq, ContentType::TEXT, b"final".to_vec())
        .await
        .unwrap();
    let op = OpId(7);
    let retried = laptop
        .edit_with_op(notes, op, sent.seq, ContentType::TEXT, b"final!".to_vec())
        .await
        .unwrap();
    let again = laptop
        .edit_with_op(notes, op, sent.seq, ContentType::TEXT, b"final!".to_vec())
        .await
        .unwrap();
    assert_eq!((again.seq, again.duplicate), (retried.seq, true));
    let deleted = laptop.delete(notes, sent.seq).await.unwrap();
    assert_eq!(
        [edit.seq, retried.seq, deleted.seq],
        [Seq(2), Seq(3), Seq(4)]
    );
    let err = laptop
        .edit(notes, sent.seq, ContentType::TEXT, b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MESSAGE_DELETED));

    // The other device gets every entry once, in order, as events.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = phone.next_event().await.unwrap();
        if let Some(position) = chat_sdk::position(&event) {
            seen.push((position.1, event));
        }
    }
    assert_eq!(
        seen.iter().map(|(seq, _)| seq.0).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(matches!(&seen[1].1, Event::Edit(e) if e.body == b"final"));
    assert!(matches!(&seen[3].1, Event::Deletion(d) if d.erased == [Seq(2), Seq(3)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_mentions_and_threads_through_the_sdk() {
    let daemon = TestDaemon::start();
    let anonymous = Client::connect(&daemon.options()).await.unwrap();
    let token = anonymous
        .register("alice", "correct horse")
        .await
        .unwrap()
        .token;
    let device = |token: &str| chat_sdk::Options {
        token: Some(token.to_owned()),
        ..daemon.options()
    };
    let laptop = Client::connect(&device(&token)).await.unwrap();
    let phone = Client::connect(&device(&token)).await.unwrap();
    let me = laptop.session().unwrap().user;
    let notes = ConversationId::Notes(me);
    let root = laptop.send_text(notes, "plan").await.unwrap().seq;
    let added = laptop.react(notes, root, "👍").await.unwrap();
    let refused = laptop.react(notes, root, "👍").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::ALREADY_REACTED));
    let reply = laptop
        .send_message(chat_sdk::protocol::SendMessage {
            conversation: notes,
            op: OpId(chat_sdk::random_u64()),
            content_type: ContentType::TEXT,
            reply_to: Some(root),
            body: b"step one".to_vec(),
            mentions: vec![me],
        })
        .await
        .unwrap();
    let removed = laptop.unreact(notes, root, "👍").await.unwrap();
    assert_eq!(
        [added.seq, reply.seq, removed.seq],
        [Seq(2), Seq(3), Seq(4)]
    );
    let page = phone
        .thread(
            notes,
            root,
            HistoryFrom::After(Seq(0)),
            10,
            Order::OldestFirst,
        )
        .await
        .unwrap();
    assert!(
        matches!(&page.entries[..], [Entry::Message(m)] if m.seq == reply.seq && m.mentions == [me])
    );
    // The other device got the reactions as events, in order.
    let mut reactions = Vec::new();
    while reactions.len() < 2 {
        if let Event::Reaction(r) = phone.next_event().await.unwrap() {
            reactions.push((r.seq, r.removed));
        }
    }
    assert_eq!(reactions, [(Seq(2), false), (Seq(4), true)]);
}
