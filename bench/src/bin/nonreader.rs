//! Clients that never read: how much of the daemon's memory can they pin?
//!
//! Starts the `chatd` binary on a temp dir (127.0.0.1, 2 shards, the budgets given), fills a
//! room with 100 messages of the largest body (so a history page is about 1.6 MB), then
//! opens `--devices` connections for each of `--accounts` accounts, each with a 2 KiB
//! QUIC receive window, joins the room, pipelines `--requests` `History { After(0), 100 }`
//! requests of the room's first 100 entries and never reads the answers. It samples the daemon's resident memory (VmRSS
//! from /proc) before the clients connect, once they are connected, and every 100 ms while
//! they pin what they can, and prints one JSON line: the growth beside the budgets that
//! should bound it (connection, user and daemon budgets; without budgets each connection
//! would pin `requests` pages).
//!
//! `cargo run --release -p chat-bench --bin nonreader -- --chatd target/release/chatd
//! [--accounts 1 --devices 4 --requests 64 --daemon-memory BYTES --hold-secs 10]`
//! (bench/nonreader.sh runs the standard cases and writes bench/RESULTS.md). Targets only
//! 127.0.0.1 and stops by itself.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chat_bench::live::{Daemon, Session, client_config};
use chat_protocol::{
    ContentType, ConversationId, OpId, Request, Response, SendMessage, ServerFrame,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Options {
    chatd: PathBuf,
    accounts: usize,
    devices: usize,
    requests: u32,
    daemon_memory: usize,
    hold: Duration,
}

fn options() -> Options {
    let mut o = Options {
        chatd: PathBuf::from("target/release/chatd"),
        accounts: 1,
        devices: 4,
        requests: 64,
        daemon_memory: 0,
        hold: Duration::from_secs(10),
    };
    for (name, value) in chat_bench::flags() {
        match name.as_str() {
            "--chatd" => o.chatd = PathBuf::from(value),
            "--accounts" => o.accounts = value.parse().unwrap(),
            "--devices" => o.devices = value.parse().unwrap(),
            "--requests" => o.requests = value.parse().unwrap(),
            "--daemon-memory" => o.daemon_memory = value.parse().unwrap(),
            "--hold-secs" => o.hold = Duration::from_secs(value.parse().unwrap()),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

fn main() {
    let o = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(run(&o));
    println!("{result}");
}

async fn run(o: &Options) -> serde_json::Value {
    let env = [("CHATD_LIMITS_DAEMON_MEMORY", o.daemon_memory.to_string())];
    let daemon = Daemon::start(&o.chatd, &env).await;
    let addr = daemon.addr;
    let cert = daemon.cert();
    let token = |user: &str| daemon.token(user);
    let mut full = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    full.set_default_client_config(client_config(&cert, None));
    let mut filler = Session::open(&full, addr, &token("filler"), 1).await;
    let Ok(Response::Room(room)) = filler
        .request(
            1,
            Request::CreateRoom {
                name: "big".into(),
                invite_only: false,
            },
        )
        .await
    else {
        panic!("cannot create the room")
    };
    let conversation = ConversationId::Room(room.room);
    let body = vec![b'x'; chat_protocol::limits::MAX_BODY];
    for op in 1..=100u32 {
        let message = SendMessage {
            conversation,
            op: OpId(u64::from(op)),
            content_type: ContentType::BINARY,
            reply_to: None,
            body: body.clone(),
            mentions: Vec::new(),
        };
        filler
            .request(1 + op, Request::Send(message))
            .await
            .unwrap();
    }
    let before = daemon.rss();
    // The baseline, in the same run: as many connections of readers doing the same
    // requests and reading every answer. What the daemon's storage reads, caches and
    // allocator keep after serving them is not what non-readers pin.
    let mut readers_peak = before;
    for device in 0..o.devices {
        let mut reader = Session::open(&full, addr, &token("reader"), device as u64 + 1).await;
        if device == 0 {
            reader
                .request(1, Request::JoinRoom { room: room.room })
                .await
                .unwrap();
        }
        reader.pipeline_pages(conversation, o.requests).await;
        let mut answered = 0;
        while answered < o.requests {
            if let ServerFrame::Response { .. } = reader.next().await {
                answered += 1;
            }
            readers_peak = readers_peak.max(daemon.rss());
        }
        reader.conn.close(0u32.into(), b"bye");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_readers = daemon.rss();
    readers_peak = readers_peak.max(after_readers);
    // The non-readers, spread over 16 client sockets so SO_REUSEPORT spreads them over the
    // daemon's shards.
    let endpoints: Vec<quinn::Endpoint> = (0..16)
        .map(|_| {
            let mut e = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            e.set_default_client_config(client_config(&cert, Some(2_048)));
            e
        })
        .collect();
    let mut sessions = Vec::new();
    for account in 0..o.accounts {
        let token = token(&format!("hog{account}"));
        for device in 0..o.devices {
            let endpoint = &endpoints[sessions.len() % endpoints.len()];
            let mut session = Session::open(endpoint, addr, &token, device as u64 + 1).await;
            if device == 0 {
                let join = Request::JoinRoom { room: room.room };
                session.request(1, join).await.unwrap();
            }
            sessions.push(session);
        }
    }
    let connected = daemon.rss();
    for session in &mut sessions {
        session.pipeline_pages(conversation, o.requests).await;
    }
    let mut peak = connected;
    let hold_started = Instant::now();
    while hold_started.elapsed() < o.hold {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(daemon.rss());
    }
    let held = daemon.rss();
    // Someone else is still served: the filler's own request.
    let ping_started = Instant::now();
    let pong = filler.request(10_000, Request::Ping).await;
    let ping_ms = ping_started.elapsed().as_secs_f64() * 1000.0;
    for session in &sessions {
        session.conn.close(0u32.into(), b"bye");
    }
    let connections = sessions.len();
    let page = 100 * (chat_protocol::limits::MAX_BODY + 64);
    serde_json::json!({
        "accounts": o.accounts,
        "devices": o.devices,
        "connections": connections,
        "requests_per_connection": o.requests,
        "unbudgeted_bytes": connections * o.requests as usize * page,
        "daemon_memory": o.daemon_memory,
        "rss_before": before,
        "rss_readers_peak": readers_peak,
        "rss_after_readers": after_readers,
        "rss_connected": connected,
        "rss_peak": peak,
        "rss_end_of_hold": held,
        "growth_while_pinning": peak.saturating_sub(connected),
        "growth_over_readers": peak.saturating_sub(readers_peak.max(connected)),
        "growth_over_readers_per_connection":
            peak.saturating_sub(readers_peak.max(connected)) / connections.max(1),
        "other_client_answered": pong.is_ok(),
        "other_client_ping_ms": ping_ms,
    })
}
