//! The parts a chatd cluster could stand on, measured on loopback (docs/SCALING.md): what a
//! durable commit costs in each candidate store, how fast ownership moves when its holder
//! dies, what one hop between nodes costs, and what a new owner pays to open a dead owner's
//! RocksDB. `bench/cluster-parts.sh` starts the engines' own processes (a 3-member etcd
//! cluster and a 3-node RabbitMQ cluster on 127.0.0.1, apart from the machine's broker),
//! runs each measurement here and writes bench/RESULTS.md.
//!
//! ```text
//! cluster-parts commit --engine chatd|etcd|quorum|stream --count N --inflight W [--stores S] [--etcd URLS] [--amqp URL]
//! cluster-parts hop --via quic|amqp --count N [--amqp URL --amqp2 URL]
//! cluster-parts lease-failover --etcd URLS --ttl SECS --rounds R
//! cluster-parts sac-failover --amqp URL --rounds R --mode kill|stop --heartbeat SECS
//! cluster-parts log-failover --amqp URL --amqp2 URL --queue-type quorum|stream --kill-pid P --secs S
//! cluster-parts reopen --count N
//! cluster-parts handover --count N --rounds R
//! ```
//!
//! Each prints one JSON line per result on stdout. Children (`hold`, `sac-hold`, `fill`) are
//! this binary run again, so that a SIGKILL hits a whole process as a crash would. Targets
//! only 127.0.0.1 and stops by itself.
#![allow(
    clippy::print_stdout,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use parking_lot::Mutex;
use tokio::sync::oneshot;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The payload of every commit and hop: about a chat message's event.
const PAYLOAD: usize = 200;

