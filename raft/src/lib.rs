//! raftshare's consensus glue and wire.
//!
//! Layout:
//! - `types`: the replicated data model (`FileOp`, `Change`, `FileRecord`) and openraft's type config.
//! - `proto`, `admin`: the requests and responses nodes and the CLI exchange.
//! - `key`: the cluster key and the cluster id derived from it; each node's identity key.
//! - `handshake`: mutual authentication over the cluster key and both sides' identity
//!   keys, no secret on the wire (messages, proofs, Noise keys).
//! - `transport`: framed, multiplexed connections (codec, server, client, pool, member
//!   directory); connection limits and the subnet check on accept; the local socket.
//! - `network`: openraft's `RaftNetworkFactory` over the transport; the member directory
//!   read from the Raft membership.

pub mod admin;
pub mod handshake;
pub mod key;
pub mod network;
pub mod proto;
pub mod transport;
pub mod types;

pub use types::*;
