//! Deduplication of sends: which op ids each sender of a conversation has used lately.
//!
//! A retried op id is recognised while it is among the last `window` sends of the same user
//! in the same conversation, however far the conversation moved meanwhile and across
//! restarts. The store keeps exactly those sends per sender (`sender_ops`, written in the
//! message's own batch, the send that falls out of the window deleted in the same batch).
//! In memory a conversation holds the windows of the senders it has seen lately, at most
//! `cache` ops in all; the least recently active senders are dropped beyond that. A sender
//! whose window is not in memory is *cold*: its sends wait while the window is read from
//! the store, then go on in order. A conversation that was new when loaded knows every
//! sender's window (all empty) until it drops one.
//!
//! No I/O here: the conversation parks sends and asks for the reads; the owner carries them out.

use std::collections::{HashMap, VecDeque};

use chat_protocol::{OpId, UserId};

use crate::store::SenderOp;

/// What is known of a sender's op id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// It is in the sender's window: the send was stored (or is being committed) as this.
    Seen(SenderOp),
    /// It is not in the sender's window: a new send.
    New,
    /// The sender's window is not in memory: park the send and read the window
    /// ([`Senders::park`]).
    Cold,
}

/// The senders of one conversation, generic over what a parked send is.
pub(crate) struct Senders<P> {
    by_user: HashMap<UserId, Sender<P>>,
    /// Ops held in the warm windows (a warm sender with none counts one).
    held: usize,
    /// Every sender's window is in memory: one absent from `by_user` has sent nothing.
    complete: bool,
    /// Ticks on every recorded send, for least-recently-active eviction.
    clock: u64,
    window: usize,
    cache: usize,
}

enum Sender<P> {
    /// The window is being read; the sender's sends wait here in arrival order.
    Loading(Vec<P>),
    Warm {
        ops: VecDeque<SenderOp>,
        used: u64,
    },
}

impl<P> Senders<P> {
    /// `complete`: the conversation has no stored message (new), so every window is empty.
    pub(crate) fn new(window: usize, cache: usize, complete: bool) -> Senders<P> {
        Senders {
            by_user: HashMap::new(),
            held: 0,
            complete,
            clock: 0,
            window: window.max(1),
            cache: cache.max(window.max(1)),
        }
    }

    /// What is known of `op` from `sender`.
    pub(crate) fn lookup(&self, sender: UserId, op: OpId) -> Lookup {
        match self.by_user.get(&sender) {
            Some(Sender::Warm { ops, .. }) => ops
                .iter()
                .rev()
                .find(|o| o.op == op)
                .map_or(Lookup::New, |o| Lookup::Seen(*o)),
            Some(Sender::Loading(_)) => Lookup::Cold,
            None if self.complete => Lookup::New,
            None => Lookup::Cold,
        }
    }

    /// Parks a send of a cold sender until its window is read. Returns `true` when the read
    /// must start (the first parked send of that sender).
    pub(crate) fn park(&mut self, sender: UserId, parked: P) -> bool {
        match self
            .by_user
            .entry(sender)
            .or_insert(Sender::Loading(Vec::new()))
        {
            Sender::Loading(waiting) => {
                waiting.push(parked);
                waiting.len() == 1
            }
            Sender::Warm { .. } => unreachable!("park is for cold senders"),
        }
    }

    /// The window of `sender` was read (`ops`, oldest first; the newest `window` of them are
    /// kept). Returns the sends that waited for it, in arrival order, and the ops beyond the
    /// window, whose stored rows the caller deletes; both empty when the sender was not
    /// being read (the conversation was reloaded meanwhile).
    pub(crate) fn loaded(
        &mut self,
        sender: UserId,
        mut ops: Vec<SenderOp>,
    ) -> (Vec<P>, Vec<SenderOp>) {
        let Some(state) = self.by_user.get_mut(&sender) else {
            return (Vec::new(), Vec::new());
        };
        let Sender::Loading(waiting) = state else {
            return (Vec::new(), Vec::new());
        };
        let waiting = std::mem::take(waiting);
        // `ops` keeps those beyond the window.
        let kept = VecDeque::from(ops.split_off(ops.len().saturating_sub(self.window)));
        self.held += kept.len().max(1);
        self.clock += 1;
        *state = Sender::Warm {
            ops: kept,
            used: self.clock,
        };
        self.evict(sender);
        (waiting, ops)
    }

