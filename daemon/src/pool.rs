//! Blocking pools: a few named threads that run blocking work off the shards' event loops.
//! The daemon runs two: `storage-read-N` for RocksDB reads (history pages, account and room
//! lookups, loading a conversation) and `password-N` for argon2id, which takes tens of
//! milliseconds by design and must not hold up reads.
//!
//! Jobs are closures that push their own result to the shard that asked. The queue is bounded;
//! a shard whose job is refused answers `OVERLOADED`, or, with [`ReadPool::try_submit`],
//! gets the job back with what it carries (a catch-up's cursor) to try again later.

use std::any::Any;

use crossbeam_channel::{Sender, TrySendError, bounded};

use crate::store::Stores;

/// A job of the pool: run once on a pool thread, or handed back whole when refused.
pub(crate) trait Job: Send {
    fn run(self: Box<Self>, store: &Stores);
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

impl<F: FnOnce(&Stores) + Send + 'static> Job for F {
    fn run(self: Box<Self>, store: &Stores) {
        self(store);
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// The submitting side of the pool.
#[derive(Clone)]
pub(crate) struct ReadPool {
    tx: Sender<Box<dyn Job>>,
}

impl ReadPool {
    /// Starts `threads` workers named `NAME-i` sharing a queue of `depth` jobs; they count
    /// the errors they encode in `metrics`.
    pub(crate) fn start(
        name: &str,
        store: &Stores,
        threads: usize,
        depth: usize,
        metrics: &std::sync::Arc<crate::metrics::Metrics>,
    ) -> std::io::Result<(ReadPool, Vec<std::thread::JoinHandle<()>>)> {
        let (tx, rx) = bounded::<Box<dyn Job>>(depth);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let store = store.clone();
            let metrics = std::sync::Arc::clone(metrics);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        crate::metrics::enter(&metrics);
                        while let Ok(job) = rx.recv() {
                            job.run(&store);
                        }
                    })?,
            );
        }
        Ok((ReadPool { tx }, handles))
    }

    /// Queues a job without blocking. Returns `false` when the queue is full or closed.
    #[must_use]
    pub(crate) fn submit(&self, job: impl FnOnce(&Stores) + Send + 'static) -> bool {
        self.try_submit(job).is_ok()
    }

    /// Queues a job without blocking; a full or closed queue hands it back.
    ///
    /// # Errors
    /// The job itself, when it was not queued.
    pub(crate) fn try_submit<J: Job + 'static>(&self, job: J) -> Result<(), J> {
        match self.tx.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                match job.into_any().downcast::<J>() {
                    Ok(job) => Err(*job),
                    // Unreachable: the box holds a `J`.
                    Err(_) => unreachable!("a refused job is the job that was sent"),
                }
            }
        }
    }
}
