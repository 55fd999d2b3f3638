//! chat-sdk's integration test binary: the SDK and the `chat` CLI against a real daemon
//! (QUIC + TLS on 127.0.0.1, RocksDB in a temp dir, two shards).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod cli;
mod reconnect;
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
        let daemon =
            chatd::Daemon::start(config(dir.path(), "127.0.0.1:0".parse().unwrap())).unwrap();
        TestDaemon {
            addr: daemon.local_addr(),
            cert: daemon.cert_path().to_owned(),
            daemon: Some(daemon),
            dir,
        }
    }

    /// Stops the daemon gracefully (clients get a goodbye), then starts it again on the same
    /// data and address.
    pub fn restart(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop();
        }
        let daemon = chatd::Daemon::start(config(self.dir.path(), self.addr)).unwrap();
        assert_eq!(daemon.local_addr(), self.addr);
        self.daemon = Some(daemon);
    }

    pub fn options(&self) -> Options {
        Options::new(self.addr.to_string(), Trust::CaFile(self.cert.clone()))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn config(dir: &Path, listen: std::net::SocketAddr) -> chatd::config::Config {
    let mut config = chatd::config::Config {
        data_dir: dir.to_owned(),
        shards: 2,
        listen,
        ..Default::default()
    };
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop_fast();
        }
    }
}
