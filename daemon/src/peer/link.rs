//! The `peer` thread: the node's peer endpoint (QUIC, ALPN `chatd-peer/2`) and a link to every
//! other node it knows from etcd (dialed, and dialed again after a loss); the links the other
//! nodes dialed to it are [`super::accept`]'s. The protocol is in [`super::wire`].
//!
//! Both sides of a link prove they know `cluster.secret` (or, while it is rotated,
//! `cluster.accepted_secret`) over the TLS session's exported keying material
//! ([`wire::Secrets`]): the certificates are generated at start and not
//! checked, the proofs are what authenticate, and they cannot be replayed on another
//! session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::{ErrorCode, RequestId, UserId};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::sync::{Notify, mpsc};

use super::wire::{self, Answer, Call, Down, Hello};
use super::{LINK_QUEUE, MAX_PENDING, Outbound, ToOwner, push};
use crate::metrics::PeerLag;
use crate::shard::registry::Op;
use crate::shard::{ConnId, ConnRef, Link, Publication, ShardMsg, Shared, error};

/// The longest pause between two attempts to dial a node.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long either side waits for the other's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Threads answering other nodes' reads (the runtime's blocking pool): not the read pool,
/// whose threads may themselves be waiting on another node's answer.
const CALL_THREADS: usize = 4;

/// The peer thread, running.
pub(crate) struct PeerThread {
    stop: Arc<Notify>,
    thread: std::thread::JoinHandle<()>,
}

impl PeerThread {
    /// Closes every link and ends the thread.
    pub(crate) fn stop(self) {
        self.stop.notify_one();
        let _ = self.thread.join();
    }
}

/// Binds `listen` and starts the thread.
///
/// # Errors
/// When the address cannot be bound or the thread cannot start.
pub(crate) fn start(
    shared: Arc<Shared>,
    listen: SocketAddr,
    secrets: wire::Secrets,
) -> std::io::Result<PeerThread> {
    let socket = std::net::UdpSocket::bind(listen)?;
    socket.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(CALL_THREADS)
        .build()?;
    let stop = Arc::new(Notify::new());
    let stopped = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("peer".into())
        .spawn(move || {
            crate::metrics::enter(&shared.metrics);
            runtime.block_on(run(shared, socket, Arc::new(secrets), stopped));
        })?;
    Ok(PeerThread { stop, thread })
}

async fn run(
    shared: Arc<Shared>,
    socket: std::net::UdpSocket,
    secrets: Arc<wire::Secrets>,
    stop: Arc<Notify>,
) {
    let endpoint = match endpoint(socket) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            tracing::error!(error = %e, "the peer endpoint did not start: this node forwards nothing");
            return stop.notified().await;
        }
    };
    let accepting = tokio::spawn(super::accept::accept(
        Arc::clone(&shared),
        endpoint.clone(),
        Arc::clone(&secrets),
    ));
    let dialing = tokio::spawn(dial_all(Arc::clone(&shared), endpoint.clone(), secrets));
    stop.notified().await;
    accepting.abort();
    dialing.abort();
    endpoint.close(quinn::VarInt::from_u32(0), b"stopping");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// The endpoint: a certificate generated now for the listener, any certificate taken by
/// the dialer (the proofs authenticate), TLS 1.3, links kept alive and found dead within
/// 3 s.
fn endpoint(socket: std::net::UdpSocket) -> Result<quinn::Endpoint, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = rcgen::generate_simple_self_signed(vec!["chatd-peer".to_owned()])
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .map_err(|e| e.to_string())?;
    server.alpn_protocols = vec![wire::ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    client.alpn_protocols = vec![wire::ALPN.to_vec()];
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_millis(500)))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            3_000,
        ))))
        .stream_receive_window(quinn::VarInt::from_u32(16 << 20))
        .receive_window(quinn::VarInt::from_u32(64 << 20))
        .send_window(64 << 20)
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(1024))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(4));
    let transport = Arc::new(transport);
    let server =
        quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| e.to_string())?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(Arc::clone(&transport));
    let client =
        quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| e.to_string())?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport);
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Takes any certificate, but checks the handshake's signature with it: who is on the
/// other side is the proof's business ([`wire::proof`]).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The session's exported keying material, which the proofs cover.
pub(super) fn exported(connection: &quinn::Connection) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    connection
        .export_keying_material(&mut out, b"chatd peer proof", b"")
        .map_err(|_| "no keying material to export".to_owned())?;
    Ok(out)
}

