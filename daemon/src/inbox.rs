//! A shard's inbox: a bounded lock-free queue (crossbeam `ArrayQueue`) that any thread may
//! push to, drained in batches by the owning shard's event loop, with at most one wake-up per
//! batch.
//!
//! Producers push and wake the consumer only when it is not already scheduled (`scheduled`
//! flag), so a burst of a thousand pushes costs one wake-up. The consumer clears the flag
//! *before* draining, so a push racing with the drain is either drained now or wakes it again:
//! nothing is left behind. The consumer never blocks its thread: it awaits.
//!
//! When the queue is full, [`Inbox::push`] gives the item back; the caller decides (keep it
//! for a retry, answer `OVERLOADED`, or tell the recipients they lag). Nothing grows without
//! bound.
//!
//! Results that must arrive and whose producer must never wait (the storage thread's commit
//! completions) use a second, reserved lane: the work is started only with a
//! [`Reservation`] of a slot ([`Inbox::reserve`], refused when every slot is taken), whose
//! result then always finds room ([`Reservation::push`]); the slot is free again once the
//! consumer has drained the result, or at once if the reservation is dropped unused. The lane
//! holds at most as many results as slots, so it is sized by the work in flight, not by hope.
//!
//! The `scheduled` flag and the queue are accessed with sequentially consistent ordering: the
//! consumer's "clear the flag, then look at the queue" must not be reordered against the
//! producer's "push, then set the flag", or a wake-up could be lost.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

/// The sending side, cheap to clone and shared by every producer.
pub struct Inbox<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    queue: ArrayQueue<T>,
    /// Results of reserved work; never fuller than `slots`.
    reserved: ArrayQueue<T>,
    /// Slots taken: reservations outstanding plus results not drained yet.
    slots: AtomicUsize,
    waker: AtomicWaker,
    scheduled: AtomicBool,
    /// Items pushed (both lanes) and wake-ups given, since the start (for the metrics).
    pushed: AtomicU64,
    wakeups: AtomicU64,
}

impl<T> Inner<T> {
    fn wake(&self) {
        self.pushed.fetch_add(1, Ordering::Relaxed);
        if !self.scheduled.swap(true, Ordering::SeqCst) {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            self.waker.wake();
        }
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.reserved.is_empty()
    }
}

