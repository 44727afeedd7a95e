//! raftshare: one folder kept identical on the computers of a LAN, every change ordered
//! through one Raft log.
//!
//! Layout:
//! - `config`: the data dir — `config.toml`, the cluster key (0600), the database path.
//! - `node`: the running node — Raft, transport, the admin requests, liveness of peers.
//! - `client`: the CLI's authenticated connection to its own node.
//! - `cli`: the commands and how they print (human tables and the `--json` contract).

pub mod cli;
pub mod client;
pub mod config;
pub mod node;
