//! The fault suite: chatd under the faults its users meet, checked the way they would check.
//!
//! Starts the `chatd` binary on a data dir it keeps, connects chat-sdk clients as an app runs
//! them (reconnecting with backoff, resending unanswered sends with their op ids, resuming
//! from their cursors) and loads it: `--senders` users each send `--rate` messages a second,
//! spread over a direct conversation with the listener `ear-0` and two rooms; `ear-0` and
//! `ear-1` only listen. Then one scenario:
//!
//! - `kill`: `--cycles` times, SIGKILL at a random point under load, restart on the same
//!   data dir and port, wait until every client is connected again;
//! - `stop`: `--cycles` times, SIGSTOP for `--stop-secs`, then SIGCONT;
//! - `full`: the data dir on a tmpfs of `--tmpfs-mib` MiB (needs root to mount); a filler
//!   file takes the remaining space for `--full-secs`, then is deleted.
//!
//! Then it stops the load, waits for every answer and every listener, and checks against
//! the daemon's history: every acknowledged send is stored exactly once, at its acked seq;
//! no op is stored twice; each conversation's seqs are contiguous from 1; each listener
//! received every entry of its conversations exactly once, in order (paging history where
//! the daemon said `Gap`, as a client must). Prints one JSON line with the figures (restart
//! and reconnect times per cycle, counts) and exits 1 when a check fails.
//!
//! `bench/faults.sh` runs every scenario (`make faults`). Targets only 127.0.0.1 and stops by
//! itself.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use chatd_testkit::{Tmpfs, fill};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_bench::live::Daemon;
use chat_sdk::protocol::{
    ContentType, ConversationId, Entry, Event, HistoryFrom, OpId, Order, SendAck, Seq, UserId,
};
use chat_sdk::{Client, Options, Reconnect, Status, Trust};
use parking_lot::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    chatd: PathBuf,
    scenario: String,
    cycles: u32,
    durability: String,
    senders: usize,
    rate: u32,
    seed: u64,
    stop_secs: u64,
    full_secs: u64,
    tmpfs_mib: u64,
}