/// The receiving side, owned by one event loop.
pub struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Inbox<T> {
    fn clone(&self) -> Self {
        Inbox {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// A new inbox holding at most `capacity` items, plus `reserved` slots for reserved work.
pub fn inbox<T>(capacity: usize, reserved: usize) -> (Inbox<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        queue: ArrayQueue::new(capacity.max(1)),
        reserved: ArrayQueue::new(reserved.max(1)),
        slots: AtomicUsize::new(0),
        pushed: AtomicU64::new(0),
        wakeups: AtomicU64::new(0),
        waker: AtomicWaker::new(),
        scheduled: AtomicBool::new(false),
    });
    (
        Inbox {
            inner: Arc::clone(&inner),
        },
        Receiver { inner },
    )
}

impl<T> Inbox<T> {
    /// Messages waiting now (in both lanes).
    pub fn len(&self) -> usize {
        self.inner.queue.len() + self.inner.reserved.len()
    }

    /// Items pushed since the start, and the wake-ups they cost (one per batch at best).
    pub fn traffic(&self) -> (u64, u64) {
        (
            self.inner.pushed.load(Ordering::Relaxed),
            self.inner.wakeups.load(Ordering::Relaxed),
        )
    }

    /// Queues `item` and wakes the consumer if it is not already scheduled.
    ///
    /// # Errors
    /// Gives `item` back when the inbox is full.
    pub fn push(&self, item: T) -> Result<(), T> {
        self.inner.queue.push(item)?;
        self.inner.wake();
        Ok(())
    }

    /// Takes a slot of the reserved lane for one result, or `None` when every slot is taken
    /// (the work must not start).
    pub fn reserve(&self) -> Option<Reservation<T>> {
        let capacity = self.inner.reserved.capacity();
        self.inner
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .ok()?;
        Some(Reservation {
            inner: Some(Arc::clone(&self.inner)),
        })
    }
}

/// A slot of an inbox's reserved lane, taken before the work whose result goes in it.
pub struct Reservation<T> {
    /// `None` once pushed.
    inner: Option<Arc<Inner<T>>>,
}

impl<T> Reservation<T> {
    /// Queues the result in the reserved slot (there is always room) and wakes the consumer.
    pub fn push(mut self, item: T) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        // Results in the lane never outnumber the slots taken, and the lane has a place per
        // slot: this cannot fail. Were it ever to, the item would be lost, so it is logged.
        if inner.reserved.push(item).is_err() {
            tracing::error!("a reserved inbox lane was full; a result was dropped");
            inner.slots.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        inner.wake();
    }
}

impl<T> Drop for Reservation<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.slots.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<T> Receiver<T> {
    /// Waits until at least one item is queued, then moves everything queued into `batch`.
    pub async fn recv_batch(&mut self, batch: &mut Vec<T>) {
        let inner = &*self.inner;
        poll_fn(|cx| {
            inner.waker.register(cx.waker());
            if inner.is_empty() {
                inner.scheduled.store(false, Ordering::SeqCst);
                // A push between the check and the store above saw `scheduled` still set and
                // did not wake us: look once more.
                if inner.is_empty() {
                    return Poll::Pending;
                }
            }
            Poll::Ready(())
        })
        .await;
        self.drain(batch);
    }

    /// Moves everything queued into `batch` without waiting: reserved results first (each
    /// frees its slot), then the rest.
    pub fn drain(&mut self, batch: &mut Vec<T>) {
        let inner = &*self.inner;
        inner.scheduled.store(false, Ordering::SeqCst);
        while let Some(item) = inner.reserved.pop() {
            inner.slots.fetch_sub(1, Ordering::AcqRel);
            batch.push(item);
        }
        while let Some(item) = inner.queue.pop() {
            batch.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn every_item_arrives_once_across_threads() {
        let (tx, mut rx) = inbox::<u64>(64, 1);
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        let mut item = p * 1_000_000 + i;
                        while let Err(back) = tx.push(item) {
                            item = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let received = block_on(async {
            let mut all = Vec::new();
            let mut batch = Vec::new();
            while all.len() < 40_000 {
                rx.recv_batch(&mut batch).await;
                all.append(&mut batch);
            }
            all
        });
        for p in producers {
            p.join().unwrap();
        }
        // Per producer, order is kept and nothing is lost or repeated.
        for p in 0..4u64 {
            let mine: Vec<_> = received
                .iter()
                .filter(|v| **v / 1_000_000 == p)
                .copied()
                .collect();
            assert_eq!(
                mine,
                (0..10_000).map(|i| p * 1_000_000 + i).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_full_inbox_gives_the_item_back() {
        let (tx, mut rx) = inbox::<u8>(2, 1);
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        assert_eq!(tx.push(3), Err(3));
        let mut batch = Vec::new();
        block_on(rx.recv_batch(&mut batch));
        assert_eq!(batch, [1, 2]);
        tx.push(4).unwrap();
        batch.clear();
        block_on(rx.recv_batch(&mut batch));
        assert_eq!(batch, [4]);
    }

    #[test]
    fn reserved_results_find_room_when_the_inbox_is_full_and_free_their_slot_once_drained() {
        let (tx, mut rx) = inbox::<u8>(1, 2);
        tx.push(1).unwrap();
        assert_eq!(tx.push(2), Err(2), "the inbox is full");
        let first = tx.reserve().expect("a slot");
        let second = tx.reserve().expect("a second slot");
        assert!(
            tx.reserve().is_none(),
            "every slot is taken: the work must not start"
        );
        first.push(10);
        drop(second); // abandoned (the write was refused): its slot is free at once
        let third = tx.reserve().expect("the abandoned slot");
        assert!(
            tx.reserve().is_none(),
            "the pushed result still holds its slot"
        );
        third.push(11);
        assert_eq!(tx.len(), 3);
        let mut batch = Vec::new();
        block_on(rx.recv_batch(&mut batch));
        assert_eq!(batch, [10, 11, 1], "results first, then the rest");
        assert!(
            tx.reserve().is_some() && tx.reserve().is_some(),
            "drained: both free"
        );
    }

    #[test]
    fn a_reserved_result_wakes_the_consumer() {
        let (tx, mut rx) = inbox::<u8>(1, 1);
        let slot = tx.reserve().unwrap();
        let pusher = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            slot.push(7);
        });
        let mut batch = Vec::new();
        block_on(rx.recv_batch(&mut batch));
        pusher.join().unwrap();
        assert_eq!(batch, [7]);
    }
}
