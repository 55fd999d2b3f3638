//! The load generator's command line: what to simulate, against what, how hard and how long.
//!
//! The standard scenarios of bench/ are presets ([`Preset`]): `--preset rooms10` stands for
//! the shape, its sizes, the rates and the timing that bench/ measures it with, defined here
//! once. Parse with [`Options::from_command_line`] or [`Options::try_from_args`], which apply
//! the preset under whatever the command line gives explicitly; clap's own `parse` leaves a
//! preset unapplied (and [`Options::validate`] refuses it).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};

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
    /// A NATS server, core publish/subscribe (a subject per conversation; nothing stored,
    /// nothing acknowledged: a send counts as acknowledged once written).
    Nats,
    /// A NATS server with JetStream: one file stream over the run's subjects, every publish
    /// acknowledged by the server once stored; members receive on core subscriptions.
    Jetstream,
    /// An MQTT 5 broker (Mosquitto): a topic per conversation, `--qos` 0 or 1.
    Mqtt,
}

impl Target {
    /// A message broker the load generator compares chatd with ([`crate::peer`]), as
    /// opposed to chatd and the floor, which speak chatd's protocol over QUIC.
    #[must_use]
    pub fn is_peer(self) -> bool {
        matches!(self, Target::Nats | Target::Jetstream | Target::Mqtt)
    }

    /// Whether the checker runs: everything but the floor numbers its messages (chatd by
    /// sequence, the peers by sender).
    #[must_use]
    pub fn is_checked(self) -> bool {
        self != Target::Floor
    }
}

/// A standard scenario of bench/ (bench/run.sh, profile.sh, hops.sh and the others name these):
/// a [`Scenario`] with its sizes, and the rates and timing it is measured with
/// ([`Preset::values`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[value(rename_all = "lower")]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// dm: 500 pairs, both send.
    Dm,
    /// Rooms of 10 (100 rooms), every member sends.
    Rooms10,
    /// Rooms of 100 (10 rooms), every member sends.
    Rooms100,
    /// Fanout: 1 room of 1000, 2 senders.
    Fanout1000,
    /// 10,000 idle authenticated connections, opened over 20 s.
    Idle10k,
}

/// The options a [`Preset`] sets; each field is the option of the same name. The rate and the
/// timing depend on the mode: a fixed-rate run, or each step of `--find-max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PresetValues {
    /// The shape.
    pub scenario: Scenario,
    /// `--clients` (`dm`, `rooms`, `idle`).
    pub clients: usize,
    /// `--room-size` (`rooms`, `fanout`).
    pub room_size: usize,
    /// `--rooms` (`fanout`).
    pub rooms: usize,
    /// `--senders` (`fanout`).
    pub senders: usize,
    /// `--ramp-up`.
    pub ramp_up: f64,
    /// `--handshake-concurrency`.
    pub handshake_concurrency: usize,
    /// `--rate` of a fixed-rate run: a steady load well below the maximum (about a fifth of
    /// chatd's on the machines of bench/RESULTS.md), the same for every build compared.
    pub rate: f64,
    /// `--rate` with `--find-max`: where the search starts.
    pub start_rate: f64,
    /// `--max-p99-ms`, the saturation bound of `--find-max` (set with `--find-max` only, as
    /// is `--max-steps`).
    pub max_p99_ms: f64,
    /// `--max-steps` of `--find-max`: enough to climb by 1.5x from the start rate to several
    /// times the max of a fast machine and still bisect.
    pub max_steps: u32,
    /// `--warm-up`, `--duration` and `--drain` of a fixed-rate run.
    pub run: Timing,
    /// The same for each `--find-max` step.
    pub step: Timing,
}

/// Seconds of load before measuring, measured, and waited for after the last send.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// `--warm-up`.
    pub warm_up: f64,
    /// `--duration`.
    pub duration: f64,
    /// `--drain`.
    pub drain: f64,
}

impl Preset {
    /// Every preset, in the order bench/run.sh runs them.
    pub const ALL: [Preset; 5] = [
        Preset::Dm,
        Preset::Rooms10,
        Preset::Rooms100,
        Preset::Fanout1000,
        Preset::Idle10k,
    ];

