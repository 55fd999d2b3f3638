//! A node whose data is split into partitions (`cluster.partitions = 4`, docs/SCALING.md
//! section 2): users, rooms and direct conversations land in every partition, and the node
//! works as on one store (listing, history, membership, a catch-up after a restart); each
//! partition's outbox reaches RabbitMQ as its own ordered stream, numbered from 1.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chat_protocol::*;
use chatd::store::PartitionMap;
use futures_lite::StreamExt as _;

use crate::bridge::{Consumer, login, unique_exchange, with_bridge};
use crate::client::Client;
use crate::{TestDaemon, test_config};

const PARTITIONS: usize = 4;

/// `count` names of each partition, by `prefix`.
fn names_in_every_partition(map: PartitionMap, prefix: &str, count: usize) -> Vec<String> {
    let mut by_partition = vec![Vec::new(); PARTITIONS];
    for i in 0.. {
        let name = format!("{prefix}{i}");
        let p = map.of_name(&name);
        if by_partition[p].len() < count {
            by_partition[p].push(name);
        }
        if by_partition.iter().all(|names| names.len() == count) {
            break;
        }
    }
    by_partition.concat()
}

/// Receives events until `head` distinct ones arrived; each partition's must come in order,
/// numbered from 1 with no gap (a redelivery, at or below the highest seen, is skipped).
/// Returns the count per partition.
pub(crate) async fn streams(consumer: &mut Consumer, head: u64) -> BTreeMap<u16, u64> {
    let mut highest: BTreeMap<u16, u64> = BTreeMap::new();
    while highest.values().sum::<u64>() < head {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.deliveries.next())
            .await
            .expect("no event for 30 s")
            .expect("consumer ended")
            .expect("delivery failed");
        let properties = &delivery.properties;
        let headers = properties.headers().as_ref().expect("headers");
        let partition = headers
            .inner()
            .get("x-chatd-partition")
            .and_then(lapin::types::AMQPValue::as_short_uint)
            .expect("x-chatd-partition");
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        let seq = body["seq"].as_u64().unwrap();
        let id = properties.message_id().as_ref().expect("message_id");
        assert_eq!(id.as_str(), format!("{partition}:{seq}"));
        let last = highest.entry(partition).or_default();
        if seq <= *last {
            continue;
        }
        assert_eq!(seq, *last + 1, "partition {partition}: {seq} after {last}");
        *last = seq;
    }
    highest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_partitions_works_as_one_store_and_publishes_a_stream_per_partition() {
    let exchange = unique_exchange("partitions");
    let mut consumer = Consumer::bind(&exchange).await;
    let temp = tempfile::tempdir().unwrap();
    let mut config = test_config(temp.path());
    with_bridge(&exchange)(&mut config);
    config.cluster.partitions = PARTITIONS;
    let mut daemon = TestDaemon::start_in(temp.path(), config);
    let map = PartitionMap::new(PARTITIONS);

    // Two users in each partition: an id's top byte is its name's partition.
    let names = names_in_every_partition(map, "user", 2);
    let (mut clients, mut ids) = (Vec::new(), Vec::new());
    for name in &names {
        let (client, id) = login(&daemon, name).await;
        assert_eq!(map.of_id(id.0), map.of_name(name), "{name}: {}", id.0);
        clients.push(client);
        ids.push(id);
    }
    // A room in each partition, created by the first user; everyone joins.
    let mut rooms = Vec::new();
    for name in names_in_every_partition(map, "room", 1) {
        let room = clients[0].create_room(&name, false).await;
        assert_eq!(map.of_id(room.0), map.of_name(&name));
        for client in &mut clients[1..] {
            client.ok(Request::JoinRoom { room }).await;
        }
        rooms.push(ConversationId::Room(room));
    }
    // Each user writes to the next: direct conversations in every partition.
    let n = ids.len();
    let dms: Vec<_> = (0..n)
        .map(|i| ConversationId::direct(ids[i], ids[(i + 1) % n]))
        .collect();
    let spread: BTreeSet<_> = dms.iter().map(|c| map.of_conversation(*c)).collect();
    assert!(spread.len() > 1, "direct conversations spread: {spread:?}");
    for (i, client) in clients.iter_mut().enumerate() {
        client.send_text(dms[i], 1, "hello").await;
        for room in &rooms {
            client.send_text(*room, 100 + i as u64, "in the room").await;
        }
    }

    // Every user lists their rooms and both direct conversations, whatever partitions hold
    // them, in ascending id order, with their heads.
    let room_head = Seq(1 + (n as u64 - 1) + n as u64); // created, joins, messages
    for (i, client) in clients.iter_mut().enumerate() {
        let listed = client.conversations().await;
        let mut expected: Vec<_> = rooms.clone();
        expected.extend([dms[i], dms[(i + n - 1) % n]]);
        let mut sorted = expected.clone();
        sorted.sort();
        let got: Vec<_> = listed.iter().map(|s| s.conversation).collect();
        assert_eq!(got, sorted, "{}", names[i]);
        for summary in &listed {
            let head = if rooms.contains(&summary.conversation) {
                room_head
            } else {
                Seq(1)
            };
            assert_eq!(summary.head, head, "{:?}", summary.conversation);
        }
    }
    let page = clients[3]
        .history(rooms[2], HistoryFrom::After(Seq(0)), 100)
        .await;
    assert_eq!(page.entries.len() as u64, room_head.0);
    drop(clients);

    // After a restart, a device with no cursors gets everything of every conversation once.
    daemon.restart();
    let (mut first, _) = Client::resume(
        daemon.addr,
        &daemon.cert,
        &daemon.token(&names[0]),
        1,
        vec![],
    )
    .await;
    let mut replayed = BTreeMap::<ConversationId, Vec<u64>>::new();
    loop {
        match first.event().await {
            Event::Message(m) => replayed.entry(m.conversation).or_default().push(m.seq.0),
            Event::Membership(m) => replayed.entry(m.conversation).or_default().push(m.seq.0),
            Event::CaughtUp { .. } => break,
            other => panic!("unexpected {other:?} during the catch-up"),
        }
    }
    let mut expected: BTreeMap<_, Vec<u64>> = rooms
        .iter()
        .map(|r| (*r, (1..=room_head.0).collect()))
        .collect();
    expected.insert(dms[0], vec![1]);
    expected.insert(dms[n - 1], vec![1]);
    assert_eq!(replayed, expected);
    assert!(temp.path().join("partitions/003/CURRENT").exists());
    assert!(!temp.path().join("db").exists());

    // Every partition numbered its own events; together they are the node's.
    let head = daemon.outbox_head();
    let per_partition = streams(&mut consumer, head).await;
    assert_eq!(per_partition.len(), PARTITIONS, "{per_partition:?}");
    assert_eq!(per_partition.values().sum::<u64>(), head);
    consumer.finish().await;
}

