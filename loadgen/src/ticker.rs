//! Waiting until an exact instant. tokio's timer wheel rounds sleeps up to whole
//! milliseconds, which would add up to a millisecond of the generator's own making to every
//! latency measured from a scheduled time; a timerfd wakes within microseconds.

use std::io;
use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::time::Instant;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

/// A one-shot timer on CLOCK_MONOTONIC (the clock of `Instant`), registered with the
/// current tokio runtime.
pub(crate) struct Ticker {
    fd: AsyncFd<Timer>,
}

struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Ticker {
    /// A timer; call from inside a tokio runtime with I/O enabled.
    pub(crate) fn new() -> io::Result<Ticker> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        // `AsyncFd::new` is deprecated because an `AsRawFd` impl could name a descriptor it
        // does not own; `Timer`'s names the `OwnedFd` inside it, which lives exactly as long
        // as the registration. The replacement, `AsyncFd::register`, is `unsafe`, which this
        // crate forbids.
        #[allow(deprecated)]
        let fd = AsyncFd::new(Timer(timer))?;
        Ok(Ticker { fd })
    }

    /// Returns at `deadline` (at once if it has passed).
    pub(crate) async fn wait_until(&mut self, deadline: Instant) -> io::Result<()> {
        let Some(delay) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Ok(());
        };
        self.fd
            .get_ref()
            .0
            .set(
                Expiration::OneShot(TimeSpec::from_duration(delay)),
                TimerSetTimeFlags::empty(),
            )
            .map_err(io::Error::from)?;
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|timer| timer.get_ref().0.wait().map_err(io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wakes_at_the_deadline_not_before() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut ticker = Ticker::new().unwrap();
            for micros in [0, 300, 1500] {
                let deadline = Instant::now() + Duration::from_micros(micros);
                ticker.wait_until(deadline).await.unwrap();
                assert!(Instant::now() >= deadline);
            }
            // A deadline in the past returns at once.
            ticker.wait_until(Instant::now()).await.unwrap();
        });
    }
}
