//! Handshake and connection floods: does an authenticated client still get its answers in
//! time while others flood the daemon?
//!
//! Starts the `chatd` binary (its admission defaults: 10 000 unauthenticated connections at
//! most, QUIC Retry beyond 1 000; the per-address cap lifted, every client here being
//! 127.0.0.1), connects one authenticated client, and measures its `Ping` round trips, one at a
//! time, for `--secs` seconds in three phases:
//!
//! 1. alone (the baseline, in the same run);
//! 2. during a flood of Initial packets from 64 sockets (random source ports): long-header
//!    QUIC v1 Initials with random connection ids and random payloads, 1 200 bytes each, at
//!    `--initials-per-sec` — what a spoofing attacker can send, which the daemon must drop
//!    after a failed decryption;
//! 3. during a flood of `--silent` connections, `--silent-per-sec` a second, that complete
//!    their handshake and never open a stream (each held until the daemon's authentication
//!    timeout closes it).
//!
//! The floods run in a child process of their own (this binary with `--flooder`), at the
//! lowest CPU priority (`nice -n 19`): on a machine that also runs the daemon and the
//! measuring client, an attacker's packets should cost the daemon its own work on them, not
//! the attacker's work of making them, which a real attacker does elsewhere. `--nice 0`
//! runs the flooders at normal priority, as the first version of this benchmark did.
//!
//! Prints one JSON line with p50, p99 and max of each phase and the p99 ratios to the
//! baseline. `cargo run --release -p chat-bench --bin flood -- --chatd target/release/chatd`
//! (bench/flood.sh runs it and writes bench/RESULTS.md). Targets only 127.0.0.1 and stops
//! by itself.
#![allow(
    clippy::print_stdout,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_bench::live::{Daemon, Session, client_config};
