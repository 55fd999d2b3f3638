//! Rooms: creation, membership (join, leave, invite, kick, ban, unban, roles), member pages
//! and the room's description. Each action is checked against the actor's role, applied to
//! the membership in memory and to the next commit's rows, and logged as a membership entry.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use chat_protocol::{
    Chain, ConversationId, Entry, ErrorCode, MembershipChange, MembershipEvent, Response, Role,
    RoomId, RoomInfo, UserId,
};

use super::{Conversation, Ctx, Effect, Pending, Refusal, check_page, reply};
use crate::shard::Origin;
use crate::store::writer::Batch;
use crate::store::{Cf, MemberState, RoomRecord, keys, outbox, to_json};

/// Membership operations.
#[derive(Debug, bincode::Encode, bincode::Decode)]
pub(crate) enum RoomAction {
    Join,
    Leave,
    Invite(UserId),
    Kick(UserId),
    Ban(UserId),
    Unban(UserId),
    SetRole(UserId, Role),
    Members {
        after: Option<UserId>,
        limit: u16,
    },
    /// The room's public description (for `FindRoom`).
    Info,
}

/// A room's record and people.
pub(crate) struct Room {
    record: RoomRecord,
    /// Members, invitations and bans, ordered by user id (for member pages).
    people: BTreeMap<UserId, MemberState>,
    member_count: u32,
}

impl Room {
    pub(super) fn new(record: RoomRecord, people: Vec<(UserId, MemberState)>) -> Room {
        let people: BTreeMap<_, _> = people.into_iter().collect();
        let member_count = people
            .values()
            .filter(|s| matches!(s, MemberState::Member(_)))
            .count();
        Room {
            record,
            people,
            member_count: u32::try_from(member_count).unwrap_or(u32::MAX),
        }
    }

    pub(super) fn role(&self, user: UserId) -> Option<Role> {
        match self.people.get(&user) {
            Some(MemberState::Member(role)) => Some(*role),
            _ => None,
        }
    }

    pub(super) fn members(&self) -> impl Iterator<Item = UserId> + '_ {
        self.people
            .iter()
            .filter_map(|(u, s)| matches!(s, MemberState::Member(_)).then_some(*u))
    }

    fn owner(&self) -> UserId {
        self.people
            .iter()
            .find_map(|(u, s)| (*s == MemberState::Member(Role::Owner)).then_some(*u))
            .unwrap_or_default()
    }

    fn info(&self) -> RoomInfo {
        RoomInfo {
            room: self.record.id,
            name: self.record.name.clone(),
            invite_only: self.record.invite_only,
            owner: self.owner(),
            members: self.member_count,
        }
    }

    /// Invitations and bans beyond which no new one is taken: twice the member limit.
    fn crowded(&self, max_members: u32) -> bool {
        let others = self.people.len().saturating_sub(self.member_count as usize);
        others >= 2 * max_members as usize
    }
}

/// Ranks roles for the outranking rules: no role (not a member) below every role.
fn rank(role: Option<Role>) -> u8 {
    role.map_or(0, |r| r as u8 + 1)
}

fn refused(code: ErrorCode, reason: &'static str) -> Result<Option<Applied>, Refusal> {
    Err(Refusal { code, reason })
}

/// A membership change applied in memory and to the batch, to be logged.
struct Applied {
    subject: UserId,
    change: MembershipChange,
    /// Someone the event concerns who is not in the audience afterwards (the departed,
    /// the invited, kicked or banned).
    notify: Option<UserId>,
}

/// A room being changed, with the writes of the next commit.
struct Edit<'a> {
    id: RoomId,
    room: &'a mut Room,
    batch: &'a mut Batch,
    actor: UserId,
    max_members: u32,
}

