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
    let started = std::time::Instant::now();
    for op in 0..30 {
        let message = SendMessage {
            conversation: notes,
            op: OpId(op),
            content_type: ContentType::TEXT,
            reply_to: None,
            body: b"spam".to_vec(),
            mentions: Vec::new(),
        };
        match flood.request(Request::Send(message)).await {
            Ok(Response::Sent(_)) => sent += 1,
            Err(e) if e.code == ErrorCode::RATE_LIMITED => limited.push(e.retry_after_ms),
            other => panic!("{other:?}"),
        }
    }
    // The burst (5), plus at most what refilled meanwhile at 1 per second (a bound, not a
    // timing assumption: the refill cannot exceed the rate times the time that passed).
    let refilled = usize::try_from(started.elapsed().as_secs()).unwrap() + 1;
    assert!(
        (5..=5 + refilled).contains(&sent),
        "{sent} sends passed in {:?}",
        started.elapsed()
    );
    assert_eq!(limited.len(), 30 - sent);
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

/// A client that sends `requests` full history pages of `notes` on a connection with a tiny
/// receive window and never reads the answers.
async fn non_reader(
    daemon: &TestDaemon,
    token: &str,
    device: u64,
    notes: ConversationId,
    requests: u32,
) -> Client {
    let mut client = Client::connect_with(daemon.addr, &daemon.cert, Some(2_048)).await;
    client.hello(Some(token), device).await.session.unwrap();
    for id in 0..requests {
        let request = Request::History(HistoryQuery {
            conversation: notes,
            from: HistoryFrom::Latest,
            limit: 100,
            order: Order::NewestFirst,
            thread: None,
        });
        client
            .write(&ClientFrame::Request {
                id: RequestId(1_000 + id),
                request,
            })
            .await;
    }
    client
}

/// Fills `user`'s notes with `n` messages of the largest body, so a history page is ~1.6 MB.
async fn fill_notes(daemon: &TestDaemon, user: &str, n: u64) -> ConversationId {
    let (mut client, session) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token(user), 99).await;
    let notes = ConversationId::Notes(session.user);
    let body = "x".repeat(chat_protocol::limits::MAX_BODY);
    for op in 1..=n {
        client.send_text(notes, op, &body).await;
    }
    notes
}

