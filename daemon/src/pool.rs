//! Blocking pools: a few named threads that run blocking work off the shards' event loops.
//! The daemon runs two: `storage-read-N` for RocksDB reads (history pages, account and room
//! lookups, loading a conversation) and `password-N` for argon2id, which takes tens of
//! milliseconds by design and must not hold up reads.
//!
//! Jobs are closures that push their own result to the shard that asked. The queue is bounded;
//! a shard whose job is refused answers `OVERLOADED`.

use crossbeam_channel::{Sender, TrySendError, bounded};

use crate::store::Store;

type Job = Box<dyn FnOnce(&Store) + Send>;

/// The submitting side of the pool.
#[derive(Clone)]
pub(crate) struct ReadPool {
    tx: Sender<Job>,
}

impl ReadPool {
    /// Starts `threads` workers named `NAME-i` sharing a queue of `depth` jobs.
    pub(crate) fn start(
        name: &str,
        store: &Store,
        threads: usize,
        depth: usize,
    ) -> std::io::Result<(ReadPool, Vec<std::thread::JoinHandle<()>>)> {
        let (tx, rx) = bounded::<Job>(depth);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let store = store.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            job(&store);
                        }
                    })?,
            );
        }
        Ok((ReadPool { tx }, handles))
    }

    /// Queues a job without blocking. Returns `false` when the queue is full or closed.
    #[must_use]
    pub(crate) fn submit(&self, job: impl FnOnce(&Store) + Send + 'static) -> bool {
        match self.tx.try_send(Box::new(job)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}
