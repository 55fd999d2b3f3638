//! Requests, one module per kind (as mini-redis's `cmd/`): each checks what it can on the
//! connection's shard and passes the request on (to a conversation's owner, the read pool, a
//! registry) or answers it. This is only the dispatcher: one arm per request kind, with the
//! session gate after the requests allowed without one (ping, accounts, authentication).

mod conversations;
mod presence;
mod rooms;
mod send;

use std::rc::Rc;

use bytes::Bytes;
use chat_protocol::{ConversationId, ErrorCode, Request, RequestId, Response, UserId};

use super::{Conn, catch_up, reply};
use crate::shard::conversation::Input;
use crate::shard::{ConnRef, Origin, Shard, ShardMsg, accounts, error, response};
pub(crate) use presence::presence;
pub(super) use presence::unwatch;

/// A request being handled: where it came from and how to answer it.
struct Asked<'a> {
    shard: &'a Rc<Shard>,
    conn: &'a Rc<Conn>,
    id: RequestId,
    origin: Origin,
}

impl Asked<'_> {
    fn answer(&self, frame: Bytes) {
        reply(self.shard, self.conn.id, self.id, frame);
    }

    fn fail(&self, code: ErrorCode, reason: &str) {
        self.answer(error(self.id, code, reason));
    }

    /// Passes `input` to the owner of `conversation`.
    fn to_owner(&self, conversation: ConversationId, input: Input) {
        self.shard.send(
            self.shard.shared.owner_of(conversation),
            ShardMsg::Conversation {
                conversation,
                op: input,
            },
        );
    }

    fn pong(&self) {
        let server_time = crate::shard::now_ms();
        self.answer(response(self.id, Response::Pong { server_time }));
    }
}

/// A request arrived on `conn`.
pub(super) fn arrived(shard: &Rc<Shard>, conn: &Rc<Conn>, id: RequestId, request: Request) {
    shard.metrics().requests[crate::metrics::request_kind(&request)].increment(1);
    let at = ConnRef {
        shard: shard.id,
        conn: conn.id,
    };
    let user = conn.session().map_or(UserId(0), |(user, _)| user);
    let asked = Asked {
        shard,
        conn,
        id,
        origin: Origin {
            at,
            request: id,
            user,
        },
    };
    let origin = asked.origin;
    match request {
        Request::Ping => asked.pong(),
        Request::Register { name, password } => accounts::register(shard, origin, name, password),
        Request::Login { name, password } => accounts::login(shard, origin, name, password),
        Request::Authenticate(auth) => authenticate(&asked, auth),
        _ if conn.session().is_none() => asked.fail(ErrorCode::NOT_AUTHENTICATED, ""),
        Request::Send(message) => send::send(&asked, message),
        Request::History(query) => {
            asked.to_owner(query.conversation, Input::History { origin, query })
        }
        Request::Mark {
            conversation,
            marker,
            seq,
        } => asked.to_owner(
            conversation,
            Input::Mark {
                origin,
                marker,
                seq,
            },
        ),
        Request::Conversations { after, limit } => conversations::list(&asked, after, limit),
        Request::LookupUsers(refs) => conversations::lookup_users(&asked, refs),
        Request::CreateRoom { name, invite_only } => rooms::create(&asked, name, invite_only),
        Request::FindRoom { name } => rooms::find(&asked, name),
        Request::JoinRoom { room } => rooms::join(&asked, room),
        Request::LeaveRoom { room } => rooms::act(&asked, room, rooms::RoomAction::Leave),
        Request::Invite { room, user } => rooms::invite(&asked, room, user),
        Request::Kick { room, user } => rooms::act(&asked, room, rooms::RoomAction::Kick(user)),
        Request::Ban { room, user } => rooms::ban(&asked, room, user),
        Request::Unban { room, user } => rooms::act(&asked, room, rooms::RoomAction::Unban(user)),
        Request::SetRole { room, user, role } => {
            rooms::act(&asked, room, rooms::RoomAction::SetRole(user, role));
        }
        Request::Members { room, after, limit } => {
            rooms::act(&asked, room, rooms::RoomAction::Members { after, limit });
        }
        Request::Sync(resume) => {
            if conn.state.borrow().gate.catching_up() {
                return asked.fail(ErrorCode::INVALID_REQUEST, "a catch-up is already running");
            }
            if catch_up(shard, conn, resume, Some(id)) {
                asked.answer(response(id, Response::Ok));
            }
        }
        Request::Presence {
            subscribe,
            unsubscribe,
        } => presence::change(&asked, subscribe, unsubscribe),
    }
}

/// `Authenticate`: once per connection, one at a time, with at most `MAX_RESUME_CURSORS`
/// cursors (refused before authenticating: one answer per request).
fn authenticate(asked: &Asked<'_>, auth: chat_protocol::Auth) {
    let conn = asked.conn;
    if conn.session().is_some() {
        return asked.fail(ErrorCode::ALREADY_AUTHENTICATED, "");
    }
    if conn.state.borrow().authenticating {
        return asked.fail(
            ErrorCode::INVALID_REQUEST,
            "authentication already in progress",
        );
    }
    let cursors = auth.resume.as_ref().map_or(0, |r| r.cursors.len());
    if cursors > chat_protocol::limits::MAX_RESUME_CURSORS {
        return asked.fail(ErrorCode::INVALID_REQUEST, "too many resume cursors");
    }
    let mut state = conn.state.borrow_mut();
    state.authenticating = true;
    state.resume = auth.resume;
    drop(state);
    accounts::authenticate(asked.shard, conn.id, Some(asked.id), &auth.token);
}
