//! A cluster's node (`cluster.etcd`): a thread `cluster` with its own tokio runtime joins the
//! cluster through etcd ([`crate::cluster::Membership`]) and takes and gives up partitions
//! as it is told ([`Holdings`]). With `cluster.peer` the partitions are spread over the
//! nodes ([`Placement::Spread`]) and the `peer` thread forwards to the others
//! ([`crate::peer`]), which learns from here who holds what. Without it, every partition is
//! placed on one node ([`Placement::One`]): that node serves the whole cluster and the others
//! stand by, ready to take everything once its lease expires.
//!
//! A node that cannot reach etcd, or loses its lease, holds nothing until it has joined
//! again (with a new lease, after a pause).
//!
//! A node that stops hands its partitions over first ([`Member::hand_over`]): it leaves, gives
//! each partition up while its clients stay connected, and the other nodes take them at
//! once; the answer comes once they serve them (each says so in etcd: `serving/P`) and the
//! node's view names them (its clients' requests then go to them when the nodes talk to
//! each other). Then [`Member::stop`] closes what is left and revokes the node's lease, so
//! that even a node stopped without the hand-over does not leave its partitions unheld for
//! the lease's time to live.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::holdings::Holdings;
use crate::cluster::{Change, Membership, Placement, Settings};
use crate::config::ClusterConfig;
use crate::metrics::PeerLag;
use crate::shard::Shared;

/// Between two attempts to join, and between two attempts to take a partition this node
/// owns but could not open.
const RETRY: Duration = Duration::from_secs(1);

/// Partitions whose stores are opened (or flushed and closed) at once when several are
/// taken (or given up) together.
const AT_ONCE: usize = 4;

/// How long the thread waits for one call to etcd outside the membership's task: that the
/// node leaves, the revocation of its lease, what a partition's store creation says.
const ETCD_TIMEOUT: Duration = Duration::from_secs(2);

/// How a hand-over ([`Member::hand_over`]) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOver {
    /// The other nodes serve every partition, and this node's view says so.
    Done,
    /// No other node is there to take them: the node keeps these many until it stops.
    Kept(usize),
    /// The node is not in the cluster (it could not join): it holds nothing.
    NotJoined,
    /// etcd did not take the node's word, or the membership ended: what the node still
    /// holds moves when it stops.
    Failed,
}

/// The running membership.
pub(crate) struct Member {
    stop: Arc<tokio::sync::Notify>,
    /// Asks the thread to hand the partitions over; answered when it has.
    leave: mpsc::Sender<oneshot::Sender<HandOver>>,
    thread: std::thread::JoinHandle<()>,
    peers: Option<crate::peer::PeerThread>,
}

impl Member {
    /// Leaves the cluster: the node gives up each partition it holds, while its clients stay
    /// connected, and the other nodes take them at once. The answer comes once they serve
    /// them all (or no other node is there to take them, or the node is not in the
    /// cluster); the node takes no partition after that.
    pub(crate) fn hand_over(&self) -> oneshot::Receiver<HandOver> {
        let (done, handed) = oneshot::channel();
        // A full queue: a hand-over was asked already; this one's answer is dropped.
        let _ = self.leave.try_send(done);
        handed
    }

    /// Stops: the thread gives up every partition it still holds, revokes the node's lease
    /// once their stores are closed (the other nodes take them at once) and ends; waited
    /// for until `deadline`, then left to the process's exit.
    pub(crate) fn stop(self, deadline: std::time::Instant) {
        self.stop.notify_one();
        if super::join_by(vec![self.thread], deadline) > 0 {
            tracing::warn!("the cluster thread did not stop by the stop's hard deadline");
        }
        if let Some(peers) = self.peers {
            peers.stop();
        }
    }
}