fn args() -> Args {
    let mut a = Args {
        chatd: PathBuf::from("target/release/chatd"),
        scenario: "kill".into(),
        cycles: 50,
        durability: "fsync".into(),
        senders: 6,
        rate: 200,
        seed: 1,
        stop_secs: 10,
        full_secs: 5,
        tmpfs_mib: 256,
    };
    for (name, value) in chat_bench::flags() {
        match name.as_str() {
            "--chatd" => a.chatd = PathBuf::from(value),
            "--scenario" => a.scenario = value,
            "--cycles" => a.cycles = value.parse().unwrap(),
            "--durability" => a.durability = value,
            "--senders" => a.senders = value.parse().unwrap(),
            "--rate" => a.rate = value.parse().unwrap(),
            "--seed" => a.seed = value.parse().unwrap(),
            "--stop-secs" => a.stop_secs = value.parse().unwrap(),
            "--full-secs" => a.full_secs = value.parse().unwrap(),
            "--tmpfs-mib" => a.tmpfs_mib = value.parse().unwrap(),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// xorshift64: the random points of the kill loop, repeatable with `--seed`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// What became of one send.
struct Sent {
    sender: UserId,
    conversation: ConversationId,
    op: OpId,
    result: Result<SendAck, String>,
}

/// An entry a listener received: (conversation, seq, sender and op for messages).
type Heard = (ConversationId, Seq, Option<(UserId, OpId)>);

struct Listener {
    name: String,
    client: Arc<Client>,
    heard: Arc<Mutex<Vec<Heard>>>,
    gaps: Arc<AtomicU64>,
    lagged: Arc<AtomicU64>,
}

fn options(daemon: &Daemon, user: &str) -> Options {
    let mut options = Options::new(daemon.addr.to_string(), Trust::CaFile(daemon.cert()));
    options.token = Some(daemon.token(user));
    options.reconnect = Some(Reconnect {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(1),
        give_up_after: None,
        connect_timeout: Duration::from_secs(2),
    });
    options
}

async fn connect(daemon: &Daemon, user: &str) -> Arc<Client> {
    Arc::new(Client::connect(&options(daemon, user)).await.unwrap())
}

fn me(client: &Client) -> UserId {
    client.session().unwrap().user
}

/// Reads events until the client closes: every entry, gaps paged through history.
fn listen(name: &str, client: Arc<Client>) -> Listener {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let gaps = Arc::new(AtomicU64::new(0));
    let lagged = Arc::new(AtomicU64::new(0));
    let listener = Listener {
        name: name.into(),
        client: Arc::clone(&client),
        heard: Arc::clone(&heard),
        gaps: Arc::clone(&gaps),
        lagged: Arc::clone(&lagged),
    };
    tokio::spawn(async move {
        while let Some(event) = client.next_event().await {
            match event {
                Event::Message(m) => {
                    heard
                        .lock()
                        .push((m.conversation, m.seq, Some((m.sender, m.op))));
                }
                Event::Membership(m) => heard.lock().push((m.conversation, m.seq, None)),
                Event::Gap(gap) => {
                    gaps.fetch_add(1, Ordering::Relaxed);
                    let entries = page_all(&client, gap.conversation, gap.from, gap.to).await;
                    heard.lock().extend(entries.iter().map(heard_entry));
                }
                Event::Lagged => {
                    lagged.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
    listener
}

fn heard_entry(entry: &Entry) -> Heard {
    (entry.conversation(), entry.seq(), entry.op())
}

/// Every entry of `conversation` from `from` to `to`, through history pages.
async fn page_all(client: &Client, conversation: ConversationId, from: Seq, to: Seq) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut after = Seq(from.0.saturating_sub(1));
    while after < to {
        let page = loop {
            match client
                .history(
                    conversation,
                    HistoryFrom::After(after),
                    client.limits().max_page,
                    Order::OldestFirst,
                )
                .await
            {
                Ok(page) => break page,
                // Only while the daemon is away (a fault): anything else is a bug here.
                Err(e) if e.code().is_none_or(|c| c.is_retryable()) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("history of {conversation} after {after}: {e}"),
            }
        };
        let Some(last) = page.entries.last().map(Entry::seq) else {
            break;
        };
        entries.extend(page.entries.into_iter().filter(|e| e.seq() <= to));
        after = last;
    }
    entries
}

/// The load: each sender sends `rate` a second, round robin over its conversations, at most
/// 32 unanswered, until `stop`.
fn load(
    senders: Vec<(Arc<Client>, Vec<ConversationId>)>,
    rate: u32,
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    senders
        .into_iter()
        .enumerate()
        .map(|(i, (client, conversations))| {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            tokio::spawn(async move {
                let sender = me(&client);
                let slots = Arc::new(tokio::sync::Semaphore::new(32));
                let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut tasks = tokio::task::JoinSet::new();
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let permit = Arc::clone(&slots).acquire_owned().await.unwrap();
                    let conversation = conversations[n as usize % conversations.len()];
                    let op = OpId(((i as u64 + 1) << 40) | n);
                    let (client, sent) = (Arc::clone(&client), Arc::clone(&sent));
                    tasks.spawn(async move {
                        let body = format!("{sender}/{}", op.0).into_bytes();
                        let result = client
                            .send_with_op(conversation, op, ContentType::TEXT, body, None)
                            .await
                            .map_err(|e| match e.code() {
                                Some(code) => code.to_string(),
                                None => e.to_string(),
                            });
                        sent.lock().push(Sent {
                            sender,
                            conversation,
                            op,
                            result,
                        });
                        drop(permit);
                    });
                    n += 1;
                }
                while tasks.join_next().await.is_some() {}
            })
        })
        .collect()
}

/// Waits until every client is connected; returns how long that took.
async fn all_connected(clients: &[Arc<Client>]) -> Duration {
    let started = Instant::now();
    while clients.iter().any(|c| c.status() != Status::Connected) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "clients did not reconnect within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    started.elapsed()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn spread(values: &mut [f64]) -> serde_json::Value {
    values.sort_by(f64::total_cmp);
    let at = |q: usize| {
        values
            .get((values.len().saturating_sub(1)) * q / 100)
            .copied()
    };
    serde_json::json!({
        "n": values.len(),
        "min": values.first(),
        "p50": at(50),
        "p90": at(90),
        "max": values.last(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)]
async fn main() {
    let args = args();
    let mut env = vec![("CHATD_STORAGE_DURABILITY", args.durability.clone())];
    // The listeners' catch-ups after a fault replay everything they missed.
    env.push(("CHATD_LIMITS_MAX_RESUME_GAP", "100000".into()));
    env.push(("CHATD_LIMITS_MAX_REPLAY", "1000000".into()));
    let tmpfs = (args.scenario == "full").then(|| Tmpfs::mount(args.tmpfs_mib));
    let temp = tempfile::tempdir().unwrap();
    // On the tmpfs the data dir is its root, so the log beside it stays writable.
    let dir = tmpfs
        .as_ref()
        .map_or_else(|| temp.path().join("data"), |t| t.path().to_owned());
    let mut daemon = Daemon::start_in(&args.chatd, &dir, &env).await;

    // The cast: senders, two listeners, two rooms everyone is in.
    let ears = [
        connect(&daemon, "ear-0").await,
        connect(&daemon, "ear-1").await,
    ];
    let mut senders = Vec::new();
    for i in 0..args.senders {
        senders.push(connect(&daemon, &format!("sender-{i}")).await);
    }
    let rooms = [
        senders[0]
            .create_room("faults-a", false)
            .await
            .unwrap()
            .room,
        senders[0]
            .create_room("faults-b", false)
            .await
            .unwrap()
            .room,
    ];
    for client in senders.iter().skip(1).chain(&ears) {
        for room in rooms {
            client.join_room(room).await.unwrap();
        }
    }
    let listeners = [
        listen("ear-0", Arc::clone(&ears[0])),
        listen("ear-1", Arc::clone(&ears[1])),
    ];
    let ear0 = me(&ears[0]);
    let plan: Vec<(Arc<Client>, Vec<ConversationId>)> = senders
        .iter()
        .map(|c| {
            let dm = ConversationId::direct(me(c), ear0);
            (
                Arc::clone(c),
                vec![
                    dm,
                    ConversationId::Room(rooms[0]),
                    ConversationId::Room(rooms[1]),
                ],
            )
        })
        .collect();
    let mut every_client: Vec<Arc<Client>> = senders.clone();
    every_client.extend(ears.iter().cloned());

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let loaders = load(plan, args.rate, Arc::clone(&stop), Arc::clone(&sent));
    let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut restart_ms = Vec::new();
    let mut reconnect_ms = Vec::new();
    let mut recovery_ms = Vec::new();
    let mut unavailable_while_full = 0usize;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    match args.scenario.as_str() {
        "kill" => {
            for _ in 0..args.cycles {
                tokio::time::sleep(Duration::from_millis(200 + rng.below(1_000))).await;
                let killed = Instant::now();
                let ready = daemon.restart().await;
                restart_ms.push(ms(ready));
                all_connected(&every_client).await;
                reconnect_ms.push(ms(killed.elapsed()));
            }
        }
        "stop" => {
            for _ in 0..args.cycles {
                tokio::time::sleep(Duration::from_millis(500 + rng.below(1_000))).await;
                daemon.signal("STOP");
                tokio::time::sleep(Duration::from_secs(args.stop_secs)).await;
                daemon.signal("CONT");
                let resumed = Instant::now();
                // Clients that gave the connection up meanwhile come back; the others
                // never left.
                all_connected(&every_client).await;
                recovery_ms.push(ms(resumed.elapsed()));
            }
        }
        "full" => {
            for _ in 0..args.cycles {
                tokio::time::sleep(Duration::from_millis(1_000)).await;
                // `sent` is in the order the answers came.
                let filled_at = sent.lock().len();
                let filler = fill(daemon.dir());
                tokio::time::sleep(Duration::from_secs(args.full_secs)).await;
                std::fs::remove_file(&filler).unwrap();
                let freed = Instant::now();
                let freed_at = sent.lock().len();
                // Recovered: a send acknowledged after the space came back.
                loop {
                    let (acked_after, unavailable) = {
                        let sent = sent.lock();
                        (
                            sent[freed_at..].iter().any(|s| s.result.is_ok()),
                            sent[filled_at..]
                                .iter()
                                .filter(|s| {
                                    s.result.as_ref().is_err_and(|e| e.contains("UNAVAILABLE"))
                                })
                                .count(),
                        )
                    };
                    if acked_after && unavailable > 0 {
                        unavailable_while_full += unavailable;
                        break;
                    }
                    assert!(
                        freed.elapsed() < Duration::from_secs(120),
                        "no send acknowledged within 120 s of freeing the disk \
                         ({unavailable} UNAVAILABLE so far)"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                recovery_ms.push(ms(freed.elapsed()));
            }
        }
        other => panic!("unknown scenario {other}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for loader in loaders {
        tokio::time::timeout(Duration::from_secs(120), loader)
            .await
            .expect("every send answered within 120 s")
            .unwrap();
    }
    let loaded_for = started.elapsed();

    // The stored truth, read by a fresh device of ear-0 (member of every conversation).
    let checker = connect(&daemon, "ear-0").await;
    let conversations: Vec<ConversationId> = senders
        .iter()
        .map(|c| ConversationId::direct(me(c), ear0))
        .chain(rooms.map(ConversationId::Room))
        .collect();
    let mut stored: HashMap<ConversationId, Vec<Entry>> = HashMap::new();
    for c in &conversations {
        stored.insert(*c, page_all(&checker, *c, Seq(1), Seq(u64::MAX)).await);
    }
    let mut failures: Vec<String> = Vec::new();
    let mut stored_ops: HashMap<(UserId, OpId), Vec<(ConversationId, Seq)>> = HashMap::new();
    let mut entries = 0usize;
    for (c, log) in &stored {
        entries += log.len();
        let seqs: Vec<u64> = log.iter().map(|e| e.seq().0).collect();
        if seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
            failures.push(format!("{c}: seqs are not contiguous from 1"));
        }
        for e in log {
            if let Entry::Message(m) = e {
                stored_ops
                    .entry((m.sender, m.op))
                    .or_default()
                    .push((*c, m.seq));
            }
        }
    }
    let duplicates: usize = stored_ops.values().map(|v| v.len() - 1).sum();
    if duplicates > 0 {
        failures.push(format!("{duplicates} ops stored more than once"));
    }
    let sent = std::mem::take(&mut *sent.lock());
    let (mut acked, mut lost, mut errors) = (0usize, 0usize, BTreeMap::<String, usize>::new());
    let mut unacked_stored = 0usize;
    for s in &sent {
        let at = stored_ops.get(&(s.sender, s.op));
        match &s.result {
            Ok(ack) => {
                acked += 1;
                if at.map(Vec::as_slice) != Some(&[(s.conversation, ack.seq)][..]) {
                    lost += 1;
                }
            }
            Err(e) => {
                *errors.entry(e.clone()).or_default() += 1;
                unacked_stored += usize::from(at.is_some());
            }
        }
    }
    if lost > 0 {
        failures.push(format!(
            "{lost} acknowledged sends not stored once at their seq"
        ));
    }
    let mut heard_report = Vec::new();
    for listener in &listeners {
        let member_of: Vec<ConversationId> = conversations
            .iter()
            .copied()
            .filter(|c| match c {
                ConversationId::Direct { .. } => listener.name == "ear-0",
                _ => true,
            })
            .collect();
        // Wait until it has heard each conversation's last entry.
        let waited = Instant::now();
        loop {
            let done = {
                let heard = listener.heard.lock();
                member_of.iter().all(|c| {
                    let head = stored[c].last().map_or(Seq(0), Entry::seq);
                    heard.iter().any(|(hc, seq, _)| hc == c && *seq == head)
                })
            };
            if done || waited.elapsed() > Duration::from_secs(60) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let heard = listener.heard.lock().clone();
        let mut bad = 0;
        for c in &member_of {
            let got: Vec<u64> = heard.iter().filter(|h| h.0 == *c).map(|h| h.1.0).collect();
            let head = stored[c].len() as u64;
            let first = got.first().copied().unwrap_or(1);
            if got != (first..=head).collect::<Vec<_>>() {
                bad += 1;
                failures.push(format!(
                    "{} heard {c} as {} entries from {first}, not {first}..={head} exactly once in order",
                    listener.name,
                    got.len()
                ));
            }
            // What it heard is what is stored.
            for h in heard.iter().filter(|h| h.0 == *c) {
                let entry = &stored[c][(h.1.0 - 1) as usize];
                if heard_entry(entry) != *h {
                    bad += 1;
                    failures.push(format!(
                        "{} heard {c} #{} unlike the store",
                        listener.name, h.1
                    ));
                    break;
                }
            }
        }
        heard_report.push(serde_json::json!({
            "listener": listener.name,
            "entries": heard.len(),
            "gaps_paged": listener.gaps.load(Ordering::Relaxed),
            "lagged": listener.lagged.load(Ordering::Relaxed),
            "conversations_wrong": bad,
        }));
        drop(Arc::clone(&listener.client));
    }
    let log = std::fs::read_to_string(daemon.log()).unwrap_or_default();
    let storage_lines = log.lines().filter(|l| l.contains("storage writes")).count();
    let recovered_lines = log
        .lines()
        .filter(|l| l.contains("storage writes succeed again"))
        .count();
    if args.scenario == "full" && recovered_lines < args.cycles as usize {
        failures.push(format!(
            "the log says {recovered_lines} times that storage recovered, after {} full disks",
            args.cycles
        ));
    }
    let report = serde_json::json!({
        "scenario": args.scenario,
        "durability": args.durability,
        "cycles": args.cycles,
        "senders": args.senders,
        "rate_per_sender": args.rate,
        "seconds": loaded_for.as_secs(),
        "sends": sent.len(),
        "acked": acked,
        "errors": errors,
        "unacked_but_stored": unacked_stored,
        "stored_entries": entries,
        "duplicates": duplicates,
        "acked_lost": lost,
        "restart_to_ready_ms_per_cycle": restart_ms.clone(),
        "restart_to_ready_ms": spread(&mut restart_ms),
        "kill_to_all_reconnected_ms": spread(&mut reconnect_ms),
        "recovery_ms": spread(&mut recovery_ms),
        "unavailable_while_full": unavailable_while_full,
        "storage_log_lines": storage_lines,
        "listeners": heard_report,
        "failures": failures,
    });
    println!("{report}");
    daemon.kill();
    if let Some(tmpfs) = tmpfs {
        // The daemon's log sits beside the mount point.
        let log = tmpfs.path().with_extension("log");
        drop(tmpfs);
        let _ = std::fs::remove_file(log);
    }
    if !failures.is_empty() {
        eprintln!("faults: {} check(s) failed: {failures:#?}", failures.len());
        std::process::exit(1);
    }
}
