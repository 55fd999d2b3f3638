//! The session: frames as they arrive, `Hello`, typing updates, and authentication's outcome
//! (the session set, placed and registered, the catch-up started).

use super::*;

/// Handles one decoded frame; `false` when the connection is closing.
pub(super) fn frame_arrived(shard: &Rc<Shard>, conn: &Rc<Conn>, frame: ClientFrame) -> bool {
    let has_hello = conn.state.borrow().hello.is_some();
    match frame {
        ClientFrame::Hello(hello) if !has_hello => hello_arrived(shard, conn, hello),
        ClientFrame::Hello(_) => unexpected(conn, "a second hello"),
        ClientFrame::Request { .. } | ClientFrame::Typing(_) if !has_hello => {
            unexpected(conn, "hello must come first")
        }
        ClientFrame::Request { id, request } => {
            conn.state.borrow_mut().in_flight += 1;
            requests::arrived(shard, conn, id, request);
            true
        }
        ClientFrame::Typing(update) => {
            typing_arrived(shard, conn, update);
            true
        }
    }
}

/// Most typing updates a connection may send per second; more are dropped.
pub(super) const TYPING_PER_SECOND: u32 = 10;

/// A typing update (from a datagram or the stream): passed to the conversation's owner,
/// which checks membership and fans it out. Never answered, never stored.
pub(super) fn typing_arrived(shard: &Rc<Shard>, conn: &Rc<Conn>, update: TypingUpdate) {
    let Some((user, _)) = conn.session() else {
        return;
    };
    let (start, count) = conn.typing.get();
    let now = Instant::now();
    let (start, count) = if now.duration_since(start) >= Duration::from_secs(1) {
        (now, 0)
    } else {
        (start, count)
    };
    if count >= TYPING_PER_SECOND {
        return;
    }
    conn.typing.set((start, count + 1));
    let origin = Origin {
        at: ConnRef {
            shard: shard.id,
            conn: conn.id,
        },
        request: RequestId(0),
        user,
    };
    let conversation = update.conversation;
    let op = Input::Typing {
        origin,
        active: update.active,
    };
    shard.send(
        shard.shared.owner_of(conversation),
        ShardMsg::Conversation { conversation, op },
    );
}

pub(super) fn hello_arrived(shard: &Rc<Shard>, conn: &Rc<Conn>, hello: Hello) -> bool {
    if hello.client.len() > chat_protocol::limits::MAX_CLIENT_NAME {
        conn.push(
            encode(&error_frame(
                None,
                ErrorCode::INVALID_REQUEST,
                "Hello.client is longer than 64 bytes",
            )),
            Kind::Control,
        );
        conn.goodbye(GoodbyeCode::PROTOCOL_VIOLATION, "invalid hello");
        return false;
    }
    let ours = crate::PROTOCOL_VERSIONS;
    if hello.versions.min > ours.max
        || hello.versions.max < ours.min
        || hello.versions.min > hello.versions.max
    {
        conn.push(
            encode(&error_frame(
                None,
                ErrorCode::UNSUPPORTED_VERSION,
                "this daemon speaks version 1",
            )),
            Kind::Control,
        );
        conn.goodbye(
            GoodbyeCode::UNSUPPORTED_VERSION,
            "no protocol version in common",
        );
        return false;
    }
    conn.state.borrow_mut().hello = Some(hello.device);
    match hello.auth {
        None => conn.push(hello_ok(shard, None), Kind::Control),
        Some(auth) => {
            let mut state = conn.state.borrow_mut();
            state.authenticating = true;
            state.resume = auth.resume;
            drop(state);
            accounts::authenticate(shard, conn.id, None, &auth.token);
        }
    }
    true
}

pub(super) fn hello_ok(shard: &Shard, session: Option<Session>) -> Bytes {
    encode(&ServerFrame::HelloOk(HelloOk {
        version: chat_protocol::PROTOCOL_VERSION,
        server: crate::SERVER_NAME.to_owned(),
        session,
        limits: shard.shared.limits,
        server_time: crate::shard::now_ms(),
    }))
}

/// The result of authenticating a connection of this shard.
pub(crate) fn authenticated(
    shard: &Rc<Shard>,
    conn_id: ConnId,
    request: Option<RequestId>,
    result: Result<Authenticated, ErrorBody>,
) {
    let Some(conn) = get(shard, conn_id) else {
        return;
    };
    let Some(device) = conn.state.borrow().hello else {
        return;
    };
    conn.state.borrow_mut().authenticating = false;
    // Checked here, on the connection's shard, as the session is set (whichever path read
    // the account): an operator's restriction is in place before the shards are told to
    // close its sessions, so a session is either refused here or closed by that order.
    let result =
        result.and_then(
            |auth| match shard.shared.restriction(auth.user).refuses(auth.issued_at) {
                Some(code) => Err(crate::shard::error_body(code, "")),
                None => Ok(auth),
            },
        );
    match result {
        Ok(auth) => start_session(shard, &conn, device, request, auth),
        Err(body) => match request {
            None => {
                conn.push(hello_ok(shard, None), Kind::Control);
                conn.push(
                    encode(&ServerFrame::Error {
                        id: None,
                        error: body,
                    }),
                    Kind::Control,
                );
            }
            Some(id) => reply(
                shard,
                conn_id,
                id,
                encode(&ServerFrame::Error {
                    id: Some(id),
                    error: body,
                }),
            ),
        },
    }
}

/// The session is set: registered with the user's registry shard, placed on this shard (before
/// the catch-up reads the store, see `placement`), answered, and the resume started.
fn start_session(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    device: DeviceId,
    request: Option<RequestId>,
    auth: Authenticated,
) {
    let session = Session {
        user: auth.user,
        name: auth.name.clone(),
        device,
        expires_at: Timestamp(auth.expires_at.saturating_mul(1000)),
    };
    let at = ConnRef {
        shard: shard.id,
        conn: conn.id,
    };
    let user = auth.user;
    let online = registry::Op::Online { user, device, at };
    shard.send(shard.shared.registry_of(user), ShardMsg::Registry(online));
    conn.state.borrow_mut().session = Some(auth);
    if shard.conns.borrow_mut().session_started(user, conn.id) {
        shard.shared.placement.arrived(user, shard.id);
    }
    conn.unauthenticated.done();
    shard.metrics().sessions.increment(1);
    let sessions = &shard.shared.sessions;
    sessions.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    match request {
        None => conn.push(hello_ok(shard, Some(session)), Kind::Control),
        Some(id) => reply(shard, conn.id, id, response(id, Response::Session(session))),
    }
    let resume = conn.state.borrow_mut().resume.take();
    if let Some(resume) = resume {
        catch_up(shard, conn, resume, request);
    }
}
