//! Start-up and shutdown: opens storage, binds one UDP socket per shard on the shared port
//! (SO_REUSEPORT), starts the storage thread, the read pool and the `shard-N` threads, and tells
//! systemd when it is ready. [`Daemon::stop`] drains: goodbyes to every connection, in-flight
//! commits finished, the WAL synced.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::shard::{self, ShardMsg, Shared};
use crate::store::{self, Stores};
use crate::{inbox, tls, token};

mod endpoint;
mod holdings;
mod member;
mod reload;
mod run;
mod steer;
mod watchdog;

pub use crate::shard::StartError;
pub use endpoint::{bind, quic_server_config, wire_limits};
pub use member::HandOver;
pub use reload::Reloaded;
pub use run::{Command, HAND_OVER_TIMEOUT, Stop, run};

/// Capacity of each shard's inbox.
const INBOX_CAPACITY: usize = 65_536;
/// Threads of the read pool.
const READ_THREADS: usize = 2;
/// Threads hashing and checking passwords.
const PASSWORD_THREADS: usize = 1;
/// Password jobs waiting; beyond this, register and login get OVERLOADED.
const PASSWORD_QUEUE: usize = 64;
/// UDP socket buffer size asked for (the kernel may cap it at net.core.[rw]mem_max).
const UDP_BUFFER: usize = 8 << 20;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory could not be created.
    #[error("data directory {0}: {1}")]
    DataDir(std::path::PathBuf, std::io::Error),
    /// Another daemon holds the data directory, or its lock file is unusable.
    #[error("{0}")]
    Locked(#[from] crate::guard::LockError),
    /// Another process shares the UDP port.
    #[error("{0}")]
    PortTaken(#[from] crate::guard::PortError),
    /// The configured runtime cannot run on this host.
    #[error("runtime: {0}")]
    Runtime(String),
    /// Storage could not be opened.
    #[error("storage: {0}")]
    Store(#[from] store::Error),
    /// TLS setup failed.
    #[error("tls: {0}")]
    Tls(#[from] tls::Error),
    /// Token keys could not be loaded.
    #[error("tokens: {0}")]
    Keys(#[from] token::KeyError),
    /// The UDP port could not be bound.
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The admin listener's TCP address could not be bound.
    #[error("cannot bind the admin listener to {0}: {1} (admin.listen)")]
    AdminBind(SocketAddr, std::io::Error),
    /// The web listener's TCP address could not be bound.
    #[error("cannot bind the web listener to {0}: {1} (web.listen)")]
    WebBind(SocketAddr, std::io::Error),
    /// A thread could not be started, or QUIC refused the configuration.
    #[error("start-up: {0}")]
    Start(String),
    /// A shard did not start.
    #[error("{0}")]
    Shard(StartError),
    /// A reload arrived after the stop began.
    #[error("the daemon is stopping")]
    Stopping,
    /// A reloaded configuration was refused.
    #[error("{0}")]
    Reload(String),
}

/// A reading of the daemon's memory budget, in bytes ([`Daemon::memory`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    /// Charged now.
    pub used: usize,
    /// The most charged at once since start.
    pub peak: usize,
    /// The budget.
    pub limit: usize,
}

/// A reading of the daemon's admission counters ([`Daemon::admission`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Connections in their handshake or not yet authenticated.
    pub unauthenticated: usize,
    /// New connections refused since start.
    pub refused: u64,
    /// QUIC Retries sent since start.
    pub retries: u64,
}

/// A running daemon.
pub struct Daemon {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    cert_path: std::path::PathBuf,
    shards: Vec<JoinHandle<()>>,
    /// The partitions held: their stores and storage threads.
    holdings: Arc<holdings::Holdings>,
    /// The node's membership of a cluster (with `cluster.etcd`).
    member: Option<member::Member>,
    readers: Vec<JoinHandle<()>>,
    watchdog_stop: Arc<AtomicBool>,
    bridge: Option<crate::bridge::Bridge>,
    bridge_stats: Arc<crate::bridge::BridgeStats>,
    /// Held until storage has stopped.
    lock: Option<crate::guard::DataDirLock>,
    data_dir: std::path::PathBuf,
    /// The QUIC server configuration new handshakes get (a reload replaces its TLS).
    server_config: Arc<quinn::ServerConfig>,
    /// What drives the shards.
    runtime: crate::runtime::Kind,
    /// The admin listener, when enabled.
    admin: Option<crate::http::Listener>,
    /// What the endpoint offers browsers (a reload keeps it).
    browsers: tls::Browsers,
    /// The web listener, when enabled.
    web: Option<crate::http::Listener>,
}

impl Daemon {
    /// Opens storage, binds the port and starts every thread. Returns once the daemon accepts
    /// connections.
    ///
    /// # Errors
    /// When storage, TLS, keys or the port are not available.
    pub fn start(config: Config) -> Result<Daemon, Error> {
        let data_dir = config.data_dir(std::env::var("STATE_DIRECTORY").ok().as_deref());
        std::fs::create_dir_all(&data_dir).map_err(|e| Error::DataDir(data_dir.clone(), e))?;
        let lock = crate::guard::DataDirLock::acquire(&data_dir)?;
        let (runtime, fallback) =
            crate::runtime::choose(config.runtime, crate::runtime::probe_io_uring)
                .map_err(Error::Runtime)?;
        if let Some(reason) = fallback {
            tracing::warn!("{reason}; the shards run on epoll instead (runtime = \"auto\")");
        }
        let identity = tls::load_identity(&config.tls, &data_dir)?;
        if identity.generated {
            tracing::info!(
                cert = %identity.cert_path.display(),
                sha256 = %identity.fingerprint(),
                "using the generated development certificate; clients trust it with --ca {}",
                identity.cert_path.display()
            );
        }
        let browsers = tls::Browsers::new(&config.web, &identity)?;
        let quic_config = quic_server_config(&config, &identity, &browsers)?;
        let keys = token::Keys::load(&config.auth, &data_dir)?;
        let parted = config.cluster.partitions_in(&data_dir);
        let stores = if config.cluster.etcd.is_empty() {
            Stores::open(
                &data_dir.join("db"),
                &parted,
                config.cluster.partitions,
                config.storage.wal(),
            )?
        } else if data_dir.join("db/CURRENT").exists() {
            return Err(store::Error::Layout(format!(
                "{} holds a single node's store, and cluster.etcd makes this node a cluster's: \
                 a store does not move into partitions by itself",
                data_dir.join("db").display()
            ))
            .into());
        } else {
            // A cluster's node holds what etcd gives it, from `parted`, which it shares.
            Stores::none(store::PartitionMap::new(config.cluster.partitions))
        };
        let shard_count = match config.shards {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        };
        let endpoint_configs = tls::endpoint_configs(&data_dir, &config.cluster, shard_count)?;
        crate::guard::probe_port(config.listen)?;
        let sockets = bind(config.listen, shard_count)?;
        crate::guard::check_port_exclusive(&sockets)?;
        if !config.cluster.server_id.is_empty() {
            // Connection ids name their shard: steer by them, so migration can stay on.
            steer::by_connection_id(&sockets).map_err(|e| Error::Bind(config.listen, e))?;
        }
        let local_addr = sockets[0]
            .local_addr()
            .map_err(|e| Error::Bind(config.listen, e))?;
        let admin_listener = config
            .admin
            .enabled
            .then(|| crate::http::bind(config.admin.listen))
            .transpose()
            .map_err(|e| Error::AdminBind(config.admin.listen, e))?;
        let admin_store = stores.clone();
        let web_listener = config
            .web
            .enabled
            .then(|| crate::http::bind(config.web.listen))
            .transpose()
            .map_err(|e| Error::WebBind(config.web.listen, e))?;

        let metrics = Arc::new(crate::metrics::Metrics::new(shard_count));
        let holdings = Arc::new(holdings::Holdings::start(
            stores.clone(),
            parted,
            &config,
            &metrics,
        )?);
        let (writer, outboxes) = (holdings.writers(), holdings.outboxes());
        let bridge_stats = Arc::new(crate::bridge::BridgeStats::default());
        let bridge = if config.bridge.enabled() {
            Some(
                crate::bridge::Bridge::start(
                    &stores,
                    config.bridge.clone(),
                    &outboxes,
                    Arc::clone(&bridge_stats),
                    Arc::clone(&metrics),
                )
                .map_err(|e| Error::Start(e.to_string()))?,
            )
        } else {
            None
        };
        if let Some(bridge) = &bridge {
            holdings.set_bridge(bridge.control());
        }
        let (reads, readers) = crate::pool::ReadPool::start(
            "storage-read",
            &stores,
            READ_THREADS,
            config.storage.queue_depth,
            &metrics,
        )
        .map_err(|e| Error::Start(e.to_string()))?;
        let (passwords, hashers) = crate::pool::ReadPool::start(
            "password",
            &stores,
            PASSWORD_THREADS,
            PASSWORD_QUEUE,
            &metrics,
        )
        .map_err(|e| Error::Start(e.to_string()))?;
        let readers: Vec<_> = readers.into_iter().chain(hashers).collect();
        // Each shard may have as many writes in flight as the storage queue holds: their
        // results come back through the inbox's reserved lane, never waiting for room.
        let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..shard_count)
            .map(|_| inbox::inbox(INBOX_CAPACITY, config.storage.queue_depth))
            .unzip();
        let shared = Arc::new(Shared {
            limits: wire_limits(&config),
            partitions: stores.map(),
            ids: store::NextIds::after(&stores)?,
            keys: arc_swap::ArcSwap::from_pointee(keys),
            writer,
            reads,
            passwords,
            inboxes,
            shutting_down: AtomicBool::new(false),
            exited: (0..shard_count).map(|_| AtomicBool::new(false)).collect(),
            heartbeats: (0..shard_count).map(|_| AtomicU64::new(0)).collect(),
            connections: (0..shard_count)
                .map(|_| std::sync::atomic::AtomicUsize::new(0))
                .collect(),
            event_queue_peak: (0..shard_count)
                .map(|_| std::sync::atomic::AtomicUsize::new(0))
                .collect(),
            unauthenticated: std::sync::atomic::AtomicUsize::new(0),
            sessions: std::sync::atomic::AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            memory: Arc::new(crate::budget::Budget::new(daemon_memory(&config))),
            started: Instant::now(),
            outboxes,
            placement: crate::shard::placement::Placement::default(),
            peers: peers(&config, &stores),
            restrictions: papaya::HashMap::new(),
            metrics,
            config: arc_swap::ArcSwap::from_pointee(config),
        });
        for (p, store) in stores.held() {
            holdings::load_restrictions(&shared, p, &store)?;
        }
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut shards = Vec::with_capacity(shard_count);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let shard_parts = receivers.into_iter().zip(sockets).zip(endpoint_configs);
        for (id, ((receiver, socket), endpoint_config)) in shard_parts.enumerate() {
            let shared = Arc::clone(&shared);
            let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
            let quic_config = Arc::clone(&quic_config);
            let started = started_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    shard::run(
                        id,
                        runtime,
                        shared,
                        receiver,
                        shard::EndpointParts {
                            socket,
                            config: endpoint_config,
                            server: quic_config,
                        },
                        started,
                    );
                })
                .map_err(|e| Error::Start(e.to_string()))?;
            shards.push(handle);
        }
        drop(started_tx);
        let watchdog_stop = Arc::new(AtomicBool::new(false));
        let mut daemon = Daemon {
            shared,
            local_addr,
            cert_path: identity.cert_path,
            shards,
            holdings,
            member: None,
            readers,
            watchdog_stop,
            bridge,
            bridge_stats,
            lock: Some(lock),
            data_dir,
            server_config: quic_config,
            runtime,
            admin: None,
            browsers,
            web: None,
        };
        // Every shard reports whether its endpoint is up; one that is not fails the start.
        let failure = (0..shard_count)
            .map(|_| started_rx.recv().unwrap_or(Err(StartError::Died)))
            .find_map(Result::err);
        if let Some(reason) = failure {
            daemon.stop_fast();
            return Err(Error::Shard(reason));
        }
        if let Some(listener) = admin_listener {
            let state = crate::admin::State {
                shared: Arc::clone(&daemon.shared),
                store: admin_store,
                bridge: Arc::clone(&daemon.bridge_stats),
                data_dir: daemon.data_dir.clone(),
                actions: tokio::sync::Mutex::new(()),
            };
            match crate::admin::start(listener, state) {
                Ok(admin) => daemon.admin = Some(admin),
                Err(e) => {
                    daemon.stop_fast();
                    return Err(Error::Start(format!("admin listener: {e}")));
                }
            }
        }
        if let Some(listener) = web_listener {
            match crate::web::start(listener, &daemon.browsers, local_addr) {
                Ok(web) => daemon.web = Some(web),
                Err(e) => {
                    daemon.stop_fast();
                    return Err(Error::Start(format!("web listener: {e}")));
                }
            }
        }
        let cluster = daemon.shared.config().cluster.clone();
        if !cluster.etcd.is_empty() {
            let holdings = Arc::clone(&daemon.holdings);
            match member::start(&cluster, Arc::clone(&daemon.shared), holdings) {
                Ok(member) => daemon.member = Some(member),
                Err(e) => {
                    daemon.stop_fast();
                    return Err(Error::Start(format!("cluster membership: {e}")));
                }
            }
        }
        tracing::info!(
            %local_addr,
            shards = shard_count,
            runtime = runtime.name(),
            "chatd is listening"
        );
        watchdog::start(&daemon.shared, &daemon.watchdog_stop);
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        Ok(daemon)
    }

    /// The bound UDP address (useful with port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's bound TCP address, when it runs.
    #[must_use]
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(crate::http::Listener::addr)
    }

    /// The web listener's bound TCP address, when it runs.
    #[must_use]
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web.as_ref().map(crate::http::Listener::addr)
    }

    /// What drives the shard threads: `"io-uring"` or `"epoll"` (`runtime = "auto"`
    /// resolved).
    #[must_use]
    pub fn runtime(&self) -> &'static str {
        self.runtime.name()
    }

    /// Open connections per shard.
    #[must_use]
    pub fn connections_per_shard(&self) -> Vec<usize> {
        self.shared.connections_per_shard()
    }

    /// The outbox's newest event seq (0 when the bridge is off or nothing happened yet).
    #[must_use]
    pub fn outbox_head(&self) -> u64 {
        self.shared.outbox_head()
    }

    /// The bridge's counters: confirmed cursor, connection state.
    #[must_use]
    pub fn bridge_stats(&self) -> &crate::bridge::BridgeStats {
        &self.bridge_stats
    }

    /// The most events ever queued for any one connection (each connection's queue is
    /// bounded by `limits.outgoing_queue`; beyond it the connection lags).
    #[must_use]
    pub fn event_queue_peak(&self) -> usize {
        self.shared.event_queue_peak()
    }

    /// The daemon's memory budget: bytes charged now (every connection's queued frames and
    /// reservations, plus a fixed cost per connection), the most ever charged, and the limit
    /// (`limits.daemon_memory`, or the default derived from the machine).
    #[must_use]
    pub fn memory(&self) -> MemoryUse {
        MemoryUse {
            used: self.shared.memory.used(),
            peak: self.shared.memory.peak(),
            limit: self.shared.memory.limit(),
        }
    }

    /// Connections now in their handshake or not yet authenticated; new connections refused
    /// so far; QUIC Retries sent so far.
    #[must_use]
    pub fn admission(&self) -> Admission {
        Admission {
            unauthenticated: self.shared.unauthenticated.load(Ordering::Acquire),
            refused: self.shared.refused.load(Ordering::Relaxed),
            retries: self.shared.retries.load(Ordering::Relaxed),
        }
    }

    /// The certificate the daemon presents (PEM), for clients to trust.
    #[must_use]
    pub fn cert_path(&self) -> &std::path::Path {
        &self.cert_path
    }

    /// Starts draining: `/readyz` answers 503 from now on, and systemd hears `STOPPING=1`.
    /// The daemon serves on until [`Daemon::stop`]; returns how long it should
    /// (`shutdown_drain_secs`).
    pub fn drain(&self) -> Duration {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        self.shared.shutting_down.store(true, Ordering::Release);
        Duration::from_secs(self.shared.config().shutdown_drain_secs)
    }

    /// A cluster's node leaves: it gives each partition up while its clients stay connected,
    /// and the other nodes take them at once. The answer comes once they serve them all (or
    /// no other node is there to take them): [`HandOver`]. `None` without `cluster.etcd`.
    #[must_use]
    pub fn hand_over(&self) -> Option<tokio::sync::oneshot::Receiver<HandOver>> {
        self.member.as_ref().map(member::Member::hand_over)
    }

    /// Fast stop: goodbye to every connection without waiting for them; commits already
    /// with the storage thread still finish and the WAL is synced, within
    /// [`STOP_HARD_TIMEOUT`].
    pub fn stop_fast(self) {
        self.stop_within(Duration::ZERO, Storage::ByDeadline);
    }

    /// Fast stop that returns once the database is closed (waiting up to [`CLOSE_TIMEOUT`]
    /// for it, not [`STOP_HARD_TIMEOUT`]): for tests and tools whose process exits right
    /// after. A process must not exit while
    /// RocksDB is still closing on a detached storage thread: its background threads would
    /// then lock mutexes the exit has destroyed (an abort, `pthread lock: Invalid argument`).
    pub fn stop_fast_and_close(self) {
        self.stop_within(Duration::ZERO, Storage::Closed);
    }

    /// Graceful stop: goodbye to every connection and wait up to `shutdown_grace_secs` for
    /// them to close, then up to [`STOP_HARD_TIMEOUT`] more for commits in flight, the
    /// endpoints, the bridge and storage (which syncs the WAL). One deadline each, shared by
    /// every thread: a stop never takes longer than the two together.
    pub fn stop(self) {
        let grace = Duration::from_secs(self.shared.config().shutdown_grace_secs);
        self.stop_within(grace, Storage::ByDeadline);
    }

    fn stop_within(mut self, grace: Duration, storage_wait: Storage) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        let now = Instant::now();
        let deadlines = crate::shard::StopDeadlines {
            grace: now + grace,
            hard: now + grace + STOP_HARD_TIMEOUT,
        };
        // No partition is taken or given up while the daemon stops.
        if let Some(member) = self.member.take() {
            member.stop(deadlines.hard);
        }
        self.watchdog_stop.store(true, Ordering::Release);
        self.shared.shutting_down.store(true, Ordering::Release);
        tell_every_shard(
            &self.shared,
            || ShardMsg::Shutdown(deadlines),
            Some(deadlines.hard),
        );
        let shards: Vec<_> = self.shards.drain(..).collect();
        if join_by(shards, deadlines.hard) > 0 {
            tracing::warn!("a shard did not stop by the stop's hard deadline; leaving it");
        }
        // The admin listener answered `/readyz` with 503 while the shards drained; its
        // reference to the shared state must go before storage can stop.
        let bridge = self.bridge.take().and_then(crate::bridge::Bridge::stop);
        let admin = self.admin.take().and_then(crate::http::Listener::stop);
        let web = self.web.take().and_then(crate::http::Listener::stop);
        if join_by(
            bridge.into_iter().chain(admin).chain(web).collect(),
            deadlines.hard,
        ) > 0
        {
            tracing::warn!(
                "the bridge or the admin listener did not stop by the stop's hard deadline"
            );
        }
        // The last references to the writer and the pool go with `shared`; their threads then
        // drain what is queued and exit.
        let storage = self.holdings.stop();
        let readers = std::mem::take(&mut self.readers);
        let lock = self.lock.take();
        drop(self);
        let threads: Vec<_> = storage.into_iter().chain(readers).collect();
        let late = match storage_wait {
            Storage::ByDeadline => join_by(threads, deadlines.hard),
            Storage::Closed => join_by(threads, Instant::now() + CLOSE_TIMEOUT),
        };
        if late == 0 {
            drop(lock);
        } else {
            tracing::warn!("a storage thread did not stop by the stop's hard deadline");
            // RocksDB may still be open: only the process's exit may free the directory.
            std::mem::forget(lock);
        }
    }
}

