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
    /// Events after `after` (all kept ones if None); waits up to `wait_ms` for the first
    /// new one, so a client can follow the node live without polling in a loop.
    Events { after: Option<u64>, wait_ms: u64 },
    /// Downloads in progress.
    Transfers,
    /// Fault injection (tests only; refused unless the node runs with `--fault-hook`):
    /// drop all traffic to and from these members. An empty list heals.
    Partition { isolate: Vec<NodeId> },
    /// This node's settings as saved, and which of them wait for a restart.
    GetConfig,
    /// Change this node's settings: validated, saved, applied live where possible.
    SetConfig(ConfigChange),
    /// What this node does not have yet: local changes waiting to commit, committed
    /// files not on its disk yet.
    Pending,
    /// Change how a member is shown (its name); a non-leader forwards it to the leader.
    SetMemberInfo { id: NodeId, node: NodeInfo, hops: u8 },
    /// Give the cluster a new key, sealed to every member (`raftshare rotate-key`); a
    /// non-leader forwards it to the leader.
    RotateKey { hops: u8 },
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
    /// Answer to `Events`.
    Events(Vec<Event>),
    /// Answer to `Transfers`.
    Transfers(Vec<Transfer>),
    /// Answer to `GetConfig`.
    Config(Box<ConfigReport>),
    /// Answer to `SetConfig`: the settings now saved, and what the change did, for people.
    ConfigSaved { report: Box<ConfigReport>, message: String },
    /// Answer to `Pending`.
    Pending(PendingReport),
}

/// Something that happened on a node, for people watching it (TUI, `events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing per node run; `Events { after }` resumes from it.
    pub seq: u64,
    /// Wall clock, milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// A file changed here was queued to be committed.
    LocalChange {
        path: String,
        deleted: bool,
    },
    /// This node's changes were committed (sent to every node) as entry `index`.
    Sent {
        index: u64,
        paths: Vec<String>,
    },
    /// A file from another node was written here; `fetched` bytes came over the network.
    Received {
        path: String,
        from: String,
        size: u64,
        fetched: u64,
    },
    /// A file was deleted here because `by` deleted it.
    Deleted {
        path: String,
        by: String,
    },
    /// Two edits of one file met: the later one is kept as `kept_as`.
    Conflict {
        path: String,
        kept_as: String,
        by: String,
    },
    /// A member answered again, or stopped answering.
    NodeOnline {
        id: NodeId,
        name: String,
    },
    NodeOffline {
        id: NodeId,
        name: String,
    },
    /// The shared folder stopped being synced (why), or is synced again (None).
    Folder {
        problem: Option<String>,
    },
    /// The whole folder was compared with what this node knows (at start, and when the
    /// watcher lost events): `files` looked at, `changes` queued, in `took_ms`.
    Scanned {
        files: u64,
        changes: u64,
        took_ms: u64,
    },
}

/// A download in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    pub path: String,
    /// The node whose change this is (asked first).
    pub from: String,
    pub total_bytes: u64,
    /// Bytes already in place (found on this disk, resumed, or fetched).
    pub done_bytes: u64,
    /// When the download started, milliseconds since the Unix epoch.
    pub started_ms: i64,
}

/// What a peer says of itself when pinged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerProgress {
    pub node_id: NodeId,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Every file-table change up to this index is on that node's disk (its applier's
    /// watermark): the leader forgets tombstones only below every member's.
    pub materialized_index: Option<u64>,
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
    /// Bytes of the log entries still kept (before the snapshot purges them).
    pub log_size_bytes: u64,
    /// Local changes waiting to be committed (no quorum, or being proposed).
    pub pending_outbox: u64,
    /// Committed files this node does not have on disk yet.
    pub pending_downloads: u64,
    /// Block bytes served to peers, and fetched from peers, since the node started.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Why the shared folder is not being synced (its marker is missing), if it is not.
    pub folder_problem: Option<String>,
    /// Paths inside the folder that cannot be read (`path: why`; `/` is the folder
    /// itself): nothing at or under them is proposed or deleted until they can.
    pub unreadable: Vec<String>,
    /// Paths of the file table this node cannot hold (`path: why`): a name too long for
    /// its disk, a parent that is a link here. Every other node has them.
    pub cannot_hold: Vec<String>,
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
    /// Its identity's public key, hex (what its connections prove).
    pub identity: String,
}

/// A node's settings as `config.toml` (and the folder's `.raftshareignore`) hold them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigReport {
    pub node_id: NodeId,
    pub name: String,
    pub shared_dir: String,
    pub listen: String,
    /// The address peers dial.
    pub advertise: String,
    /// Subnets that may connect (CIDR); empty: this machine's subnets and loopback.
    pub allow: Vec<String>,
    /// The lines of the shared folder's `.raftshareignore` (gitignore syntax; the file is
    /// synced, so every node follows it).
    pub ignore: Vec<String>,
    /// Where the settings are saved.
    pub config_path: String,
    /// Settings saved but not in effect until the node restarts (`shared_dir`, `listen`, `allow`).
    pub restart_needed: Vec<String>,
}

/// A change of settings: `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigChange {
    pub name: Option<String>,
    pub shared_dir: Option<String>,
    /// `ip:port`.
    pub listen: Option<String>,
    /// CIDRs; an empty list means "this machine's subnets and loopback".
    pub allow: Option<Vec<String>>,
    /// The new lines of `.raftshareignore`.
    pub ignore: Option<Vec<String>>,
}

/// What a node does not have yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PendingReport {
    /// Local changes waiting to be committed (no quorum yet, or being proposed).
    pub outbox: Vec<PendingChange>,
    /// Committed files whose content is not on this node's disk yet.
    pub missing: Vec<String>,
}

/// One local change waiting to be committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingChange {
    pub path: String,
    pub deleted: bool,
    /// When it was queued, milliseconds since the Unix epoch.
    pub queued_at_ms: i64,
}
