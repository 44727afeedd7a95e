//! The command line: `args` (what can be typed), `commands` (what each command does)
//! and `render` (how it prints: human tables by default, the `--json` contract with
//! `--json`).

pub mod args;
pub mod commands;
pub mod render;

pub use args::{log_file, Cli, Command};
pub use commands::execute;
