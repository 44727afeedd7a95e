//! Small blocks this node served lately, kept in memory for the other receivers of a
//! burst. Knows nothing of files: only digests and bytes already checked against them.

use raftshare_raft::Digest;

/// Blocks at most this large are kept once served ([`ServedBlocks`])...
pub(crate) const SERVED_BLOCK_MAX: usize = 64 << 10;
/// ...up to this many bytes in all, each block counted with `SERVED_OVERHEAD` more (its
/// place in the map and in the order): 3,000 small files of 512 bytes at most.
pub(crate) const SERVED_KEPT_BYTES: usize = 2 << 20;
const SERVED_OVERHEAD: usize = 128;
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
    /// The bytes of `block`, if kept.
    pub(crate) fn get(&self, block: &Digest) -> Option<Vec<u8>> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.by_digest.get(block).map(|bytes| bytes.to_vec())
    }

    /// Keep `bytes`, which hash to `block`.
    pub(crate) fn keep(&self, block: Digest, bytes: &[u8]) {
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
