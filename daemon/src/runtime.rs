//! The seam around the per-shard async runtime.
//!
//! Each shard thread runs tokio-uring (which drives a tokio current-thread runtime with a
//! `LocalSet`, so quinn's tokio runtime works inside it). tokio-uring 0.5 is unmaintained
//! upstream: everything the daemon needs from it goes through these two functions, so moving
//! to another thread-per-core runtime touches only this file.

use std::future::Future;

/// Runs `future` to completion on the current thread with the shard runtime.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    tokio_uring::builder().entries(256).start(future)
}

/// Spawns a task on the current shard's runtime. The task may hold `Rc`s: it never leaves
/// this thread.
pub(crate) fn spawn_local<F>(future: F)
where
    F: Future + 'static,
    F::Output: 'static,
{
    drop(tokio_uring::spawn(future));
}
