//! Configuration: one serde struct with defaults, read from the embedded `chatd.toml`, an
//! optional file, `CHATD_*` environment variables and command-line flags, in that order of
//! precedence (later wins), and validated before any port is bound.
//!
//! `Config::load` does the layering; `Config::validate` checks every rule and reports all
//! problems at once. `main.rs` exits with code 64 (EX_USAGE) when either fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod cluster;
mod secret;
mod validate;

pub use cluster::ClusterConfig;
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
    /// Browsers: WebTransport on the QUIC endpoint, and the web listener.
    pub web: WebConfig,
    /// Several nodes behind one load balancer: routable connection ids, a shared secret.
    pub cluster: ClusterConfig,
}

/// `[web]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Whether the QUIC endpoint also takes WebTransport sessions (ALPN `h3`, path
    /// `/chat/1`).
    pub webtransport: bool,
    /// Whether the web listener runs.
    pub enabled: bool,
    /// TCP address of the web listener (HTTP/1.1): the web app and `/webtransport.json`.
    pub listen: SocketAddr,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            webtransport: true,
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
        }
    }
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
    /// `application/x-chatd-event+bincode; v=2`: `chat_protocol::events::EventRecord`.
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
    /// Op ids a conversation holds in memory for its recent senders' whole windows; beyond
    /// it the least recently active senders keep seqs and fingerprints (half an op id each),
    /// then are dropped and read back from disk when they send again.
    pub dedupe_cache: usize,
    /// Conversations a shard keeps in memory; idle ones beyond this are dropped and reloaded
    /// from disk when next used.
    pub cached_conversations: usize,
    /// Obsolete WAL files kept to be written over (0: every WAL is a new, growing file).
    pub recycled_wals: usize,
    /// The live WALs' total size in bytes past which RocksDB flushes the column families
    /// holding the oldest: bounds the WAL's disk space and what a start replays.
    pub max_wal_bytes: u64,
}

impl StorageConfig {
    /// How the store keeps its WAL.
    #[must_use]
    pub fn wal(&self) -> crate::store::WalOptions {
        crate::store::WalOptions {
            recycled: self.recycled_wals,
            max_bytes: self.max_wal_bytes,
        }
    }
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
            web: WebConfig::default(),
            cluster: ClusterConfig::default(),
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
            dedupe_cache: 2_048,
            cached_conversations: 100_000,
            recycled_wals: crate::store::WalOptions::default().recycled,
            max_wal_bytes: crate::store::WalOptions::default().max_bytes,
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
        if let Err(e) = self.cluster.secret.resolve(env) {
            problems.push(format!("cluster.secret: {e}"));
        }
        if let Err(e) = self.cluster.accepted_secret.resolve(env) {
            problems.push(format!("cluster.accepted_secret: {e}"));
        }
        if let Err(e) = self.cluster.etcd_password.resolve(env) {
            problems.push(format!("cluster.etcd_password: {e}"));
        }
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
mod tests;
