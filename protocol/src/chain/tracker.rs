//! Following the hash chain of every conversation a client receives entries of, as they come:
//! pushed entries (live and replayed), the acks of the client's own entries (which it is
//! never pushed), and history pages. No I/O; the SDK keeps one per connection task.
//!
//! A conversation's chain is *anchored* at the first link the tracker learns of it (a saved
//! tip, a page's prior link, the first entry seen): that link is taken on trust, as the daemon
//! gave it, except the chain's start, which the client computes (entry 1 is checked). From there every entry is checked against the link before it. Entries that arrive
//! ahead of a hole wait (at most [`MAX_AHEAD`] per conversation) for the hole to fill; an
//! ack can overtake the push of an earlier entry. Entries that come after the first one
//! seen but precede it check it in turn, down to the chain's start if they reach it (which
//! takes back the trust). A hole that cannot fill (a catch-up's `Gap`,
//! or more than `MAX_AHEAD` waiting) anchors the chain again after it, and the report counts
//! it. A link that does not follow, or that differs from one held for the same entry, breaks
//! the conversation's chain: it is reported and no longer followed.

use std::collections::{BTreeMap, HashMap};

use super::{ChainError, Hash, digest, erased, genesis, link};
use crate::server::{Appended, Entry, Gap, HistoryPage};
use crate::{ConversationId, Seq};

/// Entries kept per conversation while they wait for a hole before them to fill.
pub const MAX_AHEAD: usize = 1024;

/// Breaks kept in a [`Report`] (the count goes on).
pub const MAX_BREAKS: usize = 16;

/// What a [`Tracker`] found so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Entries checked against the link before them.
    pub verified: u64,
    /// Links taken on trust: a conversation's first one seen (unless the entries before it
    /// came too, down to entry 1), and the first after each hole that could not fill.
    pub anchored: u64,
    /// Conversations whose chain broke.
    pub breaks: u64,
    /// The first [`MAX_BREAKS`] of them.
    pub broken: Vec<Break>,
}

/// Where and how a conversation's chain broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Break {
    /// The conversation.
    pub conversation: ConversationId,
    /// The entry that does not follow.
    pub seq: Seq,
    /// Which rule it breaks.
    pub error: ChainError,
}

/// An entry's digest and link, waiting for the entries before it.
#[derive(Clone, Copy, Debug)]
struct Step {
    digest: Hash,
    link: Hash,
}

#[derive(Debug, Default)]
struct Track {
    /// The last entry followed and its link.
    tip: Option<(u64, Hash)>,
    /// Entries after a hole, by sequence number.
    ahead: BTreeMap<u64, Step>,
    /// The entry taken on trust when the first one seen was not entry 1, while the entries
    /// before it may still come (an ack overtaken by the push of a later entry): those
    /// that do extend the checked chain down towards the start.
    anchor: Option<(u64, Step)>,
    /// Entries before the anchor, waiting for the ones between.
    behind: BTreeMap<u64, Step>,
    /// The end of a hole a catch-up skipped (`Gap::to`): what waits after it anchors.
    skipped: Option<u64>,
    broken: bool,
}

/// The chains of a client's conversations; see the module's documentation.
#[derive(Debug, Default)]
pub struct Tracker {
    tracks: HashMap<ConversationId, Track>,
    report: Report,
}

impl Tracker {
    /// Starts from tips saved earlier (each conversation's last entry followed and its link).
    pub fn from_tips(tips: impl IntoIterator<Item = (ConversationId, Seq, Hash)>) -> Tracker {
        let tracks = tips
            .into_iter()
            .map(|(c, seq, link)| {
                let track = Track {
                    tip: Some((seq.0, link)),
                    ..Track::default()
                };
                (c, track)
            })
            .collect();
        Tracker {
            tracks,
            report: Report::default(),
        }
    }

    /// Each followed conversation's tip, by conversation (broken chains left out).
    #[must_use]
    pub fn tips(&self) -> Vec<(ConversationId, Seq, Hash)> {
        let mut tips: Vec<_> = self
            .tracks
            .iter()
            .filter(|(_, t)| !t.broken)
            .filter_map(|(c, t)| t.tip.map(|(seq, link)| (*c, Seq(seq), link)))
            .collect();
        tips.sort_by_key(|(c, _, _)| *c);
        tips
    }

