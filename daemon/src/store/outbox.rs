//! The outbox: every committed event, written in the same `WriteBatch` as the change it
//! describes, under a global event sequence number that the storage thread assigns at commit
//! (so the numbers have no gaps: a request that does not commit takes none). The AMQP bridge
//! publishes the outbox in order and keeps a confirmed cursor (`Cf::Meta`, [`CURSOR_KEY`]);
//! entries behind the cursor are deleted after the retention time.
//!
//! The stored value is the event's published JSON payload (docs/EVENTS.md), so what a
//! consumer sees is exactly what was committed.

use chat_protocol::{
    ContentType, ConversationId, Marker, MembershipChange, Role, Seq, Timestamp, UserId,
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
}

impl Event {
    /// The AMQP routing key: `message.created.room|direct|notes`, `membership.changed.room`,
    /// `room.created`, `user.registered`, `marker.moved.delivered|read`.
    #[must_use]
    pub fn routing_key(&self) -> String {
        match self {
            Event::MessageCreated { conversation, .. } => {
                format!("message.created.{}", conversation.kind())
            }
            Event::MembershipChanged { conversation, .. } => {
                format!("membership.changed.{}", conversation.kind())
            }
            Event::RoomCreated { .. } => "room.created".into(),
            Event::UserRegistered { .. } => "user.registered".into(),
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
mod tests {
    use super::*;

    #[test]
    fn binary_bodies_are_base64_and_text_is_text() {
        let binary = MessageBody::new(Seq(1), UserId(1), 1, ContentType(100), None, b"foobar");
        assert_eq!(
            (binary.text, binary.body_base64.as_deref()),
            (None, Some("Zm9vYmFy"))
        );
        let text = MessageBody::new(Seq(1), UserId(1), 1, ContentType::TEXT, None, b"hi");
        assert_eq!((text.text.as_deref(), text.body_base64), (Some("hi"), None));
    }

    #[test]
    fn records_serialize_flat_with_their_type() {
        let record = Record {
            seq: 7,
            ts: Timestamp(1_795_000_000_000),
            event: Event::MessageCreated {
                conversation: ConversationId::Room(chat_protocol::RoomId(5)).into(),
                message: MessageBody::new(
                    Seq(43),
                    UserId(1),
                    77,
                    ContentType::TEXT,
                    None,
                    b"hello",
                ),
                offline_recipients: vec![UserId(2)],
            },
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "seq": 7, "ts": 1_795_000_000_000u64, "type": "message.created",
                "conversation": { "kind": "room", "room": 5 },
                "message": { "seq": 43, "sender": 1, "op": "77", "content_type": 0,
                             "reply_to": null, "text": "hello" },
                "offline_recipients": [2]
            })
        );
        assert_eq!(record.event.routing_key(), "message.created.room");
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }
}
