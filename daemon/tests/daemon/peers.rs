//! Three serving chatd processes in one cluster (`cluster.peer`, docs/SCALING.md sections 5
//! and 6) on a real etcd: the partitions are spread over the nodes, and each forwards to the
//! others what their partitions hold. Clients on three different nodes chat in a direct
//! conversation and a room whose partitions are on other nodes than theirs; accounts are
//! created by the node that holds their name's partition; a device resumes on another node
//! than the one it left and gets exactly what it missed. An operator's action on an account
//! through any node closes its sessions on every node. A user's presence is followed from
//! another node than the user's. Then a node is SIGKILLed: its
//! partitions move to the other two, every acknowledged message is kept, devices resume on
//! the survivors with no gap, and a resent op id is recognised. Last, a node is stopped
//! (SIGTERM): it hands its partitions over while sends go on, each numbered once, in order.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chat_protocol::*;

use crate::client::Client;
use crate::operations::Proc;
use crate::ownership::Etcd;
use crate::standby::{caught_up, hello, hello_issued, missed, readyz};

const SECRET: &str = "5f3c0a9d1e7b2c4a6f8e0d2b4c6a8e1f3b5d7c9e0a2c4e6f8b1d3f5a7c9e2b4d";
const PARTITIONS: u16 = 8;
const NODES: [&str; 3] = ["a", "b", "c"];
/// The cluster secret the test rotates to: a and c accept it from the start, and b comes
/// back signing with it (accepting the old one).
const NEW_SECRET: &str = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";

/// A free UDP port on loopback.
fn free_udp() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts node `name`: 8 partitions in `partitions`, etcd at `etcd`, a 2 s lease, a peer
/// address of its own, the cluster secrets `secrets` (its `secret` and `accepted_secret`
/// lines) and one token key for every node.
fn node(
    dir: &Path,
    name: &str,
    etcd: &str,
    cluster: &str,
    partitions: &Path,
    secrets: &str,
) -> Proc {
    let peer = free_udp();
    let extra = format!(
        "[[auth.keys]]\nid = \"k1\"\nsecret = \"{SECRET}\"\n\n\
         [limits]\nsend_rate = 10000\nsend_burst = 10000\n\n\
         [cluster]\npartitions = {PARTITIONS}\netcd = [\"{etcd}\"]\nname = \"{cluster}\"\n\
         node = \"{name}\"\nlease_secs = 2\npartitions_dir = {partitions:?}\n\
         {secrets}\npeer = \"{peer}\"\n"
    );
    Proc::start(&dir.join(name), &extra, None, &[])
}

/// The partitions `node` holds, as its `/v1/status` says.
async fn held(node: &mut Proc) -> Vec<u16> {
    let (_, status) = crate::admin::http(node.admin, "GET", "/v1/status", None).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    (status["partitions"]["held"].as_array().unwrap().iter())
        .map(|p| u16::try_from(p.as_u64().unwrap()).unwrap())
        .collect()
}