    /// The tip of one conversation: the last entry followed and its link, to compare with
    /// another client's link of the same entry.
    #[must_use]
    pub fn tip(&self, conversation: ConversationId) -> Option<(Seq, Hash)> {
        let track = self.tracks.get(&conversation).filter(|t| !t.broken)?;
        track.tip.map(|(seq, link)| (Seq(seq), link))
    }

    /// What was found so far.
    #[must_use]
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// An entry pushed or paged: checked by its own link and, for an erased entry, its kept
    /// digest. Returns the break it caused, if it broke its conversation's chain.
    pub fn entry(&mut self, entry: &Entry) -> Option<Break> {
        let chain = entry.chain();
        let conversation = entry.conversation();
        let digest = match (erased(entry), chain.kept) {
            (true, Some(kept)) => kept,
            (false, None) => digest(entry),
            (false, Some(kept)) if kept == digest(entry) => kept,
            _ => return self.broke(conversation, entry.seq(), ChainError::Digest),
        };
        self.step(conversation, entry.seq(), digest, chain.link)
    }

    /// The ack of one of the client's own entries, with its place in the chain.
    pub fn acked(
        &mut self,
        conversation: ConversationId,
        seq: Seq,
        appended: &Appended,
    ) -> Option<Break> {
        self.step(conversation, seq, appended.digest, appended.link)
    }

    /// A history page: checked on its own from its prior link first (a thread page, which
    /// has none, is not followed: its entries are not consecutive), then followed.
    pub fn page(&mut self, page: &HistoryPage) -> Option<Break> {
        let prior = page.prior?;
        let mut entries: Vec<&Entry> = page.entries.iter().collect();
        entries.sort_by_key(|e| e.seq());
        let first = entries.first()?;
        let before = first.seq().0.saturating_sub(1);
        let mut verifier = super::Verifier::after(before, prior);
        for entry in &entries {
            if let Err(error) = verifier.check_entry(entry) {
                return self.broke(page.conversation, entry.seq(), error);
            }
        }
        let known = self.known(page.conversation, before, prior);
        known.or_else(|| entries.iter().find_map(|entry| self.entry(entry)))
    }

    /// A catch-up skipped `gap.from..=gap.to`: what comes after it cannot follow from
    /// before it unless the client pages the hole.
    pub fn gap(&mut self, gap: &Gap) {
        let track = self.tracks.entry(gap.conversation).or_default();
        track.skipped = Some(track.skipped.unwrap_or(0).max(gap.to.0));
        drain(track, gap.conversation, &mut self.report);
    }

    /// A link known for entry `seq` (0: the chain's start): anchors an unknown chain, and
    /// must equal the link held for the same entry.
    fn known(&mut self, conversation: ConversationId, seq: u64, link: Hash) -> Option<Break> {
        if seq == 0 && link != genesis(conversation) {
            return self.broke(conversation, Seq(0), ChainError::Link);
        }
        let track = self.tracks.entry(conversation).or_default();
        match track.tip {
            _ if track.broken => None,
            None if seq == 0 => {
                track.tip = Some((0, link));
                drain(track, conversation, &mut self.report)
            }
            None => {
                track.tip = Some((seq, link));
                self.report.anchored += 1;
                drain(track, conversation, &mut self.report)
            }
            Some((at, held)) if at == seq && held != link => {
                self.broke(conversation, Seq(seq), ChainError::Link)
            }
            Some(_) => None,
        }
    }

