//! Deduplication of sends: which op ids each sender of a conversation has used lately.
//!
//! A retried op id is recognised while it is among the last `window` sends of the same user
//! in the same conversation, however far the conversation moved meanwhile and across
//! restarts. The store keeps exactly those sends per sender (`sender_ops`, written in the
//! message's own batch, the send that falls out of the window deleted in the same batch).
//!
//! In memory a conversation holds, for the senders it has seen lately, either the whole
//! window (*warm*: op ids, seqs and times, so a retry is answered at once) or, per send in
//! the window, its seq and a 32-bit keyed fingerprint of its op id (*filtered*: half the
//! memory). An op id whose fingerprint is not there is new for certain; one whose
//! fingerprint is there (a retry, or about one op id in 2^24 by chance) has the window read
//! from the store first. A filtered sender's sends thus go on without a read, and the seqs
//! name the rows to delete as sends fall out of its window. Memory is bounded by `cache`,
//! counted in op ids held warm ([`WARM_COST`] units each, a filtered send one unit): beyond
//! it the least recently active warm senders become filtered, then the least recently
//! active filtered ones are dropped.
//! A sender that is in neither form is *cold*: its sends wait while the window is read from
//! the store, then go on in order. A conversation that was new when loaded knows every
//! sender's window (all empty) until it drops one.
//!
//! No I/O here: the conversation parks sends and asks for the reads; the owner carries them out.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

use chat_protocol::{OpId, Seq, UserId};

use crate::store::SenderOp;

/// Units of `cache` an op id held whole costs (a `SenderOp` is 24 bytes; a filtered send,
/// its seq and fingerprint, 12).
pub(crate) const WARM_COST: usize = 2;

/// What is known of a sender's op id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// It is in the sender's window: the send was stored (or is being committed) as this.
    Seen(SenderOp),
    /// It is not in the sender's window: a new send.
    New,
    /// The sender's window must be read to tell: park the send and read the window
    /// ([`Senders::park`]).
    Cold,
}

/// The senders of one conversation, generic over what a parked send is.
pub(crate) struct Senders<P> {
    by_user: HashMap<UserId, Sender<P>>,
    /// Units held by the senders in memory (see [`WARM_COST`]).
    held: usize,
    /// Every sender's window is in memory: one absent from `by_user` has sent nothing.
    complete: bool,
    /// Ticks on every recorded send, for least-recently-active eviction.
    clock: u64,
    window: usize,
    cache: usize,
    /// Keys the fingerprints, so that no client can choose op ids that collide.
    keys: RandomState,
}

enum Sender<P> {
    /// The window is being read; the sender's sends wait here in arrival order, with its
    /// sends that were being committed when the read was asked for (the read may not see
    /// them, and once committed the conversation no longer lists them).
    Loading {
        waiting: Vec<P>,
        in_flight: Vec<SenderOp>,
    },
    Warm {
        ops: VecDeque<SenderOp>,
        used: u64,
    },
    Filtered {
        /// The fingerprints of the window's op ids, oldest first.
        prints: VecDeque<u32>,
        /// Their seqs.
        seqs: VecDeque<Seq>,
        used: u64,
    },
}

impl<P> Sender<P> {
    fn cost(&self) -> usize {
        match self {
            Sender::Loading { .. } => 0,
            Sender::Warm { ops, .. } => ops.len().max(1) * WARM_COST,
            Sender::Filtered { prints, .. } => prints.len().max(1),
        }
    }
}

impl<P> Senders<P> {
    /// `complete`: the conversation has no stored message (new), so every window is empty.
    /// `cache` counts op ids held warm.
    pub(crate) fn new(window: usize, cache: usize, complete: bool) -> Senders<P> {
        let window = window.max(1);
        Senders {
            by_user: HashMap::new(),
            held: 0,
            complete,
            clock: 0,
            window,
            cache: cache.max(window) * WARM_COST,
            keys: RandomState::new(),
        }
    }