    /// Reading the window of `sender` failed: returns its parked sends (to be refused) and
    /// leaves it cold.
    pub(crate) fn failed(&mut self, sender: UserId) -> Vec<P> {
        match self.by_user.remove(&sender) {
            Some(Sender::Loading(waiting)) => waiting,
            Some(warm) => {
                self.by_user.insert(sender, warm);
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
            .filter_map(|(u, s)| matches!(s, Sender::Loading(_)).then_some(*u))
            .collect();
        loading.into_iter().flat_map(|u| self.failed(u)).collect()
    }

    /// Whether some sender's window is being read.
    pub(crate) fn loading(&self) -> bool {
        self.by_user
            .values()
            .any(|s| matches!(s, Sender::Loading(_)))
    }

    /// Records a new send of a warm sender. Returns the send that fell out of the sender's
    /// window, whose stored row the caller deletes in the same batch.
    pub(crate) fn record(&mut self, sender: UserId, op: SenderOp) -> Option<SenderOp> {
        self.clock += 1;
        let clock = self.clock;
        let sender_state = match self.by_user.get_mut(&sender) {
            Some(state) => state,
            None => {
                debug_assert!(self.complete, "record is for warm senders");
                self.held += 1;
                self.by_user.entry(sender).or_insert(Sender::Warm {
                    ops: VecDeque::new(),
                    used: clock,
                })
            }
        };
        let Sender::Warm { ops, used } = sender_state else {
            debug_assert!(false, "record is for warm senders");
            return None;
        };
        *used = clock;
        if !ops.is_empty() {
            self.held += 1;
        }
        ops.push_back(op);
        let dropped = if ops.len() > self.window {
            self.held -= 1;
            ops.pop_front()
        } else {
            None
        };
        self.evict(sender);
        dropped
    }

    /// Beyond `cache` ops, drops the least recently active warm senders (never `keep`)
    /// until a quarter of the cache is free again; they become cold.
    fn evict(&mut self, keep: UserId) {
        if self.held <= self.cache {
            return;
        }
        let mut warm: Vec<(u64, UserId)> = self
            .by_user
            .iter()
            .filter_map(|(u, s)| match s {
                Sender::Warm { used, .. } if *u != keep => Some((*used, *u)),
                _ => None,
            })
            .collect();
        warm.sort_unstable();
        let target = self.cache - self.cache / 4;
        for (_, user) in warm {
            if self.held <= target {
                break;
            }
            if let Some(Sender::Warm { ops, .. }) = self.by_user.remove(&user) {
                self.held -= ops.len().max(1);
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
        assert_eq!(senders.record(ALICE, op(4, 51)), Some(op(1, 1)));
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::New);
        assert_eq!(senders.lookup(ALICE, OpId(4)), Lookup::Seen(op(4, 51)));
        assert!(!senders.loading());
    }

    #[test]
    fn a_loaded_conversation_reads_each_sender_once_and_replays_in_order() {
        let mut senders = Senders::<&str>::new(4, 100, false);
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::Cold);
        assert!(senders.park(ALICE, "first"));
        assert!(!senders.park(ALICE, "second"));
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

    #[test]
    fn beyond_the_cache_the_least_recently_active_senders_go_cold() {
        let mut senders = Senders::<()>::new(4, 8, true);
        for n in 1..=4 {
            senders.record(ALICE, op(n, n));
        }
        for n in 5..=8 {
            senders.record(BOB, op(n, n));
        }
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::Seen(op(1, 1)));
        // Carol's first send makes 9 ops: Alice (least recent) is dropped, and the
        // conversation no longer knows every sender.
        senders.record(CAROL, op(9, 9));
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::Cold);
        assert_eq!(senders.lookup(BOB, OpId(8)), Lookup::Seen(op(8, 8)));
        assert_eq!(senders.lookup(UserId(4), OpId(1)), Lookup::Cold);
        // Read back, Alice's window is whole again.
        assert!(senders.park(ALICE, ()));
        senders.loaded(ALICE, (1..=4).map(|n| op(n, n)).collect());
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::Seen(op(1, 1)));
    }

    #[test]
    fn parked_sends_are_handed_back_when_the_read_fails_or_the_conversation_goes() {
        let mut senders = Senders::<u8>::new(4, 8, false);
        senders.park(ALICE, 1);
        senders.park(BOB, 2);
        senders.park(ALICE, 3);
        assert_eq!(senders.failed(ALICE), vec![1, 3]);
        assert_eq!(senders.lookup(ALICE, OpId(1)), Lookup::Cold);
        assert_eq!(senders.take_parked(), vec![2]);
        assert!(!senders.loading());
    }
}
