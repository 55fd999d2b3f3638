//! The outbox: every committed event, written in the same `WriteBatch` as the change it
//! describes, under a global event sequence number that the storage thread assigns at commit
//! (so the numbers have no gaps: a request that does not commit takes none). The AMQP bridge
//! publishes the outbox in order and keeps a confirmed cursor (`Cf::Meta`, [`CURSOR_KEY`]);
//! entries behind the cursor are deleted after the retention time.
//!
//! The stored value is the event's published JSON payload (docs/EVENTS.md), so what a
//! consumer sees is exactly what was committed.

use chat_protocol::events;
use chat_protocol::{
    ContentType, ConversationId, Marker, MembershipChange, OpId, Role, Seq, Timestamp, UserId,
};
use serde::{Deserialize, Serialize};

/// `Cf::Meta` key of the bridge's cursor: the last event seq the broker confirmed (8 bytes,
/// big-endian).
pub const CURSOR_KEY: &[u8] = b"bridge.cursor";

/// A stored event: its sequence number and commit time, and what happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The global event sequence number (1, 2, 3, ... without gaps).
    pub seq: u64,
    /// Commit time, ms since the Unix epoch.
    pub ts: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// What happened. Serialized with a `type` field naming the variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// A message was stored.
    #[serde(rename = "message.created")]
    MessageCreated {
        /// Where.
        conversation: Conversation,
        /// The message.
        message: MessageBody,
        /// Recipients (members other than the sender) with no connected device when the
        /// message was accepted: the ones a push notification is for.
        offline_recipients: Vec<UserId>,
        /// The members the message mentions, online or not: a push service notifies them
        /// whether or not they are in `offline_recipients`.
        #[serde(default)]
        mentions: Vec<UserId>,
    },
    /// Someone joined, left, was invited, removed, banned, unbanned, or changed role.
    #[serde(rename = "membership.changed")]
    MembershipChanged {
        /// Which room.
        conversation: Conversation,
        /// The membership entry's sequence number in the room's log.
        entry_seq: Seq,
        /// Who did it.
        actor: UserId,
        /// To whom.
        subject: UserId,
        /// What.
        change: Change,
    },
    /// A room was created.
    #[serde(rename = "room.created")]
    RoomCreated {
        /// Its id.
        room: chat_protocol::RoomId,
        /// Its name.
        name: String,
        /// Whether joining needs an invitation.
        invite_only: bool,
        /// Its creator and owner.
        owner: UserId,
    },
    /// An account was created.
    #[serde(rename = "user.registered")]
    UserRegistered {
        /// Its id.
        user: UserId,
        /// Its name.
        name: String,
    },
    /// A user's delivered or read marker moved forward.
    #[serde(rename = "marker.moved")]
    MarkerMoved {
        /// Where.
        conversation: Conversation,
        /// Whose.
        user: UserId,
        /// `delivered` or `read`.
        marker: MarkerKind,
        /// The new high-water mark: everything up to and including this entry.
        up_to: Seq,
    },
    /// A message's author replaced its content.
    #[serde(rename = "message.edited")]
    MessageEdited {
        /// Where.
        conversation: Conversation,
        /// The edit: its own sequence number, the author, the edit's op id and the new
        /// content (no `reply_to`).
        edit: MessageBody,
        /// The message edited.
        target: Seq,
    },
    /// A message was deleted: consumers that kept its content (search indexes, archives)
    /// drop it, and the content of the edits listed in `erased`.
    #[serde(rename = "message.deleted")]
    MessageDeleted {
        /// Where.
        conversation: Conversation,
        /// The deletion entry's sequence number.
        entry_seq: Seq,
        /// The message deleted.
        target: Seq,
        /// Who deleted it: the author, or a room's admin or owner.
        actor: UserId,
        /// The message's author.
        author: UserId,
        /// The deletion's op id, in decimal.
        op: String,
        /// The message's edits, whose content is erased too.
        erased: Vec<Seq>,
    },
    /// A reaction was added to a message or taken back.
    #[serde(rename = "message.reacted")]
    MessageReacted {
        /// Where.
        conversation: Conversation,
        /// The reaction entry's sequence number.
        entry_seq: Seq,
        /// The message reacted to.
        target: Seq,
        /// Who reacted.
        user: UserId,
        /// The reaction's op id, in decimal.
        op: String,
        /// The reaction.
        reaction: String,
        /// `true`: the user took the reaction back.
        removed: bool,
    },
    /// An operator acted (`chatd admin`, `chatd backup`).
    #[serde(rename = "admin.action")]
    AdminAction {
        /// `kick`, `disable`, `enable`, `revoke`, `erase`, `compact` or `backup`.
        action: String,
        /// The account, for an account's action.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<UserId>,
        /// Its name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The one device a kick was for, if only one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<u64>,
        /// Connections the action closed.
        closed: u32,
        /// For a backup: the folder; for an erasure: what it deleted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

impl Event {
    /// The AMQP routing key: `message.created|edited|deleted|reacted.room|direct|notes`,
    /// `membership.changed.room`, `room.created`, `user.registered`,
    /// `marker.moved.delivered|read`, `admin.kick|disable|enable|revoke|compact|backup`.
    #[must_use]
    pub fn routing_key(&self) -> String {
        match self {
            Event::MessageCreated { conversation, .. } => {
                format!("message.created.{}", conversation.kind())
            }
            Event::MessageEdited { conversation, .. } => {
                format!("message.edited.{}", conversation.kind())
            }
            Event::MessageDeleted { conversation, .. } => {
                format!("message.deleted.{}", conversation.kind())
            }
            Event::MessageReacted { conversation, .. } => {
                format!("message.reacted.{}", conversation.kind())
            }
            Event::MembershipChanged { conversation, .. } => {
                format!("membership.changed.{}", conversation.kind())
            }
            Event::RoomCreated { .. } => "room.created".into(),
            Event::UserRegistered { .. } => "user.registered".into(),
            Event::AdminAction { action, .. } => format!("admin.{action}"),
            Event::MarkerMoved { marker, .. } => format!(
                "marker.moved.{}",
                match marker {
                    MarkerKind::Delivered => "delivered",
                    MarkerKind::Read => "read",
                }
            ),
        }
    }
}

/// A conversation, spelled out for consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Conversation {
    /// A room.
    Room {
        /// Its id.
        room: chat_protocol::RoomId,
    },
    /// A direct conversation between two users (smaller id first).
    Direct {
        /// The two users.
        users: [UserId; 2],
    },
    /// A user's notes to self.
    Notes {
        /// Whose.
        user: UserId,
    },
}

