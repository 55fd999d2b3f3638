//! The load generator's command line: what to simulate, against what, how hard and how long.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// What the simulated clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Pairs of users in direct conversations; both of each pair send.
    Dm,
    /// Rooms of `--room-size` members; every member sends.
    Rooms,
    /// `--rooms` large rooms of `--room-size` members; `--senders` of each send.
    Fanout,
    /// Hold `--clients` authenticated connections, send nothing, and report the server's
    /// memory per connection (needs `--server-pid`).
    Idle,
    /// Rooms as in `rooms`, while `--churn-rate` clients per second disconnect and resume;
    /// the checker proves nothing is missing afterwards.
    Churn,
}

/// What answers on `--server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// chatd: tokens, rooms, sequence numbers; the checker runs.
    Chatd,
    /// The bare QUIC relay of bench/ (`relay`): no auth, no storage, no sequence numbers,
    /// so latencies and rates are measured and the checker does not run.
    Floor,
}

/// chat-loadgen: open-loop load against chatd (or the bench relay) with HdrHistogram
/// latencies and a built-in correctness check. Exits 1 when the checker finds a lost,
/// duplicated or reordered message, 2 on bad options, 3 when the run cannot be set up.
#[derive(Clone, Debug, Parser, serde::Serialize)]
#[command(name = "chat-loadgen", version)]
pub struct Options {
    /// The scenario.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// The server's UDP address. Only loopback addresses are accepted: load tests stay on
    /// this machine.
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub server: SocketAddr,

    /// chatd, or the bench relay (the floor).
    #[arg(long, value_enum, default_value = "chatd")]
    pub target: Target,

    /// PEM certificate to trust (chatd's `DATA_DIR/tls/cert.pem`).
    #[arg(long, default_value = "chatd-data/tls/cert.pem")]
    pub ca: PathBuf,

    /// The name the certificate is checked against.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,

    /// File holding the token secret as hex (chatd's `DATA_DIR/auth/secret`): users get
    /// minted tokens. Without it (and without `--token-secret`) users register with a
    /// password, which costs the daemon an argon2 hash each.
    #[arg(long)]
    pub token_secret_file: Option<PathBuf>,

    /// The token secret as hex (instead of a file).
    #[arg(long, env = "CHAT_LOADGEN_TOKEN_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub token_secret: Option<String>,

    /// Key id of the token secret (`local` for chatd's generated one).
    #[arg(long, default_value = "local")]
    pub token_key_id: String,

    /// Simulated clients (one user and one connection each).
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,

    /// Members per room (`rooms`, `fanout`, `churn`).
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,

    /// Rooms (`fanout`; the other room scenarios have clients / room size).
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,

    /// Senders per room (`fanout`).
    #[arg(long, default_value_t = 1)]
    pub senders: usize,

    /// Offered load: messages per second, all senders together, on a fixed schedule.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,

    /// Message body size in bytes (at least 16).
    #[arg(long, default_value_t = 100)]
    pub size: usize,

    /// Seconds over which the connections are opened.
    #[arg(long, default_value_t = 2.0)]
    pub ramp_up: f64,

    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warm_up: f64,

    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds to wait after the last send for acks and deliveries still on their way.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,

    /// Client threads, each with its own QUIC endpoint.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,