    /// The entry `seq` with `digest` and `link`: follows it, or keeps it until the entries
    /// before it come.
    fn step(
        &mut self,
        conversation: ConversationId,
        seq: Seq,
        digest: Hash,
        link: Hash,
    ) -> Option<Break> {
        let track = self.tracks.entry(conversation).or_default();
        if track.broken {
            return None;
        }
        let Some((at, held)) = track.tip else {
            // The first entry follows from the chain's start; any other is taken on trust.
            if seq.0 == 1 {
                track.tip = Some((0, genesis(conversation)));
                track.ahead.insert(seq.0, Step { digest, link });
            } else {
                track.tip = Some((seq.0, link));
                track.anchor = Some((seq.0, Step { digest, link }));
                self.report.anchored += 1;
            }
            return drain(track, conversation, &mut self.report);
        };
        if let Some((first, _)) = track.anchor
            && seq.0 < first
        {
            if track.behind.len() < MAX_AHEAD {
                track.behind.insert(seq.0, Step { digest, link });
            }
            return extend_down(track, conversation, &mut self.report);
        }
        if seq.0 <= at {
            // Followed already (a replay); the one at the tip must carry the link held.
            if seq.0 == at && held != link {
                return self.broke(conversation, seq, ChainError::Link);
            }
            return None;
        }
        if track.ahead.len() >= MAX_AHEAD
            && !track.ahead.contains_key(&seq.0)
            && let Some((first, waiting)) = track.ahead.pop_first()
        {
            // The hole is not filling: take the chain up again after it.
            track.tip = Some((first, waiting.link));
            (track.anchor, track.behind) = (None, BTreeMap::new());
            self.report.anchored += 1;
        }
        track.ahead.insert(seq.0, Step { digest, link });
        drain(track, conversation, &mut self.report)
    }

    fn broke(
        &mut self,
        conversation: ConversationId,
        seq: Seq,
        error: ChainError,
    ) -> Option<Break> {
        broke(
            self.tracks.entry(conversation).or_default(),
            conversation,
            seq,
            error,
            &mut self.report,
        )
    }
}

/// Follows the entries waiting right after the tip; past a skipped hole, anchors again at the
/// first that waits.
fn drain(track: &mut Track, conversation: ConversationId, report: &mut Report) -> Option<Break> {
    loop {
        let (at, held) = track.tip?;
        // What is at or before the tip is followed already.
        while track.ahead.first_key_value().is_some_and(|(s, _)| *s <= at) {
            track.ahead.pop_first();
        }
        if let Some(step) = track.ahead.remove(&(at + 1)) {
            let next = link(&held, &step.digest);
            if next != step.link {
                return broke(track, conversation, Seq(at + 1), ChainError::Link, report);
            }
            track.tip = Some((at + 1, next));
            report.verified += 1;
            continue;
        }
        match (track.skipped, track.ahead.first_key_value()) {
            (Some(to), _) if to <= at => track.skipped = None,
            (Some(to), Some((first, step))) if *first > to => {
                track.tip = Some((*first, step.link));
                track.ahead.pop_first();
                track.skipped = None;
                (track.anchor, track.behind) = (None, BTreeMap::new());
                report.anchored += 1;
            }
            _ => return None,
        }
    }
}

/// Checks the anchor against the entries that came before it, as far as they reach; down to
/// entry 1, the chain no longer rests on trust.
fn extend_down(
    track: &mut Track,
    conversation: ConversationId,
    report: &mut Report,
) -> Option<Break> {
    while let Some((first, step)) = track.anchor {
        let below = match first {
            1 => None,
            _ => Some(track.behind.remove(&(first - 1))?),
        };
        let before = below.map_or_else(|| genesis(conversation), |b| b.link);
        if link(&before, &step.digest) != step.link {
            return broke(track, conversation, Seq(first), ChainError::Link, report);
        }
        report.verified += 1;
        match below {
            Some(below) => track.anchor = Some((first - 1, below)),
            None => {
                report.anchored -= 1;
                (track.anchor, track.behind) = (None, BTreeMap::new());
            }
        }
    }
    None
}

