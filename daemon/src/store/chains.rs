//! Checking the stored hash chains (`chat_protocol::chain`): every entry has its link, an
//! entry that holds its appended content matches its digest, each link follows from the one
//! before, and no link is left of an entry the log lost. `chatd verify` runs it over a data
//! directory. An entry dropped together with its link at the end of a conversation leaves
//! nothing behind in the store: only a client that holds a later link can tell.

use super::*;

/// What a check of the stored chains found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    /// Conversations checked.
    pub conversations: u64,
    /// Entries checked.
    pub entries: u64,
    /// Entries whose content was erased, checked by their kept digest.
    pub erased: u64,
    /// The first entries that do not match, at most one per conversation (conversation,
    /// seq, what is wrong).
    pub broken: Vec<(ConversationId, Seq, String)>,
}

impl Store {
    /// Checks the chain of `only`, or of every conversation, entry by entry from its first.
    ///
    /// # Errors
    /// RocksDB errors or an undecodable entry.
    pub fn verify_chains(&self, only: Option<ConversationId>) -> Result<ChainReport, Error> {
        let mut report = ChainReport::default();
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::Log)?);
        match only {
            Some(c) => iter.seek(keys::log(c, Seq(1))),
            None => iter.seek_to_first(),
        }
        // The conversation being walked: its id, the link so far, the seq expected next,
        // and whether it is already broken (then the rest of it is skipped).
        let mut walking: Option<(ConversationId, chain::Hash, u64, bool)> = None;
        while iter.valid() {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            let entry = decode_entry(value)?;
            let c = entry.conversation();
            if only.is_some_and(|o| o != c) {
                break;
            }
            let (link, expected, broken) = match walking {
                Some((at, link, next, broken)) if at == c => (link, next, broken),
                _ => {
                    report.conversations += 1;
                    (chain::genesis(c), 1, false)
                }
            };
            let seq = entry.seq();
            report.entries += 1;
            let outcome = if broken {
                Err(String::new())
            } else {
                self.check_link(key, &entry, &link, expected, &mut report)
            };
            match outcome {
                Ok(next) => walking = Some((c, next, seq.0 + 1, false)),
                Err(what) => {
                    if !broken {
                        report.broken.push((c, seq, what));
                    }
                    walking = Some((c, link, seq.0 + 1, true));
                }
            }
            iter.next();
        }
        iter.status()?;
        self.orphan_links(only, &mut report)?;
        Ok(report)
    }

    /// Links whose entry is gone from the log (an entry dropped at the end of a
    /// conversation, or a whole conversation), reported in conversations not broken yet.
    fn orphan_links(
        &self,
        only: Option<ConversationId>,
        report: &mut ChainReport,
    ) -> Result<(), Error> {
        let log = self.cf(Cf::Log)?;
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::Links)?);
        match only {
            Some(c) => iter.seek(keys::log(c, Seq(1))),
            None => iter.seek_to_first(),
        }
        while iter.valid() {
            let Some(key) = iter.key() else { break };
            let Some(c) = keys::parse_conversation(key) else {
                break;
            };
            if only.is_some_and(|o| o != c) {
                break;
            }
            let known = report.broken.iter().any(|(b, _, _)| *b == c);
            if !known && self.db.get_pinned_cf(log, key)?.is_none() {
                let seq = keys::log_seq(c, key).unwrap_or(Seq(0));
                let what = "missing from the log (its link remains)".to_owned();
                report.broken.push((c, seq, what));
            }
            iter.next();
        }
        iter.status()?;
        Ok(())
    }

    /// Checks one entry against its `links` row; returns its link.
    fn check_link(
        &self,
        key: &[u8],
        entry: &Entry,
        previous: &chain::Hash,
        expected: u64,
        report: &mut ChainReport,
    ) -> Result<chain::Hash, String> {
        if entry.seq().0 != expected {
            return Err(format!(
                "expected entry {expected}, found {}",
                entry.seq().0
            ));
        }
        let row = self
            .get(Cf::Links, key)
            .map_err(|e| e.to_string())?
            .ok_or("no link")?;
        let (link, digest) = parse_link(&row).ok_or("a malformed link row")?;
        let erased = matches!(entry, Entry::Erased(_))
            || matches!(entry, Entry::Message(m) if m.deleted.is_some());
        if erased {
            report.erased += 1;
        } else if chain::digest(entry) != digest {
            return Err("the entry does not match its digest".into());
        }
        if chain::link(previous, &digest) != link {
            return Err("the link does not follow from the one before".into());
        }
        Ok(link)
    }
}
