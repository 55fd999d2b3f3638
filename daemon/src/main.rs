//! The `chatd` binary: parses flags, loads and validates configuration (exit code 64 when it
//! is wrong, before anything is bound), and hands over to the library. Signals: SIGTERM
//! drains and stops, SIGINT stops at once, SIGHUP reloads the configuration file (TLS
//! certificate, token keys, log filter, the limits [`chatd::reload`] names).
//!
//! Exit codes: 0 after a stop by signal, 64 (EX_USAGE) for a bad configuration or usage, 69
//! (EX_UNAVAILABLE) when storage, TLS, keys, the runtime or the port cannot be had, 75
//! (EX_TEMPFAIL) when another chatd holds the data directory.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use chatd::config::{Config, Overrides};

mod maintenance;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad configuration or usage (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when stored data is wrong (sysexits EX_DATAERR): a broken hash chain.
const EXIT_DATA: u8 = 65;
/// Exit code when a needed resource is unavailable (sysexits EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code when another daemon holds the data directory (sysexits EX_TEMPFAIL: it may be
/// a predecessor still stopping).
const EXIT_LOCKED: u8 = 75;
/// Exit code of `chatd admin` when the daemon did what was asked only in part (sysexits
/// EX_TEMPFAIL: run it again).
const EXIT_PARTIAL: u8 = 75;

/// chatd: a sharded QUIC chat daemon.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default when no command is given).
    Run(RunArgs),
    /// Print the embedded default configuration, every field commented.
    GenerateConfig,
    /// Check a configuration without starting: parse, validate, read every secret, the TLS
    /// certificate and key. Exit code 0 when the daemon would take it, 64 when not.
    CheckConfig(ConfigArgs),
    /// Mint an access token for a user with the configured signing key.
    Token(TokenArgs),
    /// The AMQP bridge.
    #[command(subcommand)]
    Bridge(BridgeCommand),
    /// Talk to a running daemon through its admin listener (`[admin]`): status,
    /// connections, kick, disable, enable, revoke, erase, conversation, compact.
    Admin(AdminArgs),
    /// Have the running daemon write an online backup of its data into DIR (a new folder
    /// the daemon's user can write): a consistent RocksDB checkpoint, the files beside it,
    /// and a manifest.
    Backup {
        #[command(flatten)]
        conn: AdminConn,
        /// The new folder.
        dir: PathBuf,
    },
    /// Restore a backup into an empty data directory (no daemon may run on it).
    Restore {
        #[command(flatten)]
        config: ConfigArgs,
        /// The backup folder.
        dir: PathBuf,
    },
    /// Check every conversation's hash chain in the data directory (read-only; the daemon
    /// may run): each entry has its link, matches its digest unless its content was erased,
    /// and follows from the entry before. Exit code 0 when every chain holds, 65 when one
    /// does not (each broken conversation is named with its first bad entry).
    Verify {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// How `chatd admin` and `chatd backup` reach the admin listener.
#[derive(clap::Args)]
struct AdminConn {
    /// Configuration file: where the admin listener is (`admin.listen`) and its token.
    #[arg(long, short, env = "CHATD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The admin listener's address (default: admin.listen of the configuration).
    #[arg(long, global = true)]
    addr: Option<std::net::SocketAddr>,
    /// Print the daemon's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Args)]
struct AdminArgs {
    #[command(flatten)]
    conn: AdminConn,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Version, uptime, readiness, shards, connections, memory budget, storage, bridge.
    Status,
    /// Open connections (all, or one user's).
    Connections {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
    },
    /// Close a user's sessions (goodbye KICKED); the user may connect again.
    Kick {
        /// The user name.
        user: String,
        /// Only this device's session.
        #[arg(long)]
        device: Option<u64>,
    },
    /// Disable an account: its sessions close, its logins and tokens are refused (every
    /// token issued so far stays refused after `enable`).
    Disable {
        /// The user name.
        user: String,
    },
    /// Enable a disabled account again.
    Enable {
        /// The user name.
        user: String,
    },
    /// Revoke every token of an account issued so far (and close its sessions), without
    /// rotating the signing key; tokens minted from the next second on work.
    Revoke {
        /// The user name.
        user: String,
    },
    /// Delete every message of a disabled account (a deleted account: `disable` it first),
    /// in every conversation it wrote in, rooms it left included: each becomes a tombstone
    /// deleted by the operator (user 0) and its content is erased, as its author's delete
    /// would. Messages deleted already are left alone; run it again after an interruption.
    Erase {
        /// The user name.
        user: String,
    },
    /// A conversation's head, members and markers: room:NAME, room:ID, dm:USER:USER,
    /// notes:USER (or #NAME for a room).
    Conversation {
        /// Which.
        spec: String,
    },
    /// Compact the database (frees what deletes and overwrites left behind).
    Compact,
}

#[derive(Subcommand)]
enum BridgeCommand {
    /// Republish retained outbox events (with their original seq) to the configured
    /// exchange, e.g. for a new consumer; works while the daemon runs.
    Replay(ReplayArgs),
}

#[derive(clap::Args)]
struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// First event seq to publish.
    #[arg(long)]
    from: u64,
    /// Last event seq to publish (default: the newest).
    #[arg(long)]
    to: Option<u64>,
    /// With `cluster.partitions`: the partition whose outbox to publish (each numbers its
    /// own events).
    #[arg(long)]
    partition: Option<usize>,
}

/// Where the configuration comes from.
#[derive(clap::Args, Default)]
struct ConfigArgs {
    /// Configuration file (TOML); fields it leaves out keep their defaults.
    #[arg(long, short, env = "CHATD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (RocksDB, development certificate, generated token secret).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args, Default)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// UDP address to listen on.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Number of shards (0 = one per core).
    #[arg(long)]
    shards: Option<usize>,
}

#[derive(clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The user name the token is for.
    #[arg(long)]
    user: String,
    /// Lifetime in seconds (default: auth.token_ttl_secs).
    #[arg(long)]
    ttl: Option<u64>,
}

/// The configuration from `args`, the environment and `overrides` (at start and on reload).
fn read_config(args: &ConfigArgs, overrides: &Overrides) -> Result<Config, chatd::config::Error> {
    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        ..overrides.clone()
    };
    // CHATD_CONFIG is a flag's variable, not a configuration field.
    let env = std::env::vars().filter(|(k, _)| k != "CHATD_CONFIG");
    Config::load(args.config.as_deref(), env, &overrides)
}

