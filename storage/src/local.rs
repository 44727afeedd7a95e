//! [`LocalIndex`]: what this node has on disk in its shared folder — per path the size,
//! mtime and hashes last seen or written, and the file-table version that content stands
//! for — with a locator kept in step (which files hold a block) and the applier's
//! watermark.
//!
//! It is this node's own knowledge, never replicated: the scanner compares the folder
//! with it to find local edits; the applier records what it wrote, so the watcher's echo
//! of that write is recognised, and asks the locator for blocks already on this disk
//! before fetching them from peers. It reads no file itself.

use std::collections::HashSet;

use raftshare_raft::Digest;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, Transactional, TransactionalTree};

use crate::codec::{decode, digest_key, digest_key_path, encode, paths_under, CodecError};

/// Key of the applier's watermark in the local meta tree (big-endian `u64`).
const MATERIALIZED_KEY: &[u8] = b"materialized";

/// At most this many candidates from [`LocalIndex::find_block`]: the caller reads and
/// verifies them in turn, and one good copy is all it needs.
const MAX_BLOCK_CANDIDATES: usize = 8;

/// What this node has on disk at one path of its shared folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEntry {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime: i64,
    /// BLAKE3 of the whole file.
    pub hash: Digest,
    /// BLAKE3 of each block of `BLOCK_SIZE` bytes.
    pub blocks: Vec<Digest>,
    /// The file-table version this content corresponds to; `None` for a local file never committed.
    pub version: Option<u64>,
}

/// Why the local index could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// sled failed (disk full, I/O error, …).
    #[error("cannot read or write the local index in the database: {0}")]
    Db(#[source] sled::Error),
    /// Stored bytes do not decode.
    #[error(
        "the local index is damaged ({0}); it only mirrors the shared folder, so removing the entry and rescanning restores it"
    )]
    Damaged(String),
}

impl From<CodecError> for LocalError {
    fn from(error: CodecError) -> Self {
        match error {
            CodecError::Sled(e) => LocalError::Db(e),
            other => LocalError::Damaged(other.to_string()),
        }
    }
}

/// This node's index of its shared folder, with its block locator (cheap to
/// clone; clones share the database).
#[derive(Clone)]
pub struct LocalIndex {
    /// path → `LocalEntry`.
    entries: sled::Tree,
    /// `<block digest><path>` → first index of that block in the file (BE `u32`).
    blocks: sled::Tree,
    /// The watermark.
    meta: sled::Tree,
}

impl LocalIndex {
    pub(crate) fn new(entries: sled::Tree, blocks: sled::Tree, meta: sled::Tree) -> Self {
        LocalIndex { entries, blocks, meta }
    }

    /// Reads the watermark: what `Store::open` checks.
    pub(crate) fn check(&self) -> Result<(), CodecError> {
        self.read_materialized()?;
        Ok(())
    }

