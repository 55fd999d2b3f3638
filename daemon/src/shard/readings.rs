//! Readings of the state every shard shares, for the watchdog, `/readyz`, `/metrics`,
//! `chatd admin status` and `Daemon`'s accessors: one computation each, whoever asks.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{ShardId, Shared};

/// Open connections by state, daemon-wide.
pub(crate) struct ConnectionStates {
    /// From the first packet until the handshake completed.
    pub(crate) handshaking: usize,
    /// Handshake done, no session yet.
    pub(crate) unauthenticated: usize,
    /// With a session.
    pub(crate) authenticated: usize,
    /// Handshake done, per shard.
    pub(crate) per_shard: Vec<usize>,
}

impl Shared {
    /// Milliseconds since the daemon started: the clock of the shards' heartbeats.
    pub(crate) fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long ago shard `shard`'s loop last turned.
    pub(crate) fn heartbeat_age(&self, shard: ShardId) -> Duration {
        let last = self.heartbeats[shard].load(Ordering::Acquire);
        Duration::from_millis(self.uptime_ms().saturating_sub(last))
    }

    /// The shards whose loop has not turned within `limit` (one that has left its loop at
    /// a stop is not stuck).
    pub(crate) fn stuck_shards(&self, limit: Duration) -> Vec<ShardId> {
        (0..self.heartbeats.len())
            .filter(|&i| !self.exited[i].load(Ordering::Acquire) && self.heartbeat_age(i) >= limit)
            .collect()
    }

    /// Open connections per shard (from the handshake's end).
    pub(crate) fn connections_per_shard(&self) -> Vec<usize> {
        self.connections
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .collect()
    }

    /// Connections by state. `unauthenticated` counts from the first packet until
    /// authentication, `connections` from the handshake's end until the close: the
    /// difference is what is still in its handshake.
    pub(crate) fn connection_states(&self) -> ConnectionStates {
        let per_shard = self.connections_per_shard();
        let open: usize = per_shard.iter().sum();
        let authenticated = self.sessions.load(Ordering::Acquire).min(open);
        let unauthenticated = open - authenticated;
        ConnectionStates {
            handshaking: self
                .unauthenticated
                .load(Ordering::Acquire)
                .saturating_sub(unauthenticated),
            unauthenticated,
            authenticated,
            per_shard,
        }
    }

    /// The most events ever queued for any one connection.
    pub(crate) fn event_queue_peak(&self) -> usize {
        self.event_queue_peak
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }
}
