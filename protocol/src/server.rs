//! Frames the daemon sends: [`ServerFrame`] and everything inside it.
//!
//! As in `client`, declaration order is wire order. Events for one conversation arrive in
//! sequence order on the session stream; `Typing` and `Presence` events may also arrive as
//! QUIC datagrams, unordered and unreliable.

use crate::client::{ContentType, Marker, Role};
use crate::codec::{Decode, Encode};
use crate::codes::{ErrorCode, GoodbyeCode};
use crate::ids::{ConversationId, DeviceId, OpId, RequestId, RoomId, Seq, Timestamp, UserId};

/// Every frame the daemon sends.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ServerFrame {
    /// 0. The answer to `Hello`; the first frame the daemon sends.
    HelloOk(HelloOk),
    /// 1. A request succeeded.
    Response {
        /// The request's id.
        id: RequestId,
        /// The result.
        response: Response,
    },
    /// 2. A request (or, with `id: None`, the hello or the connection) failed.
    Error {
        /// The failed request's id; `None` when the failure is not tied to a request.
        id: Option<RequestId>,
        /// What went wrong.
        error: ErrorBody,
    },
    /// 3. Something happened that the client did not ask for in this exchange.
    Event(Event),
    /// 4. The daemon is closing the connection, and why. The QUIC close follows.
    Goodbye(Goodbye),
}

/// The negotiated session parameters.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HelloOk {
    /// The version both sides now speak; every later frame carries it.
    pub version: u8,
    /// Daemon software and version, for logs (`"chatd/0.1.0"`).
    pub server: String,
    /// `Some` when the hello authenticated the connection.
    pub session: Option<Session>,
    /// The limits this daemon enforces.
    pub limits: Limits,
    /// The daemon's clock, for the client's skew estimate.
    pub server_time: Timestamp,
}

/// Who the connection is authenticated as.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Session {
    /// The user.
    pub user: UserId,
    /// The user's name.
    pub name: String,
    /// The device from the hello.
    pub device: DeviceId,
    /// When the token expires; the daemon closes the session then (`TOKEN_EXPIRED`).
    pub expires_at: Timestamp,
}

/// The limits a daemon enforces: never above the protocol ceilings in `limits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Limits {
    /// Largest client frame (length prefix value).
    pub max_frame: u32,
    /// Largest message body.
    pub max_body: u32,
    /// Largest page (history, members, conversations).
    pub max_page: u16,
    /// Sustained sends per second per user.
    pub send_rate: u32,
    /// Sends a user may burst above the sustained rate.
    pub send_burst: u32,
    /// Requests a connection may have unanswered at once.
    pub max_in_flight: u32,
    /// Rooms one user may belong to.
    pub max_rooms_per_user: u32,
    /// Members one room may have.
    pub max_room_members: u32,
    /// Most entries replayed per conversation on resume before a `Gap` is announced.
    pub max_resume_gap: u32,
    /// A connection with no traffic for this long is closed (milliseconds).
    pub idle_timeout_ms: u32,
    /// An anonymous connection is closed after this long (milliseconds).
    pub auth_timeout_ms: u32,
    /// How long a typing indicator lasts unless refreshed (milliseconds).
    pub typing_ttl_ms: u32,
}

/// A failure: stable code, human-readable reason, and when to retry if retrying can help.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ErrorBody {
    /// The stable code; see `codes::ERROR_CODES`.
    pub code: ErrorCode,
    /// For humans; at most `limits::MAX_REASON` bytes. Do not parse it.
    pub reason: String,
    /// Wait at least this long before retrying (milliseconds).
    pub retry_after_ms: Option<u32>,
}

/// Sent just before the daemon closes the connection.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Goodbye {
    /// Why; also the QUIC application close code.
    pub code: GoodbyeCode,
    /// For humans.
    pub reason: String,
}

