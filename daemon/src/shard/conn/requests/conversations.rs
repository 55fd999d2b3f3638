//! Reading what a user has: their conversations (with titles, roles, heads and markers) and
//! users looked up by id or name, both on the read pool. `History` and `Mark` go to the
//! conversation's owner, which checks them.

use chat_protocol::{
    ConversationId, ConversationPage, ConversationSummary, ErrorCode, Response, UserInfo, UserRef,
};

use super::Asked;
use crate::shard::{conversation, response};

/// `Conversations`: a page of the user's conversations after `after`.
pub(super) fn list(asked: &Asked<'_>, after: Option<ConversationId>, limit: u16) {
    let (id, user) = (asked.id, asked.origin.user);
    if let Err(refusal) = conversation::check_page(limit, asked.shard.shared.limits.max_page) {
        return asked.fail(refusal.code, refusal.reason);
    }
    asked.shard.read(asked.origin, move |store| {
        let (ids, more) = store.user_conversations(user, after, usize::from(limit))?;
        let mut conversations = Vec::with_capacity(ids.len());
        for c in &ids {
            let (title, role) = match *c {
                ConversationId::Room(room) => {
                    let name = store.room(room)?.map(|r| r.name).unwrap_or_default();
                    let role = match store.member_state(room, user)? {
                        Some(crate::store::MemberState::Member(role)) => Some(role),
                        _ => None,
                    };
                    (name, role)
                }
                ConversationId::Direct { low, high } => {
                    let peer = if low == user { high } else { low };
                    (store.user(peer)?.map(|r| r.name).unwrap_or_default(), None)
                }
                ConversationId::Notes(owner) => {
                    (store.user(owner)?.map(|r| r.name).unwrap_or_default(), None)
                }
            };
            let head = store.head(*c)?;
            let (delivered, read) = store.marks(*c, user)?;
            conversations.push(ConversationSummary {
                conversation: *c,
                title,
                role,
                head,
                delivered,
                read,
            });
        }
        let next = if more { ids.last().copied() } else { None };
        Ok(response(
            id,
            Response::Conversations(ConversationPage {
                conversations,
                next,
            }),
        ))
    });
}

/// `LookupUsers`: the users that exist among `refs`.
pub(super) fn lookup_users(asked: &Asked<'_>, refs: Vec<UserRef>) {
    let id = asked.id;
    if refs.len() > chat_protocol::limits::MAX_USERS_PER_REQUEST {
        return asked.fail(ErrorCode::INVALID_REQUEST, "too many users in one lookup");
    }
    asked.shard.read(asked.origin, move |store| {
        let mut users = Vec::with_capacity(refs.len());
        for r in refs {
            let record = match r {
                UserRef::Id(id) => store.user(id)?,
                UserRef::Name(name) => store.user_by_name(&name)?,
            };
            if let Some(record) = record {
                users.push(UserInfo {
                    user: record.id,
                    name: record.name,
                });
            }
        }
        Ok(response(id, Response::Users(users)))
    });
}
