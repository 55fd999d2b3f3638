//! The AMQP bridge's binary payload (docs/EVENTS.md, "Bincode payload").
//!
//! With `[bridge] payload = "bincode"` every event chatd publishes is one [`EventRecord`],
//! encoded like a frame body (bincode 2.0.1, `config::standard()`: little-endian, variable-
//! length integers) with no length prefix, under the content type [`BINCODE_CONTENT_TYPE`].
//! It carries what the JSON payload carries, in the protocol's own types: message bodies as
//! bytes, operation ids as 64-bit numbers. Routing keys, `message_id`, `type` and headers are
//! the same for both payloads.
//!
//! A Rust consumer decodes with [`decode_event`]; consumers in other languages follow the
//! byte layout in docs/EVENTS.md. The schema is versioned by the content type's `v`
//! parameter: a change that is not an appended enum variant gets a new version.

use crate::client::{ContentType, Marker, Role};
use crate::codec::{Decode, Encode, decode_value, encode_into};
use crate::ids::{ConversationId, OpId, RoomId, Seq, Timestamp, UserId};

/// The AMQP `content_type` of a bincode event, with its schema version (2: `MessageCreated`
/// lists the mentioned users; `MessageReacted` is new).
pub const BINCODE_CONTENT_TYPE: &str = "application/x-chatd-event+bincode; v=2";

/// The most memory [`decode_event`] lets one event claim: RabbitMQ's default largest
/// message (16 MiB). The biggest events are `message.created` in very large rooms, whose
/// `offline_recipients` take 8 bytes each when decoded (two million of them fit).
pub const MAX_EVENT_SIZE: usize = 16 << 20;

/// One committed event.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct EventRecord {
    /// The global event sequence number (1, 2, 3, ... without gaps): the deduplication key.
    pub seq: u64,
    /// Commit time.
    pub ts: Timestamp,
    /// What happened.
    pub event: EventKind,
}

/// What happened. The variant index is the first byte after `seq` and `ts`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum EventKind {
    /// 0. A message was stored (`message.created.*`).
    MessageCreated {
        /// Where.
        conversation: ConversationId,
        /// Its sequence number in the conversation.
        seq: Seq,
        /// Who sent it.
        sender: UserId,
        /// The sender's operation id.
        op: OpId,
        /// Its content type.
        content_type: ContentType,
        /// The message it answers, if any.
        reply_to: Option<Seq>,
        /// The body.
        body: Vec<u8>,
        /// Recipients (members other than the sender) with no connected device when the
        /// message was accepted.
        offline_recipients: Vec<UserId>,
        /// The members the message mentions, online or not.
        mentions: Vec<UserId>,
    },
    /// 1. A room's membership changed (`membership.changed.room`).
    MembershipChanged {
        /// Which room.
        conversation: ConversationId,
        /// The membership entry's sequence number in the room's log.
        entry_seq: Seq,
        /// Who did it.
        actor: UserId,
        /// To whom.
        subject: UserId,
        /// What.
        change: Change,
    },
    /// 2. A room was created (`room.created`).
    RoomCreated {
        /// Its id.
        room: RoomId,
        /// Its name.
        name: String,
        /// Whether joining needs an invitation.
        invite_only: bool,
        /// Its creator and owner.
        owner: UserId,
    },
    /// 3. An account was created (`user.registered`).
    UserRegistered {
        /// Its id.
        user: UserId,
        /// Its name.
        name: String,
    },
    /// 4. A user's delivered or read marker moved forward (`marker.moved.*`).
    MarkerMoved {
        /// Where.
        conversation: ConversationId,
        /// Whose.
        user: UserId,
        /// Which marker.
        marker: Marker,
        /// The new high-water mark: everything up to and including this entry.
        up_to: Seq,
    },
    /// 5. An operator acted (`admin.*`: kick, disable, enable, revoke, compact, backup).
    AdminAction {
        /// `kick`, `disable`, `enable`, `revoke`, `compact` or `backup`.
        action: String,
        /// The account, for an account's action.
        user: Option<UserId>,
        /// Its name.
        name: Option<String>,
        /// The one device a kick was for, if only one.
        device: Option<crate::DeviceId>,
        /// Connections the action closed.
        closed: u32,
        /// For a backup: the folder.
        detail: Option<String>,
    },
    /// 6. A message's author replaced its content (`message.edited.*`).
    MessageEdited {
        /// Where.
        conversation: ConversationId,
        /// The edit entry's sequence number.
        seq: Seq,
        /// The message edited.
        target: Seq,
        /// The author.
        sender: UserId,
        /// The edit's operation id.
        op: OpId,
        /// The new content type.
        content_type: ContentType,
        /// The new body.
        body: Vec<u8>,
    },
    /// 7. A message was deleted (`message.deleted.*`).
    MessageDeleted {
        /// Where.
        conversation: ConversationId,
        /// The deletion entry's sequence number.
        seq: Seq,
        /// The message deleted.
        target: Seq,
        /// Who deleted it.
        actor: UserId,
        /// The message's author.
        author: UserId,
        /// The deletion's operation id.
        op: OpId,
        /// The message's edits, whose content is erased too.
        erased: Vec<Seq>,
    },
    /// 8. A reaction was added to a message or taken back (`message.reacted.*`).
    MessageReacted {
        /// Where.
        conversation: ConversationId,
        /// The reaction entry's sequence number.
        seq: Seq,
        /// The message reacted to.
        target: Seq,
        /// Who reacted.
        user: UserId,
        /// The reaction's operation id.
        op: OpId,
        /// The reaction.
        reaction: String,
        /// `true`: taken back.
        removed: bool,
    },
}

