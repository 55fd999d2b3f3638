//! Configuration: one serde struct with defaults, read from the embedded `chatd.toml`, an
//! optional file, `CHATD_*` environment variables and command-line flags, in that order of
//! precedence (later wins), and validated before any port is bound.
//!
//! `Config::load` does the layering; `Config::validate` checks every rule and reports all
//! problems at once. `main.rs` exits with code 64 (EX_USAGE) when either fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod secret;
pub use secret::{MAX_SECRET_FILE, Secret};

/// The commented default configuration, printed by `chatd generate-config`.
pub const DEFAULT_TOML: &str = include_str!("../chatd.toml");

/// [`DEFAULT_TOML`] parsed, once per process.
static DEFAULT_TABLE: std::sync::LazyLock<Result<toml::Table, String>> =
    std::sync::LazyLock::new(|| toml::from_str(DEFAULT_TOML).map_err(|e| e.to_string()));

/// Prefix of environment variables that override configuration fields.
pub const ENV_PREFIX: &str = "CHATD_";

/// Everything the daemon can be told. Field docs match `chatd.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address of the QUIC endpoint; every shard binds it with SO_REUSEPORT.
    pub listen: SocketAddr,
    /// Data directory; empty: `$STATE_DIRECTORY`, else `./chatd-data` (see [`Config::data_dir`]).
    pub data_dir: PathBuf,
    /// Number of shards; 0 = one per available core.
    pub shards: usize,
    /// Seconds a SIGTERM waits for connections to close and storage to flush.
    pub shutdown_grace_secs: u64,
    /// Seconds between SIGTERM and the goodbyes: `/readyz` answers 503 and the daemon
    /// serves on, so a load balancer stops sending new clients first.
    pub shutdown_drain_secs: u64,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// What drives the shard threads.
    pub runtime: RuntimeChoice,
    /// TLS certificate and key.
    pub tls: TlsConfig,
    /// Tokens and authentication.
    pub auth: AuthConfig,
    /// The storage pipeline.
    pub storage: StorageConfig,
    /// Per-connection, per-user and per-room limits.
    pub limits: LimitsConfig,
    /// The outbox and the AMQP bridge.
    pub bridge: BridgeConfig,
    /// The admin listener: metrics, health checks, admin commands.
    pub admin: AdminConfig,
}

/// `[admin]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether the admin listener runs.
    pub enabled: bool,
    /// TCP address of the admin listener (HTTP/1.1).
    pub listen: SocketAddr,
    /// Bearer token the admin API and `/metrics` require (a [`Secret`]); empty: none, which
    /// only a loopback `listen` allows. `/healthz` and `/readyz` never ask for it.
    pub token: Secret,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 4480)),
            token: Secret::default(),
        }
    }
}

/// `log_format`
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; colour only when standard error is a terminal.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// `runtime`
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeChoice {
    /// io_uring when the host allows it, else epoll (with one log line saying why).
    #[default]
    Auto,
    /// io_uring, or refuse to start.
    IoUring,
    /// tokio on epoll.
    Epoll,
}

/// `[bridge]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// AMQP URL of the broker (a [`Secret`]: it may carry a password); empty: no outbox
    /// and no bridge.
    pub amqp_url: Secret,
    /// The durable topic exchange events are published to.
    pub exchange: String,
    /// Seconds a confirmed event stays in the outbox (for `chatd bridge replay`).
    pub retention_secs: u64,
    /// Events published and not yet confirmed, at most.
    pub max_unconfirmed: usize,
    /// The body of each published event: `json` (the default) or `bincode`
    /// (docs/EVENTS.md).
    pub payload: Payload,
    /// With an `amqps://` URL: a PEM file of CA certificates trusted besides the system's
    /// (for a broker whose certificate a private CA signed). Empty: the system's only.
    pub tls_ca: PathBuf,
}

/// The encoding of published events.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// `application/json`: the documented JSON schema.
    #[default]
    Json,
    /// `application/x-chatd-event+bincode; v=1`: `chat_protocol::events::EventRecord`.
    Bincode,
}

impl BridgeConfig {
    /// Whether the outbox is written and the bridge runs.
    #[must_use]
    pub fn enabled(&self) -> bool {
        !self.amqp_url.expose().is_empty()
    }
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            amqp_url: Secret::default(),
            exchange: "chatd.events".into(),
            retention_secs: 7 * 86_400,
            max_unconfirmed: 256,
            payload: Payload::Json,
            tls_ca: PathBuf::new(),
        }
    }
}

