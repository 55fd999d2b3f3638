//! Accounts and authentication: each success and each failure with its own code.

use chat_protocol::*;

use crate::TestDaemon;
use crate::client::Client;

fn register(name: &str, password: &str) -> Request {
    Request::Register {
        name: name.into(),
        password: password.into(),
    }
}

fn login(name: &str, password: &str) -> Request {
    Request::Login {
        name: name.into(),
        password: password.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_and_authenticate() {
    // A limit other than the protocol's ceiling: HelloOk carries the configured one.
    let daemon = TestDaemon::start_with(|c| c.limits.max_body = 1_000);
    let mut anon = Client::connect(daemon.addr, &daemon.cert).await;
    let ok = anon.hello(None, 1).await;
    assert_eq!(ok.version, PROTOCOL_VERSION);
    assert!(ok.session.is_none());
    assert_eq!(ok.limits.max_body, 1_000);

    // Only register, login, authenticate and ping before authentication.
    assert!(matches!(
        anon.ok(Request::Ping).await,
        Response::Pong { .. }
    ));
    assert_eq!(
        anon.code(Request::Conversations {
            after: None,
            limit: 10
        })
        .await,
        ErrorCode::NOT_AUTHENTICATED
    );

    let Response::Token(grant) = anon.ok(register("alice", "correct horse")).await else {
        panic!()
    };
    assert_eq!(
        anon.code(register("alice", "another one")).await,
        ErrorCode::USERNAME_TAKEN
    );
    assert_eq!(
        anon.code(register("Alice!", "correct horse")).await,
        ErrorCode::INVALID_USERNAME
    );
    assert_eq!(
        anon.code(register("bob", "short")).await,
        ErrorCode::INVALID_PASSWORD
    );
    assert_eq!(
        anon.code(login("alice", "wrong horse")).await,
        ErrorCode::WRONG_PASSWORD
    );
    assert_eq!(
        anon.code(login("nobody", "whatever1")).await,
        ErrorCode::UNKNOWN_USER
    );
    let Response::Token(again) = anon.ok(login("alice", "correct horse")).await else {
        panic!()
    };
    assert_eq!(again.user, grant.user);

    let Response::Session(session) = anon
        .ok(Request::Authenticate(Auth {
            token: again.token.clone(),
            resume: None,
        }))
        .await
    else {
        panic!()
    };
    assert_eq!((session.user, session.name.as_str()), (grant.user, "alice"));
    assert_eq!(
        anon.code(Request::Authenticate(Auth {
            token: again.token.clone(),
            resume: None
        }))
        .await,
        ErrorCode::ALREADY_AUTHENTICATED
    );

    // The token also authenticates a new connection's hello.
    let (_c, s) = Client::login(daemon.addr, &daemon.cert, &grant.token, 2).await;
    assert_eq!(s.user, grant.user);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_distinct_codes() {
    let daemon = TestDaemon::start();
    let keys =
        chatd::token::Keys::load(&chatd::config::AuthConfig::default(), &daemon.dir).unwrap();
    let now = chatd::unix_now();
    let forged =
        chatd::token::Keys::from_secrets(&[("local", b"not the daemon's secret, at all!")]);
    let other_key =
        chatd::token::Keys::from_secrets(&[("elsewhere", b"not the daemon's secret, at all!")]);
    let cases = [
        (
            keys.mint("alice", now - 7200, now - 3600),
            ErrorCode::TOKEN_EXPIRED,
        ),
        (
            forged.mint("alice", now, now + 3600),
            ErrorCode::TOKEN_INVALID,
        ),
        (
            other_key.mint("alice", now, now + 3600),
            ErrorCode::TOKEN_UNKNOWN_KEY,
        ),
        ("not a token".to_owned(), ErrorCode::TOKEN_MALFORMED),
    ];
    for (token, code) in cases {
        let mut client = Client::connect(daemon.addr, &daemon.cert).await;
        let ok = client.hello(Some(&token), 1).await;
        assert!(ok.session.is_none());
        let error = loop {
            if let Some(ServerFrame::Error { id: None, error }) = client.other.pop_front() {
                break error;
            }
            match client.next_frame().await.unwrap() {
                ServerFrame::Error { id: None, error } => break error,
                other => client.other.push_back(other),
            }
        };
        assert_eq!(error.code, code, "{}", error.reason);
        // The connection stays, anonymous.
        assert_eq!(
            client
                .code(Request::Conversations {
                    after: None,
                    limit: 1
                })
                .await,
            ErrorCode::NOT_AUTHENTICATED
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_minted_token_creates_the_account() {
    let daemon = TestDaemon::start();
    let (mut carol, session) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token("carol"), 1).await;
    assert_eq!(session.name, "carol");
    // Same account on the next connection; it has no password.
    let (_again, second) =
        Client::login(daemon.addr, &daemon.cert, &daemon.token("carol"), 2).await;
    assert_eq!(second.user, session.user);
    assert_eq!(
        carol.code(login("carol", "whatever1")).await,
        ErrorCode::WRONG_PASSWORD
    );
    let Response::Users(users) = carol
        .ok(Request::LookupUsers(vec![
            UserRef::Name("carol".into()),
            UserRef::Name("ghost".into()),
        ]))
        .await
    else {
        panic!()
    };
    assert_eq!(
        users,
        vec![UserInfo {
            user: session.user,
            name: "carol".into()
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_connection_is_closed_after_the_timeout() {
    let daemon = TestDaemon::start_with(|c| {
        c.auth.auth_timeout_secs = 1;
    });
    let mut client = Client::connect(daemon.addr, &daemon.cert).await;
    client.hello(None, 1).await;
    let mut saw = (false, false);
    while let Some(frame) = client.next_frame().await {
        match frame {
            ServerFrame::Error { id: None, error } => {
                saw.0 |= error.code == ErrorCode::AUTH_TIMEOUT
            }
            ServerFrame::Goodbye(g) => saw.1 |= g.code == GoodbyeCode::AUTH_TIMEOUT,
            _ => {}
        }
    }
    assert_eq!(saw, (true, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_authenticated_connection_outlives_the_auth_timeout() {
    // A client that says hello with a token and then only listens sends nothing after the
    // hello; the auth deadline armed before its session was set must not close it.
    let daemon = TestDaemon::start_with(|c| {
        c.auth.auth_timeout_secs = 1;
    });
    let mut clients = Vec::new();
    for device in 0..8 {
        let token = daemon.token(&format!("idle{device}"));
        let (client, _) = Client::login(daemon.addr, &daemon.cert, &token, device).await;
        clients.push(client);
    }
    // An anonymous connection opened after them all: once its own deadline has closed it,
    // every deadline armed for the others has expired too.
    let mut control = Client::connect(daemon.addr, &daemon.cert).await;
    control.hello(None, 99).await;
    let mut goodbye = None;
    while let Some(frame) = control.next_frame().await {
        if let ServerFrame::Goodbye(g) = frame {
            goodbye = Some(g.code);
        }
    }
    assert_eq!(goodbye, Some(GoodbyeCode::AUTH_TIMEOUT));
    for client in &mut clients {
        assert!(
            matches!(
                client.request(Request::Ping).await,
                Ok(Response::Pong { .. })
            ),
            "other frames: {:?}",
            client.other
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_with_token_expired_when_its_token_expires() {
    let daemon = TestDaemon::start();
    let keys =
        chatd::token::Keys::load(&chatd::config::AuthConfig::default(), &daemon.dir).unwrap();
    let now = chatd::unix_now();
    let (mut client, session) = Client::login(
        daemon.addr,
        &daemon.cert,
        &keys.mint("alice", now, now + 5),
        1,
    )
    .await;
    assert_eq!(session.expires_at, Timestamp((now + 5) * 1000));
    assert!(matches!(
        client.ok(Request::Ping).await,
        Response::Pong { .. }
    ));
    // At the expiry the daemon says why and closes; the client need not do anything.
    let goodbye = match client.next_frame().await {
        Some(ServerFrame::Goodbye(goodbye)) => goodbye,
        other => panic!("expected a goodbye, got {other:?}"),
    };
    assert_eq!(goodbye.code, GoodbyeCode::TOKEN_EXPIRED, "{goodbye:?}");
    let closed = client.conn.closed().await;
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == 6u32.into()),
        "{closed:?}"
    );
    // A fresh token works again.
    let (mut again, _) = Client::login(daemon.addr, &daemon.cert, &daemon.token("alice"), 1).await;
    assert!(matches!(
        again.ok(Request::Ping).await,
        Response::Pong { .. }
    ));
}
