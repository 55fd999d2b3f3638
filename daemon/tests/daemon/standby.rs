//! Two chatd processes in one cluster on a real etcd (`cluster.etcd`, docs/SCALING.md
//! sections 3 and 8), their partitions' stores in one directory both reach: one node holds
//! every partition and serves; the other stands by (not serving, refusing with
//! `UNAVAILABLE`) and takes nothing when it joins. The serving node is SIGKILLed after its
//! clients' sends were acknowledged; the other takes every partition once the dead node's
//! lease expires and serves all of it: every acknowledged message is there, a device
//! resuming from its cursors gets exactly what it missed, and a resent op id is recognised.
//! Then a new node stands by, and the serving one is stopped (SIGTERM): it hands its
//! partitions over, and the standby takes them at once, long before the stopped node's lease
//! (60 s) could expire. Last, the standby is stopped at once (SIGINT) and revokes its lease,
//! and a node whose partitions directory is not the cluster's owns the partitions at once
//! and creates no empty store.

use std::path::Path;
use std::time::{Duration, Instant};

use chat_protocol::*;

use crate::client::Client;
use crate::operations::Proc;
use crate::ownership::Etcd;

const SECRET: &str = "5f3c0a9d1e7b2c4a6f8e0d2b4c6a8e1f3b5d7c9e0a2c4e6f8b1d3f5a7c9e2b4d";

/// Starts node `name` of `cluster` in `dir/name`: 4 partitions in `partitions`, etcd at
/// `etcd`, a 2 s lease, one token key for every node, the bridge publishing to the exchange
/// named as the cluster.
fn node(dir: &Path, name: &str, etcd: &str, cluster: &str, partitions: &Path) -> Proc {
    node_with_env(dir, name, etcd, cluster, partitions, &[])
}

/// [`node`], with `env` set for it.
fn node_with_env(
    dir: &Path,
    name: &str,
    etcd: &str,
    cluster: &str,
    partitions: &Path,
    env: &[(&str, &str)],
) -> Proc {
    let amqp = crate::bridge::amqp_url();
    let extra = format!(
        "[[auth.keys]]\nid = \"k1\"\nsecret = \"{SECRET}\"\n\n\
         [limits]\nsend_rate = 10000\nsend_burst = 10000\n\n\
         [cluster]\npartitions = 4\netcd = [\"{etcd}\"]\nname = \"{cluster}\"\n\
         node = \"{name}\"\nlease_secs = 2\npartitions_dir = {partitions:?}\n\n\
         [bridge]\namqp_url = \"{amqp}\"\nexchange = \"{cluster}\"\n"
    );
    Proc::start(&dir.join(name), &extra, None, env)
}

/// A token for `user`, signed with the nodes' key.
fn token(user: &str, issued_at: Option<u64>) -> String {
    let auth = chatd::config::AuthConfig {
        keys: vec![chatd::config::KeyConfig {
            id: "k1".into(),
            secret: chatd::config::Secret::inline(SECRET),
        }],
        ..chatd::config::AuthConfig::default()
    };
    let keys = chatd::token::Keys::load(&auth, Path::new("/nonexistent")).unwrap();
    let now = chatd::unix_now();
    keys.mint(user, issued_at.unwrap_or(now), now + 3600)
}

/// A hello with `user`'s token: the session, or the code it was refused with.
pub(crate) async fn hello(
    node: &mut Proc,
    user: &str,
    cursors: Vec<Cursor>,
) -> Result<(Client, Session), ErrorCode> {
    hello_issued(node, user, None, cursors).await
}

