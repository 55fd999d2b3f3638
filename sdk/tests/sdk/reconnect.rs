//! Reconnect in the middle of a stream: the daemon restarts while one user sends and another
//! listens; both clients reconnect by themselves, the interrupted send is retried with its op
//! id, and the listener sees every message exactly once, in order.

use std::time::Duration;

use chat_sdk::protocol::*;
use chat_sdk::{Client, Options, Reconnect, Status};

use crate::{SdkDaemon as _, TestDaemon};

const MESSAGES: u64 = 120;

fn resilient(daemon: &TestDaemon, token: String) -> Options {
    Options {
        token: Some(token),
        reconnect: Some(Reconnect {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            give_up_after: Some(Duration::from_secs(60)),
            connect_timeout: Duration::from_secs(1),
        }),
        ..daemon.options()
    }
}

/// Tokens of two new accounts, alice and bob.
async fn register_alice_and_bob(daemon: &TestDaemon) -> (String, String) {
    let anonymous = Client::connect(&daemon.options()).await.unwrap();
    let alice = anonymous.register("alice", "correct horse").await.unwrap();
    let bob = anonymous.register("bob", "battery staple").await.unwrap();
    anonymous.close().await;
    (alice.token, bob.token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restart_mid_stream_loses_and_repeats_nothing() {
    let mut daemon = TestDaemon::start();
    let (alice_token, bob_token) = register_alice_and_bob(&daemon).await;

    let alice = Client::connect(&resilient(&daemon, alice_token))
        .await
        .unwrap();
    let bob = Client::connect(&resilient(&daemon, bob_token))
        .await
        .unwrap();
    let dm = ConversationId::direct(alice.session().unwrap().user, bob.session().unwrap().user);
    // Bob's cursor of the conversation starts with its first message.
    alice.send_text(dm, "before").await.unwrap();
    let first = loop {
        if let Some(Event::Message(m)) = bob.next_event().await {
            break m;
        }
    };
    assert_eq!(first.seq, Seq(1));

    // Bob follows alice; following belongs to a connection, so the client follows her again
    // after reconnecting and reports her state then.
    let alice_id = alice.session().unwrap().user;
    bob.presence(vec![alice_id], vec![]).await.unwrap();

    // Alice sends in the background, each send waiting for its ack.
    let (acked_tx, mut acked) = tokio::sync::mpsc::unbounded_channel();
    let sender = tokio::spawn(async move {
        for i in 0..MESSAGES {
            // Keep the op id across rate-limit retries, as an application would.
            let op = OpId(chat_sdk::random_u64());
            let body = format!("m{i}").into_bytes();
            let ack = loop {
                match alice
                    .send_with_op(dm, op, ContentType::TEXT, body.clone(), None)
                    .await
                {
                    Ok(ack) => break ack,
                    Err(chat_sdk::Error::Server {
                        code: ErrorCode::RATE_LIMITED,
                        retry_after_ms: Some(ms),
                        ..
                    }) => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
                    Err(e) => panic!("send {i}: {e}"),
                }
            };
            acked_tx.send(ack).unwrap();
        }
        alice
    });

    // Restart the daemon once a third of the messages are acknowledged.
    let mut acks = Vec::new();
    while acks.len() < usize::try_from(MESSAGES / 3).unwrap() {
        acks.push(acked.recv().await.unwrap());
    }
    let mut status = bob.status_changes();
    daemon.restart();
    // Bob noticed (his state changed) and came back.
    status.changed().await.unwrap();
    while *status.borrow_and_update() != Status::Connected {
        status.changed().await.unwrap();
    }
    let alice = sender.await.unwrap();
    while let Ok(ack) = acked.try_recv() {
        acks.push(ack);
    }
    // Every send stored once: acks are 2..=MESSAGES+1 in order (the sender awaited each).
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(
            ack.seq,
            Seq(u64::try_from(i).unwrap() + 2),
            "ack {i}: {ack:?}"
        );
    }

    // Bob's stream: every message after "before", once, in order; no gap announced; and
    // alice's presence again after the reconnect.
    let mut next = 2u64;
    let mut presence_after_restart = false;
    while next <= MESSAGES + 1 {
        let event = tokio::time::timeout(Duration::from_secs(30), bob.next_event())
            .await
            .expect("bob's stream stalled")
            .expect("bob's client closed");
        match event {
            Event::Message(m) => {
                assert_eq!(m.seq, Seq(next), "out of order or repeated");
                assert_eq!(m.body, format!("m{}", next - 2).into_bytes());
                next += 1;
            }
            Event::Presence(p) if p.user == alice_id => presence_after_restart = true,
            Event::Gap(gap) => panic!("unexpected gap {gap:?}"),
            Event::Lagged => panic!("bob lagged"),
            _ => {}
        }
    }
    // The re-follow answer is queued right after the resume's replay; it may trail the
    // last message.
    while !presence_after_restart {
        let event = tokio::time::timeout(Duration::from_secs(30), bob.next_event())
            .await
            .expect("no presence after the reconnect")
            .expect("bob's client closed");
        presence_after_restart = matches!(event, Event::Presence(p) if p.user == alice_id);
    }
    let cursors = bob.cursors();
    assert_eq!(
        cursors,
        vec![Cursor {
            conversation: dm,
            seq: Seq(MESSAGES + 1)
        }]
    );
    // Both followed the hash chain over everything, across the restart (alice over her own
    // entries from their acks, reading back any acked again without them), and hold the
    // same link for the last entry.
    let tip = alice.chain_tip(dm);
    assert_eq!(tip.map(|(seq, _)| seq), Some(Seq(MESSAGES + 1)));
    assert_eq!(bob.chain_tip(dm), tip);
    for report in [alice.chain_report(), bob.chain_report()] {
        assert_eq!(report.breaks, 0, "{report:?}");
        assert_eq!(report.anchored, 0, "from the chain's start: {report:?}");
        assert_eq!(report.verified, MESSAGES + 1, "{report:?}");
    }
    let verified = bob.verify(dm).await.unwrap();
    assert_eq!((verified.head, verified.broken), (Seq(MESSAGES + 1), None));
    assert_eq!(Some((verified.head, verified.link)), tip);
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_file_delivers_what_arrived_while_away() {
    let daemon = TestDaemon::start();
    let (alice_token, bob_token) = register_alice_and_bob(&daemon).await;
    let file = daemon.path().join("bob-cursors.json");
    let bob_options = Options {
        cursor_file: Some(file.clone()),
        ..resilient(&daemon, bob_token)
    };
    let alice = Client::connect(&resilient(&daemon, alice_token))
        .await
        .unwrap();
    let dm = ConversationId::direct(alice.session().unwrap().user, UserId(2));
    alice.send_text(dm, "one").await.unwrap();

    // Bob's first run starts at the heads: "one" is old news; "two" arrives live.
    let bob = Client::connect(&bob_options).await.unwrap();
    assert_eq!(bob.session().unwrap().user, UserId(2));
    alice.send_text(dm, "two").await.unwrap();
    let seen = loop {
        if let Some(Event::Message(m)) = bob.next_event().await {
            break m;
        }
    };
    assert_eq!(seen.body, b"two");
    bob.close().await;
    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(saved.contains("\"seq\": 2"), "{saved}");

    // While bob is away: three more. His next run gets exactly those, then CaughtUp.
    for text in ["three", "four", "five"] {
        alice.send_text(dm, text).await.unwrap();
    }
    let bob = Client::connect(&bob_options).await.unwrap();
    let mut bodies = Vec::new();
    loop {
        match bob.next_event().await.unwrap() {
            Event::Message(m) => bodies.push(String::from_utf8(m.body).unwrap()),
            Event::CaughtUp { .. } => break,
            _ => {}
        }
    }
    assert_eq!(bodies, ["three", "four", "five"]);
    // The cursor file kept the chain's tip: the second run checked "three" against it.
    let report = bob.chain_report();
    assert_eq!((report.verified, report.anchored, report.breaks), (3, 0, 0));
    assert_eq!(bob.chain_tip(dm), alice.chain_tip(dm));
    bob.close().await;
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_renewed_from_the_token_source_and_loses_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let daemon = TestDaemon::start();
    let (_, bob_token) = register_alice_and_bob(&daemon).await;
    let keys =
        chatd::token::Keys::load(&chatd::config::AuthConfig::default(), daemon.path()).unwrap();
    let now = chatd::unix_now();
    // Alice starts with a token that expires in five seconds (time enough to log in on a
    // loaded machine); her backend mints fresh ones.
    let short = keys.mint("alice", now, now + 5);
    let renewals = Arc::new(AtomicU32::new(0));
    let source = {
        let renewals = Arc::clone(&renewals);
        chat_sdk::TokenSource::new(move || {
            renewals.fetch_add(1, Ordering::SeqCst);
            let now = chatd::unix_now();
            let token = keys.mint("alice", now, now + 3600);
            async move { Ok(token) }
        })
    };
    let alice = Client::connect(&Options {
        token_source: Some(source),
        ..resilient(&daemon, short)
    })
    .await
    .unwrap();
    let bob = Client::connect(&resilient(&daemon, bob_token))
        .await
        .unwrap();
    let dm = ConversationId::direct(alice.session().unwrap().user, bob.session().unwrap().user);
    bob.send_text(dm, "before the expiry").await.unwrap();
    // The daemon ends her session at the expiry; the client renews and comes back.
    let mut status = alice.status_changes();
    while !matches!(*status.borrow_and_update(), Status::Reconnecting { .. }) {
        status.changed().await.unwrap();
    }
    // Bob sends while she may still be away.
    bob.send_text(dm, "during the renewal").await.unwrap();
    while *status.borrow_and_update() != Status::Connected {
        status.changed().await.unwrap();
    }
    assert_eq!(renewals.load(Ordering::SeqCst), 1);
    bob.send_text(dm, "after the renewal").await.unwrap();
    let mut bodies = Vec::new();
    while bodies.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(20), alice.next_event()).await {
            Ok(Some(Event::Message(m))) => bodies.push(String::from_utf8(m.body).unwrap()),
            Ok(Some(_)) => {}
            other => panic!("{other:?} after {bodies:?}"),
        }
    }
    assert_eq!(
        bodies,
        [
            "before the expiry",
            "during the renewal",
            "after the renewal"
        ]
    );
    // Her new session lasts as long as the new token.
    alice.send_text(dm, "still here").await.unwrap();
}
