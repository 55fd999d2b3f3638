//! Room requests: names are checked here, the rooms-per-user limit and the existence of a
//! target user on the read pool, and everything else by the room's owner
//! ([`crate::shard::conversation`]).

use std::sync::Arc;

use chat_protocol::{ConversationId, ErrorCode, RoomId, UserId};

use super::Asked;
use crate::shard::conversation::Input;
pub(super) use crate::shard::conversation::RoomAction;
use crate::shard::{Origin, Shard, error};

/// `CreateRoom`: a valid name, a new room id, within the user's room limit.
pub(super) fn create(asked: &Asked<'_>, name: String, invite_only: bool) {
    if let Err(code) = chat_protocol::names::check_room_name(&name) {
        return asked.fail(code, "");
    }
    let room = asked.shard.shared.ids.room(&name);
    let origin = asked.origin;
    let input = Input::Create {
        origin,
        name,
        invite_only,
    };
    within_room_limit(asked.shard, origin, ConversationId::Room(room), input);
}

/// `JoinRoom`: within the user's room limit.
pub(super) fn join(asked: &Asked<'_>, room: RoomId) {
    let origin = asked.origin;
    let input = Input::Room {
        origin,
        action: RoomAction::Join,
    };
    within_room_limit(asked.shard, origin, ConversationId::Room(room), input);
}

/// A room action checked by the room's owner alone.
pub(super) fn act(asked: &Asked<'_>, room: RoomId, action: RoomAction) {
    let origin = asked.origin;
    asked.to_owner(ConversationId::Room(room), Input::Room { origin, action });
}

/// `Invite` and `Ban` create rows for their target: only for users that exist (ids are handed
/// out in order, so a row for a future id would pass to whoever gets it).
pub(super) fn invite(asked: &Asked<'_>, room: RoomId, user: UserId) {
    if_user_exists(asked, user, room, RoomAction::Invite(user));
}

pub(super) fn ban(asked: &Asked<'_>, room: RoomId, user: UserId) {
    if_user_exists(asked, user, room, RoomAction::Ban(user));
}

/// `FindRoom`: the name is resolved on the pool; the room's owner answers with its live state.
pub(super) fn find(asked: &Asked<'_>, name: String) {
    let shared = Arc::clone(&asked.shard.shared);
    let (origin, id) = (asked.origin, asked.id);
    asked.shard.read_then(origin, move |store| {
        Ok(match store.room_by_name(&name)? {
            None => Err(error(id, ErrorCode::UNKNOWN_ROOM, "")),
            Some(record) => {
                let conversation = ConversationId::Room(record.id);
                let op = Input::Room {
                    origin,
                    action: RoomAction::Info,
                };
                shared.to_owner_blocking(conversation, op);
                Ok(())
            }
        })
    });
}

/// Passes a room action to the room's owner if `user` has an account (checked on the read
/// pool), else answers `UNKNOWN_USER`.
fn if_user_exists(asked: &Asked<'_>, user: UserId, room: RoomId, action: RoomAction) {
    let shared = Arc::clone(&asked.shard.shared);
    let origin = asked.origin;
    asked.shard.read_then(origin, move |store| {
        if store.user(user)?.is_none() {
            return Ok(Err(error(
                origin.request,
                ErrorCode::UNKNOWN_USER,
                "no user with that id",
            )));
        }
        let conversation = ConversationId::Room(room);
        let op = Input::Room { origin, action };
        shared.to_owner_blocking(conversation, op);
        Ok(Ok(()))
    });
}

/// Passes `op` (a room creation or join) to the room's owner if the user is in fewer than
/// `max_rooms_per_user` rooms, counted on the read pool when the request arrives.
fn within_room_limit(shard: &Shard, origin: Origin, conversation: ConversationId, op: Input) {
    let max = shard.shared.config().limits.max_rooms_per_user;
    let shared = Arc::clone(&shard.shared);
    shard.read_then(origin, move |store| {
        if store.room_count(origin.user, max)? >= max {
            return Ok(Err(error(origin.request, ErrorCode::TOO_MANY_ROOMS, "")));
        }
        shared.to_owner_blocking(conversation, op);
        Ok(Ok(()))
    });
}
