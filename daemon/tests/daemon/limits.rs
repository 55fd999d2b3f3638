//! Limits and backpressure: a flooding sender is rate-limited while others chat on; a client
//! that stops reading is told it lags, stops receiving live events, and catches up.

use chat_protocol::*;

use crate::TestDaemon;
use crate::client::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_rate_limited_and_others_are_not() {
    let daemon = TestDaemon::start_with(|c| {
        c.limits.send_rate = 1;
        c.limits.send_burst = 5;
    });
    let (mut flood, f) = Client::login(daemon.addr, &daemon.cert, &daemon.token("flood"), 1).await;
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let (mut bob, b) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    let notes = ConversationId::Notes(f.user);
    let (mut sent, mut limited) = (0, Vec::new());
    for op in 0..30 {
        let message = SendMessage {
            conversation: notes,
            op: OpId(op),
            content_type: ContentType::TEXT,
            reply_to: None,
            body: b"spam".to_vec(),
        };
        match flood.request(Request::Send(message)).await {
            Ok(Response::Sent(_)) => sent += 1,
            Err(e) if e.code == ErrorCode::RATE_LIMITED => limited.push(e.retry_after_ms),
            other => panic!("{other:?}"),
        }
    }
    // The burst, plus at most what refilled meanwhile at 1 per second.
    assert!((5..30).contains(&sent), "{sent} sends passed");
    assert!(!limited.is_empty());
    assert!(
        limited
            .iter()
            .all(|r| matches!(r, Some(ms) if (1..=1_000).contains(ms))),
        "{limited:?}"
    );
    // Others chat on, unaffected.
    let dm = ConversationId::direct(a.user, b.user);
    for op in 1..=3 {
        alice.send_text(dm, op, "hello").await;
    }
    for seq in 1..=3 {
        assert_eq!(bob.message().await.seq, Seq(seq));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_lags_and_catches_up() {
    let daemon = TestDaemon::start_with(|c| {
        c.limits.outgoing_queue = 16;
        c.limits.send_rate = 100_000;
        c.limits.send_burst = 100_000;
    });
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    // Bob's stream window is tiny: once it is full, what the daemon sends him queues up.
    let mut bob = Client::connect_with(daemon.addr, &daemon.cert, Some(2_048)).await;
    let b = bob
        .hello(Some(&daemon.token("bob")), 1)
        .await
        .session
        .unwrap();
    let dm = ConversationId::direct(a.user, b.user);
    let total = 200u64;
    let body = "x".repeat(200);
    for op in 1..=total {
        alice.send_text(dm, op, &body).await;
    }
    // Bob now reads: some messages in order, then Lagged, then no more live messages.
    let mut seqs = Vec::new();
    loop {
        match bob.event().await {
            Event::Message(m) => seqs.push(m.seq.0),
            Event::Lagged => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        !seqs.is_empty() && (seqs.len() as u64) < total,
        "got {} before Lagged",
        seqs.len()
    );
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "in order, no gap before the lag"
    );
    // The daemon queued at most `outgoing_queue` events for him, however many were sent.
    let peak = daemon.event_queue_peak();
    assert!(
        (1..=16).contains(&peak),
        "peak event queue {peak}, bound 16"
    );
    alice.send_text(dm, total + 1, "after the lag").await;
    // He pages the rest through history, then syncs; the live stream resumes.
    let mut last = *seqs.last().unwrap();
    loop {
        let page = bob.history(dm, HistoryFrom::After(Seq(last)), 100).await;
        let Some(tail) = page.entries.last() else {
            break;
        };
        for (i, entry) in page.entries.iter().enumerate() {
            assert_eq!(entry.seq().0, last + 1 + i as u64);
        }
        last = tail.seq().0;
    }
    assert_eq!(last, total + 1, "history has every message");
    let resume = Resume {
        cursors: vec![Cursor {
            conversation: dm,
            seq: Seq(last),
        }],
    };
    assert!(matches!(bob.ok(Request::Sync(resume)).await, Response::Ok));
    loop {
        match bob.event().await {
            Event::CaughtUp { .. } => break,
            Event::Message(m) => panic!("message {} repeated after the history", m.seq),
            _ => {}
        }
    }
    alice.send_text(dm, total + 2, "live again").await;
    assert_eq!(bob.message().await.seq, Seq(total + 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_per_user_are_limited() {
    let daemon = TestDaemon::start_with(|c| {
        c.limits.max_rooms_per_user = 2;
    });
    let (mut alice, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let (mut bob, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    let create = |name: &str| Request::CreateRoom {
        name: name.into(),
        invite_only: false,
    };
    let Response::Room(one) = alice.ok(create("one")).await else {
        panic!()
    };
    alice.ok(create("two")).await;
    assert_eq!(alice.code(create("three")).await, ErrorCode::TOO_MANY_ROOMS);
    let Response::Room(bobs) = bob.ok(create("bobs")).await else {
        panic!()
    };
    assert_eq!(
        alice.code(Request::JoinRoom { room: bobs.room }).await,
        ErrorCode::TOO_MANY_ROOMS
    );
    // Leaving makes room. (An owner transfers ownership first.)
    bob.ok(Request::JoinRoom { room: one.room }).await;
    let bob_id = bob
        .ok(Request::LookupUsers(vec![UserRef::Name("bob".into())]))
        .await;
    let Response::Users(users) = bob_id else {
        panic!()
    };
    alice
        .ok(Request::SetRole {
            room: one.room,
            user: users[0].user,
            role: Role::Owner,
        })
        .await;
    alice.ok(Request::LeaveRoom { room: one.room }).await;
    assert!(matches!(
        alice.ok(Request::JoinRoom { room: bobs.room }).await,
        Response::Room(_)
    ));
    // Direct conversations do not count.
    assert_eq!(alice.conversations().await.len(), 2);
}