/// Starts the `cluster` thread.
///
/// # Errors
/// When the thread or its runtime cannot start.
pub(crate) fn start(
    cluster: &ClusterConfig,
    shared: Arc<Shared>,
    holdings: Arc<Holdings>,
) -> std::io::Result<Member> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cluster: cannot read {}: {e}", path.display()),
            )
        })
    };
    let etcd_tls = if cluster.etcd_ca.as_os_str().is_empty() {
        None
    } else {
        let identity = if cluster.etcd_cert.as_os_str().is_empty() {
            None
        } else {
            Some((read(&cluster.etcd_cert)?, read(&cluster.etcd_key)?))
        };
        Some(crate::cluster::EtcdTls {
            ca: read(&cluster.etcd_ca)?,
            identity,
        })
    };
    let settings = Settings {
        etcd: cluster.etcd.clone(),
        etcd_user: (!cluster.etcd_user.is_empty())
            .then(|| (cluster.etcd_user.clone(), cluster.etcd_password.clone())),
        etcd_tls,
        cluster: cluster.name.clone(),
        node: cluster.node.clone(),
        partitions: u16::try_from(cluster.partitions).unwrap_or(u16::MAX),
        lease: Duration::from_secs(cluster.lease_secs),
        placement: if cluster.peer.is_empty() {
            Placement::One
        } else {
            Placement::Spread
        },
        peer: cluster.peer.clone(),
    };
    let peers = if cluster.peer.is_empty() {
        None
    } else {
        let listen = cluster.peer.parse().map_err(std::io::Error::other)?;
        let hex = |secret: &crate::config::Secret| {
            hex::decode(secret.expose()).map_err(std::io::Error::other)
        };
        let secrets = crate::peer::wire::Secrets {
            signs: hex(&cluster.secret)?,
            accepted: if cluster.accepted_secret.is_empty() {
                None
            } else {
                Some(hex(&cluster.accepted_secret)?)
            },
        };
        Some(crate::peer::start(Arc::clone(&shared), listen, secrets)?)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = Arc::clone(&stop);
    let (leave, leaves) = mpsc::channel(1);
    let thread = std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || {
            let node = Node {
                shared,
                holdings,
                held: BTreeSet::new(),
                pending: BTreeMap::new(),
                creation: None,
                name: settings.node.clone(),
                leaving: None,
                keys: None,
                unannounced: BTreeMap::new(),
                left: false,
            };
            runtime.block_on(node.run(settings, &stopped, leaves));
        })?;
    Ok(Member {
        stop,
        leave,
        thread,
        peers,
    })
}

/// What the thread keeps.
struct Node {
    shared: Arc<Shared>,
    holdings: Arc<Holdings>,
    /// The partitions this node holds.
    held: BTreeSet<usize>,
    /// The partitions this node owns but could not open yet, with their terms.
    pending: BTreeMap<usize, i64>,
    /// Which partitions' stores the cluster created (from the current membership).
    creation: Option<crate::cluster::Creation>,
    /// This node's name.
    name: String,
    /// Answered once the node has handed its partitions over.
    leaving: Option<oneshot::Sender<HandOver>>,
    /// The keys the node writes under its current lease (while joined).
    keys: Option<crate::cluster::NodeKeys>,
    /// Partitions this node serves that etcd has not been told of yet, with their terms.
    unannounced: BTreeMap<usize, i64>,
    /// Whether the node left: it joins no more.
    left: bool,
}

