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
//! The `scheduled` flag and the queue are accessed with sequentially consistent ordering: the
//! consumer's "clear the flag, then look at the queue" must not be reordered against the
//! producer's "push, then set the flag", or a wake-up could be lost.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

/// The sending side, cheap to clone and shared by every producer.
pub struct Inbox<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    queue: ArrayQueue<T>,
    waker: AtomicWaker,
    scheduled: AtomicBool,
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

/// A new inbox holding at most `capacity` items.
pub fn inbox<T>(capacity: usize) -> (Inbox<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        queue: ArrayQueue::new(capacity.max(1)),
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
    /// Messages waiting now.
    pub fn len(&self) -> usize {
        self.inner.queue.len()
    }

    /// Queues `item` and wakes the consumer if it is not already scheduled.
    ///
    /// # Errors
    /// Gives `item` back when the inbox is full.
    pub fn push(&self, item: T) -> Result<(), T> {
        self.inner.queue.push(item)?;
        if !self.inner.scheduled.swap(true, Ordering::SeqCst) {
            self.inner.waker.wake();
        }
        Ok(())
    }
}

impl<T> Receiver<T> {
    /// Waits until at least one item is queued, then moves everything queued into `batch`.
    pub async fn recv_batch(&mut self, batch: &mut Vec<T>) {
        let inner = &*self.inner;
        poll_fn(|cx| {
            inner.waker.register(cx.waker());
            if inner.queue.is_empty() {
                inner.scheduled.store(false, Ordering::SeqCst);
                // A push between the check and the store above saw `scheduled` still set and
                // did not wake us: look once more.
                if inner.queue.is_empty() {
                    return Poll::Pending;
                }
            }
            Poll::Ready(())
        })
        .await;
        self.drain(batch);
    }

    /// Moves everything queued into `batch` without waiting.
    pub fn drain(&mut self, batch: &mut Vec<T>) {
        let inner = &*self.inner;
        inner.scheduled.store(false, Ordering::SeqCst);
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
        let (tx, mut rx) = inbox::<u64>(64);
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
        let (tx, mut rx) = inbox::<u8>(2);
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
}