/// A node with partitions backs up each partition it holds (`partitions/NNN/` in the
/// backup), and a restore into a new data directory with the same partition count serves
/// every conversation as before; a restore into a single node's layout is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_partitions_is_backed_up_and_restored_partition_by_partition() {
    use crate::operations::{Proc, exit_code};
    use std::process::Command;
    let temp = tempfile::tempdir().unwrap();
    let extra = "[cluster]\npartitions = 4";
    let data = temp.path().join("data");
    let mut chatd = Proc::start(&data, extra, None, &[]);
    chatd.ready().await;
    let (mut owner, _) = chatd.login("owner").await;
    // A room in each partition, three messages in each.
    let mut heads = BTreeMap::new();
    let names = names_in_every_partition(PartitionMap::new(PARTITIONS), "kept", 1);
    for (i, name) in names.iter().enumerate() {
        let room = ConversationId::Room(owner.create_room(name, false).await);
        for op in 1..=3 {
            let ack = owner.send_text(room, (i * 10 + op) as u64, "kept").await;
            heads.insert(room, ack.seq.0);
        }
    }
    let backup = temp.path().join("backups/all");
    let out = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["backup", "--addr", &chatd.admin.to_string()])
        .arg(&backup)
        .env_remove("CHATD_CONFIG")
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("partitions 0 1 2 3 of 4"), "{said}");
    for p in 0..PARTITIONS {
        let dir = chatd::store::layout::partition_dir(&backup.join("partitions"), p);
        assert!(dir.join("CURRENT").exists(), "{}", dir.display());
    }
    chatd.signal("TERM");
    assert_eq!(exit_code(&mut chatd.child).await, 0);

    let restored = temp.path().join("restored");
    let restore = |partitions: &str| {
        Command::new(env!("CARGO_BIN_EXE_chatd"))
            .arg("restore")
            .arg(&backup)
            .arg("--data-dir")
            .arg(&restored)
            .env_remove("CHATD_CONFIG")
            .env("CHATD_CLUSTER_PARTITIONS", partitions)
            .output()
            .unwrap()
    };
    let single = restore("0");
    assert_eq!(single.status.code(), Some(69));
    let why = String::from_utf8_lossy(&single.stderr);
    assert!(why.contains("set cluster.partitions = 4"), "{why}");
    let out = restore("4");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("partitions 0 1 2 3 of 4"), "{said}");
    // Restored: the same server, every room as it was.
    let mut again = Proc::start(&restored, extra, None, &[]);
    again.ready().await;
    let (mut reader, _) = again.login("owner").await;
    for (room, head) in &heads {
        let page = reader.history(*room, HistoryFrom::Latest, 10).await;
        assert_eq!(page.head.0, *head, "{room:?}");
        assert_eq!(page.entries.len() as u64, *head, "every entry: {room:?}");
    }
    again.signal("TERM");
    assert_eq!(exit_code(&mut again.child).await, 0);
}