/// The success result of a request. Each request's doc names which variant it gets.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Response {
    /// 0. Done, nothing to report.
    Ok,
    /// 1. The connection is now authenticated.
    Session(Session),
    /// 2. An access token.
    Token(TokenGrant),
    /// 3. Answer to `Ping`.
    Pong {
        /// The daemon's clock.
        server_time: Timestamp,
    },
    /// 4. Resolved users.
    Users(Vec<UserInfo>),
    /// 5. A room's public description.
    Room(RoomInfo),
    /// 6. A page of a room's members.
    Members(MemberPage),
    /// 7. A page of the user's conversations.
    Conversations(ConversationPage),
    /// 8. A message is durably stored.
    Sent(SendAck),
    /// 9. A page of a conversation's log.
    History(HistoryPage),
    /// 10. Presence of the users just subscribed to.
    Presence(Vec<PresenceInfo>),
}

/// An access token and what it is for.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TokenGrant {
    /// The account.
    pub user: UserId,
    /// Present it in `Auth::token`.
    pub token: String,
    /// When it stops working.
    pub expires_at: Timestamp,
}

/// A user's id and name.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UserInfo {
    /// The id.
    pub user: UserId,
    /// The name.
    pub name: String,
}

/// A room as anyone who may see it sees it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RoomInfo {
    /// The id (its conversation is `ConversationId::Room(room)`).
    pub room: RoomId,
    /// The unique name.
    pub name: String,
    /// Whether joining needs an invitation.
    pub invite_only: bool,
    /// The owner.
    pub owner: UserId,
    /// How many members it has.
    pub members: u32,
}

/// One member of a room.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Member {
    /// Who.
    pub user: UserId,
    /// Their name.
    pub name: String,
    /// Their role.
    pub role: Role,
}

/// A page of members.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct MemberPage {
    /// The room.
    pub room: RoomId,
    /// Members in ascending user id order.
    pub members: Vec<Member>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<UserId>,
}

/// One of the user's conversations, with where the user stands in it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ConversationSummary {
    /// The conversation.
    pub conversation: ConversationId,
    /// The room name, or the other user's name (your own for notes).
    pub title: String,
    /// The user's role, for rooms.
    pub role: Option<Role>,
    /// The newest sequence number.
    pub head: Seq,
    /// The user's delivered marker.
    pub delivered: Seq,
    /// The user's read marker.
    pub read: Seq,
}

/// A page of conversations.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ConversationPage {
    /// In ascending conversation id order.
    pub conversations: Vec<ConversationSummary>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<ConversationId>,
}

/// The ack of a send: the message is durably stored under `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SendAck {
    /// Where it was stored.
    pub conversation: ConversationId,
    /// The send's op id.
    pub op: OpId,
    /// Its sequence number.
    pub seq: Seq,
    /// The daemon's timestamp of the message.
    pub ts: Timestamp,
    /// `true` when this op id was already stored: this is the original ack, repeated.
    pub duplicate: bool,
    /// The entry's link and digest, so the sender (which gets no event for its own entry)
    /// can follow the chain over it; `None` when a repeat is answered from the stored op ids
    /// (the entry itself comes again in a catch-up).
    pub chain: Option<Appended>,
}

/// A page of a conversation's log.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HistoryPage {
    /// The conversation.
    pub conversation: ConversationId,
    /// In the requested order; contiguous sequence numbers.
    pub entries: Vec<Entry>,
    /// The conversation's newest sequence number when the page was read.
    pub head: Seq,
    /// Whether more entries exist beyond this page in the paging direction.
    pub more: bool,
    /// The link of the entry just before the page's lowest entry (the chain's start before
    /// entry 1), so the page can be checked on its own; `None` for a thread page (its
    /// entries are not consecutive) and for an empty page.
    pub prior: Option<Hash>,
}

/// One entry of a conversation's log.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Entry {
    /// 0. A message.
    Message(Message),
    /// 1. A membership change (rooms only).
    Membership(MembershipEvent),
    /// 2. A message's content replaced by its author.
    Edit(Edit),
    /// 3. A message deleted.
    Deletion(Deletion),
    /// 4. An edit whose content was erased when its message was deleted.
    Erased(Erased),
    /// 5. A reaction added to a message or taken back.
    Reaction(Reaction),
}

impl Entry {
    /// Appends the entry's encoding (the same bytes it has inside a frame) to `out`; storage
    /// keeps log entries in this form.
    pub fn encode_to(&self, out: &mut Vec<u8>) {
        // Encoding into a Vec cannot fail for protocol types.
        let _ = crate::codec::encode_into(self, out);
    }

