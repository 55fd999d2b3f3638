//! The storage thread: the only writer of the database. It group-commits: it takes every
//! request queued (up to `max_group_commit`), puts them into one RocksDB `WriteBatch`, writes
//! it with one WAL append and (under `fsync` durability) one fsync, then completes each
//! request in order. A shard learns of its commit only after that write returned, so nothing
//! is visible before it is durable.
//!
//! Requests come over a bounded crossbeam channel; the thread blocks on it (it is not an
//! event loop). Shards use `try_send` and answer `OVERLOADED` when it is full. The thread ends
//! when every sender is gone, after syncing the WAL.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use rocksdb::{WriteBatch, WriteOptions};

use super::{Cf, Store, outbox};
use crate::config::Durability;

/// The outbox's newest event seq, published by the storage thread after each commit, and a
/// wake-up for the bridge.
#[derive(Default)]
pub struct OutboxHead {
    /// The last committed event seq (0: none yet).
    pub seq: std::sync::atomic::AtomicU64,
    /// Notified after every commit that added events.
    pub notify: tokio::sync::Notify,
}

/// One key/value to write.
#[derive(Debug)]
pub struct Put {
    /// Column family.
    pub cf: Cf,
    /// Key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
}

/// One key to delete.
#[derive(Debug)]
pub struct Delete {
    /// Column family.
    pub cf: Cf,
    /// Key.
    pub key: Vec<u8>,
}

/// Writes that commit together or not at all.
#[derive(Debug, Default)]
pub struct Batch {
    /// Keys to write.
    pub puts: Vec<Put>,
    /// Keys to delete.
    pub deletes: Vec<Delete>,
    /// Commit only if this key is absent in its column family (and not claimed by an earlier
    /// request of the same group): how unique names are claimed.
    pub unless_exists: Option<(Cf, Vec<u8>)>,
    /// Events for the outbox, numbered by the storage thread when the batch commits.
    pub events: Vec<outbox::Event>,
}

impl Batch {
    /// Adds a put.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.puts.push(Put {
            cf,
            key: key.into(),
            value: value.into(),
        });
    }

    /// Adds an outbox event.
    pub fn event(&mut self, event: outbox::Event) {
        self.events.push(event);
    }

    /// Adds a delete.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.deletes.push(Delete {
            cf,
            key: key.into(),
        });
    }
}

/// Why a write did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// `unless_exists` found the key.
    #[error("the key exists")]
    Exists,
    /// RocksDB failed the write; nothing of the group was committed.
    #[error("storage: {0}")]
    Storage(String),
}

/// What the storage thread calls when a request is done. Implemented by the shards, which
/// push the result into their inbox.
pub trait Completion: Send + 'static {
    /// Called once, on the storage thread, after the group's write returned.
    fn complete(self, result: Result<(), WriteError>);
}

struct Request<C> {
    batch: Batch,
    done: C,
    /// When it entered the queue.
    queued: Instant,
}

/// The sending side of the storage thread's queue.
pub struct Writer<C> {
    tx: Sender<Request<C>>,
}

impl<C> Clone for Writer<C> {
    fn clone(&self) -> Self {
        Writer {
            tx: self.tx.clone(),
        }
    }
}

impl<C: Completion> Writer<C> {
    /// Queues a batch without blocking.
    ///
    /// # Errors
    /// Gives the completion back when the queue is full or the thread is gone.
    pub fn submit(&self, batch: Batch, done: C) -> Result<(), C> {
        self.tx
            .try_send(Request {
                batch,
                done,
                queued: Instant::now(),
            })
            .map_err(|e| match e {
                TrySendError::Full(r) | TrySendError::Disconnected(r) => r.done,
            })
    }

    /// Requests waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// The queue's bound.
    pub fn capacity(&self) -> usize {
        self.tx.capacity().unwrap_or(usize::MAX)
    }
}

/// A node's storage threads, one per partition it holds (a single node's one): a write goes
/// to the thread of the partition that holds what it writes. Cheap to clone; clones share
/// the threads, which a cluster's node starts and stops as ownership moves.
pub struct Writers<C> {
    slots: std::sync::Arc<[arc_swap::ArcSwapOption<Writer<C>>]>,
}

