//! Reactions, mentions and threads against a real daemon: the rules, what members see live,
//! what history, threads and resume show, across a restart and a delete.

use chat_protocol::*;

use crate::TestDaemon;
use crate::client::Client;

async fn user(daemon: &TestDaemon, name: &str, device: u64) -> (Client, UserId) {
    let (client, session) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token(name), device).await;
    (client, session.user)
}

fn react(c: ConversationId, op: u64, target: u64, reaction: &str, remove: bool) -> Request {
    Request::React(ReactMessage {
        conversation: c,
        op: OpId(op),
        target: Seq(target),
        reaction: reaction.to_owned(),
        remove,
    })
}

fn post(
    c: ConversationId,
    op: u64,
    text: &str,
    reply_to: Option<u64>,
    mentions: &[UserId],
) -> Request {
    Request::Send(SendMessage {
        conversation: c,
        op: OpId(op),
        content_type: ContentType::TEXT,
        reply_to: reply_to.map(Seq),
        body: text.as_bytes().to_vec(),
        mentions: mentions.to_vec(),
    })
}

async fn acked(client: &mut Client, request: Request) -> Seq {
    match client.ok(request).await {
        Response::Sent(ack) => ack.seq,
        other => panic!("unexpected {other:?}"),
    }
}

/// The message `seq` as history shows it.
async fn message_at(client: &mut Client, c: ConversationId, seq: u64) -> Message {
    let page = client.history(c, HistoryFrom::After(Seq(seq - 1)), 1).await;
    match page.entries.into_iter().next() {
        Some(Entry::Message(m)) if m.seq == Seq(seq) => m,
        other => panic!("no message at {seq}: {other:?}"),
    }
}

/// The seqs of one page of `root`'s thread, and whether there is more.
async fn thread(
    client: &mut Client,
    c: ConversationId,
    root: u64,
    from: HistoryFrom,
    limit: u16,
    order: Order,
) -> (Vec<u64>, bool) {
    let query = HistoryQuery {
        conversation: c,
        from,
        limit,
        order,
        thread: Some(Seq(root)),
    };
    match client.ok(Request::History(query)).await {
        Response::History(page) => (page.entries.iter().map(|e| e.seq().0).collect(), page.more),
        other => panic!("unexpected {other:?}"),
    }
}

