//! The partitions a node holds (docs/SCALING.md, sections 2 and 3): each one's store, storage
//! thread and outbox head. A single node, or a node with partitions and no cluster, holds
//! them all from start to stop. A cluster's node takes a partition when etcd makes it the
//! owner ([`Holdings::take`]: the store opened where the last owner left it, the ids and the
//! outbox continued from it) and gives one up before anyone else may take it
//! ([`Holdings::give_up`]: no new write, its bridge publisher stopped, the queued writes
//! committed, the store closed).
//! Around both, every shard forgets the partition's conversations, so that no state read
//! before another node wrote is used again.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::Durability;
use crate::shard::{AdminOp, Done, ShardMsg, Shared};
use crate::store::writer::{OutboxHead, Writers, spawn_partition};
use crate::store::{self, Store, Stores, WalOptions, layout};

/// How long a give-up waits for the storage thread's queue to drain and for reads to let go
/// of the store, and a take for the store's lock (its last owner closing it).
const SETTLE: Duration = Duration::from_secs(10);

/// A node's partitions and what runs for each.
pub(crate) struct Holdings {
    /// Where the partitions' directories are.
    dir: PathBuf,
    stores: Stores,
    writers: Writers<Done>,
    outboxes: Vec<Arc<OutboxHead>>,
    /// Each partition's storage thread, while held.
    threads: Mutex<Vec<Option<JoinHandle<()>>>>,
    wal: WalOptions,
    /// Durability, the largest group commit, the queue's depth.
    options: (Durability, usize, usize),
    metrics: Arc<crate::metrics::Metrics>,
    /// The bridge's publishers, with the bridge on.
    bridge: std::sync::OnceLock<crate::bridge::BridgeControl>,
}

impl Holdings {
    /// Starts a storage thread for every partition `stores` holds; those in `dir` are taken
    /// later.
    ///
    /// # Errors
    /// When a store cannot be read or a thread started.
    pub(crate) fn start(
        stores: Stores,
        dir: PathBuf,
        config: &crate::config::Config,
        metrics: &Arc<crate::metrics::Metrics>,
    ) -> Result<Holdings, super::Error> {
        let count = stores.map().count();
        let storage = &config.storage;
        let holdings = Holdings {
            dir,
            writers: Writers::none(count),
            outboxes: (0..count).map(|_| Arc::default()).collect(),
            threads: Mutex::new((0..count).map(|_| None).collect()),
            wal: storage.wal(),
            options: (
                storage.durability,
                storage.max_group_commit,
                storage.queue_depth,
            ),
            metrics: Arc::clone(metrics),
            bridge: std::sync::OnceLock::new(),
            stores,
        };
        for (p, store) in holdings.stores.held() {
            holdings.run(p, store)?;
        }
        Ok(holdings)
    }

    /// Publishes each partition taken from now on, and stops publishing each given up.
    pub(crate) fn set_bridge(&self, bridge: crate::bridge::BridgeControl) {
        let _ = self.bridge.set(bridge);
    }

    /// Where each partition's writes go.
    pub(crate) fn writers(&self) -> Writers<Done> {
        self.writers.clone()
    }

    /// Each partition's outbox head.
    pub(crate) fn outboxes(&self) -> Vec<Arc<OutboxHead>> {
        self.outboxes.clone()
    }

    /// Stops taking writes for partition `p` (what [`Holdings::give_up`] does first): for
    /// partitions given up together, before the first of them is.
    pub(crate) fn refuse_writes(&self, p: usize) {
        self.writers.remove(p);
    }

    /// Stops taking writes and returns the storage threads, for the stop to join: each
    /// ends once what was queued is committed and the shards' clones of its sender are gone
    /// (with `Shared`).
    pub(crate) fn stop(&self) -> Vec<JoinHandle<()>> {
        for p in 0..self.stores.map().count() {
            self.writers.remove(p);
        }
        self.threads
            .lock()
            .iter_mut()
            .filter_map(Option::take)
            .collect()
    }

    /// Starts partition `p`'s storage thread on `store` and routes its reads and writes there.
    fn run(&self, p: usize, store: Store) -> Result<(), super::Error> {
        let count = self.stores.map().count();
        let head = &self.outboxes[p];
        head.seq
            .store(store.outbox_last()?, std::sync::atomic::Ordering::Release);
        let (writer, thread) =
            spawn_partition((p, count), store.clone(), self.options, head, &self.metrics)
                .map_err(|e| super::Error::Start(e.to_string()))?;
        self.threads.lock()[p] = Some(thread);
        self.writers.install(p, writer);
        self.stores.install(p, store);
        Ok(())
    }

    /// Where partition `p`'s store is.
    pub(crate) fn partition_dir(&self, p: usize) -> PathBuf {
        layout::partition_dir(&self.dir, p)
    }

