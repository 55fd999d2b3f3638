//! The correctness checker: proves that every acknowledged message reached every member that
//! was online when it was sent, exactly once, in sequence order per conversation.
//!
//! The load generator tells it who must receive what ([`Checker::member`]: this client gets
//! every acknowledged entry of this conversation; [`Checker::acked`]: this entry was
//! acknowledged to its sender) and what happened ([`Checker::delivered`]); [`Checker::report`]
//! then counts:
//!
//! - **lost**: expected, never delivered;
//! - **duplicated**: delivered more than once to the same client;
//! - **reordered**: delivered after a later entry of the same conversation had reached the
//!   same client;
//! - **gaps**: holes — runs of lost entries followed by a delivered later one (a loss in
//!   the middle of a stream, as opposed to a tail that never arrived);
//! - **unexpected**: delivered, never expected (not an error by itself: a client sees the
//!   membership entries of its rooms, and messages whose ack its sender never got);
//! - **forked**: a client was pushed an entry with another link than another client (or the
//!   ack) had for it: the daemon gave clients different histories;
//! - **chain breaks**: an acknowledged entry's link does not follow from the link before it
//!   and the digest of what its sender sent ([`Checker::chained`], with
//!   `chat_protocol::chain::Tracker`); **chain verified** counts the entries that do, and
//!   **chain anchored** the places the check started over (a conversation's first acked
//!   entry, and after entries never acked with their link: membership changes, sends whose
//!   ack was lost in a crash).
//!
//! Memory: sets of sequence numbers are bitmaps from the lowest number seen, so a stream costs
//! one bit per entry of its conversation: a run with ten million deliveries checks in a few
//! megabytes. The links compared between clients cost eight bytes per entry. Records can arrive in any order (a delivery before its ack, say).

use std::collections::HashMap;

use chat_protocol::chain::Tracker;
use chat_protocol::{Appended, ConversationId, Seq};

/// A simulated client of the load generator.
pub type ClientId = u32;

/// A set of sequence numbers: a bitmap starting at `base` (a multiple of 64).
#[derive(Default, Clone)]
struct SeqSet {
    base: u64,
    words: Vec<u64>,
}

impl SeqSet {
    /// Adds `seq`; whether it was new.
    fn insert(&mut self, seq: u64) -> bool {
        if self.words.is_empty() {
            self.base = seq & !63;
        } else if seq < self.base {
            let new_base = seq & !63;
            let shift = usize::try_from((self.base - new_base) / 64).unwrap_or(usize::MAX);
            self.words.splice(0..0, std::iter::repeat_n(0, shift));
            self.base = new_base;
        }
        let offset = seq - self.base;
        let word = usize::try_from(offset / 64).unwrap_or(usize::MAX);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (offset % 64);
        let new = self.words[word] & bit == 0;
        self.words[word] |= bit;
        new
    }

    fn contains(&self, seq: u64) -> bool {
        if seq < self.base {
            return false;
        }
        let offset = seq - self.base;
        usize::try_from(offset / 64)
            .ok()
            .and_then(|word| self.words.get(word))
            .is_some_and(|w| w & (1u64 << (offset % 64)) != 0)
    }

    /// The members of either set.
    fn union(&self, other: &SeqSet) -> SeqSet {
        if other.words.is_empty() {
            return self.clone();
        }
        if self.words.is_empty() {
            return other.clone();
        }
        let base = self.base.min(other.base);
        let end = (self.base + 64 * self.words.len() as u64)
            .max(other.base + 64 * other.words.len() as u64);
        let mut words = vec![0u64; usize::try_from((end - base) / 64).unwrap_or(0)];
        for set in [self, other] {
            let offset = usize::try_from((set.base - base) / 64).unwrap_or(0);
            for (i, w) in set.words.iter().enumerate() {
                words[offset + i] |= w;
            }
        }
        SeqSet { base, words }
    }

    /// The lowest and highest members, if any.
    fn bounds(&self) -> Option<(u64, u64)> {
        let first = self.words.iter().position(|w| *w != 0)?;
        let last = self.words.iter().rposition(|w| *w != 0)?;
        let low = self.base + first as u64 * 64 + u64::from(self.words[first].trailing_zeros());
        let high = self.base + last as u64 * 64 + 63 - u64::from(self.words[last].leading_zeros());
        Some((low, high))
    }
}