impl Edit<'_> {
    /// Sets (or removes) a person's membership row.
    fn set(&mut self, user: UserId, state: Option<MemberState>) {
        let key = keys::member(self.id, user).to_vec();
        match state {
            Some(s) => {
                self.room.people.insert(user, s);
                self.batch.put(Cf::Members, key, vec![s.to_byte()]);
            }
            None => {
                self.room.people.remove(&user);
                self.batch.delete(Cf::Members, key);
            }
        }
    }

    /// Lists (or unlists) the room among a user's conversations.
    fn listed(&mut self, user: UserId, yes: bool) {
        let key = keys::user_conversation(user, ConversationId::Room(self.id)).to_vec();
        if yes {
            self.batch.put(Cf::UserConversations, key, Vec::new());
        } else {
            self.batch.delete(Cf::UserConversations, key);
        }
    }

    fn actor_role(&self) -> Option<Role> {
        self.room.role(self.actor)
    }

    fn join(&mut self) -> Result<Option<Applied>, Refusal> {
        match self.room.people.get(&self.actor) {
            Some(MemberState::Member(_)) => return refused(ErrorCode::ALREADY_MEMBER, ""),
            Some(MemberState::Banned(_)) => return refused(ErrorCode::BANNED, ""),
            Some(MemberState::Invited) => {}
            None if self.room.record.invite_only => {
                return refused(ErrorCode::INVITE_REQUIRED, "");
            }
            None => {}
        }
        if self.room.member_count >= self.max_members {
            return refused(ErrorCode::ROOM_FULL, "");
        }
        self.room.member_count += 1;
        self.set(self.actor, Some(MemberState::Member(Role::Member)));
        self.listed(self.actor, true);
        Ok(Some(Applied {
            subject: self.actor,
            change: MembershipChange::Joined,
            notify: None,
        }))
    }

    fn leave(&mut self) -> Result<Option<Applied>, Refusal> {
        match self.actor_role() {
            None => return refused(ErrorCode::NOT_MEMBER, ""),
            Some(Role::Owner) => {
                return refused(
                    ErrorCode::FORBIDDEN,
                    "the owner must transfer ownership before leaving",
                );
            }
            Some(_) => {}
        }
        self.room.member_count -= 1;
        self.set(self.actor, None);
        self.listed(self.actor, false);
        Ok(Some(Applied {
            subject: self.actor,
            change: MembershipChange::Left,
            notify: Some(self.actor),
        }))
    }

    fn invite(&mut self, user: UserId) -> Result<Option<Applied>, Refusal> {
        if rank(self.actor_role()) < rank(Some(Role::Admin)) {
            return refused(ErrorCode::FORBIDDEN, "only admins and the owner invite");
        }
        match self.room.people.get(&user) {
            Some(MemberState::Member(_)) => return refused(ErrorCode::ALREADY_MEMBER, ""),
            Some(MemberState::Banned(_)) => {
                return refused(ErrorCode::BANNED, "the user is banned");
            }
            // Already invited: nothing changes, nothing is logged.
            Some(MemberState::Invited) => return Ok(None),
            None if self.room.crowded(self.max_members) => return too_many(),
            None => {}
        }
        self.set(user, Some(MemberState::Invited));
        Ok(Some(Applied {
            subject: user,
            change: MembershipChange::Invited,
            notify: Some(user),
        }))
    }

    /// `Kick` (`ban` false) or `Ban`: admins and the owner, on people they outrank.
    fn remove(&mut self, user: UserId, ban: bool) -> Result<Option<Applied>, Refusal> {
        let actor = self.actor_role();
        let target = self.room.people.get(&user).copied();
        let target_role = self.room.role(user);
        if rank(actor) < rank(Some(Role::Admin)) || rank(actor) <= rank(target_role) {
            return refused(ErrorCode::FORBIDDEN, "");
        }
        if user == self.actor {
            return refused(ErrorCode::FORBIDDEN, "");
        }
        // Kicking an invited user withdraws the invitation.
        if target.is_none() && !ban {
            return refused(ErrorCode::NOT_MEMBER, "the user is not a member");
        }
        if matches!(target, Some(MemberState::Banned(_))) {
            return Ok(None);
        }
        if ban && target.is_none() && self.room.crowded(self.max_members) {
            return too_many();
        }
        if target_role.is_some() {
            self.room.member_count -= 1;
            self.listed(user, false);
        }
        let change = if ban {
            let banned = MemberState::Banned(target_role.unwrap_or(Role::Member));
            self.set(user, Some(banned));
            MembershipChange::Banned
        } else {
            self.set(user, None);
            MembershipChange::Kicked
        };
        Ok(Some(Applied {
            subject: user,
            change,
            notify: Some(user),
        }))
    }

    fn unban(&mut self, user: UserId) -> Result<Option<Applied>, Refusal> {
        let actor = self.actor_role();
        if rank(actor) < rank(Some(Role::Admin)) {
            return refused(ErrorCode::FORBIDDEN, "");
        }
        let Some(MemberState::Banned(was)) = self.room.people.get(&user).copied() else {
            return refused(ErrorCode::INVALID_REQUEST, "the user is not banned");
        };
        // Who could not have banned them (an admin, for a banned admin) cannot unban them
        // either.
        if rank(actor) <= rank(Some(was)) {
            return refused(ErrorCode::FORBIDDEN, "only the owner unbans a former admin");
        }
        self.set(user, None);
        Ok(Some(Applied {
            subject: user,
            change: MembershipChange::Unbanned,
            notify: Some(user),
        }))
    }

    /// `SetRole`: the owner only; giving `Owner` away makes the giver an admin.
    fn set_role(&mut self, user: UserId, role: Role) -> Result<Option<Applied>, Refusal> {
        if self.actor_role() != Some(Role::Owner) {
            return refused(ErrorCode::FORBIDDEN, "only the owner sets roles");
        }
        let target_role = self.room.role(user);
        if target_role.is_none() {
            return refused(ErrorCode::NOT_MEMBER, "the user is not a member");
        }
        if user == self.actor {
            return refused(
                ErrorCode::INVALID_REQUEST,
                "the owner cannot change their own role",
            );
        }
        if target_role == Some(role) {
            return Ok(None);
        }
        self.set(user, Some(MemberState::Member(role)));
        if role == Role::Owner {
            self.set(self.actor, Some(MemberState::Member(Role::Admin)));
        }
        Ok(Some(Applied {
            subject: user,
            change: MembershipChange::RoleChanged(role),
            notify: None,
        }))
    }
}

