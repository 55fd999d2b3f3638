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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_protocol::{
    Auth, ClientFrame, ContentType, ConversationId, DeviceId, FrameDecoder, Hello, HistoryFrom,
    HistoryQuery, OpId, Order, Request, RequestId, Response, SUPPORTED_VERSIONS, SendMessage,
    ServerFrame, encode_frame_to_vec,
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--chatd" => o.chatd = PathBuf::from(value),
            "--accounts" => o.accounts = value.parse().unwrap(),
            "--devices" => o.devices = value.parse().unwrap(),
            "--requests" => o.requests = value.parse().unwrap(),
            "--daemon-memory" => o.daemon_memory = value.parse().unwrap(),
            "--hold-secs" => o.hold = Duration::from_secs(value.parse().unwrap()),
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    o
}

/// VmRSS of `pid` in bytes.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

fn client_config(cert: &Path, window: Option<u32>) -> quinn::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![chatd::tls::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(120).try_into().unwrap()));
    if let Some(window) = window {
        transport
            .stream_receive_window(window.into())
            .receive_window(window.into());
    }
    config.transport_config(Arc::new(transport));
    config
}

/// One session: its streams and a decoder for the answers it does read.
struct Session {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder<ServerFrame>,
}

impl Session {
    async fn open(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        token: &str,
        device: u64,
    ) -> Session {
        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut session = Session {
            conn,
            send,
            recv,
            decoder: FrameDecoder::new(),
        };
        session
            .write(&ClientFrame::Hello(Hello {
                versions: SUPPORTED_VERSIONS,
                client: "nonreader".into(),
                device: DeviceId(device),
                auth: Some(Auth {
                    token: token.to_owned(),
                    resume: None,
                }),
            }))
            .await;
        loop {
            if let ServerFrame::HelloOk(ok) = session.next().await {
                assert!(ok.session.is_some(), "the token was refused");
                return session;
            }
        }
    }

    /// Writes `n` history requests for the room's first 100 entries (its creation and 99
    /// full messages; the newest entries are the joins of the clients), without waiting.
    async fn pipeline_pages(&mut self, conversation: ConversationId, n: u32) {
        for id in 0..n {
            let request = Request::History(HistoryQuery {
                conversation,
                from: HistoryFrom::After(chat_protocol::Seq(0)),
                limit: 100,
                order: Order::OldestFirst,
            });
            self.write(&ClientFrame::Request {
                id: RequestId(100 + id),
                request,
            })
            .await;
        }
    }

    async fn write(&mut self, frame: &ClientFrame) {
        self.send
            .write_all(&encode_frame_to_vec(frame).unwrap())
            .await
            .unwrap();
    }

    async fn next(&mut self) -> ServerFrame {
        loop {
            if let Some(frame) = self.decoder.next_frame().unwrap() {
                return frame;
            }
            let chunk = self
                .recv
                .read_chunk(self.decoder.space(), true)
                .await
                .unwrap()
                .expect("stream open");
            self.decoder.push(&chunk.bytes).unwrap();
        }
    }

    async fn request(&mut self, id: u32, request: Request) -> Result<Response, String> {
        self.write(&ClientFrame::Request {
            id: RequestId(id),
            request,
        })
        .await;
        loop {
            match self.next().await {
                ServerFrame::Response { id: got, response } if got.0 == id => return Ok(response),
                ServerFrame::Error {
                    id: Some(got),
                    error,
                } if got.0 == id => {
                    return Err(format!("{error:?}"));
                }
                _ => {}
            }
        }
    }
}

fn main() {
    let o = options();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = std::process::Command::new(&o.chatd)
        .args([
            "run",
            "--listen",
            &addr.to_string(),
            "--shards",
            "2",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .env("CHATD_LOG", "warn")
        .env("CHATD_LIMITS_SEND_RATE", "1000000")
        .env("CHATD_LIMITS_SEND_BURST", "1000000")
        .env("CHATD_LIMITS_MAX_CONNECTIONS_PER_ADDRESS", "1000000")
        .env("CHATD_LIMITS_RETRY_ABOVE", "1000000")
        .env("CHATD_LIMITS_DAEMON_MEMORY", o.daemon_memory.to_string())
        .spawn()
        .unwrap();
    let pid = child.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(run(&o, dir.path(), addr, pid));
    let _ = child.kill();
    let _ = child.wait();
    println!("{result}");
}

async fn run(o: &Options, dir: &Path, addr: SocketAddr, pid: u32) -> serde_json::Value {
    let cert = dir.join("tls/cert.pem");
    let started = Instant::now();
    while !dir.join("auth/secret").exists() || !cert.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "chatd did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys = chatd::token::Keys::load(&chatd::config::AuthConfig::default(), dir).unwrap();
    let token = |user: &str| {
        let now = chatd::unix_now();
        keys.mint(user, now, now + 3600)
    };
    let mut full = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    full.set_default_client_config(client_config(&cert, None));
    // The daemon answers once it is up.
    let mut filler = loop {
        match tokio::time::timeout(Duration::from_secs(2), async {
            let conn = full.connect(addr, "localhost").unwrap().await;
            conn.is_ok()
        })
        .await
        {
            Ok(true) => break Session::open(&full, addr, &token("filler"), 1).await,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
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
        };
        filler
            .request(1 + op, Request::Send(message))
            .await
            .unwrap();
    }
    let before = rss(pid);
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
            readers_peak = readers_peak.max(rss(pid));
        }
        reader.conn.close(0u32.into(), b"bye");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_readers = rss(pid);
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
    let connected = rss(pid);
    for session in &mut sessions {
        session.pipeline_pages(conversation, o.requests).await;
    }
    let mut peak = connected;
    let hold_started = Instant::now();
    while hold_started.elapsed() < o.hold {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss(pid));
    }
    let held = rss(pid);
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
