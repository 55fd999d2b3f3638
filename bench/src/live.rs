//! Live clients of a spawned `chatd` for the benchmarks that need a real daemon process
//! (its own resident memory, its own CPU): starting the binary on a temp dir and a free
//! port of 127.0.0.1, a minimal session on chat-protocol and quinn, tokens minted with the
//! daemon's generated secret, and the daemon's VmRSS.
//!
//! A benchmark harness: anything that fails aborts the run with its message, so it unwraps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_protocol::{
    Auth, ClientFrame, ConversationId, DeviceId, FrameDecoder, Hello, HistoryFrom, HistoryQuery,
    Order, Request, RequestId, Response, SUPPORTED_VERSIONS, ServerFrame, encode_frame_to_vec,
};

/// A `chatd` child process on a data dir (a temp dir unless given); killed when dropped.
pub struct Daemon {
    child: std::process::Child,
    command: std::process::Command,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// Its UDP address.
    pub addr: SocketAddr,
}

impl Daemon {
    /// Starts `chatd` on a temp dir with 2 shards, the benchmarks' lifted policy limits (send
    /// rate, the per-address and Retry thresholds: every client here is 127.0.0.1) and
    /// `env`, and waits until it answers.
    ///
    /// # Panics
    /// When it does not start within 30 s.
    pub async fn start(chatd: &Path, env: &[(&str, String)]) -> Daemon {
        let temp = tempfile::tempdir().unwrap();
        let mut daemon = Daemon::start_in(chatd, &temp.path().join("data"), env).await;
        daemon._temp = Some(temp);
        daemon
    }

    /// As [`Daemon::start`], on the data dir `dir` (kept when the daemon goes), with its
    /// standard error appended to `dir.log` beside it.
    ///
    /// # Panics
    /// When it does not start within 30 s.
    pub async fn start_in(chatd: &Path, dir: &Path, env: &[(&str, String)]) -> Daemon {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut command = std::process::Command::new(chatd);
        command
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
            .env("CHATD_LOG", "warn")
            .env("CHATD_ADMIN_LISTEN", "127.0.0.1:0")
            .env("CHATD_WEB_LISTEN", "127.0.0.1:0")
            .env("NO_COLOR", "1")
            .env("CHATD_LIMITS_SEND_RATE", "1000000")
            .env("CHATD_LIMITS_SEND_BURST", "1000000")
            .env("CHATD_LIMITS_MAX_CONNECTIONS_PER_ADDRESS", "1000000")
            .env("CHATD_LIMITS_RETRY_ABOVE", "1000000")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let child = spawn_logging(&mut command, dir);
        let mut daemon = Daemon {
            child,
            command,
            dir: dir.to_owned(),
            _temp: None,
            addr,
        };
        daemon.wait_ready().await;
        daemon
    }

    /// Waits until the daemon answers a QUIC handshake; returns how long that took.
    async fn wait_ready(&mut self) -> Duration {
        let started = Instant::now();
        while !self.dir.join("auth/secret").exists() || !self.cert().exists() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chatd did not start"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut probe = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        probe.set_default_client_config(client_config(&self.cert(), None));
        // A fresh attempt after a short wait, rather than QUIC's own retransmission of a lost
        // Initial (about 1 s): the time measured is the daemon's, not the probe's backoff.
        let mut patience = Duration::from_millis(20);
        loop {
            let attempt = tokio::time::timeout(patience, async {
                probe.connect(self.addr, "localhost").unwrap().await.is_ok()
            });
            if attempt.await == Ok(true) {
                return started.elapsed();
            }
            patience = (patience * 2).min(Duration::from_secs(2));
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chatd does not answer"
            );
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chatd exited with {status}; see {}", self.log().display());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Kills the process with SIGKILL, at once.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same command again (same data dir, same port) and waits until it answers;
    /// returns the time from the start of the process to its first completed handshake.
    ///
    /// # Panics
    /// When it does not come back within 30 s.
    pub async fn restart(&mut self) -> Duration {
        self.kill();
        self.child = spawn_logging(&mut self.command, &self.dir);
        self.wait_ready().await
    }

    /// Sends `signal` (a `kill -s` name such as `STOP` or `CONT`) to the process.
    ///
    /// # Panics
    /// When `kill` cannot be run.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// Where its standard error goes: beside the data dir, so a full data disk does not
    /// silence it.
    #[must_use]
    pub fn log(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    /// Its data dir.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its development certificate.
    #[must_use]
    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls/cert.pem")
    }

    /// A token for `user`, minted with its generated secret.
    ///
    /// # Panics
    /// When the secret cannot be read.
    #[must_use]
    pub fn token(&self, user: &str) -> String {
        let keys =
            chatd::token::Keys::load(&chatd::config::AuthConfig::default(), &self.dir).unwrap();
        let now = chatd::unix_now();
        keys.mint(user, now, now + 3600)
    }

    /// Its resident memory now, in bytes.
    #[must_use]
    pub fn rss(&self) -> usize {
        rss(self.pid())
    }

    /// Its process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `command` with its standard error appended to `dir.log`.
fn spawn_logging(command: &mut std::process::Command, dir: &Path) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))
        .unwrap();
    command.stderr(log).spawn().unwrap()
}