fn broke(
    track: &mut Track,
    conversation: ConversationId,
    seq: Seq,
    error: ChainError,
    report: &mut Report,
) -> Option<Break> {
    track.broken = true;
    track.ahead.clear();
    let found = Break {
        conversation,
        seq,
        error,
    };
    report.breaks += 1;
    if report.broken.len() < MAX_BREAKS {
        report.broken.push(found);
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::super::genesis;
    use super::*;
    use crate::server::{Chain, Reaction};
    use crate::{OpId, RoomId, Timestamp, UserId};

    const ROOM: ConversationId = ConversationId::Room(RoomId(3));

    /// Entries 1..=n of a chain, with their links.
    fn chain(n: u64) -> Vec<Entry> {
        let mut tip = genesis(ROOM);
        (1..=n)
            .map(|seq| {
                let mut entry = Entry::Reaction(Reaction {
                    conversation: ROOM,
                    seq: Seq(seq),
                    ts: Timestamp(seq),
                    sender: UserId(1),
                    op: OpId(seq),
                    target: Seq(1),
                    reaction: "x".into(),
                    removed: false,
                    chain: Chain::default(),
                });
                tip = link(&tip, &digest(&entry));
                entry.chain_mut().link = tip;
                entry
            })
            .collect()
    }

    fn appended(entry: &Entry) -> Appended {
        Appended {
            link: entry.chain().link,
            digest: digest(entry),
        }
    }

    #[test]
    fn pushes_and_acks_in_any_order_are_followed() {
        let log = chain(6);
        let mut tracker = Tracker::from_tips([(ROOM, Seq(1), log[0].chain().link)]);
        // Entry 3 (pushed) overtakes the ack of own entry 2; 5 overtakes 4.
        assert_eq!(tracker.entry(&log[2]), None);
        assert_eq!(tracker.tip(ROOM), Some((Seq(1), log[0].chain().link)));
        assert_eq!(tracker.acked(ROOM, Seq(2), &appended(&log[1])), None);
        assert_eq!(tracker.tip(ROOM), Some((Seq(3), log[2].chain().link)));
        assert_eq!(tracker.entry(&log[4]), None);
        assert_eq!(tracker.entry(&log[3]), None);
        assert_eq!(tracker.entry(&log[5]), None);
        // A replay of what was followed changes nothing.
        assert_eq!(tracker.entry(&log[2]), None);
        assert_eq!(tracker.entry(&log[5]), None);
        let report = tracker.report();
        assert_eq!((report.verified, report.anchored, report.breaks), (5, 0, 0));
        assert_eq!(tracker.tips(), vec![(ROOM, Seq(6), log[5].chain().link)]);
    }

    #[test]
    fn an_altered_or_forked_entry_breaks_the_chain_once() {
        let log = chain(4);
        let mut tracker = Tracker::default();
        assert_eq!(tracker.entry(&log[0]), None);
        let report = tracker.report();
        assert_eq!((report.verified, report.anchored), (1, 0), "from the start");
        let mut trusting = Tracker::default();
        assert_eq!(trusting.entry(&log[2]), None);
        assert_eq!(
            trusting.report().anchored,
            1,
            "a later first link is taken on trust"
        );
        // The entries before it check it in turn, down to the start.
        assert_eq!(trusting.entry(&log[1]), None);
        assert_eq!(trusting.report().verified, 1);
        assert_eq!(trusting.entry(&log[0]), None);
        let report = trusting.report();
        assert_eq!((report.verified, report.anchored), (3, 0));
        assert_eq!(trusting.entry(&log[3]), None);
        assert_eq!(trusting.tip(ROOM), Some((Seq(4), log[3].chain().link)));
        let Entry::Reaction(mut altered) = log[1].clone() else {
            unreachable!()
        };
        altered.reaction = "y".into();
        let broken = tracker.entry(&Entry::Reaction(altered));
        assert_eq!(
            broken,
            Some(Break {
                conversation: ROOM,
                seq: Seq(2),
                error: ChainError::Link
            })
        );
        // Not followed any more: nothing else is reported, no tip is saved.
        assert_eq!(tracker.entry(&log[1]), None);
        assert_eq!(tracker.entry(&log[2]), None);
        assert_eq!(tracker.report().breaks, 1);
        assert!(tracker.tips().is_empty());
        // Another client's link for the entry it holds as its tip must be the same.
        let mut other = Tracker::from_tips([(ROOM, Seq(2), [0; 32])]);
        let fork = other.entry(&log[1]).map(|b| b.error);
        assert_eq!(fork, Some(ChainError::Link));
        // An erased entry without its kept digest cannot be followed.
        let mut gone = Tracker::from_tips([(ROOM, Seq(0), genesis(ROOM))]);
        let erased = Entry::Erased(crate::server::Erased {
            conversation: ROOM,
            seq: Seq(1),
            target: Seq(1),
            deletion: Seq(2),
            chain: *log[0].chain(),
        });
        assert_eq!(
            gone.entry(&erased).map(|b| b.error),
            Some(ChainError::Digest)
        );
        let mut kept = Tracker::from_tips([(ROOM, Seq(0), genesis(ROOM))]);
        let Entry::Erased(mut with_digest) = erased else {
            unreachable!()
        };
        with_digest.chain.kept = Some(digest(&log[0]));
        assert_eq!(kept.entry(&Entry::Erased(with_digest)), None);
        assert_eq!(kept.report().verified, 1);
    }

    #[test]
    fn pages_are_checked_from_their_prior_link_and_fill_holes() {
        let log = chain(8);
        let mut tracker = Tracker::from_tips([(ROOM, Seq(2), log[1].chain().link)]);
        // Live entry 7 arrives; 3..=6 were missed and come in a page, newest first.
        assert_eq!(tracker.entry(&log[6]), None);
        let page = HistoryPage {
            conversation: ROOM,
            entries: log[2..6].iter().rev().cloned().collect(),
            head: Seq(8),
            more: true,
            prior: Some(log[1].chain().link),
        };
        assert_eq!(tracker.page(&page), None);
        assert_eq!(tracker.tip(ROOM), Some((Seq(7), log[6].chain().link)));
        assert_eq!(tracker.report().verified, 5);
        // A page whose prior link is not the one held for that entry is a fork.
        let mut forked = page.clone();
        forked.prior = Some([1; 32]);
        let mut other = Tracker::from_tips([(ROOM, Seq(2), log[1].chain().link)]);
        assert_eq!(other.page(&forked).map(|b| b.error), Some(ChainError::Link));
        // A page whose entries do not follow from its own prior link is broken on its own.
        let mut gapped = page.clone();
        gapped.entries.remove(1);
        let mut fresh = Tracker::default();
        let error = fresh.page(&gapped).map(|b| b.error);
        assert!(matches!(error, Some(ChainError::OutOfOrder { .. })));
        // A thread page is not followed.
        let mut thread = page;
        thread.prior = None;
        let mut untouched = Tracker::default();
        assert_eq!(untouched.page(&thread), None);
        assert!(untouched.tips().is_empty());
    }

    #[test]
    fn holes_that_cannot_fill_anchor_again_after_them() {
        let log = chain(5);
        let mut tracker = Tracker::from_tips([(ROOM, Seq(1), log[0].chain().link)]);
        // A catch-up skipped 2..=3, then replays 4 and 5.
        tracker.gap(&Gap {
            conversation: ROOM,
            from: Seq(2),
            to: Seq(3),
        });
        assert_eq!(tracker.entry(&log[3]), None);
        assert_eq!(tracker.entry(&log[4]), None);
        assert_eq!(tracker.tip(ROOM), Some((Seq(5), log[4].chain().link)));
        let report = tracker.report();
        assert_eq!((report.verified, report.anchored), (1, 1));
        // Without a gap, a hole that stays open keeps MAX_AHEAD entries waiting, then is
        // given up on.
        let long = chain(MAX_AHEAD as u64 + 3);
        let mut waiting = Tracker::from_tips([(ROOM, Seq(1), long[0].chain().link)]);
        for entry in &long[2..] {
            assert_eq!(waiting.entry(entry), None);
        }
        assert_eq!(
            waiting.tip(ROOM),
            Some((Seq(MAX_AHEAD as u64 + 3), long.last().unwrap().chain().link))
        );
        let report = waiting.report();
        assert_eq!((report.verified, report.anchored), (MAX_AHEAD as u64, 1));
        assert!(waiting.tracks[&ROOM].ahead.is_empty());
    }
}