/// Waits until etcd names each partition's rendezvous winner among `live` (the names of
/// `nodes`, in order) as its owner, each node holds what it owns, and every node is ready
/// (it holds or reaches every partition).
async fn settled(etcd: &str, cluster: &str, live: &[&str], nodes: &mut [&mut Proc]) {
    let started = Instant::now();
    while !is_settled(etcd, cluster, live, nodes).await {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the cluster never settled:\n{}",
            nodes
                .iter()
                .map(|n| n.log_text())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the cluster is settled now (see [`settled`]).
async fn is_settled(etcd: &str, cluster: &str, live: &[&str], nodes: &mut [&mut Proc]) -> bool {
    let mut client = etcd_client::Client::connect([etcd.to_owned()], None)
        .await
        .unwrap();
    let prefix = format!("/chatd/{cluster}/owners/");
    let owners = client
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let owners: BTreeMap<u16, String> = (owners.kvs().iter())
        .map(|kv| {
            let p = kv.key_str().unwrap().strip_prefix(&prefix).unwrap();
            (p.parse().unwrap(), kv.value_str().unwrap().to_owned())
        })
        .collect();
    let placed = (0..PARTITIONS).all(|p| {
        let want = chatd::cluster::preferred(p, live.iter().copied());
        owners.get(&p).map(String::as_str) == want
    });
    let mut ready = placed;
    for (name, node) in live.iter().zip(nodes.iter_mut()) {
        let owned: Vec<u16> = (owners.iter())
            .filter(|(_, owner)| owner == name)
            .map(|(p, _)| *p)
            .collect();
        ready = ready && readyz(node).await.0 == 200 && held(node).await == owned;
    }
    ready
}

/// `POST /v1/users/NAME/ACTION` on the admin listener at `admin`: its JSON answer, which
/// must be a success.
async fn user_action(admin: std::net::SocketAddr, name: &str, action: &str) -> serde_json::Value {
    let request = format!(
        "POST /v1/users/{name}/{action} HTTP/1.1\r\nHost: {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = crate::admin::http_raw(admin, &request).await;
    assert_eq!(status, 200, "{action} {name}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A session of `user` on `node` from `cursors`; the node's log when it is refused.
async fn session(node: &mut Proc, user: &str, cursors: Vec<Cursor>) -> (Client, Session) {
    match hello(node, user, cursors).await {
        Ok(session) => session,
        Err(code) => panic!(
            "{user} refused on {}: {code:?}\n{}",
            node.addr,
            node.log_text()
        ),
    }
}

/// Follows the presence of `users` from `client`: their states as answered, or the error
/// it was refused with.
async fn try_follow(
    client: &mut Client,
    users: Vec<UserId>,
) -> Result<BTreeMap<UserId, PresenceInfo>, ErrorBody> {
    let request = Request::Presence {
        subscribe: users,
        unsubscribe: Vec::new(),
    };
    match client.request(request).await? {
        Response::Presence(infos) => Ok(infos.into_iter().map(|i| (i.user, i)).collect()),
        other => panic!("{other:?}"),
    }
}

/// Reads events until one says `user` is `status`.
async fn told(client: &mut Client, user: UserId, status: PresenceStatus) -> PresenceInfo {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), client.event())
            .await
            .unwrap_or_else(|_| panic!("no event saying {user:?} is {status:?}"));
        if let Event::Presence(info) = event
            && info.user == user
            && info.status == status
        {
            return info;
        }
    }
}

/// Waits until `client` learns that `user` is `status`: from an event, or, while no event
/// comes, from following again (a session that lagged gets no live events until it syncs,
/// and following answers the state now).
async fn learns(client: &mut Client, user: UserId, status: PresenceStatus) -> PresenceInfo {
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never told that {user:?} is {status:?}"
        );
        match tokio::time::timeout(Duration::from_millis(200), client.event()).await {
            Ok(Event::Presence(info)) if info.user == user && info.status == status => {
                return info;
            }
            Ok(_) => {}
            // While a node is lost, the right to follow may be unreadable: asked again.
            Err(_) => match try_follow(client, vec![user]).await {
                Ok(infos) if infos[&user].status == status => return infos[&user],
                Ok(_) => {}
                // UNAVAILABLE while its partition is handed over; OVERLOADED if a queue on
                // the way is full: sent again with the same op id, as the SDK does.
                Err(e) if matches!(e.code, ErrorCode::UNAVAILABLE | ErrorCode::OVERLOADED) => {}
                Err(e) => panic!("presence refused: {e:?}"),
            },
        }
    }
}

/// `user` resumes on `node` from the cursors `seen`: it must get exactly the entries after
/// them up to `heads` in those conversations, once (and nothing of others). Returns the
/// session.
async fn resumes(
    node: &mut Proc,
    user: &str,
    seen: &BTreeMap<ConversationId, u64>,
    heads: &BTreeMap<ConversationId, u64>,
) -> Client {
    let (mut client, _) = session(node, user, cursors(seen)).await;
    let mut got = caught_up(&mut client).await;
    got.sort();
    let heads: Vec<_> = (heads.iter())
        .filter(|(c, _)| seen.contains_key(c))
        .map(|(c, s)| (*c, *s))
        .collect();
    assert_eq!(
        got,
        missed(&cursors(seen), &heads),
        "{user} resuming on {}: exactly what it missed, once",
        node.addr
    );
    client
}