    /// What the preset stands for: the one definition of bench/'s scenarios.
    #[must_use]
    pub fn values(self) -> PresetValues {
        // Shared by all: 1000 clients (one connection each), the default ramp-up and
        // handshake concurrency; 10 s measured at a fixed rate, 5 s per --find-max step.
        let base = PresetValues {
            scenario: Scenario::Dm,
            clients: 1000,
            room_size: 10,
            rooms: 1,
            senders: 1,
            ramp_up: 2.0,
            handshake_concurrency: 256,
            rate: 1000.0,
            start_rate: 1000.0,
            max_p99_ms: 20.0,
            max_steps: 24,
            run: Timing {
                warm_up: 2.0,
                duration: 10.0,
                drain: 10.0,
            },
            step: Timing {
                warm_up: 2.0,
                duration: 5.0,
                drain: 5.0,
            },
        };
        match self {
            Preset::Dm => PresetValues {
                rate: 3000.0,
                ..base
            },
            Preset::Rooms10 => PresetValues {
                scenario: Scenario::Rooms,
                rate: 800.0,
                start_rate: 500.0,
                ..base
            },
            Preset::Rooms100 => PresetValues {
                scenario: Scenario::Rooms,
                room_size: 100,
                rate: 100.0,
                start_rate: 50.0,
                ..base
            },
            // One message is a burst of 999 deliveries, and the last recipient's latency is
            // the time to write (and, in the load generator, read) the whole burst: a 20 ms
            // bound would measure the burst, not saturation.
            Preset::Fanout1000 => PresetValues {
                scenario: Scenario::Fanout,
                room_size: 1000,
                senders: 2,
                rate: 200.0,
                start_rate: 5.0,
                max_p99_ms: 250.0,
                ..base
            },
            // Nothing is sent: the connections are opened over 20 s, fewer handshakes at
            // once, and held for 5 s.
            Preset::Idle10k => PresetValues {
                scenario: Scenario::Idle,
                clients: 10_000,
                ramp_up: 20.0,
                handshake_concurrency: 128,
                run: Timing {
                    duration: 5.0,
                    ..base.run
                },
                ..base
            },
        }
    }
}

impl PresetValues {
    /// The arguments this stands for in one mode (`--find-max`, or a fixed rate), the sizes
    /// this shape does not use left out.
    #[must_use]
    pub fn arguments(&self, find_max: bool) -> String {
        let mut out = value_name(self.scenario);
        let _ = match self.scenario {
            Scenario::Fanout => write!(
                out,
                " --rooms {} --room-size {} --senders {}",
                self.rooms, self.room_size, self.senders
            ),
            Scenario::Rooms | Scenario::Churn => {
                write!(
                    out,
                    " --clients {} --room-size {}",
                    self.clients, self.room_size
                )
            }
            Scenario::Dm | Scenario::Idle => write!(out, " --clients {}", self.clients),
        };
        let _ = write!(
            out,
            " --ramp-up {} --handshake-concurrency {}",
            self.ramp_up, self.handshake_concurrency
        );
        let (rate, timing) = if find_max {
            (self.start_rate, self.step)
        } else {
            (self.rate, self.run)
        };
        if self.scenario != Scenario::Idle {
            let _ = write!(out, " --rate {rate}");
        }
        if find_max {
            let _ = write!(
                out,
                " --find-max --max-p99-ms {} --max-steps {}",
                self.max_p99_ms, self.max_steps
            );
        }
        let _ = write!(
            out,
            " --warm-up {} --duration {} --drain {}",
            timing.warm_up, timing.duration, timing.drain
        );
        out
    }
}

/// A value's name on the command line.
fn value_name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned())
}

/// The presets and what each stands for, for `--help`.
fn presets_help() -> String {
    let mut out = String::from(
        "Presets: `--preset NAME` stands for the arguments below (the standard scenarios of \
         bench/); an option given on the command line wins over the preset's value.\n",
    );
    for preset in Preset::ALL {
        let values = preset.values();
        let _ = write!(
            out,
            "\n  {}\n      {}\n",
            value_name(preset),
            values.arguments(false)
        );
        if values.scenario != Scenario::Idle {
            let _ = writeln!(out, "      with --find-max: {}", values.arguments(true));
        }
    }
    out
}

