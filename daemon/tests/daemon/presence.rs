//! Presence: who may be followed, the current state in the answer, and the changes as events.
//! (The coalescing and rate rules are unit-tested in the registry, where time is an input.)

use chat_protocol::*;

use crate::TestDaemon;
use crate::client::Client;

fn follow(subscribe: Vec<UserId>, unsubscribe: Vec<UserId>) -> Request {
    Request::Presence {
        subscribe,
        unsubscribe,
    }
}

/// The next presence event, skipping others.
async fn presence_event(client: &mut Client) -> PresenceInfo {
    loop {
        if let Event::Presence(info) = client.event().await {
            return info;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_see_online_offline_and_last_seen() {
    let daemon = TestDaemon::start_with(|c| c.limits.presence_interval_ms = 100);
    let login = |name: &'static str, device: u64| {
        let token = daemon.token(name);
        let (addr, cert) = (daemon.addr, daemon.cert.clone());
        async move { Client::login(addr, &cert, &token, device).await }
    };
    let (mut alice, a) = login("alice", 1).await;
    let (mut bob, b) = login("bob", 1).await;
    let (mut carol, c) = login("carol", 1).await;
    let dm = ConversationId::direct(a.user, b.user);
    alice.send_text(dm, 1, "hi bob").await;
    assert_eq!(bob.message().await.seq, Seq(1));

    // Carol shares no conversation with alice: refused, and nothing changes.
    let error = carol
        .request(follow(vec![a.user], vec![]))
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::FORBIDDEN);
    // Too many users in one change is refused.
    let many = (1..=300).map(UserId).collect();
    assert_eq!(
        carol.code(follow(many, vec![])).await,
        ErrorCode::INVALID_REQUEST
    );

    // Bob follows alice (a direct conversation) and himself: both online, sorted by id.
    let Response::Presence(states) = bob.ok(follow(vec![b.user, a.user, a.user], vec![])).await
    else {
        panic!("not a presence answer");
    };
    let mut expected = vec![a.user, b.user];
    expected.sort();
    assert_eq!(states.iter().map(|s| s.user).collect::<Vec<_>>(), expected);
    assert!(
        states
            .iter()
            .all(|s| s.status == PresenceStatus::Online && s.last_seen.is_none())
    );

    // Alice leaves: bob is told she is offline, with when.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    alice.conn.close(0u32.into(), b"bye");
    drop(alice);
    let info = presence_event(&mut bob).await;
    assert_eq!((info.user, info.status), (a.user, PresenceStatus::Offline));
    let seen = info.last_seen.expect("a last-seen time").0;
    assert!(
        u128::from(seen) + 1_000 >= before,
        "last seen {seen}, left at {before}"
    );

    // Following her again answers offline with the same last-seen time.
    let Response::Presence(states) = bob.ok(follow(vec![a.user], vec![])).await else {
        panic!("not a presence answer");
    };
    assert_eq!(states, vec![info]);

    // She comes back: online.
    let (mut alice, _) = login("alice", 1).await;
    let info = presence_event(&mut bob).await;
    assert_eq!(
        (info.user, info.status, info.last_seen),
        (a.user, PresenceStatus::Online, None)
    );

    // A shared room is enough: carol creates one, alice joins, carol may follow her.
    let room = carol.create_room("lobby", false).await;
    alice.ok(Request::JoinRoom { room }).await;
    let Response::Presence(states) = carol.ok(follow(vec![a.user], vec![])).await else {
        panic!("not a presence answer");
    };
    assert_eq!(states[0].status, PresenceStatus::Online);

    // Bob stops following alice and follows carol instead (they share nothing): refused as
    // a whole, so he still follows alice.
    assert_eq!(
        bob.code(follow(vec![c.user], vec![a.user])).await,
        ErrorCode::FORBIDDEN
    );
    // Unfollowing works, and an empty subscribe list answers an empty list.
    let Response::Presence(states) = bob.ok(follow(vec![], vec![a.user])).await else {
        panic!("not a presence answer");
    };
    assert!(states.is_empty());

    // Alice leaves again: carol (still following) is told; bob's next presence event is
    // about someone else, not alice.
    alice.conn.close(0u32.into(), b"bye");
    drop(alice);
    let info = presence_event(&mut carol).await;
    assert_eq!((info.user, info.status), (a.user, PresenceStatus::Offline));
    bob.ok(follow(vec![], vec![b.user])).await;
    let Response::Presence(_) = bob.ok(follow(vec![b.user], vec![])).await else {
        panic!("not a presence answer");
    };
    while let Some(event) = bob.events.pop_front() {
        assert!(
            !matches!(event, Event::Presence(PresenceInfo { user, .. }) if user == a.user),
            "bob unfollowed alice but got {event:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_connection_are_limited() {
    let daemon = TestDaemon::start_with(|c| c.limits.max_presence_subscriptions = 2);
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let mut others = Vec::new();
    for name in ["bob", "carol", "dave"] {
        let (mut client, session) =
            Client::login(daemon.addr, &daemon.cert, &daemon.token(name), 1).await;
        client
            .send_text(ConversationId::direct(a.user, session.user), 1, "hi")
            .await;
        others.push(session.user);
    }
    alice.ok(follow(others[..2].to_vec(), vec![])).await;
    let error = alice
        .request(follow(vec![others[2]], vec![]))
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::INVALID_REQUEST);
    assert!(error.reason.contains("at most 2"), "{}", error.reason);
    // Swapping one for another within the limit is fine.
    alice.ok(follow(vec![others[2]], vec![others[0]])).await;
}