/// Sends `op` to `conversation`, again after each `UNAVAILABLE` (a partition in hand-over)
/// for up to 60 s from `since` (then fails with `node`'s log); returns the ack and how many
/// times it was refused.
async fn send_retrying(
    client: &mut Client,
    conversation: ConversationId,
    op: u64,
    since: Instant,
    node: &Proc,
) -> (SendAck, usize) {
    let mut refused = 0;
    loop {
        let send = Request::Send(SendMessage {
            conversation,
            op: OpId(op),
            content_type: ContentType::TEXT,
            reply_to: None,
            body: b"while a partition moves".to_vec(),
            mentions: Vec::new(),
        });
        match client.request(send).await {
            Ok(Response::Sent(ack)) => return (ack, refused),
            Err(e) if e.code == ErrorCode::UNAVAILABLE => {
                refused += 1;
                assert!(
                    since.elapsed() < Duration::from_secs(60),
                    "send {op} refused for 60 s: no node serves its partition:\n{}",
                    node.log_text()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("send {op}: {other:?}"),
        }
    }
}

/// The cursors a device holds after `seen`: the last seq of each conversation.
fn cursors(seen: &BTreeMap<ConversationId, u64>) -> Vec<Cursor> {
    (seen.iter())
        .map(|(c, seq)| Cursor {
            conversation: *c,
            seq: Seq(*seq),
        })
        .collect()
}

/// Reads events until each conversation in `until` reached its seq; returns the entries
/// seen, in arrival order.
async fn until(client: &mut Client, until: &[(ConversationId, u64)]) -> Vec<(ConversationId, u64)> {
    let mut seen = Vec::new();
    let mut last: BTreeMap<ConversationId, u64> = BTreeMap::new();
    while until
        .iter()
        .any(|(c, seq)| last.get(c).copied().unwrap_or(0) < *seq)
    {
        let (c, seq) = match tokio::time::timeout(Duration::from_secs(20), client.event())
            .await
            .expect("an event in time")
        {
            Event::Message(m) => (m.conversation, m.seq.0),
            Event::Membership(m) => (m.conversation, m.seq.0),
            _ => continue,
        };
        seen.push((c, seq));
        last.insert(c, seq);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serving_nodes_forward_to_each_other_and_survive_losing_one() {
    let etcd = Etcd::start().await;
    let (dirs, partitions) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cluster = format!("peers-{}", std::process::id());
    // The cluster secret is rotated on the way: a and c accept the new one from the start; b
    // starts on the old one alone, and comes back below signing with the new one.
    let start = |name: &str, secrets: &str| {
        node(
            dirs.path(),
            name,
            &etcd.url,
            &cluster,
            partitions.path(),
            secrets,
        )
    };
    let old = format!("secret = \"{SECRET}\"");
    let adding = format!("{old}\naccepted_secret = \"{NEW_SECRET}\"");
    let (mut a, mut b, mut c) = (start("a", &adding), start("b", &old), start("c", &adding));
    settled(&etcd.url, &cluster, &NODES, &mut [&mut a, &mut b, &mut c]).await;

    // Any node's status lists every node: together they hold each partition once.
    let (code, status) = crate::admin::http(c.admin, "GET", "/v1/status?nodes=1", None).await;
    assert_eq!(code, 200, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["nodes_not_answering"], 0, "{status}");
    let nodes = status["nodes"].as_array().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(names, ["c", "a", "b"], "the node asked first: {status}");
    let mut held: Vec<u64> = (nodes.iter())
        .flat_map(|n| n["partitions_held"].as_array().unwrap().iter())
        .map(|p| p.as_u64().unwrap())
        .collect();
    held.sort_unstable();
    assert_eq!(
        held,
        (0..u64::from(PARTITIONS)).collect::<Vec<_>>(),
        "{status}"
    );
    assert!(nodes.iter().all(|n| n["ready"] == true), "{status}");
    // Without `nodes`, a status is this node's alone (a poller asks no other node).
    let (_, alone) = crate::admin::http(c.admin, "GET", "/v1/status", None).await;
    let alone: serde_json::Value = serde_json::from_str(&alone).unwrap();
    assert!(alone.get("nodes").is_none(), "{alone}");

    // One user per node; each account is created by its name's partition's node.
    let (mut alice, alice_session) = session(&mut a, "alice", vec![]).await;
    assert!(caught_up(&mut alice).await.is_empty());
    let (mut bob, bob_session) = session(&mut b, "bob", vec![]).await;
    assert!(caught_up(&mut bob).await.is_empty());
    let (mut carol, _) = session(&mut c, "carol", vec![]).await;
    assert!(caught_up(&mut carol).await.is_empty());
    let dm = ConversationId::direct(alice_session.user, bob_session.user);
    // A room for each node, so that at least one is held by a node other than its creator's.
    let mut rooms = Vec::new();
    for name in ["lobby", "ops", "dev", "qa", "ux", "sales"] {
        let id = alice.create_room(name, false).await;
        bob.ok(Request::JoinRoom { room: id }).await;
        carol.ok(Request::JoinRoom { room: id }).await;
        rooms.push(ConversationId::Room(id));
    }
    let map = chatd::store::PartitionMap::new(usize::from(PARTITIONS));
    let holders: std::collections::BTreeSet<_> = (rooms.iter().chain([&dm]))
        .map(|c| {
            let p = u16::try_from(map.of_conversation(*c)).unwrap();
            chatd::cluster::preferred(p, NODES).unwrap()
        })
        .collect();
    assert!(
        holders.len() >= 2,
        "the conversations sit on one node: {holders:?}"
    );

    // Live delivery across nodes: each send is acknowledged once and reaches the other
    // nodes' members in order, once.
    // Every conversation gets messages: the dm every seventh, the rooms in turn.
    let target = |op: u64| match usize::try_from(op % 7).unwrap() {
        0 => dm,
        n => rooms[n - 1],
    };
    let mut heads: BTreeMap<ConversationId, u64> = BTreeMap::new();
    for op in 1..=60 {
        let ack = alice.send_text(target(op), op, "across nodes").await;
        assert!(!ack.duplicate);
        let head = heads.entry(target(op)).or_default();
        if *head > 0 {
            assert_eq!(ack.seq.0, *head + 1, "contiguous in {:?}", target(op));
        }
        *head = ack.seq.0;
    }
    let bob_wants: Vec<_> = heads.iter().map(|(c, s)| (*c, *s)).collect();
    let carol_wants: Vec<_> = bob_wants
        .iter()
        .copied()
        .filter(|(c, _)| *c != dm)
        .collect();
    let bob_saw = until(&mut bob, &bob_wants).await;
    let carol_saw = until(&mut carol, &carol_wants).await;
    for saw in [&bob_saw, &carol_saw] {
        let mut per: BTreeMap<ConversationId, Vec<u64>> = BTreeMap::new();
        for (c, seq) in saw {
            per.entry(*c).or_default().push(*seq);
        }
        for seqs in per.values() {
            assert!(
                seqs.windows(2).all(|w| w[1] == w[0] + 1),
                "in order, once: {seqs:?}"
            );
        }
    }
    assert!(
        carol_saw.iter().all(|(c, _)| *c != dm),
        "carol is not in the dm"
    );

    // The admin API describes each room through any node, whichever holds it.
    for (room, name) in rooms
        .iter()
        .zip(["lobby", "ops", "dev", "qa", "ux", "sales"])
    {
        let path = format!("/v1/conversations/room:{name}");
        let (code, body) = crate::admin::http(a.admin, "GET", &path, None).await;
        assert_eq!(code, 200, "{name}: {body}");
        let described: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(described["head"], heads[room], "{body}");
        assert_eq!(described["members"].as_array().unwrap().len(), 3, "{body}");
        let named = (described["members"].as_array().unwrap().iter())
            .all(|m| m["name"].as_str().is_some_and(|name| !name.is_empty()));
        assert!(
            named,
            "every member named, whichever node holds the account: {body}"
        );
        assert_eq!(described["conversation"], format!("room:{name}"), "{body}");
    }
    let (code, _) =
        crate::admin::http(a.admin, "GET", "/v1/conversations/room:999999999", None).await;
    assert_eq!(code, 404, "a room that does not exist");

    // History through another node.
    let page = bob.history(dm, HistoryFrom::Latest, 5).await;
    assert_eq!(page.head, Seq(heads[&dm]));

    // Presence across nodes: carol, on c, follows alice (on a) and bob (on b).
    let (alice_id, bob_id) = (alice_session.user, bob_session.user);
    learns(&mut carol, alice_id, PresenceStatus::Online).await;
    learns(&mut carol, bob_id, PresenceStatus::Online).await;

    // Bob leaves b with his cursors (carol hears he is offline); alice sends on; bob
    // resumes on c.
    let mut bob_seen: BTreeMap<ConversationId, u64> = BTreeMap::new();
    for (conversation, seq) in &bob_saw {
        bob_seen.insert(*conversation, *seq);
    }
    drop(bob);
    let left = told(&mut carol, bob_id, PresenceStatus::Offline).await;
    assert!(left.last_seen.is_some(), "{left:?}");
    for op in 61..=90 {
        let ack = alice.send_text(target(op), op, "while bob is away").await;
        heads.insert(target(op), ack.seq.0);
    }
    drop(resumes(&mut c, "bob", &bob_seen, &heads).await);
    for (conversation, seq) in &heads {
        bob_seen.insert(*conversation, *seq);
    }

    // An operator disables an account through a node that does not hold it: the holder
    // takes the action, every node closes the account's sessions, and none lets it in again.
    let holder = chatd::cluster::preferred(u16::try_from(map.of_name("dave")).unwrap(), NODES);
    let (mut nodes, mut others) = (Vec::new(), Vec::new());
    for (name, node) in NODES.iter().zip([&mut a, &mut b, &mut c]) {
        if Some(*name) == holder {
            nodes.push(node)
        } else {
            others.push(node)
        }
    }
    nodes.append(&mut others);
    let mut daves = Vec::new();
    for node in nodes.iter_mut() {
        daves.push(session(node, "dave", vec![]).await.0);
    }
    // Any node lists the account's connections on every node.
    let (status, listed) =
        crate::admin::http(nodes[1].admin, "GET", "/v1/connections?user=dave", None).await;
    assert_eq!(status, 200, "{listed}");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["count"], 3, "{listed}");
    let mut on: Vec<&str> = (listed["connections"].as_array().unwrap().iter())
        .map(|c| c["node"].as_str().unwrap())
        .collect();
    on.sort_unstable();
    assert_eq!(on, NODES, "one connection per node: {listed}");
    let disabled = user_action(nodes[1].admin, "dave", "disable").await;
    assert_eq!(disabled["node"], holder.unwrap(), "{disabled}");
    assert_eq!(disabled["closed"], 3, "one session per node: {disabled}");
    assert_eq!(disabled["nodes_not_answering"], 0, "{disabled}");
    assert_eq!(disabled["disabled"], true);
    for dave in &mut daves {
        assert_eq!(
            crate::admin::goodbye(dave).await,
            GoodbyeCode::ACCOUNT_DISABLED
        );
    }
    for node in nodes.iter_mut() {
        assert_eq!(
            hello(node, "dave", vec![]).await.err(),
            Some(ErrorCode::ACCOUNT_DISABLED)
        );
    }
    // Enabled through the third node: a token issued after the disable gets in everywhere
    // again, and one issued before stays refused everywhere.
    let enabled = user_action(nodes[2].admin, "dave", "enable").await;
    assert_eq!(enabled["disabled"], false, "{enabled}");
    let from = enabled["tokens_from"].as_u64().unwrap();
    for node in nodes.iter_mut() {
        assert!(hello_issued(node, "dave", Some(from), vec![]).await.is_ok());
        assert_eq!(
            hello_issued(node, "dave", Some(from - 1), vec![])
                .await
                .err(),
            Some(ErrorCode::TOKEN_REVOKED),
            "a token issued before the disable stays refused"
        );
    }
    drop(nodes);

    // b dies. Its partitions go to a and c once its lease expires; nothing acknowledged is
    // lost, and the devices resume on the survivors.
    let carol_seen: BTreeMap<ConversationId, u64> = heads
        .iter()
        .filter(|(c, _)| **c != dm)
        .map(|(c, s)| (*c, *s))
        .collect();
    drop(carol);
    // Bob back on b, followed by alice on a: when b dies, alice hears he is offline.
    let (mut bob, _) = session(&mut b, "bob", cursors(&bob_seen)).await;
    caught_up(&mut bob).await;
    learns(&mut alice, bob_id, PresenceStatus::Online).await;
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let killed = Instant::now();
    learns(&mut alice, bob_id, PresenceStatus::Offline).await;
    drop(bob);
    settled(&etcd.url, &cluster, &["a", "c"], &mut [&mut a, &mut c]).await;
    eprintln!(
        "a and c held b's partitions {:?} after the kill",
        killed.elapsed()
    );
    drop(alice);
    let (mut alice, _) = session(&mut a, "alice", vec![]).await;
    caught_up(&mut alice).await;
    // The last acknowledged send, resent: recognised wherever its conversation now is.
    let again = alice.send_text(target(90), 90, "while bob is away").await;
    assert!(again.duplicate);
    assert_eq!(again.seq.0, heads[&target(90)]);
    for op in 91..=120 {
        let ack = alice.send_text(target(op), op, "after the failover").await;
        assert!(!ack.duplicate);
        assert_eq!(ack.seq.0, heads[&target(op)] + 1, "numbering goes on");
        heads.insert(target(op), ack.seq.0);
    }
    let mut bob = resumes(&mut a, "bob", &bob_seen, &heads).await;
    let mut carol = resumes(&mut c, "carol", &carol_seen, &heads).await;
    // And live again, across the two survivors.
    let ack = alice.send_text(rooms[0], 121, "still live").await;
    assert_eq!(carol.message().await.seq, ack.seq);
    assert_eq!(bob.message().await.seq, ack.seq);
    heads.insert(rooms[0], ack.seq.0);

    // b joins again while alice sends: it takes the partitions it wins from a and c by
    // hand-over. A send that meets its partition in hand-over is refused UNAVAILABLE and
    // sent again with its op id; every send is numbered once, in order.
    let bob_seen: BTreeMap<ConversationId, u64> = heads.clone();
    let carol_seen: BTreeMap<ConversationId, u64> = heads
        .iter()
        .filter(|(c, _)| **c != dm)
        .map(|(c, s)| (*c, *s))
        .collect();
    drop((bob, carol));
    // b comes back on the new secret: its links to a and c prove it with the new one, and
    // theirs to b with the old one, which b still accepts.
    let mut b = start(
        "b",
        &format!("secret = \"{NEW_SECRET}\"\naccepted_secret = \"{SECRET}\""),
    );
    let joined = Instant::now();
    let (mut op, mut resent, mut after) = (122, 0, 0);
    while after < 20 {
        let conversation = target(op);
        let (ack, refused) = send_retrying(&mut alice, conversation, op, joined, &b).await;
        resent += refused;
        // A resend whose first try was committed is acknowledged with its first seq.
        assert_eq!(
            ack.seq.0,
            heads[&conversation] + 1,
            "send {op}, once, in order"
        );
        heads.insert(conversation, ack.seq.0);
        op += 1;
        if after > 0
            || (op % 5 == 0
                && is_settled(&etcd.url, &cluster, &NODES, &mut [&mut a, &mut b, &mut c]).await)
        {
            after += 1;
        }
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "b never took its partitions:\n{}",
            b.log_text()
        );
    }
    eprintln!(
        "b took its partitions back {:?} after it started; {} sends before, {resent} refused and resent",
        joined.elapsed(),
        op - 122 - 20
    );
    // Each node counts why its sessions lagged: b took partitions back, and a and c saw the
    // view move them to b.
    for (node, reason) in [(&b, "take"), (&a, "view"), (&c, "view")] {
        let (_, metrics) = crate::admin::http(node.admin, "GET", "/metrics", None).await;
        let count = metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix(&format!("chatd_peer_lags_total{{reason=\"{reason}\"}} "))
            })
            .and_then(|n| n.parse::<u64>().ok());
        assert!(count.is_some_and(|n| n >= 1), "{reason}: {count:?}");
    }
    let mut bob = resumes(&mut b, "bob", &bob_seen, &heads).await;
    let mut carol = resumes(&mut c, "carol", &carol_seen, &heads).await;
    for room in &rooms {
        let ack = alice
            .send_text(*room, op, "live on three nodes again")
            .await;
        assert_eq!(carol.message().await.seq, ack.seq);
        assert_eq!(bob.message().await.seq, ack.seq);
        op += 1;
    }

    // An operator erases dave's messages through a node that does not hold his account:
    // the holder finds them on every partition, and each conversation's node deletes them.
    let (mut dave, _) = hello_issued(&mut a, "dave", Some(from), vec![])
        .await
        .unwrap();
    for (n, room) in rooms.iter().enumerate() {
        let ConversationId::Room(id) = room else {
            unreachable!()
        };
        dave.ok(Request::JoinRoom { room: *id }).await;
        dave.send_text(*room, 1_000 + n as u64, "dave's, to erase")
            .await;
    }
    let asked = NODES.iter().position(|n| Some(*n) != holder).unwrap();
    let asked = [&a, &b, &c][asked].admin;
    user_action(asked, "dave", "disable").await;
    let erased = user_action(asked, "dave", "erase").await;
    assert_eq!(erased["node"], holder.unwrap(), "{erased}");
    assert_eq!(erased["conversations"], rooms.len(), "{erased}");
    assert_eq!(
        erased["deleted"],
        rooms.len(),
        "one message in each room: {erased}"
    );
    assert_eq!(erased["not_deleted"], 0, "{erased}");
    assert_eq!(erased["conversations_unfinished"], 0, "{erased}");
    // Every room's last entries: dave's message, erased, and its deletion.
    for room in &rooms {
        let page = carol.history(*room, HistoryFrom::Latest, 3).await;
        let dave_said: Vec<_> = (page.entries.iter())
            .filter_map(|entry| match entry {
                chat_protocol::Entry::Message(m) if m.sender != alice_id => Some(m),
                _ => None,
            })
            .collect();
        assert_eq!(dave_said.len(), 1, "{room:?}: {page:?}");
        assert!(dave_said[0].deleted.is_some(), "erased: {page:?}");
        assert!(dave_said[0].body.is_empty(), "its content erased: {page:?}");
    }
    // Run again: nothing left to delete.
    let again = user_action(asked, "dave", "erase").await;
    assert_eq!(again["deleted"], 0, "{again}");

    // c is stopped (SIGTERM): it hands its partitions over to a and b, then says goodbye.
    // Sends through a go on meanwhile, each numbered once, in order, and a device of
    // carol's that had seen every room's head resumes on a with exactly what came after.
    let mut seen = BTreeMap::new();
    for room in &rooms {
        seen.insert(
            *room,
            alice.history(*room, HistoryFrom::Latest, 1).await.head.0,
        );
    }
    let mut heads = seen.clone();
    let c_held = self::held(&mut c).await;
    assert!(!c_held.is_empty(), "c holds partitions");
    drop(carol);
    c.signal("TERM");
    let stopped = Instant::now();
    let mut sent = 0;
    while sent < 10 || !is_settled(&etcd.url, &cluster, &["a", "b"], &mut [&mut a, &mut b]).await {
        let room = rooms[sent % rooms.len()];
        let (ack, _) = send_retrying(&mut alice, room, op, stopped, &c).await;
        assert_eq!(ack.seq.0, heads[&room] + 1, "send {op}, once, in order");
        heads.insert(room, ack.seq.0);
        (op, sent) = (op + 1, sent + 1);
    }
    c.wait_log("the partitions are handed over", 1).await;
    assert!(c.child.wait().unwrap().success(), "{}", c.log_text());
    let log = c.log_text();
    assert!(log.contains("handed the partitions over kept=0"), "{log}");
    assert!(
        crate::ownership::taken_while_registered(&etcd.url, &cluster, &c_held, "c").await,
        "a and b took c's partitions {c_held:?} by hand-over"
    );
    resumes(&mut a, "carol", &seen, &heads).await;
}
