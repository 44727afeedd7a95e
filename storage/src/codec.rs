//! How the store lays its data out in sled: tree names, keys, bincode values, and the
//! one error type of the low-level reads and writes.
//!
//! The trait impls turn a [`CodecError`] into openraft's `StorageError` at their edge,
//! where they know the subject (log, vote, state machine, snapshot) and the verb.

use std::fmt;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use raftshare_raft::{Digest, NodeId, StorageError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::TransactionError;

/// Log entries, keyed by big-endian `u64` index so that sled's byte order is log order.
pub(crate) const LOG_TREE: &str = "raft_log";
/// Vote, committed mark and last purged log id.
pub(crate) const RAFT_META_TREE: &str = "raft_meta";
/// The file table (`f/<path>`), its entry index (`e/<version><first path>`) and the state
/// machine's marks (`m/...`), in one tree so that one `sled::Batch` changes them together.
pub(crate) const STATE_MACHINE_TREE: &str = "state_machine";
/// This node's local index: path → `LocalEntry`.
pub(crate) const LOCAL_INDEX_TREE: &str = "local_index";
/// Block locator: `<block digest><path>` → block index (big-endian `u32`).
pub(crate) const LOCAL_BLOCKS_TREE: &str = "local_blocks";
/// A whole-file locator (`<file hash><path>` → nothing) that older databases have;
/// dropped at open.
pub(crate) const LOCAL_HASHES_TREE: &str = "local_hashes";
/// The local index's marks (the applier's watermark).
pub(crate) const LOCAL_META_TREE: &str = "local_meta";
/// The outbox: big-endian seq → `PendingOp`.
pub(crate) const OUTBOX_QUEUE_TREE: &str = "outbox_queue";
/// The outbox of older databases, path → `PendingOp`; moved into the queue at open.
pub(crate) const OLD_OUTBOX_TREE: &str = "outbox";
/// The order of the older outbox, big-endian seq → path; dropped at open.
pub(crate) const OLD_OUTBOX_SEQ_TREE: &str = "outbox_seq";

/// What can go wrong below the trait impls.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot decode {what}: {source}")]
    Decode { what: String, source: bincode::Error },
    #[error("cannot encode {what}: {source}")]
    Encode { what: String, source: bincode::Error },
    #[error("{0}")]
    Invalid(String),
}

