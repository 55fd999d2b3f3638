//! Catch-up reads: the walk over a user's conversations after their cursors, page by page
//! within a byte target, with gaps where too much was missed.

use super::*;

/// One item of a catch-up, in the order the client must see them.
#[derive(Debug)]
pub enum ReplayItem {
    /// Entries skipped because there were too many: page them through history.
    Gap(Gap),
    /// An entry the device missed.
    Entry(Entry),
}

/// Entries a catch-up page reads at a time: the most a page can exceed its byte target by.
pub const REPLAY_CHUNK: usize = 16;

/// Encoded size of an entry beyond what [`Entry::charge`] counts, at most (ids, seqs,
/// times, op ids, varint lengths, the event frame's header): every fixed field of an entry
/// is far below it.
pub const ENTRY_OVERHEAD: usize = 256;

/// The most [`Entry::charge`] can be at the protocol's ceilings (an edited message: two
/// bodies, its edits' seqs, its mentions and reactions), not the configured `max_body`:
/// entries stored before a lower setting keep their size.
pub const MAX_ENTRY_CHARGE: usize = chat_protocol::limits::MAX_ENTRY_CHARGE;

/// Encoded size of a `Gap` event frame, at most.
pub(super) const GAP_BOUND: usize = 64;

/// An upper bound of an entry's size as an event frame.
pub(super) fn encoded_bound(entry: &Entry) -> usize {
    entry.charge() + ENTRY_OVERHEAD
}

/// A catch-up in progress between its pages ([`Stores::catch_up_page`]): the device's
/// cursors, what is left of the replay bound, and where the walk through the user's
/// conversations stands. Small: the cursors (at most 1 024) and one listing page of
/// conversation ids.
#[derive(Debug)]
pub struct CatchUp {
    user: UserId,
    cursors: std::collections::HashMap<ConversationId, Seq>,
    per_conversation: u64,
    /// Entries the replay may still hold.
    left: u64,
    /// Conversations listed and not visited yet.
    listing: std::collections::VecDeque<ConversationId>,
    /// The listing goes on after this conversation.
    listed_after: Option<ConversationId>,
    listed_all: bool,
    /// The conversation being replayed: the next seq to read and the last one.
    current: Option<(ConversationId, Seq, Seq)>,
}

impl CatchUp {
    /// A catch-up of `user` from `cursors`, at most `per_conversation` entries of each
    /// conversation and `total` in all.
    #[must_use]
    pub fn new(
        user: UserId,
        cursors: std::collections::HashMap<ConversationId, Seq>,
        per_conversation: u64,
        total: u64,
    ) -> CatchUp {
        CatchUp {
            user,
            cursors,
            per_conversation,
            left: total,
            listing: std::collections::VecDeque::new(),
            listed_after: None,
            listed_all: false,
            current: None,
        }
    }

    /// Whether every page has been read.
    #[must_use]
    pub fn done(&self) -> bool {
        self.current.is_none() && self.listing.is_empty() && self.listed_all
    }
}

impl CatchUp {
    /// The next page of a catch-up: what a device missed, for every conversation of the
    /// user, the entries after its cursor (else the user's delivered marker), oldest first,
    /// at most `per_conversation` entries of one conversation and `total` in all (the older
    /// entries beyond that are announced as a [`ReplayItem::Gap`] before the entries that
    /// follow them). A page ends once its entries' encoded size reaches `max_bytes` (it may
    /// exceed it by up to [`REPLAY_CHUNK`] entries); [`CatchUp::done`] says whether more
    /// pages follow. A conversation's newest entry is read when the catch-up reaches it.
    ///
    /// # Errors
    /// RocksDB errors or corrupt entries.
    pub(super) fn page(
        &mut self,
        stores: &Stores,
        max_bytes: usize,
    ) -> Result<Vec<ReplayItem>, Error> {
        let catch_up = self;
        let mut items = Vec::new();
        let mut bytes = 0usize;
        while bytes < max_bytes {
            if let Some((c, next, last)) = catch_up.current {
                let chunk = usize::try_from(last.0 - next.0 + 1)
                    .unwrap_or(usize::MAX)
                    .min(REPLAY_CHUNK);
                let (entries, _) = stores.history(
                    c,
                    HistoryFrom::After(Seq(next.0 - 1)),
                    chunk,
                    Order::OldestFirst,
                    last,
                )?;
                catch_up.current = match entries.last().map(Entry::seq) {
                    Some(seq) if seq < last => Some((c, seq.next(), last)),
                    _ => None,
                };
                bytes += entries.iter().map(encoded_bound).sum::<usize>();
                items.extend(entries.into_iter().map(ReplayItem::Entry));
                continue;
            }
            let Some(c) = catch_up.listing.pop_front() else {
                if catch_up.listed_all {
                    break;
                }
                let (conversations, more) =
                    stores.user_conversations(catch_up.user, catch_up.listed_after, 1024)?;
                catch_up.listed_all = !more || conversations.is_empty();
                catch_up.listed_after = conversations.last().copied();
                catch_up.listing.extend(conversations);
                continue;
            };
            let from = match catch_up.cursors.get(&c) {
                Some(seq) => *seq,
                None => stores.marks(c, catch_up.user)?.0,
            };
            let head = stores.head(c)?;
            if head <= from {
                continue;
            }
            let missing = head.0 - from.0;
            let n = missing.min(catch_up.per_conversation).min(catch_up.left);
            if n < missing {
                items.push(ReplayItem::Gap(Gap {
                    conversation: c,
                    from: from.next(),
                    to: Seq(head.0 - n),
                }));
                bytes += GAP_BOUND;
            }
            if n > 0 {
                catch_up.current = Some((c, Seq(head.0 - n + 1), head));
                catch_up.left -= n;
            }
        }
        Ok(items)
    }
}