/// [`hello`] with a token issued at `issued_at` (seconds since the epoch; now by default).
pub(crate) async fn hello_issued(
    node: &mut Proc,
    user: &str,
    issued_at: Option<u64>,
    cursors: Vec<Cursor>,
) -> Result<(Client, Session), ErrorCode> {
    node.ready().await;
    let mut client = Client::connect(node.addr, &node.dir.join("tls/cert.pem")).await;
    let auth = Auth {
        token: token(user, issued_at),
        resume: Some(Resume { cursors }),
    };
    let ok = client.hello_with(Some(auth), 1).await;
    match ok.session {
        Some(session) => Ok((client, session)),
        None => match client.next_frame().await {
            Some(ServerFrame::Error { error, .. }) => Err(error.code),
            other => panic!("a refused hello without its error: {other:?}"),
        },
    }
}

/// Waits (up to 30 s) until `node` of `cluster` is registered in etcd: it joined.
async fn joined(etcd: &str, cluster: &str, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !crate::ownership::registered(etcd, cluster, node).await {
        assert!(Instant::now() < deadline, "{node} never joined the cluster");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/readyz` of a node, once it is up: its status and body.
pub(crate) async fn readyz(node: &mut Proc) -> (u16, String) {
    node.ready().await;
    crate::admin::http(node.admin, "GET", "/readyz", None).await
}

/// Waits until `/readyz` says 200: the node holds every partition.
async fn holding_all(node: &mut Proc) {
    for _ in 0..1500 {
        if readyz(node).await.0 == 200 {
            return;
        }
        if let Some(status) = node.child.try_wait().unwrap() {
            panic!("node {} exited ({status}):\n{}", node.addr, node.log_text());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "node {} never held every partition:\n{}",
        node.addr,
        node.log_text()
    );
}

/// `(conversation, seq)` for every seq after each cursor up to its conversation's head, in
/// order: what a device resuming from `cursors` must get.
pub(crate) fn missed(
    cursors: &[Cursor],
    heads: &[(ConversationId, u64)],
) -> Vec<(ConversationId, u64)> {
    let mut expected: Vec<_> = (cursors.iter())
        .flat_map(|cursor| {
            let head = heads.iter().find(|(c, _)| *c == cursor.conversation);
            (cursor.seq.0 + 1..=head.unwrap().1).map(move |seq| (cursor.conversation, seq))
        })
        .collect();
    expected.sort();
    expected
}

/// Events up to `CaughtUp`: each replayed entry as (conversation, seq).
pub(crate) async fn caught_up(client: &mut Client) -> Vec<(ConversationId, u64)> {
    let mut entries = Vec::new();
    loop {
        match client.event().await {
            Event::Message(m) => entries.push((m.conversation, m.seq.0)),
            Event::Membership(m) => entries.push((m.conversation, m.seq.0)),
            Event::CaughtUp { .. } => return entries,
            Event::Presence(_) | Event::Typing(_) => {}
            other => panic!("unexpected {other:?} during a catch-up"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_every_partition_when_the_serving_node_dies_and_loses_nothing() {
    let etcd = Etcd::start().await;
    let (dirs, partitions) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cluster = crate::bridge::unique_exchange("standby");
    let mut consumer = crate::bridge::Consumer::bind(&cluster).await;
    let start = |name: &str| node(dirs.path(), name, &etcd.url, &cluster, partitions.path());
    let mut a = start("a");
    holding_all(&mut a).await;
    let (mut alice, alice_session) = hello(&mut a, "alice", vec![]).await.unwrap();
    assert!(caught_up(&mut alice).await.is_empty());
    let (mut bob, bob_session) = hello(&mut a, "bob", vec![]).await.unwrap();
    assert!(caught_up(&mut bob).await.is_empty());
    let dm = ConversationId::direct(alice_session.user, bob_session.user);
    let room_id = alice.create_room("ops", false).await;
    let room = ConversationId::Room(room_id);
    bob.ok(Request::JoinRoom { room: room_id }).await;
    let target = |op: u64| if op.is_multiple_of(2) { room } else { dm };
    // Bob reads the first 20 messages (and his join), then his device goes away.
    for op in 1..=20 {
        alice.send_text(target(op), op, "seen").await;
    }
    let mut cursors = std::collections::BTreeMap::new();
    while cursors.values().sum::<u64>() < 20 + 2 {
        match bob.event().await {
            Event::Message(m) => *cursors.entry(m.conversation).or_default() = m.seq.0,
            Event::Membership(m) => *cursors.entry(m.conversation).or_default() = m.seq.0,
            _ => {}
        }
    }
    drop(bob);
    let mut last = None;
    for op in 21..=120 {
        last = Some(alice.send_text(target(op), op, "acknowledged").await);
    }
    let last = last.unwrap();

    // The second node joins: it takes nothing and serves nobody. Its lease is 60 s: when it
    // stops (below), only a hand-over can move its partitions in time.
    let mut b = node_with_env(
        dirs.path(),
        "b",
        &etcd.url,
        &cluster,
        partitions.path(),
        &[("CHATD_CLUSTER_LEASE_SECS", "60")],
    );
    b.ready().await;
    joined(&etcd.url, &cluster, "b").await;
    let refused = hello(&mut b, "carol", vec![]).await.err();
    assert_eq!(refused, Some(ErrorCode::UNAVAILABLE));
    let (status, body) = readyz(&mut b).await;
    assert_eq!(status, 503);
    assert!(body.contains("partitions: 4 not held"), "{body}");
    // The serving node's bridge publishes the 4 partitions; the standby's none, so its
    // unconnected bridge raises no alert (`chatd_bridge_publishers` in the alert rule).
    for (node, publishers) in [(&a, 4), (&b, 0)] {
        let (_, metrics) = crate::admin::http(node.admin, "GET", "/metrics", None).await;
        let line = format!("chatd_bridge_publishers {publishers}\n");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    let ack = alice.send_text(dm, 121, "a still serves").await;
    assert!(!ack.duplicate);
    let heads = [(dm, ack.seq.0), (room, last.seq.0)];

    // The serving node dies; the standby serves every acknowledged message.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let cursors: Vec<Cursor> = (cursors.iter())
        .map(|(c, seq)| Cursor {
            conversation: *c,
            seq: Seq(*seq),
        })
        .collect();
    holding_all(&mut b).await;
    eprintln!(
        "the standby held every partition {:?} after the kill",
        killed.elapsed()
    );
    let (mut bob, _) = hello(&mut b, "bob", cursors.clone()).await.unwrap();
    let mut got = caught_up(&mut bob).await;
    got.sort();
    assert_eq!(
        got,
        missed(&cursors, &heads),
        "exactly what bob missed, each once"
    );
    let (mut alice, _) = hello(&mut b, "alice", vec![]).await.unwrap();
    caught_up(&mut alice).await;
    // The last send, resent: recognised by its op id in the moved store.
    let again = alice.send_text(dm, 121, "a still serves").await;
    assert!(again.duplicate);
    assert_eq!(again.seq, ack.seq);
    let next = alice.send_text(room, 122, "after the failover").await;
    assert_eq!(next.seq, Seq(last.seq.0 + 1));
    assert_eq!(bob.message().await.seq, next.seq);

    // A node comes back and stands by; b is stopped (SIGTERM): it hands its partitions over,
    // closing their stores, and the new node takes them while b is still registered (etcd's
    // history says so), before b revokes its lease (or it expires: 60 s).
    drop((a, alice, bob));
    let mut c = node_with_env(
        dirs.path(),
        "c",
        &etcd.url,
        &cluster,
        partitions.path(),
        &[("CHATD_CLUSTER_LEASE_SECS", "60")],
    );
    c.ready().await;
    // b hands over only to a node registered in etcd (else it is the last and keeps all).
    joined(&etcd.url, &cluster, "c").await;
    assert_eq!(readyz(&mut c).await.0, 503);
    b.signal("TERM");
    b.wait_log("the partitions are handed over", 1).await;
    assert!(b.child.wait().unwrap().success(), "{}", b.log_text());
    // b said goodbye only once c served every partition (not only owned them in etcd):
    // its clients find them served wherever they reconnect.
    let (status, body) = readyz(&mut c).await;
    assert_eq!(status, 200, "c serves everything once b is gone: {body}");
    let log = b.log_text();
    assert!(log.contains("handed the partitions over kept=0"), "{log}");
    assert!(
        crate::ownership::taken_while_registered(&etcd.url, &cluster, &[0, 1, 2, 3], "b").await,
        "c took b's partitions by hand-over"
    );
    let (mut alice, _) = hello(&mut c, "alice", vec![]).await.unwrap();
    caught_up(&mut alice).await;
    let page = alice.history(room, HistoryFrom::Latest, 1).await;
    assert_eq!(page.head, next.seq);
    let again = alice.send_text(room, 122, "after the failover").await;
    assert!(again.duplicate);
    assert_eq!(again.seq, next.seq);

    // Every event of every partition reached RabbitMQ through three holders, in order with
    // no gap: what a holder had not published when it went, the next one published.
    let started = Instant::now();
    let head = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "c never published its backlog"
        );
        let (_, status) = crate::admin::http(c.admin, "GET", "/v1/status", None).await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        let bridge = &status["bridge"];
        if bridge["backlog"] == 0 && bridge["connected"] == true {
            break bridge["outbox_head"].as_u64().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let per_partition = crate::partitions::streams(&mut consumer, head).await;
    assert_eq!(per_partition.values().sum::<u64>(), head);
    assert!(head > 122, "{head} events for 122 sends and more");
    consumer.finish().await;

    // A node whose partitions directory is not the cluster's owns the partitions once c is
    // gone, and creates no empty store in their place: etcd says they exist. c stops at
    // once (SIGINT: no hand-over, nobody to take them yet) and revokes its lease once its
    // stores are closed, so d owns them without waiting out c's lease (60 s).
    drop((b, alice));
    c.signal("INT");
    assert!(c.child.wait().unwrap().success(), "{}", c.log_text());
    let log = c.log_text();
    assert!(log.contains("the node's lease is revoked"), "{log}");
    let elsewhere = tempfile::tempdir().unwrap();
    let mut d = node(dirs.path(), "d", &etcd.url, &cluster, elsewhere.path());
    d.wait_log("etcd says its store was created", 1).await;
    assert_eq!(readyz(&mut d).await.0, 503);
    assert!(
        std::fs::read_dir(elsewhere.path())
            .unwrap()
            .next()
            .is_none()
    );
}

/// With authentication on in etcd, a node joins with the user and password it is given
/// (`cluster.etcd_user`, `cluster.etcd_password` from the environment here) and holds every
/// partition, past the expiry of etcd's tokens (JWTs of 1 s here); a node with a wrong
/// password holds none and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_authenticates_to_an_etcd_that_requires_it() {
    use etcd_client::Permission;
    let keys = tempfile::tempdir().unwrap();
    let signing = rcgen::KeyPair::generate().unwrap();
    let (private, public) = (keys.path().join("jwt.key"), keys.path().join("jwt.pub"));
    std::fs::write(&private, signing.serialize_pem()).unwrap();
    std::fs::write(&public, signing.public_key_pem()).unwrap();
    let jwt = format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method=ES256,ttl=1s",
        public.display(),
        private.display()
    );
    let etcd = Etcd::start_with(&[&jwt]).await;
    let mut admin = etcd_client::Client::connect([etcd.url.clone()], None)
        .await
        .unwrap();
    admin.user_add("root", "root-password", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("chatd").await.unwrap();
    let keys = Permission::read_write("/chatd/").with_prefix();
    admin.role_grant_permission("chatd", keys).await.unwrap();
    admin
        .user_add("chatd", "node-password", None)
        .await
        .unwrap();
    admin.user_grant_role("chatd", "chatd").await.unwrap();
    admin.auth_enable().await.unwrap();
    // Without credentials, etcd now refuses.
    let mut anonymous = etcd_client::Client::connect([etcd.url.clone()], None)
        .await
        .unwrap();
    assert!(anonymous.put("/chatd/probe", "x", None).await.is_err());

    let (dirs, partitions) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cluster = crate::bridge::unique_exchange("etcd-auth");
    let mut wrong = node_with_env(
        dirs.path(),
        "wrong",
        &etcd.url,
        &cluster,
        partitions.path(),
        &[
            ("CHATD_CLUSTER_ETCD_USER", "chatd"),
            ("CHATD_CLUSTER_ETCD_PASSWORD", "not-it"),
        ],
    );
    wrong
        .wait_log("cannot join the cluster through etcd", 1)
        .await;
    assert!(
        wrong.log_text().contains("authentication failed"),
        "{}",
        wrong.log_text()
    );
    assert_eq!(readyz(&mut wrong).await.0, 503);
    let mut right = node_with_env(
        dirs.path(),
        "right",
        &etcd.url,
        &cluster,
        partitions.path(),
        &[
            ("CHATD_CLUSTER_ETCD_USER", "chatd"),
            ("CHATD_CLUSTER_ETCD_PASSWORD", "node-password"),
        ],
    );
    holding_all(&mut right).await;
    // Its token expires every second: the node asks for another and keeps its partitions.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(readyz(&mut right).await.0, 200, "{}", right.log_text());
    assert!(
        !right.log_text().contains("left the cluster"),
        "{}",
        right.log_text()
    );
    let (mut alice, _) = hello(&mut right, "alice", vec![]).await.unwrap();
    assert!(caught_up(&mut alice).await.is_empty());
}

/// With etcd serving TLS and checking its clients' certificates, a node given etcd's CA
/// (`cluster.etcd_ca`), its own certificate and key and `https://` URLs joins and holds
/// every partition; one given another CA, or no certificate of its own, holds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_speaks_tls_to_etcd_and_checks_its_certificate() {
    let (etcd, ca, (cert, key)) = Etcd::start_tls().await;
    assert!(etcd.url.starts_with("https://"), "{}", etcd.url);
    let (dirs, partitions) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cluster = crate::bridge::unique_exchange("etcd-tls");
    let file = |name: &str, pem: &str| {
        let path = dirs.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (right_ca, cert, key) = (
        file("ca.pem", &ca),
        file("node.pem", &cert),
        file("node.key", &key),
    );
    let (_, another, _) = Etcd::start_tls().await;
    let other_ca = file("other.pem", &another);
    let start = |name: &str, env: &[(&str, &str)]| {
        node_with_env(
            dirs.path(),
            name,
            &etcd.url,
            &cluster,
            partitions.path(),
            env,
        )
    };
    let refused = [
        (
            "another CA",
            vec![
                ("CHATD_CLUSTER_ETCD_CA", other_ca.as_str()),
                ("CHATD_CLUSTER_ETCD_CERT", cert.as_str()),
                ("CHATD_CLUSTER_ETCD_KEY", key.as_str()),
            ],
            "invalid peer certificate",
        ),
        (
            "no client certificate",
            vec![("CHATD_CLUSTER_ETCD_CA", right_ca.as_str())],
            "cannot join the cluster through etcd",
        ),
    ];
    for (n, (why, env, says)) in refused.iter().enumerate() {
        let mut wrong = start(&format!("wrong{n}"), env);
        wrong
            .wait_log("cannot join the cluster through etcd", 1)
            .await;
        assert!(
            wrong.log_text().contains(says),
            "{why}: {}",
            wrong.log_text()
        );
        assert_eq!(readyz(&mut wrong).await.0, 503, "{why}");
    }
    let mut right = start(
        "right",
        &[
            ("CHATD_CLUSTER_ETCD_CA", right_ca.as_str()),
            ("CHATD_CLUSTER_ETCD_CERT", cert.as_str()),
            ("CHATD_CLUSTER_ETCD_KEY", key.as_str()),
        ],
    );
    holding_all(&mut right).await;
    let (mut alice, _) = hello(&mut right, "alice", vec![]).await.unwrap();
    assert!(caught_up(&mut alice).await.is_empty());
}