fn too_many() -> Result<Option<Applied>, Refusal> {
    refused(
        ErrorCode::ROOM_FULL,
        "too many invitations and bans in this room",
    )
}

impl Conversation {
    /// Starts a new room: its record, its name, the creator as owner, the creation entry.
    pub(super) fn create_room(
        &mut self,
        origin: Origin,
        name: String,
        invite_only: bool,
        ctx: &Ctx<'_>,
    ) {
        let ConversationId::Room(room_id) = self.id else {
            return;
        };
        let record = RoomRecord {
            id: room_id,
            name: name.clone(),
            invite_only,
            created_at: ctx.now,
        };
        let batch = &mut self.queued_batch;
        batch.unless_exists = Some((Cf::RoomNames, name.clone().into_bytes()));
        batch.put(
            Cf::RoomNames,
            name.clone().into_bytes(),
            keys::id(room_id.0).to_vec(),
        );
        batch.put(Cf::Rooms, keys::id(room_id.0).to_vec(), to_json(&record));
        let owner = MemberState::Member(Role::Owner);
        batch.put(
            Cf::Members,
            keys::member(room_id, origin.user).to_vec(),
            vec![owner.to_byte()],
        );
        batch.put(
            Cf::UserConversations,
            keys::user_conversation(origin.user, self.id).to_vec(),
            Vec::new(),
        );
        let room = Room::new(record, vec![(origin.user, owner)]);
        let info = room.info();
        self.room = Some(room);
        self.refresh_audience();
        let created = MembershipChange::Created { name, invite_only };
        self.queue_membership(
            origin,
            origin.user,
            created,
            Some(Response::Room(info)),
            None,
            ctx,
        );
    }

