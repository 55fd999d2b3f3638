//! Gapless resume: a device that reconnects (to the same daemon or after a restart) gets
//! exactly what it missed, in order, once, then `CaughtUp`; an offline user gets everything
//! since their delivered marker; a gap above the bound is announced, never silent.

use chat_protocol::*;

use crate::client::Client;
use crate::{TestDaemon, test_config};

/// Events up to `CaughtUp`: (conversation, seq) of replayed entries, gaps, and the count.
async fn catch_up(client: &mut Client) -> (Vec<(ConversationId, u64)>, Vec<Gap>, u32) {
    let (mut entries, mut gaps) = (Vec::new(), Vec::new());
    loop {
        match client.event().await {
            Event::Message(m) => entries.push((m.conversation, m.seq.0)),
            Event::Membership(m) => entries.push((m.conversation, m.seq.0)),
            Event::Gap(gap) => gaps.push(gap),
            Event::CaughtUp { replayed } => return (entries, gaps, replayed),
            other => panic!("unexpected {other:?} during a catch-up"),
        }
    }
}

fn cursor(conversation: ConversationId, seq: u64) -> Cursor {
    Cursor {
        conversation,
        seq: Seq(seq),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_device_gets_exactly_what_it_missed_also_after_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let mut daemon = TestDaemon::start_in(temp.path(), test_config(temp.path()));
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let (mut bob, b) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    let dm = ConversationId::direct(a.user, b.user);
    let room = alice.create_room("team", false).await;
    let team = ConversationId::Room(room);
    bob.ok(Request::JoinRoom { room }).await; // team: 1 created, 2 joined
    for op in 1..=3 {
        alice.send_text(dm, op, "before").await;
    }
    // Bob saw dm 1..3 and team up to 2 (his join), then drops off mid-stream.
    for seq in 1..=3 {
        assert_eq!(bob.message().await.seq, Seq(seq));
    }
    drop(bob);
    for op in 4..=8 {
        alice.send_text(dm, op, "missed").await;
    }
    for op in 100..=102 {
        alice.send_text(team, op, "missed in the room").await;
    }

    let cursors = vec![cursor(dm, 3), cursor(team, 2)];
    let (mut bob, _) = Client::resume(
        daemon.addr,
        &daemon.cert,
        &daemon.token("bob"),
        1,
        cursors.clone(),
    )
    .await;
    let (mut entries, gaps, replayed) = catch_up(&mut bob).await;
    assert!(gaps.is_empty());
    assert_eq!(replayed, 8);
    // In order per conversation, each exactly once.
    entries.sort_by_key(|(c, s)| (*c == team, *s));
    let expected: Vec<_> = (4..=8)
        .map(|s| (dm, s))
        .chain((3..=5).map(|s| (team, s)))
        .collect();
    assert_eq!(entries, expected);
    // Live traffic follows.
    alice.send_text(dm, 9, "live").await;
    assert_eq!(bob.message().await.seq, Seq(9));
    drop(bob);

    // The same after a daemon restart, from the same cursors.
    drop(alice);
    daemon.stop();
    let daemon = TestDaemon::start_in(temp.path(), test_config(temp.path()));
    let (mut bob, _) =
        Client::resume(daemon.addr, &daemon.cert, &daemon.token("bob"), 1, cursors).await;
    let (mut entries, gaps, replayed) = catch_up(&mut bob).await;
    assert!(gaps.is_empty());
    assert_eq!(replayed, 9);
    entries.sort_by_key(|(c, s)| (*c == team, *s));
    let expected: Vec<_> = (4..=9)
        .map(|s| (dm, s))
        .chain((3..=5).map(|s| (team, s)))
        .collect();
    assert_eq!(entries, expected);

    // Sync on a live connection replays from new cursors too.
    let Response::Ok = bob
        .ok(Request::Sync(Resume {
            cursors: vec![cursor(dm, 8), cursor(team, 5)],
        }))
        .await
    else {
        panic!()
    };
    let (entries, _, replayed) = catch_up(&mut bob).await;
    assert_eq!((entries, replayed), (vec![(dm, 9)], 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_user_gets_everything_since_their_delivered_marker() {
    let daemon = TestDaemon::start();
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    // Carol exists but has never connected a device that resumes.
    let (carol, c) = Client::login(daemon.addr, &daemon.cert, &daemon.token("carol"), 1).await;
    drop(carol);
    let dm = ConversationId::direct(a.user, c.user);
    for op in 1..=4 {
        alice.send_text(dm, op, "while you were away").await;
    }
    let (mut carol, _) = Client::resume(
        daemon.addr,
        &daemon.cert,
        &daemon.token("carol"),
        7,
        Vec::new(),
    )
    .await;
    let (entries, gaps, replayed) = catch_up(&mut carol).await;
    assert!(gaps.is_empty());
    assert_eq!(
        (entries, replayed),
        ((1..=4).map(|s| (dm, s)).collect::<Vec<_>>(), 4)
    );
    // Once delivered is marked, the next device starts after it.
    carol
        .ok(Request::Mark {
            conversation: dm,
            marker: Marker::Delivered,
            seq: Seq(4),
        })
        .await;
    alice.send_text(dm, 5, "one more").await;
    let (mut tablet, _) = Client::resume(
        daemon.addr,
        &daemon.cert,
        &daemon.token("carol"),
        8,
        Vec::new(),
    )
    .await;
    let (entries, _, replayed) = catch_up(&mut tablet).await;
    assert_eq!((entries, replayed), (vec![(dm, 5)], 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_above_the_bound_is_announced() {
    let daemon = TestDaemon::start_with(|c| {
        c.limits.max_resume_gap = 5;
        c.limits.max_replay = 5;
    });
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let notes = ConversationId::Notes(a.user);
    for op in 1..=20 {
        alice.send_text(notes, op, "note").await;
    }
    let (mut phone, _) = Client::resume(
        daemon.addr,
        &daemon.cert,
        &daemon.token("alice"),
        2,
        vec![cursor(notes, 2)],
    )
    .await;
    let (entries, gaps, replayed) = catch_up(&mut phone).await;
    assert_eq!(
        gaps,
        vec![Gap {
            conversation: notes,
            from: Seq(3),
            to: Seq(15)
        }]
    );
    assert_eq!(
        (entries, replayed),
        ((16..=20).map(|s| (notes, s)).collect::<Vec<_>>(), 5)
    );
    // The gap is what history pages: nothing lost.
    let page = phone.history(notes, HistoryFrom::After(Seq(2)), 13).await;
    assert_eq!(
        page.entries.iter().map(|e| e.seq().0).collect::<Vec<_>>(),
        (3..=15).collect::<Vec<_>>()
    );
}
