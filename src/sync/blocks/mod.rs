//! Moving blocks between nodes: `BlockFetcher` asks peers for the blocks a file needs
//! (the change's origin first, then the others; several blocks in flight), and
//! `serve_block` answers such a request from this node's folder.
//!
//! Every block is checked against its BLAKE3: a fetcher never writes one that does not
//! match. A server hashes what it sends too, except a large block of a file whose stamp
//! is still the one it was indexed with (a rewrite in the same clock tick is caught by
//! the fetcher, which then asks the next peer).

use std::sync::Arc;
use std::time::Duration;

use raftshare_raft::proto::{BlockRequest, Request, Response, BLOCKS_ANSWER_BUDGET};
use raftshare_raft::transport::ConnectionPool;
use raftshare_raft::{Digest, FileRecord, NodeId, Raft, BLOCK_SIZE};
use serde_bytes::ByteBuf;
use tracing::debug;

use crate::sync::error::FetchError;
use crate::sync::folder::Folder;
use crate::sync::state::SyncState;

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
                SyncState::count(&self.sync.stats.bytes_received, bytes.len());
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

/// A block at least this large is served without hashing it again when the file is
/// unchanged since it was indexed (a smaller one costs less to hash than to look up).
const TRUSTED_BLOCK: usize = 256 << 10;

/// Blocks at most this large are kept once served ([`ServedBlocks`])...
const SERVED_BLOCK_MAX: usize = 64 << 10;
/// ...up to this many bytes in all, each block counted with `SERVED_OVERHEAD` more (its
/// place in the map and in the order): 3,000 small files of 512 bytes at most.
const SERVED_KEPT_BYTES: usize = 2 << 20;
const SERVED_OVERHEAD: usize = 128;
// A kept block was always hashed before it was served, and a trusted block's stamp is
// taken after it was read.
const _: () = assert!(SERVED_BLOCK_MAX < TRUSTED_BLOCK && crate::sync::folder::STAMPED_AFTER_READ <= TRUSTED_BLOCK);

/// Small blocks served lately, by digest, oldest out first: every receiver of a burst
/// asks this node for each of its new files within moments of the others, and all but
/// the first are answered from memory instead of opening and reading the file again.
/// Only bytes checked against their digest are kept, so they are that block's bytes
/// whatever became of the file since.
#[derive(Default)]
pub struct ServedBlocks {
    kept: std::sync::Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    by_digest: std::collections::HashMap<Digest, Box<[u8]>>,
    order: std::collections::VecDeque<Digest>,
    bytes: usize,
}

impl ServedBlocks {
    fn get(&self, block: &Digest) -> Option<Vec<u8>> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.by_digest.get(block).map(|bytes| bytes.to_vec())
    }

    /// Keep `bytes`, which hash to `block`.
    fn keep(&self, block: Digest, bytes: &[u8]) {
        if bytes.len() > SERVED_BLOCK_MAX {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.by_digest.insert(block, bytes.into()).is_some() {
            return;
        }
        kept.order.push_back(block);
        kept.bytes += bytes.len() + SERVED_OVERHEAD;
        while kept.bytes > SERVED_KEPT_BYTES {
            let Some(oldest) = kept.order.pop_front() else { break };
            if let Some(gone) = kept.by_digest.remove(&oldest) {
                kept.bytes -= gone.len() + SERVED_OVERHEAD;
            }
        }
    }
}

/// Answer a peer's block request from this node's folder (blocking I/O: call it from
/// a blocking thread).
pub fn serve_block(sync: &SyncState, req: &BlockRequest) -> Result<Vec<u8>, String> {
    if let Some(bytes) = sync.served.get(&req.block) {
        SyncState::count(&sync.stats.bytes_sent, bytes.len());
        return Ok(bytes);
    }
    let from_path = sync.folder.path_of(&req.path).ok().and_then(|p| Folder::read_block_as_is(&p, req.index).ok());
    let verified = from_path.flatten().and_then(|(bytes, stamp)| {
        let indexed = || {
            sync.local.get(&req.path).ok().flatten().is_some_and(|e| {
                e.size == stamp.size && e.mtime == stamp.mtime && e.blocks.get(req.index as usize) == Some(&req.block)
            })
        };
        // The fetcher verifies every block too: this check only spares it a wrong one.
        let trusted = bytes.len() >= TRUSTED_BLOCK && indexed();
        (trusted || Digest::of(&bytes) == req.block).then_some(bytes)
    });
    let bytes = verified.or_else(|| sync.local_block(&req.block));
    match bytes {
        Some(bytes) => {
            // A small block was hashed above (or by `local_block`): these are its bytes.
            sync.served.keep(req.block, &bytes);
            SyncState::count(&sync.stats.bytes_sent, bytes.len());
            Ok(bytes)
        }
        None => Err(format!("this node does not have block {} of {:?} (any more)", req.index, req.path)),
    }
}

