//! Where a client is in each conversation, kept across reconnects: the cursors a resume starts
//! after (section 8.5), and the client's own acknowledged sends, which the daemon never pushes
//! to the connection that sent them but replays after a resume. One implementation for every
//! client (the SDK, the load generator); no I/O.
//!
//! The cursor of a conversation is the highest entry pushed, extended over the client's own
//! acknowledged sends that directly follow it. Pushes of one conversation arrive in order, so
//! everything below the highest push was pushed or is an own send; an ack alone never moves
//! the cursor past a hole, because an ack can overtake the push of an earlier entry.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::{ConversationId, Cursor, Resume, Seq};

/// How many acknowledged own sends are remembered, at most (the oldest are forgotten first).
pub const OWN_ACKS: usize = 4096;

/// What a pushed log entry is to the client ([`Positions::pushed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Newer than anything the client has: new to it.
    New,
    /// At or before the cursor: the client has it (a replay after a resume).
    Repeat,
    /// One of the client's own sends, which it has from the ack (a replay after a resume).
    Own,
}

/// A client's positions; see the module's documentation.
#[derive(Clone, Debug, Default)]
pub struct Positions {
    cursors: HashMap<ConversationId, Seq>,
    own: HashSet<(ConversationId, Seq)>,
    own_order: VecDeque<(ConversationId, Seq)>,
}

impl Positions {
    /// Starts from saved cursors.
    pub fn from_cursors(cursors: &[Cursor]) -> Positions {
        Positions {
            cursors: cursors.iter().map(|c| (c.conversation, c.seq)).collect(),
            ..Positions::default()
        }
    }

    /// The entry at `seq` of `conversation` was pushed (live or replayed): what it is to the
    /// client. `Seq(0)` is no position (a relay that numbers nothing): always new.
    pub fn pushed(&mut self, conversation: ConversationId, seq: Seq) -> Pushed {
        if seq.0 == 0 {
            return Pushed::New;
        }
        if seq <= self.cursor(conversation) {
            return Pushed::Repeat;
        }
        self.cursors.insert(conversation, seq);
        self.fill(conversation);
        if self.own.contains(&(conversation, seq)) {
            Pushed::Own
        } else {
            Pushed::New
        }
    }

    /// An own send was acknowledged as entry `seq` of `conversation`. Returns the cursor when
    /// the ack moved it (over this and other own sends that directly follow it).
    pub fn acked(&mut self, conversation: ConversationId, seq: Seq) -> Option<Seq> {
        if seq.0 == 0 {
            return None;
        }
        if self.own.insert((conversation, seq)) {
            self.own_order.push_back((conversation, seq));
            if self.own_order.len() > OWN_ACKS
                && let Some(oldest) = self.own_order.pop_front()
            {
                self.own.remove(&oldest);
            }
        }
        let before = self.cursor(conversation);
        self.fill(conversation);
        let after = self.cursor(conversation);
        (after > before).then_some(after)
    }

    /// A conversation's head when the client first connected, for a conversation it has no
    /// cursor of: nothing before it is owed.
    pub fn baseline(&mut self, conversation: ConversationId, seq: Seq) {
        self.cursors.entry(conversation).or_insert(seq);
    }

    /// The cursor of `conversation` (`Seq(0)`: nothing yet).
    pub fn cursor(&self, conversation: ConversationId) -> Seq {
        self.cursors.get(&conversation).copied().unwrap_or(Seq(0))
    }

    /// Every cursor, by conversation (`Seq(0)`: everything of that conversation is owed, as
    /// a baseline of an empty conversation says).
    pub fn cursors(&self) -> Vec<Cursor> {
        let mut cursors: Vec<Cursor> = self
            .cursors
            .iter()
            .map(|(conversation, seq)| Cursor {
                conversation: *conversation,
                seq: *seq,
            })
            .collect();
        cursors.sort_by_key(|c| c.conversation);
        cursors
    }

    /// What to resume with: every cursor, or the most advanced
    /// [`MAX_RESUME_CURSORS`](crate::limits::MAX_RESUME_CURSORS) when there are more
    /// (conversations not listed resume from the user's delivered marker).
    pub fn resume(&self) -> Resume {
        let mut cursors = self.cursors();
        if cursors.len() > crate::limits::MAX_RESUME_CURSORS {
            cursors.sort_by_key(|c| (std::cmp::Reverse(c.seq), c.conversation));
            cursors.truncate(crate::limits::MAX_RESUME_CURSORS);
            cursors.sort_by_key(|c| c.conversation);
        }
        Resume { cursors }
    }

