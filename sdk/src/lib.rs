//! # chat-sdk — the Rust client for chatd
//!
//! Will hold the async client (tokio + quinn on `chat-protocol`): connecting with a trust
//! choice, register / login / hello, one typed method per request, a stream of typed events,
//! reconnect with backoff and gapless resume from persisted cursors, typing over datagrams;
//! and the `chat` command-line client built on it. Nothing of that exists yet; the wire types
//! are re-exported so that dependants already name them through the SDK.

#![forbid(unsafe_code)]

pub use chat_protocol as protocol;