/// VmRSS of `pid` in bytes.
///
/// # Panics
/// When /proc has no such process.
pub fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// The QUIC client configuration trusting `cert`, with a receive window of `window` bytes
/// when given (a small one makes a client that reads slowly).
///
/// # Panics
/// When the certificate cannot be read.
pub fn client_config(cert: &Path, window: Option<u32>) -> quinn::ClientConfig {
    let mut config =
        chat_sdk::quic_client_config(&chat_sdk::Trust::CaFile(cert.to_owned())).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(120).try_into().unwrap()));
    if let Some(window) = window {
        transport
            .stream_receive_window(window.into())
            .receive_window(window.into());
    }
    config.transport_config(Arc::new(transport));
    config
}

/// One session: its streams and a decoder for the answers it does read.
pub struct Session {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder<ServerFrame>,
}

impl Session {
    /// Connects and says hello with `token` as device `device`.
    ///
    /// # Panics
    /// When the connection or the token fails.
    pub async fn open(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        token: &str,
        device: u64,
    ) -> Session {
        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut session = Session {
            conn,
            send,
            recv,
            decoder: FrameDecoder::new(),
        };
        session
            .write(&ClientFrame::Hello(Hello {
                versions: SUPPORTED_VERSIONS,
                client: "nonreader".into(),
                device: DeviceId(device),
                auth: Some(Auth {
                    token: token.to_owned(),
                    resume: None,
                }),
            }))
            .await;
        loop {
            if let ServerFrame::HelloOk(ok) = session.next().await {
                assert!(ok.session.is_some(), "the token was refused");
                return session;
            }
        }
    }

    /// Writes `n` history requests for the room's first 100 entries (its creation and 99
    /// full messages; the newest entries are the joins of the clients), without waiting.
    pub async fn pipeline_pages(&mut self, conversation: ConversationId, n: u32) {
        for id in 0..n {
            let request = Request::History(HistoryQuery {
                conversation,
                from: HistoryFrom::After(chat_protocol::Seq(0)),
                limit: 100,
                order: Order::OldestFirst,
                thread: None,
            });
            self.write(&ClientFrame::Request {
                id: RequestId(100 + id),
                request,
            })
            .await;
        }
    }

    /// Writes one frame.
    ///
    /// # Panics
    /// When the stream is closed.
    pub async fn write(&mut self, frame: &ClientFrame) {
        self.send
            .write_all(&encode_frame_to_vec(frame).unwrap())
            .await
            .unwrap();
    }

    /// The next frame.
    ///
    /// # Panics
    /// When the stream ends or a frame does not decode.
    pub async fn next(&mut self) -> ServerFrame {
        loop {
            if let Some(frame) = self.decoder.next_frame().unwrap() {
                return frame;
            }
            let chunk = self
                .recv
                .read_chunk(self.decoder.space(), true)
                .await
                .unwrap()
                .expect("stream open");
            self.decoder.push(&chunk.bytes).unwrap();
        }
    }

    /// Sends a request and waits for its answer (other frames are skipped).
    ///
    /// # Errors
    /// The daemon's error, as text.
    pub async fn request(&mut self, id: u32, request: Request) -> Result<Response, String> {
        self.write(&ClientFrame::Request {
            id: RequestId(id),
            request,
        })
        .await;
        loop {
            match self.next().await {
                ServerFrame::Response { id: got, response } if got.0 == id => return Ok(response),
                ServerFrame::Error {
                    id: Some(got),
                    error,
                } if got.0 == id => {
                    return Err(format!("{error:?}"));
                }
                _ => {}
            }
        }
    }
}
