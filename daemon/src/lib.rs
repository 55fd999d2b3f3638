//! # chatd — the chat daemon
//!
//! Will hold the server: one pinned `shard-N` thread per core, each with a tokio-uring
//! runtime and a quinn endpoint on the shared UDP port (SO_REUSEPORT); conversations and
//! connection registries owned by exactly one shard; crossbeam queues between shards; a
//! storage thread that group-commits RocksDB write batches; the outbox and its AMQP bridge.
//! `main.rs` only wires; tests drive the library entry `run(config, shutdown)`.
//!
//! Today it holds only what the daemon announces about itself: the wire protocol it speaks
//! comes from `chat-protocol`. The server arrives with the daemon core issue (see README).

#![forbid(unsafe_code)]

/// The daemon's name and version as sent in `HelloOk::server`.
pub const SERVER_NAME: &str = concat!("chatd/", env!("CARGO_PKG_VERSION"));

/// The protocol versions this daemon speaks.
pub const PROTOCOL_VERSIONS: chat_protocol::VersionRange = chat_protocol::SUPPORTED_VERSIONS;
