//! What the session's frames ask for: the hello's answer, authentication (and its outcome:
//! the session set, placed and registered, the catch-up started), typing updates passed to
//! their conversation's owner, requests to their handlers.

use chat_protocol::{ErrorBody, HelloOk, Response, ServerFrame, Timestamp, TypingUpdate};

use super::*;
use crate::shard::accounts::{self, Authenticated};
use crate::shard::conversation::Input;
use crate::shard::{encode, response};

/// Handles one decoded frame; `false` when the connection is closing.
pub(super) fn frame_arrived(shard: &Rc<Shard>, conn: &Rc<Conn>, frame: ClientFrame) -> bool {
    if let ClientFrame::Request { request, .. } = &frame {
        // Every request read counts, those the session refuses too.
        shard.metrics().requests[crate::metrics::request_kind(request)].increment(1);
    }
    match conn.with(|s| s.frame(frame, Instant::now())) {
        Step::Done => {}
        Step::HelloOk => {
            let frame = hello_ok(shard, None);
            conn.with(|s| s.control_bytes(frame));
        }
        Step::Authenticate { token, request } => {
            accounts::authenticate(shard, conn.id, request, &token);
        }
        Step::Request { id, request, user } => requests::arrived(shard, conn, id, request, user),
        Step::Typing { user, update } => typing(shard, conn, user, update),
        Step::Closed => return false,
    }
    true
}

/// A typing update from a datagram: handled as on the stream.
pub(super) fn typing_arrived(shard: &Rc<Shard>, conn: &Rc<Conn>, update: TypingUpdate) {
    if let Some(user) = conn.with(|s| s.typing(Instant::now())) {
        typing(shard, conn, user, update);
    }
}

/// A typing update within the rate: passed to the conversation's owner, which checks
/// membership and fans it out. Never answered, never stored.
fn typing(shard: &Rc<Shard>, conn: &Conn, user: UserId, update: TypingUpdate) {
    let origin = Origin {
        at: ConnRef {
            link: crate::shard::Link::HERE,
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
    shard.to_owner(conversation, op);
}

pub(super) fn hello_ok(shard: &Shard, session: Option<chat_protocol::Session>) -> Bytes {
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
    // Checked here, on the connection's shard, as the session is set (whichever path read
    // the account): an operator's restriction is in place before the shards are told to
    // close its sessions, so a session is either refused here or closed by that order. The
    // same holds for an account another node holds: its orders are noted before they
    // close sessions here, and those since the restriction was read are checked.
    let result = result.and_then(|auth| {
        let shared = &shard.shared;
        let refused = (shared.restriction(auth.user).refuses(auth.issued_at))
            .or_else(|| (shared.peers.orders).refuses(auth.user, auth.issued_at, auth.mark));
        match refused {
            Some(code) => Err(crate::shard::error_body(code, "")),
            None => Ok(auth),
        }
    });
    match result {
        Ok(auth) => start_session(shard, &conn, request, auth),
        Err(body) => {
            conn.with(Session::refused);
            match request {
                None => {
                    let hello = hello_ok(shard, None);
                    conn.with(|s| {
                        s.control_bytes(hello);
                        s.control(ServerFrame::Error {
                            id: None,
                            error: body,
                        });
                    });
                }
                Some(id) => {
                    let frame = encode(&ServerFrame::Error {
                        id: Some(id),
                        error: body,
                    });
                    conn.with(|s| s.reply(id, frame));
                }
            }
        }
    }
}

/// The session is set: registered with the user's registry shard, placed on this shard (before
/// the catch-up reads the store, see `placement`), answered, and the resume started.
fn start_session(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    request: Option<RequestId>,
    auth: Authenticated,
) {
    let (name, expires_at) = (auth.name.clone(), auth.expires_at);
    let Some(started) = conn.with(|s| s.started(auth)) else {
        return;
    };
    let session = chat_protocol::Session {
        user: started.user,
        name,
        device: started.device,
        expires_at: Timestamp(expires_at.saturating_mul(1000)),
    };
    let at = ConnRef {
        link: crate::shard::Link::HERE,
        shard: shard.id,
        conn: conn.id,
    };
    let (user, device) = (started.user, started.device);
    let online = registry::Op::Online { user, device, at };
    shard.send(shard.shared.registry_of(user), ShardMsg::Registry(online));
    if shard.conns.borrow_mut().session_started(user, conn.id) {
        shard.shared.placement.arrived(user, shard.id);
    }
    conn.unauthenticated.done();
    shard.metrics().sessions.increment(1);
    let sessions = &shard.shared.sessions;
    sessions.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    match request {
        None => {
            let hello = hello_ok(shard, Some(session));
            conn.with(|s| s.control_bytes(hello));
        }
        Some(id) => {
            let frame = response(id, Response::Session(session));
            conn.with(|s| s.reply(id, frame));
        }
    }
    if let Some(resume) = started.resume {
        catch_up(shard, conn, resume, request);
    }
}
