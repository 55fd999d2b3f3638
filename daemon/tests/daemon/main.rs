//! chatd's integration test binary: real daemons (real QUIC with TLS on 127.0.0.1, RocksDB in
//! a temp dir, two shards) driven by a frame-level client.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod admin;
mod auth;
mod authz;
mod bridge;
mod client;
mod conversations;
mod history;
mod lifecycle;
mod limits;
mod operations;
mod presence;
mod receipts;
mod resume;
mod robustness;
mod typing;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chatd::config::Config;

/// A daemon on a temp dir, stopped when dropped.
pub struct TestDaemon {
    daemon: Option<chatd::Daemon>,
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

pub fn test_config(dir: &Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_owned(),
        shards: 2,
        ..Config::default()
    };
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.shutdown_grace_secs = 5;
    config
}

impl TestDaemon {
    pub fn start() -> TestDaemon {
        TestDaemon::start_with(|_| {})
    }

    /// A daemon on a temp dir with the test configuration changed by `change`.
    pub fn start_with(change: impl FnOnce(&mut Config)) -> TestDaemon {
        let temp = tempfile::tempdir().unwrap();
        let mut config = test_config(temp.path());
        change(&mut config);
        let mut daemon = TestDaemon::start_in(temp.path(), config);
        daemon._temp = Some(temp);
        daemon
    }

    pub fn start_in(dir: &Path, config: Config) -> TestDaemon {
        let daemon = chatd::Daemon::start(config).unwrap();
        TestDaemon {
            addr: daemon.local_addr(),
            cert: daemon.cert_path().to_owned(),
            daemon: Some(daemon),
            dir: dir.to_owned(),
            _temp: None,
        }
    }

    /// A token for `user`, minted with the daemon's own local secret.
    pub fn token(&self, user: &str) -> String {
        let keys =
            chatd::token::Keys::load(&chatd::config::AuthConfig::default(), &self.dir).unwrap();
        let now = chatd::unix_now();
        keys.mint(user, now, now + 3600)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.daemon.as_ref().unwrap().admin_addr().unwrap()
    }

    pub fn connections_per_shard(&self) -> Vec<usize> {
        self.daemon.as_ref().unwrap().connections_per_shard()
    }

    pub fn outbox_head(&self) -> u64 {
        self.daemon.as_ref().unwrap().outbox_head()
    }

    pub fn bridge_connections(&self) -> u64 {
        self.daemon
            .as_ref()
            .unwrap()
            .bridge_stats()
            .connections
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn bridge_connected(&self) -> bool {
        self.daemon
            .as_ref()
            .unwrap()
            .bridge_stats()
            .connected
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn admission(&self) -> chatd::server::Admission {
        self.daemon.as_ref().unwrap().admission()
    }

    pub fn memory(&self) -> chatd::server::MemoryUse {
        self.daemon.as_ref().unwrap().memory()
    }

    pub fn runtime(&self) -> &'static str {
        self.daemon.as_ref().unwrap().runtime()
    }

    pub fn event_queue_peak(&self) -> usize {
        self.daemon.as_ref().unwrap().event_queue_peak()
    }

    /// Stops the daemon gracefully (blocking).
    pub fn stop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            tokio::task::block_in_place(|| daemon.stop());
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop_fast();
        }
    }
}

/// Starts the `chatd` binary on `dir`, on a free UDP port of 127.0.0.1 with 2 shards, with
/// extra environment `env`; returns the child and its address. Output is discarded.
pub fn spawn_chatd(dir: &Path, env: &[(&str, &str)]) -> (std::process::Child, SocketAddr) {
    let port = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    (spawn_chatd_at(dir, addr, env), addr)
}

/// Like `spawn_chatd`, on a given address (a restart on the same port).
pub fn spawn_chatd_at(dir: &Path, addr: SocketAddr, env: &[(&str, &str)]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args([
            "run",
            "--listen",
            &addr.to_string(),
            "--shards",
            "2",
            "--data-dir",
        ])
        .arg(dir)
        .env_remove("RUST_LOG")
        .env("CHATD_ADMIN_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}
