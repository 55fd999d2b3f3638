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
//! is the cost of QUIC, TLS, framing and fan-out. Fan-out is shaped like chatd's: each thread
//! keeps the members connected to it, a message goes to the sender's thread's members
//! directly and to every other thread with members in the room as one item on that thread's
//! inbox (one cross-thread wake-up per batch, not per recipient).
//!
//! Bounds: each connection's outgoing queue holds `QUEUE` frames; replies wait for room in
//! it, relayed messages beyond it are dropped. Each thread's inbox holds `INBOX` items; a
//! message that finds it full is dropped for that thread's members. Drops are counted and
//! printed every second when non-zero (the load generator sees them missing). Runs until
//! SIGINT or SIGTERM.
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
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Frames queued for one connection before the relay drops them.
const QUEUE: usize = 1024;

/// Messages queued for one thread's members before the relay drops them.
const INBOX: usize = 4096;

/// One connection's outgoing queue.
#[derive(Clone)]
struct Peer {
    id: u64,
    queue: mpsc::Sender<bytes::Bytes>,
}

/// A message for the members of `room` on another thread.
struct Relayed {
    room: ConversationId,
    from: u64,
    event: bytes::Bytes,
}

/// What the threads share: which threads have members in which room, and each thread's
/// inbox.
struct Shared {
    /// Per room, the number of its members connected to each thread.
    rooms: RwLock<HashMap<ConversationId, Vec<u32>>>,
    inboxes: Vec<mpsc::Sender<Relayed>>,
    next_user: AtomicU64,
    dropped: AtomicU64,
}

/// One thread's members by room. Only its own thread touches it (the lock is uncontended).
#[derive(Default)]
struct Local {
    index: usize,
    rooms: Mutex<HashMap<ConversationId, Vec<Peer>>>,
}

impl Local {
    /// Queues `event` for this thread's members of `room` other than `from`.
    fn fan_out(&self, room: ConversationId, from: u64, event: &bytes::Bytes, dropped: &AtomicU64) {
        let rooms = self.rooms.lock();
        for peer in rooms.get(&room).into_iter().flatten() {
            if peer.id != from && peer.queue.try_send(event.clone()).is_err() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
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
    // The same transport parameters as chatd's (WebTransport's stream credit included); the
    // floor takes native connections only.
    let browsers = chatd::tls::Browsers {
        webtransport: config.web.webtransport,
        cert: None,
    };
    let server_config = chatd::server::quic_server_config(&config, &identity, &browsers)
        .map_err(|e| e.to_string())?;
    let sockets = chatd::server::bind(listen, threads.max(1)).map_err(|e| e.to_string())?;
    let local = sockets[0].local_addr().map_err(|e| e.to_string())?;
    let limits = chatd::server::wire_limits(&config);
    let (inboxes, receivers): (Vec<_>, Vec<_>) =
        sockets.iter().map(|_| mpsc::channel(INBOX)).unzip();
    let shared = Arc::new(Shared {
        rooms: RwLock::default(),
        inboxes,
        next_user: AtomicU64::new(1),
        dropped: AtomicU64::new(0),
    });
    let mut handles = Vec::new();
    for (index, (socket, inbox)) in sockets.into_iter().zip(receivers).enumerate() {
        let server_config = Arc::clone(&server_config);
        let shared = Arc::clone(&shared);
        handles.push(
            std::thread::Builder::new()
                .name(format!("relay-{index}"))
                .spawn(move || serve(index, socket, inbox, server_config, shared, limits))
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
                    let dropped = shared.dropped.load(Ordering::Relaxed);
                    if dropped != reported {
                        eprintln!("relay: {dropped} frames dropped (full queues)");
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

/// One thread: a current-thread runtime with its own endpoint on the shared port, and the
/// task that fans out what other threads relay to its members.
fn serve(
    index: usize,
    socket: std::net::UdpSocket,
    mut inbox: mpsc::Receiver<Relayed>,
    server_config: Arc<quinn::ServerConfig>,
    shared: Arc<Shared>,
    limits: chat_protocol::Limits,
) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("relay: cannot start a runtime");
        return;
    };
    let local = Arc::new(Local {
        index,
        ..Local::default()
    });
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
        {
            let local = Arc::clone(&local);
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(256);
                while inbox.recv_many(&mut batch, 256).await > 0 {
                    for relayed in batch.drain(..) {
                        local.fan_out(relayed.room, relayed.from, &relayed.event, &shared.dropped);
                    }
                }
            });
        }
        while let Some(incoming) = endpoint.accept().await {
            let shared = Arc::clone(&shared);
            let local = Arc::clone(&local);
            tokio::spawn(async move {
                if let Ok(connection) = incoming.await {
                    connection_task(connection, shared, local, limits).await;
                }
            });
        }
    });
}

async fn connection_task(
    connection: quinn::Connection,
    shared: Arc<Shared>,
    local: Arc<Local>,
    limits: chat_protocol::Limits,
) {
    let Ok((mut send, mut recv)) = connection.accept_bi().await else {
        return;
    };
    let user = shared.next_user.fetch_add(1, Ordering::Relaxed);
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
                    if let Some(reply) = answer(frame, &me, &shared, &local, limits, &mut joined)
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
        // The same order as a send takes them: the shared map, then the thread's own.
        let mut all = shared.rooms.write();
        let mut mine = local.rooms.lock();
        for room in joined {
            if let Some(peers) = mine.get_mut(&room) {
                peers.retain(|p| p.id != user);
            }
            if let Some(counts) = all.get_mut(&room) {
                counts[local.index] = counts[local.index].saturating_sub(1);
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
    shared: &Shared,
    local: &Local,
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
            local
                .rooms
                .lock()
                .entry(conversation)
                .or_default()
                .push(me.clone());
            let members: u32 = {
                let mut all = shared.rooms.write();
                let counts = all
                    .entry(conversation)
                    .or_insert_with(|| vec![0; shared.inboxes.len()]);
                counts[local.index] += 1;
                counts.iter().sum()
            };
            joined.push(conversation);
            Some(ServerFrame::Response {
                id,
                response: Response::Room(RoomInfo {
                    room,
                    name: String::new(),
                    invite_only: false,
                    owner: UserId(0),
                    members,
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
                    // No chain here, but the same bytes on the wire as chatd's ack.
                    chain: Some(chat_protocol::Appended {
                        link: [0; 32],
                        digest: [0; 32],
                    }),
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
                edited: None,
                deleted: None,
                mentions: Vec::new(),
                reactions: Vec::new(),
                chain: chat_protocol::Chain::default(),
            })));
            let all = shared.rooms.read();
            let counts = all.get(&send.conversation).map_or(&[][..], Vec::as_slice);
            for (thread, members) in counts.iter().enumerate() {
                if *members == 0 {
                    continue;
                }
                if thread == local.index {
                    local.fan_out(send.conversation, me.id, &event, &shared.dropped);
                } else if shared.inboxes[thread]
                    .try_send(Relayed {
                        room: send.conversation,
                        from: me.id,
                        event: event.clone(),
                    })
                    .is_err()
                {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
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
