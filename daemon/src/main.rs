//! The `chatd` binary: wires configuration, signals and the library's `run`.

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    eprintln!(
        "{}: speaks chat protocol v{}..=v{}; the server itself is not implemented yet \
         (see README.md, \"Status\")",
        chatd::SERVER_NAME,
        chatd::PROTOCOL_VERSIONS.min,
        chatd::PROTOCOL_VERSIONS.max
    );
    ExitCode::from(69) // EX_UNAVAILABLE
}
