//! chat-sdk's integration test binary: the SDK and the `chat` CLI against a real daemon
//! (QUIC + TLS on 127.0.0.1, RocksDB in a temp dir, two shards).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod cli;
mod round_trip;

use std::path::{Path, PathBuf};

use chat_sdk::{Options, Trust};

/// A daemon on a temp dir.
pub struct TestDaemon {
    daemon: Option<chatd::Daemon>,
    pub addr: std::net::SocketAddr,
    pub cert: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestDaemon {
    pub fn start() -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        let mut config = chatd::config::Config {
            data_dir: dir.path().to_owned(),
            shards: 2,
            ..Default::default()
        };
        config.listen = "127.0.0.1:0".parse().unwrap();
        let daemon = chatd::Daemon::start(config).unwrap();
        TestDaemon {
            addr: daemon.local_addr(),
            cert: daemon.cert_path().to_owned(),
            daemon: Some(daemon),
            dir,
        }
    }

    pub fn options(&self) -> Options {
        Options::new(self.addr.to_string(), Trust::CaFile(self.cert.clone()))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop_fast();
        }
    }
}
