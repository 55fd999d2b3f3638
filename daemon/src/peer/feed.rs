//! Which node's log entries this node delivers, partition by partition, and when its
//! sessions must lag first (docs/SCALING.md section 5), with no I/O: the peer thread asks
//! [`Feed::entry`] for every entry another node's feed brings, and the cluster thread tells
//! [`Feed::set_view`] each view etcd gives.
//!
//! A partition's entries are contiguous on one link under one ownership term: the holder
//! publishes every entry it commits, in order, and a link that breaks, to a node the view
//! names holder of a partition, makes every session lag before the next link's events (a
//! link to a node it names nowhere carries nothing delivered: [`Feed::names`]). So a device
//! can skip an entry only where the entries it is given change *source*, the node and term
//! they come from:
//!
//! - a partition moves between nodes: the old holder's last entries and the new one's first
//!   come on two links in no order;
//! - a partition leaves its holder and comes back (a new term) while this node's view does
//!   not show it (cut off from etcd, or the view changed twice between two reads): the
//!   entries written meanwhile came from another node, on a link that may have been down.
//!
//! The rules:
//! - an entry is delivered only from the node this node's view names as the partition's
//!   holder, and none while this node holds it (the rest are dropped: they are in the store
//!   a catch-up reads);
//! - an entry whose (node, term) is not the source of the partition's last delivered entry
//!   makes every session lag first ([`Verdict::LagFirst`]); a device then catches up from
//!   its cursors through the holder's store, which has everything written before;
//! - a view that names a new holder or term for a partition makes every session lag once
//!   it is in place (the caller pushes the lag and reports it: [`Feed::lagged`]): what the
//!   dropped entries held reaches the devices even if the partition writes nothing more.
//!   After that lag, the first entry from the source the view names is delivered without
//!   another.

use std::sync::Arc;

use parking_lot::Mutex;

/// A partition's holder: its node and ownership term (the owner key's creation revision).
pub(crate) type Source = (Arc<str>, i64);

/// What to do with an entry another node's feed brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Deliver it.
    Deliver,
    /// Have every session lag, then deliver it.
    LagFirst,
    /// Do not deliver it (a catch-up reads it from the store).
    Drop,
}

/// What the rules keep, per partition.
pub(crate) struct Feed {
    inner: Mutex<Sources>,
}

struct Sources {
    /// Each partition's holder as etcd last said.
    view: Vec<Option<Source>>,
    /// The source of each partition's last delivered entry (`None` after a view moved it).
    from: Vec<Option<Source>>,
    /// The view generation that last moved each partition (0: none).
    moved: Vec<u64>,
    /// The last view generation handed out.
    generation: u64,
    /// The last generation whose lag every shard has been sent.
    lagged: u64,
}

impl Feed {
    /// A feed of `partitions` partitions, none held anywhere yet.
    pub(crate) fn new(partitions: usize) -> Feed {
        Feed {
            inner: Mutex::new(Sources {
                view: vec![None; partitions],
                from: vec![None; partitions],
                moved: vec![0; partitions],
                generation: 0,
                lagged: 0,
            }),
        }
    }

    /// What to do with an entry of partition `p` that came from `node`, written in term
    /// `term`; `held` says whether this node holds `p`.
    pub(crate) fn entry(&self, p: usize, node: &str, term: i64, held: bool) -> Verdict {
        let mut s = self.inner.lock();
        let Some(Some((holder, viewed))) = s.view.get(p).cloned() else {
            return Verdict::Drop;
        };
        if held || *holder != *node {
            return Verdict::Drop;
        }
        if s.from[p]
            .as_ref()
            .is_some_and(|(from, t)| **from == *node && *t == term)
        {
            return Verdict::Deliver;
        }
        let covered = s.from[p].is_none() && s.moved[p] != 0 && s.moved[p] <= s.lagged;
        s.from[p] = Some((holder, term));
        if covered && viewed == term {
            Verdict::Deliver
        } else {
            Verdict::LagFirst
        }
    }

    /// Puts etcd's view in place: each partition's holder and term. Returns the generation
    /// whose lag the caller must push to every shard, then report ([`Feed::lagged`]), when
    /// the view names a new holder or term for a partition this node does not hold (`held`).
    pub(crate) fn set_view(
        &self,
        owners: &[Option<Source>],
        held: impl Fn(usize) -> bool,
    ) -> Option<u64> {
        let mut s = self.inner.lock();
        let generation = s.generation + 1;
        let mut moved = false;
        for (p, owner) in owners.iter().enumerate().take(s.view.len()) {
            if s.view[p] == *owner {
                continue;
            }
            s.view[p].clone_from(owner);
            s.from[p] = None;
            if owner.is_some() && !held(p) {
                s.moved[p] = generation;
                moved = true;
            } else {
                // No lag for this view: an earlier one's must not cover what comes next.
                s.moved[p] = 0;
            }
        }
        if moved {
            s.generation = generation;
            Some(generation)
        } else {
            None
        }
    }

    /// Every shard has been sent the lag of view generation `generation`.
    pub(crate) fn lagged(&self, generation: u64) {
        let mut s = self.inner.lock();
        s.lagged = s.lagged.max(generation);
    }