use chat_protocol::Request;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Options {
    chatd: PathBuf,
    secs: u64,
    initials_per_sec: u64,
    silent: usize,
    silent_per_sec: u64,
    nice: u32,
    /// In a flooder child: which flood, against what, trusting which certificate.
    flooder: Option<String>,
    addr: Option<std::net::SocketAddr>,
    cert: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        chatd: PathBuf::from("target/release/chatd"),
        secs: 10,
        initials_per_sec: 20_000,
        silent: 2_000,
        silent_per_sec: 500,
        nice: 19,
        flooder: None,
        addr: None,
        cert: PathBuf::new(),
    };
    for (name, value) in chat_bench::flags() {
        match name.as_str() {
            "--chatd" => o.chatd = PathBuf::from(value),
            "--secs" => o.secs = value.parse().unwrap(),
            "--initials-per-sec" => o.initials_per_sec = value.parse().unwrap(),
            "--silent" => o.silent = value.parse().unwrap(),
            "--silent-per-sec" => o.silent_per_sec = value.parse().unwrap(),
            "--nice" => o.nice = value.parse().unwrap(),
            "--flooder" => o.flooder = Some(value),
            "--addr" => o.addr = Some(value.parse().unwrap()),
            "--cert" => o.cert = PathBuf::from(value),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// Ping round trips, one at a time, for `secs`: their durations in microseconds, sorted.
async fn pings(session: &mut Session, secs: u64) -> Vec<u64> {
    let mut rtts = Vec::new();
    let started = Instant::now();
    let mut id = 1_000_000;
    while started.elapsed() < Duration::from_secs(secs) {
        let sent = Instant::now();
        session.request(id, Request::Ping).await.unwrap();
        rtts.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
        id += 1;
    }
    rtts.sort_unstable();
    rtts
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank, in integers: q is one of a few fixed quantiles.
    let per_mille = (q * 1000.0).round();
    let per_mille = if per_mille >= 1000.0 {
        1000
    } else {
        per_mille as usize
    };
    let rank = (sorted.len() - 1) * per_mille / 1000;
    sorted[rank]
}

fn summary(rtts: &[u64]) -> serde_json::Value {
    serde_json::json!({
        "pings": rtts.len(),
        "p50_us": quantile(rtts, 0.50),
        "p99_us": quantile(rtts, 0.99),
        "max_us": rtts.last().copied().unwrap_or(0),
    })
}

/// A random-looking QUIC v1 Initial: long header, random connection ids, a random payload
/// the daemon cannot decrypt, 1 200 bytes in all.
fn initial(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut packet = vec![0xc3, 0, 0, 0, 1, 8];
    packet.extend_from_slice(&next().to_le_bytes());
    packet.push(8);
    packet.extend_from_slice(&next().to_le_bytes());
    packet.push(0); // no token
    let rest = 1_200 - packet.len() - 2;
    let length = u16::try_from(rest).unwrap() | 0x4000; // a two-byte varint
    packet.extend_from_slice(&length.to_be_bytes());
    while packet.len() < 1_200 {
        packet.extend_from_slice(&next().to_le_bytes());
    }
    packet.truncate(1_200);
    packet
}

/// Sends Initials from 64 sockets at `per_sec` until `stop`; returns how many were sent.
fn flood_initials(addr: std::net::SocketAddr, per_sec: u64, stop: Arc<AtomicBool>) -> u64 {
    let sockets: Vec<std::net::UdpSocket> = (0..64)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = started.elapsed().as_secs_f64() * per_sec as f64;
        if (sent as f64) < due {
            let socket = &sockets[usize::try_from(sent % 64).unwrap()];
            let _ = socket.send_to(&initial(sent + 1), addr);
            sent += 1;
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    sent
}

/// Opens `total` connections at `per_sec` that complete their handshake and never open a
/// stream, each held until the daemon closes it, until `stop`; returns (opened, refused).
fn flood_silent(
    addr: std::net::SocketAddr,
    cert: &std::path::Path,
    total: usize,
    per_sec: u64,
    stop: &AtomicBool,
) -> (u64, u64) {
    let opened = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let endpoints: Vec<quinn::Endpoint> = (0..16)
            .map(|_| {
                let mut e = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
                e.set_default_client_config(client_config(cert, None));
                e
            })
            .collect();
        let started = Instant::now();
        let mut holders = Vec::new();
        for i in 0..total {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let due = Duration::from_secs_f64(i as f64 / per_sec as f64);
            tokio::time::sleep_until((started + due).into()).await;
            let endpoint = endpoints[i % endpoints.len()].clone();
            let (opened, refused) = (Arc::clone(&opened), Arc::clone(&refused));
            holders.push(tokio::spawn(async move {
                match endpoint.connect(addr, "localhost").unwrap().await {
                    Ok(conn) => {
                        opened.fetch_add(1, Ordering::Relaxed);
                        conn.closed().await;
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for holder in holders {
            holder.abort();
        }
    });
    (
        opened.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    )
}

/// The child process: one flood for `--secs`, then its counts as a JSON line.
fn flooder(o: &Options, kind: &str) -> serde_json::Value {
    let addr = o.addr.expect("--addr");
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (stop, secs) = (Arc::clone(&stop), o.secs);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            stop.store(true, Ordering::Relaxed);
        });
    }
    match kind {
        "initials" => serde_json::json!({ "sent": flood_initials(addr, o.initials_per_sec, stop) }),
        "silent" => {
            let (opened, refused) = flood_silent(addr, &o.cert, o.silent, o.silent_per_sec, &stop);
            serde_json::json!({ "opened": opened, "refused": refused })
        }
        other => panic!("unknown flood {other}"),
    }
}

/// Starts this binary as a flooder child at `nice -n o.nice`.
fn spawn_flooder(o: &Options, kind: &str, daemon: &Daemon) -> std::process::Child {
    std::process::Command::new("nice")
        .args(["-n", &o.nice.to_string()])
        .arg(std::env::current_exe().unwrap())
        .args(["--flooder", kind, "--addr", &daemon.addr.to_string()])
        .arg("--cert")
        .arg(daemon.cert())
        .args(["--secs", &o.secs.to_string()])
        .args(["--initials-per-sec", &o.initials_per_sec.to_string()])
        .args(["--silent", &o.silent.to_string()])
        .args(["--silent-per-sec", &o.silent_per_sec.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a flooder child and reads its counts.
fn flooder_counts(child: std::process::Child) -> serde_json::Value {
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the flooder failed");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn main() {
    let o = options();
    if let Some(kind) = &o.flooder {
        println!("{}", flooder(&o, kind));
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!("{}", runtime.block_on(run(&o)));
}

async fn run(o: &Options) -> serde_json::Value {
    let daemon = Daemon::start(&o.chatd, &[]).await;
    let addr = daemon.addr;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client_config(&daemon.cert(), None));
    let mut alice = Session::open(&endpoint, addr, &daemon.token("alice"), 1).await;
    let _ = pings(&mut alice, 1).await; // warm-up
    let alone = pings(&mut alice, o.secs).await;

    // Spoofed-looking Initials.
    let child = spawn_flooder(o, "initials", &daemon);
    let during_initials = pings(&mut alice, o.secs).await;
    let initials = flooder_counts(child);

    // Silent connections: handshakes completed, no stream, held until the daemon closes them.
    let child = spawn_flooder(o, "silent", &daemon);
    let during_silent = pings(&mut alice, o.secs).await;
    let silent = flooder_counts(child);
    let ratio = |phase: &[u64]| quantile(phase, 0.99) as f64 / quantile(&alone, 0.99).max(1) as f64;
    serde_json::json!({
        "flooder_nice": o.nice,
        "alone": summary(&alone),
        "initials": summary(&during_initials),
        "initials_sent": initials["sent"],
        "initials_per_sec": o.initials_per_sec,
        "silent": summary(&during_silent),
        "silent_requested": o.silent,
        "silent_per_sec": o.silent_per_sec,
        "silent_opened": silent["opened"],
        "silent_refused": silent["refused"],
        "p99_ratio_initials": ratio(&during_initials),
        "p99_ratio_silent": ratio(&during_silent),
    })
}