/// `[tls]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; empty with `key`: a generated development certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[auth]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of minted tokens, in seconds.
    pub token_ttl_secs: u64,
    /// Seconds before an unauthenticated connection is closed.
    pub auth_timeout_secs: u64,
    /// Signing keys: the first signs, all verify. Empty: a generated local secret.
    pub keys: Vec<KeyConfig>,
}

/// One `[[auth.keys]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key id, carried in the token header (`kid`).
    pub id: String,
    /// The HMAC-SHA256 secret as hex, at least 32 bytes (inline, or from a file, the
    /// environment or a systemd credential).
    pub secret: Secret,
}

/// When an acknowledged write is durable.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync'd before the ack (group-committed).
    Fsync,
    /// In the WAL in the page cache before the ack: survives a crash of the daemon only.
    Buffered,
}

/// `[storage]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// What an ack guarantees.
    pub durability: Durability,
    /// Most write batches merged into one group commit.
    pub max_group_commit: usize,
    /// Requests waiting for the storage thread before sends get `OVERLOADED`.
    pub queue_depth: usize,
    /// Sends of one user in one conversation whose op ids are recognised when retried
    /// (kept on disk, so across restarts).
    pub dedupe_window: usize,
    /// Op ids a conversation holds in memory for its recent senders' windows; the least
    /// recently active senders beyond it are read back from disk when they send again.
    pub dedupe_cache: usize,
    /// Conversations a shard keeps in memory; idle ones beyond this are dropped and reloaded
    /// from disk when next used.
    pub cached_conversations: usize,
}

/// `[limits]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest message body in bytes.
    pub max_body: usize,
    /// Requests one connection may have unanswered.
    pub max_in_flight: u32,
    /// Rooms one user may belong to.
    pub max_rooms_per_user: u32,
    /// Members one room may have.
    pub max_room_members: u32,
    /// Sustained sends per second per user.
    pub send_rate: u32,
    /// Sends a user may burst above the sustained rate.
    pub send_burst: u32,
    /// Frames queued for one connection.
    pub outgoing_queue: usize,
    /// Entries replayed per conversation on resume before a `Gap` is announced.
    pub max_resume_gap: u32,
    /// Entries replayed in all on one resume.
    pub max_replay: u32,
    /// Idle timeout in seconds.
    pub idle_timeout_secs: u64,
    /// Keep-alive interval in seconds.
    pub keep_alive_secs: u64,
    /// Connections one shard accepts.
    pub max_connections_per_shard: usize,
    /// Connections in their handshake or not yet authenticated, in the whole daemon; beyond
    /// it new connections are refused.
    pub max_unauthenticated: usize,
    /// Beyond this many unauthenticated connections, a new connection must first prove its
    /// source address with a QUIC Retry (one round trip more); 0: always.
    pub retry_above: usize,
    /// Connections from one IP address that one shard accepts (the kernel spreads an
    /// address's connections over the shards, so an address holds at most this many times
    /// the shard count).
    pub max_connections_per_address: usize,
    /// Users one connection may follow the presence of.
    pub max_presence_subscriptions: usize,
    /// Least time between two presence events about the same user, in milliseconds; changes
    /// within it are coalesced.
    pub presence_interval_ms: u64,
    /// Bytes one connection may hold queued: answers (reserved when their request is read),
    /// events, catch-up pages. At the bound its stream is not read; events make it lag.
    pub connection_memory: usize,
    /// Bytes all connections of one user may hold queued together.
    pub user_memory: usize,
    /// Bytes every connection together may hold queued, plus 48 KiB per connection; 0: half
    /// of the machine's (or the cgroup's) memory. At the bound requests get `OVERLOADED`
    /// and new connections are refused.
    pub daemon_memory: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            data_dir: PathBuf::new(),
            shards: 0,
            shutdown_grace_secs: 10,
            shutdown_drain_secs: 0,
            log: "info".into(),
            log_format: LogFormat::Text,
            runtime: RuntimeChoice::Auto,
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            bridge: BridgeConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl_secs: 86_400,
            auth_timeout_secs: 10,
            keys: Vec::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            durability: Durability::Fsync,
            max_group_commit: 256,
            queue_depth: 16_384,
            dedupe_window: 256,
            dedupe_cache: 1_024,
            cached_conversations: 100_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body: chat_protocol::limits::MAX_BODY,
            max_in_flight: 64,
            max_rooms_per_user: 1_000,
            max_room_members: 10_000,
            send_rate: 20,
            send_burst: 40,
            outgoing_queue: 1_024,
            max_resume_gap: 1_000,
            max_replay: 20_000,
            idle_timeout_secs: 60,
            keep_alive_secs: 15,
            max_connections_per_shard: 100_000,
            max_unauthenticated: 10_000,
            retry_above: 1_000,
            max_connections_per_address: 1_000,
            max_presence_subscriptions: 1_024,
            presence_interval_ms: 1_000,
            connection_memory: 4 << 20,
            user_memory: 16 << 20,
            daemon_memory: 0,
        }
    }
}