    /// A membership operation: checked, applied, logged, answered once committed.
    pub(super) fn room_action(
        &mut self,
        origin: Origin,
        action: RoomAction,
        ctx: &Ctx<'_>,
        out: &mut Vec<Effect>,
    ) {
        let (ConversationId::Room(id), Some(room)) = (self.id, self.room.as_mut()) else {
            return reply(out, origin, super::refuse(ErrorCode::UNKNOWN_ROOM, ""));
        };
        let actor = room.role(origin.user);
        let mut edit = Edit {
            id,
            room,
            batch: &mut self.queued_batch,
            actor: origin.user,
            max_members: ctx.max_room_members,
        };
        let needs_member = !matches!(action, RoomAction::Join | RoomAction::Info);
        if needs_member && actor.is_none() {
            return reply(out, origin, super::refuse(ErrorCode::NOT_MEMBER, ""));
        }
        let applied = match action {
            RoomAction::Members { after, limit } => {
                return members_page(edit.room, origin, after, limit, ctx, out);
            }
            RoomAction::Info => return reply(out, origin, Ok(Response::Room(edit.room.info()))),
            RoomAction::Join => edit.join(),
            RoomAction::Leave => edit.leave(),
            RoomAction::Invite(user) => edit.invite(user),
            RoomAction::Kick(user) => edit.remove(user, false),
            RoomAction::Ban(user) => edit.remove(user, true),
            RoomAction::Unban(user) => edit.unban(user),
            RoomAction::SetRole(user, role) => edit.set_role(user, role),
        };
        let Applied {
            subject,
            change,
            notify,
        } = match applied {
            Err(refusal) => return reply(out, origin, Err(refusal)),
            // Nothing changes, nothing is logged.
            Ok(None) => return reply(out, origin, Ok(Response::Ok)),
            Ok(Some(applied)) => applied,
        };
        let answer = match change {
            MembershipChange::Joined => self.room.as_ref().map(|r| Response::Room(r.info())),
            _ => None,
        };
        // Joins notify the new audience (including the joiner); departures the old one plus
        // the departed, through `notify`.
        self.refresh_audience();
        let transfer = change == MembershipChange::RoleChanged(Role::Owner);
        let answer = Some(answer.unwrap_or(Response::Ok));
        self.queue_membership(origin, subject, change, answer, notify, ctx);
        if transfer {
            // The previous owner is now an admin: say so in the log too (one answer only).
            let demoted = MembershipChange::RoleChanged(Role::Admin);
            self.queue_membership(origin, origin.user, demoted, None, None, ctx);
        }
    }

    /// Queues a membership entry (and its outbox events).
    fn queue_membership(
        &mut self,
        origin: Origin,
        subject: UserId,
        change: MembershipChange,
        answer: Option<Response>,
        also_notify: Option<UserId>,
        ctx: &Ctx<'_>,
    ) {
        let seq = self.next_seq();
        if self.outbox {
            if let (MembershipChange::Created { name, invite_only }, ConversationId::Room(room)) =
                (&change, self.id)
            {
                self.queued_batch.event(outbox::Event::RoomCreated {
                    room,
                    name: name.clone(),
                    invite_only: *invite_only,
                    owner: origin.user,
                });
            }
            self.queued_batch.event(outbox::Event::MembershipChanged {
                conversation: self.id.into(),
                entry_seq: seq,
                actor: origin.user,
                subject,
                change: outbox::Change::from(&change),
            });
        }
        let entry = Entry::Membership(MembershipEvent {
            conversation: self.id,
            seq,
            ts: ctx.now,
            actor: origin.user,
            subject,
            change,
            chain: Chain::default(),
        });
        let audience = match also_notify {
            Some(extra) if !self.audience.contains(&extra) => {
                self.audience.iter().copied().chain([extra]).collect()
            }
            _ => Arc::clone(&self.audience),
        };
        self.queued.push(Pending {
            origin,
            entry,
            audience,
            reply: answer,
            waiters: Vec::new(),
            digest: [0; 32],
        });
    }
}

/// `Members`: a page of members in user id order, after `after`; their names are read by
/// the owner ([`Effect::ReadMembers`]).
fn members_page(
    room: &Room,
    origin: Origin,
    after: Option<UserId>,
    limit: u16,
    ctx: &Ctx<'_>,
    out: &mut Vec<Effect>,
) {
    if let Err(refusal) = check_page(limit, ctx.max_page) {
        return reply(out, origin, Err(refusal));
    }
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut page: Vec<(UserId, Role)> = room
        .people
        .range((start, Bound::Unbounded))
        .filter_map(|(u, s)| match s {
            MemberState::Member(role) => Some((*u, *role)),
            _ => None,
        })
        .take(usize::from(limit) + 1)
        .collect();
    let next = (page.len() > usize::from(limit)).then(|| {
        page.truncate(usize::from(limit));
        page.last().map(|(u, _)| *u)
    });
    out.push(Effect::ReadMembers {
        to: origin,
        room: room.record.id,
        page,
        next: next.flatten(),
    });
}
