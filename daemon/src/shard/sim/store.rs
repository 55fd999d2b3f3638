//! The simulator's storage: column families of sorted keys in memory, written a whole batch
//! at a time and read as the real store reads them.

use std::collections::{BTreeMap, HashMap, HashSet};

use chat_protocol::{ConversationId, Entry, Reactions, Seq, UserId, chain};

use crate::store::writer::Batch;
use crate::store::{Cf, SenderOp, carries, keys, parse_link};

#[derive(Default)]
pub(super) struct FakeStore {
    /// (column family, key) -> value.
    stored: HashMap<Cf, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl FakeStore {
    pub(super) fn apply(&mut self, batch: Batch) {
        for put in batch.puts {
            self.stored
                .entry(put.cf)
                .or_default()
                .insert(put.key, put.value);
        }
        for delete in batch.deletes {
            if let Some(rows) = self.stored.get_mut(&delete.cf) {
                rows.remove(&delete.key);
            }
        }
    }

    /// The newest stored entry's seq.
    pub(super) fn head(&self, conversation: ConversationId) -> Seq {
        let rows = self.stored.get(&Cf::Log);
        let last = keys::log(conversation, Seq(u64::MAX)).to_vec();
        rows.and_then(|rows| rows.range(..=last).next_back())
            .and_then(|(key, _)| keys::log_seq(conversation, key))
            .unwrap_or(Seq(0))
    }

    /// The link of the entry `head` (`None` for 0), as `Store::chain_tip` reads it.
    pub(super) fn tip(&self, conversation: ConversationId, head: Seq) -> Option<chain::Hash> {
        if head == Seq(0) {
            return None;
        }
        let row = self
            .stored
            .get(&Cf::Links)
            .and_then(|rows| rows.get(&keys::log(conversation, head)[..]));
        let (link, _) = row
            .and_then(|row| parse_link(row))
            .expect("every stored entry has a link");
        Some(link)
    }

    /// The stored entry at `seq`.
    pub(super) fn entry(&self, conversation: ConversationId, seq: Seq) -> Option<Entry> {
        let value = self
            .stored
            .get(&Cf::Log)?
            .get(&keys::log(conversation, seq)[..])?;
        Some(Entry::decode_from(value).expect("a stored entry decodes"))
    }

    /// Conversation `conversation`'s stored log is contiguous from 1, holds each send, edit
    /// and delete once, and its changes agree with their messages: a message lists exactly
    /// the edits that target it and shows the newest one's content, a deleted message has no
    /// content and its deletion and erased edits name it.
    pub(super) fn check_log(&self, conversation: ConversationId) {
        let prefix = keys::conversation(conversation).to_vec();
        let mut ops = HashSet::new();
        let rows = self.stored.get(&Cf::Log);
        let log: Vec<Entry> = rows
            .into_iter()
            .flat_map(|rows| rows.range(prefix.clone()..))
            .take_while(|(key, _)| key.starts_with(&prefix))
            .map(|(_, value)| Entry::decode_from(value).expect("a stored entry decodes"))
            .collect();
        let mut chained = chain::Verifier::new(conversation);
        for (i, entry) in log.iter().enumerate() {
            assert_eq!(entry.seq().0, i as u64 + 1, "a hole in {conversation}");
            if let Some(op) = entry.op() {
                assert!(ops.insert(op), "{op:?} stored twice in {conversation}");
            }
            // Each entry is chained to the one before, with the digest of what was appended
            // (an erased entry's digest is taken as kept).
            let row = self
                .stored
                .get(&Cf::Links)
                .and_then(|rows| rows.get(&keys::log(conversation, entry.seq())[..]));
            let (link, digest) = row
                .and_then(|row| parse_link(row))
                .unwrap_or_else(|| panic!("{conversation} {:?} has no link", entry.seq()));
            assert!(
                carries(entry, &link, &digest),
                "{conversation} {:?} carries another link than its stored one",
                entry.seq()
            );
            if let Err(e) = chained.check(entry, &link, Some(&digest)) {
                panic!("{conversation} {:?}: {e}", entry.seq());
            }
        }
        let at = |seq: Seq| log.get(usize::try_from(seq.0).unwrap_or(0).wrapping_sub(1));
        for entry in &log {
            match entry {
                Entry::Message(m) => {
                    if let Some(edited) = &m.edited {
                        assert!(m.deleted.is_none(), "{m:?} edited and deleted");
                        for version in &edited.versions {
                            assert!(
                                matches!(at(*version), Some(Entry::Edit(e)) if e.target == m.seq && e.sender == m.sender),
                                "{conversation} {:?} lists {version:?}, which is not its edit",
                                m.seq
                            );
                        }
                        let newest = edited.versions.last().and_then(|v| at(*v));
                        assert!(
                            matches!(newest, Some(Entry::Edit(e)) if e.body == edited.body),
                            "{conversation} {:?} does not show its newest edit",
                            m.seq
                        );
                    }
                    if let Some(deleted) = m.deleted {
                        assert!(
                            m.body.is_empty() && m.reactions.is_empty(),
                            "{conversation} {:?} kept its body or reactions",
                            m.seq
                        );
                        assert!(
                            matches!(at(deleted.seq), Some(Entry::Deletion(d)) if d.target == m.seq),
                            "{conversation} {:?} deleted by {:?}, which is not its deletion",
                            m.seq,
                            deleted.seq
                        );
                    }
                }
                Entry::Edit(e) => {
                    let listed = matches!(at(e.target), Some(Entry::Message(m))
                        if m.edited.as_ref().is_some_and(|x| x.versions.contains(&e.seq)));
                    assert!(
                        listed,
                        "{conversation} {:?} is an edit its message does not list: {:?}",
                        e.seq,
                        at(e.target)
                    );
                }
                Entry::Erased(x) => assert!(
                    matches!(at(x.target), Some(Entry::Message(m))
                        if m.deleted.is_some_and(|d| d.seq == x.deletion)),
                    "{conversation} {:?} erased for a message not deleted by {:?}",
                    x.seq,
                    x.deletion
                ),
                Entry::Deletion(d) => {
                    let done = matches!(at(d.target), Some(Entry::Message(m))
                        if m.deleted.is_some_and(|x| x.seq == d.seq));
                    assert!(
                        done,
                        "{conversation} {:?} deleted a message that is not",
                        d.seq
                    );
                    for erased in &d.erased {
                        assert!(
                            matches!(at(*erased), Some(Entry::Erased(x)) if x.deletion == d.seq),
                            "{conversation} {:?} left {erased:?} unerased",
                            d.seq
                        );
                    }
                }
                Entry::Reaction(r) => assert!(
                    matches!(at(r.target), Some(Entry::Message(m))
                        if m.deleted.is_none_or(|d| d.seq > r.seq)),
                    "{conversation} {:?} reacts to a message it cannot",
                    r.seq
                ),
                Entry::Membership(_) => {}
            }
        }
        // Each message's reactions are what its reaction entries make of them, in log order.
        let mut folded: HashMap<Seq, Vec<Reactions>> = HashMap::new();
        for entry in &log {
            let Entry::Reaction(r) = entry else { continue };
            let kinds = folded.entry(r.target).or_default();
            let at = kinds.iter().position(|k| k.reaction == r.reaction);
            if r.removed {
                let kind = at.expect("a reaction taken back was there");
                let users = &mut kinds[kind].users;
                let before = users.len();
                users.retain(|u| *u != r.sender);
                assert_eq!(
                    users.len() + 1,
                    before,
                    "{conversation} {:?} took back no reaction",
                    r.seq
                );
                if users.is_empty() {
                    kinds.remove(kind);
                }
            } else {
                match at {
                    Some(kind) => {
                        assert!(
                            !kinds[kind].users.contains(&r.sender),
                            "{conversation} {:?} reacted twice",
                            r.seq
                        );
                        kinds[kind].users.push(r.sender);
                    }
                    None => kinds.push(Reactions {
                        reaction: r.reaction.clone(),
                        users: vec![r.sender],
                    }),
                }
            }
        }
        for entry in &log {
            if let Entry::Message(m) = entry
                && m.deleted.is_none()
            {
                let expected = folded.remove(&m.seq).unwrap_or_default();
                assert_eq!(
                    m.reactions, expected,
                    "{conversation} {:?}'s reactions",
                    m.seq
                );
            }
        }
    }

    /// The most recent `window` sends of `sender` in `conversation`, oldest first.
    pub(super) fn sender_ops(
        &self,
        conversation: ConversationId,
        sender: UserId,
        window: usize,
    ) -> Vec<SenderOp> {
        let prefix = keys::sender_ops(conversation, sender).to_vec();
        let rows = self.stored.get(&Cf::SenderOps);
        let mut ops: Vec<SenderOp> = rows
            .into_iter()
            .flat_map(|rows| rows.range(prefix.clone()..))
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter_map(|(key, value)| {
                let seq = keys::parse_id(&key[prefix.len()..])?;
                crate::store::decode_sender_op(Seq(seq), value)
            })
            .collect();
        let keep = ops.len().saturating_sub(window);
        ops.drain(..keep);
        ops
    }
}