/// How long a stop waits for the storage threads (the writer and the read pool, which hold
/// the database).
#[derive(Clone, Copy)]
enum Storage {
    /// Until the stop's hard deadline; then they are left to the process's exit.
    ByDeadline,
    /// Until they have finished and the database is closed, or [`CLOSE_TIMEOUT`] passed.
    Closed,
}

/// How long [`Daemon::stop_fast_and_close`] waits for the database to close: far beyond any
/// close seen (a memtable flush, on a loaded test machine), short of hanging a test binary
/// whose storage thread cannot finish at all.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a stop may take beyond `shutdown_grace_secs`: for commits in flight, the QUIC
/// endpoints' close, the bridge and storage to finish. Whatever is still running then is left
/// to the process's exit.
pub const STOP_HARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Joins `threads` that finish by `deadline`; returns how many did not (they are detached).
fn join_by(threads: Vec<std::thread::JoinHandle<()>>, deadline: Instant) -> usize {
    let mut late = 0;
    for handle in threads {
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if handle.is_finished() {
            let _ = handle.join();
        } else {
            late += 1;
        }
    }
    late
}

/// Pushes a `make()` into every shard's inbox, retrying while an inbox is full, unless the
/// shard has left its loop (nothing would drain its inbox again) or `deadline` has passed.
/// Returns how many shards took theirs.
fn tell_every_shard(
    shared: &Shared,
    mut make: impl FnMut() -> ShardMsg,
    deadline: Option<Instant>,
) -> usize {
    let mut told = 0;
    for (inbox, exited) in shared.inboxes.iter().zip(&shared.exited) {
        let mut msg = make();
        loop {
            match inbox.push(msg) {
                Ok(()) => {
                    told += 1;
                    break;
                }
                Err(_) if exited.load(Ordering::Acquire) => break,
                Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => break,
                Err(back) => {
                    msg = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    told
}

/// The daemon's memory budget under `config`.
fn daemon_memory(config: &Config) -> usize {
    match config.limits.daemon_memory {
        0 => crate::budget::default_daemon_memory(),
        bytes => bytes,
    }
}

/// The node's peers: with `cluster.peer`, reads of partitions other nodes hold go to them.
fn peers(config: &Config, stores: &Stores) -> Arc<crate::peer::Peers> {
    let on = !config.cluster.peer.is_empty();
    let peers = Arc::new(crate::peer::Peers::new(
        &config.cluster.node,
        on,
        stores.clone(),
    ));
    if on {
        let remote: std::sync::Weak<crate::peer::Peers> = Arc::downgrade(&peers);
        stores.reach(remote);
    }
    peers
}
