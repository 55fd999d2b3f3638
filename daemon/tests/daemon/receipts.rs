//! Receipts: persisted, monotone delivered/read markers pushed to the other members and to
//! the user's own other devices.

use chat_protocol::*;

use crate::client::Client;
use crate::{TestDaemon, test_config};

async fn receipt(client: &mut Client) -> Receipt {
    loop {
        if let Event::Receipt(r) = client.event().await {
            return r;
        }
    }
}

fn mark(conversation: ConversationId, marker: Marker, seq: u64) -> Request {
    Request::Mark {
        conversation,
        marker,
        seq: Seq(seq),
    }
}

async fn marks(client: &mut Client) -> (Seq, Seq) {
    let conversations = client.conversations().await;
    (conversations[0].delivered, conversations[0].read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_monotone_persisted_and_reach_everyone() {
    let temp = tempfile::tempdir().unwrap();
    let mut daemon = TestDaemon::start_in(temp.path(), test_config(temp.path()));
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let (mut bob, b) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    let (mut bob_phone, _) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 2).await;
    let dm = ConversationId::direct(a.user, b.user);
    for op in 1..=3 {
        alice.send_text(dm, op, &format!("m{op}")).await;
    }

    bob.ok(mark(dm, Marker::Delivered, 3)).await;
    let seen = receipt(&mut alice).await;
    assert_eq!(
        seen,
        Receipt {
            conversation: dm,
            user: b.user,
            marker: Marker::Delivered,
            seq: Seq(3)
        }
    );
    // Bob's other device learns it too.
    assert_eq!(receipt(&mut bob_phone).await, seen);

    bob.ok(mark(dm, Marker::Read, 2)).await;
    // A lower mark is ignored: no event, no change.
    bob.ok(mark(dm, Marker::Read, 1)).await;
    bob.ok(mark(dm, Marker::Delivered, 2)).await;
    assert_eq!(
        receipt(&mut alice).await,
        Receipt {
            conversation: dm,
            user: b.user,
            marker: Marker::Read,
            seq: Seq(2)
        }
    );
    assert_eq!(
        bob.code(mark(dm, Marker::Read, 99)).await,
        ErrorCode::INVALID_REQUEST
    );
    assert_eq!(marks(&mut bob).await, (Seq(3), Seq(2)));
    // Nobody outside the conversation may move markers in it.
    let (mut eve, e) = Client::login(daemon.addr, &daemon.cert, &daemon.token("eve"), 1).await;
    assert_eq!(
        eve.code(mark(dm, Marker::Read, 1)).await,
        ErrorCode::NOT_MEMBER
    );
    let _ = e;

    // Persisted: after a restart the marks are there and still monotone.
    drop((alice, bob, bob_phone, eve));
    daemon.stop();
    let daemon = TestDaemon::start_in(temp.path(), test_config(temp.path()));
    let (mut alice, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let (mut bob, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    assert_eq!(marks(&mut bob).await, (Seq(3), Seq(2)));
    bob.ok(mark(dm, Marker::Read, 2)).await;
    bob.ok(mark(dm, Marker::Read, 3)).await;
    assert_eq!(
        receipt(&mut alice).await.seq,
        Seq(3),
        "the ignored repeat produced no event"
    );
    assert_eq!(marks(&mut bob).await, (Seq(3), Seq(3)));
}
