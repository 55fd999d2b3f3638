//! # chat-loadgen — load generator and correctness checker
//!
//! Will hold the open-loop load generator (`dm`, `rooms`, `fanout`, `idle`, `churn`
//! scenarios; sends scheduled at the target rate and latency measured from the scheduled
//! time; HdrHistogram percentiles) and the checker that proves every acked message reached
//! every online member exactly once and in order. Its binary arrives with the load-generator
//! issue; nothing of it exists yet.

#![forbid(unsafe_code)]
