//! The block server: answers a peer's block requests from this node's folder (or its
//! trash, or the blocks served lately). A server hashes what it sends, except a large
//! block of a file whose stamp is still the one it was indexed with (a rewrite in the
//! same clock tick is caught by the fetcher, which then asks the next peer).

use raftshare_raft::proto::{BlockRequest, BLOCKS_ANSWER_BUDGET};
use raftshare_raft::Digest;

use crate::sync::blocks::served::SERVED_BLOCK_MAX;
use crate::sync::folder::Folder;
use crate::sync::state::{Stats, SyncState};

/// A block at least this large is served without hashing it again when the file is
/// unchanged since it was indexed (a smaller one costs less to hash than to look up).
const TRUSTED_BLOCK: usize = 256 << 10;

// A kept block was always hashed before it was served, and a trusted block's stamp is
// taken after it was read.
const _: () = assert!(SERVED_BLOCK_MAX < TRUSTED_BLOCK && crate::sync::folder::STAMPED_AFTER_READ <= TRUSTED_BLOCK);

/// Answer a peer's block request from this node's folder (blocking I/O: call it from
/// a blocking thread).
pub fn serve_block(sync: &SyncState, req: &BlockRequest) -> Result<Vec<u8>, String> {
    if let Some(bytes) = sync.served.get(&req.block) {
        Stats::count(&sync.stats.bytes_sent, bytes.len());
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
            Stats::count(&sync.stats.bytes_sent, bytes.len());
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
    use crate::sync::blocks::served::SERVED_KEPT_BYTES;
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
