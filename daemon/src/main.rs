//! The `chatd` binary: parses flags, loads and validates configuration (exit code 64 when it
//! is wrong, before anything is bound), and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use chatd::config::{Config, Overrides};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad configuration or usage (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when a needed resource is unavailable (sysexits EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

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
    /// Mint an access token for a user with the configured signing key.
    Token(TokenArgs),
    /// The AMQP bridge.
    #[command(subcommand)]
    Bridge(BridgeCommand),
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

fn load(args: &ConfigArgs, overrides: Overrides) -> Result<Config, ExitCode> {
    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        ..overrides
    };
    // CHATD_CONFIG is a flag's variable, not a configuration field.
    let env = std::env::vars().filter(|(k, _)| k != "CHATD_CONFIG");
    Config::load(args.config.as_deref(), env, &overrides).map_err(|e| {
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
        Command::Token(args) => token(&args).unwrap_or_else(|code| code),
        Command::Bridge(BridgeCommand::Replay(args)) => replay(&args).unwrap_or_else(|code| code),
        Command::Run(args) => {
            let overrides = Overrides {
                listen: args.listen,
                shards: args.shards,
                data_dir: None,
            };
            match load(&args.config, overrides) {
                Ok(config) => serve(config),
                Err(code) => code,
            }
        }
    }
}

/// How a signal asked the daemon to stop.
enum Stop {
    /// SIGTERM: drain connections within the grace period.
    Graceful,
    /// SIGINT: close connections at once (storage is still flushed).
    Fast,
}

fn serve(config: Config) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("chatd: cannot install signal handlers: {e}");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
        let daemon = match chatd::Daemon::start(config) {
            Ok(daemon) => daemon,
            Err(e) => {
                eprintln!("chatd: {e}");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
        let stop = tokio::select! {
            _ = term.recv() => Stop::Graceful,
            _ = int.recv() => Stop::Fast,
        };
        match stop {
            Stop::Graceful => {
                tracing::info!("SIGTERM: draining connections");
                daemon.stop();
            }
            Stop::Fast => {
                tracing::info!("SIGINT: closing connections now");
                daemon.stop_fast();
            }
        }
        ExitCode::SUCCESS
    })
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
    let dir = data_dir(&config).join("db");
    let store = chatd::store::Store::open_read_only(&dir).map_err(|e| {
        eprintln!("chatd: {}: {e}", dir.display());
        ExitCode::from(EXIT_UNAVAILABLE)
    })?;
    match chatd::bridge::replay(&store, &config.bridge, args.from, args.to) {
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
