//! # chatd — the chat daemon
//!
//! The server, as a library: `main.rs` only parses flags and wires these pieces, and tests
//! drive the same entry points.
//!
//! - [`config`]: the one configuration struct, its embedded commented default, layering of
//!   file, `CHATD_*` environment and flags, and validation before anything is bound.
//! - [`token`]: HS256 JWT access tokens, minted and verified with the configured keys.
//! - [`tls`]: the certificate (configured, or a generated development one, and the
//!   short-lived one browsers get) and the rustls server configuration (TLS 1.3, ALPN
//!   `chat/1` and `h3`, ring).
//!
//! - [`server`]: [`Daemon::start`] binds the port and starts the `shard-N` threads (one
//!   pinned thread per core with its own runtime and quinn endpoint), the storage thread
//!   and the read pools; [`Daemon::reload`] applies a new configuration; [`run`] is the
//!   whole lifecycle (start, reloads, drain, stop) driven by [`Command`]s, as `chatd run`
//!   drives it from signals.
//! - [`reload`]: which fields a reload applies and which wait for a restart.
//! - [`guard`]: the data directory lock and the check that no other process shares the port.
//! - [`logging`]: the subscriber (text or JSON, colour only on a terminal, a reloadable
//!   filter) and the throttle for repeated errors.
//! - [`store`]: RocksDB, its column families and the group-committing writer.
//! - [`bridge`]: the outbox's publisher to RabbitMQ.
//! - [`cluster`]: partition ownership through etcd for a cluster of nodes (leases,
//!   rendezvous assignment, hand-over); the daemon does not run it yet (docs/SCALING.md).
//! - [`metrics`]: the Prometheus metrics; `admin`: the admin listener (HTTP on TCP) that
//!   serves them, `/healthz`, `/readyz` and the API of `chatd admin`; `web`: the web
//!   listener for browsers (the web app, `/webtransport.json`); `http`: what both listeners
//!   share.
//!
//! Memory is budgeted in bytes per connection, per user and for the whole daemon
//! (`budget`, configured in `[limits]`).

#![forbid(unsafe_code)]
#![allow(unreachable_pub)] // crate-private modules keep `pub(crate)`-style `pub` items

pub mod admin;
pub mod backup;
pub mod bridge;
mod budget;
pub mod cluster;
pub mod config;
mod fsutil;
pub mod guard;
mod http;
mod inbox;
pub mod logging;
pub mod metrics;
mod peer;
mod pool;
pub mod reload;
mod runtime;
pub mod server;
mod shard;
pub mod store;
pub mod tls;
pub mod token;
mod web;

pub use server::{Command, Daemon, Reloaded, Stop, run};

/// The daemon's name and version as sent in `HelloOk::server`.
pub const SERVER_NAME: &str = concat!("chatd/", env!("CARGO_PKG_VERSION"));

/// The protocol versions this daemon speaks.
pub const PROTOCOL_VERSIONS: chat_protocol::VersionRange = chat_protocol::SUPPORTED_VERSIONS;

/// Seconds since the Unix epoch, by the system clock.
#[must_use]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
