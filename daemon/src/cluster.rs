//! Partition ownership through etcd (docs/SCALING.md section 3): which node owns each of a
//! cluster's partitions, and the hand-over when that changes. A node holds a lease and
//! registers under it; the preferred owner of a partition is the rendezvous hash of the
//! partition over the live nodes; a node takes a partition by creating its owner key under
//! its lease when the key is absent (the key's creation revision is the ownership *term*),
//! and gives one up, when another node is preferred, only after the node has stopped
//! serving it (`Change::Release` is answered). A dead node's keys go with its lease.
//!
//! [`Membership::run`] reconciles on every change etcd reports (but one of serving keys
//! alone, which only a leaving node waits on) and every third of the lease: it reads the
//! cluster's keys whole and acts on the difference, so a missed or repeated notification
//! changes nothing. The lease is renewed on a task of its own, every
//! third of it. A node that cannot renew its lease stops acting as owner before the lease can
//! have expired at etcd (`Change::Lost`): it counts the lease from when it sent the
//! keep-alive etcd last answered.
//!
//! A node that stops on purpose leaves ([`NodeKeys`]): it says so under its lease, no partition
//! prefers it from then on, so it gives up each of its partitions by the same hand-over and
//! the others take them at once; then it revokes its lease, and its keys go without waiting
//! out the lease's time to live.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

/// Where and who: the etcd endpoints, the cluster's name (its key prefix), this node's
/// name, the number of partitions, the lease.
#[derive(Clone, Debug)]
pub struct Settings {
    /// etcd client URLs.
    pub etcd: Vec<String>,
    /// The etcd user and password, when etcd has authentication on.
    pub etcd_user: Option<(String, crate::config::Secret)>,
    /// TLS to etcd, when its URLs are `https://`.
    pub etcd_tls: Option<EtcdTls>,
    /// The cluster's name: keys live under `/chatd/NAME/`.
    pub cluster: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// How many partitions the cluster has (fixed when it is created).
    pub partitions: u16,
    /// The lease's time to live.
    pub lease: Duration,
    /// How partitions are placed: spread over the nodes (rendezvous), or all on one.
    pub placement: Placement,
    /// What the node's key holds for the others: its peer address (empty: none).
    pub peer: String,
}

/// TLS to etcd: the CA its certificate is checked against, and the node's own certificate
/// and key when etcd checks its clients' (all PEM).
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA certificate.
    pub ca: Vec<u8>,
    /// The node's certificate and key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

/// How a cluster's partitions are placed on its nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Each partition on its rendezvous winner among the live nodes: a joining node takes
    /// its share by hand-over.
    Spread,
    /// Every partition on one node, the others standing by: the node that holds partition 0
    /// while it lives (a joining node takes nothing), else partition 0's rendezvous winner.
    /// What a cluster whose nodes cannot forward to each other needs: one node serves it all.
    One,
}

/// What the node must do.
#[derive(Debug)]
pub enum Change {
    /// The node owns `partition` from now, in ownership term `term`.
    Acquired {
        /// The partition.
        partition: u16,
        /// The owner key's creation revision: larger for every new owner.
        term: i64,
    },
    /// Other nodes are preferred: stop serving `partitions`, then answer `done`; their owner
    /// keys are deleted after that, together (up to [`TXN_CHUNK`] in one transaction,
    /// which the other nodes see as one change and take in one pass).
    Release {
        /// The partitions, in order.
        partitions: Vec<u16>,
        /// Answered once the node serves none of them.
        done: oneshot::Sender<()>,
    },
    /// The lease could not be renewed in time: stop serving every partition at once.
    Lost,
    /// The node leaves ([`NodeKeys::leave`]), and the other nodes own and serve every
    /// partition (the [`Change::View`] before this one names them), or no other node is
    /// there to take them: it may stop. Told once.
    Left,
    /// The cluster as etcd last said, when it changed: each partition's owner and term, and
    /// every live node with what its key holds (its peer address).
    View {
        /// The node named in each partition's owner key and the key's term, in partition
        /// order.
        owners: Vec<Option<(String, i64)>>,
        /// The live nodes and their keys' values.
        nodes: BTreeMap<String, String>,
    },
}