    /// Decodes an entry written by [`Entry::encode_to`].
    ///
    /// # Errors
    /// [`crate::DecodeError::Invalid`] when the bytes are not exactly one entry.
    pub fn decode_from(bytes: &[u8]) -> Result<Entry, crate::DecodeError> {
        crate::codec::decode_value::<Entry, { crate::limits::MAX_SERVER_FRAME }>(bytes)
            .map_err(crate::DecodeError::Invalid)
    }

    /// The conversation the entry belongs to.
    #[must_use]
    pub fn conversation(&self) -> ConversationId {
        match self {
            Entry::Message(m) => m.conversation,
            Entry::Membership(m) => m.conversation,
            Entry::Edit(e) => e.conversation,
            Entry::Deletion(d) => d.conversation,
            Entry::Erased(e) => e.conversation,
            Entry::Reaction(r) => r.conversation,
        }
    }

    /// The entry's position in its conversation.
    #[must_use]
    pub fn seq(&self) -> Seq {
        match self {
            Entry::Message(m) => m.seq,
            Entry::Membership(m) => m.seq,
            Entry::Edit(e) => e.seq,
            Entry::Deletion(d) => d.seq,
            Entry::Erased(e) => e.seq,
            Entry::Reaction(r) => r.seq,
        }
    }

    /// When the daemon stored the entry; `None` for an erased edit (it keeps no time).
    #[must_use]
    pub fn ts(&self) -> Option<Timestamp> {
        match self {
            Entry::Message(m) => Some(m.ts),
            Entry::Membership(m) => Some(m.ts),
            Entry::Edit(e) => Some(e.ts),
            Entry::Deletion(d) => Some(d.ts),
            Entry::Reaction(r) => Some(r.ts),
            Entry::Erased(_) => None,
        }
    }

    /// The entry's place in the hash chain.
    #[must_use]
    pub fn chain(&self) -> &Chain {
        match self {
            Entry::Message(m) => &m.chain,
            Entry::Membership(m) => &m.chain,
            Entry::Edit(e) => &e.chain,
            Entry::Deletion(d) => &d.chain,
            Entry::Erased(e) => &e.chain,
            Entry::Reaction(r) => &r.chain,
        }
    }

    /// The entry's place in the hash chain, to set.
    pub fn chain_mut(&mut self) -> &mut Chain {
        match self {
            Entry::Message(m) => &mut m.chain,
            Entry::Membership(m) => &mut m.chain,
            Entry::Edit(e) => &mut e.chain,
            Entry::Deletion(d) => &mut d.chain,
            Entry::Erased(e) => &mut e.chain,
            Entry::Reaction(r) => &mut r.chain,
        }
    }

    /// The user whose request added the entry and that request's op id, for the entries a
    /// send, an edit, a delete or a reaction adds (the sender's devices recognise their own).
    #[must_use]
    pub fn op(&self) -> Option<(UserId, OpId)> {
        match self {
            Entry::Message(m) => Some((m.sender, m.op)),
            Entry::Edit(e) => Some((e.sender, e.op)),
            Entry::Deletion(d) => Some((d.actor, d.op)),
            Entry::Reaction(r) => Some((r.sender, r.op)),
            Entry::Membership(_) | Entry::Erased(_) => None,
        }
    }

    /// The live event that announces this entry.
    #[must_use]
    pub fn into_event(self) -> Event {
        match self {
            Entry::Message(m) => Event::Message(m),
            Entry::Membership(m) => Event::Membership(m),
            Entry::Edit(e) => Event::Edit(e),
            Entry::Deletion(d) => Event::Deletion(d),
            Entry::Erased(e) => Event::Erased(e),
            Entry::Reaction(r) => Event::Reaction(r),
        }
    }