impl Conversation {
    fn kind(self) -> &'static str {
        match self {
            Conversation::Room { .. } => "room",
            Conversation::Direct { .. } => "direct",
            Conversation::Notes { .. } => "notes",
        }
    }
}

impl Conversation {
    /// The protocol's id of the conversation.
    fn id(self) -> Result<ConversationId, String> {
        match self {
            Conversation::Room { room } => Ok(ConversationId::Room(room)),
            Conversation::Direct { users: [low, high] } if low < high => {
                Ok(ConversationId::Direct { low, high })
            }
            Conversation::Direct { users } => Err(format!("direct users {users:?} not ordered")),
            Conversation::Notes { user } => Ok(ConversationId::Notes(user)),
        }
    }
}

impl From<ConversationId> for Conversation {
    fn from(c: ConversationId) -> Self {
        match c {
            ConversationId::Room(room) => Conversation::Room { room },
            ConversationId::Direct { low, high } => Conversation::Direct { users: [low, high] },
            ConversationId::Notes(user) => Conversation::Notes { user },
        }
    }
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageBody {
    /// Its sequence number in the conversation.
    pub seq: Seq,
    /// Who sent it.
    pub sender: UserId,
    /// The sender's operation id (deduplication key with the sender), in decimal: a random
    /// 64-bit number that JSON numbers (doubles) cannot hold exactly.
    pub op: String,
    /// Content type number (0 text, 1 markdown, ...; PROTOCOL.md).
    pub content_type: u16,
    /// The message it answers, if any.
    pub reply_to: Option<Seq>,
    /// The body, for text content types.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
    /// The body, base64, for other content types.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub body_base64: Option<String>,
}

impl MessageBody {
    /// The consumer-facing form of a message.
    #[must_use]
    pub fn new(
        seq: Seq,
        sender: UserId,
        op: u64,
        content_type: ContentType,
        reply_to: Option<Seq>,
        body: &[u8],
    ) -> MessageBody {
        let text = content_type
            .is_text()
            .then(|| std::str::from_utf8(body).ok().map(str::to_owned))
            .flatten();
        let body_base64 = text
            .is_none()
            .then(|| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, body));
        MessageBody {
            seq,
            sender,
            op: op.to_string(),
            content_type: content_type.0,
            reply_to,
            text,
            body_base64,
        }
    }
}

