//! Which live log events a connection gets around a catch-up: the ordering rules of resume,
//! without I/O or budgets (the connection charges and releases the bytes).
//!
//! While a catch-up runs, live log events are held back. When its last page has been sent,
//! the held events that the replay (or the device, by its cursor) already had are dropped and
//! the others delivered. After it, a live push of an entry at or before the last one the device
//! has is late (its fan-out was still on the way when the catch-up read the log) and dropped; a
//! conversation's mark goes with its first newer entry (pushes of one conversation arrive in
//! order). So each (conversation, seq) reaches the device once.

use std::collections::HashMap;

use bytes::Bytes;
use chat_protocol::{ConversationId, Seq};

use crate::shard::Position;

/// What to do with a live log event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A catch-up runs: hold it ([`Gate::hold`]) if the budgets take it, else lag.
    Hold,
    /// The device has it already: drop it.
    Late,
    /// Send it.
    Deliver,
}

/// A connection's catch-up state.
#[derive(Default)]
pub(crate) struct Gate {
    /// While a catch-up runs: the live log events held back, in arrival order.
    held: Option<Vec<(Position, Bytes)>>,
    /// Per conversation, the last entry the device has: its cursor, or the last the replay
    /// sent. At most `MAX_RESUME_CURSORS` cursors plus the replay's conversations.
    caught_up_to: HashMap<ConversationId, Seq>,
}

impl Gate {
    /// A catch-up starts after `cursors`.
    pub(crate) fn start(&mut self, cursors: HashMap<ConversationId, Seq>) {
        self.held = Some(Vec::new());
        self.caught_up_to = cursors;
    }

    /// Whether a catch-up runs.
    pub(crate) fn catching_up(&self) -> bool {
        self.held.is_some()
    }

    /// Live events held so far.
    pub(crate) fn held(&self) -> usize {
        self.held.as_ref().map_or(0, Vec::len)
    }

    /// What to do with a live push of the entry at `position`.
    pub(crate) fn live(&mut self, (conversation, seq): Position) -> Verdict {
        if self.held.is_some() {
            return Verdict::Hold;
        }
        if let Some(mark) = self.caught_up_to.get(&conversation).copied() {
            if seq <= mark {
                return Verdict::Late;
            }
            self.caught_up_to.remove(&conversation);
        }
        Verdict::Deliver
    }

    /// Holds a live event (its bytes are charged).
    pub(crate) fn hold(&mut self, position: Position, frame: Bytes) {
        if let Some(held) = self.held.as_mut() {
            held.push((position, frame));
        }
    }

    /// Gives up what is held (the connection lags, or the catch-up's next page needs the
    /// room); the catch-up goes on.
    pub(crate) fn take_held(&mut self) -> Vec<(Position, Bytes)> {
        self.held.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The replay sent the entry at `position`.
    pub(crate) fn replayed(&mut self, (conversation, seq): Position) {
        let mark = self.caught_up_to.entry(conversation).or_insert(seq);
        *mark = (*mark).max(seq);
    }

    /// The catch-up's last page was sent: the held events in order, each with whether the
    /// device still needs it (`false`: the replay or its cursor covered it).
    pub(crate) fn finish(&mut self) -> Vec<(Bytes, bool)> {
        let held = self.held.take().unwrap_or_default();
        held.into_iter()
            .map(|(position, frame)| {
                let needed = self.live(position) == Verdict::Deliver;
                (frame, needed)
            })
            .collect()
    }

    /// The connection is over: nothing is held any more.
    pub(crate) fn clear(&mut self) -> Vec<(Position, Bytes)> {
        self.caught_up_to.clear();
        self.held.take().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: ConversationId = ConversationId::Room(chat_protocol::RoomId(1));
    const OTHER: ConversationId = ConversationId::Room(chat_protocol::RoomId(2));

    fn frame(seq: u64) -> Bytes {
        Bytes::from(seq.to_string())
    }

    /// Runs a catch-up after `cursor` in ROOM that replays `replay` while `live` arrive,
    /// and returns what the device gets of the held events.
    fn catch_up(gate: &mut Gate, cursor: u64, replay: &[u64], live: &[u64]) -> Vec<u64> {
        gate.start(HashMap::from([(ROOM, Seq(cursor))]));
        for seq in live {
            assert_eq!(gate.live((ROOM, Seq(*seq))), Verdict::Hold);
            gate.hold((ROOM, Seq(*seq)), frame(*seq));
        }
        for seq in replay {
            gate.replayed((ROOM, Seq(*seq)));
        }
        gate.finish()
            .into_iter()
            .filter(|(_, needed)| *needed)
            .map(|(f, _)| String::from_utf8_lossy(&f).parse().unwrap())
            .collect()
    }

    #[test]
    fn a_late_live_push_after_a_catch_up_is_dropped() {
        let mut gate = Gate::default();
        // The replay read 6 and 7; the fan-out of 7 was still on the way and arrives after.
        assert!(catch_up(&mut gate, 5, &[6, 7], &[]).is_empty());
        assert!(!gate.catching_up());
        assert_eq!(gate.live((ROOM, Seq(7))), Verdict::Late);
        assert_eq!(gate.live((ROOM, Seq(8))), Verdict::Deliver);
        // The mark went with the first newer entry.
        assert_eq!(gate.live((ROOM, Seq(9))), Verdict::Deliver);
        // Other conversations were never held back.
        assert_eq!(gate.live((OTHER, Seq(1))), Verdict::Deliver);
    }

    #[test]
    fn events_held_during_a_catch_up_come_after_it_without_what_it_replayed() {
        let mut gate = Gate::default();
        // 7 and 8 were pushed live while the replay read up to 7.
        assert_eq!(catch_up(&mut gate, 5, &[6, 7], &[7, 8]), [8]);
        assert_eq!(gate.live((ROOM, Seq(9))), Verdict::Deliver);
    }

    #[test]
    fn a_cursor_covers_late_pushes_when_nothing_was_replayed() {
        let mut gate = Gate::default();
        // The device had up to 10; a late push of 9 arrived during the (empty) catch-up.
        assert!(catch_up(&mut gate, 10, &[], &[9]).is_empty());
        assert_eq!(gate.live((ROOM, Seq(10))), Verdict::Late);
        assert_eq!(gate.live((ROOM, Seq(11))), Verdict::Deliver);
    }

    #[test]
    fn a_second_catch_up_starts_from_its_own_cursors() {
        let mut gate = Gate::default();
        assert!(catch_up(&mut gate, 5, &[6], &[]).is_empty());
        // A `Sync` with an older cursor: its replay decides again.
        assert_eq!(catch_up(&mut gate, 2, &[3, 4, 5, 6], &[6, 7]), [7]);
    }

    #[test]
    fn held_events_given_up_are_not_delivered_and_the_catch_up_goes_on() {
        let mut gate = Gate::default();
        gate.start(HashMap::new());
        gate.hold((ROOM, Seq(1)), frame(1));
        assert_eq!(gate.held(), 1);
        assert_eq!(gate.take_held().len(), 1);
        assert!(gate.catching_up());
        assert!(gate.finish().is_empty());
        assert_eq!(gate.clear().len(), 0);
    }
}
