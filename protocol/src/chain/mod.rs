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
//! An entry's encoding ends with its [`Chain`] (its link, and the kept digest of an erased
//! entry); the digest covers the encoding before it. The daemon keeps each entry's link and
//! digest; an entry that holds its original content checks against its digest, and the
//! digest of an erased one (a deleted message, an erased edit) is taken as kept.
//! [`Verifier`] checks a run of entries; [`Tracker`] follows every conversation a client
//! receives entries of, in whatever order pushes, acks and history pages bring them.

use sha2::{Digest as _, Sha256};

use crate::codec::encode_into;
use crate::ids::ConversationId;
pub use crate::server::Hash;
use crate::server::{Chain, Edit, Entry, Message};

mod tracker;

pub use tracker::{Break, MAX_AHEAD, MAX_BREAKS, Report, Tracker};

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
    match entry {
        Entry::Message(m) => message_digest(m),
        Entry::Edit(e) => appended_digest(&Entry::Edit(Edit {
            conversation: e.conversation,
            seq: e.seq,
            ts: e.ts,
            sender: e.sender,
            op: e.op,
            target: e.target,
            content_type: e.content_type,
            body: Sha256::digest(&e.body).to_vec(),
            chain: Chain::default(),
        })),
        other => appended_digest(other),
    }
}

/// The digest of a message entry ([`digest`]), from the message alone.
#[must_use]
pub fn message_digest(m: &Message) -> Hash {
    appended_digest(&Entry::Message(Message {
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
        chain: Chain::default(),
    }))
}

/// SHA-256 over the prefix and an entry's encoding up to its chain, its last field.
fn appended_digest(entry: &Entry) -> Hash {
    let mut encoded = Vec::with_capacity(160);
    entry.encode_to(&mut encoded);
    encoded.truncate(encoded.len() - encoded_len(entry.chain()));
    let mut hasher = Sha256::new();
    hasher.update(b"chatd-entry-v1");
    hasher.update(&encoded);
    hasher.finalize().into()
}

/// The length of a chain's encoding: the link, then the kept digest as an option.
fn encoded_len(chain: &Chain) -> usize {
    32 + 1 + if chain.kept.is_some() { 32 } else { 0 }
}

/// The link after `previous` for an entry with `digest`.
#[must_use]
pub fn link(previous: &Hash, digest: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(digest);
    hasher.finalize().into()
}

/// Whether the content `entry` was appended with is gone (a deleted message, an erased
/// edit): its digest cannot be computed from it, only kept.
#[must_use]
pub fn erased(entry: &Entry) -> bool {
    match entry {
        Entry::Erased(_) => true,
        Entry::Message(m) => m.deleted.is_some(),
        _ => false,
    }
}

/// Why an entry does not continue its conversation's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Not the next sequence number: an entry is missing, repeated or out of order.
    #[error("expected entry {expected}, found {found}")]
    OutOfOrder {
        /// The sequence number the chain is at.
        expected: u64,
        /// The entry's.
        found: u64,
    },
    /// The entry is not what was appended (or, erased, came without its kept digest).
    #[error("the entry does not match its digest")]
    Digest,
    /// The link given for the entry does not follow from the one before.
    #[error("the link does not follow from the one before")]
    Link,
}

/// Checks a conversation's entries, one after the other from a known point, against the
/// links given for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verifier {
    /// The last entry checked (0: none) and its link.
    seq: u64,
    tip: Hash,
}

impl Verifier {
    /// Before the conversation's first entry.
    #[must_use]
    pub fn new(conversation: ConversationId) -> Verifier {
        Verifier {
            seq: 0,
            tip: genesis(conversation),
        }
    }

    /// After entry `seq`, whose link is `link` (one checked before, or compared with
    /// another client's).
    #[must_use]
    pub fn after(seq: u64, link: Hash) -> Verifier {
        Verifier { seq, tip: link }
    }

    /// The last entry checked and its link.
    #[must_use]
    pub fn tip(&self) -> (u64, Hash) {
        (self.seq, self.tip)
    }