/// An op id as the JSON payload spells it (decimal).
fn parse_op(op: &str) -> Result<OpId, String> {
    op.parse().map(OpId).map_err(|e| format!("op {op:?}: {e}"))
}

impl MessageBody {
    /// The op id.
    fn op_id(&self) -> Result<OpId, String> {
        parse_op(&self.op)
    }

    /// The body's bytes, from `text` or `body_base64`.
    fn body(&self) -> Result<Vec<u8>, String> {
        match (&self.text, &self.body_base64) {
            (Some(text), None) => Ok(text.clone().into_bytes()),
            (None, Some(b64)) => {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
                    .map_err(|e| format!("body_base64: {e}"))
            }
            _ => Err("a message needs exactly one of text and body_base64".into()),
        }
    }
}

/// A membership change, spelled out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// The room was created (the subject is its owner).
    Created,
    /// The subject joined.
    Joined,
    /// The subject left.
    Left,
    /// The subject was invited.
    Invited,
    /// The subject was removed.
    Kicked,
    /// The subject was removed and barred.
    Banned,
    /// The subject's ban was lifted.
    Unbanned,
    /// The subject's role changed.
    RoleChanged {
        /// The new role: `member`, `admin` or `owner`.
        role: String,
    },
}

impl From<&MembershipChange> for Change {
    fn from(change: &MembershipChange) -> Self {
        match change {
            MembershipChange::Created { .. } => Change::Created,
            MembershipChange::Joined => Change::Joined,
            MembershipChange::Left => Change::Left,
            MembershipChange::Invited => Change::Invited,
            MembershipChange::Kicked => Change::Kicked,
            MembershipChange::Banned => Change::Banned,
            MembershipChange::Unbanned => Change::Unbanned,
            MembershipChange::RoleChanged(role) => Change::RoleChanged {
                role: match role {
                    Role::Member => "member",
                    Role::Admin => "admin",
                    Role::Owner => "owner",
                }
                .into(),
            },
        }
    }
}

impl Change {
    fn to_binary(&self) -> Result<events::Change, String> {
        Ok(match self {
            Change::Created => events::Change::Created,
            Change::Joined => events::Change::Joined,
            Change::Left => events::Change::Left,
            Change::Invited => events::Change::Invited,
            Change::Kicked => events::Change::Kicked,
            Change::Banned => events::Change::Banned,
            Change::Unbanned => events::Change::Unbanned,
            Change::RoleChanged { role } => events::Change::RoleChanged(match role.as_str() {
                "member" => Role::Member,
                "admin" => Role::Admin,
                "owner" => Role::Owner,
                other => return Err(format!("unknown role {other:?}")),
            }),
        })
    }
}

