//! `relay`: the floor chatd is measured against. A minimal QUIC relay with chatd's own QUIC,
//! TLS and socket settings (one endpoint per thread on the same port through SO_REUSEPORT),
//! speaking just enough of chat-protocol for the load generator:
//!
//! - `Hello` with any token is accepted (no auth) and answered with chatd's default limits;
//! - `JoinRoom { room }` adds the connection to that room (in memory);
//! - `Send` is acked at once and its message, encoded once, is relayed to every other
//!   connection in the room.
//!
//! No storage, no sequence numbers, no ordering across senders, no rate limits: what is left
//! is the cost of QUIC, TLS, framing and fan-out. Each connection's outgoing queue holds
//! `QUEUE` frames; replies wait for room in it, relayed messages beyond it are dropped and
//! counted (printed every second when non-zero; the load generator sees them missing). Runs
//! until SIGINT or SIGTERM.
//!
//! ```text
//! relay [--listen 127.0.0.1:4434] [--threads N] [--data-dir DIR]
//! ```
//! The certificate is chatd's development certificate in `DIR/tls/cert.pem` (generated on
//! first use), so the load generator trusts it the same way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chat_protocol::{
    ClientFrame, ConversationId, ErrorBody, ErrorCode, Event, FrameDecoder, HelloOk, Message,
    PROTOCOL_VERSION, Request, Response, RoomInfo, SendAck, Seq, ServerFrame, Session, Timestamp,
    UserId, encode_frame,
};
use parking_lot::RwLock;
use tokio::sync::mpsc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Frames queued for one connection before the relay drops them.
const QUEUE: usize = 1024;

/// One connection's outgoing queue.
#[derive(Clone)]
struct Peer {
    id: u64,
    queue: mpsc::Sender<bytes::Bytes>,
}

/// Who is in which room. Written at joins and disconnects, read per message.
#[derive(Default)]
struct Rooms {
    rooms: RwLock<HashMap<ConversationId, Vec<Peer>>>,
    next_user: AtomicU64,
    dropped: AtomicU64,
}

fn main() -> std::process::ExitCode {
    match relay() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn relay() -> Result<(), String> {
    let mut listen: SocketAddr = "127.0.0.1:4434".parse().map_err(|e| format!("{e}"))?;
    let mut threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut data_dir = PathBuf::from("relay-data");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--listen" => listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
            "--threads" => threads = value.parse().map_err(|e| format!("--threads: {e}"))?,
            "--data-dir" => data_dir = value.into(),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    let config = chatd::config::Config {
        listen,
        ..chatd::config::Config::default()
    };
    let identity =
        chatd::tls::load_identity(&config.tls, &data_dir).map_err(|e| format!("tls: {e}"))?;
    let server_config =
        chatd::server::quic_server_config(&config, &identity).map_err(|e| e.to_string())?;
    let sockets = chatd::server::bind(listen, threads.max(1)).map_err(|e| e.to_string())?;
    let local = sockets[0].local_addr().map_err(|e| e.to_string())?;
    let limits = chatd::server::wire_limits(&config);
    let rooms = Arc::new(Rooms {
        next_user: AtomicU64::new(1),
        ..Rooms::default()
    });
    let mut handles = Vec::new();
    for (index, socket) in sockets.into_iter().enumerate() {
        let server_config = Arc::clone(&server_config);
        let rooms = Arc::clone(&rooms);
        handles.push(
            std::thread::Builder::new()
                .name(format!("relay-{index}"))
                .spawn(move || serve(socket, server_config, rooms, limits))
                .map_err(|e| e.to_string())?,
        );
    }
    println!(
        "relay listening on {local} with {} threads (certificate {})",
        handles.len(),
        identity.cert_path.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut reported = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tick.tick() => {
                    let dropped = rooms.dropped.load(Ordering::Relaxed);
                    if dropped != reported {
                        eprintln!("relay: {dropped} frames dropped (full connection queues)");
                        reported = dropped;
                    }
                }
            }
        }
        Ok::<(), String>(())
    })?;
    // The threads serve until the process exits.
    Ok(())
}

/// One thread: a current-thread runtime with its own endpoint on the shared port.
fn serve(
    socket: std::net::UdpSocket,
    server_config: Arc<quinn::ServerConfig>,
    rooms: Arc<Rooms>,
    limits: chat_protocol::Limits,
) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("relay: cannot start a runtime");
        return;
    };
    runtime.block_on(async move {
        let endpoint = match quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some((*server_config).clone()),
            socket,
            Arc::new(quinn::TokioRuntime),
        ) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                eprintln!("relay: endpoint: {e}");
                return;
            }
        };
        while let Some(incoming) = endpoint.accept().await {
            let rooms = Arc::clone(&rooms);
            tokio::spawn(async move {
                if let Ok(connection) = incoming.await {
                    connection_task(connection, rooms, limits).await;
                }
            });
        }
    });
}

