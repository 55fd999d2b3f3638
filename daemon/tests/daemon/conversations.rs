//! Direct conversations, notes to self, rooms: fan-out, ordering, deduplication, rights.

use chat_protocol::*;

use crate::TestDaemon;
use crate::client::Client;

async fn user(daemon: &TestDaemon, name: &str, device: u64) -> (Client, UserId) {
    let (client, session) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token(name), device).await;
    (client, session.user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_and_notes_to_self() {
    let daemon = TestDaemon::start();
    let (mut alice, alice_id) = user(&daemon, "alice", 1).await;
    let (mut alice_phone, _) = user(&daemon, "alice", 2).await;
    let (mut bob, bob_id) = user(&daemon, "bob", 1).await;

    let dm = ConversationId::direct(alice_id, bob_id);
    let ack = alice.send_text(dm, 1, "hi bob").await;
    assert_eq!((ack.seq, ack.duplicate), (Seq(1), false));
    let got = bob.message().await;
    assert_eq!(
        (got.seq, got.sender, got.body.as_slice()),
        (Seq(1), alice_id, &b"hi bob"[..])
    );
    assert_eq!(got.ts, ack.ts);
    // The sender's other device sees it too.
    assert_eq!(alice_phone.message().await.seq, Seq(1));
    let reply = bob.send_text(dm, 1, "hi alice").await;
    assert_eq!(reply.seq, Seq(2));
    assert_eq!(alice.message().await.body, b"hi alice");

    // Alice's phone saw Bob's reply too.
    assert_eq!(alice_phone.message().await.body, b"hi alice");

    let notes = ConversationId::Notes(alice_id);
    assert_eq!(alice.send_text(notes, 2, "buy milk").await.seq, Seq(1));
    assert_eq!(alice_phone.message().await.conversation, notes);
    // Nobody else may post to or read someone's notes.
    assert_eq!(bob.code(send(notes, 9, "x")).await, ErrorCode::NOT_MEMBER);

    // Both see the conversation in their list.
    let conversations = bob.conversations().await;
    assert_eq!(conversations.len(), 1);
    assert_eq!(
        (conversations[0].title.as_str(), conversations[0].head),
        ("alice", Seq(2))
    );

    // Messages to users that do not exist are refused.
    assert_eq!(
        alice
            .code(send(ConversationId::direct(alice_id, UserId(999)), 3, "x"))
            .await,
        ErrorCode::UNKNOWN_USER
    );
    // A text body must be UTF-8.
    let bad = Request::Send(SendMessage {
        body: vec![0xff, 0xfe],
        ..send_message(dm, 4, "")
    });
    assert_eq!(alice.code(bad).await, ErrorCode::INVALID_CONTENT);
}

fn send_message(conversation: ConversationId, op: u64, text: &str) -> SendMessage {
    SendMessage {
        conversation,
        op: OpId(op),
        content_type: ContentType::TEXT,
        reply_to: None,
        body: text.as_bytes().to_vec(),
        mentions: Vec::new(),
    }
}

fn send(conversation: ConversationId, op: u64, text: &str) -> Request {
    Request::Send(send_message(conversation, op, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_fan_out_reaches_members_on_every_shard_in_order() {
    let daemon = TestDaemon::start();
    let (mut owner, _) = user(&daemon, "owner", 1).await;
    let room = owner.create_room("general", false).await;
    let conversation = ConversationId::Room(room);

    // Members join until connections sit on both shards (the kernel picks the shard).
    let mut members = Vec::new();
    let mut i = 0;
    while members.len() < 4 || daemon.connections_per_shard().contains(&0) {
        assert!(
            i < 64,
            "connections never spread over both shards: {:?}",
            daemon.connections_per_shard()
        );
        let (mut member, _) = user(&daemon, &format!("member{i}"), 1).await;
        assert!(matches!(
            member.ok(Request::JoinRoom { room }).await,
            Response::Room(_)
        ));
        members.push(member);
        i += 1;
    }
    let head = members.len() as u64 + 1; // Created + one Joined per member

    // Three members send concurrently; every member sees one contiguous, ordered log.
    let senders = 3;
    let per_sender = 30u64;
    let mut tasks = Vec::new();
    for (s, mut member) in members.drain(..senders).enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for n in 0..per_sender {
                acks.push(
                    member
                        .send_text(conversation, n + 1, &format!("s{s} n{n}"))
                        .await
                        .seq,
                );
            }
            (member, acks)
        }));
    }
    let mut all_acks = Vec::new();
    for task in tasks {
        let (member, acks) = task.await.unwrap();
        assert!(
            acks.windows(2).all(|w| w[0] < w[1]),
            "one sender's acks are increasing"
        );
        all_acks.extend(acks);
        members.push(member);
    }
    all_acks.sort_unstable();
    let total = senders as u64 * per_sender;
    assert_eq!(
        all_acks,
        (head + 1..=head + total).map(Seq).collect::<Vec<_>>()
    );

    // The owner (who did not send) receives every message once, in sequence order.
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < total {
        match owner.event().await {
            Event::Message(m) => seqs.push(m.seq),
            Event::Membership(m) => assert!(m.seq.0 <= head),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seqs, (head + 1..=head + total).map(Seq).collect::<Vec<_>>());
    // And history holds the same log, without holes.
    let page = owner
        .history(conversation, HistoryFrom::After(Seq(head)), 100)
        .await;
    assert_eq!(
        page.entries.iter().map(Entry::seq).collect::<Vec<_>>(),
        seqs
    );
    assert_eq!(page.head, Seq(head + total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_op_id_is_stored_once() {
    let daemon = TestDaemon::start();
    let (mut alice, alice_id) = user(&daemon, "alice", 1).await;
    let (mut bob, bob_id) = user(&daemon, "bob", 1).await;
    let dm = ConversationId::direct(alice_id, bob_id);
    let first = alice.send_text(dm, 42, "once").await;
    let again = alice.send_text(dm, 42, "once").await;
    assert_eq!(
        (again.seq, again.ts, again.duplicate),
        (first.seq, first.ts, true)
    );
    let next = alice.send_text(dm, 43, "twice").await;
    assert_eq!(next.seq, Seq(2));
    let page = bob.history(dm, HistoryFrom::After(Seq(0)), 10).await;
    assert_eq!(page.entries.len(), 2);
    // Bob got each message once.
    assert_eq!(bob.message().await.seq, Seq(1));
    assert_eq!(bob.message().await.seq, Seq(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_rights_are_enforced() {
    let daemon = TestDaemon::start();
    let (mut owner, _) = user(&daemon, "owner", 1).await;
    let (mut member, member_id) = user(&daemon, "member", 1).await;
    let (mut outsider, outsider_id) = user(&daemon, "outsider", 1).await;
    let room = owner.create_room("club", false).await;
    let conversation = ConversationId::Room(room);
    assert_eq!(
        owner
            .code(Request::CreateRoom {
                name: "club".into(),
                invite_only: false
            })
            .await,
        ErrorCode::ROOM_NAME_TAKEN
    );
    assert!(matches!(
        member.ok(Request::JoinRoom { room }).await,
        Response::Room(_)
    ));
    assert_eq!(
        member.code(Request::JoinRoom { room }).await,
        ErrorCode::ALREADY_MEMBER
    );

    // A non-member can neither send nor read.
    assert_eq!(
        outsider.code(send(conversation, 1, "hello?")).await,
        ErrorCode::NOT_MEMBER
    );
    let history = Request::History(HistoryQuery {
        conversation,
        from: HistoryFrom::Latest,
        limit: 10,
        order: Order::NewestFirst,
        thread: None,
    });
    assert_eq!(outsider.code(history.clone()).await, ErrorCode::NOT_MEMBER);
    assert!(matches!(member.ok(history).await, Response::History(_)));

    // A member cannot kick; the owner can ban; a banned user cannot rejoin.
    assert_eq!(
        member
            .code(Request::Kick {
                room,
                user: outsider_id
            })
            .await,
        ErrorCode::FORBIDDEN
    );
    assert_eq!(
        owner
            .code(Request::Kick {
                room,
                user: outsider_id
            })
            .await,
        ErrorCode::NOT_MEMBER
    );
    assert!(matches!(
        outsider.ok(Request::JoinRoom { room }).await,
        Response::Room(_)
    ));
    assert_eq!(
        member
            .code(Request::Ban {
                room,
                user: outsider_id
            })
            .await,
        ErrorCode::FORBIDDEN
    );
    owner
        .ok(Request::Ban {
            room,
            user: outsider_id,
        })
        .await;
    assert_eq!(
        outsider.code(send(conversation, 2, "still here?")).await,
        ErrorCode::NOT_MEMBER
    );
    assert_eq!(
        outsider.code(Request::JoinRoom { room }).await,
        ErrorCode::BANNED
    );
    owner
        .ok(Request::Unban {
            room,
            user: outsider_id,
        })
        .await;
    assert!(matches!(
        outsider.ok(Request::JoinRoom { room }).await,
        Response::Room(_)
    ));

    // Admins kick members but not the owner; the owner leaves only after a transfer.
    owner
        .ok(Request::SetRole {
            room,
            user: member_id,
            role: Role::Admin,
        })
        .await;
    member
        .ok(Request::Kick {
            room,
            user: outsider_id,
        })
        .await;
    let Response::Room(info) = outsider
        .ok(Request::FindRoom {
            name: "club".into(),
        })
        .await
    else {
        panic!()
    };
    assert_eq!((info.room, info.members), (room, 2));
    assert_eq!(
        owner.code(Request::LeaveRoom { room }).await,
        ErrorCode::FORBIDDEN
    );
    owner
        .ok(Request::SetRole {
            room,
            user: member_id,
            role: Role::Owner,
        })
        .await;
    owner.ok(Request::LeaveRoom { room }).await;
    let Response::Members(page) = member
        .ok(Request::Members {
            room,
            after: None,
            limit: 10,
        })
        .await
    else {
        panic!()
    };
    assert_eq!(
        page.members
            .iter()
            .map(|m| (m.name.as_str(), m.role))
            .collect::<Vec<_>>(),
        [("member", Role::Owner)]
    );

    // Invite-only rooms need an invitation.
    let secret = member.create_room("secret", true).await;
    assert_eq!(
        outsider.code(Request::JoinRoom { room: secret }).await,
        ErrorCode::INVITE_REQUIRED
    );
    member
        .ok(Request::Invite {
            room: secret,
            user: outsider_id,
        })
        .await;
    assert!(matches!(
        outsider.ok(Request::JoinRoom { room: secret }).await,
        Response::Room(_)
    ));
    // Repeating an invitation changes nothing; kicking an invited user withdraws it.
    let (mut guest, guest_id) = user(&daemon, "guest", 1).await;
    let head = |page: HistoryPage| page.head;
    let before = head(
        member
            .history(ConversationId::Room(secret), HistoryFrom::Latest, 1)
            .await,
    );
    for _ in 0..2 {
        member
            .ok(Request::Invite {
                room: secret,
                user: guest_id,
            })
            .await;
    }
    let after = head(
        member
            .history(ConversationId::Room(secret), HistoryFrom::Latest, 1)
            .await,
    );
    assert_eq!(after.0, before.0 + 1, "one invitation, one log entry");
    member
        .ok(Request::Kick {
            room: secret,
            user: guest_id,
        })
        .await;
    assert_eq!(
        guest.code(Request::JoinRoom { room: secret }).await,
        ErrorCode::INVITE_REQUIRED
    );
    assert_eq!(
        outsider
            .code(Request::JoinRoom {
                room: RoomId(9_999)
            })
            .await,
        ErrorCode::UNKNOWN_ROOM
    );

    // Every membership change is in the room's log, contiguous from the creation.
    let page = member
        .history(conversation, HistoryFrom::After(Seq(0)), 100)
        .await;
    let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq().0).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // And each change that succeeded above is there, in order (the refused ones are not).
    let kinds: Vec<&str> = page
        .entries
        .iter()
        .map(|e| match e {
            Entry::Message(_) => "message",
            Entry::Membership(m) => match m.change {
                MembershipChange::Created { .. } => "created",
                MembershipChange::Joined => "joined",
                MembershipChange::Left => "left",
                MembershipChange::Invited => "invited",
                MembershipChange::Kicked => "kicked",
                MembershipChange::Banned => "banned",
                MembershipChange::Unbanned => "unbanned",
                MembershipChange::RoleChanged(_) => "role",
            },
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "created", "joined", "joined", "banned", "unbanned", "joined", "role", "kicked",
            "role", "role", "left"
        ]
    );
    assert!(matches!(
        &page.entries[0],
        Entry::Membership(MembershipEvent {
            change: MembershipChange::Created { .. },
            ..
        })
    ));
    // The ownership transfer is two entries: the new owner, and the old owner made admin.
    let roles: Vec<(UserId, Role)> = page
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Membership(MembershipEvent {
                subject,
                change: MembershipChange::RoleChanged(role),
                ..
            }) => Some((*subject, *role)),
            _ => None,
        })
        .collect();
    let owner_id = match &page.entries[0] {
        Entry::Membership(m) => m.actor,
        other => panic!("not the creation: {other:?}"),
    };
    assert_eq!(
        roles,
        [
            (member_id, Role::Admin),
            (member_id, Role::Owner),
            (owner_id, Role::Admin)
        ]
    );
}