    /// What the entry's variable-length fields charge against a decode limit: bytes of
    /// bodies, names and reactions, 9 per listed sequence number or user (a varint's
    /// most), 48 per reaction kind (its two lengths in memory). With a fixed allowance for
    /// the other fields, a bound on both its encoded size and its decoded memory; at most
    /// [`crate::limits::MAX_ENTRY_CHARGE`] (an edited message with every reaction and mention).
    #[must_use]
    pub fn charge(&self) -> usize {
        match self {
            Entry::Message(m) => {
                let edits = m
                    .edited
                    .as_ref()
                    .map_or(0, |e| e.body.len() + 9 * e.versions.len());
                let reactions = m
                    .reactions
                    .iter()
                    .map(|r| 48 + r.reaction.len() + 9 * r.users.len());
                m.body.len() + edits + 9 * m.mentions.len() + reactions.sum::<usize>()
            }
            Entry::Membership(m) => match &m.change {
                MembershipChange::Created { name, .. } => name.len(),
                _ => 0,
            },
            Entry::Edit(e) => e.body.len(),
            Entry::Deletion(d) => 9 * d.erased.len(),
            Entry::Reaction(r) => r.reaction.len(),
            Entry::Erased(_) => 0,
        }
    }
}

impl Event {
    /// The log entry this event announces, or the event itself when it announces none
    /// ([`Entry::into_event`] gives it back).
    ///
    /// # Errors
    /// The event, when it is no log entry.
    // Not an error path: the event comes back whole, moved, as it went in.
    #[allow(clippy::result_large_err)]
    pub fn into_entry(self) -> Result<Entry, Event> {
        match self {
            Event::Message(m) => Ok(Entry::Message(m)),
            Event::Membership(m) => Ok(Entry::Membership(m)),
            Event::Edit(e) => Ok(Entry::Edit(e)),
            Event::Deletion(d) => Ok(Entry::Deletion(d)),
            Event::Erased(e) => Ok(Entry::Erased(e)),
            Event::Reaction(r) => Ok(Entry::Reaction(r)),
            other => Err(other),
        }
    }

    /// The log entry this event announces, if it announces one.
    #[must_use]
    pub fn entry_position(&self) -> Option<(ConversationId, Seq)> {
        match self {
            Event::Message(m) => Some((m.conversation, m.seq)),
            Event::Membership(m) => Some((m.conversation, m.seq)),
            Event::Edit(e) => Some((e.conversation, e.seq)),
            Event::Deletion(d) => Some((d.conversation, d.seq)),
            Event::Erased(e) => Some((e.conversation, e.seq)),
            Event::Reaction(r) => Some((r.conversation, r.seq)),
            Event::Receipt(_)
            | Event::Presence(_)
            | Event::Typing(_)
            | Event::CaughtUp { .. }
            | Event::Gap(_)
            | Event::Lagged => None,
        }
    }
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Message {
    /// Where.
    pub conversation: ConversationId,
    /// Its position.
    pub seq: Seq,
    /// When the daemon stored it.
    pub ts: Timestamp,
    /// Who sent it.
    pub sender: UserId,
    /// The sender's op id (lets the sender's devices recognise their own sends).
    pub op: OpId,
    /// How to interpret `body`.
    pub content_type: ContentType,
    /// The entry it answers.
    pub reply_to: Option<Seq>,
    /// The content as sent (empty once deleted); the current content is `edited`'s when
    /// the message was edited.
    pub body: Vec<u8>,
    /// `Some` once edited: the newest content, and where every edit is in the log.
    pub edited: Option<Edited>,
    /// `Some` once deleted: the body and every edit's body are erased.
    pub deleted: Option<Deleted>,
    /// The members the sender named (`SendMessage::mentions`).
    #[cfg_attr(
        test,
        proptest(strategy = "proptest::collection::vec(proptest::prelude::any::<UserId>(), 0..4)")
    )]
    pub mentions: Vec<UserId>,
    /// The reactions it has now, each with every user who reacted with it (in the order
    /// they did), kinds in the order of their first use; empty once deleted. At most
    /// `limits::MAX_REACTION_KINDS` kinds and `limits::MAX_REACTIONS` reactions in all.
    #[cfg_attr(
        test,
        proptest(
            strategy = "proptest::collection::vec(proptest::prelude::any::<Reactions>(), 0..3)"
        )
    )]
    pub reactions: Vec<Reactions>,
    /// Its place in the conversation's hash chain (`crate::chain`); always the last field.
    pub chain: Chain,
}