    /// UDP sockets (quinn endpoints) per client thread. The server's SO_REUSEPORT picks a
    /// shard by source address: with few sockets, most connections can land on one shard,
    /// which real clients, each on its own address, never do.
    #[arg(long, default_value_t = 16)]
    pub sockets_per_thread: usize,

    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 256)]
    pub handshake_concurrency: usize,

    /// Reconnects per second (`churn`).
    #[arg(long, default_value_t = 5.0)]
    pub churn_rate: f64,

    /// Milliseconds a churned client stays away before it resumes.
    #[arg(long, default_value_t = 200)]
    pub churn_pause_ms: u64,

    /// The server's process id: its memory (idle) and CPU time per delivered message are
    /// read from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Write the results as JSON here, and each latency's HdrHistogram percentile
    /// distribution beside it (`NAME.hgrm`).
    #[arg(long)]
    pub json_out: Option<PathBuf>,

    /// Step the rate up from `--rate` until p99 send-to-delivery latency exceeds
    /// `--max-p99-ms` or anything fails; report the highest sustainable rate.
    #[arg(long)]
    pub find_max: bool,

    /// The latency bound of `--find-max`, in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    pub max_p99_ms: f64,

    /// Rate multiplier between `--find-max` steps.
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,

    /// How many times `--find-max` measures a rate again when its step failed on the
    /// latency bound alone (a single stall decides a short window's p99); the last attempt
    /// decides. Failures of any other kind are never repeated.
    #[arg(long, default_value_t = 1)]
    pub latency_retries: u32,

    /// Most `--find-max` steps, the bisection between the last good and the first bad rate and
    /// the latency repeats included.
    #[arg(long, default_value_t = 14)]
    pub max_steps: u32,

    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// Why the options cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OptionsError(pub String);

impl Options {
    /// Checks the combination of options.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let fail = |m: &str| Err(OptionsError(m.into()));
        if !self.server.ip().is_loopback() {
            return fail("--server: load tests only target loopback addresses (127.0.0.1)");
        }
        if self.clients == 0 || self.threads == 0 || self.handshake_concurrency == 0 {
            return fail("--clients, --threads and --handshake-concurrency must be at least 1");
        }
        if self.clients > u32::MAX as usize / 2 {
            return fail("--clients: too many");
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return fail("--rate must be a positive number");
        }
        if !(16..=chat_protocol::limits::MAX_BODY).contains(&self.size) {
            return fail("--size: 16 to 16384 bytes");
        }
        for (name, value) in [
            ("--ramp-up", self.ramp_up),
            ("--warm-up", self.warm_up),
            ("--duration", self.duration),
            ("--drain", self.drain),
        ] {
            if !(0.0..86_400.0).contains(&value) {
                return Err(OptionsError(format!("{name}: 0 to 86400 seconds")));
            }
        }
        if self.duration <= 0.0 {
            return fail("--duration must be positive");
        }
        match self.scenario {
            Scenario::Dm if self.clients < 2 => return fail("dm: at least 2 clients"),
            Scenario::Rooms | Scenario::Churn if self.room_size < 2 => {
                return fail("--room-size: at least 2");
            }
            Scenario::Rooms | Scenario::Churn if self.clients < self.room_size => {
                return fail("--clients: at least one room's worth (--room-size)");
            }
            Scenario::Fanout if self.room_size < 2 || self.rooms == 0 => {
                return fail("fanout: --room-size of at least 2 and at least one room");
            }
            Scenario::Fanout if self.senders == 0 || self.senders > self.room_size => {
                return fail("fanout: --senders between 1 and --room-size");
            }
            Scenario::Churn if self.target == Target::Floor => {
                return fail("churn needs chatd: the floor keeps nothing to resume from");
            }
            Scenario::Churn if !(self.churn_rate > 0.0 && self.churn_rate.is_finite()) => {
                return fail("--churn-rate must be positive");
            }
            _ => {}
        }
        if self.find_max
            && (self.scenario == Scenario::Idle
                || !(self.step_factor > 1.0 && self.step_factor.is_finite())
                || self.max_p99_ms <= 0.0)
        {
            return fail("--find-max: not with idle; --step-factor above 1; --max-p99-ms positive");
        }
        Ok(())
    }

    /// How many clients the scenario uses (fanout: rooms times room size).
    #[must_use]
    pub fn client_count(&self) -> usize {
        match self.scenario {
            Scenario::Fanout => self.rooms * self.room_size,
            Scenario::Dm => self.clients / 2 * 2,
            Scenario::Rooms | Scenario::Churn => self.clients / self.room_size * self.room_size,
            Scenario::Idle => self.clients,
        }
    }
}