/// What one client saw of one conversation: the entries pushed to it, and (as a sender) the
/// entries acknowledged to it.
#[derive(Default)]
struct Stream {
    delivered: SeqSet,
    acked_own: SeqSet,
    highest: u64,
}

/// Counts of everything that went wrong; all zero is a correct run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Expected deliveries (acknowledged entries times the members that must get them).
    pub expected: u64,
    /// Expected deliveries that happened.
    pub delivered: u64,
    /// Expected, never delivered.
    pub lost: u64,
    /// Deliveries beyond the first of the same entry to the same client.
    pub duplicated: u64,
    /// Deliveries that came after a later entry of the same conversation.
    pub reordered: u64,
    /// Runs of lost entries followed by a delivered later entry.
    pub gaps: u64,
    /// Deliveries of entries that were not expected for that client.
    pub unexpected: u64,
    /// Entries pushed with another link than another client or the ack had for them.
    pub forked: u64,
    /// Acknowledged entries whose link follows from the one before.
    pub chain_verified: u64,
    /// Places where the chain check started over, taking a link on trust.
    pub chain_anchored: u64,
    /// Conversations whose chain broke.
    pub chain_breaks: u64,
}

impl Report {
    /// Whether nothing was lost, duplicated, reordered or skipped.
    #[must_use]
    pub fn is_correct(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.gaps == 0
            && self.forked == 0
            && self.chain_breaks == 0
    }
}

/// Collects memberships, acknowledgements and deliveries.
#[derive(Default)]
pub struct Checker {
    members: HashMap<ConversationId, Vec<ClientId>>,
    acked: HashMap<ConversationId, SeqSet>,
    streams: HashMap<(ClientId, ConversationId), Stream>,
    duplicated: u64,
    reordered: u64,
    /// Per conversation, the first eight bytes of each entry's link as first recorded.
    links: HashMap<ConversationId, Links>,
    forked: u64,
    chains: Tracker,
}

/// Link prefixes by sequence number, from `base` (0: none recorded).
#[derive(Default)]
struct Links {
    base: u64,
    prefixes: std::collections::VecDeque<u64>,
}

impl Links {
    /// Records `prefix` for `seq`, or compares it with the one recorded; whether they agree.
    fn agree(&mut self, seq: u64, prefix: u64) -> bool {
        // 0 marks a place with nothing recorded; a link whose prefix is 0 is recorded as 1.
        let prefix = prefix.max(1);
        if self.prefixes.is_empty() {
            self.base = seq;
        }
        while seq < self.base {
            self.prefixes.push_front(0);
            self.base -= 1;
        }
        let at = usize::try_from(seq - self.base).unwrap_or(usize::MAX);
        if at >= self.prefixes.len() {
            self.prefixes.resize(at + 1, 0);
        }
        match self.prefixes[at] {
            0 => {
                self.prefixes[at] = prefix;
                true
            }
            recorded => recorded == prefix,
        }
    }
}

impl Checker {
    /// A checker with nothing recorded.
    #[must_use]
    pub fn new() -> Checker {
        Checker::default()
    }

    /// `client` is a member of `conversation` for the whole run: it must receive every
    /// acknowledged entry (live, or replayed after it reconnects; its own through the ack).
    pub fn member(&mut self, client: ClientId, conversation: ConversationId) {
        self.members.entry(conversation).or_default().push(client);
    }

    /// Entry `seq` of `conversation` was acknowledged to its sender.
    pub fn acked(&mut self, conversation: ConversationId, seq: Seq) {
        self.acked.entry(conversation).or_default().insert(seq.0);
    }

    /// `client`'s own send was acknowledged as entry `seq`: its delivery to the sender. An
    /// ack is a response, not a push: it may overtake the push of an earlier entry, it is
    /// repeated when a send is retried after a reconnect, and a resume may replay the entry
    /// as a push too. So it counts against loss only, never for order or duplication.
    pub fn acked_to_sender(&mut self, client: ClientId, conversation: ConversationId, seq: Seq) {
        let stream = self.streams.entry((client, conversation)).or_default();
        stream.acked_own.insert(seq.0);
    }

