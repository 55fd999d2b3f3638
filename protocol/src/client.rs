//! Frames a client sends: [`ClientFrame`] and everything inside it.
//!
//! Field order and variant order are the wire format (bincode encodes fields in declaration
//! order and variants by index): never reorder, insert or remove; a change is a new protocol
//! version. docs/PROTOCOL.md lists the same layout with each variant's index.

use crate::codec::{Decode, Encode};
use crate::ids::{ConversationId, DeviceId, OpId, RequestId, RoomId, Seq, UserId};

/// Every frame a client sends, on the session stream or (for `Typing` only) as a datagram.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ClientFrame {
    /// 0. The first frame of every connection.
    Hello(Hello),
    /// 1. A request; the daemon answers with a `Response` or an `Error` echoing `id`.
    Request {
        /// Chosen by the client, echoed by the daemon.
        id: RequestId,
        /// What to do.
        request: Request,
    },
    /// 2. A typing indicator. Usually sent as a QUIC datagram; never answered, never stored.
    Typing(TypingUpdate),
}

/// The protocol versions a client speaks, inclusive. The daemon picks the highest version
/// in the range that it also speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct VersionRange {
    /// Lowest version the client speaks.
    pub min: u8,
    /// Highest version the client speaks.
    pub max: u8,
}

/// Opens a session: version negotiation, device, and optionally authentication with resume.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Hello {
    /// Versions the client speaks.
    pub versions: VersionRange,
    /// Client software and version, for logs (`"chat-cli/0.1.0"`), at most 64 bytes.
    pub client: String,
    /// This device.
    pub device: DeviceId,
    /// Authenticate in the same round trip. `None`: the connection stays anonymous and may
    /// only register, log in or authenticate.
    pub auth: Option<Auth>,
}

/// Authentication with an access token, and what to replay.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Auth {
    /// An access token from `Login`, `Register` or the app backend (format in PROTOCOL.md).
    pub token: String,
    /// `Some`: send what this device missed, then `Event::CaughtUp`. `None`: live events only.
    pub resume: Option<Resume>,
}

/// What a device has seen, so the daemon can send exactly what it missed.
#[derive(Clone, Debug, PartialEq, Eq, Default, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Resume {
    /// The last sequence number seen per conversation. Conversations not listed resume from
    /// the user's delivered marker. At most `limits::MAX_RESUME_CURSORS`.
    pub cursors: Vec<Cursor>,
}

/// "I have seen everything in `conversation` up to and including `seq`."
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Cursor {
    /// The conversation.
    pub conversation: ConversationId,
    /// The last entry seen; `Seq(0)` for none.
    pub seq: Seq,
}

/// A user, by id or by name.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum UserRef {
    /// 0. By id.
    Id(UserId),
    /// 1. By name.
    Name(String),
}

/// A member's role in a room. Rights are listed in PROTOCOL.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Role {
    /// 0. An ordinary member: reads, sends, leaves.
    Member,
    /// 1. Also invites, and kicks, bans and unbans members (not admins or the owner).
    Admin,
    /// 2. Also sets roles and kicks or bans admins. Each room has exactly one owner.
    Owner,
}

/// Which high-water mark a receipt moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Marker {
    /// 0. The user's devices received everything up to the sequence number.
    Delivered,
    /// 1. The user read everything up to the sequence number.
    Read,
}

/// How a message body is to be interpreted. Values below 1000 are reserved for the protocol;
/// applications may use 1000 and above freely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ContentType(pub u16);

impl ContentType {
    /// UTF-8 plain text (the daemon rejects invalid UTF-8).
    pub const TEXT: ContentType = ContentType(0);
    /// UTF-8 CommonMark.
    pub const MARKDOWN: ContentType = ContentType(1);
    /// UTF-8 JSON, opaque to the daemon.
    pub const JSON: ContentType = ContentType(2);
    /// Opaque bytes.
    pub const BINARY: ContentType = ContentType(3);
    /// First application-defined value.
    pub const APPLICATION_MIN: u16 = 1000;

    /// Whether the body must be valid UTF-8.
    #[must_use]
    pub fn is_text(self) -> bool {
        matches!(self, Self::TEXT | Self::MARKDOWN | Self::JSON)
    }
}