/// What can end [`Membership::run`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// etcd refused or could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The lease was not renewed in time (the node has been told: [`Change::Lost`]).
    #[error("the lease was not renewed in time")]
    LeaseLost,
    /// The receiver of the changes is gone.
    #[error("nobody takes the ownership changes")]
    Closed,
    /// etcd ended the watch or the keep-alive stream.
    #[error("etcd ended the {0} stream")]
    Ended(&'static str),
    /// etcd did not answer a call in time.
    #[error("etcd did not answer in time: {0}")]
    TimedOut(&'static str),
}

/// The rendezvous weight of `node` for `partition`: the first 8 bytes of
/// SHA-256(partition ‖ node).
#[must_use]
pub fn weight(partition: u16, node: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update(partition.to_be_bytes());
    hash.update(node.as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The preferred owner of `partition` among `nodes`.
#[must_use]
pub fn preferred<'a>(partition: u16, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes
        .into_iter()
        .max_by_key(|node| (weight(partition, node), *node))
}

/// Which partitions' stores were ever created in the cluster. A node that owns a partition
/// whose store it cannot find, and which etcd says was created, must not create an empty one
/// in its place (its `partitions_dir` is not the one the other nodes write).
#[derive(Clone)]
pub struct Creation {
    client: Client,
    prefix: String,
}

impl Creation {
    fn key(&self, partition: u16) -> String {
        format!("{}{partition:05}", self.prefix)
    }

    /// Whether partition `partition`'s store was created.
    ///
    /// # Errors
    /// etcd's.
    pub async fn created(&mut self, partition: u16) -> Result<bool, Error> {
        let key = self.key(partition);
        Ok(!self.client.get(key, None).await?.kvs().is_empty())
    }

    /// Records that partition `partition`'s store exists (once: a later call changes nothing).
    ///
    /// # Errors
    /// etcd's.
    pub async fn record(&mut self, partition: u16, node: &str) -> Result<(), Error> {
        let key = self.key(partition);
        self.client
            .txn(
                Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, node, None)]),
            )
            .await?;
        Ok(())
    }
}

/// What [`Change::View`] says: each partition's owner and term, and every node's key's value.
type View = (Vec<Option<(String, i64)>>, BTreeMap<String, String>);

/// An owner key as read: the node named in it, its lease, its term.
#[derive(Clone, Debug)]
struct Owner {
    node: String,
    lease: i64,
    term: i64,
}

/// One node's membership: its lease, its keys, its partitions.
pub struct Membership {
    settings: Settings,
    client: Client,
    lease: i64,
    /// The keep-alive last answered was sent at this instant (written by the keep-alive
    /// task).
    renewed: Arc<Mutex<Instant>>,
    /// The last [`Change::View`] sent.
    view: Option<View>,
    /// Whether the last pass found this node leaving: only then do serving keys matter to it.
    leaving: bool,
    /// Whether [`Change::Left`] was sent.
    left: bool,
}

/// The keys a node writes under its lease besides the membership's own: that it serves a
/// partition, that it leaves; and the lease's revocation ([`Membership::keys`]).
pub struct NodeKeys {
    client: Client,
    lease: i64,
    /// The cluster's key prefix.
    prefix: String,
    node: String,
}

impl NodeKeys {
    /// Says, under the lease, that the node serves `partition` in term `term` (its store is
    /// open): a leaving node waits for this before it says goodbye to its clients, so that
    /// they find the partition served wherever they reconnect.
    ///
    /// # Errors
    /// When etcd cannot be reached or refuses.
    pub async fn serving(&mut self, partition: u16, term: i64) -> Result<(), Error> {
        let options = PutOptions::new().with_lease(self.lease);
        let key = serving_key(&self.prefix, partition);
        self.client
            .put(key, term.to_string(), Some(options))
            .await?;
        Ok(())
    }