    /// `client` received entry `seq` of `conversation` as a push (live or replayed).
    pub fn delivered(&mut self, client: ClientId, conversation: ConversationId, seq: Seq) {
        let stream = self.streams.entry((client, conversation)).or_default();
        if !stream.delivered.insert(seq.0) {
            self.duplicated += 1;
            return;
        }
        if seq.0 < stream.highest {
            self.reordered += 1;
        }
        stream.highest = stream.highest.max(seq.0);
    }

    /// Entry `seq` of `conversation` was pushed (or acked) with a link starting with
    /// `prefix` (`crate::client::link_prefix`): every client must see the same one.
    pub fn linked(&mut self, conversation: ConversationId, seq: Seq, prefix: u64) {
        if !self
            .links
            .entry(conversation)
            .or_default()
            .agree(seq.0, prefix)
        {
            self.forked += 1;
        }
    }

    /// An acked entry's link, with the digest of what its sender sent: the chain is
    /// followed over it.
    pub fn chained(&mut self, conversation: ConversationId, seq: Seq, appended: &Appended) {
        self.linked(
            conversation,
            seq,
            crate::client::link_prefix(&appended.link),
        );
        self.chains.acked(conversation, seq, appended);
    }

    /// The counts so far.
    #[must_use]
    pub fn report(&self) -> Report {
        let chains = self.chains.report();
        let mut report = Report {
            duplicated: self.duplicated,
            reordered: self.reordered,
            forked: self.forked,
            chain_verified: chains.verified,
            chain_anchored: chains.anchored,
            chain_breaks: chains.breaks,
            ..Report::default()
        };
        let empty = SeqSet::default();
        let empty_stream = Stream::default();
        for ((client, conversation), stream) in &self.streams {
            let is_member = self
                .members
                .get(conversation)
                .is_some_and(|m| m.contains(client));
            if !is_member {
                report.unexpected += count(&stream.delivered.union(&stream.acked_own));
            }
        }
        for (conversation, members) in &self.members {
            let acked = self.acked.get(conversation).unwrap_or(&empty);
            for client in members {
                let stream = self
                    .streams
                    .get(&(*client, *conversation))
                    .unwrap_or(&empty_stream);
                tally(
                    acked,
                    &stream.delivered.union(&stream.acked_own),
                    &mut report,
                );
            }
        }
        report
    }
}

/// Members of a set.
fn count(set: &SeqSet) -> u64 {
    set.words.iter().map(|w| u64::from(w.count_ones())).sum()
}

