//! A real chatd for integration tests: on a temp data directory, two shards, QUIC on a free
//! port of 127.0.0.1, the admin listener on another, stopped when dropped. The one
//! `TestDaemon` of the daemon's and the SDK's integration tests (the load generator's and the
//! benchmarks' start the `chatd` binary, `chat_bench::live::Daemon`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chatd::Daemon;
use chatd::config::Config;

/// The configuration tests start from: `dir` as data directory, 2 shards, both listeners on
/// free loopback ports, a 5 s shutdown grace.
#[must_use]
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_owned(),
        shards: 2,
        ..Config::default()
    };
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.web.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.shutdown_grace_secs = 5;
    config
}

/// A daemon on a temp dir (or a given one), stopped (fast) when dropped.
pub struct TestDaemon {
    daemon: Option<Daemon>,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its (generated development) certificate, for clients to trust.
    pub cert: PathBuf,
    /// Its data directory.
    pub dir: PathBuf,
    config: Config,
    _temp: Option<tempfile::TempDir>,
}

impl TestDaemon {
    /// A daemon on a new temp dir with [`test_config`].
    ///
    /// # Panics
    /// When it cannot start.
    #[must_use]
    pub fn start() -> TestDaemon {
        TestDaemon::start_with(|_| {})
    }

    /// A daemon on a new temp dir with [`test_config`] changed by `change`.
    ///
    /// # Panics
    /// When it cannot start.
    #[must_use]
    pub fn start_with(change: impl FnOnce(&mut Config)) -> TestDaemon {
        #[allow(clippy::expect_used)] // a test fixture
        let temp = tempfile::tempdir().expect("a temp dir");
        let mut config = test_config(temp.path());
        change(&mut config);
        let mut daemon = TestDaemon::start_in(temp.path(), config);
        daemon._temp = Some(temp);
        daemon
    }

    /// A daemon on `dir` (kept when it stops) with `config`.
    ///
    /// # Panics
    /// When it cannot start.
    #[must_use]
    pub fn start_in(dir: &Path, config: Config) -> TestDaemon {
        #[allow(clippy::expect_used)] // a test fixture
        let daemon = Daemon::start(config.clone()).expect("the test daemon starts");
        TestDaemon {
            addr: daemon.local_addr(),
            cert: daemon.cert_path().to_owned(),
            daemon: Some(daemon),
            dir: dir.to_owned(),
            config,
            _temp: None,
        }
    }

    /// The running daemon.
    ///
    /// # Panics
    /// After [`TestDaemon::stop`].
    #[must_use]
    pub fn daemon(&self) -> &Daemon {
        #[allow(clippy::expect_used)] // a test fixture
        self.daemon.as_ref().expect("the test daemon runs")
    }

    /// A token for `user`, minted with the daemon's own local secret, valid for an hour.
    ///
    /// # Panics
    /// When the secret cannot be read.
    #[must_use]
    pub fn token(&self, user: &str) -> String {
        #[allow(clippy::expect_used)] // a test fixture
        let keys = chatd::token::Keys::load(&chatd::config::AuthConfig::default(), &self.dir)
            .expect("the daemon's token secret");
        let now = chatd::unix_now();
        keys.mint(user, now, now + 3600)
    }

    /// The admin listener's address.
    ///
    /// # Panics
    /// When the admin listener is off.
    #[must_use]
    pub fn admin_addr(&self) -> SocketAddr {
        #[allow(clippy::expect_used)] // a test fixture
        self.daemon()
            .admin_addr()
            .expect("the admin listener is on")
    }

    /// The web listener's address.
    ///
    /// # Panics
    /// When the web listener is off.
    #[must_use]
    pub fn web_addr(&self) -> SocketAddr {
        #[allow(clippy::expect_used)] // a test fixture
        self.daemon().web_addr().expect("the web listener is on")
    }

    /// Open connections per shard.
    #[must_use]
    pub fn connections_per_shard(&self) -> Vec<usize> {
        self.daemon().connections_per_shard()
    }

    /// The outbox's newest event seq.
    #[must_use]
    pub fn outbox_head(&self) -> u64 {
        self.daemon().outbox_head()
    }

    /// How many times the bridge connected to the broker.
    #[must_use]
    pub fn bridge_connections(&self) -> u64 {
        let stats = self.daemon().bridge_stats();
        stats.connections.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the bridge is connected to the broker.
    #[must_use]
    pub fn bridge_connected(&self) -> bool {
        self.daemon().bridge_stats().connected()
    }

    /// The admission counters.
    #[must_use]
    pub fn admission(&self) -> chatd::server::Admission {
        self.daemon().admission()
    }

    /// The memory budget's use.
    #[must_use]
    pub fn memory(&self) -> chatd::server::MemoryUse {
        self.daemon().memory()
    }

    /// The shard runtime in use.
    #[must_use]
    pub fn runtime(&self) -> &'static str {
        self.daemon().runtime()
    }

    /// The most events ever queued for one connection.
    #[must_use]
    pub fn event_queue_peak(&self) -> usize {
        self.daemon().event_queue_peak()
    }

    /// Stops the daemon gracefully (blocking; within a multi-threaded tokio runtime, it
    /// blocks in place).
    pub fn stop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle)
                    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
                {
                    tokio::task::block_in_place(|| daemon.stop());
                }
                _ => daemon.stop(),
            }
        }
    }

    /// Stops the daemon gracefully (clients get a goodbye) and starts it again on the same
    /// data and address.
    ///
    /// # Panics
    /// When it cannot start again, or not on the same address.
    pub fn restart(&mut self) {
        self.stop();
        let mut config = self.config.clone();
        config.listen = self.addr;
        #[allow(clippy::expect_used)] // a test fixture
        let daemon = Daemon::start(config).expect("the test daemon starts again");
        assert_eq!(
            daemon.local_addr(),
            self.addr,
            "restarted on the same address"
        );
        self.daemon = Some(daemon);
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            // The test binary may exit right after: the database must be closed by then.
            daemon.stop_fast_and_close();
        }
    }
}

/// A tmpfs mounted on a new directory, for tests that fill a disk; unmounted (and the
/// directory removed) when dropped. Mounting needs root.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB.
    ///
    /// # Panics
    /// When the mount fails (not root).
    #[must_use]
    pub fn mount(mib: u64) -> Tmpfs {
        #[allow(clippy::expect_used)] // a test fixture
        let dir = tempfile::tempdir().expect("a temp dir").keep();
        let mut mount = std::process::Command::new("mount");
        mount
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir);
        #[allow(clippy::expect_used)] // a test fixture
        let status = mount.status().expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs failed: filling a disk needs root"
        );
        Tmpfs(dir)
    }

    /// Where it is mounted.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the filesystem of `dir` with a file of zeros until it is full; returns its path
/// (removing it gives the space back).
///
/// # Panics
/// When the file cannot be created.
#[must_use]
pub fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    #[allow(clippy::expect_used)] // a test fixture
    let mut file = std::fs::File::create(&path).expect("the filler file");
    let chunk = vec![0u8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}
