//! The fetch client: `BlockFetcher` asks peers for the blocks a file needs (the
//! change's origin first, then the others; several blocks in flight) and checks every
//! block against its BLAKE3 before handing it over: a block that does not match is
//! never written.

use std::sync::Arc;
use std::time::Duration;

use raftshare_raft::proto::{BlockRequest, Request, Response};
use raftshare_raft::transport::ConnectionPool;
use raftshare_raft::{Digest, FileRecord, NodeId, Raft, BLOCK_SIZE};
use serde_bytes::ByteBuf;
use tracing::debug;

use crate::sync::error::FetchError;
use crate::sync::state::{Stats, SyncState};

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
    pub async fn fetch(&self, record: &FileRecord, index: u32) -> Result<Vec<u8>, FetchError> {
        let req = block_request(record, index);
        let mut why = Vec::new();
        for addr in self.sources(record.origin, index as usize) {
            match self.pool.call(&addr, Request::Block(req.clone()), BLOCK_TIMEOUT).await {
                Ok(Response::Block(answer)) => match self.checked(&addr, answer, req.block, block_len(record, index)) {
                    Ok(bytes) => return Ok(bytes),
                    Err(e) => why.push(e),
                },
                Ok(other) => why.push(format!("{addr} answered {other:?}")),
                Err(e) => why.push(e.to_string()),
            }
        }
        if why.is_empty() {
            why.push("no other member to ask".into());
        }
        Err(FetchError { path: record.path.clone(), index, why })
    }

    /// The first block of each of `records` (small files of one block, of one origin): all
    /// asked of the origin in one request, then any it did not send intact of the others,
    /// one by one. For each record in order, its checked bytes or why not.
    pub async fn fetch_firsts(&self, records: &[FileRecord]) -> Vec<Result<Vec<u8>, FetchError>> {
        let Some(first) = records.first() else { return Vec::new() };
        let reqs: Vec<BlockRequest> = records.iter().map(|r| block_request(r, 0)).collect();
        let mut answers: Vec<Option<Vec<u8>>> = vec![None; records.len()];
        if let Some(addr) = self.sources(first.origin, 0).first() {
            match self.pool.call(addr, Request::Blocks(reqs), BLOCK_TIMEOUT).await {
                Ok(Response::Blocks(results)) => {
                    for ((answer, record), result) in answers.iter_mut().zip(records).zip(results) {
                        match self.checked(addr, result, record.blocks[0], block_len(record, 0)) {
                            Ok(bytes) => *answer = Some(bytes),
                            Err(why) => debug!(path = %record.path, "{why}"),
                        }
                    }
                }
                Ok(other) => debug!("{addr} answered a request for {} blocks with {other:?}", records.len()),
                Err(e) => debug!("{addr}: {e}"),
            }
        }
        let mut out = Vec::with_capacity(records.len());
        for (answer, record) in answers.into_iter().zip(records) {
            out.push(match answer {
                Some(bytes) => Ok(bytes),
                None => self.fetch(record, 0).await,
            });
        }
        out
    }

    /// `addr`'s answer for the block `want`, `len` bytes long: its bytes if they are that
    /// long and hash to it (counted as received), else why not. The length is the
    /// record's own: a record whose blocks are not of `BLOCK_SIZE` is refused, not
    /// written past its size.
    fn checked(&self, addr: &str, answer: Result<ByteBuf, String>, want: Digest, len: u64) -> Result<Vec<u8>, String> {
        match answer {
            Ok(bytes) if bytes.len() as u64 != len => {
                Err(format!("{addr} sent a block of {} bytes where the record has {len}", bytes.len()))
            }
            Ok(bytes) if Digest::of(&bytes) == want => {
                Stats::count(&self.sync.stats.bytes_received, bytes.len());
                Ok(bytes.into_vec())
            }
            Ok(_) => Err(format!("{addr} sent a block that does not match its hash")),
            Err(e) => Err(format!("{addr}: {e}")),
        }
    }
}

/// How long block `index` of `record` is: `BLOCK_SIZE`, but for the last.
pub(crate) fn block_len(record: &FileRecord, index: u32) -> u64 {
    record.size.saturating_sub(index as u64 * BLOCK_SIZE).min(BLOCK_SIZE)
}

/// The request for block `index` of `record`.
fn block_request(record: &FileRecord, index: u32) -> BlockRequest {
    BlockRequest { path: record.path.clone(), file_hash: record.hash, index, block: record.blocks[index as usize] }
}