/// Waits (at most `WAIT`) until `condition` holds of the daemon's memory reading.
async fn memory_until(
    daemon: &TestDaemon,
    what: &str,
    condition: impl Fn(chatd::server::MemoryUse) -> bool,
) {
    let deadline = tokio::time::Instant::now() + crate::client::WAIT;
    while !condition(daemon.memory()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {:?}",
            daemon.memory()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// What the daemon charges per connection besides its queues (`budget::CONNECTION_COST`).
const CONNECTION_COST: usize = 48 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_pin_no_more_than_their_user_budget() {
    const USER_MEMORY: usize = 6 << 20;
    let daemon = TestDaemon::start_with(|c| {
        c.limits.user_memory = USER_MEMORY;
        c.limits.send_rate = 100_000;
        c.limits.send_burst = 100_000;
    });
    let notes = fill_notes(&daemon, "mallory", 100).await;
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let (mut bob, b) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    let idle = daemon.memory().used;
    // Four devices of one account each pipeline 50 history pages of ~1.6 MB (80 MB each
    // without budgets) and read nothing.
    let token = daemon.token("mallory");
    let mut devices = Vec::new();
    for device in 1..=4 {
        devices.push(non_reader(&daemon, &token, device, notes, 50).await);
    }
    // The daemon holds what the user's budget allows (at least three full pages: the test
    // exercised the bound), and no more.
    let pages = 3 * 100 * chat_protocol::limits::MAX_BODY;
    memory_until(&daemon, "the non-readers fill their budget", |m| {
        m.used >= idle + pages
    })
    .await;
    // Others chat on meanwhile.
    let dm = ConversationId::direct(a.user, b.user);
    alice.send_text(dm, 1, "still here?").await;
    assert_eq!(bob.message().await.body, b"still here?");
    let peak = daemon.memory().peak;
    // Besides the user's budget: the four connections' fixed cost, and the small frames
    // charged as they are (hello answers, acks of the notes' senders).
    let bound = idle + USER_MEMORY + 4 * CONNECTION_COST + 64 * 1024;
    assert!(
        peak <= bound,
        "peak {peak} bytes, bound {bound} (idle {idle})"
    );
    // Closing them gives every byte back.
    for device in devices {
        device.close().await;
    }
    memory_until(&daemon, "the budget is given back", |m| m.used <= idle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_daemon_budget_refuses_work_then_recovers() {
    const DAEMON_MEMORY: usize = 8 << 20;
    let daemon = TestDaemon::start_with(|c| {
        c.limits.user_memory = 6 << 20;
        c.limits.daemon_memory = DAEMON_MEMORY;
        c.limits.send_rate = 100_000;
        c.limits.send_burst = 100_000;
    });
    let mallorys = fill_notes(&daemon, "mallory", 100).await;
    let eves = fill_notes(&daemon, "eve", 100).await;
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    // Two accounts' non-readers could hold 12 MB together, more than the daemon's budget.
    let mut hogs = Vec::new();
    for (user, notes) in [("mallory", mallorys), ("eve", eves)] {
        for device in 1..=2 {
            hogs.push(non_reader(&daemon, &daemon.token(user), device, notes, 50).await);
        }
    }
    // A full history page is reserved before it is read (its largest size, in whole 64 KiB
    // granules as large frames are charged): once one no longer fits...
    let page = (1024 + 100 * (chat_protocol::limits::MAX_BODY + 256)).div_ceil(65_536) * 65_536;
    memory_until(&daemon, "the budget fills", |m| m.used + page > m.limit).await;
    // ... another user's page is refused with OVERLOADED and a delay, not queued.
    let alices = ConversationId::Notes(a.user);
    let history = Request::History(HistoryQuery {
        conversation: alices,
        from: HistoryFrom::Latest,
        limit: 100,
        order: Order::NewestFirst,
        thread: None,
    });
    let refused = alice.request(history.clone()).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::OVERLOADED, "{refused:?}");
    assert!(refused.retry_after_ms.is_some_and(|ms| ms > 0));
    // Only frames that exist already (small answers) are charged beyond the budget.
    let memory = daemon.memory();
    assert!(memory.peak <= DAEMON_MEMORY + 64 * 1024, "{memory:?}");
    // The hogs leave: work is taken again.
    for hog in hogs {
        hog.close().await;
    }
    memory_until(&daemon, "the hogs' bytes come back", |m| {
        m.used + page <= m.limit
    })
    .await;
    assert!(matches!(alice.ok(history).await, Response::History(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_is_read_page_by_page_as_the_client_takes_it() {
    let daemon = TestDaemon::start_with(|c| {
        c.limits.send_rate = 100_000;
        c.limits.send_burst = 100_000;
    });
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let (bob, b) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    bob.close().await;
    // Bob misses 300 messages of the largest body: a 5 MB catch-up, more than a
    // connection's budget (4 MiB).
    let dm = ConversationId::direct(a.user, b.user);
    let body = "y".repeat(chat_protocol::limits::MAX_BODY);
    let missed = 300u64;
    for op in 1..=missed {
        alice.send_text(dm, op, &body).await;
    }
    let idle = daemon.memory().used;
    // He resumes on a tiny window and does not read yet: the daemon holds a few pages.
    let mut bob = Client::connect_with(daemon.addr, &daemon.cert, Some(2_048)).await;
    let auth = Auth {
        token: daemon.token("bob"),
        resume: Some(Resume {
            cursors: vec![Cursor {
                conversation: dm,
                seq: Seq(0),
            }],
        }),
    };
    bob.write(&ClientFrame::Hello(Hello {
        versions: SUPPORTED_VERSIONS,
        client: "test".into(),
        device: DeviceId(2),
        auth: Some(auth),
    }))
    .await;
    memory_until(&daemon, "the first pages are queued", |m| {
        m.used >= idle + 1024 * 1024
    })
    .await;
    let bound = idle + (4 << 20) + CONNECTION_COST + 64 * 1024;
    assert!(
        daemon.memory().peak <= bound,
        "{:?}, bound {bound}",
        daemon.memory()
    );
    // Now he reads: every entry once, in order, then CaughtUp with the count.
    let mut seqs = Vec::new();
    let replayed = loop {
        match bob.next_frame().await.expect("stream open") {
            ServerFrame::Event(Event::Message(m)) => {
                assert_eq!(m.body.len(), body.len());
                seqs.push(m.seq.0);
            }
            ServerFrame::Event(Event::CaughtUp { replayed }) => break replayed,
            ServerFrame::HelloOk(ok) => assert!(ok.session.is_some()),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(seqs, (1..=missed).collect::<Vec<_>>());
    assert_eq!(u64::from(replayed), missed);
    assert!(
        daemon.memory().peak <= bound,
        "{:?}, bound {bound}",
        daemon.memory()
    );
    // Live again.
    alice.send_text(dm, missed + 1, "live").await;
    assert_eq!(bob.message().await.seq, Seq(missed + 1));
}

/// A QUIC connection with no session stream yet (a silent client), on its own endpoint.
async fn quic_connect(
    daemon: &TestDaemon,
) -> Result<(quinn::Endpoint, quinn::Connection), quinn::ConnectionError> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(crate::client::client_config(&daemon.cert));
    let conn = endpoint.connect(daemon.addr, "localhost").unwrap().await?;
    Ok((endpoint, conn))
}

fn refused(result: Result<(quinn::Endpoint, quinn::Connection), quinn::ConnectionError>) -> bool {
    matches!(
        result,
        Err(quinn::ConnectionError::ConnectionClosed(close))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    )
}

/// Waits (at most `WAIT`) until the daemon counts `n` unauthenticated connections.
async fn unauthenticated_until(daemon: &TestDaemon, n: usize) {
    let deadline = tokio::time::Instant::now() + crate::client::WAIT;
    while daemon.admission().unauthenticated != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}, waiting for {n}",
            daemon.admission()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_and_one_address_cannot_take_every_slot() {
    let daemon = TestDaemon::start_with(|c| {
        c.shards = 1;
        c.limits.max_unauthenticated = 2;
        c.limits.max_connections_per_address = 3;
    });
    // Two silent connections fill the unauthenticated slots: a third is refused.
    let _silent = quic_connect(&daemon).await.unwrap();
    let (endpoint, waiting) = quic_connect(&daemon).await.unwrap();
    unauthenticated_until(&daemon, 2).await;
    assert!(refused(quic_connect(&daemon).await));
    // Once one authenticates, its slot is free again.
    let (send, recv) = waiting.open_bi().await.unwrap();
    let mut alice = crate::client::Client::from_streams(waiting, send, recv, endpoint);
    alice
        .hello(Some(&daemon.token("alice")), 1)
        .await
        .session
        .unwrap();
    unauthenticated_until(&daemon, 1).await;
    let (mut bob, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    unauthenticated_until(&daemon, 1).await;
    // The address now holds three connections (silent, alice, bob): the fourth is refused,
    // authenticated or not, while the connections it has keep working.
    assert!(refused(quic_connect(&daemon).await));
    assert_eq!(daemon.admission().refused, 2);
    assert!(matches!(bob.ok(Request::Ping).await, Response::Pong { .. }));
    assert!(matches!(
        alice.ok(Request::Ping).await,
        Response::Pong { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_retry_threshold_a_client_proves_its_address_and_gets_in() {
    let daemon = TestDaemon::start_with(|c| c.limits.retry_above = 0);
    let (mut alice, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    assert!(matches!(
        alice.ok(Request::Ping).await,
        Response::Pong { .. }
    ));
    assert_eq!(daemon.admission().retries, 1);
    assert_eq!(daemon.admission().refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_does_not_refill_the_send_bucket() {
    let daemon = TestDaemon::start_with(|c| {
        c.limits.send_rate = 1;
        c.limits.send_burst = 3;
    });
    let send = |op: u64| {
        Request::Send(SendMessage {
            conversation: ConversationId::Notes(UserId(1)),
            op: OpId(op),
            content_type: ContentType::TEXT,
            reply_to: None,
            body: b"x".to_vec(),
            mentions: Vec::new(),
        })
    };
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    assert_eq!(a.user, UserId(1));
    for op in 1..=3 {
        assert!(matches!(alice.ok(send(op)).await, Response::Sent(_)));
    }
    let spent = std::time::Instant::now();
    // The burst is spent. Leaving and coming back finds the same bucket, with only what
    // refilled meanwhile (one per second), not a new full one.
    alice.close().await;
    // Gone for the daemon too (its registry heard she left before she comes back).
    let deadline = tokio::time::Instant::now() + crate::client::WAIT;
    while daemon.connections_per_shard().iter().sum::<usize>() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection stays"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (mut again, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 2).await;
    let mut accepted = 0;
    let refused = loop {
        match again.request(send(4 + accepted)).await {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted <= 3, "a full bucket again");
    };
    assert_eq!(refused.code, ErrorCode::RATE_LIMITED, "{refused:?}");
    // A bound, not a timing assumption: no more than refilled since the burst was spent (a
    // fresh bucket would take 3 at once).
    assert!(
        accepted <= spent.elapsed().as_secs() + 1,
        "{accepted} sends accepted {:?} after the burst was spent",
        spent.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_still_times_out_and_is_closed() {
    let daemon = TestDaemon::start_with(|c| c.auth.auth_timeout_secs = 1);
    // Anonymous, a tiny window, and far more pipelined pings than may be in flight: the
    // daemon stops reading it, cannot write its answers, and must still end it.
    let mut client = Client::connect_with(daemon.addr, &daemon.cert, Some(2_048)).await;
    client.hello(None, 1).await;
    for id in 0..500 {
        client
            .write(&ClientFrame::Request {
                id: RequestId(id),
                request: Request::Ping,
            })
            .await;
    }
    let closed = tokio::time::timeout(crate::client::WAIT, client.conn.closed())
        .await
        .expect("the connection stayed open");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == u32::from(GoodbyeCode::AUTH_TIMEOUT.0).into()),
        "{closed:?}"
    );
    // Nothing of it is counted any more.
    let deadline = tokio::time::Instant::now() + crate::client::WAIT;
    while daemon.admission().unauthenticated > 0 || daemon.memory().used > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?} {:?}",
            daemon.admission(),
            daemon.memory()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