    /// Whether partition `p`'s store exists (was ever created where this node looks).
    pub(crate) fn has_store(&self, p: usize) -> bool {
        self.partition_dir(p).join("CURRENT").exists()
    }

    /// Takes partition `p`, which this node now owns in term `term`: forgets what the shards
    /// held of it, opens its store (waiting up to [`SETTLE`] for its lock, which the last
    /// owner's close or death releases), continues its ids and outbox, starts its storage
    /// thread.
    ///
    /// # Errors
    /// When the store does not open or is another partition's.
    pub(crate) fn take(&self, shared: &Shared, p: usize, term: i64) -> Result<(), super::Error> {
        evict(shared, p);
        let dir = self.partition_dir(p);
        let deadline = Instant::now() + SETTLE;
        let store = loop {
            match Store::open_with(&dir, self.wal) {
                Ok(store) => break store,
                Err(store::Error::Rocks(e)) if Instant::now() < deadline => {
                    tracing::debug!(partition = p, error = %e, "the partition's store is not free yet");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        };
        store.check_partition(p, self.stores.map().count())?;
        shared.ids.load(p, &store)?;
        load_restrictions(shared, p, &store)?;
        // Its entries carry the term on the feed from the first.
        shared.peers.hold(p, term);
        self.run(p, store.clone())?;
        if let Some(bridge) = self.bridge.get() {
            bridge.add(p, store, Arc::clone(&self.outboxes[p]));
        }
        Ok(())
    }

    /// Gives up partition `p`: refuses its new writes and reads, lets its storage thread
    /// commit what was queued and stop, has the shards forget its conversations, forgets
    /// its accounts' restrictions, and closes its store, flushed first when `flush` (a
    /// hand-over: the next holder then opens it without replaying its WAL). Returns whether
    /// the store closed within [`SETTLE`] (else another node cannot open it until this
    /// process lets go).
    pub(crate) fn give_up(&self, shared: &Shared, p: usize, flush: bool) -> bool {
        self.writers.remove(p);
        // What it has not published waits in the outbox for the partition's next holder.
        if let Some(bridge) = self.bridge.get() {
            bridge.remove(p);
        }
        let store = self.stores.remove(p);
        let thread = self.threads.lock()[p].take();
        let deadline = Instant::now() + SETTLE;
        if super::join_by(thread.into_iter().collect(), deadline) > 0 {
            tracing::error!(partition = p, "the partition's storage thread did not stop");
        }
        evict(shared, p);
        // Its accounts' restrictions are the next holder's to keep: a session starting here
        // reads them from it, and a stale copy here would refuse what it lifts.
        (shared.restrictions.pin()).retain(|user, _| shared.partitions.of_id(user.0) != p);
        self.outboxes[p]
            .seq
            .store(0, std::sync::atomic::Ordering::Release);
        if flush && let Some(store) = &store {
            let started = Instant::now();
            match store.flush() {
                Ok(()) => tracing::debug!(
                    partition = p,
                    ms = started.elapsed().as_millis(),
                    "flushed the partition's store"
                ),
                Err(e) => tracing::warn!(
                    partition = p,
                    error = %e,
                    "cannot flush the partition's store: its next holder replays the WAL"
                ),
            }
        }
        // Its own time to close (the reads holding the store end), whatever the flush took.
        match store.map(|store| store.close(SETTLE)) {
            Some(Err(open)) => {
                tracing::error!(
                    partition = p,
                    "the partition's store is still in use; it stays open"
                );
                drop(open);
                false
            }
            _ => true,
        }
    }
}

/// Puts the account restrictions partition `p`'s `store` holds in place of those the node
/// knew for the partition's users (another node may have changed them).
///
/// # Errors
/// RocksDB errors or corrupt records.
pub(crate) fn load_restrictions(
    shared: &Shared,
    p: usize,
    store: &Store,
) -> Result<(), store::Error> {
    let restrictions = shared.restrictions.pin();
    restrictions.retain(|user, _| shared.partitions.of_id(user.0) != p);
    for (user, restriction) in store.restrictions()? {
        restrictions.insert(user, restriction);
    }
    Ok(())
}

/// Has every shard forget its conversations of partition `p`, and waits for them (up to
/// [`SETTLE`]).
fn evict(shared: &Shared, p: usize) {
    let (reply, answers) = std::sync::mpsc::channel();
    let shards = super::tell_every_shard(
        shared,
        || {
            ShardMsg::Admin(AdminOp::Evict {
                partition: p,
                reply: reply.clone(),
            })
        },
        Some(Instant::now() + SETTLE),
    );
    let deadline = Instant::now() + SETTLE;
    for _ in 0..shards {
        let left = deadline.saturating_duration_since(Instant::now());
        if answers.recv_timeout(left).is_err() {
            tracing::error!(
                partition = p,
                "a shard did not forget the partition's conversations"
            );
            return;
        }
    }
}
