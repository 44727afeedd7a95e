//! The running node: opens the store, starts Raft, the transport and the sync engine,
//! answers peers and the CLI, and stops cleanly on SIGINT/SIGTERM.
//!
//! The node owns no socket code (that is `raftshare_raft::transport`), no storage code
//! (`raftshare_storage`) and no file code (`crate::sync`); it wires them.
//!
//! Layout:
//! - `lifecycle`: the supervisor — start, restart when Raft quits on its own, stop.
//! - `state`: the node's parts (`Node`) and what they say about the membership.
//! - `authorize`: who may ask this node what (the CLI, a member, an outsider).
//! - `service`: every request from a peer or the CLI, checked, then routed to its handler.
//! - `leader`: the one route to the leader, used by every request only it carries out.
//! - `membership`: bootstrap, join, add, promote, remove.
//! - `peers`: liveness and progress of the other members.
//! - `status`: the `status` report.
//! - `tombstones`: the collector of tombstones every member applied.
//! - `keys`: cluster key rotation.
//! - `settings`: the Config view's requests and `Pending`.

mod authorize;
mod keys;
mod leader;
mod lifecycle;
mod membership;
mod peers;
mod service;
mod settings;
mod state;
mod status;
mod tombstones;
mod vouch;

pub use lifecycle::run;
