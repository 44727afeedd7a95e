//! Admin messages: what the CLI asks its node, and what nodes ask each other outside
//! of Raft's own RPCs (membership changes forwarded to the leader, liveness pings).
//!
//! Reports are plain structs with stable field names: the CLI prints them as the
//! `--json` contract of DESIGN.md. No `skip_serializing_if` or `flatten` here: bincode
//! carries them too.

use serde::{Deserialize, Serialize};

use crate::types::{ApplyResult, Change, Entry, FileRecord, NodeId, NodeInfo};

/// A request outside Raft's own RPCs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Liveness and progress of a peer.
    Ping,
    /// This node's view of the cluster.
    Status,
    /// Log entries from `from` (default: the first kept), at most `limit`.
    Log { from: Option<u64>, limit: Option<u64> },
    /// Make this uninitialized node a one-node cluster.
    Bootstrap,
    /// Ask this (uninitialized) node to join the cluster that `peer` belongs to.
    JoinCluster { peer: String, learner: bool },
    /// Add a node to the cluster; a non-leader forwards it to the leader.
    AddMember { id: NodeId, node: NodeInfo, learner: bool, hops: u8 },
    /// Make a learner a voter; a non-leader forwards it to the leader.
    Promote { id: NodeId, hops: u8 },
    /// Take a node out of the cluster; a non-leader forwards it to the leader.
    RemoveMember { id: NodeId, hops: u8 },
    /// Take this node out of its cluster.
    Leave,
    /// Commit a change to the file table; a non-leader forwards it to the leader.
    Propose { change: Change, hops: u8 },
    /// The file table, tombstones included.
    Ls,
}

/// The answer to an `AdminRequest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminResponse {
    /// Answer to `Ping`.
    Pong(PeerProgress),
    /// Answer to `Status`.
    Status(Box<StatusReport>),
    /// Answer to `Log`.
    Log(Vec<Entry>),
    /// A change was made; the text says what, for people.
    Done(String),
    /// Answer to `Propose`: the entry's index and what applying it did.
    Committed { index: u64, result: ApplyResult },
    /// Answer to `Ls`.
    Files(Vec<FileRecord>),
}

/// What a peer says of itself when pinged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerProgress {
    pub node_id: NodeId,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
}

/// `raftshare status`: one node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub node_id: NodeId,
    pub name: String,
    pub addr: String,
    pub cluster_id: String,
    /// `leader`, `follower`, `candidate`, `learner`, or `uninitialized` (not in a cluster yet).
    pub role: String,
    pub leader_id: Option<NodeId>,
    pub leader_addr: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// The oldest log index still kept (older ones are in the snapshot).
    pub first_log_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// Bytes used by the node's database on disk.
    pub db_size_bytes: u64,
    /// Local changes waiting to be committed (no quorum, or being proposed).
    pub pending_outbox: u64,
    /// Committed files this node does not have on disk yet.
    pub pending_downloads: u64,
    /// Block bytes served to peers, and fetched from peers, since the node started.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Why the shared folder is not being synced (its marker is missing), if it is not.
    pub folder_problem: Option<String>,
    pub members: Vec<MemberStatus>,
}

/// One member of the cluster as a node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub name: String,
    pub addr: String,
    /// Counts for quorum (a learner does not).
    pub voter: bool,
    /// Answered a ping within the last few seconds (this node is always online to itself).
    pub online: bool,
    /// The last log index known to be on that member.
    pub matched_index: Option<u64>,
    /// Milliseconds since that member last answered, if it ever did.
    pub last_seen_ms: Option<u64>,
}