async fn connection_task(
    connection: quinn::Connection,
    rooms: Arc<Rooms>,
    limits: chat_protocol::Limits,
) {
    let Ok((mut send, mut recv)) = connection.accept_bi().await else {
        return;
    };
    let user = rooms.next_user.fetch_add(1, Ordering::Relaxed);
    let (queue, mut outgoing) = mpsc::channel::<bytes::Bytes>(QUEUE);
    let me = Peer { id: user, queue };
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(64);
        while outgoing.recv_many(&mut batch, 64).await > 0 {
            if send.write_all_chunks(&mut batch).await.is_err() {
                return;
            }
            batch.clear();
        }
    });
    let mut decoder = FrameDecoder::<ClientFrame>::new();
    let mut joined = Vec::new();
    'read: loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    // Replies wait for room in the queue (the client's in-flight limit bounds
                    // them); only relayed messages are dropped when a queue is full.
                    if let Some(reply) = answer(frame, &me, &rooms, limits, &mut joined)
                        && me.queue.send(encode(&reply)).await.is_err()
                    {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(_) => break 'read,
            }
        }
        match recv.read_chunk(decoder.space(), true).await {
            Ok(Some(chunk)) => {
                if decoder.push(&chunk.bytes).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    {
        let mut all = rooms.rooms.write();
        for room in joined {
            if let Some(peers) = all.get_mut(&room) {
                peers.retain(|p| p.id != user);
            }
        }
    }
    drop(me);
    writer.abort();
    connection.close(0u32.into(), b"bye");
}

fn encode(frame: &ServerFrame) -> bytes::Bytes {
    let mut buf = Vec::with_capacity(128);
    // Encoding protocol frames into a Vec cannot fail.
    let _ = encode_frame(frame, &mut buf);
    buf.into()
}

fn now() -> Timestamp {
    Timestamp(chatd::unix_now() * 1000)
}

/// Handles one client frame; returns the reply to send back, if any.
fn answer(
    frame: ClientFrame,
    me: &Peer,
    rooms: &Rooms,
    limits: chat_protocol::Limits,
    joined: &mut Vec<ConversationId>,
) -> Option<ServerFrame> {
    let (id, request) = match frame {
        ClientFrame::Hello(hello) => {
            return Some(ServerFrame::HelloOk(HelloOk {
                version: PROTOCOL_VERSION,
                server: "relay".into(),
                session: hello.auth.map(|_| Session {
                    user: UserId(me.id),
                    name: format!("floor-{}", me.id),
                    device: hello.device,
                    expires_at: Timestamp(u64::MAX),
                }),
                limits,
                server_time: now(),
            }));
        }
        ClientFrame::Request { id, request } => (id, request),
        ClientFrame::Typing(_) => return None,
    };
    match request {
        Request::JoinRoom { room } => {
            let conversation = ConversationId::Room(room);
            let members = {
                let mut all = rooms.rooms.write();
                let peers = all.entry(conversation).or_default();
                peers.push(me.clone());
                peers.len()
            };
            joined.push(conversation);
            Some(ServerFrame::Response {
                id,
                response: Response::Room(RoomInfo {
                    room,
                    name: String::new(),
                    invite_only: false,
                    owner: UserId(0),
                    members: u32::try_from(members).unwrap_or(u32::MAX),
                }),
            })
        }
        Request::Send(send) => {
            let ts = now();
            let ack = ServerFrame::Response {
                id,
                response: Response::Sent(SendAck {
                    conversation: send.conversation,
                    op: send.op,
                    seq: Seq(0),
                    ts,
                    duplicate: false,
                }),
            };
            let event = encode(&ServerFrame::Event(Event::Message(Message {
                conversation: send.conversation,
                seq: Seq(0),
                ts,
                sender: UserId(me.id),
                op: send.op,
                content_type: send.content_type,
                reply_to: send.reply_to,
                body: send.body,
            })));
            let all = rooms.rooms.read();
            for peer in all.get(&send.conversation).into_iter().flatten() {
                if peer.id != me.id && peer.queue.try_send(event.clone()).is_err() {
                    rooms.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(ack)
        }
        _ => Some(ServerFrame::Error {
            id: Some(id),
            error: ErrorBody {
                code: ErrorCode::INVALID_REQUEST,
                reason: "the relay only relays".into(),
                retry_after_ms: None,
            },
        }),
    }
}