/// Why a configuration could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML (file, embedded default or environment) does not parse into the struct.
    #[error("{origin}: {message}")]
    Parse {
        /// Where the bad input came from.
        origin: String,
        /// What is wrong with it.
        message: String,
    },
    /// Rules broken by the merged configuration, one per line.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Overrides from the command line, applied last.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--shards`
    pub shards: Option<usize>,
}

impl Config {
    /// Defaults, then `file` (if any), then `CHATD_*` variables from `env`, then `overrides`;
    /// validated.
    ///
    /// # Errors
    /// An unreadable file, TOML that does not fit, an unknown `CHATD_*` variable, or a broken
    /// rule.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, Error> {
        let file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Some((path.display().to_string(), text))
            }
            None => None,
        };
        Config::layered(
            file.as_ref()
                .map(|(origin, text)| (origin.as_str(), text.as_str())),
            env,
            overrides,
        )
    }

    /// The text of a configuration file (`origin` names it in errors), over the defaults,
    /// validated: what [`Config::load`] does with a file's contents, without the file.
    ///
    /// # Errors
    /// TOML that does not fit, or a broken rule.
    pub fn parse(origin: &str, text: &str) -> Result<Config, Error> {
        Config::layered(Some((origin, text)), Vec::new(), &Overrides::default())
    }

    /// Where `chatd admin` finds the admin listener: `admin.listen` (a wildcard address
    /// becomes the loopback one) and `admin.token`, from the defaults, `file` and the
    /// `CHATD_*` variables of `env`. Only that secret is read: the others may be credentials
    /// that only the service can read.
    ///
    /// # Errors
    /// An unreadable file, TOML that does not fit, or a token that cannot be read.
    pub fn admin_endpoint(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(SocketAddr, String), Error> {
        let text = match file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?),
            None => None,
        };
        let origin = file.map(|p| p.display().to_string()).unwrap_or_default();
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut config = Config::unresolved(
            text.as_deref().map(|t| (origin.as_str(), t)),
            env.clone(),
            &Overrides::default(),
        )?;
        config
            .admin
            .token
            .resolve(&env.into_iter().collect())
            .map_err(|e| Error::Invalid(vec![format!("admin.token: {e}")]))?;
        let mut addr = config.admin.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Ok((addr, config.admin.token.expose().to_owned()))
    }

    fn layered(
        file: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, Error> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut config = Config::unresolved(file, env.clone(), overrides)?;
        config.resolve_secrets(&env.into_iter().collect())?;
        config.validate()?;
        Ok(config)
    }

    /// The layers merged, before secrets are read and rules checked.
    fn unresolved(
        file: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, Error> {
        let mut table = DEFAULT_TABLE.clone().map_err(|message| Error::Parse {
            origin: "embedded chatd.toml".into(),
            message,
        })?;
        if let Some((origin, text)) = file {
            let from_file: toml::Table = toml::from_str(text).map_err(|e| Error::Parse {
                origin: origin.to_owned(),
                message: e.to_string(),
            })?;
            merge(&mut table, from_file);
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        apply_env(&mut table, env.iter().cloned())?;
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| Error::Parse {
                    origin: "configuration".into(),
                    message: e.to_string(),
                })?;
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.data_dir.clone_from(dir);
        }
        if let Some(shards) = overrides.shards {
            config.shards = shards;
        }
        Ok(config)
    }

    /// Reads every secret that comes from a file, the environment or a credential.
    fn resolve_secrets(
        &mut self,
        env: &std::collections::HashMap<String, String>,
    ) -> Result<(), Error> {
        let mut problems = Vec::new();
        for (i, key) in self.auth.keys.iter_mut().enumerate() {
            if let Err(e) = key.secret.resolve(env) {
                problems.push(format!("auth.keys[{i}].secret: {e}"));
            }
        }
        if let Err(e) = self.bridge.amqp_url.resolve(env) {
            problems.push(format!("bridge.amqp_url: {e}"));
        }
        if let Err(e) = self.admin.token.resolve(env) {
            problems.push(format!("admin.token: {e}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(problems))
        }
    }

    /// Checks every rule; reports all broken ones.
    ///
    /// # Errors
    /// [`Error::Invalid`] listing each problem.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_owned());
            }
        };
        check(
            self.shards <= 1024,
            "shards must be at most 1024 (0 = one per core)",
        );
        check(
            self.shutdown_drain_secs <= 3600,
            "shutdown_drain_secs must be at most 3600",
        );
        check(
            self.shutdown_grace_secs >= 1,
            "shutdown_grace_secs must be at least 1",
        );
        check(
            tracing_subscriber::EnvFilter::try_new(&self.log).is_ok(),
            "log must be a tracing filter, e.g. \"info\" or \"info,chatd=debug\"",
        );
        check(
            self.tls.cert.as_os_str().is_empty() == self.tls.key.as_os_str().is_empty(),
            "tls.cert and tls.key must both be set or both be empty",
        );
        check(
            self.auth.token_ttl_secs >= 60,
            "auth.token_ttl_secs must be at least 60",
        );
        check(
            self.auth.auth_timeout_secs >= 1,
            "auth.auth_timeout_secs must be at least 1",
        );
        for key in &self.auth.keys {
            check(
                !key.id.is_empty()
                    && key.id.len() <= 64
                    && key.id.bytes().all(|b| b.is_ascii_graphic()),
                "auth.keys: an id is 1 to 64 printable ASCII characters",
            );
            check(
                hex::decode(key.secret.expose()).is_ok_and(|s| s.len() >= 32),
                "auth.keys: a secret is at least 32 bytes written as hex (64+ hex digits)",
            );
        }
        let ids: std::collections::HashSet<_> = self.auth.keys.iter().map(|k| &k.id).collect();
        check(
            ids.len() == self.auth.keys.len(),
            "auth.keys: key ids must be unique",
        );
        check(
            (1..=4096).contains(&self.storage.max_group_commit),
            "storage.max_group_commit must be 1 to 4096",
        );
        check(
            self.storage.queue_depth >= 16,
            "storage.queue_depth must be at least 16",
        );
        // A device resends at most its unanswered requests: they must fit the window.
        check(
            (self.limits.max_in_flight as usize..=65_536).contains(&self.storage.dedupe_window),
            "storage.dedupe_window must be limits.max_in_flight to 65536",
        );
        check(
            (self.storage.dedupe_window..=1_000_000).contains(&self.storage.dedupe_cache),
            "storage.dedupe_cache must be storage.dedupe_window to 1000000",
        );
        check(
            self.storage.cached_conversations >= 16,
            "storage.cached_conversations must be at least 16",
        );
        let limits = &self.limits;
        check(
            (1..=chat_protocol::limits::MAX_BODY).contains(&limits.max_body),
            "limits.max_body must be 1 to 16384 (the protocol ceiling)",
        );
        check(
            limits.max_in_flight >= 1,
            "limits.max_in_flight must be at least 1",
        );
        check(
            limits.max_rooms_per_user >= 1,
            "limits.max_rooms_per_user must be at least 1",
        );
        check(
            limits.max_room_members >= 2,
            "limits.max_room_members must be at least 2",
        );
        check(
            limits.outgoing_queue >= 16,
            "limits.outgoing_queue must be at least 16",
        );
        check(limits.send_rate >= 1, "limits.send_rate must be at least 1");
        check(
            limits.send_burst >= 1,
            "limits.send_burst must be at least 1",
        );
        check(
            limits.max_resume_gap >= 1,
            "limits.max_resume_gap must be at least 1",
        );
        check(
            limits.max_replay >= limits.max_resume_gap,
            "limits.max_replay must be at least limits.max_resume_gap",
        );
        check(
            limits.idle_timeout_secs >= 5,
            "limits.idle_timeout_secs must be at least 5",
        );
        check(
            limits.keep_alive_secs >= 1 && limits.keep_alive_secs < limits.idle_timeout_secs,
            "limits.keep_alive_secs must be at least 1 and below limits.idle_timeout_secs",
        );
        check(
            limits.max_connections_per_shard >= 1,
            "limits.max_connections_per_shard must be at least 1",
        );
        check(
            limits.max_unauthenticated >= 1,
            "limits.max_unauthenticated must be at least 1",
        );
        check(
            limits.max_connections_per_address >= 1,
            "limits.max_connections_per_address must be at least 1",
        );
        let bridge = &self.bridge;
        let url = bridge.amqp_url.expose();
        check(
            url.is_empty() || url.starts_with("amqp://") || url.starts_with("amqps://"),
            "bridge.amqp_url must be empty or an amqp:// or amqps:// URL",
        );
        check(
            !bridge.exchange.is_empty() && bridge.exchange.len() <= 255,
            "bridge.exchange must be 1 to 255 bytes",
        );
        check(
            (1..=65_535).contains(&bridge.max_unconfirmed),
            "bridge.max_unconfirmed must be 1 to 65535",
        );
        check(
            bridge.tls_ca.as_os_str().is_empty() || url.starts_with("amqps://"),
            "bridge.tls_ca needs an amqps:// bridge.amqp_url",
        );
        check(
            limits.max_presence_subscriptions >= 1,
            "limits.max_presence_subscriptions must be at least 1",
        );
        check(
            (100..=60_000).contains(&limits.presence_interval_ms),
            "limits.presence_interval_ms must be 100 to 60000",
        );
        // One largest answer (a full history page) must fit a connection's budget, or the
        // request could never be read.
        check(
            limits.connection_memory >= 2 * chat_protocol::limits::MAX_SERVER_FRAME,
            "limits.connection_memory must be at least 4194304 (two largest server frames)",
        );
        check(
            limits.user_memory >= limits.connection_memory,
            "limits.user_memory must be at least limits.connection_memory",
        );
        check(
            limits.daemon_memory == 0 || limits.daemon_memory >= limits.user_memory,
            "limits.daemon_memory must be 0 (half of the machine's memory) or at least limits.user_memory",
        );
        let admin = &self.admin;
        check(
            !admin.enabled || admin.listen.ip().is_loopback() || !admin.token.is_empty(),
            "admin.listen is not a loopback address: set admin.token (its bearer token), or \
             bind it to 127.0.0.1",
        );
        check(
            admin.token.is_empty() || admin.token.expose().len() >= 16,
            "admin.token must be at least 16 characters",
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(problems))
        }
    }

    /// The data directory: the configured one, else `$STATE_DIRECTORY` (set by systemd's
    /// `StateDirectory=`; the first entry when it lists several), else `./chatd-data`.
    #[must_use]
    pub fn data_dir(&self, state_directory: Option<&str>) -> PathBuf {
        if !self.data_dir.as_os_str().is_empty() {
            return self.data_dir.clone();
        }
        match state_directory
            .and_then(|dirs| dirs.split(':').next())
            .filter(|d| !d.is_empty())
        {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from("chatd-data"),
        }
    }
}