    /// Whether the view names `node` as the holder of a partition. A link to a node it
    /// names nowhere carries no entry this node delivers: until a view names it, its entries
    /// are dropped; that view lags the sessions (or, for a partition held here when it
    /// comes, the first entry of a source other than the last delivered does). So the
    /// link's start or end need not.
    pub(crate) fn names(&self, node: &str) -> bool {
        (self.inner.lock().view.iter().flatten()).any(|(holder, _)| **holder == *node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(node: &str, term: i64) -> Option<Source> {
        Some((Arc::from(node), term))
    }

    fn feed_held_by(node: &str, term: i64) -> Feed {
        let feed = Feed::new(2);
        let generation = feed.set_view(&[at(node, term), None], |_| false).unwrap();
        feed.lagged(generation);
        feed
    }

    #[test]
    fn after_the_view_lag_the_named_source_is_delivered_without_another() {
        let feed = feed_held_by("a", 10);
        assert_eq!(feed.entry(0, "a", 10, false), Verdict::Deliver);
        assert_eq!(feed.entry(0, "a", 10, false), Verdict::Deliver);
    }

    #[test]
    fn entries_from_a_node_the_view_does_not_name_or_of_a_partition_held_here_are_dropped() {
        let feed = feed_held_by("a", 10);
        assert_eq!(feed.entry(0, "b", 11, false), Verdict::Drop);
        assert_eq!(feed.entry(0, "a", 10, true), Verdict::Drop);
        assert_eq!(
            feed.entry(1, "a", 10, false),
            Verdict::Drop,
            "nobody holds it"
        );
    }

    #[test]
    fn a_node_the_view_names_nowhere_feeds_nothing_delivered() {
        let feed = feed_held_by("a", 10);
        assert!(feed.names("a"));
        assert!(!feed.names("b"), "b holds nothing");
        // What b writes before a view names it is dropped; the view that does lags.
        assert_eq!(feed.entry(0, "b", 20, false), Verdict::Drop);
        assert!(
            feed.set_view(&[at("a", 10), at("b", 20)], |_| false)
                .is_some()
        );
        assert!(feed.names("b"));
        assert!(feed.set_view(&[at("a", 10), None], |_| false).is_none());
        assert!(!feed.names("b"), "b gave its partition up");
    }

    #[test]
    fn a_new_term_the_view_never_showed_lags_first() {
        // a's term 10 is delivered; the partition went to b and came back to a (term 30)
        // while this node's view still says a, 10: b's entries were dropped or never came.
        let feed = feed_held_by("a", 10);
        assert_eq!(feed.entry(0, "a", 10, false), Verdict::Deliver);
        assert_eq!(feed.entry(0, "b", 20, false), Verdict::Drop);
        assert_eq!(feed.entry(0, "a", 30, false), Verdict::LagFirst);
        assert_eq!(feed.entry(0, "a", 30, false), Verdict::Deliver);
    }

    #[test]
    fn a_first_entry_the_view_lag_does_not_cover_lags_first() {
        // The view moved the partition to b, and its lag has not been sent yet.
        let feed = feed_held_by("a", 10);
        let generation = feed.set_view(&[at("b", 20), None], |_| false).unwrap();
        assert_eq!(
            feed.entry(0, "a", 10, false),
            Verdict::Drop,
            "the old holder"
        );
        assert_eq!(feed.entry(0, "b", 20, false), Verdict::LagFirst);
        feed.lagged(generation);
        assert_eq!(feed.entry(0, "b", 20, false), Verdict::Deliver);
    }

    #[test]
    fn a_term_other_than_the_views_lags_even_after_the_view_lag() {
        // The view names b in term 20, and b's first entry is of a later term: someone
        // else may have held the partition in between.
        let feed = feed_held_by("a", 10);
        let generation = feed.set_view(&[at("b", 20), None], |_| false).unwrap();
        feed.lagged(generation);
        assert_eq!(feed.entry(0, "b", 40, false), Verdict::LagFirst);
        assert_eq!(feed.entry(0, "b", 40, false), Verdict::Deliver);
    }

    #[test]
    fn a_view_that_moves_nothing_here_asks_for_no_lag() {
        let feed = feed_held_by("a", 10);
        assert_eq!(feed.set_view(&[at("a", 10), None], |_| false), None);
        // A partition this node took: its own lag came before it was taken.
        assert_eq!(
            feed.set_view(&[at("a", 10), at("me", 50)], |p| p == 1),
            None
        );
        // A partition no longer held by anyone: nothing to deliver until someone takes it.
        assert_eq!(feed.set_view(&[None, at("me", 50)], |p| p == 1), None);
        assert_eq!(feed.entry(0, "a", 10, false), Verdict::Drop);
        // This node gives partition 1 up and the view names b before any lag of a view that
        // moved it: b's first entry lags (the lag of the view that moved it to this node
        // long ago covers nothing now).
        let generation = feed.set_view(&[None, at("b", 70)], |_| false).unwrap();
        assert_eq!(feed.entry(1, "b", 70, false), Verdict::LagFirst);
        feed.lagged(generation);
        // Taken by b: a lag, then b's entries.
        let generation = feed.set_view(&[at("b", 60), at("me", 50)], |p| p == 1);
        assert!(generation.is_some());
    }

    #[test]
    fn the_same_holder_in_a_new_term_is_a_move() {
        let feed = feed_held_by("a", 10);
        assert_eq!(feed.entry(0, "a", 10, false), Verdict::Deliver);
        let generation = feed.set_view(&[at("a", 30), None], |_| false).unwrap();
        assert_eq!(
            feed.entry(0, "a", 30, false),
            Verdict::LagFirst,
            "before its lag"
        );
        feed.lagged(generation);
        assert_eq!(feed.entry(0, "a", 30, false), Verdict::Deliver);
    }
}
