//! The sync engine: one module per stage a change goes through.
//!
//! Layout, in the order a local edit flows:
//! - `watch`: OS events on the shared folder, batched into paths to look at.
//! - `disk`: reading the folder — walk, stamps, block hashes, ignore rules.
//! - `scanner`: disk vs local index → the durable outbox.
//! - `proposer`: outbox → committed log entries, through a `Committer` the node provides.
//! - `apply`: committed file table → disk (plan a batch, decide, fetch, install, delete,
//!   sweep).
//! - `blocks`: blocks between nodes — the fetch client and the block server, apart.
//! - `folder`: the shared folder on disk; the only code that writes into it.
//! - `state`: what these stages share, split into parts that each say who owns them.
//! - `error`: the sync engine's typed errors.
//!
//! The sync engine never imports the node: the node builds it, hands it a `Committer`
//! and a `BlockFetcher`, and reads its state for `status`.

/// Ops in one log entry at most: the proposer's batch, and the scanner's unit of
/// queueing (a burst of thousands of files costs a few entries).
pub const OPS_PER_ENTRY: usize = 2000;

pub mod apply;
pub mod blocks;
pub mod disk;
pub mod error;
pub mod folder;
pub mod proposer;
pub mod scanner;
pub mod state;
pub mod watch;
