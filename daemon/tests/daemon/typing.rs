//! Typing indicators travel as QUIC datagrams, are never stored, and carry their expiry.

use std::time::Duration;

use chat_protocol::*;

use crate::TestDaemon;
use crate::client::Client;

fn typing_frame(conversation: ConversationId, active: bool) -> Vec<u8> {
    encode_frame_to_vec(&ClientFrame::Typing(TypingUpdate {
        conversation,
        active,
    }))
    .unwrap()
}

/// Keeps sending `active` (datagrams are unreliable) until the peer gets a typing datagram
/// with that state; datagrams left over from earlier sends (another state) are skipped.
async fn typing_seen(
    from: &Client,
    to: &Client,
    conversation: ConversationId,
    active: bool,
    via_stream: Option<&mut Client>,
) -> TypingEvent {
    let mut via_stream = via_stream;
    for _ in 0..50 {
        match via_stream.as_deref_mut() {
            Some(client) => {
                client
                    .write(&ClientFrame::Typing(TypingUpdate {
                        conversation,
                        active,
                    }))
                    .await
            }
            None => from
                .conn
                .send_datagram(typing_frame(conversation, active).into())
                .unwrap(),
        }
        if let Ok(Ok(bytes)) =
            tokio::time::timeout(Duration::from_millis(200), to.conn.read_datagram()).await
        {
            match decode_datagram::<ServerFrame>(&bytes).unwrap() {
                ServerFrame::Event(Event::Typing(event)) if event.active == active => {
                    return event;
                }
                ServerFrame::Event(Event::Typing(_)) => {}
                other => panic!("unexpected datagram {other:?}"),
            }
        }
    }
    panic!("no typing datagram arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_arrives_as_a_datagram_and_is_not_stored() {
    let daemon = TestDaemon::start();
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let (mut bob, b) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    let dm = ConversationId::direct(a.user, b.user);

    let event = typing_seen(&alice, &bob, dm, true, None).await;
    assert_eq!(
        (event.conversation, event.user, event.active),
        (dm, a.user, true)
    );
    assert_eq!(event.expires_in_ms, limits::TYPING_TTL_MS);

    // On the stream it works too, and the answer still comes as a datagram: only the stream
    // ever sends `active: false`, so its arrival is the stream's doing.
    let (mut alice2, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 2).await;
    let event = typing_seen(&alice, &bob, dm, false, Some(&mut alice2)).await;
    assert_eq!((event.user, event.active), (a.user, false));

    // Nothing was stored.
    let page = bob.history(dm, HistoryFrom::Latest, 10).await;
    assert!(page.entries.is_empty());
    assert_eq!(page.head, Seq(0));
    alice.send_text(dm, 1, "done typing").await;
    assert_eq!(bob.message().await.seq, Seq(1));
}
