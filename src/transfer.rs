//! Moving blocks between nodes: `BlockFetcher` asks peers for the blocks a file needs
//! (the change's origin first, then the others; several blocks in flight), and
//! `serve_block` answers such a request from this node's folder.
//!
//! Every block is checked against its BLAKE3 on both sides: a server never sends a
//! block whose content changed since it was indexed, and a fetcher never writes one
//! that does not match.

use std::sync::Arc;
use std::time::Duration;

use raftshare_raft::proto::{BlockRequest, Request, Response};
use raftshare_raft::transport::ConnectionPool;
use raftshare_raft::{Digest, FileRecord, NodeId, Raft};

use crate::folder::Folder;
use crate::sync::SyncState;

/// One block's request may take this long (1 MiB on a slow LAN, a busy old laptop).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Fetches blocks from the other members of the cluster.
#[derive(Clone)]
pub struct BlockFetcher {
    self_id: NodeId,
    raft: Raft,
    pool: ConnectionPool,
    sync: Arc<SyncState>,
}

impl BlockFetcher {
    /// A fetcher that asks the members `raft` knows, over `pool`.
    pub fn new(self_id: NodeId, raft: Raft, pool: ConnectionPool, sync: Arc<SyncState>) -> BlockFetcher {
        BlockFetcher { self_id, raft, pool, sync }
    }

    /// The members to ask, origin first; the others rotated by `spread` so that the
    /// blocks of one file come from several peers.
    fn sources(&self, origin: NodeId, spread: usize) -> Vec<String> {
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        let mut first = Vec::new();
        let mut others = Vec::new();
        for (id, node) in membership.nodes() {
            if *id == self.self_id {
                continue;
            }
            if *id == origin {
                first.push(node.addr.clone());
            } else {
                others.push(node.addr.clone());
            }
        }
        if !others.is_empty() {
            let n = others.len();
            others.rotate_left(spread % n);
        }
        first.extend(others);
        first
    }

    /// Block `index` of `record`, from the first peer that has it intact.
    pub async fn fetch(&self, record: &FileRecord, index: u32) -> Result<Vec<u8>, String> {
        let want = record.blocks[index as usize];
        let req = BlockRequest { path: record.path.clone(), file_hash: record.hash, index, block: want };
        let mut why = Vec::new();
        for addr in self.sources(record.origin, index as usize) {
            match self.pool.call(&addr, Request::Block(req.clone()), BLOCK_TIMEOUT).await {
                Ok(Response::Block(Ok(bytes))) if Digest::of(&bytes) == want => {
                    SyncState::count(&self.sync.stats.bytes_received, bytes.len());
                    return Ok(bytes.into_vec());
                }
                Ok(Response::Block(Ok(_))) => why.push(format!("{addr} sent a block that does not match its hash")),
                Ok(Response::Block(Err(e))) => why.push(format!("{addr}: {e}")),
                Ok(other) => why.push(format!("{addr} answered {other:?}")),
                Err(e) => why.push(e.to_string()),
            }
        }
        if why.is_empty() {
            why.push("no other member to ask".into());
        }
        Err(format!("block {index} of {:?}: {}", record.path, why.join("; ")))
    }
}

/// Answer a peer's block request from this node's folder (blocking I/O: call it from
/// a blocking thread).
pub fn serve_block(sync: &SyncState, req: &BlockRequest) -> Result<Vec<u8>, String> {
    let from_path =
        sync.folder.path_of(&req.path).ok().and_then(|p| Folder::read_block(&p, req.index, &req.block).ok());
    let bytes = from_path.flatten().or_else(|| sync.local_block(&req.block));
    match bytes {
        Some(bytes) => {
            SyncState::count(&sync.stats.bytes_sent, bytes.len());
            Ok(bytes)
        }
        None => Err(format!("this node does not have block {} of {:?} (any more)", req.index, req.path)),
    }
}
