//! `raftshare`: parse the arguments, run the command, turn an error into a message and an exit code.

use std::io::IsTerminal;

use clap::Parser;
use raftshare::cli::{self, Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    raftshare::memory::limit_malloc_arenas();
    let cli = Cli::parse();
    // The node logs what it does; a CLI command only says what went wrong.
    let default_filter = match cli.command {
        Command::Run { .. } => "info,openraft=warn,sled=warn",
        _ => "warn,openraft=error",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // A TUI owns the terminal: the node it runs logs to DATA_DIR/node.log, a client says nothing.
    match cli::log_file(&cli) {
        Some(Some(path)) => match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(file).init(),
            Err(e) => {
                eprintln!("error: cannot write the node's log {}: {e}", path.display());
                return std::process::ExitCode::FAILURE;
            }
        },
        Some(None) => tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::sink).init(),
        // Colour only for a person at a terminal: a log file or a pipe gets plain text.
        None => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init(),
    }

    // Blocking work is file I/O on one disk: dozens of threads are plenty (tokio's
    // default allows 512, each with its own stack).
    let runtime = match tokio::runtime::Builder::new_multi_thread().max_blocking_threads(64).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::execute(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
