//! The systemd watchdog (`WatchdogSec`): a thread that pings only while every shard's loop
//! keeps turning, so a stuck shard gets the daemon restarted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::shard::Shared;

/// Pings systemd's watchdog at half its interval while every shard's loop keeps turning.
/// The thread holds only a weak reference, so it never keeps the daemon's state alive.
pub(super) fn start(shared: &Arc<Shared>, stop: &Arc<AtomicBool>) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let interval = Duration::from_micros(usec / 2);
    let shared = Arc::downgrade(shared);
    let stop = Arc::clone(stop);
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let limit = interval.max(Duration::from_secs(1));
                if shared.stuck_shards(limit).is_empty() {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                } else {
                    tracing::error!("a shard stopped turning; withholding the watchdog ping");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the watchdog thread");
    }
}
