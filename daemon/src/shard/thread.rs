//! The shard's thread: its runtime and QUIC endpoint, the connections' accept loop, and the
//! loop that serves its inbox until the shard is done stopping.

use super::*;

/// The shard's loop: handles its inbox in batches (at least every 250 ms), then sends what
/// the batch produced (presence changes, events, retries) and beats its heart, until it is
/// done stopping.
async fn serve_inbox(shard: &Rc<Shard>, inbox: &mut Receiver<ShardMsg>) {
    let shared = &shard.shared;
    let mut batch = Vec::with_capacity(1024);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = inbox.recv_batch(&mut batch) => {
                for msg in batch.drain(..) {
                    shard.handle(msg);
                }
                owner::evict_idle(shard);
            }
            _ = tick.tick() => {}
        }
        registry::flush_presence(shard);
        shard.flush_publications();
        shard.flush_retries();
        #[allow(clippy::cast_precision_loss)] // a count of conversations
        shard
            .metrics()
            .conversations_cached
            .set(shard.owner.borrow().len() as f64);
        shared.heartbeats[shard.id].store(shared.uptime_ms(), Ordering::Release);
        if conn::finished(shard) {
            break;
        }
    }
}

/// Why a shard did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its QUIC endpoint could not be created on its socket.
    #[error("shard {shard}: cannot start the QUIC endpoint: {source}")]
    Endpoint {
        /// The shard.
        shard: ShardId,
        /// Why.
        source: std::io::Error,
    },
    /// Its runtime could not be built.
    #[error("shard {shard}: cannot start the {runtime} runtime: {source}")]
    Runtime {
        /// The shard.
        shard: ShardId,
        /// `io-uring` or `epoll`.
        runtime: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Its thread ended before it said whether it started.
    #[error("a shard thread died before it started")]
    Died,
}

/// What a shard's QUIC endpoint is made of.
pub(crate) struct EndpointParts {
    /// This shard's socket on the shared port.
    pub(crate) socket: UdpSocket,
    /// Connection ids and reset tokens (the same for every shard).
    pub(crate) config: quinn::EndpointConfig,
    /// TLS and transport for new connections.
    pub(crate) server: Arc<quinn::ServerConfig>,
}

/// Runs shard `id` on the current thread, on a `runtime` runtime, until shutdown: accepts
/// connections on its endpoint and serves its inbox.
/// `started` receives `Ok` once the endpoint is up, or why it could not start.
pub(crate) fn run(
    id: ShardId,
    runtime: crate::runtime::Kind,
    shared: Arc<Shared>,
    mut inbox: Receiver<ShardMsg>,
    parts: EndpointParts,
    started: std::sync::mpsc::Sender<Result<(), StartError>>,
) {
    let EndpointParts {
        socket,
        config: endpoint_config,
        server: tls,
    } = parts;
    let on_exit = Arc::clone(&shared);
    let failed = started.clone();
    crate::metrics::enter(&shared.metrics);
    let ran = crate::runtime::block_on(runtime, async move {
        let endpoint = match quinn::Endpoint::new(
            endpoint_config,
            Some((*tls).clone()),
            socket,
            Arc::new(quinn::TokioRuntime),
        ) {
            Ok(endpoint) => endpoint,
            Err(source) => {
                let _ = started.send(Err(StartError::Endpoint { shard: id, source }));
                return;
            }
        };
        let _ = started.send(Ok(()));
        let shard = Rc::new(Shard {
            id,
            shared: Arc::clone(&shared),
            conns: RefCell::new(conn::Connections::new()),
            endpoint: endpoint.clone(),
            owner: RefCell::new(conversation::Conversations::default()),
            registry: RefCell::new(registry::Registry::default()),
            retry: RefCell::new(VecDeque::new()),
            publications: RefCell::new((0..shared.inboxes.len()).map(|_| Vec::new()).collect()),
            erasures: RefCell::new(std::collections::HashMap::new()),
            next_erasure: std::cell::Cell::new(0),
        });
        crate::runtime::spawn_local(conn::accept_loop(Rc::clone(&shard), endpoint.clone()));
        serve_inbox(&shard, &mut inbox).await;
        endpoint.close(
            quinn::VarInt::from_u32(u32::from(GoodbyeCode::SHUTTING_DOWN.0)),
            b"shutting down",
        );
        // The close frames go out until the stop's hard deadline at the latest.
        let hard = conn::stop_deadlines(&shard).map(|d| d.hard);
        let hard = hard.unwrap_or_else(std::time::Instant::now);
        let _ = tokio::time::timeout_at(hard.into(), endpoint.wait_idle()).await;
    });
    if let Err(source) = ran {
        let runtime = runtime.name();
        let _ = failed.send(Err(StartError::Runtime {
            shard: id,
            runtime,
            source,
        }));
    }
    on_exit.exited[id].store(true, Ordering::Release);
}
