//! The messages that travel over an authenticated connection once the handshake is
//! done: one `Request` gets one `Response`. The transport frames and multiplexes them;
//! it never looks inside.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::admin::{AdminRequest, AdminResponse};
use crate::types::{Digest, NodeId, TypeConfig};

/// A request from a peer or from the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Raft log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft election.
    Vote(VoteRequest<NodeId>),
    /// One chunk of a Raft snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Everything that is not Raft's own traffic: membership, forwarded writes, queries.
    Admin(AdminRequest),
    /// One block of a file's content, for the applier of another node.
    Block(BlockRequest),
    /// The latest rotated cluster key, sealed to the asking member's identity: the one
    /// request served to a peer that proved only a replaced key.
    FetchKey,
    /// Many blocks at once (the one block of each of many small files): one round trip
    /// and one disk task on the server instead of one per file. At most
    /// `MAX_BLOCKS_PER_REQUEST`; answered with `Blocks`.
    Blocks(Vec<BlockRequest>),
}

/// The most blocks one `Request::Blocks` may ask for.
pub const MAX_BLOCKS_PER_REQUEST: usize = 1024;

/// A `Blocks` answer stops adding bytes past this many; the blocks after that are
/// answered "ask again" (an error) so the answer stays far below a frame's limit.
pub const BLOCKS_ANSWER_BUDGET: usize = 16 << 20;

/// Which block a node wants: block `index` of the file at `path` whose whole content
/// hashes to `file_hash`. The server may serve it from any local file holding a block
/// that hashes to `block`, and always checks that hash before sending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRequest {
    pub path: String,
    pub file_hash: Digest,
    pub index: u32,
    pub block: Digest,
}

/// The answer to one `Request`.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Admin(AdminResponse),
    /// The block's bytes, or why this node cannot serve it.
    Block(Result<serde_bytes::ByteBuf, String>),
    /// The request could not be served; the text says why and what to do.
    Error(String),
    /// Not served: the cluster key this connection proved was replaced by a rotation.
    /// Ask for the new one with `FetchKey`.
    KeyRotated,
    /// Answer to `FetchKey`: the key of rotation `epoch`, sealed to the asker's identity.
    SealedKey {
        epoch: u64,
        sealed: serde_bytes::ByteBuf,
    },
    /// Answer to `Blocks`: for each request in its order, the block's bytes or why not.
    Blocks(Vec<Result<serde_bytes::ByteBuf, String>>),
}