fn kinds(m: &Message) -> Vec<(&str, Vec<UserId>)> {
    m.reactions
        .iter()
        .map(|r| (r.reaction.as_str(), r.users.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_react_mention_and_answer_in_threads_live_in_history_and_after_a_restart() {
    let mut daemon = TestDaemon::start();
    let (mut alice, alice_id) = user(&daemon, "alice", 1).await;
    let (mut bob, bob_id) = user(&daemon, "bob", 1).await;
    let (mut carol, carol_id) = user(&daemon, "carol", 1).await;
    let room = alice.create_room("lunch", false).await;
    let c = ConversationId::Room(room);
    assert!(matches!(
        bob.ok(Request::JoinRoom { room }).await,
        Response::Room(_)
    ));
    // 1 created, 2 bob joined, 3 the message.
    assert_eq!(alice.send_text(c, 1, "lunch?").await.seq, Seq(3));

    // Bob reacts; alice sees it live.
    assert_eq!(acked(&mut bob, react(c, 1, 3, "👍", false)).await, Seq(4));
    let reaction = loop {
        if let Event::Reaction(r) = alice.event().await {
            break r;
        }
    };
    assert_eq!(
        (
            reaction.seq,
            reaction.sender,
            reaction.target,
            reaction.reaction.as_str(),
            reaction.removed
        ),
        (Seq(4), bob_id, Seq(3), "👍", false)
    );
    // Once per user and reaction; only what one has can be taken back; the rules of a
    // reaction; only messages; only members.
    for (request, code) in [
        (react(c, 2, 3, "👍", false), ErrorCode::ALREADY_REACTED),
        (react(c, 3, 3, "🎉", true), ErrorCode::NOT_REACTED),
        (react(c, 4, 3, "a b", false), ErrorCode::INVALID_REACTION),
        (react(c, 5, 3, "", false), ErrorCode::INVALID_REACTION),
        (react(c, 6, 1, "👍", false), ErrorCode::UNKNOWN_MESSAGE),
        (react(c, 7, 99, "👍", false), ErrorCode::UNKNOWN_MESSAGE),
    ] {
        assert_eq!(bob.code(request).await, code);
    }
    assert_eq!(
        carol.code(react(c, 1, 3, "👍", false)).await,
        ErrorCode::NOT_MEMBER
    );
    // A retry is the first attempt's ack.
    match bob.ok(react(c, 1, 3, "👍", false)).await {
        Response::Sent(ack) => assert_eq!((ack.seq, ack.duplicate), (Seq(4), true)),
        other => panic!("{other:?}"),
    }
    assert_eq!(acked(&mut alice, react(c, 2, 3, "👍", false)).await, Seq(5));
    assert_eq!(acked(&mut bob, react(c, 8, 3, "🎉", false)).await, Seq(6));
    let m = message_at(&mut alice, c, 3).await;
    assert_eq!(
        kinds(&m),
        [("👍", vec![bob_id, alice_id]), ("🎉", vec![bob_id])]
    );

    // Mentions name members, each once.
    assert_eq!(
        alice
            .code(post(c, 3, "@carol?", Some(3), &[carol_id]))
            .await,
        ErrorCode::INVALID_MENTION
    );
    assert_eq!(
        alice
            .code(post(c, 4, "@bob @bob", Some(3), &[bob_id, bob_id]))
            .await,
        ErrorCode::INVALID_MENTION
    );
    assert_eq!(
        acked(&mut alice, post(c, 5, "@bob at noon?", Some(3), &[bob_id])).await,
        Seq(7)
    );
    assert_eq!(message_at(&mut bob, c, 7).await.mentions, [bob_id]);
    // Threads: the replies to one root, paged by their own seqs.
    assert_eq!(
        acked(&mut bob, post(c, 9, "yes", Some(3), &[])).await,
        Seq(8)
    );
    assert_eq!(alice.send_text(c, 6, "other topic").await.seq, Seq(9));
    assert_eq!(
        acked(&mut bob, post(c, 10, "sure", Some(9), &[])).await,
        Seq(10)
    );
    let start = HistoryFrom::After(Seq(0));
    assert_eq!(
        thread(&mut bob, c, 3, start, 20, Order::OldestFirst).await,
        (vec![7, 8], false)
    );
    assert_eq!(
        thread(&mut bob, c, 3, HistoryFrom::Latest, 1, Order::NewestFirst).await,
        (vec![8], true)
    );
    assert_eq!(
        thread(
            &mut bob,
            c,
            3,
            HistoryFrom::Before(Seq(8)),
            5,
            Order::OldestFirst
        )
        .await,
        (vec![7], false)
    );
    assert_eq!(
        thread(&mut bob, c, 9, start, 20, Order::OldestFirst).await,
        (vec![10], false)
    );
    assert_eq!(
        thread(&mut bob, c, 10, start, 20, Order::OldestFirst).await,
        (vec![], false)
    );
    let beyond = HistoryQuery {
        conversation: c,
        from: start,
        limit: 10,
        order: Order::OldestFirst,
        thread: Some(Seq(99)),
    };
    assert_eq!(
        bob.code(Request::History(beyond)).await,
        ErrorCode::UNKNOWN_MESSAGE
    );
    let outsider = HistoryQuery {
        thread: Some(Seq(3)),
        ..beyond
    };
    assert_eq!(
        carol.code(Request::History(outsider)).await,
        ErrorCode::NOT_MEMBER
    );

    // Taking a reaction back; the last user of a kind takes the kind with them.
    assert_eq!(acked(&mut bob, react(c, 11, 3, "🎉", true)).await, Seq(11));
    alice.close().await;
    bob.close().await;
    carol.close().await;

    // After a restart: the same reactions, mentions and threads; a device resuming from
    // before them gets every reaction replayed in order.
    daemon.restart();
    let (mut alice, _) = user(&daemon, "alice", 2).await;
    let m = message_at(&mut alice, c, 3).await;
    assert_eq!(kinds(&m), [("👍", vec![bob_id, alice_id])]);
    assert_eq!(
        thread(&mut alice, c, 3, start, 20, Order::OldestFirst).await,
        (vec![7, 8], false)
    );
    let cursors = vec![Cursor {
        conversation: c,
        seq: Seq(3),
    }];
    let token = daemon.token("bob");
    let (mut resumed, _) = Client::resume(daemon.addr, &daemon.cert, &token, 3, cursors).await;
    let mut replayed = Vec::new();
    loop {
        match resumed.event().await {
            Event::CaughtUp { .. } => break,
            Event::Reaction(r) => replayed.push((r.seq.0, r.reaction, r.removed)),
            _ => {}
        }
    }
    assert_eq!(
        replayed,
        [
            (4, "👍".to_owned(), false),
            (5, "👍".to_owned(), false),
            (6, "🎉".to_owned(), false),
            (11, "🎉".to_owned(), true)
        ]
    );
    // Deleted: its reactions go with it, and no more come; its thread stays.
    let delete = Request::Delete(DeleteMessage {
        conversation: c,
        op: OpId(20),
        target: Seq(3),
    });
    assert_eq!(acked(&mut alice, delete).await, Seq(12));
    let m = message_at(&mut alice, c, 3).await;
    assert!(m.deleted.is_some() && m.reactions.is_empty(), "{m:?}");
    assert_eq!(
        resumed.code(react(c, 12, 3, "👍", true)).await,
        ErrorCode::MESSAGE_DELETED
    );
    assert_eq!(
        thread(&mut alice, c, 3, start, 20, Order::OldestFirst).await,
        (vec![7, 8], false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_takes_twenty_kinds_of_reaction() {
    let daemon = TestDaemon::start();
    let (mut alice, alice_id) = user(&daemon, "alice", 1).await;
    let notes = ConversationId::Notes(alice_id);
    assert_eq!(alice.send_text(notes, 1, "pick one").await.seq, Seq(1));
    for k in 0..limits::MAX_REACTION_KINDS as u64 {
        let seq = acked(&mut alice, react(notes, 2 + k, 1, &format!("r{k}"), false)).await;
        assert_eq!(seq, Seq(2 + k));
    }
    assert_eq!(
        alice.code(react(notes, 100, 1, "one-more", false)).await,
        ErrorCode::TOO_MANY_REACTIONS
    );
    // Taking one back makes room for another.
    acked(&mut alice, react(notes, 101, 1, "r0", true)).await;
    acked(&mut alice, react(notes, 102, 1, "one-more", false)).await;
    let m = message_at(&mut alice, notes, 1).await;
    assert_eq!(m.reactions.len(), limits::MAX_REACTION_KINDS);
    assert_eq!(
        m.reactions.last().map(|r| r.reaction.as_str()),
        Some("one-more")
    );
}