impl<C> Clone for Writers<C> {
    fn clone(&self) -> Self {
        Writers {
            slots: std::sync::Arc::clone(&self.slots),
        }
    }
}

impl<C: Completion> Writers<C> {
    /// `partitions` slots, no thread yet.
    #[must_use]
    pub fn none(partitions: usize) -> Writers<C> {
        Writers {
            slots: (0..partitions)
                .map(|_| arc_swap::ArcSwapOption::empty())
                .collect(),
        }
    }

    /// Sends partition `p`'s writes to `writer` from now on.
    pub fn install(&self, p: usize, writer: Writer<C>) {
        if let Some(slot) = self.slots.get(p) {
            slot.store(Some(std::sync::Arc::new(writer)));
        }
    }

    /// Stops taking partition `p`'s writes; its thread ends once the writes queued before
    /// are committed and every clone of its sender is gone.
    pub fn remove(&self, p: usize) {
        if let Some(slot) = self.slots.get(p) {
            slot.store(None);
        }
    }

    /// Queues a batch for partition `partition`'s storage thread without blocking.
    ///
    /// # Errors
    /// Gives the completion back, with whether the partition is held, when the queue is full,
    /// the thread is gone or the partition is not held here.
    pub fn submit(&self, partition: usize, batch: Batch, done: C) -> Result<(), (C, bool)> {
        let slot = self.slots.get(partition).map(arc_swap::ArcSwapOption::load);
        match slot.as_ref().and_then(|s| s.as_deref()) {
            Some(writer) => writer.submit(batch, done).map_err(|done| (done, true)),
            None => Err((done, false)),
        }
    }

    /// How many partitions have a storage thread here.
    pub fn held(&self) -> usize {
        self.each(|_| 1).sum()
    }

    /// Requests waiting in every queue now.
    pub fn queued(&self) -> usize {
        self.each(Writer::queued).sum()
    }

    /// The queues' bounds, together.
    pub fn capacity(&self) -> usize {
        self.each(Writer::capacity)
            .fold(0usize, usize::saturating_add)
    }

    fn each<'a>(
        &'a self,
        f: impl Fn(&Writer<C>) -> usize + 'a,
    ) -> impl Iterator<Item = usize> + 'a {
        self.slots
            .iter()
            .filter_map(move |slot| slot.load().as_deref().map(&f))
    }
}

/// Starts the storage thread of partition `p` of a node's `partitions` (named `storage` on a
/// single node, `storage-P` with partitions), publishing its commits' events to `outbox`. It
/// runs until every clone of its [`Writer`] is dropped.
///
/// # Errors
/// When the thread cannot be spawned.
pub fn spawn_partition<C: Completion>(
    (p, partitions): (usize, usize),
    store: Store,
    (durability, max_group, queue_depth): (Durability, usize, usize),
    outbox: &std::sync::Arc<OutboxHead>,
    metrics: &std::sync::Arc<crate::metrics::Metrics>,
) -> std::io::Result<(Writer<C>, std::thread::JoinHandle<()>)> {
    let name = if partitions == 1 {
        "storage".to_owned()
    } else {
        format!("storage-{p}")
    };
    let (tx, rx) = bounded(queue_depth);
    let (outbox, metrics) = (
        std::sync::Arc::clone(outbox),
        std::sync::Arc::clone(metrics),
    );
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        crate::metrics::enter(&metrics);
        run(&store, durability, max_group, &rx, &outbox, &metrics);
    })?;
    Ok((Writer { tx }, handle))
}

