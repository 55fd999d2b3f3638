//! The hash chain of a conversation's log, version 1: each entry's *link* commits to the
//! link before it and to the entry as it was appended, so a log whose entries were dropped,
//! reordered or altered no longer matches its links.
//!
//! - `link(0) = SHA-256("chatd-chain-v1" ‖ conversation)`, the conversation id in its wire
//!   encoding;
//! - `link(n) = SHA-256(link(n-1) ‖ digest(n))`;
//! - `digest(n) = SHA-256("chatd-entry-v1" ‖ entry)`, the entry `n` in its wire encoding as it
//!   was appended: a message without `edited`, `deleted` and `reactions` (what later entries
//!   change, each chained itself) and with its body replaced by the body's SHA-256 (32
//!   bytes); an edit with its body replaced the same way. Hashing bodies lets a digest stand
//!   for an entry whose content is later erased.
//!
//! The daemon keeps each entry's link and digest; an entry that holds its original content
//! checks against its digest, and the digest of an erased one (a deleted message, an erased
//! edit) is taken as kept.

use sha2::{Digest as _, Sha256};

use crate::codec::encode_into;
use crate::ids::ConversationId;
use crate::server::{Edit, Entry, Message};

/// A SHA-256 value of the chain: a link or a digest.
pub type Hash = [u8; 32];

/// The link before a conversation's first entry.
#[must_use]
pub fn genesis(conversation: ConversationId) -> Hash {
    let mut encoded = Vec::with_capacity(24);
    let _ = encode_into(&conversation, &mut encoded);
    let mut hasher = Sha256::new();
    hasher.update(b"chatd-chain-v1");
    hasher.update(&encoded);
    hasher.finalize().into()
}

/// The digest of `entry` as it was appended (module documentation). The mutable parts of a
/// message are ignored, so a message's digest does not change when it is edited, reacted to
/// or deleted; a deleted message's body is gone, so its digest must be computed before.
#[must_use]
pub fn digest(entry: &Entry) -> Hash {
    let appended;
    let entry = match entry {
        Entry::Message(m) => {
            appended = Entry::Message(Message {
                conversation: m.conversation,
                seq: m.seq,
                ts: m.ts,
                sender: m.sender,
                op: m.op,
                content_type: m.content_type,
                reply_to: m.reply_to,
                body: Sha256::digest(&m.body).to_vec(),
                edited: None,
                deleted: None,
                mentions: m.mentions.clone(),
                reactions: Vec::new(),
            });
            &appended
        }
        Entry::Edit(e) => {
            appended = Entry::Edit(Edit {
                conversation: e.conversation,
                seq: e.seq,
                ts: e.ts,
                sender: e.sender,
                op: e.op,
                target: e.target,
                content_type: e.content_type,
                body: Sha256::digest(&e.body).to_vec(),
            });
            &appended
        }
        other => other,
    };
    let mut encoded = Vec::with_capacity(96);
    entry.encode_to(&mut encoded);
    let mut hasher = Sha256::new();
    hasher.update(b"chatd-entry-v1");
    hasher.update(&encoded);
    hasher.finalize().into()
}

/// The link after `previous` for an entry with `digest`.
#[must_use]
pub fn link(previous: &Hash, digest: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(digest);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ContentType;
    use crate::ids::{OpId, RoomId, Seq, Timestamp, UserId};
    use crate::server::{Deleted, Reactions};

    fn message(body: &[u8]) -> Message {
        Message {
            conversation: ConversationId::Room(RoomId(5)),
            seq: Seq(43),
            ts: Timestamp(1_795_000_000_000),
            sender: UserId(1),
            op: OpId(77),
            content_type: ContentType::TEXT,
            reply_to: Some(Seq(42)),
            body: body.to_vec(),
            edited: None,
            deleted: None,
            mentions: vec![UserId(2)],
            reactions: Vec::new(),
        }
    }

    #[test]
    fn a_digest_is_the_entry_as_appended() {
        let first = digest(&Entry::Message(message(b"hello")));
        // The documented value: SHA-256 over the prefix and the normalised encoding.
        let mut normalised = message(b"");
        normalised.body = Sha256::digest(b"hello").to_vec();
        let mut encoded = Vec::new();
        Entry::Message(normalised).encode_to(&mut encoded);
        let expected: Hash = Sha256::digest([&b"chatd-entry-v1"[..], &encoded].concat()).into();
        assert_eq!(first, expected);
        // Later changes (edits, reactions, the deletion) are entries of their own: the
        // message's digest does not move with them.
        let mut changed = message(b"hello");
        changed.reactions = vec![Reactions {
            reaction: "👍".into(),
            users: vec![UserId(2)],
        }];
        changed.deleted = Some(Deleted {
            seq: Seq(50),
            ts: Timestamp(1),
            by: UserId(1),
        });
        assert_eq!(digest(&Entry::Message(changed)), first);
        // What it was appended with does.
        assert_ne!(digest(&Entry::Message(message(b"hellO"))), first);
        let mut other = message(b"hello");
        other.mentions.clear();
        assert_ne!(digest(&Entry::Message(other)), first);
    }

    #[test]
    fn links_bind_each_entry_to_everything_before_it() {
        let room = ConversationId::Room(RoomId(5));
        assert_ne!(genesis(room), genesis(ConversationId::Room(RoomId(6))));
        let (a, b) = (
            digest(&Entry::Message(message(b"a"))),
            digest(&Entry::Message(message(b"b"))),
        );
        let start = genesis(room);
        let ab = link(&link(&start, &a), &b);
        assert_ne!(ab, link(&link(&start, &b), &a), "order matters");
        assert_ne!(ab, link(&start, &b), "a dropped entry shows");
        assert_eq!(ab, link(&link(&start, &a), &b), "and it is a function");
    }
}
