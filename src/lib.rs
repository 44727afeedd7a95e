//! raftshare: one folder kept identical on the computers of a LAN, every change ordered
//! through one Raft log.
//!
//! Layout:
//! - `config`: the data dir — `config.toml`, the cluster key (0600), the database path.
//! - `node`: the running node — Raft, transport, the admin requests, liveness of peers.
//! - `client`: the CLI's authenticated connection to its own node.
//! - `cli`: the commands and how they print (human tables and the `--json` contract).
//! - `events`: the node's recent events, followed live by the TUI and `raftshare events`.
//! - `sync`: the state the sync tasks share; the folder marker and the folder lock.
//! - `watch`: OS events on the shared folder, batched.
//! - `scan`: reading the folder (walk, stamps, block hashes, ignore rules).
//! - `scanner`: disk vs local index → the durable outbox.
//! - `proposer`: outbox → committed log entries, with the right `base`.
//! - `applier`: committed file table → disk (temp file, verify, fsync, rename).
//! - `transfer`: blocks between nodes, verified on both sides.
//! - `folder`: the shared folder on disk; the only code that writes into it.
//! - `tui`: the terminal view of a running node (pure `App` state + `render`, and the loop).
//! - `demo`: a local cluster of real node processes on 127.0.0.1, with the TUI.
//! - `discovery`: the LAN beacon, and `join` without an address.

pub mod applier;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod events;
pub mod folder;
pub mod memory;
pub mod node;
pub mod proposer;
pub mod scan;
pub mod scanner;
pub mod sync;
pub mod transfer;
pub mod tui;
pub mod watch;