/// Adds one member's stream to `report`: expected is `acked`, what arrived is `delivered`.
fn tally(acked: &SeqSet, delivered: &SeqSet, report: &mut Report) {
    let bounds = match (acked.bounds(), delivered.bounds()) {
        (None, None) => return,
        (Some(b), None) | (None, Some(b)) => b,
        (Some(a), Some(d)) => (a.0.min(d.0), a.1.max(d.1)),
    };
    let mut in_hole = false;
    for seq in bounds.0..=bounds.1 {
        match (acked.contains(seq), delivered.contains(seq)) {
            (true, true) => {
                report.expected += 1;
                report.delivered += 1;
                if in_hole {
                    report.gaps += 1;
                    in_hole = false;
                }
            }
            (true, false) => {
                report.expected += 1;
                report.lost += 1;
                in_hole = true;
            }
            (false, true) => {
                report.unexpected += 1;
                if in_hole {
                    report.gaps += 1;
                    in_hole = false;
                }
            }
            (false, false) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::RoomId;

    const ROOM: ConversationId = ConversationId::Room(RoomId(1));

    /// Clients 1 and 2 are members of the room; entries 1..=5 were acknowledged.
    fn checker() -> Checker {
        let mut checker = Checker::new();
        checker.member(1, ROOM);
        checker.member(2, ROOM);
        for seq in 1..=5 {
            checker.acked(ROOM, Seq(seq));
        }
        checker
    }

    #[test]
    fn a_clean_stream_is_correct() {
        let mut checker = checker();
        for seq in 1..=5 {
            checker.delivered(1, ROOM, Seq(seq));
            checker.delivered(2, ROOM, Seq(seq));
        }
        let report = checker.report();
        assert!(report.is_correct(), "{report:?}");
        assert_eq!((report.expected, report.delivered), (10, 10));
    }

    /// Entries 1..=n of a chain: each one's link and digest.
    fn links(n: u8) -> Vec<Appended> {
        use chat_protocol::chain;
        let mut tip = chain::genesis(ROOM);
        (1..=n)
            .map(|seq| {
                let digest = chain::link(&[seq; 32], &[0; 32]);
                tip = chain::link(&tip, &digest);
                Appended { link: tip, digest }
            })
            .collect()
    }

    #[test]
    fn the_hash_chain_is_followed_over_acks_and_compared_between_clients() {
        let chain = links(5);
        let prefix =
            |seq: u64| crate::client::link_prefix(&chain[usize::try_from(seq).unwrap() - 1].link);
        let mut checker = checker();
        // Acks in any order; pushes before or after them.
        for seq in [2u64, 1, 3, 5, 4] {
            checker.chained(ROOM, Seq(seq), &chain[usize::try_from(seq).unwrap() - 1]);
        }
        for seq in 1..=5 {
            checker.delivered(1, ROOM, Seq(seq));
            checker.linked(ROOM, Seq(seq), prefix(seq));
            checker.delivered(2, ROOM, Seq(seq));
            checker.linked(ROOM, Seq(seq), prefix(seq));
        }
        let report = checker.report();
        assert!(report.is_correct(), "{report:?}");
        assert_eq!(
            (report.chain_verified, report.chain_anchored, report.forked),
            (5, 0, 0)
        );
        // A client given another link for entry 3 is a fork.
        checker.linked(ROOM, Seq(3), prefix(4));
        assert_eq!(checker.report().forked, 1);
        assert!(!checker.report().is_correct());
        // An ack whose link does not follow from the digest its sender computed breaks the
        // chain.
        let mut altered = Checker::new();
        let mut wrong = chain[1];
        wrong.digest[0] ^= 1;
        altered.chained(ROOM, Seq(1), &chain[0]);
        altered.chained(ROOM, Seq(2), &wrong);
        let report = altered.report();
        assert_eq!((report.chain_verified, report.chain_breaks), (1, 1));
        assert!(!report.is_correct());
    }

    #[test]
    fn a_missing_message_is_lost_and_a_gap() {
        let mut checker = checker();
        for seq in [1, 2, 4, 5] {
            checker.delivered(1, ROOM, Seq(seq));
        }
        for seq in 1..=5 {
            checker.delivered(2, ROOM, Seq(seq));
        }
        let report = checker.report();
        assert_eq!((report.lost, report.gaps), (1, 1), "{report:?}");
        assert_eq!((report.duplicated, report.reordered), (0, 0));
        assert!(!report.is_correct());
    }

    #[test]
    fn a_lost_tail_is_lost_but_not_a_gap() {
        let mut checker = checker();
        for seq in 1..=3 {
            checker.delivered(1, ROOM, Seq(seq));
        }
        for seq in 1..=5 {
            checker.delivered(2, ROOM, Seq(seq));
        }
        let report = checker.report();
        assert_eq!((report.lost, report.gaps), (2, 0), "{report:?}");
    }

    #[test]
    fn a_duplicated_message_is_reported() {
        let mut checker = checker();
        for seq in [1, 2, 3, 3, 4, 5] {
            checker.delivered(1, ROOM, Seq(seq));
        }
        for seq in 1..=5 {
            checker.delivered(2, ROOM, Seq(seq));
        }
        let report = checker.report();
        assert_eq!(report.duplicated, 1, "{report:?}");
        assert_eq!((report.lost, report.reordered, report.gaps), (0, 0, 0));
    }

    #[test]
    fn a_reordered_message_is_reported() {
        let mut checker = checker();
        for seq in [1, 3, 2, 4, 5] {
            checker.delivered(1, ROOM, Seq(seq));
        }
        for seq in 1..=5 {
            checker.delivered(2, ROOM, Seq(seq));
        }
        let report = checker.report();
        assert_eq!(report.reordered, 1, "{report:?}");
        assert_eq!((report.lost, report.duplicated, report.gaps), (0, 0, 0));
    }

    #[test]
    fn each_fault_of_one_recorded_stream_is_reported() {
        // The stream the issue describes: one missing, one duplicated, one reordered.
        let mut checker = checker();
        for seq in [1, 3, 2, 2, 5] {
            checker.delivered(1, ROOM, Seq(seq));
        }
        let report = checker.report();
        assert_eq!(
            (
                report.lost,
                report.duplicated,
                report.reordered,
                report.gaps
            ),
            (1 + 5, 1, 1, 1),
            "client 1 misses 4 (a hole), client 2 got nothing: {report:?}"
        );
    }

    #[test]
    fn deliveries_nobody_expected_are_counted_apart() {
        let mut checker = checker();
        for seq in 1..=5 {
            checker.delivered(1, ROOM, Seq(seq));
            checker.delivered(2, ROOM, Seq(seq));
        }
        checker.delivered(3, ROOM, Seq(1));
        let report = checker.report();
        assert!(report.is_correct());
        assert_eq!(report.unexpected, 1);
    }

    #[test]
    fn a_delivery_before_its_ack_counts_once_the_ack_arrives() {
        let mut checker = Checker::new();
        checker.member(1, ROOM);
        checker.delivered(1, ROOM, Seq(7));
        assert_eq!(checker.report().unexpected, 1);
        checker.acked(ROOM, Seq(7));
        let report = checker.report();
        assert_eq!(
            (report.expected, report.delivered, report.unexpected),
            (1, 1, 0)
        );
    }

    #[test]
    fn sets_grow_downwards_and_across_words() {
        let mut set = SeqSet::default();
        for seq in [1000, 5, 64, 63, 200_000] {
            assert!(set.insert(seq));
        }
        assert!(!set.insert(64));
        for seq in [1000, 5, 64, 63, 200_000] {
            assert!(set.contains(seq), "{seq}");
        }
        assert!(!set.contains(6) && !set.contains(199_999));
        assert_eq!(set.bounds(), Some((5, 200_000)));
        assert_eq!(count(&set), 5);
        let mut other = SeqSet::default();
        other.insert(6);
        other.insert(300_000);
        let union = set.union(&other);
        assert_eq!(count(&union), 7);
        assert!(union.contains(6) && union.contains(300_000) && union.contains(63));
    }

    #[test]
    fn an_ack_overtaking_an_earlier_push_is_not_a_reordering() {
        let mut checker = checker();
        checker.acked_to_sender(1, ROOM, Seq(3));
        for seq in [1, 2, 4, 5] {
            checker.delivered(1, ROOM, Seq(seq));
        }
        for seq in 1..=5 {
            checker.delivered(2, ROOM, Seq(seq));
        }
        let report = checker.report();
        assert!(report.is_correct(), "{report:?}");
        assert_eq!((report.expected, report.delivered), (10, 10));
    }

    #[test]
    fn a_repeated_ack_and_a_replayed_own_entry_are_one_delivery() {
        let mut checker = checker();
        // Client 1 sent entry 3; the connection dropped before the ack. The resume replays
        // 3 as a push, and the retried send gets the original ack, marked duplicate.
        for seq in [1, 2, 3, 4, 5] {
            checker.delivered(1, ROOM, Seq(seq));
            checker.delivered(2, ROOM, Seq(seq));
        }
        checker.acked_to_sender(1, ROOM, Seq(3));
        checker.acked_to_sender(1, ROOM, Seq(3));
        let report = checker.report();
        assert!(report.is_correct(), "{report:?}");
        assert_eq!((report.delivered, report.duplicated), (10, 0));
    }

    #[test]
    fn a_send_acked_but_never_pushed_to_the_others_is_lost_for_them() {
        let mut checker = Checker::new();
        checker.member(1, ROOM);
        checker.member(2, ROOM);
        checker.acked(ROOM, Seq(1));
        checker.acked_to_sender(1, ROOM, Seq(1));
        let report = checker.report();
        assert_eq!((report.expected, report.delivered, report.lost), (2, 1, 1));
    }
}