impl Message {
    /// The content to show: the newest edit's, or the message's own.
    #[must_use]
    pub fn current(&self) -> (ContentType, &[u8]) {
        match &self.edited {
            Some(e) => (e.content_type, &e.body),
            None => (self.content_type, &self.body),
        }
    }
}

/// A message's edits, carried with it: its current content and the entries of its earlier
/// versions.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Edited {
    /// Every edit's entry, oldest first (the last holds the current content); at most
    /// `limits::MAX_EDITS`.
    pub versions: Vec<Seq>,
    /// When the newest edit was stored.
    pub ts: Timestamp,
    /// The current content type.
    pub content_type: ContentType,
    /// The current content.
    pub body: Vec<u8>,
}

/// One reaction to a message and everyone who reacted with it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Reactions {
    /// The reaction (`ReactMessage::reaction`).
    pub reaction: String,
    /// Who reacted with it, in the order they did; never empty, no user twice.
    #[cfg_attr(
        test,
        proptest(strategy = "proptest::collection::vec(proptest::prelude::any::<UserId>(), 1..4)")
    )]
    pub users: Vec<UserId>,
}

/// Who deleted a message, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Deleted {
    /// The deletion entry.
    pub seq: Seq,
    /// When.
    pub ts: Timestamp,
    /// Who: the author, or a room's admin or owner.
    pub by: UserId,
}

/// An edit: the content its author gave a message, stored at its own sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Edit {
    /// Where.
    pub conversation: ConversationId,
    /// Its position.
    pub seq: Seq,
    /// When the daemon stored it.
    pub ts: Timestamp,
    /// The author (of the message and of the edit).
    pub sender: UserId,
    /// The edit's op id.
    pub op: OpId,
    /// The message edited.
    pub target: Seq,
    /// How to interpret `body`.
    pub content_type: ContentType,
    /// The new content.
    pub body: Vec<u8>,
    /// Its place in the conversation's hash chain (`crate::chain`); always the last field.
    pub chain: Chain,
}

/// A deletion: the message `target` and its edits lost their content.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Deletion {
    /// Where.
    pub conversation: ConversationId,
    /// Its position.
    pub seq: Seq,
    /// When.
    pub ts: Timestamp,
    /// Who deleted the message.
    pub actor: UserId,
    /// The deletion's op id.
    pub op: OpId,
    /// The message deleted.
    pub target: Seq,
    /// The message's edits, now `Entry::Erased`.
    pub erased: Vec<Seq>,
    /// Its place in the conversation's hash chain (`crate::chain`); always the last field.
    pub chain: Chain,
}

/// A reaction added to a message, or taken back, stored at its own sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Reaction {
    /// Where.
    pub conversation: ConversationId,
    /// Its position.
    pub seq: Seq,
    /// When.
    pub ts: Timestamp,
    /// Who reacted.
    pub sender: UserId,
    /// The reaction's op id.
    pub op: OpId,
    /// The message reacted to.
    pub target: Seq,
    /// The reaction.
    pub reaction: String,
    /// `true`: the sender took the reaction back.
    pub removed: bool,
    /// Its place in the conversation's hash chain (`crate::chain`); always the last field.
    pub chain: Chain,
}

/// An edit whose content was erased because its message was deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Erased {
    /// Where.
    pub conversation: ConversationId,
    /// Its position (the edit's).
    pub seq: Seq,
    /// The deleted message.
    pub target: Seq,
    /// The deletion entry.
    pub deletion: Seq,
    /// Its place in the conversation's hash chain (`crate::chain`); always the last field.
    pub chain: Chain,
}

/// A SHA-256 value of the hash chain: a link or a digest.
pub type Hash = [u8; 32];

/// Where an entry is in its conversation's hash chain (`crate::chain`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Chain {
    /// The entry's link: SHA-256 of the link before it and of the entry's digest.
    pub link: Hash,
    /// The entry's digest when its appended content was erased (a deleted message, an
    /// erased edit), since it cannot be computed from what is left; `None` otherwise.
    pub kept: Option<Hash>,
}