/// Which marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkerKind {
    /// Received by a device.
    Delivered,
    /// Read.
    Read,
}

impl From<Marker> for MarkerKind {
    fn from(marker: Marker) -> Self {
        match marker {
            Marker::Delivered => MarkerKind::Delivered,
            Marker::Read => MarkerKind::Read,
        }
    }
}

impl Record {
    /// The event in the bridge's bincode form (`chat_protocol::events`, docs/EVENTS.md).
    ///
    /// # Errors
    /// When a stored field does not convert back (a record this daemon did not write).
    pub fn to_binary(&self) -> Result<events::EventRecord, String> {
        let event = match &self.event {
            Event::MessageCreated {
                conversation,
                message,
                offline_recipients,
                mentions,
            } => events::EventKind::MessageCreated {
                conversation: conversation.id()?,
                seq: message.seq,
                sender: message.sender,
                op: message.op_id()?,
                content_type: ContentType(message.content_type),
                reply_to: message.reply_to,
                body: message.body()?,
                offline_recipients: offline_recipients.clone(),
                mentions: mentions.clone(),
            },
            Event::MessageEdited {
                conversation,
                edit,
                target,
            } => events::EventKind::MessageEdited {
                conversation: conversation.id()?,
                seq: edit.seq,
                target: *target,
                sender: edit.sender,
                op: edit.op_id()?,
                content_type: ContentType(edit.content_type),
                body: edit.body()?,
            },
            Event::MessageDeleted {
                conversation,
                entry_seq,
                target,
                actor,
                author,
                op,
                erased,
            } => events::EventKind::MessageDeleted {
                conversation: conversation.id()?,
                seq: *entry_seq,
                target: *target,
                actor: *actor,
                author: *author,
                op: parse_op(op)?,
                erased: erased.clone(),
            },
            Event::MessageReacted {
                conversation,
                entry_seq,
                target,
                user,
                op,
                reaction,
                removed,
            } => events::EventKind::MessageReacted {
                conversation: conversation.id()?,
                seq: *entry_seq,
                target: *target,
                user: *user,
                op: parse_op(op)?,
                reaction: reaction.clone(),
                removed: *removed,
            },
            Event::MembershipChanged {
                conversation,
                entry_seq,
                actor,
                subject,
                change,
            } => events::EventKind::MembershipChanged {
                conversation: conversation.id()?,
                entry_seq: *entry_seq,
                actor: *actor,
                subject: *subject,
                change: change.to_binary()?,
            },
            Event::RoomCreated {
                room,
                name,
                invite_only,
                owner,
            } => events::EventKind::RoomCreated {
                room: *room,
                name: name.clone(),
                invite_only: *invite_only,
                owner: *owner,
            },
            Event::UserRegistered { user, name } => events::EventKind::UserRegistered {
                user: *user,
                name: name.clone(),
            },
            Event::MarkerMoved {
                conversation,
                user,
                marker,
                up_to,
            } => events::EventKind::MarkerMoved {
                conversation: conversation.id()?,
                user: *user,
                marker: match marker {
                    MarkerKind::Delivered => Marker::Delivered,
                    MarkerKind::Read => Marker::Read,
                },
                up_to: *up_to,
            },
            Event::AdminAction {
                action,
                user,
                name,
                device,
                closed,
                detail,
            } => events::EventKind::AdminAction {
                action: action.clone(),
                user: *user,
                name: name.clone(),
                device: device.map(chat_protocol::DeviceId),
                closed: *closed,
                detail: detail.clone(),
            },
        };
        Ok(events::EventRecord {
            seq: self.seq,
            ts: self.ts,
            event,
        })
    }
}

/// The `Cf::Outbox` key of an event.
#[must_use]
pub fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The event seq of an outbox key.
#[must_use]
pub fn parse_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

#[cfg(test)]
mod tests;