/// Sends this node's hello, as side `role` of the session whose keying material is `ekm`.
pub(super) async fn say_hello(
    shared: &Shared,
    stream: &mut quinn::SendStream,
    secrets: &wire::Secrets,
    role: &str,
    ekm: &[u8],
) -> Result<(), String> {
    let hello = Hello {
        node: shared.peers.me.to_string(),
        proof: secrets.proof(role, ekm),
    };
    stream
        .write_all(&wire::encode(&hello)?)
        .await
        .map_err(|e| e.to_string())
}

/// Takes the other side's stream and its hello (at most [`wire::MAX_HELLO`], within
/// [`HELLO_TIMEOUT`]) and checks its proof as side `role`: the stream and the node it names.
/// On any failure the connection is closed.
pub(super) async fn hear_hello(
    connection: &quinn::Connection,
    secrets: &wire::Secrets,
    role: &str,
    ekm: &[u8],
) -> Result<(quinn::RecvStream, String), String> {
    let hello = async {
        let mut stream = connection.accept_uni().await.map_err(|e| e.to_string())?;
        let hello: Hello =
            (wire::read_within(&mut stream, wire::MAX_HELLO).await?).ok_or("no hello")?;
        Ok::<_, String>((stream, hello))
    };
    let heard = match tokio::time::timeout(HELLO_TIMEOUT, hello).await {
        Ok(Ok((stream, hello))) if secrets.proven(role, ekm, &hello.proof) => {
            Ok((stream, hello.node))
        }
        Ok(Ok((_, hello))) => Err(format!(
            "{} did not prove it is of this cluster",
            hello.node
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no hello in time".to_owned()),
    };
    if heard.is_err() {
        connection.close(quinn::VarInt::from_u32(2), b"no valid hello");
    }
    heard
}

// ----- The links this node dials -----

/// Keeps a dialer running for every node etcd lists, except this one.
async fn dial_all(shared: Arc<Shared>, endpoint: quinn::Endpoint, secrets: Arc<wire::Secrets>) {
    let mut nodes = shared.peers.nodes.subscribe();
    let mut dialers: HashMap<String, (String, tokio::task::AbortHandle)> = HashMap::new();
    loop {
        let want = nodes.borrow_and_update().clone();
        dialers.retain(|node, (addr, task)| {
            let keep = want.get(node) == Some(addr);
            if !keep {
                task.abort();
            }
            keep
        });
        for (node, addr) in want {
            if *node == *shared.peers.me || dialers.contains_key(&node) {
                continue;
            }
            let task = tokio::spawn(dial(
                Arc::clone(&shared),
                endpoint.clone(),
                Arc::clone(&secrets),
                node.clone(),
                addr.clone(),
            ));
            dialers.insert(node, (addr, task.abort_handle()));
        }
        if nodes.changed().await.is_err() {
            return;
        }
    }
}

/// Dials node `node` at `addr` until it answers, serves the link while it lasts, and
/// dials again.
async fn dial(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    secrets: Arc<wire::Secrets>,
    node: String,
    addr: String,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match connect(&shared, &endpoint, &secrets, &node, &addr).await {
            Ok((connection, up, down)) => {
                tracing::info!(node, addr, "linked to a peer");
                backoff = Duration::from_millis(100);
                serve_dialed(&shared, &node, connection, up, down).await;
                tracing::warn!(node, addr, "the link to a peer ended");
            }
            Err(e) => tracing::debug!(node, addr, error = %e, "could not link to a peer"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Connects and proves itself; returns the connection and its up and down streams.
async fn connect(
    shared: &Shared,
    endpoint: &quinn::Endpoint,
    secrets: &wire::Secrets,
    node: &str,
    addr: &str,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), String> {
    let addr: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("the address resolves to nothing")?;
    let connection = endpoint
        .connect(addr, "chatd-peer")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let ekm = exported(&connection)?;
    let mut up = connection.open_uni().await.map_err(|e| e.to_string())?;
    say_hello(shared, &mut up, secrets, "dialer", &ekm).await?;
    let (down, named) = hear_hello(&connection, secrets, "listener", &ekm).await?;
    if named != node {
        connection.close(quinn::VarInt::from_u32(2), b"not the node dialed");
        return Err(format!("{addr} answered as {named}, not {node}"));
    }
    Ok((connection, up, down))
}

/// A link this node dialed, while it is served: registered as the way to its node; once
/// it ends (or its task is aborted), unregistered, what it waited for and what was still
/// queued for it answered `UNAVAILABLE`, and every session told it lags.
struct Dialed {
    shared: Arc<Shared>,
    node: Arc<str>,
    /// This link's number among every link of the node (never reused while it runs).
    id: u32,
    link: Arc<Outbound>,
    rx: mpsc::Receiver<ToOwner>,
    /// Forwarded requests not answered yet, by (shard, connection, request): how many.
    pending: HashMap<(u32, u64, u32), u32>,
    waiting: usize,
    /// The task reading the link's down stream.
    reading: Option<tokio::task::AbortHandle>,
}

impl Dialed {
    fn wait_for(&mut self, from: wire::Whence) {
        *self
            .pending
            .entry((from.shard, from.conn, from.request))
            .or_default() += 1;
        self.waiting += 1;
    }

    /// Whether a request of `key` waited (and waits no more).
    fn answered(&mut self, key: (u32, u64, u32)) -> bool {
        let Some(count) = self.pending.get_mut(&key) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.pending.remove(&key);
        }
        self.waiting -= 1;
        true
    }
}

impl Drop for Dialed {
    fn drop(&mut self) {
        if let Some(reading) = &self.reading {
            reading.abort();
        }
        let peers = &self.shared.peers;
        let mut links = HashMap::clone(&peers.outbound.load());
        if links
            .get(&self.node)
            .is_some_and(|l| Arc::ptr_eq(l, &self.link))
        {
            links.remove(&self.node);
            peers.outbound.store(Arc::new(links));
        }
        // What is still queued (shards may hold the link a little longer: it refuses them).
        self.rx.close();
        let mut unanswered: Vec<(u32, u64, u32)> = (self.pending.drain())
            .flat_map(|(key, count)| std::iter::repeat_n(key, usize::try_from(count).unwrap_or(0)))
            .collect();
        while let Ok(queued) = self.rx.try_recv() {
            match queued {
                ToOwner::Up(up) => {
                    if let Some(from) = up.waiting() {
                        unanswered.push((from.shard, from.conn, from.request));
                    }
                }
                ToOwner::Call {
                    partition, answer, ..
                } => {
                    let _ = answer.send(Err(crate::store::Error::Remote {
                        partition,
                        message: "the link ended".into(),
                    }));
                }
            }
        }
        let (shared, node, id) = (Arc::clone(&self.shared), Arc::clone(&self.node), self.id);
        let lost = async move {
            for (shard, conn, request) in unanswered {
                let frame = error(
                    RequestId(request),
                    ErrorCode::UNAVAILABLE,
                    "the conversation's node was lost",
                );
                push_reply(&shared, shard, conn, request, frame).await;
            }
            // Entries the link carried no further are read by a catch-up, if the node held
            // a partition.
            if shared.peers.feeds_from(&node) {
                super::lag_everyone(&shared, PeerLag::LinkEnd).await;
            }
            // The users only that node reported online are offline here now.
            for shard in 0..shared.inboxes.len() {
                let gone = Op::NodeGone {
                    node: Arc::clone(&node),
                    link: id,
                };
                push(&shared, shard, ShardMsg::Registry(gone)).await;
            }
        };
        // Off this thread's other tasks; at the runtime's end (the daemon stops) there is
        // nobody left to tell.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(lost);
        }
    }
}

async fn push_reply(shared: &Shared, shard: u32, conn: u64, request: u32, frame: Bytes) {
    let shard = usize::try_from(shard).unwrap_or(usize::MAX);
    if shard < shared.inboxes.len() {
        let reply = ShardMsg::Reply {
            conn: ConnId(conn),
            request: RequestId(request),
            frame,
        };
        push(shared, shard, reply).await;
    }
}

async fn serve_dialed(
    shared: &Arc<Shared>,
    node: &str,
    connection: quinn::Connection,
    mut up: quinn::SendStream,
    mut down: quinn::RecvStream,
) {
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let (downs_tx, mut downs) = mpsc::channel(LINK_QUEUE);
    let reading = tokio::spawn(async move {
        while let Ok(Some(message)) = wire::read::<Down>(&mut down).await {
            if downs_tx.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut dialed = Dialed {
        shared: Arc::clone(shared),
        node: Arc::from(node),
        id: (shared.peers.next_link).fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        link: Arc::new(Outbound { tx }),
        rx,
        pending: HashMap::new(),
        waiting: 0,
        reading: Some(reading.abort_handle()),
    };
    let mut links = HashMap::clone(&shared.peers.outbound.load());
    links.insert(Arc::clone(&dialed.node), Arc::clone(&dialed.link));
    shared.peers.outbound.store(Arc::new(links));
    // Events before this link's feed started were not seen here: the sessions lag, unless
    // the view names the node holder of nothing (a node joining), whose entries are dropped
    // until a view names it, and that view lags them (`super::feed`).
    if shared.peers.feeds_from(&dialed.node) {
        super::lag_everyone(shared, PeerLag::LinkStart).await;
    }
    loop {
        tokio::select! {
            message = dialed.rx.recv() => match message {
                Some(ToOwner::Up(message)) => {
                    if let Some(from) = message.waiting() {
                        if dialed.waiting >= MAX_PENDING {
                            let frame = error(RequestId(from.request), ErrorCode::OVERLOADED, "too many requests wait for the conversation's node");
                            push_reply(shared, from.shard, from.conn, from.request, frame).await;
                            continue;
                        }
                        dialed.wait_for(from);
                    }
                    let Ok(bytes) = wire::encode(&message) else { continue };
                    if up.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(ToOwner::Call { call, partition, timeout, answer }) => {
                    tokio::spawn(call_out(connection.clone(), call, partition, timeout, answer));
                }
                None => break,
            },
            message = downs.recv() => match message {
                Some(Down::Reply { shard, conn, request, frame }) => {
                    if dialed.answered((shard, conn, request)) {
                        push_reply(shared, shard, conn, request, Bytes::from(frame)).await;
                    }
                }
                Some(Down::Event { frame, audience, except, kind }) => {
                    // A log entry only from the node this one sees holding its partition,
                    // and after a lag when it comes from another node or term than the last
                    // one delivered: a device given a later entry first would skip the
                    // earlier ones (`super::feed`).
                    if let wire::Kind::Entry(conversation, _, term) = kind {
                        match shared.peers.feeds(conversation, &dialed.node, term) {
                            super::Verdict::Drop => continue,
                            super::Verdict::LagFirst => {
                                super::lag_everyone(shared, PeerLag::NewSource).await;
                            }
                            super::Verdict::Deliver => {}
                        }
                    }
                    deliver(shared, frame, audience, except, kind).await;
                }
                Some(Down::Presence { changes }) => {
                    presence(shared, &dialed.node, dialed.id, changes).await;
                }
                None => break,
            },
            _ = connection.closed() => break,
        }
    }
    connection.close(quinn::VarInt::from_u32(0), b"link ended");
}

/// Delivers an event of another node's feed to this node's connections of its audience.
async fn deliver(
    shared: &Shared,
    frame: Vec<u8>,
    audience: Vec<UserId>,
    except: Option<(u32, u64)>,
    kind: wire::Kind,
) {
    let audience: Arc<[UserId]> = audience.into();
    let mut targets = Vec::new();
    shared.placement.shards_of(&audience, &mut targets);
    if targets.is_empty() {
        return;
    }
    let frame = Bytes::from(frame);
    let except = except.map(|(shard, conn)| ConnRef {
        link: Link::HERE,
        shard: usize::try_from(shard).unwrap_or(usize::MAX),
        conn: ConnId(conn),
    });
    for target in targets {
        let publication = Publication {
            frame: frame.clone(),
            audience: Arc::clone(&audience),
            except,
            live: kind.live(),
        };
        push(shared, target, ShardMsg::Publish(vec![publication])).await;
    }
}

/// Which users of node `node` came online there or left (reported on link `link`): to
/// their registry shards here, each shard's in order.
async fn presence(
    shared: &Shared,
    node: &Arc<str>,
    link: u32,
    changes: Vec<(UserId, Option<chat_protocol::Timestamp>)>,
) {
    let mut by_shard: HashMap<usize, Vec<_>> = HashMap::new();
    for change in changes {
        by_shard
            .entry(shared.registry_of(change.0))
            .or_default()
            .push(change);
    }
    for (shard, changes) in by_shard {
        let op = Op::Remote {
            node: Arc::clone(node),
            link,
            changes,
        };
        push(shared, shard, ShardMsg::Registry(op)).await;
    }
}

/// One call on its own stream; the answer goes to `answer`.
async fn call_out(
    connection: quinn::Connection,
    call: Call,
    partition: usize,
    timeout: std::time::Duration,
    answer: crossbeam_channel::Sender<Result<Vec<u8>, crate::store::Error>>,
) {
    let result = tokio::time::timeout(timeout, async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&wire::encode(&call)?)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        wire::read::<Answer>(&mut recv)
            .await?
            .ok_or_else(|| "no answer".to_owned())
    })
    .await
    .unwrap_or_else(|_| Err(super::NO_ANSWER.to_owned()));
    let _ = answer.send(match result {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(refused)) => Err(refused.error(partition)),
        Err(message) => Err(crate::store::Error::Remote { partition, message }),
    });
}
