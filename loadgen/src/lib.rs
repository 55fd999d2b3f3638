//! # chat-loadgen — load generator and correctness checker
//!
//! The checker that proves every acked message reached every online member exactly once and
//! in order is here ([`check`]). Still to come: the open-loop load generator (`dm`, `rooms`,
//! `fanout`, `idle`, `churn` scenarios; sends scheduled at the target rate and latency
//! measured from the scheduled time; HdrHistogram percentiles) and its binary.

#![forbid(unsafe_code)]

pub mod check;
