//! The correctness checker: proves that every acknowledged message reached every member that
//! was online when it was sent, exactly once, in sequence order per conversation.
//!
//! The load generator tells it what to expect ([`Checker::expect`]: this client must receive
//! this entry) and what happened ([`Checker::delivered`]); [`Checker::report`] then counts:
//!
//! - **lost**: expected, never delivered;
//! - **duplicated**: delivered more than once to the same client;
//! - **reordered**: delivered after a later entry of the same conversation had reached the
//!   same client;
//! - **gaps**: holes — runs of lost entries followed by a delivered later one (a loss in
//!   the middle of a stream, as opposed to a tail that never arrived);
//! - **unexpected**: delivered, never expected (not an error by itself: a client may see
//!   entries from before it was counted as a member).
//!
//! Memory: one map entry per expected delivery; a run sized for millions of deliveries
//! checks in batches (`report` then a fresh checker).

use std::collections::{BTreeMap, HashMap};

use chat_protocol::{ConversationId, Seq};

/// A simulated client of the load generator.
pub type ClientId = u32;

/// What one client saw of one conversation: per sequence number, expected or not and how
/// many deliveries; the highest delivered so far (to spot reordering).
#[derive(Default)]
struct Stream {
    entries: BTreeMap<u64, Seen>,
    highest: u64,
}

#[derive(Default, Clone, Copy)]
struct Seen {
    expected: bool,
    delivered: u32,
}

/// Counts of everything that went wrong; all zero is a correct run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Expected deliveries.
    pub expected: u64,
    /// Deliveries of expected entries (first ones).
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
}

impl Report {
    /// Whether nothing was lost, duplicated, reordered or skipped.
    #[must_use]
    pub fn is_correct(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0 && self.gaps == 0
    }
}

/// Collects expectations and deliveries.
#[derive(Default)]
pub struct Checker {
    streams: HashMap<(ClientId, ConversationId), Stream>,
    duplicated: u64,
    reordered: u64,
}

impl Checker {
    /// A checker with nothing recorded.
    #[must_use]
    pub fn new() -> Checker {
        Checker::default()
    }

    /// `client` must receive entry `seq` of `conversation` (it was online when the entry
    /// was acknowledged).
    pub fn expect(&mut self, client: ClientId, conversation: ConversationId, seq: Seq) {
        self.streams
            .entry((client, conversation))
            .or_default()
            .entries
            .entry(seq.0)
            .or_default()
            .expected = true;
    }

    /// `client` received entry `seq` of `conversation`.
    pub fn delivered(&mut self, client: ClientId, conversation: ConversationId, seq: Seq) {
        let stream = self.streams.entry((client, conversation)).or_default();
        let seen = stream.entries.entry(seq.0).or_default();
        seen.delivered += 1;
        if seen.delivered > 1 {
            self.duplicated += 1;
            return;
        }
        if seq.0 < stream.highest {
            self.reordered += 1;
        }
        stream.highest = stream.highest.max(seq.0);
    }

    /// The counts so far.
    #[must_use]
    pub fn report(&self) -> Report {
        let mut report = Report {
            duplicated: self.duplicated,
            reordered: self.reordered,
            ..Report::default()
        };
        for stream in self.streams.values() {
            let mut in_hole = false;
            for seen in stream.entries.values() {
                match (seen.expected, seen.delivered > 0) {
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
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::RoomId;

    const ROOM: ConversationId = ConversationId::Room(RoomId(1));

    /// Clients 1 and 2 expect entries 1..=5 of the room.
    fn checker() -> Checker {
        let mut checker = Checker::new();
        for seq in 1..=5 {
            checker.expect(1, ROOM, Seq(seq));
            checker.expect(2, ROOM, Seq(seq));
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
}