impl Node {
    async fn run(
        mut self,
        settings: Settings,
        stop: &tokio::sync::Notify,
        mut leaves: mpsc::Receiver<oneshot::Sender<HandOver>>,
    ) {
        loop {
            if self.left {
                // Left (or asked to while not in the cluster): hold nothing until the stop.
                tokio::select! {
                    () = stop.notified() => break,
                    Some(done) = leaves.recv() => self.leave_unjoined(done),
                }
                continue;
            }
            let joined = tokio::select! {
                joined = Membership::join(settings.clone()) => joined,
                () = stop.notified() => break,
                Some(done) = leaves.recv() => {
                    self.leave_unjoined(done);
                    continue;
                }
            };
            let membership = match joined {
                Ok(membership) => membership,
                Err(e) => {
                    crate::logging::throttled!(warn, error = %e, "cannot join the cluster through etcd; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => continue,
                        () = stop.notified() => break,
                        Some(done) = leaves.recv() => {
                            self.leave_unjoined(done);
                            continue;
                        }
                    }
                }
            };
            tracing::info!(node = %settings.node, cluster = %settings.cluster, "joined the cluster");
            self.creation = Some(membership.creation());
            self.keys = Some(membership.keys());
            self.unannounced.clear();
            let (changes, mut told) = mpsc::channel(16);
            let mut running = tokio::spawn(membership.run(changes));
            let mut retry = tokio::time::interval(RETRY);
            let ended = loop {
                tokio::select! {
                    change = told.recv() => match change {
                        Some(change) => {
                            let mut next = Some(change);
                            while let Some(change) = next.take() {
                                next = self.apply(change, &mut told).await;
                            }
                        }
                        None => break (&mut running).await,
                    },
                    _ = retry.tick(), if !self.pending.is_empty() || !self.unannounced.is_empty() => {
                        self.take_pending().await;
                    }
                    Some(done) = leaves.recv() => {
                        tracing::info!("leaving the cluster: handing the partitions over");
                        self.left = true;
                        let leave = async {
                            match &mut self.keys {
                                Some(keys) => keys.leave().await,
                                None => Err(crate::cluster::Error::Closed),
                            }
                        };
                        match etcd("the leave", leave).await {
                            Ok(()) => self.leaving = Some(done),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot tell etcd the node leaves; its partitions move when it stops");
                                let _ = done.send(HandOver::Failed);
                            }
                        }
                    }
                    () = stop.notified() => {
                        running.abort();
                        if self.give_up_all().await
                            && let Some(keys) = self.keys.take()
                        {
                            // Its keys go now: the other nodes need not wait out the lease.
                            revoke(keys).await;
                        }
                        return;
                    }
                };
            };
            // The membership ended (its lease lost, etcd gone): hold nothing until joined again.
            // Unless the lease is gone already, its keys go now (once the stores are closed).
            let keys = self.keys.take();
            if self.give_up_all().await
                && !matches!(ended, Ok(Err(crate::cluster::Error::LeaseLost)))
                && let Some(keys) = keys
            {
                revoke(keys).await;
            }
            if let Some(done) = self.leaving.take() {
                let _ = done.send(HandOver::Failed);
            }
            match ended {
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the node left the cluster; joining again")
                }
                Ok(Ok(())) => {}
                Err(e) => tracing::error!(error = %e, "the membership task failed; joining again"),
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = stop.notified() => break,
            }
        }
        self.give_up_all().await;
    }

    /// Leaves while not in the cluster: nothing to hand over, and no joining again.
    fn leave_unjoined(&mut self, done: oneshot::Sender<HandOver>) {
        self.left = true;
        let _ = done.send(HandOver::NotJoined);
    }

    /// Carries out `change`; returns the change after it, when it took the partitions etcd
    /// gave at once (`told`'s next `Acquired` ones) together.
    async fn apply(&mut self, change: Change, told: &mut mpsc::Receiver<Change>) -> Option<Change> {
        match change {
            Change::Acquired { partition, term } => {
                tracing::info!(partition, term, "this node owns the partition");
                self.pending.insert(usize::from(partition), term);
                // Those that came with it, under the same lag.
                let mut after = None;
                while let Ok(next) = told.try_recv() {
                    match next {
                        Change::Acquired { partition, term } => {
                            tracing::info!(partition, term, "this node owns the partition");
                            self.pending.insert(usize::from(partition), term);
                        }
                        other => {
                            after = Some(other);
                            break;
                        }
                    }
                }
                // Its sessions lag before its shards write the partitions: a device given
                // this node's first entries before the last ones of the node that held one
                // (on their way on another link, and dropped once it is held here) would
                // skip those.
                if self.shared.peers.on() {
                    crate::peer::lag_everyone(&self.shared, PeerLag::Take).await;
                }
                self.take_pending().await;
                return after;
            }
            Change::Release { partitions, done } => {
                self.give_up(partitions.into_iter().map(usize::from), true)
                    .await;
                let _ = done.send(());
            }
            Change::Lost => {
                tracing::error!("the node's lease may have expired: it serves no partition");
                self.give_up_all().await;
            }
            Change::Left => {
                // Those kept: no other node is there to take them.
                let kept = self.held.len() + self.pending.len();
                tracing::info!(kept, "handed the partitions over");
                if let Some(done) = self.leaving.take() {
                    let _ = done.send(if kept == 0 {
                        HandOver::Done
                    } else {
                        HandOver::Kept(kept)
                    });
                }
            }
            Change::View { owners, nodes } => {
                // A moved partition's events come from its new node on another link: once
                // the view is in place the sessions lag and catch up from their cursors
                // (what the old holder wrote last, and what the new one wrote before this
                // node saw it, are in the new holder's store), and its entries are
                // delivered after that lag (`peer::feed`).
                if self.shared.peers.on()
                    && let Some(generation) = self.shared.peers.set_view(owners, nodes)
                {
                    crate::peer::lag_everyone(&self.shared, PeerLag::View).await;
                    self.shared.peers.lagged(generation);
                }
            }
        }
        None
    }

    /// Opens what this node owns and has not opened yet (up to [`AT_ONCE`] at once), then
    /// says in etcd what it serves.
    async fn take_pending(&mut self) {
        let mut ready = Vec::new();
        for (p, term) in std::mem::take(&mut self.pending) {
            if let Err(why) = self.may_open(p).await {
                crate::logging::throttled!(
                    error,
                    partition = p,
                    "cannot take an owned partition: {why}; trying again"
                );
                self.pending.insert(p, term);
                continue;
            }
            ready.push((p, term));
        }
        // Several at once: each open replays its store's WAL, mostly waiting on the disk.
        let (shared, holdings) = (Arc::clone(&self.shared), Arc::clone(&self.holdings));
        let open = move |(p, term)| {
            let started = std::time::Instant::now();
            holdings.take(&shared, p, term).map(|()| started.elapsed())
        };
        at_once(ready, open, async |(p, term), taken| match taken {
            Ok(Ok(took)) => {
                tracing::info!(
                    partition = p,
                    term,
                    ms = took.as_millis(),
                    "this node serves the partition"
                );
                self.held.insert(p);
                if let Some(creation) = &mut self.creation
                    && let Err(e) = etcd(
                        "the store creation record",
                        creation.record(partition(p), &self.name),
                    )
                    .await
                {
                    tracing::warn!(partition = p, error = %e, "cannot record the partition's store in etcd");
                }
                self.unannounced.insert(p, term);
            }
            Ok(Err(e)) => {
                crate::logging::throttled!(error, partition = p, error = %e, "cannot open an owned partition; trying again");
                self.pending.insert(p, term);
            }
            Err(e) => {
                tracing::error!(partition = p, error = %e, "taking a partition failed");
                self.pending.insert(p, term);
            }
        })
        .await;
        self.announce().await;
    }

    /// Says in etcd which partitions this node serves, in which term (a leaving node waits
    /// for it before its goodbyes); what etcd did not take is said again at the next retry.
    async fn announce(&mut self) {
        let Some(keys) = &mut self.keys else {
            return;
        };
        for (p, term) in std::mem::take(&mut self.unannounced) {
            if let Err(e) = etcd("the serving key", keys.serving(partition(p), term)).await {
                crate::logging::throttled!(warn, partition = p, error = %e, "cannot tell etcd the node serves the partition; trying again");
                self.unannounced.insert(p, term);
            }
        }
    }

    /// Whether partition `p`'s store may be opened here: it exists in this node's
    /// `partitions_dir`, or etcd says it was never created (then this node creates it).
    async fn may_open(&mut self, p: usize) -> Result<(), String> {
        if self.holdings.has_store(p) {
            return Ok(());
        }
        let Some(creation) = &mut self.creation else {
            return Err("not joined".into());
        };
        match etcd("the store creation read", creation.created(partition(p))).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(format!(
                "etcd says its store was created, and {} holds none: is cluster.partitions_dir \
                 the directory the other nodes write?",
                self.holdings.partition_dir(p).display()
            )),
            Err(e) => Err(format!("etcd: {e}")),
        }
    }

    /// Gives `partitions` up, [`AT_ONCE`] at a time, their stores flushed first when `flush`
    /// (a hand-over: each flush mostly waits on the disk); returns whether every store
    /// closed in time (or was not held).
    async fn give_up(&mut self, partitions: impl IntoIterator<Item = usize>, flush: bool) -> bool {
        let mut giving = Vec::new();
        for p in partitions {
            self.pending.remove(&p);
            self.unannounced.remove(&p);
            if self.held.remove(&p) {
                // Refused from now, not when its turn to close comes.
                self.holdings.refuse_writes(p);
                giving.push(p);
            }
        }
        let (shared, holdings) = (Arc::clone(&self.shared), Arc::clone(&self.holdings));
        let close = move |p| holdings.give_up(&shared, p, flush);
        let mut closed = true;
        at_once(giving, close, async |p, given| match given {
            Ok(in_time) => {
                if !in_time {
                    tracing::error!(partition = p, "the partition's store did not close in time");
                    closed = false;
                }
                tracing::info!(partition = p, "this node gave up the partition");
            }
            Err(e) => {
                tracing::error!(partition = p, error = %e, "giving a partition up failed");
                closed = false;
            }
        })
        .await;
        closed
    }

    /// Gives every partition up at once, unflushed; returns whether every store closed in
    /// time.
    async fn give_up_all(&mut self) -> bool {
        self.pending.clear();
        self.give_up(self.held.clone(), false).await
    }
}