    /// The entry at `path`, if this node has recorded one.
    pub fn get(&self, path: &str) -> Result<Option<LocalEntry>, LocalError> {
        match self.entries.get(path.as_bytes()).map_err(LocalError::Db)? {
            Some(bytes) => Ok(Some(decode_entry(path, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Records `entry` at `path`, replacing any previous one, and updates the block
    /// locator in the same transaction.
    pub fn put(&self, path: &str, entry: &LocalEntry) -> Result<(), LocalError> {
        self.update(&[(path, Some(entry))]).map(drop)
    }

    /// Removes `path`'s entry (and its locator keys); returns what it was.
    pub fn remove(&self, path: &str) -> Result<Option<LocalEntry>, LocalError> {
        Ok(self.update(&[(path, None)])?.pop().flatten())
    }

    /// Puts (`Some`) or removes (`None`) many entries in one transaction: a burst of
    /// changes takes sled's exclusive lock once, not once per file (each wait for it can
    /// last a whole flush). Returns the entries each change replaced, in order.
    pub fn update(&self, changes: &[(&str, Option<&LocalEntry>)]) -> Result<Vec<Option<LocalEntry>>, LocalError> {
        let values = changes
            .iter()
            .map(|(path, entry)| entry.map(|e| encode(format_args!("the local entry of {path:?}"), e)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let written = (&self.entries, &self.blocks).transaction(|(entries, blocks)| {
            let mut replaced = Vec::with_capacity(changes.len());
            for ((path, entry), value) in changes.iter().zip(&values) {
                let old = match value {
                    Some(value) => entries.insert(path.as_bytes(), value.as_slice())?,
                    None => entries.remove(path.as_bytes())?,
                };
                // The old entry's locator keys are derived from its content: read it inside
                // the transaction so a concurrent put of the same path cannot leave stale ones.
                let old = old.and_then(|bytes| decode_or_warn(path, &bytes));
                if let Some(old) = &old {
                    unlocate(blocks, path, old)?;
                }
                if let Some(entry) = entry {
                    locate(blocks, path, entry)?;
                }
                replaced.push(old);
            }
            Ok(replaced)
        });
        written.map_err(|e| LocalError::from(CodecError::from(e)))
    }

    pub fn entries(&self) -> Vec<(String, LocalEntry)> {
        self.collect(self.entries.iter())
    }

    /// The paths at `dir` itself or below it (`dir/…`), sorted; `""` is the whole
    /// folder. `dir` is not a raw prefix: `a` does not match `a.txt` or `ab/c`. Only the
    /// keys are read: a folder of 100,000 files costs no decoded entries.
    pub fn paths_under(&self, dir: &str) -> Vec<String> {
        paths_under(&self.entries, dir, "local index")
    }

    /// How many paths the index holds (counts them: O(n)).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the index holds no path.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Up to a few `(path, block index)` where a block with this digest was recorded; the
    /// file may have changed since, so the caller verifies what it reads.
    pub fn find_block(&self, digest: &Digest) -> Vec<(String, u32)> {
        self.blocks
            .scan_prefix(digest.0)
            .filter_map(|item| match item.map_err(CodecError::from).and_then(|(k, v)| decode_block_hit(&k, &v)) {
                Ok(hit) => Some(hit),
                Err(e) => {
                    tracing::warn!(block = %digest, "skipping an unreadable block locator: {e}");
                    None
                }
            })
            .take(MAX_BLOCK_CANDIDATES)
            .collect()
    }

    /// The applier's watermark: every table change up to this log index is on this disk.
    pub fn materialized(&self) -> Option<u64> {
        self.read_materialized().unwrap_or_else(|e| {
            tracing::warn!("cannot read the applier's watermark, starting from the beginning: {e}");
            None
        })
    }

    /// Moves the applier's watermark to `index`.
    ///
    /// Not fsynced here (sled flushes within half a second; [`LocalIndex::flush`] waits
    /// for it): a watermark lost in a crash only makes the applier check again what it
    /// had already written.
    pub fn set_materialized(&self, index: u64) -> Result<(), LocalError> {
        self.meta.insert(MATERIALIZED_KEY, &index.to_be_bytes()).map_err(LocalError::Db)?;
        Ok(())
    }

    /// Forgets the watermark, so the applier goes over the whole table (after a snapshot
    /// was installed, for one).
    pub fn clear_materialized(&self) -> Result<(), LocalError> {
        self.meta.remove(MATERIALIZED_KEY).map_err(LocalError::Db)?;
        Ok(())
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<(), LocalError> {
        // A tree's flush is the whole database's: one is enough for all four trees.
        self.entries.flush_async().await.map_err(LocalError::Db)?;
        Ok(())
    }

    fn read_materialized(&self) -> Result<Option<u64>, CodecError> {
        let Some(bytes) = self.meta.get(MATERIALIZED_KEY)? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
            CodecError::Invalid(format!("the applier's watermark is {} bytes instead of 8", bytes.len()))
        })?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    fn collect(&self, items: sled::Iter) -> Vec<(String, LocalEntry)> {
        items
            .filter_map(|item| {
                let decoded = item.map_err(CodecError::from).and_then(|(k, v)| {
                    let path = String::from_utf8(k.to_vec())
                        .map_err(|_| CodecError::Invalid("a local index key that is not UTF-8".to_owned()))?;
                    let entry = decode_entry(&path, &v)?;
                    Ok((path, entry))
                });
                decoded.map_err(|e| tracing::warn!("skipping an unreadable local entry: {e}")).ok()
            })
            .collect()
    }
}

fn decode_entry(path: &str, bytes: &[u8]) -> Result<LocalEntry, CodecError> {
    decode(format_args!("the local entry of {path:?}"), bytes)
}

/// The old entry being replaced or removed; a damaged one must not block the write that
/// repairs it, at the cost of its locator keys (hints the caller verifies anyway).
fn decode_or_warn(path: &str, bytes: &[u8]) -> Option<LocalEntry> {
    decode_entry(path, bytes).map_err(|e| tracing::warn!("replacing a damaged local entry: {e}")).ok()
}

/// Adds `entry`'s locator keys.
fn locate(
    blocks: &TransactionalTree,
    path: &str,
    entry: &LocalEntry,
) -> Result<(), ConflictableTransactionError<CodecError>> {
    let mut seen = HashSet::new();
    for (index, digest) in entry.blocks.iter().enumerate() {
        // A repeated block (zeros, say) is found at its first place; any place would do.
        let Ok(index) = u32::try_from(index) else { break };
        if seen.insert(digest) {
            blocks.insert(digest_key(digest, path), &index.to_be_bytes())?;
        }
    }
    Ok(())
}

/// Removes `entry`'s locator keys.
fn unlocate(
    blocks: &TransactionalTree,
    path: &str,
    entry: &LocalEntry,
) -> Result<(), ConflictableTransactionError<CodecError>> {
    for digest in entry.blocks.iter().collect::<HashSet<_>>() {
        blocks.remove(digest_key(digest, path))?;
    }
    Ok(())
}

fn decode_block_hit(key: &[u8], value: &[u8]) -> Result<(String, u32), CodecError> {
    let path = digest_key_path(key)?;
    let index: [u8; 4] = value
        .try_into()
        .map_err(|_| CodecError::Invalid(format!("the block locator of {path:?} holds {} bytes", value.len())))?;
    Ok((path, u32::from_be_bytes(index)))
}