/// chat-loadgen: open-loop load against chatd (or the bench relay) with HdrHistogram
/// latencies and a built-in correctness check. Exits 1 when the checker finds a lost,
/// duplicated or reordered message, 2 on bad options, 3 when the run cannot be set up.
#[derive(Clone, Debug, Parser, serde::Serialize)]
#[command(name = "chat-loadgen", version, after_long_help = presets_help())]
pub struct Options {
    /// The scenario (or `--preset`, which names one).
    // Without it, `--preset` is required; the placeholder default is then replaced by the
    // preset's own scenario (`Options::apply_preset`).
    #[arg(
        value_enum,
        required = false,
        required_unless_present = "preset",
        conflicts_with = "preset",
        default_value_if("preset", clap::builder::ArgPredicate::IsPresent, "dm")
    )]
    pub scenario: Scenario,

    /// A standard scenario of bench/: sets the scenario, its sizes, the rate (the start rate
    /// with `--find-max`), the p99 bound and the timing; options given explicitly win. What
    /// each preset sets: `--help`.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,

    /// Whether the preset was applied under the explicit options (`Options::from_command_line`).
    #[arg(skip)]
    #[serde(skip)]
    preset_applied: bool,

    /// The server's UDP address. Only loopback addresses are accepted: load tests stay on
    /// this machine.
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub server: SocketAddr,

    /// More nodes of the same chatd cluster (repeatable): the clients are spread over
    /// `--server` and these, and a client whose connection is lost or refused (a node that
    /// stands by answers `UNAVAILABLE`) tries the next one, resuming from its cursors.
    /// Loopback only.
    #[arg(long)]
    pub also: Vec<SocketAddr>,

    /// chatd, the bench relay (the floor), or a broker to compare with (NATS, JetStream, an
    /// MQTT broker): the same schedule, latencies and checks over the broker's own protocol.
    #[arg(long, value_enum, default_value = "chatd")]
    pub target: Target,

    /// MQTT quality of service of publishes and subscriptions (`--target mqtt`): 0 (at most
    /// once, nothing acknowledged) or 1 (at least once; a send counts as acknowledged at the
    /// broker's PUBACK).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,

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

    /// Milliseconds a client waits for a silent server before it takes its connection as
    /// lost (QUIC's idle timeout; keep-alives go every third of it). A short one stands in,
    /// against a cluster on loopback, for the stateless reset a load balancer's next node
    /// would send the clients of a dead one.
    #[arg(long, default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

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

    /// Check the options and print them as JSON (a preset expanded), without running.
    #[arg(long)]
    #[serde(skip)]
    pub dry_run: bool,
}

/// Why the options cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OptionsError(pub String);

impl Options {
    /// The options of this process's command line, the preset applied; on a bad command line
    /// prints clap's message and exits (2), as clap's `parse` does.
    #[must_use]
    pub fn from_command_line() -> Options {
        Options::try_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// The options of `args` (the program name first), the preset applied under the options
    /// given explicitly.
    ///
    /// # Errors
    /// clap's, for a command line it cannot parse.
    pub fn try_from_args<I, T>(args: I) -> Result<Options, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Options::command().try_get_matches_from(args)?;
        let mut options = Options::from_arg_matches(&matches)?;
        options.apply_preset(&matches);
        Ok(options)
    }

    /// Sets every option of the preset that the command line (or the environment) did not.
    fn apply_preset(&mut self, matches: &ArgMatches) {
        let Some(preset) = self.preset else {
            return;
        };
        let values = preset.values();
        let (rate, timing) = if self.find_max {
            (values.start_rate, values.step)
        } else {
            (values.rate, values.run)
        };
        let given = |id: &str| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        macro_rules! unless_given {
            ($($field:ident = $value:expr),* $(,)?) => {
                $(if !given(stringify!($field)) {
                    self.$field = $value;
                })*
            };
        }
        unless_given!(
            scenario = values.scenario,
            clients = values.clients,
            room_size = values.room_size,
            rooms = values.rooms,
            senders = values.senders,
            ramp_up = values.ramp_up,
            handshake_concurrency = values.handshake_concurrency,
            rate = rate,
            warm_up = timing.warm_up,
            duration = timing.duration,
            drain = timing.drain,
        );
        if self.find_max {
            unless_given!(max_p99_ms = values.max_p99_ms, max_steps = values.max_steps);
        }
        self.preset_applied = true;
    }