/// A membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Change {
    /// 0. The room was created (the subject is its owner).
    Created,
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
    /// 7. The subject's role changed to this one.
    RoleChanged(Role),
}

/// Why bytes are not an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a chatd event: {0}")]
pub struct EventDecodeError(String);

/// The bincode payload of `record`.
#[must_use]
pub fn encode_event(record: &EventRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    // Encoding into a Vec cannot fail for these types (no maps, no I/O).
    let _ = encode_into(record, &mut out);
    out
}

/// Decodes a bincode payload: exactly one event, at most [`MAX_EVENT_SIZE`] bytes of it.
///
/// # Errors
/// When the bytes are not exactly one valid event (truncated, a bad variant or UTF-8, a
/// reversed direct conversation, trailing bytes) or claim more memory than the limit.
pub fn decode_event(bytes: &[u8]) -> Result<EventRecord, EventDecodeError> {
    decode_value::<EventRecord, MAX_EVENT_SIZE>(bytes).map_err(EventDecodeError)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> EventRecord {
        EventRecord {
            seq: 7,
            ts: Timestamp(1_795_000_000_000),
            event: EventKind::MessageCreated {
                conversation: ConversationId::Room(RoomId(5)),
                seq: Seq(43),
                sender: UserId(1),
                op: OpId(77),
                content_type: ContentType::TEXT,
                reply_to: None,
                body: b"hello".to_vec(),
                offline_recipients: vec![UserId(2)],
                mentions: vec![UserId(3)],
            },
        }
    }

    #[test]
    fn an_event_round_trips_and_its_bytes_are_the_documented_ones() {
        let bytes = encode_event(&message());
        // docs/EVENTS.md spells these bytes out.
        assert_eq!(
            bytes,
            [
                7, // seq
                253, 0x00, 0x5e, 0x56, 0xee, 0xa1, 0x01, 0x00, 0x00, // ts: u64 after tag 253
                0,    // MessageCreated
                2, 5, // Room(5)
                43, 1, 77, // seq, sender, op
                0,  // content type TEXT
                0,  // reply_to: None
                5, b'h', b'e', b'l', b'l', b'o', // body
                1, 2, // offline_recipients: [2]
                1, 3, // mentions: [3]
            ]
        );
        assert_eq!(decode_event(&bytes), Ok(message()));
    }

    #[test]
    fn truncated_trailing_and_oversized_input_is_refused() {
        let bytes = encode_event(&message());
        assert!(decode_event(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_event(&longer).is_err());
        // A body length claiming 4 GiB fails on the limit (before allocating), not on the
        // input ending after the length.
        let mut huge = bytes[..18].to_vec();
        huge.extend_from_slice(&[252, 0xff, 0xff, 0xff, 0xff]);
        let err = format!("{:?}", decode_event(&huge).unwrap_err());
        assert!(err.contains("decode limit"), "{err}");
    }

    #[test]
    fn every_kind_round_trips() {
        let kinds = [
            EventKind::MembershipChanged {
                conversation: ConversationId::Room(RoomId(9)),
                entry_seq: Seq(3),
                actor: UserId(1),
                subject: UserId(4),
                change: Change::RoleChanged(Role::Admin),
            },
            EventKind::RoomCreated {
                room: RoomId(9),
                name: "general".into(),
                invite_only: true,
                owner: UserId(1),
            },
            EventKind::UserRegistered {
                user: UserId(4),
                name: "dana".into(),
            },
            EventKind::MarkerMoved {
                conversation: ConversationId::direct(UserId(4), UserId(1)),
                user: UserId(4),
                marker: Marker::Read,
                up_to: Seq(12),
            },
            EventKind::MessageEdited {
                conversation: ConversationId::Room(RoomId(9)),
                seq: Seq(14),
                target: Seq(13),
                sender: UserId(4),
                op: OpId(u64::MAX),
                content_type: ContentType::MARKDOWN,
                body: b"*fixed*".to_vec(),
            },
            EventKind::MessageDeleted {
                conversation: ConversationId::Room(RoomId(9)),
                seq: Seq(15),
                target: Seq(13),
                actor: UserId(1),
                author: UserId(4),
                op: OpId(3),
                erased: vec![Seq(14)],
            },
            EventKind::MessageReacted {
                conversation: ConversationId::Room(RoomId(9)),
                seq: Seq(16),
                target: Seq(13),
                user: UserId(4),
                op: OpId(5),
                reaction: "👍".into(),
                removed: false,
            },
        ];
        for (seq, event) in (1..).zip(kinds) {
            let record = EventRecord {
                seq,
                ts: Timestamp(1),
                event,
            };
            assert_eq!(decode_event(&encode_event(&record)), Ok(record));
        }
    }
}