/// Runs `work` on the blocking pool for each of `items`, [`AT_ONCE`] at a time, and hands
/// each item with what its work gave (or how its task failed) to `done` as each ends.
async fn at_once<T, R>(
    items: Vec<T>,
    work: impl Fn(T) -> R + Clone + Send + 'static,
    mut done: impl AsyncFnMut(T, Result<R, tokio::task::JoinError>),
) where
    T: Copy + Send + 'static,
    R: Send + 'static,
{
    let mut items = items.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut started = BTreeMap::new();
    loop {
        while running.len() < AT_ONCE
            && let Some(item) = items.next()
        {
            let work = work.clone();
            let task = running.spawn_blocking(move || work(item));
            started.insert(task.id(), item);
        }
        let Some(ended) = running.join_next_with_id().await else {
            return;
        };
        let id = ended
            .as_ref()
            .map_or_else(tokio::task::JoinError::id, |(id, _)| *id);
        if let Some(item) = started.remove(&id) {
            done(item, ended.map(|(_, gave)| gave)).await;
        }
    }
}

/// `call` to etcd, given up after [`ETCD_TIMEOUT`] (then `TimedOut(what)`).
async fn etcd<T>(
    what: &'static str,
    call: impl Future<Output = Result<T, crate::cluster::Error>>,
) -> Result<T, crate::cluster::Error> {
    tokio::time::timeout(ETCD_TIMEOUT, call)
        .await
        .unwrap_or(Err(crate::cluster::Error::TimedOut(what)))
}

/// Revokes the lease `keys` are under: they go at once.
async fn revoke(keys: crate::cluster::NodeKeys) {
    match etcd("the lease's revocation", keys.revoke()).await {
        Ok(()) => tracing::info!("the node's lease is revoked"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot revoke the node's lease; it expires by itself")
        }
    }
}

/// A partition's number as etcd's keys carry it.
fn partition(p: usize) -> u16 {
    u16::try_from(p).unwrap_or(u16::MAX)
}