    /// Moves the cursor over own acknowledged sends that directly follow it. A conversation
    /// gets a cursor only when it moves (an ack ahead of a hole leaves it without one, so a
    /// resume does not ask for its whole log).
    fn fill(&mut self, conversation: ConversationId) {
        let start = self.cursor(conversation);
        let mut cursor = start;
        while self.own.contains(&(conversation, Seq(cursor.0 + 1))) {
            cursor.0 += 1;
        }
        if cursor > start {
            self.cursors.insert(conversation, cursor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RoomId;

    const ROOM: ConversationId = ConversationId::Room(RoomId(1));

    #[test]
    fn an_ack_ahead_of_a_hole_does_not_move_the_cursor_past_it() {
        let mut positions = Positions::default();
        assert_eq!(positions.pushed(ROOM, Seq(1)), Pushed::New);
        // Own send 3 acked before entry 2 was pushed.
        assert_eq!(positions.acked(ROOM, Seq(3)), None);
        assert_eq!(positions.cursor(ROOM), Seq(1));
        assert_eq!(positions.pushed(ROOM, Seq(2)), Pushed::New);
        assert_eq!(positions.cursor(ROOM), Seq(3), "over the own send");
        assert_eq!(positions.acked(ROOM, Seq(4)), Some(Seq(4)));
        assert_eq!(positions.resume().cursors.len(), 1);
    }

    #[test]
    fn replays_after_a_resume_are_repeats_or_own() {
        let mut positions = Positions::default();
        positions.pushed(ROOM, Seq(1));
        positions.acked(ROOM, Seq(3));
        // A resume from cursor 1 replays 2 (new), then 3 (the own send), then 1 again
        // cannot come (pushes are in order), but a late one would be a repeat.
        assert_eq!(positions.pushed(ROOM, Seq(2)), Pushed::New);
        assert_eq!(positions.pushed(ROOM, Seq(3)), Pushed::Repeat);
        let mut positions = Positions::default();
        positions.acked(ROOM, Seq(5));
        positions.pushed(ROOM, Seq(3));
        assert_eq!(positions.pushed(ROOM, Seq(5)), Pushed::Own);
        assert_eq!(positions.pushed(ROOM, Seq(1)), Pushed::Repeat);
        // Seq(0) numbers nothing.
        assert_eq!(positions.pushed(ROOM, Seq(0)), Pushed::New);
    }

    #[test]
    fn own_acks_are_remembered_within_a_bound() {
        let mut positions = Positions::default();
        for seq in 1..=(OWN_ACKS as u64 + 10) {
            positions.acked(ROOM, Seq(seq));
        }
        assert_eq!(positions.own.len(), OWN_ACKS);
        assert_eq!(positions.own_order.len(), OWN_ACKS);
        assert_eq!(positions.cursor(ROOM), Seq(OWN_ACKS as u64 + 10));
    }

    #[test]
    fn a_resume_keeps_the_most_advanced_cursors() {
        let mut positions = Positions::default();
        let max = crate::limits::MAX_RESUME_CURSORS;
        for room in 1..=max as u64 + 5 {
            positions.pushed(ConversationId::Room(RoomId(room)), Seq(room));
        }
        let resume = positions.resume();
        assert_eq!(resume.cursors.len(), max);
        assert!(resume.cursors.iter().all(|c| c.seq.0 > 5));
        // A baseline of an empty conversation asks for all of it; an ack ahead of a hole
        // asks for nothing.
        let mut fresh = Positions::default();
        fresh.baseline(ROOM, Seq(0));
        fresh.baseline(ROOM, Seq(7));
        assert_eq!(
            fresh.cursor(ROOM),
            Seq(0),
            "a baseline never moves a cursor"
        );
        assert_eq!(fresh.resume().cursors.len(), 1);
        let mut acked = Positions::default();
        acked.acked(ROOM, Seq(5));
        assert!(acked.resume().cursors.is_empty());
        acked.acked(ROOM, Seq(0));
        assert_eq!(acked.own.len(), 1, "Seq(0) is no position");
    }
}