    /// Checks the next entry against `link`, the link given for it; `kept` is the digest
    /// kept for an entry whose content was erased ([`erased`]), and if given for another,
    /// must match it. On success the chain moves past the entry; on failure it stays.
    ///
    /// # Errors
    /// [`ChainError`]: which rule the entry breaks.
    pub fn check(
        &mut self,
        entry: &Entry,
        link_given: &Hash,
        kept: Option<&Hash>,
    ) -> Result<(), ChainError> {
        let found = entry.seq().0;
        if found != self.seq + 1 {
            let expected = self.seq + 1;
            return Err(ChainError::OutOfOrder { expected, found });
        }
        let digest = match (erased(entry), kept) {
            (true, Some(kept)) => *kept,
            (true, None) => return Err(ChainError::Digest),
            (false, kept) => {
                let digest = digest(entry);
                if kept.is_some_and(|kept| *kept != digest) {
                    return Err(ChainError::Digest);
                }
                digest
            }
        };
        let next = link(&self.tip, &digest);
        if next != *link_given {
            return Err(ChainError::Link);
        }
        (self.seq, self.tip) = (found, next);
        Ok(())
    }

    /// Checks the next entry against the link and kept digest it carries ([`Entry::chain`]).
    ///
    /// # Errors
    /// [`ChainError`], as [`Verifier::check`].
    pub fn check_entry(&mut self, entry: &Entry) -> Result<(), ChainError> {
        let chain = *entry.chain();
        self.check(entry, &chain.link, chain.kept.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ContentType;
    use crate::ids::{OpId, RoomId, Seq, Timestamp, UserId};
    use crate::server::{Deleted, Reaction, Reactions};

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
            chain: Chain::default(),
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
        // Without the chain, the last field: a link and an absent kept digest.
        let appended = &encoded[..encoded.len() - 33];
        let expected: Hash = Sha256::digest([&b"chatd-entry-v1"[..], appended].concat()).into();
        assert_eq!(first, expected);
        // So the entry's own place in the chain is not part of it.
        let mut placed = message(b"hello");
        placed.chain = Chain {
            link: [7; 32],
            kept: Some([9; 32]),
        };
        assert_eq!(digest(&Entry::Message(placed)), first);
        let mut reaction = Reaction {
            conversation: ConversationId::Room(RoomId(5)),
            seq: Seq(44),
            ts: Timestamp(1),
            sender: UserId(2),
            op: OpId(1),
            target: Seq(43),
            reaction: "👍".into(),
            removed: false,
            chain: Chain::default(),
        };
        let unplaced = digest(&Entry::Reaction(reaction.clone()));
        reaction.chain.link = [1; 32];
        assert_eq!(digest(&Entry::Reaction(reaction)), unplaced);
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
    fn a_verifier_follows_a_chain_and_stops_at_the_first_break() {
        let room = ConversationId::Room(RoomId(5));
        let entries: Vec<Entry> = (1..=3)
            .map(|seq| {
                let mut m = message(format!("m{seq}").as_bytes());
                m.seq = Seq(seq);
                Entry::Message(m)
            })
            .collect();
        let (mut links, mut tip) = (Vec::new(), genesis(room));
        for entry in &entries {
            tip = link(&tip, &digest(entry));
            links.push(tip);
        }
        let mut verifier = Verifier::new(room);
        for (entry, link) in entries.iter().zip(&links) {
            assert_eq!(verifier.check(entry, link, None), Ok(()));
        }
        assert_eq!(verifier.tip(), (3, links[2]));
        // Resumed after entry 1: entry 3 is not next; entry 2 with entry 3's link is wrong.
        let mut resumed = Verifier::after(1, links[0]);
        let out_of_order = ChainError::OutOfOrder {
            expected: 2,
            found: 3,
        };
        assert_eq!(
            resumed.check(&entries[2], &links[2], None),
            Err(out_of_order)
        );
        assert_eq!(
            resumed.check(&entries[1], &links[2], None),
            Err(ChainError::Link)
        );
        assert_eq!(resumed.check(&entries[1], &links[1], None), Ok(()));
        // An erased entry needs its kept digest, and is checked by it.
        let Entry::Message(mut gone) = entries[2].clone() else {
            unreachable!()
        };
        gone.body.clear();
        gone.deleted = Some(Deleted {
            seq: Seq(9),
            ts: Timestamp(1),
            by: UserId(1),
        });
        let gone = Entry::Message(gone);
        assert_eq!(
            resumed.check(&gone, &links[2], None),
            Err(ChainError::Digest)
        );
        let kept = digest(&entries[2]);
        assert_eq!(resumed.check(&gone, &links[2], Some(&kept)), Ok(()));
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
