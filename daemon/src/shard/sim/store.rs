//! The simulator's storage: column families of sorted keys in memory, written a whole batch
//! at a time and read as the real store reads them.

use std::collections::{BTreeMap, HashMap, HashSet};

use chat_protocol::{ConversationId, Entry, Seq, UserId};

use crate::store::writer::Batch;
use crate::store::{Cf, SenderOp, keys};

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

    /// The stored entry at `seq`.
    pub(super) fn entry(&self, conversation: ConversationId, seq: Seq) -> Option<Entry> {
        let value = self
            .stored
            .get(&Cf::Log)?
            .get(&keys::log(conversation, seq)[..])?;
        Some(Entry::decode_from(value).expect("a stored entry decodes"))
    }

    /// Conversation `conversation`'s stored log is contiguous from 1 and holds each send once.
    pub(super) fn check_log(&self, conversation: ConversationId) {
        let prefix = keys::conversation(conversation).to_vec();
        let mut sends = HashSet::new();
        let rows = self.stored.get(&Cf::Log);
        let log = rows
            .into_iter()
            .flat_map(|rows| rows.range(prefix.clone()..))
            .take_while(|(key, _)| key.starts_with(&prefix));
        for (i, (_, value)) in log.enumerate() {
            let entry = Entry::decode_from(value).expect("a stored entry decodes");
            assert_eq!(entry.seq().0, i as u64 + 1, "a hole in {conversation}");
            if let Entry::Message(m) = entry {
                let send = (m.sender, m.op);
                assert!(
                    sends.insert(send),
                    "{send:?} stored twice in {conversation}"
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
