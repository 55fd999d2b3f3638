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
//! The floods run on threads of their own, so the measuring client's runtime only measures.
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
}

fn options() -> Options {
    let mut o = Options {
        chatd: PathBuf::from("target/release/chatd"),
        secs: 10,
        initials_per_sec: 20_000,
        silent: 2_000,
        silent_per_sec: 500,
    };
    for (name, value) in chat_bench::flags() {
        match name.as_str() {
            "--chatd" => o.chatd = PathBuf::from(value),
            "--secs" => o.secs = value.parse().unwrap(),
            "--initials-per-sec" => o.initials_per_sec = value.parse().unwrap(),
            "--silent" => o.silent = value.parse().unwrap(),
            "--silent-per-sec" => o.silent_per_sec = value.parse().unwrap(),
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

fn main() {
    let o = options();
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
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = Arc::clone(&stop);
        let per_sec = o.initials_per_sec;
        std::thread::spawn(move || flood_initials(addr, per_sec, stop))
    };
    let during_initials = pings(&mut alice, o.secs).await;
    stop.store(true, Ordering::Relaxed);
    let initials = flooder.join().unwrap();

    // Silent connections: handshakes completed, no stream, held until the daemon closes them.
    let opened = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (opened, refused, stop) =
            (Arc::clone(&opened), Arc::clone(&refused), Arc::clone(&stop));
        let (cert, total, per_sec) = (daemon.cert(), o.silent, o.silent_per_sec);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let endpoints: Vec<quinn::Endpoint> = (0..16)
                    .map(|_| {
                        let mut e =
                            quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
                        e.set_default_client_config(client_config(&cert, None));
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
        })
    };
    let during_silent = pings(&mut alice, o.secs).await;
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    let ratio = |phase: &[u64]| quantile(phase, 0.99) as f64 / quantile(&alone, 0.99).max(1) as f64;
    serde_json::json!({
        "alone": summary(&alone),
        "initials": summary(&during_initials),
        "initials_sent": initials,
        "initials_per_sec": o.initials_per_sec,
        "silent": summary(&during_silent),
        "silent_requested": o.silent,
        "silent_per_sec": o.silent_per_sec,
        "silent_opened": opened.load(Ordering::Relaxed),
        "silent_refused": refused.load(Ordering::Relaxed),
        "p99_ratio_initials": ratio(&during_initials),
        "p99_ratio_silent": ratio(&during_silent),
    })
}