    fn print(&self, op: OpId) -> u32 {
        let [a, b, c, d, ..] = self.keys.hash_one(op.0).to_le_bytes();
        u32::from_le_bytes([a, b, c, d])
    }

    /// What is known of `op` from `sender`.
    pub(crate) fn lookup(&self, sender: UserId, op: OpId) -> Lookup {
        match self.by_user.get(&sender) {
            Some(Sender::Warm { ops, .. }) => ops
                .iter()
                .rev()
                .find(|o| o.op == op)
                .map_or(Lookup::New, |o| Lookup::Seen(*o)),
            Some(Sender::Filtered { prints, .. }) => {
                let print = self.print(op);
                if prints.contains(&print) {
                    Lookup::Cold
                } else {
                    Lookup::New
                }
            }
            Some(Sender::Loading { .. }) => Lookup::Cold,
            None if self.complete => Lookup::New,
            None => Lookup::Cold,
        }
    }

    /// Parks a send whose sender's window must be read; `in_flight` are the sender's sends
    /// being committed now, oldest first. Returns the rows to read (the window) when the read
    /// must start (the first parked send of that sender).
    pub(crate) fn park(
        &mut self,
        sender: UserId,
        parked: P,
        in_flight: Vec<SenderOp>,
    ) -> Option<usize> {
        if let Some(filtered @ Sender::Filtered { .. }) = self.by_user.get(&sender) {
            self.held -= filtered.cost();
            self.by_user.remove(&sender);
        }
        let state = self.by_user.entry(sender).or_insert(Sender::Loading {
            waiting: Vec::new(),
            in_flight,
        });
        match state {
            Sender::Loading { waiting, .. } => {
                waiting.push(parked);
                (waiting.len() == 1).then_some(self.window)
            }
            Sender::Warm { .. } | Sender::Filtered { .. } => {
                unreachable!("park is for senders whose window is read")
            }
        }
    }

    /// Stored rows of `sender` were read (`ops`, oldest first): with the sends that were in
    /// flight when the read was asked for, the newest `window` of them are the window. Returns the sends
    /// that waited for it, in arrival order, and the ops beyond the window, whose stored rows
    /// the caller deletes. For a sender that was not being read (the conversation was
    /// reloaded meanwhile) only the ops beyond the window are returned: rows older than the
    /// newest `window` are outside the window whatever comes next.
    pub(crate) fn loaded(
        &mut self,
        sender: UserId,
        mut ops: Vec<SenderOp>,
    ) -> (Vec<P>, Vec<SenderOp>) {
        let waiting = match self.by_user.get_mut(&sender) {
            Some(Sender::Loading { waiting, in_flight }) => {
                // What committed after the read looked is in `in_flight` alone.
                ops.append(in_flight);
                ops.sort_unstable_by_key(|o| o.seq);
                ops.dedup_by_key(|o| o.seq);
                std::mem::take(waiting)
            }
            _ => {
                ops.truncate(ops.len().saturating_sub(self.window));
                return (Vec::new(), ops);
            }
        };
        let kept = ops.split_off(ops.len().saturating_sub(self.window));
        self.clock += 1;
        let state = Sender::Warm {
            ops: VecDeque::from(kept),
            used: self.clock,
        };
        self.held += state.cost();
        self.by_user.insert(sender, state);
        self.evict(sender);
        (waiting, ops)
    }

