//! jepsen-lite: runs a real raftshare cluster on 127.0.0.1, writes to it while it breaks
//! it (kill -9, SIGSTOP, partitions, membership changes), heals it, and checks that
//! nothing acknowledged was lost. It talks to the nodes only through their folders and
//! the `raftshare` CLI with `--json`, like a user's script would.
//!
//! Layout:
//! - `rng` — a seeded, version-stable random stream; the seed fixes plan and contents.
//! - `plan` — the schedule of workload ops and faults, generated from the seed (pure).
//! - `history` — the JSON-lines record of what was done and acknowledged.
//! - `process` — children that die with the harness; commands with a deadline.
//! - `cluster` — raftshare nodes: set up, start, kill, pause, stop; the event readers.
//! - `workload` — edits in the nodes' folders, as a user and their editor make them.
//! - `nemesis` — the faults, one at a time, each healed before the next.
//! - `sampler` — looks into the folders during the run, for partial or stray files.
//! - `tree` — a shared folder as a map of files.
//! - `model` — the file-table rules replayed over the committed log (pure).
//! - `checker` — the five checks, pure functions over the collected data; a file per check.
//! - `runner` — one test from start to verdict, and `check` of a saved run.
//! - `bench` — `jepsen-lite bench`: the same cluster with no faults, timed workloads; a
//!   file per workload.

pub mod bench;
pub mod checker;
pub mod cluster;
pub mod history;
pub mod model;
pub mod nemesis;
pub mod plan;
pub mod process;
pub mod rng;
pub mod runner;
pub mod sampler;
pub mod tree;
pub mod workload;

pub use runner::{check_saved, find_bin, run_test, TestOptions};
