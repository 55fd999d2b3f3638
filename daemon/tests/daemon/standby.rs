//! Two chatd processes in one cluster on a real etcd (`cluster.etcd`, docs/SCALING.md
//! sections 3 and 8), their partitions' stores in one directory both reach: one node holds
//! every partition and serves; the other stands by (not serving, refusing with
//! `UNAVAILABLE`) and takes nothing when it joins. The serving node is SIGKILLed after its
//! clients' sends were acknowledged; the other takes every partition once the dead node's
//! lease expires and serves all of it: every acknowledged message is there, a device
//! resuming from its cursors gets exactly what it missed, and a resent op id is recognised.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chat_protocol::*;

use crate::client::Client;
use crate::lifecycle::connect_when_up;
use crate::ownership::Etcd;

const SECRET: &str = "5f3c0a9d1e7b2c4a6f8e0d2b4c6a8e1f3b5d7c9e0a2c4e6f8b1d3f5a7c9e2b4d";

/// One node: its data directory, configuration file and process.
struct Node {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: std::process::Child,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Node {
    fn start(name: &str, etcd: &str, cluster: &str, partitions: &Path) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("chatd.toml");
        std::fs::write(
            &config,
            format!(
                "[[auth.keys]]\nid = \"k1\"\nsecret = \"{SECRET}\"\n\n\
                 [limits]\nsend_rate = 10000\nsend_burst = 10000\n\n[cluster]\npartitions = 4\n\
                 etcd = [\"{etcd}\"]\nname = \"{cluster}\"\nnode = \"{name}\"\nlease_secs = 2\n\
                 partitions_dir = \"{}\"\n",
                partitions.display()
            ),
        )
        .unwrap();
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let env = [
            ("CHATD_CONFIG", config.to_str().unwrap()),
            ("CHATD_ADMIN_LISTEN", &admin.to_string()),
        ];
        let (child, addr) = crate::spawn_chatd(dir.path(), &env);
        Node {
            dir,
            config,
            child,
            addr,
            admin,
        }
    }

    /// `/readyz`, once the admin listener answers: its status and body.
    async fn readyz(&mut self) -> (u16, String) {
        for _ in 0..1200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("node {} exited: {status}", self.addr);
            }
            if tokio::net::TcpStream::connect(self.admin).await.is_ok() {
                return crate::admin::http(self.admin, "GET", "/readyz", None).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {}'s admin listener never answered", self.addr);
    }

    /// Waits until `/readyz` says 200: the node holds every partition.
    async fn ready(&mut self) {
        for _ in 0..1200 {
            if self.readyz().await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("node {} never became ready", self.addr);
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls/cert.pem")
    }

    fn token(&self, user: &str) -> String {
        let config =
            chatd::config::Config::load(Some(&self.config), Vec::new(), &Default::default())
                .unwrap();
        let keys = chatd::token::Keys::load(&config.auth, self.dir.path()).unwrap();
        let now = chatd::unix_now();
        keys.mint(user, now, now + 3600)
    }

    /// A hello with `user`'s token: the session, or the code it was refused with.
    async fn hello(
        &mut self,
        user: &str,
        cursors: Vec<Cursor>,
    ) -> Result<(Client, Session), ErrorCode> {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("node {} exited: {status}", self.addr);
        }
        let mut client = connect_when_up(self.addr, &self.cert()).await;
        let auth = Auth {
            token: self.token(user),
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

    /// Waits until the node serves `user` (holds every partition).
    async fn serving(&mut self, user: &str, cursors: Vec<Cursor>) -> (Client, Session) {
        let started = Instant::now();
        loop {
            match self.hello(user, cursors.clone()).await {
                Ok(session) => return session,
                Err(ErrorCode::UNAVAILABLE) if started.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(code) => panic!("{user}'s hello was refused with {code:?}"),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Events up to `CaughtUp`: each replayed entry as (conversation, seq).
async fn caught_up(client: &mut Client) -> Vec<(ConversationId, u64)> {
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
    let partitions = tempfile::tempdir().unwrap();
    let cluster = format!("standby{}", std::process::id());
    let mut a = Node::start("a", &etcd.url, &cluster, partitions.path());
    a.ready().await;
    let (mut alice, alice_session) = a.serving("alice", vec![]).await;
    assert!(caught_up(&mut alice).await.is_empty());
    let (mut bob, bob_session) = a.serving("bob", vec![]).await;
    assert!(caught_up(&mut bob).await.is_empty());
    let dm = ConversationId::direct(alice_session.user, bob_session.user);
    let room = ConversationId::Room(alice.create_room("ops", false).await);
    let ConversationId::Room(room_id) = room else {
        unreachable!()
    };
    bob.ok(Request::JoinRoom { room: room_id }).await;
    // Bob reads the first 20 messages, then his device goes away.
    for op in 1..=20 {
        alice
            .send_text(if op % 2 == 0 { room } else { dm }, op, "seen")
            .await;
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
        last = Some(
            alice
                .send_text(if op % 2 == 0 { room } else { dm }, op, "acknowledged")
                .await,
        );
    }
    let last = last.unwrap();

    // The second node joins: it takes nothing and serves nobody.
    let mut b = Node::start("b", &etcd.url, &cluster, partitions.path());
    drop(connect_when_up(b.addr, &b.cert()).await);
    let mut etcd_client = etcd_client::Client::connect([etcd.url.clone()], None)
        .await
        .unwrap();
    let node_key = format!("/chatd/{cluster}/nodes/b");
    while etcd_client
        .get(node_key.as_str(), None)
        .await
        .unwrap()
        .kvs()
        .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b.hello("carol", vec![]).await.err(),
        Some(ErrorCode::UNAVAILABLE)
    );
    let (status, body) = b.readyz().await;
    assert_eq!(status, 503);
    assert!(body.contains("partitions: 4 not held"), "{body}");
    let ack = alice.send_text(dm, 121, "a still serves").await;
    assert!(!ack.duplicate);
    let heads = [(dm, ack.seq.0), (room, last.seq.0)];

    // The serving node dies; the standby serves every acknowledged message.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let cursors: Vec<Cursor> = cursors
        .iter()
        .map(|(c, seq)| Cursor {
            conversation: *c,
            seq: Seq(*seq),
        })
        .collect();
    b.ready().await;
    eprintln!(
        "the standby held every partition {:?} after the kill",
        killed.elapsed()
    );
    let (mut bob, _) = b.serving("bob", cursors.clone()).await;
    let mut missed = caught_up(&mut bob).await;
    missed.sort();
    let mut expected: Vec<_> = cursors
        .iter()
        .flat_map(|cursor| {
            let head = heads
                .iter()
                .find(|(c, _)| *c == cursor.conversation)
                .unwrap()
                .1;
            (cursor.seq.0 + 1..=head).map(move |seq| (cursor.conversation, seq))
        })
        .collect();
    expected.sort();
    assert_eq!(missed, expected, "exactly what bob missed, each once");
    let (mut alice, _) = b.serving("alice", vec![]).await;
    caught_up(&mut alice).await;
    // The last send, resent: recognised by its op id in the moved store.
    let again = alice.send_text(dm, 121, "a still serves").await;
    assert!(again.duplicate);
    assert_eq!(again.seq, ack.seq);
    let next = alice.send_text(room, 122, "after the failover").await;
    assert_eq!(next.seq, Seq(last.seq.0 + 1));
    assert_eq!(bob.message().await.seq, next.seq);
}