impl CodecError {
    /// This error as openraft's, about `subject`, while doing `verb`.
    pub(crate) fn into_storage(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> StorageError {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

impl From<TransactionError<CodecError>> for CodecError {
    fn from(error: TransactionError<CodecError>) -> Self {
        match error {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => CodecError::Sled(e),
        }
    }
}

/// A `map_err` adapter for codec and sled errors:
/// `.map_err(to_storage(ErrorSubject::Logs, ErrorVerb::Read))`.
pub(crate) fn to_storage<E: Into<CodecError>>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
) -> impl FnOnce(E) -> StorageError {
    move |e| e.into().into_storage(subject, verb)
}

/// Encodes `value` with bincode; `what` names it in the error.
pub(crate) fn encode<T: Serialize>(what: impl fmt::Display, value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serialize(value).map_err(|source| CodecError::Encode { what: what.to_string(), source })
}

/// Decodes a bincode `T`; `what` names it in the error.
pub(crate) fn decode<T: DeserializeOwned>(what: impl fmt::Display, bytes: &[u8]) -> Result<T, CodecError> {
    bincode::deserialize(bytes).map_err(|source| CodecError::Decode { what: what.to_string(), source })
}

/// The key of the log entry at `index`.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index a log key stands for.
pub(crate) fn key_index(key: &[u8]) -> Result<u64, CodecError> {
    let bytes: [u8; 8] =
        key.try_into().map_err(|_| CodecError::Invalid(format!("a log key of {} bytes instead of 8", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Prefix of the file table's keys in [`STATE_MACHINE_TREE`].
pub(crate) const FILE_PREFIX: &[u8] = b"f/";
/// Prefix of the entry index's keys in [`STATE_MACHINE_TREE`]: `e/<BE u64 version><first
/// path>` → up to [`ENTRY_CHUNK`] sorted paths whose records hold that version (the entry
/// at that index wrote them, and no later entry changed them). "What changed after index
/// N" is a range scan over a few chunks; an entry costs the table one key per chunk, not
/// two per op (the version index of older databases had a key per record: each op
/// removed its old key and added its new one).
pub(crate) const ENTRY_PREFIX: &[u8] = b"e/";
/// The first key after every entry-index key (`0` follows `/` in ASCII).
pub(crate) const ENTRY_END: &[u8] = b"e0";
/// At most this many paths in one chunk: a later entry that changes one of them rewrites
/// its chunk, so one edit in a folder committed 2,000 files at a time rewrites 256 paths.
pub(crate) const ENTRY_CHUNK: usize = 256;
/// Present once the entry index is complete; a database without it (from before the
/// index, or with the older version index) gets it built at open.
pub(crate) const ENTRY_INDEX_KEY: &[u8] = b"m/entry_index";
/// Prefix of the version index of older databases (`v/<BE u64 version><path>`), removed
/// when the entry index is built.
pub(crate) const OLD_VERSION_PREFIX: &[u8] = b"v/";
/// Marked an older database's version index complete; removed with it.
pub(crate) const OLD_VERSION_INDEX_KEY: &[u8] = b"m/version_index";
/// Last applied log id (`Option<LogId>`).
pub(crate) const LAST_APPLIED_KEY: &[u8] = b"m/last_applied";
/// Last applied membership (`StoredMembership`).
pub(crate) const MEMBERSHIP_KEY: &[u8] = b"m/membership";
/// Metadata of the current snapshot (`SnapshotMeta`), apart so it reads cheaply.
pub(crate) const SNAPSHOT_META_KEY: &[u8] = b"m/snapshot_meta";
/// Bytes of the current snapshot.
pub(crate) const SNAPSHOT_DATA_KEY: &[u8] = b"m/snapshot_data";
/// Prefix of the per-origin sessions: `s/<BE u64 node id>` → highest outbox seq applied.
pub(crate) const SESSION_PREFIX: &[u8] = b"s/";
/// The latest key rotation (`KeyRotation`), if the cluster key was ever rotated.
pub(crate) const KEY_ROTATION_KEY: &[u8] = b"m/key_rotation";
/// The highest `upto` a `ForgetDeleted` applied here (BE `u64`): no tombstone at or below
/// it can exist any more (a delete's tombstone takes the version of its own, later,
/// entry), so the next one only reads the entry index above it. Absent: from 0.
pub(crate) const FORGOTTEN_KEY: &[u8] = b"m/forgotten_upto";

/// The key of `origin`'s session.
pub(crate) fn session_key(origin: u64) -> Vec<u8> {
    let mut key = SESSION_PREFIX.to_vec();
    key.extend_from_slice(&origin.to_be_bytes());
    key
}

/// The key of `path`'s record.
pub(crate) fn file_key(path: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(FILE_PREFIX.len() + path.len());
    key.extend_from_slice(FILE_PREFIX);
    key.extend_from_slice(path.as_bytes());
    key
}

/// The key of the entry-index chunk of `version` that starts at `first`.
pub(crate) fn chunk_key(version: u64, first: &str) -> Vec<u8> {
    let mut key = entry_start(version);
    key.extend_from_slice(first.as_bytes());
    key
}

/// The first entry-index key of `version` (for a range scan).
pub(crate) fn entry_start(version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(ENTRY_PREFIX.len() + 8);
    key.extend_from_slice(ENTRY_PREFIX);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// The version and first path an entry-index key stands for.
pub(crate) fn key_chunk(key: &[u8]) -> Result<(u64, String), CodecError> {
    let invalid = || CodecError::Invalid(format!("a malformed entry-index key {:?}", String::from_utf8_lossy(key)));
    let rest = key.strip_prefix(ENTRY_PREFIX).ok_or_else(invalid)?;
    let (version, first) = rest.split_at_checked(8).ok_or_else(invalid)?;
    let version = u64::from_be_bytes(version.try_into().map_err(|_| invalid())?);
    let first = String::from_utf8(first.to_vec()).map_err(|_| invalid())?;
    Ok((version, first))
}

/// The keys of a tree keyed by path (the local index, the outbox) at `dir` itself or below
/// it (`dir/…`), sorted; `""` is every key. `dir` is not a raw prefix: `a` does not match
/// `a.txt` or `ab/c`. Only keys are read; an unreadable one is skipped with a warning
/// naming `what`.
pub(crate) fn paths_under(tree: &sled::Tree, dir: &str, what: &str) -> Vec<String> {
    let exact = (!dir.is_empty() && tree.contains_key(dir).unwrap_or(false)).then(|| dir.to_owned());
    let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
    let under = tree.scan_prefix(prefix).keys().filter_map(|key| match key.map(|k| String::from_utf8(k.to_vec())) {
        Ok(Ok(path)) => Some(path),
        Ok(Err(_)) => {
            tracing::warn!("skipping a key of the {what} that is not UTF-8");
            None
        }
        Err(e) => {
            tracing::warn!("skipping an unreadable key of the {what}: {e}");
            None
        }
    });
    exact.into_iter().chain(under).collect()
}

/// A locator key: `<digest><path>`, so a prefix scan on the digest finds every path.
pub(crate) fn digest_key(digest: &Digest, path: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(digest.0.len() + path.len());
    key.extend_from_slice(&digest.0);
    key.extend_from_slice(path.as_bytes());
    key
}

/// The path of a locator key.
pub(crate) fn digest_key_path(key: &[u8]) -> Result<String, CodecError> {
    key.get(32..)
        .and_then(|path| String::from_utf8(path.to_vec()).ok())
        .ok_or_else(|| CodecError::Invalid(format!("a malformed locator key of {} bytes", key.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index() {
        let mut keys: Vec<_> = [256u64, 1, u64::MAX, 0, 255].map(index_key).to_vec();
        keys.sort();
        let indexes: Vec<_> = keys.iter().map(|k| key_index(k).unwrap()).collect();
        assert_eq!(indexes, [0, 1, 255, 256, u64::MAX]);
        assert!(key_index(b"short").is_err());
    }

    #[test]
    fn file_keys_sort_like_paths() {
        let mut paths = vec!["b", "a/c", "a", "a.txt", "Z", "é"];
        let mut keys: Vec<_> = paths.iter().map(|p| file_key(p)).collect();
        paths.sort();
        keys.sort();
        let back: Vec<_> = keys.iter().map(|k| std::str::from_utf8(&k[2..]).unwrap()).collect();
        assert_eq!(back, paths);
    }

    #[test]
    fn chunk_keys_sort_by_version_then_first_path_and_read_back() {
        let mut keys = [chunk_key(256, "a"), chunk_key(2, "b"), chunk_key(2, "a/c"), chunk_key(0, "z")];
        keys.sort();
        let back: Vec<_> = keys.iter().map(|k| key_chunk(k).unwrap()).collect();
        let expected = [(0, "z"), (2, "a/c"), (2, "b"), (256, "a")].map(|(v, p)| (v, p.to_owned()));
        assert_eq!(back, expected);
        assert!(chunk_key(u64::MAX, "\u{10FFFF}").as_slice() < ENTRY_END);
        assert_eq!(entry_start(3), chunk_key(3, ""));
        assert!(key_chunk(b"e/short").is_err());
        assert!(key_chunk(b"f/12345678path").is_err());
        assert!(key_chunk(&[b"e/".as_slice(), &[0; 8], &[0xff]].concat()).is_err());
    }

    #[test]
    fn locator_keys_read_back_and_refuse_bad_bytes() {
        let digest = Digest::of(b"block");
        assert_eq!(digest_key_path(&digest_key(&digest, "a/b")).unwrap(), "a/b");
        assert!(digest_key_path(&[1; 10]).is_err());
        assert!(digest_key_path(&[[1u8; 32].as_slice(), &[0xff, 0xfe]].concat()).is_err());
    }
}
