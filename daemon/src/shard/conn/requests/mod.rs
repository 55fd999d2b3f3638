//! Requests, one module per kind (as mini-redis's `cmd/`): each checks what it can on the
//! connection's shard and passes the request on (to a conversation's owner, the read pool, a
//! registry) or answers it. This is only the dispatcher: one arm per request kind. The
//! session gate (which requests need a session, `Authenticate`'s rules) is the
//! [`Session`](crate::shard::session::Session)'s.

mod conversations;
mod presence;
mod rooms;
mod send;

use std::rc::Rc;

use bytes::Bytes;
use chat_protocol::{ConversationId, ErrorCode, Request, RequestId, Response, UserId};

use super::{Conn, catch_up};
use crate::shard::conversation::Input;
use crate::shard::{ConnRef, Origin, Shard, accounts, error, response};
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
        self.conn.with(|s| s.reply(self.id, frame));
    }

    fn fail(&self, code: ErrorCode, reason: &str) {
        self.answer(error(self.id, code, reason));
    }

    /// Passes `input` to the owner of `conversation`.
    fn to_owner(&self, conversation: ConversationId, input: Input) {
        self.shard.to_owner(conversation, input);
    }

    fn pong(&self) {
        let server_time = crate::shard::now_ms();
        self.answer(response(self.id, Response::Pong { server_time }));
    }
}

/// A request the session let through arrived on `conn`, from `user` (0 before
/// authentication).
pub(super) fn arrived(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    id: RequestId,
    request: Request,
    user: UserId,
) {
    let at = ConnRef {
        link: crate::shard::Link::HERE,
        shard: shard.id,
        conn: conn.id,
    };
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
        // The session started authenticating it (`Step::Authenticate`).
        Request::Authenticate(_) => {}
        Request::Send(message) => send::send(&asked, message),
        Request::Edit(edit) => send::edit(&asked, edit),
        Request::Delete(delete) => send::delete(&asked, delete),
        Request::React(react) => send::react(&asked, react),
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
