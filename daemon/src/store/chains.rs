//! The stored hash chains (`chat_protocol::chain`): the reads of links (a conversation's
//! tip, an entry's link, the link before a page) and the check of every chain. Every entry
//! has its link (and carries it), an entry that holds its appended content matches its
//! digest, each link follows from the one before, and no link is left of an entry the log
//! lost; `chatd verify` runs the check over a data directory. An entry dropped together with
//! its link at the end of a conversation leaves nothing behind in the store: only a client
//! that holds a later link can tell.

use super::*;

/// Whether `entry` carries the link and, erased, the digest stored for it in `links` (an
/// erased edit's row holds none: reads take them from `links`).
pub(crate) fn carries(entry: &Entry, link: &chain::Hash, digest: &chain::Hash) -> bool {
    let own = entry.chain();
    matches!(entry, Entry::Erased(_))
        || (own.link == *link && own.kept == chain::erased(entry).then_some(*digest))
}

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

impl ChainReport {
    /// Adds another store's report to this one (a node's partitions).
    pub fn add(&mut self, other: ChainReport) {
        self.conversations += other.conversations;
        self.entries += other.entries;
        self.erased += other.erased;
        self.broken.extend(other.broken);
    }
}

impl Store {
    /// The link of the entry `head` of `c`, where the next entry's link starts; `None` when
    /// `head` is 0 (no entry yet).
    ///
    /// # Errors
    /// RocksDB errors, or an entry with no link (a store this chatd did not write).
    pub fn chain_tip(&self, c: ConversationId, head: Seq) -> Result<Option<chain::Hash>, Error> {
        if head == Seq(0) {
            return Ok(None);
        }
        Ok(Some(self.link(c, head)?.0))
    }

    /// The link and digest of the entry `seq` of `c`.
    ///
    /// # Errors
    /// RocksDB errors, or an entry with no link (a store this chatd did not write).
    pub fn link(&self, c: ConversationId, seq: Seq) -> Result<(chain::Hash, chain::Hash), Error> {
        let row = self.get(Cf::Links, &keys::log(c, seq))?;
        row.as_deref()
            .and_then(records::parse_link)
            .ok_or_else(|| Error::Corrupt {
                cf: Cf::Links,
                message: format!("no link for entry {} of {c:?}", seq.0),
            })
    }

    /// The link of the entry before `first` (the chain's start before entry 1): what a page
    /// beginning at `first` is checked from (`HistoryPage::prior`).
    ///
    /// # Errors
    /// As [`Store::link`].
    pub fn prior(&self, c: ConversationId, first: Seq) -> Result<chain::Hash, Error> {
        match first.0 {
            0 | 1 => Ok(chain::genesis(c)),
            n => Ok(self.link(c, Seq(n - 1))?.0),
        }
    }

    /// Checks the chain of `only`, or of every conversation, entry by entry from its first
    /// ([`chain::Verifier`], with the links and digests kept in `links`).
    ///
    /// # Errors
    /// RocksDB errors or an undecodable entry.
    pub fn verify_chains(&self, only: Option<ConversationId>) -> Result<ChainReport, Error> {
        let mut report = ChainReport::default();
        let links = self.cf(Cf::Links)?;
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::Log)?);
        match only {
            Some(c) => iter.seek(keys::log(c, Seq(1))),
            None => iter.seek_to_first(),
        }
        // The conversation being walked, and its verifier while it holds.
        let mut walking: Option<(ConversationId, Option<chain::Verifier>)> = None;
        while iter.valid() {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            let entry = decode_entry(value)?;
            let c = entry.conversation();
            if only.is_some_and(|o| o != c) {
                break;
            }
            if walking.as_ref().is_none_or(|(at, _)| *at != c) {
                report.conversations += 1;
                walking = Some((c, Some(chain::Verifier::new(c))));
            }
            report.entries += 1;
            report.erased += u64::from(chain::erased(&entry));
            let Some((_, Some(verifier))) = walking.as_mut() else {
                // Broken already: the rest of the conversation is not checked.
                iter.next();
                continue;
            };
            let row = self.db.get_pinned_cf(links, key)?;
            let checked = match row.as_deref().and_then(parse_link) {
                None => Err("no link".to_owned()),
                // The kept digest: what an erased entry is checked by, and what any other
                // must still match.
                Some((link, digest)) if !carries(&entry, &link, &digest) => {
                    Err("the entry carries another link than the one stored beside it".to_owned())
                }
                Some((link, digest)) => verifier
                    .check(&entry, &link, Some(&digest))
                    .map_err(|e| e.to_string()),
            };
            if let Err(what) = checked {
                report.broken.push((c, entry.seq(), what));
                walking = Some((c, None));
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
}
