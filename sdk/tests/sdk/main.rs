//! chat-sdk's integration test binary: the SDK and the `chat` CLI against a real daemon
//! (QUIC + TLS on 127.0.0.1, RocksDB in a temp dir, two shards).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod cli;
mod reconnect;
mod round_trip;

use std::path::Path;

use chat_sdk::{Options, Trust};

pub use chatd_testkit::TestDaemon;

/// What the SDK's tests ask of the test daemon beyond the testkit.
pub trait SdkDaemon {
    /// Client options that reach this daemon and trust its certificate.
    fn options(&self) -> Options;
    /// Its data directory.
    fn path(&self) -> &Path;
}

impl SdkDaemon for TestDaemon {
    fn options(&self) -> Options {
        Options::new(self.addr.to_string(), Trust::CaFile(self.cert.clone()))
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}