/// Starts a single node's storage thread (partition 0 of 1). It runs until every [`Writer`]
/// clone is dropped.
///
/// # Errors
/// When the thread cannot be spawned.
pub fn spawn<C: Completion>(
    store: Store,
    durability: Durability,
    max_group: usize,
    queue_depth: usize,
    outbox: std::sync::Arc<OutboxHead>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> std::io::Result<(Writer<C>, std::thread::JoinHandle<()>)> {
    let options = (durability, max_group, queue_depth);
    spawn_partition((0, 1), store, options, &outbox, &metrics)
}

fn run<C: Completion>(
    store: &Store,
    durability: Durability,
    max_group: usize,
    rx: &Receiver<Request<C>>,
    outbox: &OutboxHead,
    all_metrics: &crate::metrics::Metrics,
) {
    use std::sync::atomic::Ordering;
    let metrics = &all_metrics.storage;
    let mut perf = wal_timer();
    let mut options = WriteOptions::default();
    options.set_sync(durability == Durability::Fsync);
    let mut group = Vec::with_capacity(max_group);
    let mut results = Vec::with_capacity(max_group);
    let mut claimed = HashSet::new();
    let mut slow = SlowWrites::default();
    let mut failed = FailedWrites::default();
    let mut upkept = Instant::now();
    while let Some(first) = next_request(store, &options, rx, metrics, &mut failed) {
        // Histogram samples are folded into buckets here too, so they stay bounded when no
        // admin listener runs.
        if upkept.elapsed() >= UPKEEP_EVERY {
            upkept = Instant::now();
            all_metrics.upkeep();
        }
        group.push(first);
        while group.len() < max_group {
            match rx.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let before = outbox.seq.load(Ordering::Acquire);
        let mut next_event = before;
        let started = Instant::now();
        perf.reset();
        let outcome = write_group(
            store,
            &options,
            &mut group,
            &mut results,
            &mut claimed,
            &mut next_event,
        );
        let now = Instant::now();
        let oldest = group.iter().map(|r| r.queued).min().unwrap_or(started);
        let wal = Duration::from_nanos(perf.metric(rocksdb::perf::PerfMetric::WriteWalTime));
        metrics.set_failing(&mut failed.failing, outcome.is_err());
        metrics.record(
            &outcome,
            group.len(),
            now - oldest,
            now - started,
            wal,
            durability,
        );
        slow.warn(now.duration_since(started), now, group.len());
        report_failures(&mut failed, outcome.as_ref().err(), now);
        // Event numbers are taken only by a group that committed: no gaps.
        if outcome.is_ok() && next_event != before {
            outbox.seq.store(next_event, Ordering::Release);
            outbox.notify.notify_one();
        }
        // Every request is completed exactly once, whatever happened to the group.
        for (i, request) in group.drain(..).enumerate() {
            request.done.complete(match &outcome {
                Ok(()) => results.get(i).cloned().unwrap_or(Ok(())),
                Err(e) => Err(e.clone()),
            });
        }
        results.clear();
        claimed.clear();
    }
    if let Err(e) = store.sync() {
        tracing::error!(error = %e, "syncing the WAL at shutdown failed");
    }
}

/// RocksDB's timers for this thread only: how long each group's WAL write (with its fsync)
/// takes, for `chatd_storage_fsync_seconds`. A few clock reads per group. rust-rocksdb 0.24's
/// level names predate RocksDB 10's `kEnableWait` (3): its
/// `EnableTimeAndCPUTimeExceptForMutex` is 4, RocksDB's `kEnableTimeExceptForMutex`, the level
/// at which `write_wal_time` is timed (the integration test checks it is not 0).
fn wal_timer() -> rocksdb::perf::PerfContext {
    rocksdb::perf::set_perf_stats(
        rocksdb::perf::PerfStatsLevel::EnableTimeAndCPUTimeExceptForMutex,
    );
    rocksdb::perf::PerfContext::default()
}

/// The next request, waited for; `None` once every sender is gone. While commits fail, an
/// idle storage thread probes the disk itself every `PROBE_EVERY`: the daemon must not stay
/// unready (`/readyz`) because nobody writes.
fn next_request<C: Completion>(
    store: &Store,
    options: &WriteOptions,
    rx: &Receiver<Request<C>>,
    metrics: &crate::metrics::StorageMetrics,
    failed: &mut FailedWrites,
) -> Option<Request<C>> {
    use crossbeam_channel::RecvTimeoutError;
    loop {
        if !failed.failing {
            return rx.recv().ok();
        }
        match rx.recv_timeout(PROBE_EVERY) {
            Ok(request) => return Some(request),
            Err(RecvTimeoutError::Timeout) => {
                let outcome = store
                    .probe(options)
                    .map_err(|e| WriteError::Storage(e.to_string()));
                metrics.set_failing(&mut failed.failing, outcome.is_err());
                report_failures(failed, outcome.as_ref().err(), Instant::now());
            }
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

impl crate::metrics::StorageMetrics {
    /// Counts this storage thread among the failing ones, or no longer, as `now` says;
    /// `was` is what it last said.
    fn set_failing(&self, was: &mut bool, now: bool) {
        use std::sync::atomic::Ordering;
        if *was != now {
            if now {
                self.failing.fetch_add(1, Ordering::AcqRel);
            } else {
                self.failing.fetch_sub(1, Ordering::AcqRel);
            }
            *was = now;
        }
    }

    /// Records a group commit of `requests` that `outcome` ended: the oldest request waited
    /// `commit` in all, the write took `write`, of which `wal` in the WAL (with its fsync).
    fn record(
        &self,
        outcome: &Result<(), WriteError>,
        requests: usize,
        commit: Duration,
        write: Duration,
        wal: Duration,
        durability: Durability,
    ) {
        use crate::metrics::seconds;
        if outcome.is_err() {
            self.commits_failed.increment(1);
            return;
        }
        self.commits.increment(1);
        #[allow(clippy::cast_precision_loss)] // at most max_group_commit
        self.group_size.record(requests as f64);
        seconds(&self.commit_seconds, commit);
        seconds(&self.write_seconds, write);
        if durability == Durability::Fsync {
            seconds(&self.fsync_seconds, wal);
        }
    }
}

/// How often an idle storage thread whose last commit failed tries a write of its own.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How often the storage thread folds histogram samples into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Logs what [`FailedWrites::record`] says about a commit's (or probe's) outcome.
fn report_failures(failed: &mut FailedWrites, error: Option<&WriteError>, now: Instant) {
    match failed.record(error, now) {
        Some(FailureReport::First(e)) => tracing::error!(
            error = %e,
            "storage writes fail: every send and change gets UNAVAILABLE until they \
             succeed again (a full disk recovers by itself once space is freed)"
        ),
        Some(FailureReport::Still { failed, error }) => tracing::error!(
            failed_commits = failed,
            error = %error,
            "storage writes still fail"
        ),
        Some(FailureReport::Recovered { failed, lasted }) => tracing::warn!(
            failed_commits = failed,
            after_ms = lasted.as_millis(),
            "storage writes succeed again"
        ),
        None => {}
    }
}

/// A group commit slower than this is reported.
const SLOW_WRITE: Duration = Duration::from_millis(50);

/// Counts group commits slower than [`SLOW_WRITE`] and says when to report them: at the first
/// one, then at most once a second, with how many there were since the last report and the
/// worst. A disk that is slow for minutes gets a line a second, not one per commit.
#[derive(Default)]
struct SlowWrites {
    count: u64,
    worst: Duration,
    reported: Option<Instant>,
}

impl SlowWrites {
    /// Records one group commit of `requests` that took `took`, and warns (at most once a
    /// second, with the count and the worst) when group commits are slow: every message in
    /// them waited as long.
    fn warn(&mut self, took: Duration, now: Instant, requests: usize) {
        if let Some((count, worst)) = self.record(took, now) {
            tracing::warn!(
                slow_commits = count,
                worst_ms = worst.as_millis(),
                requests,
                "group commits took longer than {} ms (the disk's write or sync); every \
                 message in them waited as long",
                SLOW_WRITE.as_millis()
            );
        }
    }

    /// Records one group commit that took `took`, finished at `now`. Returns the count and the
    /// worst duration to report, when it is time to.
    fn record(&mut self, took: Duration, now: Instant) -> Option<(u64, Duration)> {
        if took < SLOW_WRITE {
            return None;
        }
        self.count += 1;
        self.worst = self.worst.max(took);
        if self
            .reported
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return None;
        }
        self.reported = Some(now);
        let report = (self.count, self.worst);
        self.count = 0;
        self.worst = Duration::ZERO;
        Some(report)
    }
}

/// How often a run of failing group commits is reported.
const FAILURE_REPORT: Duration = Duration::from_secs(10);

/// Group commits that fail (a full disk, a broken one): reported at the first, then at most
/// every [`FAILURE_REPORT`] with how many failed since the last report, and once when a
/// commit succeeds again. A disk full for an hour gets a few hundred lines, not one per
/// message.
#[derive(Default)]
struct FailedWrites {
    /// When the current run of failures began, and how many it holds.
    since: Option<Instant>,
    total: u64,
    unreported: u64,
    reported: Option<Instant>,
    /// Whether this thread's last commit (or probe) failed, as counted in
    /// `StorageMetrics::failing`.
    failing: bool,
}

/// What [`FailedWrites::record`] says to report.
#[derive(Debug, PartialEq)]
enum FailureReport<'a> {
    First(&'a WriteError),
    Still { failed: u64, error: &'a WriteError },
    Recovered { failed: u64, lasted: Duration },
}

impl FailedWrites {
    /// Records one group commit's outcome (`Some(error)` when it failed), at `now`.
    fn record<'a>(
        &mut self,
        error: Option<&'a WriteError>,
        now: Instant,
    ) -> Option<FailureReport<'a>> {
        let Some(error) = error else {
            let since = self.since.take()?;
            let failed = std::mem::take(&mut self.total);
            self.unreported = 0;
            self.reported = None;
            return Some(FailureReport::Recovered {
                failed,
                lasted: now.duration_since(since),
            });
        };
        self.total += 1;
        if self.since.is_none() {
            self.since = Some(now);
            self.reported = Some(now);
            return Some(FailureReport::First(error));
        }
        self.unreported += 1;
        if self
            .reported
            .is_some_and(|at| now.duration_since(at) < FAILURE_REPORT)
        {
            return None;
        }
        self.reported = Some(now);
        Some(FailureReport::Still {
            failed: std::mem::take(&mut self.unreported),
            error,
        })
    }
}

/// Builds one `WriteBatch` from the group and writes it. `results` gets one entry per request
/// (a refused `unless_exists` is that request's own failure, not the group's).
fn write_group<C>(
    store: &Store,
    options: &WriteOptions,
    group: &mut [Request<C>],
    results: &mut Vec<Result<(), WriteError>>,
    claimed: &mut HashSet<(Cf, Vec<u8>)>,
    next_event: &mut u64,
) -> Result<(), WriteError> {
    let ts = crate::shard::now_ms();
    let storage = |e: super::Error| WriteError::Storage(e.to_string());
    let mut batch = WriteBatch::default();
    for request in group.iter_mut() {
        if let Some((cf, key)) = request.batch.unless_exists.take() {
            let exists = claimed.contains(&(cf, key.clone()))
                || store
                    .db()
                    .get_pinned_cf(store.cf(cf).map_err(storage)?, &key)
                    .map_err(|e| storage(e.into()))?
                    .is_some();
            if exists {
                results.push(Err(WriteError::Exists));
                continue;
            }
            claimed.insert((cf, key));
        }
        for put in &request.batch.puts {
            batch.put_cf(store.cf(put.cf).map_err(storage)?, &put.key, &put.value);
        }
        for delete in &request.batch.deletes {
            batch.delete_cf(store.cf(delete.cf).map_err(storage)?, &delete.key);
        }
        for event in request.batch.events.drain(..) {
            *next_event += 1;
            let record = outbox::Record {
                seq: *next_event,
                ts,
                event,
            };
            let json =
                serde_json::to_vec(&record).map_err(|e| WriteError::Storage(e.to_string()))?;
            batch.put_cf(
                store.cf(Cf::Outbox).map_err(storage)?,
                outbox::key(*next_event),
                json,
            );
        }
        results.push(Ok(()));
    }
    if !batch.is_empty() {
        store
            .db()
            .write_opt(batch, options)
            .map_err(|e| storage(e.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