    /// Says, under the lease, that the node leaves: no partition prefers it from then on, so
    /// [`Membership::run`] gives up (`Change::Release`) each one it holds and the other nodes
    /// take them, and tells [`Change::Left`] once they serve them all.
    ///
    /// # Errors
    /// When etcd cannot be reached or refuses.
    pub async fn leave(&mut self) -> Result<(), Error> {
        let options = PutOptions::new().with_lease(self.lease);
        let key = format!("{}leaving/{}", self.prefix, self.node);
        self.client.put(key, "", Some(options)).await?;
        Ok(())
    }

    /// Ends the lease: every key the node holds under it goes at once, and the other nodes
    /// take its partitions without waiting out the lease's time to live. Only once the node
    /// serves none of them (its stores closed).
    ///
    /// # Errors
    /// When etcd cannot be reached or refuses.
    pub async fn revoke(mut self) -> Result<(), Error> {
        self.client.lease_revoke(self.lease).await?;
        Ok(())
    }
}

/// Aborts a task when dropped: the keep-alive task ends with the membership.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Membership {
    fn prefix(&self) -> String {
        format!("/chatd/{}/", self.settings.cluster)
    }

    /// The keys the node writes under its lease: that it serves a partition, that it leaves.
    #[must_use]
    pub fn keys(&self) -> NodeKeys {
        NodeKeys {
            client: self.client.clone(),
            lease: self.lease,
            prefix: self.prefix(),
            node: self.settings.node.clone(),
        }
    }

    /// The key that says partition `partition`'s store was created (by whichever node
    /// first held it), and an etcd client: what a node checks before it creates a store
    /// that should exist ([`Creation::created`]).
    #[must_use]
    pub fn creation(&self) -> Creation {
        Creation {
            client: self.client.clone(),
            prefix: format!("{}created/", self.prefix()),
        }
    }

    /// Joins: connects, takes a lease, registers the node under it.
    ///
    /// # Errors
    /// When etcd cannot be reached or refuses.
    pub async fn join(settings: Settings) -> Result<Membership, Error> {
        let mut options = etcd_client::ConnectOptions::new();
        if let Some((user, password)) = &settings.etcd_user {
            // etcd's tokens expire (a JWT after its TTL, a simple token when a member
            // restarts): the client asks for a new one and retries.
            options = options
                .with_user(user, password.expose())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &settings.etcd_tls {
            let mut config = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        let mut client = Client::connect(settings.etcd.clone(), Some(options)).await?;
        let ttl = i64::try_from(settings.lease.as_secs().max(2)).unwrap_or(i64::MAX);
        let renewed = Instant::now();
        let lease = client.lease_grant(ttl, None).await?.id();
        let mut membership = Membership {
            settings,
            client,
            lease,
            renewed: Arc::new(Mutex::new(renewed)),
            view: None,
            leaving: false,
            left: false,
        };
        let key = format!("{}nodes/{}", membership.prefix(), membership.settings.node);
        let peer = membership.settings.peer.clone();
        membership
            .client
            .put(key, peer, Some(PutOptions::new().with_lease(lease)))
            .await?;
        Ok(membership)
    }

    /// Keeps the lease and the partitions until an error, telling `changes` what to do.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] after [`Change::Lost`]; etcd's errors; [`Error::Closed`].
    pub async fn run(mut self, changes: mpsc::Sender<Change>) -> Result<(), Error> {
        let (mut keeper, mut answers) = self.client.lease_keep_alive(self.lease).await?;
        let third = self.settings.lease / 3;
        // The lease is renewed on its own task, so that a long hand-over cannot let it lapse.
        let keeping: tokio::task::JoinHandle<Result<(), Error>> = {
            let renewed = Arc::clone(&self.renewed);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(third);
                loop {
                    tick.tick().await;
                    let sent = Instant::now();
                    keeper.keep_alive().await?;
                    match answers.message().await? {
                        Some(answer) if answer.ttl() > 0 => *renewed.lock() = sent,
                        Some(_) => return Err(Error::LeaseLost),
                        None => return Err(Error::Ended("keep-alive")),
                    }
                }
            })
        };
        let _keeping = AbortOnDrop(keeping.abort_handle());
        let mut watch = self
            .client
            .watch(self.prefix(), Some(WatchOptions::new().with_prefix()))
            .await?;
        let mut tick = tokio::time::interval(third);
        let serving = format!("{}serving/", self.prefix());
        let mut changed = true;
        loop {
            if self.lapsed() || keeping.is_finished() {
                let _ = changes.send(Change::Lost).await;
                return Err(Error::LeaseLost);
            }
            if changed {
                self.reconcile(&changes).await?;
            }
            changed = tokio::select! {
                _ = tick.tick() => true,
                event = watch.message() => {
                    let Some(event) = event? else {
                        return Err(Error::Ended("watch"));
                    };
                    // A node opening a partition says so (a serving key, one a partition):
                    // only a leaving node waits on those, the others need not read again.
                    self.leaving
                        || !(event.events().iter())
                            .filter_map(|e| e.kv())
                            .all(|kv| kv.key().starts_with(serving.as_bytes()))
                        || event.events().is_empty()
                }
            };
        }
    }

    /// Whether the lease may have expired at etcd, less a margin of a third of it: from then
    /// on the node must not act as an owner.
    fn lapsed(&self) -> bool {
        self.renewed.lock().elapsed() > self.settings.lease - self.settings.lease / 3
    }

    /// Reads the cluster's keys and acts on them: gives up what another node is preferred
    /// for, takes what this node is preferred for and nobody holds. A node that leaves is
    /// preferred for nothing.
    async fn reconcile(&mut self, changes: &mpsc::Sender<Change>) -> Result<(), Error> {
        let prefix = self.prefix();
        let all = self
            .client
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut peers = BTreeMap::new();
        let mut owners: BTreeMap<u16, Owner> = BTreeMap::new();
        // Each live node's lease, and the nodes that said they leave under theirs.
        let mut leases = BTreeMap::new();
        let mut leaving = Vec::new();
        // The term each partition is served in, as its server said.
        let mut serving: BTreeMap<u16, i64> = BTreeMap::new();
        for kv in all.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            if let Some(node) = rest.strip_prefix("nodes/") {
                leases.insert(node.to_owned(), kv.lease());
                peers.insert(
                    node.to_owned(),
                    kv.value_str().unwrap_or_default().to_owned(),
                );
            } else if let Some(node) = rest.strip_prefix("leaving/") {
                leaving.push((node.to_owned(), kv.lease()));
            } else if let Some(partition) = rest.strip_prefix("serving/")
                && let (Ok(partition), Some(term)) = (
                    partition.parse::<u16>(),
                    kv.value_str().ok().and_then(|t| t.parse::<i64>().ok()),
                )
            {
                serving.insert(partition, term);
            } else if let Some(partition) = rest.strip_prefix("owners/")
                && let (Ok(partition), Ok(node)) = (partition.parse::<u16>(), kv.value_str())
            {
                owners.insert(
                    partition,
                    Owner {
                        node: node.to_owned(),
                        lease: kv.lease(),
                        term: kv.create_revision(),
                    },
                );
            }
        }
        // A node leaves when it said so under the lease it is registered with now: a node
        // restarted under the same name while its last lease lives is not leaving.
        let leaving: BTreeSet<String> = (leaving.into_iter())
            .filter(|(node, lease)| leases.get(node) == Some(lease))
            .map(|(node, _)| node)
            .collect();
        let me = self.settings.node.clone();
        // The nodes a partition may prefer: the live ones that do not leave.
        let staying: Vec<&str> = (peers.keys())
            .filter(|node| !leaving.contains(*node))
            .map(String::as_str)
            .collect();
        // The partitions this node takes: created together, and told together after the
        // pass, so that the node takes them after one lag and the others see one view.
        let mut taking = Vec::new();
        let leader = owners
            .get(&0)
            .map(|owner| owner.node.as_str())
            .filter(|node| staying.contains(node))
            .or_else(|| preferred(0, staying.iter().copied()))
            .map(str::to_owned);
        // The partitions this node gives up, with their terms.
        let mut releasing = Vec::new();
        for partition in 0..self.settings.partitions {
            let want = match self.settings.placement {
                Placement::Spread => preferred(partition, staying.iter().copied()),
                Placement::One => leader.as_deref(),
            };
            let owner = owners.get(&partition);
            let mine = owner.filter(|o| o.node == me && o.lease == self.lease);
            match (mine, want) {
                (Some(owned), Some(want)) if want != me => releasing.push((partition, owned.term)),
                (None, Some(want)) if want == me && owner.is_none() => taking.push(partition),
                _ => {}
            }
        }
        let acquired = if taking.is_empty() || self.lapsed() {
            Vec::new()
        } else {
            self.acquire(&taking).await?
        };
        // A leaving node is done once the others serve every partition (and its view says
        // who, for its clients' requests to go to them), or once nobody is left to take them.
        self.leaving = leaving.contains(&me);
        let left = self.leaving
            && (staying.is_empty()
                || (0..self.settings.partitions).all(|p| {
                    owners.get(&p).is_some_and(|owner| {
                        owner.node != me && serving.get(&p) == Some(&owner.term)
                    })
                }));
        // The view before the releases: a node that joined is dialed while this one closes
        // what it gives up, so that its link is up before it holds anything (a link that
        // starts to a holder lags every session here: docs/SCALING.md section 5).
        let view = (
            (0..self.settings.partitions)
                .map(|p| owners.get(&p).map(|o| (o.node.clone(), o.term)))
                .collect(),
            peers,
        );
        if self.view.as_ref() != Some(&view) {
            self.view = Some(view.clone());
            let (owners, nodes) = view;
            changes
                .send(Change::View { owners, nodes })
                .await
                .map_err(|_| Error::Closed)?;
        }
        if !releasing.is_empty() {
            self.release(&releasing, changes).await?;
        }
        if self.lapsed() {
            // The releases took long enough for the lease to be in doubt: what was taken is
            // not served, and the membership ends here (a late keep-alive answer must not
            // leave keys this node created and never told it of).
            let _ = changes.send(Change::Lost).await;
            return Err(Error::LeaseLost);
        }
        for change in acquired {
            changes.send(change).await.map_err(|_| Error::Closed)?;
        }
        if left && !self.left {
            self.left = true;
            changes
                .send(Change::Left)
                .await
                .map_err(|_| Error::Closed)?;
        }
        Ok(())
    }

    /// Creates the owner keys of `partitions` (held by nobody) under the lease: in one
    /// transaction per [`TXN_CHUNK`], so that the other nodes see one change (one view, one
    /// lag) rather than one a partition; each key only if it is still absent. Returns what
    /// the node took, each with its term (the revision that created it).
    async fn acquire(&mut self, partitions: &[u16]) -> Result<Vec<Change>, Error> {
        let prefix = self.prefix();
        let absent =
            |&p: &u16| Compare::create_revision(owner_key(&prefix, p), CompareOp::Equal, 0);
        let put = |&p: &u16| {
            let options = PutOptions::new().with_lease(self.lease);
            [TxnOp::put(
                owner_key(&prefix, p),
                self.settings.node.clone(),
                Some(options),
            )]
        };
        let mut acquired = Vec::new();
        for (answer, taken) in in_chunks(&mut self.client, partitions, absent, put).await? {
            if answer.succeeded() {
                let term = answer
                    .header()
                    .map_or(0, etcd_client::ResponseHeader::revision);
                acquired.extend(
                    taken
                        .iter()
                        .map(|&partition| Change::Acquired { partition, term }),
                );
            }
        }
        Ok(acquired)
    }

    /// Has the node stop serving `partitions` (with their terms), then deletes their owner
    /// keys: in one transaction per [`TXN_CHUNK`], each key only if it is still the
    /// one this node created.
    async fn release(
        &mut self,
        partitions: &[(u16, i64)],
        changes: &mpsc::Sender<Change>,
    ) -> Result<(), Error> {
        let (done, stopped) = oneshot::channel();
        let release = Change::Release {
            partitions: partitions.iter().map(|(p, _)| *p).collect(),
            done,
        };
        changes.send(release).await.map_err(|_| Error::Closed)?;
        stopped.await.map_err(|_| Error::Closed)?;
        let prefix = self.prefix();
        let key = |partition: u16| owner_key(&prefix, partition);
        let ours = |&(partition, term): &(u16, i64)| {
            Compare::create_revision(key(partition), CompareOp::Equal, term)
        };
        // The owner key, and what this node said of serving it.
        let delete = |&(partition, _): &(u16, i64)| {
            [
                TxnOp::delete(key(partition), None),
                TxnOp::delete(serving_key(&prefix, partition), None),
            ]
        };
        // A key that is not this node's any more leaves the others to one by one.
        in_chunks(&mut self.client, partitions, ours, delete).await?;
        Ok(())
    }
}

