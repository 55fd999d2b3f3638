//! Partition ownership through a real etcd (`chatd::cluster`): nodes join one after
//! another and hand partitions over, one dies and the others take its partitions after its
//! lease, one joins and takes its share; one leaves and hands its partitions over while its
//! lease lives on, and the last one to leave keeps them. The lease is 4 s, roomy enough that a loaded
//! machine does not miss a renewal (which the log would show as a lost lease). Every change goes into one log, which is replayed
//! to check that no partition ever had two live owners and that every partition ends with
//! exactly the owner etcd names.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatd::cluster::{Change, Membership, NodeKeys, Placement, Settings, preferred};
use parking_lot::Mutex;
use tokio::sync::mpsc;

const PARTITIONS: u16 = 16;

/// A single-member etcd on free loopback ports, in a temporary directory, killed on drop.
pub(crate) struct Etcd {
    child: Child,
    pub(crate) url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub(crate) async fn start() -> Etcd {
        Etcd::launch(None, &[]).await
    }

    /// An etcd started with `args` besides the usual ones.
    pub(crate) async fn start_with(args: &[&str]) -> Etcd {
        Etcd::launch(None, args).await
    }

    /// An etcd serving its clients over TLS (`https://`) with a certificate for 127.0.0.1
    /// that a CA of its own signed, and taking only clients whose certificate that CA
    /// signed; returns it, the CA's certificate and a client certificate and key (PEM).
    pub(crate) async fn start_tls() -> (Etcd, String, (String, String)) {
        let ca = crate::test_ca("chatd test etcd CA");
        let (cert, key) = crate::signed_by(&ca, "127.0.0.1");
        let (client, client_key) = crate::signed_by(&ca, "chatd-node");
        let identity = (client.pem(), client_key.serialize_pem());
        let tls = Tls {
            cert: cert.pem(),
            key: key.serialize_pem(),
            ca: ca.pem(),
            client: identity.clone(),
        };
        let etcd = Etcd::launch(Some(tls), &[]).await;
        (etcd, ca.pem(), identity)
    }

    /// With `tls`, its client URL is `https://` and it checks its clients' certificates.
    async fn launch(tls: Option<Tls>, args: &[&str]) -> Etcd {
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (client, peer): (SocketAddr, SocketAddr) = (port(), port());
        let dir = tempfile::tempdir().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (url, peer_url) = (format!("{scheme}://{client}"), format!("http://{peer}"));
        let mut command = Command::new("etcd");
        command
            .args(["--name", "solo", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("solo={peer_url}")])
            .args(args);
        let mut options = None;
        if let Some(tls) = &tls {
            let file = |name: &str, pem: &str| {
                let path = dir.path().join(name);
                std::fs::write(&path, pem).unwrap();
                path
            };
            command
                .arg("--cert-file")
                .arg(file("cert.pem", &tls.cert))
                .arg("--key-file")
                .arg(file("key.pem", &tls.key))
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(file("ca.pem", &tls.ca));
            let config = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca))
                .identity(etcd_client::Identity::from_pem(
                    &tls.client.0,
                    &tls.client.1,
                ));
            options = Some(etcd_client::ConnectOptions::new().with_tls(config));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server; make bootstrap installs it)");
        let etcd = Etcd {
            child,
            url,
            _dir: dir,
        };
        for _ in 0..200 {
            if let Ok(mut client) =
                etcd_client::Client::connect([etcd.url.clone()], options.clone()).await
                && client.get("probe", None).await.is_ok()
            {
                return etcd;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd did not come up at {}", etcd.url);
    }
}

