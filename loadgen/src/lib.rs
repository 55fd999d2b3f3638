//! # chat-loadgen — load generator and correctness checker
//!
//! Drives thousands of QUIC connections against chatd (or the bare relay of `bench/`, the
//! floor) from one process and reports what a user of the daemon would see:
//!
//! - **scenarios** ([`options::Scenario`]): `dm`, `rooms`, `fanout`, `idle` (memory per
//!   connection), `churn` (disconnect and resume while messages flow); bench/'s standard
//!   ones are presets ([`options::Preset`]: `--preset dm|rooms10|rooms100|fanout1000|idle10k`),
//!   each defined once here with its sizes, rates and timing;
//! - **open-loop load**: sends are scheduled at the target aggregate rate whatever the server
//!   does, and every latency is measured from the scheduled time, so a stalled server shows
//!   as latency instead of hiding behind a slower generator (no coordinated omission);
//! - **HdrHistogram** latencies: handshake, send to ack, send to delivery at each recipient;
//!   throughput of sends, acks and deliveries; errors by wire code;
//! - **correctness** ([`check`]): every acknowledged message reaches every member exactly
//!   once, in sequence order, also across reconnects;
//! - **`--find-max`**: steps the rate up until p99 delivery latency passes a bound or anything
//!   fails, then bisects, and reports the highest sustainable rate.
//!
//! Users are created by the tool: tokens minted with the daemon's secret
//! (`--token-secret-file`), or registration with a password. Drive it with [`run`] (from a
//! tokio runtime) and print [`Summary::table`]; the `chat-loadgen` binary does exactly that.
//!
//! Not here: remote targets (loopback only, by design) and message kinds other than text
//! sends (typing, receipts, presence are not generated).

#![forbid(unsafe_code)]

pub mod check;
mod client;
mod metrics;
pub mod options;
mod peer;
mod plan;
mod procfs;
pub mod report;
mod runner;
mod search;
mod ticker;

pub use options::{Options, Preset, Scenario, Target};
pub use report::Summary;
pub use runner::{Error, run};