/// For each [`TXN_CHUNK`] of `items`, one transaction of their comparisons (`when`) and
/// operations (`then`); where one comparison fails, a transaction an item instead. Returns
/// each transaction's answer with the items it covered.
async fn in_chunks<'a, T, Ops>(
    client: &mut Client,
    items: &'a [T],
    when: impl Fn(&T) -> Compare,
    then: impl Fn(&T) -> Ops,
) -> Result<Vec<(etcd_client::TxnResponse, &'a [T])>, Error>
where
    Ops: IntoIterator<Item = TxnOp>,
{
    let mut answers = Vec::new();
    for chunk in items.chunks(TXN_CHUNK) {
        let all = Txn::new()
            .when(chunk.iter().map(&when).collect::<Vec<_>>())
            .and_then(chunk.iter().flat_map(&then).collect::<Vec<_>>());
        let answer = client.txn(all).await?;
        if answer.succeeded() {
            answers.push((answer, chunk));
            continue;
        }
        for item in chunk {
            let txn = Txn::new()
                .when([when(item)])
                .and_then(then(item).into_iter().collect::<Vec<_>>());
            answers.push((client.txn(txn).await?, std::slice::from_ref(item)));
        }
    }
    Ok(answers)
}

/// Partition `partition`'s owner key in the cluster whose keys start with `prefix`.
fn owner_key(prefix: &str, partition: u16) -> String {
    format!("{prefix}owners/{partition:05}")
}

/// Partition `partition`'s serving key (its term, written by the node that opened it).
fn serving_key(prefix: &str, partition: u16) -> String {
    format!("{prefix}serving/{partition:05}")
}

/// Partitions taken (a comparison and a put each) or released (a comparison and two
/// deletions each) in one transaction: under etcd's default limit of operations in one
/// (`--max-txn-ops`, 128).
pub const TXN_CHUNK: usize = 48;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_what_a_joining_node_wins() {
        let three = ["a", "b", "c"];
        let four = ["a", "b", "c", "d"];
        let mut moved = 0;
        for partition in 0..256 {
            let before = preferred(partition, three).unwrap();
            let after = preferred(partition, four).unwrap();
            if before != after {
                assert_eq!(after, "d", "a partition moves only to the new node");
                moved += 1;
            }
        }
        // About a quarter: each node wins its share.
        assert!((32..=96).contains(&moved), "{moved}");
    }
}
