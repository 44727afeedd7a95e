//! raftshare: one folder kept identical on the computers of a LAN, every change ordered
//! through one Raft log.
//!
//! Layout, from the outside in:
//! - `cli`: the commands (`cli::commands`) and how they print (`cli::render`: human
//!   tables and the `--json` contract).
//! - `tui`: the terminal view of a running node (pure `App` state + `render`, and the loop).
//! - `demo`: a local cluster of real node processes on 127.0.0.1, with the TUI.
//! - `client`: the CLI's authenticated connection to its own node.
//! - `discovery`: the LAN beacon, and `join` without an address.
//! - `node`: the running node — its lifecycle, the request service, the leader, the
//!   membership, peers, keys, settings and the tombstone collector.
//! - `sync`: the sync engine, one module per stage (watch → disk → scanner → proposer →
//!   apply, with `blocks` between nodes and `folder` the only writer of the folder).
//! - `config`: the data dir — `config.toml`, the cluster key (0600), the database path.
//! - `events`: the node's recent events, followed live by the TUI and `raftshare events`.
//! - `clock`, `memory`: the wall clock, and the allocator's limits.
//!
//! Dependencies point down this list, never up: the sync engine never imports the node,
//! nor the node the CLI (`tests/layout.rs` checks that no files import each other in a
//! circle).

pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod events;
pub mod memory;
pub mod node;
pub mod sync;
pub mod tui;