    /// Reading the window of `sender` failed: returns its parked sends (to be refused) and
    /// leaves it cold.
    pub(crate) fn failed(&mut self, sender: UserId) -> Vec<P> {
        match self.by_user.remove(&sender) {
            Some(Sender::Loading { waiting, .. }) => waiting,
            Some(other) => {
                self.by_user.insert(sender, other);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// Every parked send, for a conversation that is being forgotten.
    pub(crate) fn take_parked(&mut self) -> Vec<P> {
        let loading: Vec<UserId> = self
            .by_user
            .iter()
            .filter_map(|(u, s)| matches!(s, Sender::Loading { .. }).then_some(*u))
            .collect();
        loading.into_iter().flat_map(|u| self.failed(u)).collect()
    }

    /// Whether some sender's window is being read.
    pub(crate) fn loading(&self) -> bool {
        self.by_user
            .values()
            .any(|s| matches!(s, Sender::Loading { .. }))
    }

    /// Whether `sender`'s window is in memory (or known to be empty), as
    /// [`Senders::record`] needs: a request that waited (an edit for its message) may find
    /// its sender dropped meanwhile.
    pub(crate) fn known(&self, sender: UserId) -> bool {
        match self.by_user.get(&sender) {
            Some(Sender::Warm { .. } | Sender::Filtered { .. }) => true,
            Some(Sender::Loading { .. }) => false,
            None => self.complete,
        }
    }

    /// Records a new send of a sender whose lookup said [`Lookup::New`] (or whose pending
    /// send was found). Returns the seq of the send that fell out of the sender's window,
    /// whose stored row the caller deletes in the same batch.
    pub(crate) fn record(&mut self, sender: UserId, op: SenderOp) -> Option<Seq> {
        self.clock += 1;
        let clock = self.clock;
        let print = self.print(op.op);
        let window = self.window;
        let (state, before) = match self.by_user.entry(sender) {
            Entry::Occupied(entry) => {
                let state = entry.into_mut();
                let cost = state.cost();
                (state, cost)
            }
            Entry::Vacant(entry) => {
                debug_assert!(self.complete, "record is for senders in memory");
                let state = entry.insert(Sender::Warm {
                    ops: VecDeque::new(),
                    used: clock,
                });
                (state, 0)
            }
        };
        let dropped = match state {
            Sender::Warm { ops, used } => {
                *used = clock;
                ops.push_back(op);
                (ops.len() > window)
                    .then(|| ops.pop_front())
                    .flatten()
                    .map(|o| o.seq)
            }
            Sender::Filtered { prints, seqs, used } => {
                *used = clock;
                prints.push_back(print);
                seqs.push_back(op.seq);
                if prints.len() > window {
                    prints.pop_front();
                    seqs.pop_front()
                } else {
                    None
                }
            }
            Sender::Loading { .. } => {
                debug_assert!(false, "record is for senders in memory");
                return None;
            }
        };
        let after = state.cost();
        self.held = self.held + after - before;
        self.evict(sender);
        dropped
    }

    /// The warm (or the filtered) senders but `keep`, least recently active first.
    fn by_age(&self, keep: UserId, filtered: bool) -> Vec<UserId> {
        let mut aged: Vec<(u64, UserId)> = self
            .by_user
            .iter()
            .filter_map(|(u, s)| match s {
                Sender::Warm { used, .. } if !filtered && *u != keep => Some((*used, *u)),
                Sender::Filtered { used, .. } if filtered && *u != keep => Some((*used, *u)),
                _ => None,
            })
            .collect();
        aged.sort_unstable();
        aged.into_iter().map(|(_, user)| user).collect()
    }

    /// Beyond `cache` units, until a quarter of it is free again: the least recently active
    /// warm senders (never `keep`) become filtered, then the least recently active filtered
    /// ones are dropped (they become cold).
    fn evict(&mut self, keep: UserId) {
        if self.held <= self.cache {
            return;
        }
        let target = self.cache - self.cache / 4;
        for user in self.by_age(keep, false) {
            if self.held <= target {
                return;
            }
            let Some(warm) = self.by_user.remove(&user) else {
                continue;
            };
            self.held -= warm.cost();
            let Sender::Warm { ops, used } = warm else {
                continue;
            };
            let state = Sender::Filtered {
                prints: ops.iter().map(|o| self.print(o.op)).collect(),
                seqs: ops.iter().map(|o| o.seq).collect(),
                used,
            };
            self.held += state.cost();
            self.by_user.insert(user, state);
        }
        for user in self.by_age(keep, true) {
            if self.held <= target {
                return;
            }
            if let Some(state) = self.by_user.remove(&user) {
                self.held -= state.cost();
            }
            self.complete = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use chat_protocol::{Seq, Timestamp};

    use super::*;

    fn op(op: u64, seq: u64) -> SenderOp {
        SenderOp {
            op: OpId(op),
            seq: Seq(seq),
            ts: Timestamp(seq * 10),
        }
    }

    const ALICE: UserId = UserId(1);
    const BOB: UserId = UserId(2);
    const CAROL: UserId = UserId(3);

    #[test]
    fn a_new_conversation_knows_every_sender_and_keeps_each_window() {
        let mut senders = Senders::<u32>::new(3, 100, true);
        assert_eq!(senders.lookup(ALICE, OpId(7)), Lookup::New);
        for n in 1..=3 {
            assert_eq!(senders.record(ALICE, op(n, n)), None);
        }
        // Bob's sends do not push Alice's out: windows are per sender.
        for n in 10..=50 {
            senders.record(BOB, op(n, n));
        }
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::Seen(op(1, 1)));
        // A fourth send of Alice's pushes her first out of her window.
        assert_eq!(senders.record(ALICE, op(4, 51)), Some(Seq(1)));
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::New);
        assert_eq!(senders.lookup(ALICE, OpId(4)), Lookup::Seen(op(4, 51)));
        assert!(!senders.loading());
    }

    #[test]
    fn a_loaded_conversation_reads_each_sender_once_and_replays_in_order() {
        let mut senders = Senders::<&str>::new(4, 100, false);
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::Cold);
        assert_eq!(senders.park(ALICE, "first", Vec::new()), Some(4));
        assert_eq!(senders.park(ALICE, "second", Vec::new()), None);
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::Cold);
        assert!(senders.loading());
        // The store returned more than the window: the newest are kept.
        let stored = (1..=6).map(|n| op(n, n * 2)).collect();
        assert_eq!(
            senders.loaded(ALICE, stored),
            (vec!["first", "second"], vec![op(1, 2), op(2, 4)])
        );
        assert!(!senders.loading());
        assert_eq!(senders.lookup(ALICE, OpId(2)), Lookup::New);
        assert_eq!(senders.lookup(ALICE, OpId(3)), Lookup::Seen(op(3, 6)));
        assert_eq!(senders.lookup(BOB, OpId(3)), Lookup::Cold);
        // A result for a sender nobody waits for changes nothing.
        assert_eq!(senders.loaded(BOB, vec![op(3, 99)]), (vec![], vec![]));
        assert_eq!(senders.lookup(BOB, OpId(3)), Lookup::Cold);
    }

    /// `held` is what the senders in memory cost.
    fn check<P>(senders: &Senders<P>) {
        let cost: usize = senders.by_user.values().map(Sender::cost).sum();
        assert_eq!(senders.held, cost);
        assert!(
            senders.held <= senders.cache,
            "{} > {}",
            senders.held,
            senders.cache
        );
    }

    #[test]
    fn beyond_the_cache_the_least_recently_active_keep_fingerprints_and_need_no_read() {
        let mut senders = Senders::<()>::new(4, 8, true);
        for n in 1..=4 {
            senders.record(ALICE, op(n, n));
        }
        for n in 5..=8 {
            senders.record(BOB, op(n, n));
        }
        check(&senders);
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::Seen(op(1, 1)));
        // Carol's first send is beyond the cache: Alice and Bob (the least recent first, until
        // a quarter is free) keep fingerprints; Carol stays whole.
        senders.record(CAROL, op(9, 9));
        check(&senders);
        assert_eq!(senders.lookup(CAROL, OpId(9)), Lookup::Seen(op(9, 9)));
        assert_eq!(senders.lookup(BOB, OpId(8)), Lookup::Cold);
        // Her own op ids need the stored window; any other is new without a read.
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::Cold);
        assert_eq!(senders.lookup(ALICE, OpId(100)), Lookup::New);
        // Every window is still known: a sender never seen has sent nothing.
        assert_eq!(senders.lookup(UserId(4), OpId(1)), Lookup::New);
        // Her new sends push her old ones out of the window, each row named for deletion.
        for n in 10..=13 {
            assert_eq!(senders.record(ALICE, op(n, n)), Some(Seq(n - 9)));
        }
        check(&senders);
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::New);
        assert_eq!(senders.lookup(ALICE, OpId(10)), Lookup::Cold);
        // A send of one of her op ids again reads the window, and she is warm again.
        assert_eq!(senders.park(ALICE, (), Vec::new()), Some(4));
        let stored: Vec<SenderOp> = (10..=13).map(|n| op(n, n)).collect();
        let (parked, beyond) = senders.loaded(ALICE, stored);
        assert_eq!((parked.len(), beyond.len()), (1, 0));
        assert_eq!(senders.lookup(ALICE, OpId(10)), Lookup::Seen(op(10, 10)));
        check(&senders);
    }

    #[test]
    fn a_window_read_counts_the_sends_that_committed_while_it_was_read() {
        let mut senders = Senders::<()>::new(4, 8, false);
        // Op 7 was being committed when the read was asked for; it committed before the
        // read looked, so neither the rows read nor the conversation's pending list has it.
        assert_eq!(senders.park(ALICE, (), vec![op(7, 20)]), Some(4));
        let stored = vec![op(5, 10), op(6, 15)];
        let (parked, beyond) = senders.loaded(ALICE, stored);
        assert_eq!((parked.len(), beyond.len()), (1, 0));
        assert_eq!(senders.lookup(ALICE, OpId(7)), Lookup::Seen(op(7, 20)));
        assert_eq!(senders.lookup(ALICE, OpId(5)), Lookup::Seen(op(5, 10)));
    }

    #[test]
    fn beyond_the_cache_in_fingerprints_the_least_recently_active_go_cold() {
        let mut senders = Senders::<()>::new(4, 8, true);
        // 40 senders of 4 sends each: 160 filtered sends against a cache of 16 units. A
        // sender the conversation no longer knows has its (empty) window read first.
        for user in 1..=40 {
            if senders.lookup(UserId(user), OpId(0)) == Lookup::Cold {
                assert_eq!(senders.park(UserId(user), (), Vec::new()), Some(4));
                senders.loaded(UserId(user), Vec::new());
            }
            for n in 0..4 {
                let sent = op(user * 10 + n, user * 10 + n);
                assert_eq!(senders.lookup(UserId(user), sent.op), Lookup::New);
                senders.record(UserId(user), sent);
            }
            check(&senders);
        }
        assert_eq!(
            senders.lookup(UserId(40), OpId(400)),
            Lookup::Seen(op(400, 400))
        );
        assert_eq!(senders.lookup(UserId(1), OpId(10)), Lookup::Cold);
        assert_eq!(senders.lookup(UserId(1), OpId(99_999)), Lookup::Cold);
        // No longer complete: someone never seen may have been dropped.
        assert_eq!(senders.lookup(UserId(1000), OpId(1)), Lookup::Cold);
    }

    #[test]
    fn parked_sends_are_handed_back_when_the_read_fails_or_the_conversation_goes() {
        let mut senders = Senders::<u8>::new(4, 8, false);
        senders.park(ALICE, 1, Vec::new());
        senders.park(BOB, 2, Vec::new());
        senders.park(ALICE, 3, Vec::new());
        assert_eq!(senders.failed(ALICE), vec![1, 3]);
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::Cold);
        assert_eq!(senders.take_parked(), vec![2]);
        assert!(!senders.loading());
    }
}