/// Post a message. Answered by `Response::Sent` once the message is durably stored.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SendMessage {
    /// Where to post.
    pub conversation: ConversationId,
    /// Unique per sender; a retry with the same op id is stored once and acked identically.
    pub op: OpId,
    /// How to interpret `body`.
    pub content_type: ContentType,
    /// The entry this message answers, if any.
    pub reply_to: Option<Seq>,
    /// At most the daemon's `max_body` bytes.
    pub body: Vec<u8>,
    /// Members of the conversation the message names (they are listed in the bridge's
    /// `message.created` event, so a push service can notify them); at most
    /// `limits::MAX_MENTIONS`, no user twice.
    pub mentions: Vec<UserId>,
}

/// Replace the content of one of your messages. Answered by `Response::Sent` (with the edit
/// entry's sequence number) once the edit is durably stored.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EditMessage {
    /// Where the message is.
    pub conversation: ConversationId,
    /// Unique per sender, shared with sends and deletes; a retry is stored once.
    pub op: OpId,
    /// The message to edit (yours, not deleted, edited fewer than `limits::MAX_EDITS` times).
    pub target: Seq,
    /// How to interpret `body`.
    pub content_type: ContentType,
    /// The new content; at most the daemon's `max_body` bytes.
    pub body: Vec<u8>,
}

/// Delete a message: its body and every edit's body are erased from the store. Answered by
/// `Response::Sent` (with the deletion entry's sequence number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DeleteMessage {
    /// Where the message is.
    pub conversation: ConversationId,
    /// Unique per sender, shared with sends and edits; a retry is stored once.
    pub op: OpId,
    /// The message to delete (yours; in a room, an admin or the owner may delete any).
    pub target: Seq,
}

/// Add a reaction to a message, or take yours back. Answered by `Response::Sent` (with the
/// reaction entry's sequence number).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ReactMessage {
    /// Where the message is.
    pub conversation: ConversationId,
    /// Unique per sender, shared with sends, edits and deletes; a retry is stored once.
    pub op: OpId,
    /// The message (not deleted; any member may react, to their own messages too).
    pub target: Seq,
    /// The reaction: 1 to `limits::MAX_REACTION` bytes of UTF-8 with no control or white
    /// space characters (one emoji, or a short name such as `+1`).
    pub reaction: String,
    /// `false` adds your reaction (`ALREADY_REACTED` if you have it); `true` takes it back
    /// (`NOT_REACTED` if you do not have it).
    pub remove: bool,
}

/// Where a history page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum HistoryFrom {
    /// 0. The newest entries.
    Latest,
    /// 1. The entries just before this sequence number (exclusive).
    Before(Seq),
    /// 2. The entries just after this sequence number (exclusive); `After(Seq(0))` is the start.
    After(Seq),
}

/// The order of entries in a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Order {
    /// 0. Ascending sequence numbers.
    OldestFirst,
    /// 1. Descending sequence numbers.
    NewestFirst,
}

/// Read one page of a conversation's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HistoryQuery {
    /// Which conversation (members only).
    pub conversation: ConversationId,
    /// Where the page starts.
    pub from: HistoryFrom,
    /// At most this many entries, 1 to `limits::MAX_PAGE`.
    pub limit: u16,
    /// The order of `HistoryPage::entries`.
    pub order: Order,
    /// `Some(root)`: only the messages that reply to the entry `root` (its thread), paged
    /// by their own sequence numbers; `None`: every entry.
    pub thread: Option<Seq>,
}

/// Typing in a conversation, or stopped typing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TypingUpdate {
    /// Where.
    pub conversation: ConversationId,
    /// `true` while typing (repeat before the TTL runs out), `false` to stop at once.
    pub active: bool,
}