/// Answer a peer's request for many blocks, in order, on this (blocking) thread. Once
/// the answer holds `BLOCKS_ANSWER_BUDGET` bytes, the rest are answered "ask again".
pub fn serve_blocks(sync: &SyncState, reqs: &[BlockRequest]) -> Vec<Result<Vec<u8>, String>> {
    let mut bytes = 0;
    reqs.iter()
        .map(|req| {
            if bytes >= BLOCKS_ANSWER_BUDGET {
                return Err(format!("block {} of {:?} did not fit in this answer: ask again", req.index, req.path));
            }
            let served = serve_block(sync, req);
            bytes += served.as_ref().map_or(0, Vec::len);
            served
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! `serve_block` against a real database and folder.

    use std::fs;

    use raftshare_storage::LocalEntry;

    use super::*;
    use crate::sync::disk;
    use crate::sync::state::TestSync;

    /// Write `bytes` at `rel` and index it as it is now; its block 0's request.
    fn indexed(sync: &SyncState, rel: &str, bytes: &[u8]) -> BlockRequest {
        let path = sync.folder.root().join(rel);
        fs::write(&path, bytes).unwrap();
        let content = disk::hash_file(&path).unwrap().unwrap();
        let entry = LocalEntry {
            size: content.stamp.size,
            mtime: content.stamp.mtime,
            hash: content.hash,
            blocks: content.blocks.clone(),
            version: Some(1),
        };
        sync.local.put(rel, &entry).unwrap();
        BlockRequest { path: rel.into(), file_hash: content.hash, index: 0, block: content.blocks[0] }
    }

    #[test]
    fn a_large_block_of_an_unchanged_file_is_served() {
        let s = TestSync::new();
        let bytes = vec![7u8; TRUSTED_BLOCK + 1];
        let req = indexed(&s.sync, "big.bin", &bytes);
        assert_eq!(serve_block(&s.sync, &req).unwrap(), bytes);
    }

    #[test]
    fn a_block_of_a_file_changed_since_it_was_indexed_is_not_served() {
        let s = TestSync::new();
        for (rel, size) in [("big.bin", TRUSTED_BLOCK + 1), ("small.bin", 100)] {
            let req = indexed(&s.sync, rel, &vec![1u8; size]);
            // Rewritten in place with other bytes and another mtime: the stamp differs.
            let path = s.sync.folder.root().join(rel);
            fs::write(&path, vec![2u8; size]).unwrap();
            let file = fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1)).unwrap();
            assert!(serve_block(&s.sync, &req).is_err(), "{rel}: the old block is gone");
        }
    }

    #[test]
    fn a_small_block_once_served_is_answered_from_memory_which_is_bounded() {
        let s = TestSync::new();
        let req = indexed(&s.sync, "small.bin", b"hello");
        assert_eq!(serve_block(&s.sync, &req).unwrap(), b"hello");
        fs::remove_file(s.sync.folder.root().join("small.bin")).unwrap();
        assert_eq!(serve_block(&s.sync, &req).unwrap(), b"hello", "its bytes are still known");

        let too_big = vec![9u8; SERVED_BLOCK_MAX + 1];
        s.sync.served.keep(Digest::of(&too_big), &too_big);
        assert!(s.sync.served.get(&Digest::of(&too_big)).is_none(), "only small blocks are kept");
        // Blocks served since push the oldest out.
        for i in 0..=SERVED_KEPT_BYTES / SERVED_BLOCK_MAX {
            let block = vec![i as u8; SERVED_BLOCK_MAX];
            s.sync.served.keep(Digest::of(&block), &block);
        }
        assert!(serve_block(&s.sync, &req).is_err(), "forgotten once 2 MiB came after it");
        let newest = vec![(SERVED_KEPT_BYTES / SERVED_BLOCK_MAX) as u8; SERVED_BLOCK_MAX];
        assert_eq!(s.sync.served.get(&Digest::of(&newest)), Some(newest));
    }

    #[test]
    fn many_blocks_are_answered_in_order_until_the_budget_is_spent() {
        let s = TestSync::new();
        let block = raftshare_raft::BLOCK_SIZE as usize;
        let fits = BLOCKS_ANSWER_BUDGET / block;
        let mut reqs: Vec<BlockRequest> =
            (0..fits + 2).map(|i| indexed(&s.sync, &format!("f{i}"), &vec![i as u8; block])).collect();
        reqs.insert(
            1,
            BlockRequest { path: "gone".into(), file_hash: Digest([1; 32]), index: 0, block: Digest([2; 32]) },
        );
        let answers = serve_blocks(&s.sync, &reqs);
        assert_eq!(answers.len(), reqs.len());
        assert!(
            answers[1].as_ref().is_err_and(|e| e.contains("does not have block")),
            "{:?}",
            answers[1].as_ref().err()
        );
        let served: Vec<usize> = answers.iter().enumerate().filter(|(_, a)| a.is_ok()).map(|(i, _)| i).collect();
        assert_eq!(served.len(), fits, "the budget holds {fits} blocks");
        for i in served {
            assert_eq!(answers[i].as_ref().unwrap(), &vec![reqs[i].path[1..].parse::<u8>().unwrap(); block]);
        }
        for late in &answers[fits + 1..] {
            assert!(late.as_ref().is_err_and(|e| e.contains("ask again")), "{:?}", late.as_ref().err());
        }
    }

    #[test]
    fn a_block_the_index_does_not_list_at_that_index_is_hashed() {
        let s = TestSync::new();
        let bytes = vec![3u8; TRUSTED_BLOCK + 1];
        let mut req = indexed(&s.sync, "big.bin", &bytes);
        req.block = Digest::of(b"something else");
        assert!(serve_block(&s.sync, &req).is_err());
    }
}
