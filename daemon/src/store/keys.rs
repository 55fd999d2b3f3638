//! Key layouts of the column families. Integers are big-endian so that RocksDB's bytewise
//! order is numeric order, and a conversation's log entries are contiguous and sorted by
//! sequence number.
//!
//! | CF | key | value |
//! |---|---|---|
//! | `users` | user id (8) | `UserRecord` (JSON) |
//! | `user_names` | user name (UTF-8) | user id (8) |
//! | `rooms` | room id (8) | `RoomRecord` (JSON) |
//! | `room_names` | room name (UTF-8) | room id (8) |
//! | `members` | room id (8) · user id (8) | `MemberState` (1 byte) |
//! | `user_conversations` | user id (8) · conversation (17) | empty |
//! | `log` | conversation (17) · seq (8) | `Entry` in wire encoding |
//! | `markers` | conversation (17) · user id (8) | delivered seq (8) · read seq (8) |
//! | `sender_ops` | conversation (17) · user id (8) · seq (8) | op id (8) · ts (8) |
//! | `threads` | conversation (17) · root seq (8) · seq (8) | empty |

use chat_protocol::{ConversationId, RoomId, Seq, UserId};

/// Length of an encoded conversation id.
pub const CONVERSATION_LEN: usize = 17;

/// Kind byte, then two big-endian ids (the second is 0 for notes and rooms).
#[must_use]
pub fn conversation(c: ConversationId) -> [u8; CONVERSATION_LEN] {
    let (kind, a, b) = match c {
        ConversationId::Direct { low, high } => (0u8, low.0, high.0),
        ConversationId::Notes(user) => (1, user.0, 0),
        ConversationId::Room(room) => (2, room.0, 0),
    };
    let mut key = [0u8; CONVERSATION_LEN];
    key[0] = kind;
    key[1..9].copy_from_slice(&a.to_be_bytes());
    key[9..17].copy_from_slice(&b.to_be_bytes());
    key
}

/// The inverse of [`conversation`]; `None` for bytes it never produces.
#[must_use]
pub fn parse_conversation(key: &[u8]) -> Option<ConversationId> {
    let key: &[u8; CONVERSATION_LEN] = key.get(..CONVERSATION_LEN)?.try_into().ok()?;
    let a = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let b = u64::from_be_bytes(key[9..17].try_into().ok()?);
    match key[0] {
        0 if a < b => Some(ConversationId::Direct {
            low: UserId(a),
            high: UserId(b),
        }),
        1 if b == 0 => Some(ConversationId::Notes(UserId(a))),
        2 if b == 0 => Some(ConversationId::Room(RoomId(a))),
        _ => None,
    }
}

/// A log entry's key.
#[must_use]
pub fn log(c: ConversationId, seq: Seq) -> [u8; CONVERSATION_LEN + 8] {
    conversation_then(c, seq.0)
}

/// A conversation key followed by a big-endian `u64`.
fn conversation_then(c: ConversationId, n: u64) -> [u8; CONVERSATION_LEN + 8] {
    let mut key = [0u8; CONVERSATION_LEN + 8];
    key[..CONVERSATION_LEN].copy_from_slice(&conversation(c));
    key[CONVERSATION_LEN..].copy_from_slice(&n.to_be_bytes());
    key
}

/// The sequence number of a log key, if it belongs to `c`.
#[must_use]
pub fn log_seq(c: ConversationId, key: &[u8]) -> Option<Seq> {
    let (prefix, seq) = key.split_at_checked(CONVERSATION_LEN)?;
    if prefix != conversation(c) {
        return None;
    }
    Some(Seq(u64::from_be_bytes(seq.try_into().ok()?)))
}

/// A `markers` key: a conversation's markers are contiguous.
#[must_use]
pub fn marker(c: ConversationId, user: UserId) -> [u8; CONVERSATION_LEN + 8] {
    conversation_then(c, user.0)
}

/// The prefix of a sender's `sender_ops` keys in a conversation.
#[must_use]
pub fn sender_ops(c: ConversationId, sender: UserId) -> [u8; CONVERSATION_LEN + 8] {
    conversation_then(c, sender.0)
}

/// A `sender_ops` key: a sender's sends of a conversation are contiguous, by seq.
#[must_use]
pub fn sender_op(c: ConversationId, sender: UserId, seq: Seq) -> [u8; CONVERSATION_LEN + 16] {
    let mut key = [0u8; CONVERSATION_LEN + 16];
    key[..CONVERSATION_LEN + 8].copy_from_slice(&sender_ops(c, sender));
    key[CONVERSATION_LEN + 8..].copy_from_slice(&seq.0.to_be_bytes());
    key
}

/// A `threads` key: the replies to `root` are contiguous, by their seq.
#[must_use]
pub fn thread(c: ConversationId, root: Seq, seq: Seq) -> [u8; CONVERSATION_LEN + 16] {
    let mut key = [0u8; CONVERSATION_LEN + 16];
    key[..CONVERSATION_LEN + 8].copy_from_slice(&conversation_then(c, root.0));
    key[CONVERSATION_LEN + 8..].copy_from_slice(&seq.0.to_be_bytes());
    key
}

/// The reply's seq of a `threads` key, if it is a key of `root`'s thread in `c`.
#[must_use]
pub fn thread_seq(c: ConversationId, root: Seq, key: &[u8]) -> Option<Seq> {
    let (prefix, seq) = key.split_at_checked(CONVERSATION_LEN + 8)?;
    if prefix != conversation_then(c, root.0) {
        return None;
    }
    Some(Seq(u64::from_be_bytes(seq.try_into().ok()?)))
}

/// A big-endian id.
#[must_use]
pub fn id(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Parses a big-endian id.
#[must_use]
pub fn parse_id(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// A `members` key.
#[must_use]
pub fn member(room: RoomId, user: UserId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&room.0.to_be_bytes());
    key[8..].copy_from_slice(&user.0.to_be_bytes());
    key
}

/// A `user_conversations` key.
#[must_use]
pub fn user_conversation(user: UserId, c: ConversationId) -> [u8; 8 + CONVERSATION_LEN] {
    let mut key = [0u8; 8 + CONVERSATION_LEN];
    key[..8].copy_from_slice(&user.0.to_be_bytes());
    key[8..].copy_from_slice(&conversation(c));
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_keys_round_trip_and_sort_logs_by_seq() {
        for c in [
            ConversationId::direct(UserId(9), UserId(2)),
            ConversationId::Notes(UserId(u64::MAX)),
            ConversationId::Room(RoomId(300)),
        ] {
            assert_eq!(parse_conversation(&conversation(c)), Some(c));
            assert!(log(c, Seq(255)) < log(c, Seq(256)));
            assert_eq!(log_seq(c, &log(c, Seq(77))), Some(Seq(77)));
        }
        assert_eq!(
            log_seq(
                ConversationId::Notes(UserId(1)),
                &log(ConversationId::Notes(UserId(2)), Seq(1))
            ),
            None
        );
        assert_eq!(parse_conversation(&[0; 17]), None);
    }
}