impl Chain {
    /// Appends the chain's encoding, as it ends an entry's (33 bytes, 65 with a kept digest).
    pub fn encode_to(&self, out: &mut Vec<u8>) {
        // Encoding into a Vec cannot fail for protocol types.
        let _ = crate::codec::encode_into(self, out);
    }
}

/// An acknowledged entry's place in the hash chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Appended {
    /// The entry's link.
    pub link: Hash,
    /// The entry's digest.
    pub digest: Hash,
}

/// A membership change, stored in the room's log like a message.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct MembershipEvent {
    /// The room's conversation.
    pub conversation: ConversationId,
    /// Its position.
    pub seq: Seq,
    /// When.
    pub ts: Timestamp,
    /// Who did it.
    pub actor: UserId,
    /// Whom it concerns (equal to `actor` for joins and leaves).
    pub subject: UserId,
    /// What changed.
    pub change: MembershipChange,
    /// Its place in the conversation's hash chain (`crate::chain`); always the last field.
    pub chain: Chain,
}

/// What a membership event did.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum MembershipChange {
    /// 0. The room was created (always `Seq(1)`); the actor is the owner.
    Created {
        /// The room name.
        name: String,
        /// Whether joining needs an invitation.
        invite_only: bool,
    },
    /// 1. The subject joined.
    Joined,
    /// 2. The subject left.
    Left,
    /// 3. The subject was invited.
    Invited,
    /// 4. The subject was removed.
    Kicked,
    /// 5. The subject was removed and barred.
    Banned,
    /// 6. The subject's ban was lifted.
    Unbanned,
    /// 7. The subject's role changed.
    RoleChanged(Role),
}

/// A receipt marker moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Receipt {
    /// Where.
    pub conversation: ConversationId,
    /// Whose marker.
    pub user: UserId,
    /// Which marker.
    pub marker: Marker,
    /// Its new value.
    pub seq: Seq,
}

/// Online or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum PresenceStatus {
    /// 0. No connected device.
    Offline,
    /// 1. At least one connected device.
    Online,
}

/// A user's presence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PresenceInfo {
    /// Who.
    pub user: UserId,
    /// Online or offline.
    pub status: PresenceStatus,
    /// When their last device disconnected; `None` if never seen or online.
    pub last_seen: Option<Timestamp>,
}

/// Someone is typing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TypingEvent {
    /// Where.
    pub conversation: ConversationId,
    /// Who.
    pub user: UserId,
    /// `false`: stopped typing.
    pub active: bool,
    /// Hide the indicator after this long unless refreshed (milliseconds).
    pub expires_in_ms: u32,
}

/// Entries of one conversation that a catch-up skipped because there were too many.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Gap {
    /// Where.
    pub conversation: ConversationId,
    /// First skipped sequence number.
    pub from: Seq,
    /// Last skipped sequence number; page history for `from..=to`.
    pub to: Seq,
}

/// Pushed to the client, unasked.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Event {
    /// 0. A new message in one of the user's conversations.
    Message(Message),
    /// 1. A membership change in one of the user's rooms.
    Membership(MembershipEvent),
    /// 2. A member's delivered or read marker moved.
    Receipt(Receipt),
    /// 3. A followed user went online or offline.
    Presence(PresenceInfo),
    /// 4. Someone is typing (usually a datagram).
    Typing(TypingEvent),
    /// 5. The catch-up requested by `Auth::resume` or `Sync` is complete; live events follow.
    CaughtUp {
        /// How many entries the catch-up sent.
        replayed: u32,
    },
    /// 6. Part of a catch-up was skipped; page it through history. Never silent.
    Gap(Gap),
    /// 7. This connection's outgoing queue overflowed: live pushes are suspended until the
    ///    client pages what it missed through history and sends `Sync`.
    Lagged,
    /// 8. A message was edited.
    Edit(Edit),
    /// 9. A message was deleted.
    Deletion(Deletion),
    /// 10. An edit's content was erased (sent only in catch-up and history, where the edit
    ///     itself was erased before it could be replayed).
    Erased(Erased),
    /// 11. A reaction was added to a message or taken back.
    Reaction(Reaction),
}