fn load(args: &ConfigArgs, overrides: Overrides) -> Result<Config, ExitCode> {
    read_config(args, &overrides).map_err(|e| {
        eprintln!("chatd: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn data_dir(config: &Config) -> PathBuf {
    config.data_dir(std::env::var("STATE_DIRECTORY").ok().as_deref())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::GenerateConfig => {
            print!("{}", chatd::config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Command::CheckConfig(args) => check_config(&args),
        Command::Token(args) => token(&args).unwrap_or_else(|code| code),
        Command::Bridge(BridgeCommand::Replay(args)) => replay(&args).unwrap_or_else(|code| code),
        Command::Admin(args) => admin(&args),
        Command::Backup { conn, dir } => backup(&conn, &dir),
        Command::Restore { config, dir } => maintenance::restore(&config, &dir),
        Command::Verify { config } => maintenance::verify(&config),
        Command::Run(args) => serve(&args),
    }
}

fn check_config(args: &ConfigArgs) -> ExitCode {
    let config = match load(args, Overrides::default()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let mut problems = Vec::new();
    if !config.tls.cert.as_os_str().is_empty() {
        // With the paths set nothing is generated: this only reads, and checks that the key
        // belongs to the certificate.
        let checked =
            chatd::tls::load_identity(&config.tls, &data_dir(&config)).and_then(|identity| {
                chatd::tls::server_config(&identity, &chatd::tls::Browsers::default()).map(drop)
            });
        if let Err(e) = checked {
            problems.push(format!("tls: {e}"));
        }
    }
    if problems.is_empty() {
        println!(
            "configuration OK{}: listen {}, data dir {}, {} token key(s){}",
            args.config
                .as_ref()
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default(),
            config.listen,
            data_dir(&config).display(),
            config.auth.keys.len(),
            if config.auth.keys.is_empty() {
                " (none listed: the generated local secret)"
            } else {
                ""
            }
        );
        ExitCode::SUCCESS
    } else {
        for problem in problems {
            eprintln!("chatd: {problem}");
        }
        ExitCode::from(EXIT_CONFIG)
    }
}

fn serve(args: &RunArgs) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen,
        shards: args.shards,
        data_dir: None,
    };
    let config = match load(&args.config, overrides.clone()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let logging = match chatd::logging::Logging::init(&config) {
        Ok(logging) => logging,
        Err(e) => {
            eprintln!("chatd: logging: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chatd: cannot start the signal runtime: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int, mut hup) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => (term, int, hup),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                eprintln!("chatd: cannot install signal handlers: {e}");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
        let (commands, received) = tokio::sync::mpsc::channel(4);
        let daemon = chatd::run(config, received);
        tokio::pin!(daemon);
        // A reload in progress: the daemon's answer and the log filter to apply with it.
        let mut reloading: Option<(ReloadAnswer, String)> = None;
        loop {
            tokio::select! {
                ran = &mut daemon => return match ran {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("cannot start: {e}");
                        ExitCode::from(match e {
                            chatd::server::Error::Locked(_) => EXIT_LOCKED,
                            _ => EXIT_UNAVAILABLE,
                        })
                    }
                },
                _ = term.recv() => {
                    tracing::info!("SIGTERM");
                    let _ = commands.try_send(chatd::Command::Stop(chatd::Stop::Graceful));
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT");
                    let _ = commands.try_send(chatd::Command::Stop(chatd::Stop::Fast));
                }
                _ = hup.recv(), if reloading.is_none() => {
                    reloading = start_reload(&commands, &args.config, &overrides);
                }
                answer = async { (&mut reloading.as_mut()?.0).await.ok() }, if reloading.is_some() => {
                    if let Some((_, log)) = reloading.take() {
                        finish_reload(answer, &logging, &log);
                    }
                }
            }
        }
    })
}

/// The daemon's answer to a reload.
type ReloadAnswer = tokio::sync::oneshot::Receiver<Result<chatd::Reloaded, chatd::server::Error>>;

/// SIGHUP: reads the configuration again and hands it to the daemon, which applies what can
/// change while running. A configuration that does not load is refused here, leaving
/// everything as it was. Returns the answer to wait for, with the log filter to apply then.
fn start_reload(
    commands: &tokio::sync::mpsc::Sender<chatd::Command>,
    args: &ConfigArgs,
    overrides: &Overrides,
) -> Option<(ReloadAnswer, String)> {
    // For `Type=notify-reload`: RELOADING=1 with the time, READY=1 when done.
    let mut notice = vec![sd_notify::NotifyState::Reloading];
    notice.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
    let _ = sd_notify::notify(false, &notice);
    tracing::info!("SIGHUP: reloading the configuration");
    let refused = match read_config(args, overrides) {
        Ok(config) => {
            // `log` was validated with the rest: once the daemon took the configuration,
            // the filter cannot fail, so nothing is applied halfway.
            let log = config.log.clone();
            let (done, answer) = tokio::sync::oneshot::channel();
            let command = chatd::Command::Reload {
                config: Box::new(config),
                done,
            };
            match commands.try_send(command) {
                Ok(()) => return Some((answer, log)),
                Err(_) => "the daemon is busy or stopping".to_owned(),
            }
        }
        Err(e) => e.to_string(),
    };
    tracing::error!("reload failed, running on the previous configuration: {refused}");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    None
}

/// The daemon answered a reload (`None`: it went away first).
fn finish_reload(
    answer: Option<Result<chatd::Reloaded, chatd::server::Error>>,
    logging: &chatd::logging::Logging,
    log: &str,
) {
    let outcome = match answer {
        Some(Ok(reloaded)) => logging.reload(log).map(|()| reloaded),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the daemon stopped".to_owned()),
    };
    match outcome {
        Ok(reloaded) => {
            if reloaded.late_shards == 0 {
                tracing::info!(
                    certificate_sha256 = %reloaded.certificate,
                    "reloaded: new connections get this certificate; open ones go on"
                );
            } else {
                tracing::warn!(
                    certificate_sha256 = %reloaded.certificate,
                    late_shards = reloaded.late_shards,
                    "reloaded, but some shards had not taken the new certificate yet (they will \
                     when their loop turns; a stuck one is restarted by the watchdog)"
                );
            }
            if !reloaded.restart_needed.is_empty() {
                tracing::warn!(
                    fields = reloaded.restart_needed.join(", "),
                    "these changed fields take effect at the next restart; running with their old values"
                );
            }
        }
        Err(e) => tracing::error!("reload failed, running on the previous configuration: {e}"),
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

/// `chatd backup DIR`.
fn backup(conn: &AdminConn, dir: &std::path::Path) -> ExitCode {
    // The daemon runs elsewhere: it gets an absolute path.
    let dir = match std::path::absolute(dir) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("chatd: {}: {e}", dir.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let body = serde_json::json!({ "dir": dir });
    admin_call(
        conn,
        "POST",
        "/v1/backup",
        Some(&body),
        chatd::admin::client::render_backup,
    )
}

/// One request to the admin listener; prints the answer with `render` (or as JSON). Exit
/// code 0 when done, 75 when done in part (some nodes or shards could not be told: run it
/// again), 69 when the daemon cannot be reached or refuses, 64 for a bad configuration.
fn admin_call(
    conn: &AdminConn,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    render: fn(&serde_json::Value) -> String,
) -> ExitCode {
    let env = std::env::vars().filter(|(k, _)| k != "CHATD_CONFIG");
    let (addr, token) = match chatd::config::Config::admin_endpoint(conn.config.as_deref(), env) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            eprintln!("chatd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let addr = conn.addr.unwrap_or(addr);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chatd: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let token = (!token.is_empty()).then_some(token.as_str());
    match runtime.block_on(chatd::admin::client::call(addr, token, method, path, body)) {
        Ok(value) => {
            if conn.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                print!("{}", render(&value));
            }
            if chatd::admin::client::partial(&value) {
                ExitCode::from(EXIT_PARTIAL)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("chatd: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// `chatd admin`: one request to the admin listener.
fn admin(args: &AdminArgs) -> ExitCode {
    use chatd::admin::client;
    let user_path = |user: &str, action: &str| format!("/v1/users/{user}/{action}");
    let (method, path, render): (&str, String, fn(&serde_json::Value) -> String) = match &args
        .command
    {
        AdminCommand::Status => ("GET", "/v1/status?nodes=1".into(), client::render_status),
        AdminCommand::Connections { user } => (
            "GET",
            match user {
                Some(user) => format!("/v1/connections?user={user}"),
                None => "/v1/connections".into(),
            },
            client::render_connections,
        ),
        AdminCommand::Kick { user, device } => (
            "POST",
            match device {
                Some(d) => format!("{}?device={d}", user_path(user, "kick")),
                None => user_path(user, "kick"),
            },
            client::render_action,
        ),
        AdminCommand::Disable { user } => {
            ("POST", user_path(user, "disable"), client::render_action)
        }
        AdminCommand::Enable { user } => ("POST", user_path(user, "enable"), client::render_action),
        AdminCommand::Revoke { user } => ("POST", user_path(user, "revoke"), client::render_action),
        AdminCommand::Erase { user } => ("POST", user_path(user, "erase"), client::render_erase),
        AdminCommand::Conversation { spec } => {
            let spec = match spec.strip_prefix('#') {
                Some(room) => format!("room:{room}"),
                None => spec.clone(),
            };
            (
                "GET",
                format!("/v1/conversations/{spec}"),
                client::render_conversation,
            )
        }
        AdminCommand::Compact => ("POST", "/v1/compact".into(), |v| {
            format!("compacted in {} ms\n", v["took_ms"])
        }),
    };
    // Names go into the path as they are: each must be a valid name (nothing to escape,
    // nothing that could change the path).
    let names: Vec<&str> = match &args.command {
        AdminCommand::Status | AdminCommand::Compact => Vec::new(),
        AdminCommand::Connections { user } => user.iter().map(String::as_str).collect(),
        AdminCommand::Kick { user, .. }
        | AdminCommand::Disable { user }
        | AdminCommand::Enable { user }
        | AdminCommand::Revoke { user }
        | AdminCommand::Erase { user } => vec![user.as_str()],
        AdminCommand::Conversation { spec } => spec
            .trim_start_matches('#')
            .split(':')
            .filter(|part| !matches!(*part, "room" | "dm" | "notes"))
            .collect(),
    };
    for name in names {
        let room = matches!(&args.command, AdminCommand::Conversation { spec } if spec.starts_with('#') || spec.starts_with("room:"));
        let valid = if room {
            chat_protocol::names::check_room_name(name).is_ok() || name.parse::<u64>().is_ok()
        } else {
            chat_protocol::names::check_user_name(name).is_ok()
        };
        if !valid {
            eprintln!(
                "chatd: {name:?} is not a valid {} name",
                if room { "room" } else { "user" }
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    admin_call(&args.conn, method, &path, None, render)
}

fn token(args: &TokenArgs) -> Result<ExitCode, ExitCode> {
    let config = load(&args.config, Overrides::default())?;
    if let Err(code) = chat_protocol::names::check_user_name(&args.user) {
        eprintln!(
            "chatd: {:?}: {}",
            args.user,
            code.description().unwrap_or("invalid user name")
        );
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    let keys = chatd::token::Keys::load(&config.auth, &data_dir(&config)).map_err(|e| {
        eprintln!("chatd: {e}");
        ExitCode::from(EXIT_UNAVAILABLE)
    })?;
    let now = chatd::unix_now();
    let ttl = args.ttl.unwrap_or(config.auth.token_ttl_secs);
    println!("{}", keys.mint(&args.user, now, now.saturating_add(ttl)));
    Ok(ExitCode::SUCCESS)
}

fn replay(args: &ReplayArgs) -> Result<ExitCode, ExitCode> {
    let config = load(&args.config, Overrides::default())?;
    if !config.bridge.enabled() {
        eprintln!("chatd: bridge.amqp_url is not set (CHATD_BRIDGE_AMQP_URL)");
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    let dir = match (config.cluster.partitions, args.partition) {
        (0, None) => data_dir(&config).join("db"),
        (n, Some(p)) if p < n => {
            let dir = config.cluster.partitions_in(&data_dir(&config));
            chatd::store::layout::partition_dir(&dir, p)
        }
        (0, Some(_)) => {
            eprintln!("chatd: --partition needs cluster.partitions");
            return Err(ExitCode::from(EXIT_CONFIG));
        }
        (n, _) => {
            eprintln!(
                "chatd: cluster.partitions is {n}: name the outbox with --partition 0 to {}",
                n - 1
            );
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    let store = chatd::store::Store::open_read_only(&dir).map_err(|e| {
        eprintln!("chatd: {}: {e}", dir.display());
        ExitCode::from(EXIT_UNAVAILABLE)
    })?;
    match chatd::bridge::replay(&store, args.partition, &config.bridge, args.from, args.to) {
        Ok(n) => {
            println!("republished {n} events to {}", config.bridge.exchange);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("chatd: replay: {e}");
            Err(ExitCode::from(EXIT_UNAVAILABLE))
        }
    }
}