    /// Checks the combination of options.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let fail = |m: &str| Err(OptionsError(m.into()));
        if self.preset.is_some() && !self.preset_applied {
            return fail("--preset was not applied: parse with Options::from_command_line");
        }
        if !self.server.ip().is_loopback() || self.also.iter().any(|a| !a.ip().is_loopback()) {
            return fail("--server: load tests only target loopback addresses (127.0.0.1)");
        }
        if !self.also.is_empty() && self.target != Target::Chatd {
            return fail("--also: the nodes of a chatd cluster (--target chatd)");
        }
        if self.idle_timeout_ms < 300 {
            return fail("--idle-timeout-ms: at least 300");
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
        if self.target.is_peer() && self.size < 20 {
            return fail("--size: at least 20 bytes against a peer (time, sender and number)");
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
            Scenario::Churn if self.target != Target::Chatd => {
                return fail("churn needs chatd: the others keep nothing to resume from");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Options, clap::Error> {
        Options::try_from_args(std::iter::once("chat-loadgen").chain(args.split_whitespace()))
    }

    /// The options as the JSON output has them, without the preset's name.
    fn resolved(args: &str) -> serde_json::Value {
        let mut value = serde_json::to_value(parse(args).unwrap()).unwrap();
        value.as_object_mut().unwrap().remove("preset");
        value
    }

    /// `--preset NAME` in its three uses (--find-max, at half the max, at its steady rate)
    /// stands for `shape` with what bench/run.sh and bench/hops.sh gave it.
    fn expands_like_bench(preset: &str, shape: &str, start: u32, bound: u32, steady: u32) {
        assert_eq!(
            resolved(&format!("--preset {preset} --find-max")),
            resolved(&format!(
                "{shape} --rate {start} --find-max --max-p99-ms {bound} --max-steps 24 \
                 --duration 5 --warm-up 2 --drain 5"
            )),
            "{preset} --find-max"
        );
        assert_eq!(
            resolved(&format!("--preset {preset} --rate 1234.5")),
            resolved(&format!(
                "{shape} --rate 1234.5 --duration 10 --warm-up 2 --drain 10"
            )),
            "{preset} at half the max"
        );
        assert_eq!(
            resolved(&format!("--preset {preset}")),
            resolved(&format!("{shape} --rate {steady}")),
            "{preset} at the steady rate"
        );
    }

    /// Each preset stands for what bench/lib.sh (`scenario_args`), bench/run.sh (`start_rate`,
    /// `max_p99`, the --find-max and half-rate runs) and bench/hops.sh (`rate_of`) spelt out
    /// before the presets.
    #[test]
    fn a_preset_expands_to_the_arguments_bench_used() {
        let rooms = "rooms --clients 1000";
        expands_like_bench("dm", "dm --clients 1000", 1000, 20, 3000);
        expands_like_bench("rooms10", &format!("{rooms} --room-size 10"), 500, 20, 800);
        expands_like_bench("rooms100", &format!("{rooms} --room-size 100"), 50, 20, 100);
        let fanout = "fanout --rooms 1 --room-size 1000 --senders 2";
        expands_like_bench("fanout1000", fanout, 5, 250, 200);
        assert_eq!(
            resolved("--preset idle10k"),
            resolved("idle --clients 10000 --ramp-up 20 --handshake-concurrency 128 --duration 5")
        );
    }

    #[test]
    fn explicit_options_win_over_the_preset() {
        let o = parse("--preset rooms10 --clients 200 --rate 2000 --duration 30").unwrap();
        assert_eq!(o.preset, Some(Preset::Rooms10));
        assert_eq!(serde_json::to_value(&o).unwrap()["preset"], "rooms10");
        assert_eq!(
            (o.scenario, o.clients, o.room_size),
            (Scenario::Rooms, 200, 10)
        );
        assert_eq!(
            (o.rate, o.duration, o.warm_up, o.drain),
            (2000.0, 30.0, 2.0, 10.0)
        );
        let o = parse("--preset fanout1000 --find-max --max-p99-ms 100 --max-steps 4").unwrap();
        assert_eq!(
            (o.max_p99_ms, o.max_steps, o.rate, o.duration),
            (100.0, 4, 5.0, 5.0)
        );
        // Given explicitly with the default's value, an option still wins.
        let o = parse("--preset idle10k --ramp-up 2 --handshake-concurrency 256").unwrap();
        assert_eq!(
            (o.clients, o.ramp_up, o.handshake_concurrency),
            (10_000, 2.0, 256)
        );
        o.validate().unwrap();
    }

    #[test]
    fn a_scenario_or_a_preset_but_not_both() {
        assert!(parse("--clients 10").is_err());
        assert!(parse("rooms --preset dm").is_err());
        assert!(parse("--preset nope").is_err());
        let o = parse("rooms --room-size 5 --clients 10").unwrap();
        assert_eq!(
            (o.preset, o.scenario, o.room_size),
            (None, Scenario::Rooms, 5)
        );
        o.validate().unwrap();
    }

    #[test]
    fn a_preset_left_unapplied_is_refused() {
        let o = Options::parse_from(["chat-loadgen", "--preset", "dm"]);
        assert!(o.validate().is_err());
    }

    #[test]
    fn the_help_lists_every_preset_with_its_arguments() {
        let help = Options::command().render_long_help().to_string();
        for preset in Preset::ALL {
            let values = preset.values();
            assert!(help.contains(&values.arguments(false)), "{help}");
        }
        assert!(help.contains(
            "rooms --clients 1000 --room-size 10 --ramp-up 2 --handshake-concurrency 256 \
             --rate 500 --find-max --max-p99-ms 20 --max-steps 24 --warm-up 2 --duration 5 \
             --drain 5"
        ));
    }
}