/// Everything a client can ask. The comment on each variant names the success response.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Request {
    /// 0. Authenticate an anonymous connection. -> `Session`
    Authenticate(Auth),
    /// 1. Create an account. -> `Token` (the connection stays as it was)
    Register {
        /// The user name (rules in `names`).
        name: String,
        /// 8 to 256 bytes.
        password: String,
    },
    /// 2. Exchange a password for an access token. -> `Token`
    Login {
        /// The user name.
        name: String,
        /// The password.
        password: String,
    },
    /// 3. Liveness and clock check. -> `Pong`
    Ping,
    /// 4. Resolve users by id or name. -> `Users` (unknown ones are left out)
    LookupUsers(Vec<UserRef>),
    /// 5. Create a room; the creator becomes its owner. -> `Room`
    CreateRoom {
        /// Unique room name.
        name: String,
        /// Whether joining needs an invitation.
        invite_only: bool,
    },
    /// 6. Find a room by name. -> `Room`
    FindRoom {
        /// The room name.
        name: String,
    },
    /// 7. Join a public room, or one you are invited to. -> `Room`
    JoinRoom {
        /// Which room.
        room: RoomId,
    },
    /// 8. Leave a room. -> `Ok`
    LeaveRoom {
        /// Which room.
        room: RoomId,
    },
    /// 9. Invite a user. -> `Ok`
    Invite {
        /// Which room.
        room: RoomId,
        /// Who.
        user: UserId,
    },
    /// 10. Remove a member (they may rejoin unless banned). -> `Ok`
    Kick {
        /// Which room.
        room: RoomId,
        /// Who.
        user: UserId,
    },
    /// 11. Remove a member and bar them from rejoining. -> `Ok`
    Ban {
        /// Which room.
        room: RoomId,
        /// Who.
        user: UserId,
    },
    /// 12. Lift a ban. -> `Ok`
    Unban {
        /// Which room.
        room: RoomId,
        /// Who.
        user: UserId,
    },
    /// 13. Change a member's role. -> `Ok`
    SetRole {
        /// Which room.
        room: RoomId,
        /// Who.
        user: UserId,
        /// The new role (`Owner` transfers ownership).
        role: Role,
    },
    /// 14. List members, ordered by user id. -> `Members`
    Members {
        /// Which room.
        room: RoomId,
        /// Start after this user (from the previous page's `next`).
        after: Option<UserId>,
        /// At most this many, 1 to `limits::MAX_PAGE`.
        limit: u16,
    },
    /// 15. List my conversations, ordered by conversation id. -> `Conversations`
    Conversations {
        /// Start after this conversation (from the previous page's `next`).
        after: Option<ConversationId>,
        /// At most this many, 1 to `limits::MAX_PAGE`.
        limit: u16,
    },
    /// 16. Post a message. -> `Sent`
    Send(SendMessage),
    /// 17. Read a page of a conversation's log. -> `History`
    History(HistoryQuery),
    /// 18. Move my delivered or read marker (a lower value is ignored). -> `Ok`
    Mark {
        /// Which conversation.
        conversation: ConversationId,
        /// Which marker.
        marker: Marker,
        /// Everything up to and including this entry.
        seq: Seq,
    },
    /// 19. Change which users' presence this connection follows. -> `Presence` (current state
    ///     of the newly subscribed users)
    Presence {
        /// Start following these users (they must share a conversation with you).
        subscribe: Vec<UserId>,
        /// Stop following these users.
        unsubscribe: Vec<UserId>,
    },
    /// 20. Replay what this connection missed (after `Lagged` or a `Gap`), then
    ///     `Event::CaughtUp`; live pushes resume. -> `Ok`
    Sync(Resume),
    /// 21. Edit one of your messages. -> `Sent`
    Edit(EditMessage),
    /// 22. Delete a message. -> `Sent`
    Delete(DeleteMessage),
    /// 23. Add or take back a reaction to a message. -> `Sent`
    React(ReactMessage),
}

impl Request {
    /// Whether a client may write this request again on a new connection when the old one
    /// was lost before the answer came (section 8.8): reads, marks, presence changes, and
    /// sends, edits, deletes and reactions (deduplicated by their op id). Room and account changes are not: one may have
    /// been applied, and a second would be refused or applied twice.
    pub fn repeatable(&self) -> bool {
        matches!(
            self,
            Request::Ping
                | Request::Login { .. }
                | Request::LookupUsers(_)
                | Request::FindRoom { .. }
                | Request::Members { .. }
                | Request::Conversations { .. }
                | Request::Send(_)
                | Request::Edit(_)
                | Request::Delete(_)
                | Request::React(_)
                | Request::History(_)
                | Request::Mark { .. }
                | Request::Presence { .. }
        )
    }
}