fn main() {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let flags: HashMap<String, String> = rest
        .chunks(2)
        .map(|pair| match pair {
            [name, value] => (name.trim_start_matches("--").to_owned(), value.clone()),
            [name] => panic!("{name} needs a value"),
            _ => unreachable!("chunks of two"),
        })
        .collect();
    let flag = |name: &str| -> String {
        flags
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("--{name} is required for {command}"))
    };
    let number = |name: &str| -> u64 { flag(name).parse().expect("a number") };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match command.as_str() {
        "commit" => runtime.block_on(commit(
            &flag("engine"),
            number("count"),
            number("inflight"),
            &flags,
        )),
        "hop" => runtime.block_on(hop(&flag("via"), number("count"), &flags)),
        "hold" => runtime.block_on(hold(&flag("etcd"), &flag("name"), number("ttl"))),
        "lease-failover" => lease_failover(&flag("etcd"), number("ttl"), number("rounds")),
        "sac-hold" => runtime.block_on(sac_hold(&flag("amqp"), &flag("queue"))),
        "sac-failover" => runtime.block_on(sac_failover(
            &flag("amqp"),
            number("rounds"),
            &flag("mode"),
            number("heartbeat"),
        )),
        "log-failover" => runtime.block_on(log_failover(
            &flag("amqp"),
            &flag("amqp2"),
            &flag("queue-type"),
            flag("kill-pid").parse().expect("a pid"),
            number("secs"),
        )),
        "fill" => fill(&flag("dir"), number("count"), &flag("then")),
        "reopen" => reopen(number("count")),
        "handover" => handover(number("count"), number("rounds")),
        _ => {
            eprintln!(
                "usage: cluster-parts commit|hop|lease-failover|sac-failover|log-failover|reopen|handover ... (see the source's header)"
            );
            std::process::exit(2);
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn record(histogram: &Mutex<Histogram<u64>>, started: Instant) {
    let micros = started.elapsed().as_micros().max(1) as u64;
    histogram.lock().saturating_record(micros);
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

// --- commit: one durable write, acknowledged ---------------------------------------------

/// `count` writes of `PAYLOAD` bytes from `inflight` concurrent writers, each waiting for its
/// write's acknowledgement before the next: the latency of one, and the rate of all.
async fn commit(engine: &str, count: u64, inflight: u64, flags: &HashMap<String, String>) {
    let stores: u64 = flags
        .get("stores")
        .map_or(1, |n| n.parse().expect("--stores N"));
    let histogram = Arc::new(Mutex::new(histogram()));
    let per_writer = count / inflight;
    let started = Instant::now();
    match engine {
        "chatd" => commit_chatd(per_writer, inflight, stores, &histogram).await,
        "etcd" => commit_etcd(&flags["etcd"], per_writer, inflight, &histogram).await,
        "quorum" | "stream" => {
            commit_amqp(&flags["amqp"], engine, per_writer, inflight, &histogram).await;
        }
        other => panic!("unknown engine {other}"),
    }
    let elapsed = started.elapsed().as_secs_f64();
    let h = histogram.lock();
    println!(
        "{{\"test\": \"commit\", \"engine\": \"{engine}\", \"stores\": {stores}, \"inflight\": {inflight}, \"count\": {}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"max_ms\": {:.3}, \"per_sec\": {:.0}}}",
        h.len(),
        ms(&h, 0.5),
        ms(&h, 0.99),
        h.max() as f64 / 1000.0,
        h.len() as f64 / elapsed
    );
}

struct Done(oneshot::Sender<()>);

impl chatd::store::writer::Completion for Done {
    fn complete(self, result: Result<(), chatd::store::writer::WriteError>) {
        result.expect("commit");
        let _ = self.0.send(());
    }
}

fn outbox_event(i: u64) -> chatd::store::outbox::Event {
    use chat_protocol::{ContentType, ConversationId, RoomId, Seq, UserId};
    chatd::store::outbox::Event::MessageCreated {
        conversation: ConversationId::Room(RoomId(1 + i % 16)).into(),
        message: chatd::store::outbox::MessageBody::new(
            Seq(i + 1),
            UserId(1 + i % 100),
            i,
            ContentType::TEXT,
            None,
            &[b'x'; 100],
        ),
        offline_recipients: vec![UserId(7), UserId(9)],
        mentions: Vec::new(),
    }
}

/// chatd's storage thread on a store in `dir`, with chatd's default group and queue sizes.
fn storage(
    dir: &std::path::Path,
    durability: chatd::config::Durability,
) -> (
    chatd::store::writer::Writer<Done>,
    std::thread::JoinHandle<()>,
) {
    storage_on(
        chatd::store::Store::open(&dir.join("db")).unwrap(),
        durability,
    )
}

/// chatd's storage thread on `store`.
fn storage_on(
    store: chatd::store::Store,
    durability: chatd::config::Durability,
) -> (
    chatd::store::writer::Writer<Done>,
    std::thread::JoinHandle<()>,
) {
    chatd::store::writer::spawn::<Done>(
        store,
        durability,
        256,
        16_384,
        Arc::new(chatd::store::writer::OutboxHead::default()),
        Arc::new(chatd::metrics::Metrics::new(1)),
    )
    .unwrap()
}

/// chatd's own commit path: its storage thread, group commit, fsync before the ack. With
/// `stores` above 1, that many stores on the one disk, each with its storage thread, the
/// writers spread over them: a node holding that many partitions.
async fn commit_chatd(
    per_writer: u64,
    writers: u64,
    stores: u64,
    histogram: &Arc<Mutex<Histogram<u64>>>,
) {
    let dir = tempfile::tempdir_in(".").unwrap();
    let (storage_writers, threads): (Vec<_>, Vec<_>) = (0..stores)
        .map(|n| {
            let path = dir.path().join(n.to_string());
            std::fs::create_dir_all(&path).unwrap();
            storage(&path, chatd::config::Durability::Fsync)
        })
        .unzip();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let writer = storage_writers[usize::try_from(w % stores).unwrap()].clone();
        let (histogram, next) = (Arc::clone(histogram), Arc::clone(&next));
        tasks.spawn(async move {
            for _ in 0..per_writer {
                let mut batch = chatd::store::writer::Batch::default();
                batch.event(outbox_event(next.fetch_add(1, Ordering::Relaxed)));
                let (tx, rx) = oneshot::channel();
                let started = Instant::now();
                assert!(writer.submit(batch, Done(tx)).is_ok(), "queue deep enough");
                rx.await.unwrap();
                record(&histogram, started);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    drop(storage_writers);
    for thread in threads {
        thread.join().unwrap();
    }
}

async fn etcd(urls: &str) -> etcd_client::Client {
    let endpoints: Vec<&str> = urls.split(',').collect();
    etcd_client::Client::connect(endpoints, None)
        .await
        .expect("etcd")
}

/// A put on a 3-member etcd cluster: committed by a quorum's raft log (fsync'd) before the answer.
async fn commit_etcd(
    urls: &str,
    per_writer: u64,
    writers: u64,
    histogram: &Arc<Mutex<Histogram<u64>>>,
) {
    let client = etcd(urls).await;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let (mut kv, histogram) = (client.kv_client(), Arc::clone(histogram));
        tasks.spawn(async move {
            for i in 0..per_writer {
                let started = Instant::now();
                kv.put(
                    format!("/chatd-bench/commit/{w}/{}", i % 64),
                    vec![b'x'; PAYLOAD],
                    None,
                )
                .await
                .unwrap();
                record(&histogram, started);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    client
        .kv_client()
        .delete(
            "/chatd-bench/commit/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
}

fn queue_arguments(kind: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(kind.into()),
    );
    arguments
}

async fn amqp(url: &str) -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {url}: {e}"));
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

async fn declare(channel: &lapin::Channel, queue: &str, arguments: FieldTable) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .unwrap();
}

/// A persistent publish to a replicated queue (quorum: raft over the 3 nodes; stream: the
/// replicated log), acknowledged by a publisher confirm once a quorum holds it.
async fn commit_amqp(
    url: &str,
    kind: &str,
    per_writer: u64,
    writers: u64,
    histogram: &Arc<Mutex<Histogram<u64>>>,
) {
    let (_connection, channel) = amqp(url).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = format!("chatd-bench.commit.{kind}.{}", std::process::id());
    declare(&channel, &queue, queue_arguments(kind)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let (channel, histogram, queue) = (channel.clone(), Arc::clone(histogram), queue.clone());
        tasks.spawn(async move {
            for _ in 0..per_writer {
                let started = Instant::now();
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &[b'x'; PAYLOAD],
                        lapin::BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .unwrap();
                assert!(confirm.await.unwrap().is_ack(), "the broker took it");
                record(&histogram, started);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

// --- hop: one event from one node to another and back ------------------------------------

/// Round trips of a `PAYLOAD`-byte event between two nodes, one at a time: over a QUIC
/// stream between two endpoints (as chatd nodes would talk), or through RabbitMQ (node A
/// publishes to a queue node B consumes, B answers on another; A on broker node 1, B on
/// broker node 2, as each chatd node would use its local broker node).
async fn hop(via: &str, count: u64, flags: &HashMap<String, String>) {
    let mut histogram = histogram();
    match via {
        "quic" => hop_quic(count, &mut histogram).await,
        "amqp" => hop_amqp(&flags["amqp"], &flags["amqp2"], count, &mut histogram).await,
        other => panic!("unknown hop {other}"),
    }
    println!(
        "{{\"test\": \"hop\", \"via\": \"{via}\", \"count\": {}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"max_ms\": {:.3}}}",
        histogram.len(),
        ms(&histogram, 0.5),
        ms(&histogram, 0.99),
        histogram.max() as f64 / 1000.0
    );
}

async fn hop_quic(count: u64, histogram: &mut Histogram<u64>) {
    let dir = tempfile::tempdir_in(".").unwrap();
    let config = chatd::config::Config::default();
    let identity = chatd::tls::load_identity(&config.tls, dir.path()).unwrap();
    let browsers = chatd::tls::Browsers {
        webtransport: false,
        cert: None,
    };
    let server_config = chatd::server::quic_server_config(&config, &identity, &browsers).unwrap();
    let server = quinn::Endpoint::server(
        Arc::unwrap_or_clone(server_config),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let address = server.local_addr().unwrap();
    tokio::spawn(async move {
        let connection = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = connection.accept_bi().await.unwrap();
        let mut buffer = [0u8; PAYLOAD];
        while recv.read_exact(&mut buffer).await.is_ok() {
            send.write_all(&buffer).await.unwrap();
        }
    });
    let trust = chat_sdk::Trust::CaFile(identity.cert_path.clone());
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(chat_sdk::quic_client_config(&trust).unwrap());
    let connection = client.connect(address, "localhost").unwrap().await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let mut buffer = [b'x'; PAYLOAD];
    for _ in 0..count {
        let started = Instant::now();
        send.write_all(&buffer).await.unwrap();
        recv.read_exact(&mut buffer).await.unwrap();
        histogram.saturating_record(started.elapsed().as_micros().max(1) as u64);
    }
}

async fn consume(channel: &lapin::Channel, queue: &str) -> lapin::Consumer {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
}

async fn hop_amqp(url_a: &str, url_b: &str, count: u64, histogram: &mut Histogram<u64>) {
    use futures_lite::StreamExt;
    let run = std::process::id();
    let (ping, pong) = (
        format!("chatd-bench.ping.{run}"),
        format!("chatd-bench.pong.{run}"),
    );
    let (_a, a) = amqp(url_a).await;
    let (_b, b) = amqp(url_b).await;
    // Transient queues, each on the node of its consumer (as a node's own queue would be).
    for (channel, queue) in [(&b, &ping), (&a, &pong)] {
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let mut b_in = consume(&b, &ping).await;
    let pong_key = pong.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = b_in.next().await {
            b.basic_publish(
                "".into(),
                pong_key.as_str().into(),
                BasicPublishOptions::default(),
                &delivery.data,
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap();
        }
    });
    let mut a_in = consume(&a, &pong).await;
    for _ in 0..count {
        let started = Instant::now();
        a.basic_publish(
            "".into(),
            ping.as_str().into(),
            BasicPublishOptions::default(),
            &[b'x'; PAYLOAD],
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap();
        a_in.next().await.unwrap().unwrap();
        histogram.saturating_record(started.elapsed().as_micros().max(1) as u64);
    }
}

// --- ownership: how fast it moves when its holder is killed ------------------------------

/// A child: campaigns for `name` in etcd's election API on a lease of `ttl` seconds kept
/// alive every third of it; prints `held` once leader, then keeps the lease until killed.
async fn hold(urls: &str, name: &str, ttl: u64) {
    let mut client = etcd(urls).await;
    let lease = client.lease_grant(ttl as i64, None).await.unwrap().id();
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.unwrap();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(ttl * 1000 / 3)).await;
            keeper.keep_alive().await.unwrap();
            answers.message().await.unwrap();
        }
    });
    client
        .campaign(name, std::process::id().to_string(), lease)
        .await
        .unwrap();
    println!("held");
    std::future::pending::<()>().await;
}

fn child(args: &[&str]) -> (Child, std::sync::mpsc::Receiver<(String, Instant)>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((line, Instant::now())).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal}");
}

fn reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Rounds of: holder A elected, standby B campaigning, A killed with SIGKILL; the time from
/// the kill until B is leader. etcd learns nothing from the kill: A's lease must expire.
fn lease_failover(urls: &str, ttl: u64, rounds: u64) {
    let ttl_arg = ttl.to_string();
    for round in 0..rounds {
        let name = format!("/chatd-bench/owner/{}-{round}", std::process::id());
        let args = ["hold", "--etcd", urls, "--name", &name, "--ttl", &ttl_arg];
        let (a, a_lines) = child(&args);
        assert_eq!(
            a_lines.recv_timeout(Duration::from_secs(30)).unwrap().0,
            "held"
        );
        let (b, b_lines) = child(&args);
        // B is campaigning; the kill lands at a random point of A's keep-alive cycle.
        std::thread::sleep(Duration::from_millis(1000 + (round * 397) % 1000));
        let killed = Instant::now();
        signal(&a, "-KILL");
        let (line, at) = b_lines
            .recv_timeout(Duration::from_secs(ttl * 3 + 30))
            .unwrap();
        assert_eq!(line, "held");
        println!(
            "{{\"test\": \"lease-failover\", \"ttl_s\": {ttl}, \"round\": {round}, \"failover_ms\": {:.0}}}",
            at.duration_since(killed).as_secs_f64() * 1000.0
        );
        reap(a);
        reap(b);
    }
}

/// A child: consumes a single-active-consumer queue and prints `got` at each delivery.
async fn sac_hold(url: &str, queue: &str) {
    use futures_lite::StreamExt;
    let (_connection, channel) = amqp(url).await;
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    while let Some(Ok(delivery)) = deliveries.next().await {
        println!("got");
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
}

/// Rounds of: two consumers on a quorum queue with single active consumer, a tick published
/// every 2 ms, the active one killed (SIGKILL: its TCP connection closes) or stopped (SIGSTOP:
/// nothing closes, the broker must miss its heartbeats); the time until the other gets ticks.
async fn sac_failover(url: &str, rounds: u64, mode: &str, heartbeat: u64) {
    let (_connection, channel) = amqp(url).await;
    let queue = format!("chatd-bench.sac.{}", std::process::id());
    let mut arguments = queue_arguments("quorum");
    arguments.insert(
        ShortString::from("x-single-active-consumer"),
        AMQPValue::Boolean(true),
    );
    declare(&channel, &queue, arguments).await;
    let child_url = format!("{url}?heartbeat={heartbeat}");
    let ticking = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let ticker = {
        let (channel, queue, ticking) = (channel.clone(), queue.clone(), Arc::clone(&ticking));
        tokio::spawn(async move {
            while ticking.load(Ordering::Relaxed) {
                channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        b"tick",
                        lapin::BasicProperties::default(),
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    for round in 0..rounds {
        let args = ["sac-hold", "--amqp", &child_url, "--queue", &queue];
        let (first, first_lines) = child(&args);
        first_lines.recv_timeout(Duration::from_secs(30)).unwrap();
        let (second, second_lines) = child(&args);
        tokio::time::sleep(Duration::from_millis(500 + (round * 211) % 500)).await;
        assert!(
            second_lines.try_recv().is_err(),
            "only the active consumer gets deliveries"
        );
        let stopped = Instant::now();
        signal(&first, if mode == "stop" { "-STOP" } else { "-KILL" });
        let (_, at) = second_lines
            .recv_timeout(Duration::from_secs(heartbeat * 4 + 30))
            .unwrap();
        println!(
            "{{\"test\": \"sac-failover\", \"mode\": \"{mode}\", \"heartbeat_s\": {heartbeat}, \"round\": {round}, \"failover_ms\": {:.0}}}",
            at.duration_since(stopped).as_secs_f64() * 1000.0
        );
        signal(&first, "-KILL");
        reap(first);
        reap(second);
    }
    ticking.store(false, Ordering::Relaxed);
    ticker.await.unwrap();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

// --- the replicated log: its leader's node killed under writes ---------------------------

/// A replicated queue whose leader is on broker node 1 (declared there: RabbitMQ places a
/// new queue's leader on the declaring client's node), written through node 2 by 16
/// writers, each waiting for its confirm; node 1 (`kill_pid`) gets SIGKILL a third of the
/// way in. Every message carries a number; afterwards the queue is read back from the start
/// through node 2. Reports the longest time without a confirm after the kill, and how many
/// confirmed messages the queue no longer has.
async fn log_failover(url_1: &str, url_2: &str, kind: &str, kill_pid: u32, secs: u64) {
    let queue = format!("chatd-bench.log.{kind}.{}", std::process::id());
    {
        let (connection, channel) = amqp(url_1).await;
        declare(&channel, &queue, queue_arguments(kind)).await;
        connection.close(0, "declared".into()).await.unwrap();
    }
    let (_connection, channel) = amqp(url_2).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let confirms = Arc::new(Mutex::new(Vec::<(Instant, u64)>::new()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (channel, queue) = (channel.clone(), queue.clone());
        let (next, failed, confirms) = (
            Arc::clone(&next),
            Arc::clone(&failed),
            Arc::clone(&confirms),
        );
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let number = next.fetch_add(1, Ordering::Relaxed);
                let mut payload = [b'x'; PAYLOAD];
                payload[..8].copy_from_slice(&number.to_be_bytes());
                let published = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &payload,
                        lapin::BasicProperties::default().with_delivery_mode(2),
                    )
                    .await;
                let acked = match published {
                    Ok(confirm) => matches!(confirm.await, Ok(c) if c.is_ack()),
                    Err(_) => false,
                };
                if acked {
                    confirms.lock().push((Instant::now(), number));
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(secs / 3)).await;
    let killed = Instant::now();
    let status = Command::new("kill")
        .args(["-KILL", &kill_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill the leader's node");
    while tasks.join_next().await.is_some() {}
    let mut confirmed = confirms.lock().clone();
    confirmed.sort_unstable();
    let after: Vec<Instant> = confirmed
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t >= killed)
        .collect();
    let first_after = after.first().map_or(f64::NAN, |t| {
        t.duration_since(killed).as_secs_f64() * 1000.0
    });
    let longest = after
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1000.0)
        .fold(first_after, f64::max);
    let held = read_back(url_2, &queue, kind).await;
    let missing = confirmed
        .iter()
        .filter(|(_, number)| !held.contains(number))
        .count();
    println!(
        "{{\"test\": \"log-failover\", \"kind\": \"{kind}\", \"confirmed\": {}, \"refused\": {}, \"read_back\": {}, \"confirmed_missing\": {missing}, \"first_confirm_after_kill_ms\": {first_after:.0}, \"longest_gap_ms\": {longest:.0}}}",
        confirmed.len(),
        failed.load(Ordering::Relaxed),
        held.len()
    );
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}

/// The numbers of every message in `queue`, read from its start (a stream from its first
/// offset), until nothing more arrives for 5 s.
async fn read_back(url: &str, queue: &str, kind: &str) -> std::collections::HashSet<u64> {
    use futures_lite::StreamExt;
    let (_connection, channel) = amqp(url).await;
    channel
        .basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut arguments = FieldTable::default();
    if kind == "stream" {
        arguments.insert(
            ShortString::from("x-stream-offset"),
            AMQPValue::LongString("first".into()),
        );
    }
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .unwrap();
    let mut numbers = std::collections::HashSet::new();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(5), deliveries.next()).await
    {
        let mut number = [0u8; 8];
        number.copy_from_slice(&delivery.data[..8]);
        numbers.insert(u64::from_be_bytes(number));
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    numbers
}

// --- handing a partition over: open a dead owner's RocksDB -------------------------------

/// A child: `count` events committed with chatd's buffered durability (in the WAL, not
/// flushed to tables), then as `then` says:
/// - `kill`: prints `filled` and waits to be killed (a node that dies);
/// - `close`: stops its storage thread and closes the store (a node handing the partition
///   over without a flush), prints `closed MS` with the close's milliseconds;
/// - `flush`: the same, flushing the store's memtables before it closes it (a node handing
///   the partition over now), prints `closed MS` with the flush's and the close's.
fn fill(dir: &str, count: u64, then: &str) {
    let store = chatd::store::Store::open(&std::path::Path::new(dir).join("db")).unwrap();
    let (writer, thread) = storage_on(store.clone(), chatd::config::Durability::Buffered);
    for chunk in (0..count).collect::<Vec<_>>().chunks(64) {
        let mut batch = chatd::store::writer::Batch::default();
        for i in chunk {
            batch.event(outbox_event(*i));
        }
        let (tx, rx) = oneshot::channel();
        assert!(writer.submit(batch, Done(tx)).is_ok());
        rx.blocking_recv().unwrap();
    }
    if then == "kill" {
        println!("filled");
        std::thread::sleep(Duration::from_secs(3600));
    }
    drop(writer);
    thread.join().unwrap();
    let started = Instant::now();
    if then == "flush" {
        store.flush().unwrap();
    }
    // The close too: RocksDB's waits for the background work the flush started.
    assert!(
        store.close(Duration::from_secs(10)).is_ok(),
        "the store closed"
    );
    let gave_ms = started.elapsed().as_secs_f64() * 1000.0;
    println!("closed {gave_ms:.1}");
}

/// A `fill` child writing `count` events into a new store under the working directory,
/// then doing as `then` says; returns the store's directory, the child and its line.
fn filler(count: u64, then: &str) -> (tempfile::TempDir, Child, String) {
    let dir = tempfile::tempdir_in(".").unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let count = count.to_string();
    let (writer, lines) = child(&["fill", "--dir", &path, "--count", &count, "--then", then]);
    let (line, _) = lines.recv_timeout(Duration::from_secs(600)).unwrap();
    (dir, writer, line)
}

/// A writer killed with `count` events in its WAL; the time the next owner takes to open
/// the store (WAL replay, format check) — the step a partition handover adds to the lease's.
fn reopen(count: u64) {
    let (dir, writer, line) = filler(count, "kill");
    assert_eq!(line, "filled");
    signal(&writer, "-KILL");
    reap(writer);
    let wal_bytes: u64 = std::fs::read_dir(dir.path().join("db"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    let started = Instant::now();
    let store = chatd::store::Store::open(&dir.path().join("db")).unwrap();
    let open_ms = started.elapsed().as_secs_f64() * 1000.0;
    let head = store.outbox_after(count - 1, 1).unwrap();
    assert_eq!(head.len(), 1, "the last event survived the kill");
    println!(
        "{{\"test\": \"reopen\", \"events\": {count}, \"wal_mb\": {:.1}, \"open_ms\": {open_ms:.0}}}",
        wal_bytes as f64 / 1e6
    );
}

/// Rounds of a partition handed over on a shared disk, three ways in turn (in another order
/// each round): its writer SIGKILLed (a failover), or stopped and its store closed without
/// a flush or after one (a hand-over, before and since the flush; the flush and the close
/// timed), each with `count` events written since the store opened. What the next owner pays: the format check as it was (a read-only open of
/// every column family), as it is (of the one holding the stamp), and `Store::open` (the
/// check, then the read-write open: the WAL replayed, what it held flushed).
fn handover(count: u64, rounds: u64) {
    let givers = ["kill", "close", "flush"];
    for round in 0..rounds {
        // Each round in another order, and the two checks in turn.
        let turn = usize::try_from(round).unwrap();
        for i in 0..givers.len() {
            let how = givers[(i + turn) % givers.len()];
            let (dir, mut writer, line) = filler(count, how);
            let gave_ms = if how == "kill" {
                assert_eq!(line, "filled");
                signal(&writer, "-KILL");
                reap(writer);
                0.0
            } else {
                assert!(writer.wait().unwrap().success());
                let ms = line.strip_prefix("closed ").expect("closed MS");
                ms.parse::<f64>().unwrap()
            };
            let db = dir.path().join("db");
            let timed = |f: &dyn Fn()| {
                let started = Instant::now();
                f();
                started.elapsed().as_secs_f64() * 1000.0
            };
            let check_all = || drop(chatd::store::Store::open_read_only(&db).unwrap());
            let check = || chatd::store::Store::check_format(&db).unwrap();
            let (check_all_ms, check_ms) = if turn % 2 == 0 {
                let all = timed(&check_all);
                (all, timed(&check))
            } else {
                let one = timed(&check);
                (timed(&check_all), one)
            };
            let started = Instant::now();
            let store = chatd::store::Store::open(&db).unwrap();
            let open_ms = started.elapsed().as_secs_f64() * 1000.0;
            let head = store.outbox_after(count - 1, 1).unwrap();
            assert_eq!(head.len(), 1, "the last event survived");
            println!(
                "{{\"test\": \"handover\", \"round\": {round}, \"how\": \"{how}\", \"events\": {count}, \"gave_ms\": {gave_ms:.1}, \"check_all_ms\": {check_all_ms:.1}, \"check_ms\": {check_ms:.1}, \"open_ms\": {open_ms:.1}}}"
            );
        }
    }
}