/// An etcd's TLS: its certificate and key, the CA, and a client certificate and key (PEM).
struct Tls {
    cert: String,
    key: String,
    ca: String,
    client: (String, String),
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
enum Logged {
    Acquired(&'static str, u16, i64),
    Released(&'static str, u16),
    Died(&'static str),
    Lost(&'static str),
    Left(&'static str),
}

/// Runs `node`'s membership; its changes go to the log. A release is answered (and logged)
/// after 200 ms, as a node closing a partition's store would: a node taking the partition
/// before that answer would show in the log.
/// Aborting the returned task is the node dying: no more keep-alives, nothing revoked. The
/// node leaves with the returned [`NodeKeys`].
async fn node(
    etcd: &str,
    node: &'static str,
    partitions: u16,
    log: Arc<Mutex<Vec<Logged>>>,
) -> (
    tokio::task::JoinHandle<Result<(), chatd::cluster::Error>>,
    NodeKeys,
) {
    let membership = Membership::join(Settings {
        etcd: vec![etcd.to_owned()],
        etcd_user: None,
        etcd_tls: None,
        cluster: "test".into(),
        node: node.into(),
        partitions,
        lease: Duration::from_secs(4),
        placement: Placement::Spread,
        peer: String::new(),
    })
    .await
    .unwrap();
    let (changes, mut received) = mpsc::channel(64);
    // It serves what it acquires at once, and says so, as a node does once it opened the
    // store (a leaving node waits for that).
    let mut keys = membership.keys();
    tokio::spawn(async move {
        while let Some(change) = received.recv().await {
            match change {
                Change::Acquired { partition, term } => {
                    log.lock().push(Logged::Acquired(node, partition, term));
                    keys.serving(partition, term).await.unwrap();
                }
                Change::Release { partitions, done } => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    for partition in partitions {
                        log.lock().push(Logged::Released(node, partition));
                    }
                    done.send(()).unwrap();
                }
                Change::Lost => log.lock().push(Logged::Lost(node)),
                Change::Left => log.lock().push(Logged::Left(node)),
                Change::View { .. } => {}
            }
        }
    });
    let leaver = membership.keys();
    (tokio::spawn(membership.run(changes)), leaver)
}

/// The owner etcd names for each partition.
async fn owners(etcd: &str) -> BTreeMap<u16, String> {
    let mut client = etcd_client::Client::connect([etcd], None).await.unwrap();
    let all = client
        .get(
            "/chatd/test/owners/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    all.kvs()
        .iter()
        .map(|kv| {
            let partition = kv.key_str().unwrap().rsplit('/').next().unwrap();
            (
                partition.parse().unwrap(),
                kv.value_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Waits until etcd names, for every one of `partitions`, its preferred owner among `live`.
async fn settled(etcd: &str, partitions: u16, live: &[&str]) -> BTreeMap<u16, String> {
    let deadline = Instant::now() + crate::client::WAIT;
    loop {
        let now = owners(etcd).await;
        let want: BTreeMap<u16, String> = (0..partitions)
            .map(|p| (p, preferred(p, live.iter().copied()).unwrap().to_owned()))
            .collect();
        if now == want {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replays the log: no partition is acquired while a live node holds it; returns who holds
/// what at the end.
fn replay(log: &[Logged]) -> BTreeMap<u16, &'static str> {
    let mut holder: BTreeMap<u16, &'static str> = BTreeMap::new();
    let mut dead: BTreeSet<&'static str> = BTreeSet::new();
    let mut terms: BTreeMap<u16, i64> = BTreeMap::new();
    for entry in log {
        match entry {
            Logged::Acquired(node, p, term) => {
                if let Some(previous) = holder.get(p) {
                    assert!(
                        dead.contains(previous),
                        "{node} acquired {p} while {previous} held it: {log:?}"
                    );
                }
                assert!(terms.get(p).is_none_or(|t| term > t), "terms grow: {log:?}");
                terms.insert(*p, *term);
                holder.insert(*p, node);
            }
            Logged::Released(node, p) => {
                assert_eq!(holder.remove(p), Some(*node), "{log:?}");
            }
            Logged::Died(node) => {
                dead.insert(node);
            }
            Logged::Lost(node) => panic!("{node} lost its lease: {log:?}"),
            Logged::Left(_) => {}
        }
    }
    holder.retain(|_, node| !dead.contains(node));
    holder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_move_by_hand_over_when_nodes_join_and_after_the_lease_when_one_dies() {
    let etcd = Etcd::start().await;
    let log: Arc<Mutex<Vec<Logged>>> = Arc::default();
    // a alone takes everything; b and c join and take their share from it by hand-over.
    let (a, _) = node(&etcd.url, "a", PARTITIONS, log.clone()).await;
    settled(&etcd.url, PARTITIONS, &["a"]).await;
    let (b, _) = node(&etcd.url, "b", PARTITIONS, log.clone()).await;
    let (c, _) = node(&etcd.url, "c", PARTITIONS, log.clone()).await;
    let three = settled(&etcd.url, PARTITIONS, &["a", "b", "c"]).await;
    assert!(
        log.lock()
            .iter()
            .any(|e| matches!(e, Logged::Released("a", _))),
        "a handed partitions over"
    );
    // c dies without a word: its keys stay until its lease expires, then a and b take them.
    c.abort();
    log.lock().push(Logged::Died("c"));
    let died = Instant::now();
    let two = settled(&etcd.url, PARTITIONS, &["a", "b"]).await;
    let failover = died.elapsed();
    assert!(three.values().any(|n| n == "c"), "c held partitions");
    // d joins: it takes what it wins, handed over by a and b.
    let (d, _) = node(&etcd.url, "d", PARTITIONS, log.clone()).await;
    let four = settled(&etcd.url, PARTITIONS, &["a", "b", "d"]).await;
    // etcd's owners are the log's (once the last change has reached the log: a node hears
    // of its own transaction after etcd has it), and no partition ever had two live owners.
    let deadline = Instant::now() + crate::client::WAIT;
    loop {
        let held = replay(&log.lock());
        let held: BTreeMap<u16, String> =
            held.into_iter().map(|(p, n)| (p, n.to_owned())).collect();
        if held == four {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log says {held:?}, etcd {four:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved_to_d = four.values().filter(|n| *n == "d").count();
    assert!(moved_to_d > 0, "d took partitions: {four:?}");
    assert!(
        four.iter().all(|(p, n)| n == "d" || two[p] == *n),
        "only partitions d wins moved: {two:?} -> {four:?}"
    );
    eprintln!("c's partitions moved {failover:?} after it died (lease 4 s)");
    for handle in [a, b, d] {
        handle.abort();
    }
}

/// Waits until the log says `node` left.
async fn left(log: &Mutex<Vec<Logged>>, node: &str) {
    let deadline = Instant::now() + crate::client::WAIT;
    while !log
        .lock()
        .iter()
        .any(|e| matches!(e, Logged::Left(n) if *n == node))
    {
        assert!(
            Instant::now() < deadline,
            "{node} never left: {:?}",
            log.lock()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether etcd has `node` of `cluster` registered (its lease alive).
pub(crate) async fn registered(etcd: &str, cluster: &str, node: &str) -> bool {
    let mut client = etcd_client::Client::connect([etcd], None).await.unwrap();
    let key = format!("/chatd/{cluster}/nodes/{node}");
    !client.get(key, None).await.unwrap().kvs().is_empty()
}

/// Partitions in the leaving test: a node hands over more than one transaction's worth
/// (`cluster::TXN_CHUNK`).
const MANY: u16 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_hands_its_partitions_over_and_the_last_one_keeps_them() {
    let etcd = Etcd::start().await;
    let log: Arc<Mutex<Vec<Logged>>> = Arc::default();
    let (a, mut a_leaves) = node(&etcd.url, "a", MANY, log.clone()).await;
    let (b, mut b_leaves) = node(&etcd.url, "b", MANY, log.clone()).await;
    let (c, mut c_leaves) = node(&etcd.url, "c", MANY, log.clone()).await;
    let three = settled(&etcd.url, MANY, &["a", "b", "c"]).await;
    let of =
        |held: &BTreeMap<u16, String>, node: &str| held.values().filter(|n| *n == node).count();
    assert!(of(&three, "b") > 0, "b held partitions");
    // b leaves while its lease lives on (its keep-alives go on): only a hand-over can move
    // its partitions, and they go to their winners among a and c.
    let asked = log.lock().len();
    b_leaves.leave().await.unwrap();
    let two = settled(&etcd.url, MANY, &["a", "c"]).await;
    left(&log, "b").await;
    assert!(
        registered(&etcd.url, "test", "b").await,
        "b's lease lives on"
    );
    // Told it left after it released every partition it held.
    let entries = log.lock().clone();
    let left_at = entries
        .iter()
        .position(|e| matches!(e, Logged::Left("b")))
        .unwrap();
    let released = |e: &Logged| matches!(e, Logged::Released("b", _));
    assert_eq!(
        entries[asked..left_at]
            .iter()
            .filter(|e| released(e))
            .count(),
        of(&three, "b"),
        "b released each partition it held before it was told it left: {entries:?}"
    );
    // b stops and revokes its lease: its keys go at once, and nothing moves.
    b.abort();
    b_leaves.revoke().await.unwrap();
    assert!(!registered(&etcd.url, "test", "b").await);
    assert_eq!(settled(&etcd.url, MANY, &["a", "c"]).await, two);
    // a leaves: c takes everything, more than one transaction's worth from a. c, the last,
    // leaves: nobody is left to take its partitions, so it is told at once and keeps them
    // until it stops.
    let from_a = of(&two, "a");
    assert!(from_a > chatd::cluster::TXN_CHUNK, "{two:?}");
    let asked = log.lock().len();
    a_leaves.leave().await.unwrap();
    settled(&etcd.url, MANY, &["c"]).await;
    left(&log, "a").await;
    // c took them in as many transactions as a released them in, at most (each term is a
    // transaction's revision): the other nodes see a few changes, not one a partition.
    let terms: BTreeSet<i64> = (log.lock()[asked..].iter())
        .filter_map(|e| match e {
            Logged::Acquired("c", _, term) => Some(*term),
            _ => None,
        })
        .collect();
    assert!(
        terms.len() <= from_a.div_ceil(chatd::cluster::TXN_CHUNK),
        "c took {from_a} partitions in {} transactions",
        terms.len()
    );
    c_leaves.leave().await.unwrap();
    left(&log, "c").await;
    // Every move was a hand-over: no partition had two owners, and the log ends where etcd
    // does: c holds everything.
    let held = replay(&log.lock());
    assert_eq!(held.len(), usize::from(MANY), "{held:?}");
    assert!(held.values().all(|n| *n == "c"), "{held:?}");
    assert_eq!(owners(&etcd.url).await.len(), usize::from(MANY));
    for handle in [a, c] {
        handle.abort();
    }
}

/// Whether the owner key of each of `partitions` in `cluster` was created while `node` was
/// still registered (its lease alive): taken by hand-over, not after `node`'s lease ended.
pub(crate) async fn taken_while_registered(
    etcd: &str,
    cluster: &str,
    partitions: &[u16],
    node: &str,
) -> bool {
    let mut client = etcd_client::Client::connect([etcd], None).await.unwrap();
    let node_key = format!("/chatd/{cluster}/nodes/{node}");
    for p in partitions {
        let owner = format!("/chatd/{cluster}/owners/{p:05}");
        let owner = client.get(owner, None).await.unwrap();
        let Some(owner) = owner.kvs().first() else {
            return false;
        };
        let then = etcd_client::GetOptions::new().with_revision(owner.create_revision());
        if client
            .get(node_key.as_str(), Some(then))
            .await
            .unwrap()
            .kvs()
            .is_empty()
        {
            return false;
        }
    }
    true
}