/// Deep-merges `overlay` into `base`: tables merge key by key, other values replace.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Applies `CHATD_<SECTION>_<FIELD>` and `CHATD_<FIELD>` variables. A value is read as a
/// TOML value when it parses as one (numbers, booleans, arrays), else as a string.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), Error> {
    let mut unknown = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        if matches!(table.get(&rest), Some(v) if !v.is_table()) {
            table.insert(rest, value);
            continue;
        }
        let section = table.iter_mut().find_map(|(section, v)| {
            let field = rest.strip_prefix(section.as_str())?.strip_prefix('_')?;
            let t = v.as_table_mut()?;
            t.contains_key(field).then(|| (t, field.to_owned()))
        });
        match section {
            Some((t, field)) => {
                t.insert(field, value);
            }
            None => unknown.push(name),
        }
    }
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(
            unknown
                .into_iter()
                .map(|n| format!("{n} does not name a configuration field"))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn embedded_default_equals_the_struct_default() {
        let loaded = Config::load(None, Vec::new(), &Overrides::default()).unwrap();
        assert_eq!(loaded, Config::default());
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("chatd.toml");
        std::fs::write(
            &file,
            "shards = 3\n[limits]\nmax_body = 100\nmax_in_flight = 8\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env(&[
                ("CHATD_LIMITS_MAX_BODY", "200"),
                ("CHATD_LISTEN", "0.0.0.0:5000"),
                ("OTHER", "x"),
            ]),
            &Overrides {
                shards: Some(2),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.shards, 2);
        assert_eq!(config.limits.max_body, 200);
        assert_eq!(config.limits.max_in_flight, 8);
        assert_eq!(config.listen, "0.0.0.0:5000".parse().unwrap());
    }

    #[test]
    fn mistakes_are_reported_not_ignored() {
        let unknown_env = Config::load(
            None,
            env(&[("CHATD_LIMITS_MAX_BODDY", "1")]),
            &Overrides::default(),
        );
        assert!(
            unknown_env
                .unwrap_err()
                .to_string()
                .contains("CHATD_LIMITS_MAX_BODDY")
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("chatd.toml");
        std::fs::write(&file, "[limits]\nmax_bodyy = 1\n").unwrap();
        let err = Config::load(Some(&file), Vec::new(), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("max_bodyy"), "{err}");

        let bad = Config::load(
            None,
            env(&[
                ("CHATD_LIMITS_MAX_BODY", "100000"),
                ("CHATD_TLS_CERT", "/x.pem"),
                ("CHATD_LOG", "chatd=loud"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("max_body") && bad.contains("tls.cert") && bad.contains("log must be"),
            "{bad}"
        );
    }

    #[test]
    fn the_dedupe_window_holds_a_devices_unanswered_sends() {
        let config = Config::parse("a.toml", "[storage]\ndedupe_window = 64\n").unwrap();
        assert_eq!(config.storage.dedupe_window, 64);
        let err = Config::parse("b.toml", "[storage]\ndedupe_window = 63\n").unwrap_err();
        assert!(err.to_string().contains("dedupe_window"), "{err}");
        let err = Config::parse("c.toml", "[storage]\ndedupe_cache = 100\n").unwrap_err();
        assert!(err.to_string().contains("dedupe_cache"), "{err}");
        let err = Config::parse("d.toml", "[storage\n").unwrap_err();
        assert!(err.to_string().starts_with("d.toml: "), "{err}");
    }

    #[test]
    fn data_dir_falls_back_to_systemd_then_cwd() {
        let config = Config::default();
        assert_eq!(config.data_dir(None), PathBuf::from("chatd-data"));
        assert_eq!(
            config.data_dir(Some("/var/lib/chatd:/x")),
            PathBuf::from("/var/lib/chatd")
        );
        let set = Config {
            data_dir: "/srv/chat".into(),
            ..Config::default()
        };
        assert_eq!(
            set.data_dir(Some("/var/lib/chatd")),
            PathBuf::from("/srv/chat")
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let key = KeyConfig {
            id: "k".into(),
            secret: Secret::inline("ab".repeat(32)),
        };
        assert!(!format!("{key:?}").contains("abab"));
    }

    #[test]
    fn keys_and_the_broker_url_come_from_credentials() {
        let creds = tempfile::tempdir().unwrap();
        std::fs::write(
            creds.path().join("token-key"),
            format!("{}\n", "cd".repeat(32)),
        )
        .unwrap();
        std::fs::write(creds.path().join("amqp"), "amqp://u:p@127.0.0.1:5672/%2f").unwrap();
        let file = creds.path().join("chatd.toml");
        std::fs::write(
            &file,
            "[[auth.keys]]\nid = \"k1\"\nsecret = { credential = \"token-key\" }\n\
             [bridge]\namqp_url = { credential = \"amqp\" }\n",
        )
        .unwrap();
        let dir = creds.path().display().to_string();
        let config = Config::load(
            Some(&file),
            env(&[("CREDENTIALS_DIRECTORY", &dir)]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.auth.keys[0].secret.expose(), "cd".repeat(32));
        assert!(config.bridge.enabled());
        // Without systemd's variable the file is refused, naming the field and the cause.
        let err = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("auth.keys[0].secret") && text.contains("CREDENTIALS_DIRECTORY"),
            "{text}"
        );
        // A resolved secret is still validated: a short key is refused.
        std::fs::write(creds.path().join("token-key"), "abcd").unwrap();
        let err = Config::load(
            Some(&file),
            env(&[("CREDENTIALS_DIRECTORY", &dir)]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    }
}
