//! The seam around the per-shard async runtime.
//!
//! Each shard thread runs a tokio current-thread runtime with a `LocalSet` (quinn's tokio
//! runtime works inside it), driven either by tokio-uring, which adds an io_uring instance
//! to the thread, or by plain tokio on epoll. io_uring can be unavailable: Docker's default
//! seccomp profile and some hardened hosts refuse `io_uring_setup`, and a systemd unit must
//! allow its system calls. `runtime = "auto"` tries io_uring once at start-up and falls back
//! to epoll with one log line saying why.
//!
//! tokio-uring 0.5 is unmaintained upstream: everything the daemon needs from a runtime goes
//! through this file, so moving to another thread-per-core runtime touches only it.

use std::future::Future;

use crate::config::RuntimeChoice;

/// Submission queue entries of each shard's ring.
const RING_ENTRIES: u32 = 256;

/// What drives a shard thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// tokio-uring: a tokio current-thread runtime with an io_uring instance.
    IoUring,
    /// A plain tokio current-thread runtime (epoll).
    Epoll,
}

impl Kind {
    /// The name in logs and `runtime = ...`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::IoUring => "io-uring",
            Kind::Epoll => "epoll",
        }
    }
}

/// The runtime `choice` resolves to, given whether io_uring could be set up on this host
/// (`probe`, run only when the choice needs it). `Err` when io_uring was demanded and is
/// unavailable; `Ok((kind, Some(reason)))` when `auto` fell back to epoll.
pub(crate) fn choose(
    choice: RuntimeChoice,
    probe: impl FnOnce() -> std::io::Result<()>,
) -> Result<(Kind, Option<String>), String> {
    match choice {
        RuntimeChoice::Epoll => Ok((Kind::Epoll, None)),
        RuntimeChoice::IoUring => probe()
            .map(|()| (Kind::IoUring, None))
            .map_err(|e| explain(&e)),
        RuntimeChoice::Auto => Ok(match probe() {
            Ok(()) => (Kind::IoUring, None),
            Err(e) => (Kind::Epoll, Some(explain(&e))),
        }),
    }
}

/// A shard's tokio-uring runtime.
fn uring_runtime() -> std::io::Result<tokio_uring::Runtime> {
    tokio_uring::Runtime::new(tokio_uring::builder().entries(RING_ENTRIES))
}

/// Sets up (and drops) one io_uring runtime, as a shard would. On a thread of its own: the
/// caller may be inside an async context, where a runtime must not be dropped.
pub(crate) fn probe_io_uring() -> std::io::Result<()> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| uring_runtime().map(drop))
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the io_uring probe panicked")))
    })
}

fn explain(e: &std::io::Error) -> String {
    let hint = match e.raw_os_error() {
        // EPERM from seccomp (Docker's default profile, a SystemCallFilter without the
        // io_uring calls) or kernel.io_uring_disabled; ENOSYS from a kernel without it.
        Some(1) => " (blocked: a seccomp filter or the sysctl kernel.io_uring_disabled)",
        Some(38) => " (the kernel has no io_uring)",
        Some(12) => " (locked-memory limit too low: raise LimitMEMLOCK)",
        _ => "",
    };
    format!("io_uring cannot be set up: {e}{hint}")
}

/// Runs `future` to completion on the current thread with a runtime of `kind`.
///
/// # Errors
/// When the runtime cannot be created.
pub(crate) fn block_on<F: Future>(kind: Kind, future: F) -> std::io::Result<F::Output> {
    match kind {
        Kind::IoUring => Ok(uring_runtime()?.block_on(future)),
        Kind::Epoll => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(tokio::task::LocalSet::new().block_on(&runtime, future))
        }
    }
}

/// Spawns a task on the current shard's runtime. The task may hold `Rc`s: it never leaves
/// this thread.
pub(crate) fn spawn_local<F>(future: F)
where
    F: Future + 'static,
    F::Output: 'static,
{
    // Both kinds run the shard inside a `LocalSet` (tokio-uring's `spawn` is this call).
    drop(tokio::task::spawn_local(future));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(1))
    }

    #[test]
    fn auto_falls_back_to_epoll_and_says_why() {
        let (kind, reason) = choose(RuntimeChoice::Auto, refused).unwrap();
        assert_eq!(kind, Kind::Epoll);
        assert!(reason.unwrap().contains("seccomp"));
        assert_eq!(
            choose(RuntimeChoice::Auto, || Ok(())).unwrap(),
            (Kind::IoUring, None)
        );
    }

    #[test]
    fn a_demanded_runtime_is_not_replaced() {
        assert!(choose(RuntimeChoice::IoUring, refused).is_err());
        let probed = std::cell::Cell::new(false);
        let epoll = choose(RuntimeChoice::Epoll, || {
            probed.set(true);
            Ok(())
        });
        assert_eq!(epoll.unwrap(), (Kind::Epoll, None));
        assert!(!probed.get(), "epoll does not probe io_uring");
    }

    #[test]
    fn both_kinds_run_local_tasks() {
        // A host that refuses io_uring must make its runtime fail to start, not panic.
        if probe_io_uring().is_err() {
            assert!(block_on(Kind::IoUring, async {}).is_err());
        }
        let kinds: &[Kind] = if probe_io_uring().is_ok() {
            &[Kind::IoUring, Kind::Epoll]
        } else {
            &[Kind::Epoll]
        };
        for &kind in kinds {
            // A spawned task runs on the thread that called `block_on` (it may hold `Rc`s).
            let caller = std::thread::current().id();
            let ran_on = block_on(kind, async {
                let (tx, rx) = tokio::sync::oneshot::channel();
                spawn_local(async move {
                    let _ = tx.send(std::thread::current().id());
                });
                rx.await.unwrap()
            })
            .unwrap();
            assert_eq!(ran_on, caller, "{}", kind.name());
        }
    }
}
