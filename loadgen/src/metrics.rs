//! What the clients measure: HdrHistograms of latencies, counters, errors by code, and the
//! records the checker needs.
//!
//! Each client thread records into its own [`Metrics`] (a thread-local: tasks never leave the
//! thread of their current-thread runtime), so recording takes no lock. The coordinator
//! collects them once a second with [`take`] and merges them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chat_protocol::{ConversationId, Seq};
use hdrhistogram::Histogram;

use crate::check::ClientId;

/// Latencies are recorded in microseconds, up to an hour, with 3 significant digits.
const HIGHEST_US: u64 = 3_600_000_000;

/// A new empty latency histogram.
pub(crate) fn histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts.
    Histogram::new_with_bounds(1, HIGHEST_US, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// What the checker is told.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Record {
    /// An entry acknowledged to its sender (again, when a send is retried after a
    /// reconnect). The ack is the sender's delivery of its own entry.
    Acked {
        /// The sending client.
        sender: ClientId,
        /// Where.
        conversation: ConversationId,
        /// The entry.
        seq: Seq,
        /// The entry's link from the ack, with the digest the sender computed of what it
        /// sent (`None`: a repeat answered without them).
        chain: Option<chat_protocol::Appended>,
    },
    /// An entry pushed to a client, with the first eight bytes of its link (`None` from a
    /// peer broker, which chains nothing).
    Delivered(ClientId, ConversationId, Seq, Option<u64>),
}

/// Everything one thread measured since the last collection.
pub(crate) struct Metrics {
    /// Connect to `HelloOk` (QUIC and TLS handshake, hello, authentication).
    pub handshake: Histogram<u64>,
    /// Scheduled send time to ack.
    pub ack: Histogram<u64>,
    /// Scheduled send time to arrival at each recipient (live deliveries only).
    pub delivery: Histogram<u64>,
    /// Sends written.
    pub sends: u64,
    /// Acks received.
    pub acks: u64,
    /// Live deliveries received.
    pub deliveries: u64,
    /// Deliveries replayed after a reconnect or a lag (not in the latency histogram).
    pub replayed: u64,
    /// Connections established (reconnects included).
    pub connects: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// Error responses by wire code.
    pub errors: BTreeMap<u16, u64>,
    /// `Lagged` events.
    pub lagged: u64,
    /// `Gap` events (entries the daemon did not replay).
    pub gaps_announced: u64,
    /// Message bodies that do not carry their op id (corrupted on the way).
    pub corrupted: u64,
    /// Sends the generator dropped because a client's queue was full.
    pub dropped: u64,
    /// Connections that ended without being asked to.
    pub disconnects: u64,
    /// Publishes a peer broker refused, did not confirm in time, or reported errors about
    /// (chatd's refusals are error responses, in `errors`).
    pub refused: u64,
    /// Own messages a broker sent back to their sender (its `no_echo` or `no_local` not
    /// honoured): extra work for the broker that chatd does not do.
    pub echoed: u64,
    /// For the checker.
    pub records: Vec<Record>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            handshake: histogram(),
            ack: histogram(),
            delivery: histogram(),
            sends: 0,
            acks: 0,
            deliveries: 0,
            replayed: 0,
            connects: 0,
            connect_failures: 0,
            errors: BTreeMap::new(),
            lagged: 0,
            gaps_announced: 0,
            corrupted: 0,
            dropped: 0,
            disconnects: 0,
            refused: 0,
            echoed: 0,
            records: Vec::new(),
        }
    }
}

impl Metrics {
    /// Adds `other` into `self` (records excepted: the checker takes those).
    pub(crate) fn merge(&mut self, other: &Metrics) {
        // The histograms share bounds, so adding cannot fail.
        let _ = self.handshake.add(&other.handshake);
        let _ = self.ack.add(&other.ack);
        let _ = self.delivery.add(&other.delivery);
        self.sends += other.sends;
        self.acks += other.acks;
        self.deliveries += other.deliveries;
        self.replayed += other.replayed;
        self.connects += other.connects;
        self.connect_failures += other.connect_failures;
        for (code, n) in &other.errors {
            *self.errors.entry(*code).or_default() += n;
        }
        self.lagged += other.lagged;
        self.gaps_announced += other.gaps_announced;
        self.corrupted += other.corrupted;
        self.dropped += other.dropped;
        self.disconnects += other.disconnects;
        self.refused += other.refused;
        self.echoed += other.echoed;
    }

    /// Error responses, lags, announced gaps, corruptions, drops, lost connections, refused
    /// publishes, echoes and failed connects: anything that makes a rate unsustainable.
    pub(crate) fn failures(&self) -> u64 {
        self.errors.values().sum::<u64>()
            + self.lagged
            + self.gaps_announced
            + self.corrupted
            + self.dropped
            + self.disconnects
            + self.refused
            + self.echoed
            + self.connect_failures
    }
}

thread_local! {
    static METRICS: RefCell<Metrics> = RefCell::new(Metrics::default());
}

/// Records into this thread's metrics.
pub(crate) fn with<R>(f: impl FnOnce(&mut Metrics) -> R) -> R {
    METRICS.with(|m| f(&mut m.borrow_mut()))
}

/// Takes this thread's metrics, leaving empty ones.
pub(crate) fn take() -> Metrics {
    METRICS.with(|m| std::mem::take(&mut *m.borrow_mut()))
}

/// The clock every thread measures against: nanoseconds since the run started. Message op
/// ids carry the scheduled send time on this clock, so any client can compute a latency.
pub(crate) struct Clock {
    epoch: Instant,
    /// Latencies are recorded for sends scheduled in `[window_start, window_end)`.
    window_start: AtomicU64,
    window_end: AtomicU64,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
        }
    }

    /// Nanoseconds since the epoch.
    pub(crate) fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    /// `instant` in nanoseconds since the epoch.
    pub(crate) fn at(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` nanoseconds after the epoch.
    pub(crate) fn instant(&self, ns: u64) -> Instant {
        self.epoch + std::time::Duration::from_nanos(ns)
    }

    /// Measure sends scheduled from `start` until `end` (nanoseconds on this clock).
    pub(crate) fn set_window(&self, start: u64, end: u64) {
        self.window_end.store(end, Ordering::Release);
        self.window_start.store(start, Ordering::Release);
    }

    /// Whether a send scheduled at `scheduled` is measured.
    pub(crate) fn measured(&self, scheduled: u64) -> bool {
        scheduled >= self.window_start.load(Ordering::Acquire)
            && scheduled < self.window_end.load(Ordering::Acquire)
    }
}

/// Records a connection (or session) established after starting at `started`: its
/// handshake time, in microseconds.
pub(crate) fn connected(started: Instant) {
    let us = u64::try_from(started.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    with(|m| {
        m.connects += 1;
        m.handshake.saturating_record(us);
    });
}

/// Records `now - scheduled` (nanoseconds) in microseconds, rounded up so nothing is 0.
pub(crate) fn record_latency(histogram: &mut Histogram<u64>, scheduled: u64, now: u64) {
    let us = now
        .saturating_sub(scheduled)
        .div_ceil(1000)
        .clamp(1, HIGHEST_US);
    histogram.saturating_record(us);
}
