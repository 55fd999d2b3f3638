//! `chat-loadgen`: parses the options, runs the load test, prints the table, writes the JSON
//! (with `--dry-run`, only prints the options it would run with).
//! Exit codes: 0 correct, 1 the check failed (lost, duplicated or reordered messages), 2 bad
//! command line or options (as clap exits on a parse error), 3 the run could not be carried
//! out (TLS or token configuration, clients that cannot connect or set up).

use std::process::ExitCode;

use chat_loadgen::{Options, run};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let options = Options::from_command_line();
    if options.dry_run {
        return match options.validate() {
            Ok(()) => match serde_json::to_string_pretty(&options) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("chat-loadgen: {e}");
                    ExitCode::from(3)
                }
            },
            Err(e) => {
                eprintln!("chat-loadgen: {e}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chat-loadgen: {e}");
            return ExitCode::from(3);
        }
    };
    let json_out = options.json_out.clone();
    let summary = match runtime.block_on(run(options)) {
        Ok(summary) => summary,
        Err(chat_loadgen::Error::Options(e)) => {
            eprintln!("chat-loadgen: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("chat-loadgen: {e}");
            return ExitCode::from(3);
        }
    };
    println!("{}", summary.table());
    if let Some(path) = json_out {
        if let Err(e) = summary.write(&path) {
            eprintln!("chat-loadgen: {}: {e}", path.display());
            return ExitCode::from(3);
        }
        println!("results: {}", path.display());
    }
    if summary.correct {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
