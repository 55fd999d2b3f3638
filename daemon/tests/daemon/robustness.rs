//! Bad input closes only the connection that sent it; everyone else keeps chatting.

use chat_protocol::*;

use crate::TestDaemon;
use crate::client::Client;

/// Reads until the stream ends; returns the error codes and goodbye codes seen.
async fn drain(client: &mut Client) -> (Vec<ErrorCode>, Vec<GoodbyeCode>) {
    let mut seen = (Vec::new(), Vec::new());
    while let Some(frame) = client.next_frame().await {
        match frame {
            ServerFrame::Error { id: None, error } => seen.0.push(error.code),
            ServerFrame::Goodbye(g) => seen.1.push(g.code),
            _ => {}
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversize_frames_close_only_their_connection() {
    let daemon = TestDaemon::start();
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let (mut bob, b) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    let dm = ConversationId::direct(a.user, b.user);

    // A frame with a valid header and a body that is not a ClientFrame.
    let (mut garbage, _) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token("mallory"), 1).await;
    garbage
        .write_raw(&[5, 0, 0, 0, 1, 0xee, 0xee, 0xee, 0xee])
        .await;
    assert_eq!(
        drain(&mut garbage).await,
        (
            vec![ErrorCode::MALFORMED_FRAME],
            vec![GoodbyeCode::PROTOCOL_VIOLATION]
        )
    );

    // A length prefix above the client frame limit, before any hello.
    let mut huge = Client::connect(daemon.addr, &daemon.cert).await;
    huge.write_raw(&u32::MAX.to_le_bytes()).await;
    assert_eq!(
        drain(&mut huge).await,
        (
            vec![ErrorCode::FRAME_TOO_LARGE],
            vec![GoodbyeCode::PROTOCOL_VIOLATION]
        )
    );

    // An unknown protocol version.
    let mut future = Client::connect(daemon.addr, &daemon.cert).await;
    future.write_raw(&[4, 0, 0, 0, 9, 1, 1, 3]).await;
    assert_eq!(
        drain(&mut future).await,
        (
            vec![ErrorCode::UNSUPPORTED_VERSION],
            vec![GoodbyeCode::UNSUPPORTED_VERSION]
        )
    );

    // After the hello agreed on a version, a frame of version 9 is an invalid frame.
    let (mut later, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("eve"), 1).await;
    later.write_raw(&[4, 0, 0, 0, 9, 1, 1, 3]).await;
    assert_eq!(
        drain(&mut later).await,
        (
            vec![ErrorCode::MALFORMED_FRAME],
            vec![GoodbyeCode::PROTOCOL_VIOLATION]
        )
    );

    // A request before the hello.
    let mut rude = Client::connect(daemon.addr, &daemon.cert).await;
    rude.write(&ClientFrame::Request {
        id: RequestId(1),
        request: Request::Ping,
    })
    .await;
    assert_eq!(
        drain(&mut rude).await,
        (
            vec![ErrorCode::UNEXPECTED_FRAME],
            vec![GoodbyeCode::PROTOCOL_VIOLATION]
        )
    );

    // Alice and Bob did not notice.
    assert_eq!(alice.send_text(dm, 1, "still here").await.seq, Seq(1));
    assert_eq!(bob.message().await.body, b"still here");
    // Bad requests get typed errors and keep the connection.
    let big = Request::Send(SendMessage {
        conversation: dm,
        op: OpId(2),
        content_type: ContentType::BINARY,
        reply_to: None,
        body: vec![0; 16_385],
        mentions: Vec::new(),
    });
    assert_eq!(alice.code(big).await, ErrorCode::BODY_TOO_LARGE);
    let history = HistoryQuery {
        conversation: dm,
        from: HistoryFrom::Latest,
        limit: 0,
        order: Order::OldestFirst,
        thread: None,
    };
    assert_eq!(
        alice.code(Request::History(history)).await,
        ErrorCode::INVALID_REQUEST
    );
    assert_eq!(alice.send_text(dm, 3, "and still").await.seq, Seq(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_collections_get_invalid_request_and_the_connection_goes_on() {
    let daemon = TestDaemon::start();
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    let notes = ConversationId::Notes(a.user);
    // Each within the frame limit (a few KB), each beyond its collection's limit.
    let cursors = (0..2_049)
        .map(|_| Cursor {
            conversation: notes,
            seq: Seq(0),
        })
        .collect();
    let oversize = [
        Request::Sync(Resume { cursors }),
        Request::LookupUsers(vec![UserRef::Id(a.user); 4_000]),
        Request::Presence {
            subscribe: vec![a.user; 8_200],
            unsubscribe: Vec::new(),
        },
        // Pages beyond the page limit: refused, not waited for.
        Request::History(HistoryQuery {
            conversation: notes,
            from: HistoryFrom::Latest,
            limit: u16::MAX,
            order: Order::NewestFirst,
            thread: None,
        }),
        Request::Conversations {
            after: None,
            limit: u16::MAX,
        },
    ];
    for request in oversize {
        let what = format!("{:.40}", format!("{request:?}"));
        let error = alice.request(request).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::INVALID_REQUEST, "{what}: {error:?}");
    }
    // At the limits they are taken.
    let cursors = (0..1_024)
        .map(|_| Cursor {
            conversation: notes,
            seq: Seq(0),
        })
        .collect();
    assert!(matches!(
        alice.ok(Request::Sync(Resume { cursors })).await,
        Response::Ok
    ));
    assert!(matches!(
        alice
            .ok(Request::LookupUsers(vec![UserRef::Id(a.user); 256]))
            .await,
        Response::Users(users) if users.len() == 256
    ));
    assert!(matches!(
        alice.ok(Request::Ping).await,
        Response::Pong { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_with_an_oversize_client_name_is_refused() {
    let daemon = TestDaemon::start();
    let mut client = Client::connect(daemon.addr, &daemon.cert).await;
    client
        .write(&ClientFrame::Hello(Hello {
            versions: SUPPORTED_VERSIONS,
            client: "x".repeat(65),
            device: DeviceId(1),
            auth: None,
        }))
        .await;
    let (errors, goodbyes) = drain(&mut client).await;
    assert_eq!(errors, [ErrorCode::INVALID_REQUEST]);
    assert_eq!(goodbyes, [GoodbyeCode::PROTOCOL_VIOLATION]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stream_ends_the_session_as_a_protocol_violation() {
    let daemon = TestDaemon::start();
    let (mut bob, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    for unidirectional in [false, true] {
        let (mut alice, _) =
            Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
        // The handshake's stream credit (WebTransport's) lets a native client open one more
        // stream; the daemon sees it once it carries a byte, and ends the session.
        if unidirectional {
            let mut send = alice.conn.open_uni().await.unwrap();
            send.write_all(b"x").await.unwrap();
        } else {
            let (mut send, _recv) = alice.conn.open_bi().await.unwrap();
            send.write_all(b"x").await.unwrap();
        }
        assert_eq!(
            drain(&mut alice).await,
            (vec![], vec![GoodbyeCode::PROTOCOL_VIOLATION])
        );
        assert_eq!(
            alice.conn.closed().await,
            quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(4),
                reason: bytes::Bytes::from_static(b"goodbye"),
            })
        );
        // Nobody else noticed.
        assert!(matches!(bob.ok(Request::Ping).await, Response::Pong { .. }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_carry_only_typing() {
    let daemon = TestDaemon::start();
    let (mut alice, a) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    // A request in a datagram is dropped, unanswered; the session goes on.
    let ping = encode_frame_to_vec(&ClientFrame::Request {
        id: RequestId(77),
        request: Request::Ping,
    })
    .unwrap();
    alice.conn.send_datagram(ping.into()).unwrap();
    // A barrier: the daemon handles a connection's datagrams in order, so once a typing
    // datagram sent after the ping reached bob, the ping was handled (and dropped).
    let (bob, b) = Client::login(daemon.addr, &daemon.cert, &daemon.token("bob"), 1).await;
    let dm = ConversationId::direct(a.user, b.user);
    let typing = encode_frame_to_vec(&ClientFrame::Typing(TypingUpdate {
        conversation: dm,
        active: true,
    }))
    .unwrap();
    let mut delivered = false;
    for _ in 0..50 {
        alice.conn.send_datagram(typing.clone().into()).unwrap();
        let wait = std::time::Duration::from_millis(200);
        if let Ok(Ok(_)) = tokio::time::timeout(wait, bob.conn.read_datagram()).await {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "no typing datagram reached bob");
    let notes = ConversationId::Notes(a.user);
    assert_eq!(
        alice.send_text(notes, 1, "after the datagram").await.seq,
        Seq(1)
    );
    let answered = |f: &ServerFrame| matches!(f, ServerFrame::Response { id, .. } if id.0 == 77);
    assert!(
        !alice.other.iter().any(answered),
        "a request in a datagram was answered on the stream: {:?}",
        alice.other
    );
    // Nor as a datagram (a negative check: nothing else could be observed).
    let wait = std::time::Duration::from_millis(200);
    if let Ok(Ok(bytes)) = tokio::time::timeout(wait, alice.conn.read_datagram()).await {
        let frame = decode_datagram::<ServerFrame>(&bytes).unwrap();
        assert!(!answered(&frame), "answered as a datagram: {frame:?}");
    }
}
