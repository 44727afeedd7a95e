//! [`LogStore`]: openraft's log storage in sled — the entries, the vote, the committed
//! mark and the last purged log id — plus read-only helpers for `status` and `log`.
//!
//! Durability is the point of this module: `append` reports an entry flushed only after
//! sled's fsync, `save_vote`, `truncate` and `purge` return only once flushed. It does
//! not know what the entries mean; the state machine does.

use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use raftshare_raft::{Entry, LogId, StorageError, TypeConfig, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode, encode, index_key, key_index, to_storage, CodecError};
use crate::floor::{Facts, Floor};

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";

/// The Raft log, vote and log marks of one node (cheap to clone; clones share the database).
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    /// Entries by big-endian index.
    log: sled::Tree,
    /// Vote, committed, last purged.
    meta: sled::Tree,
    /// What the database is known to hold: a saved vote raises it at once.
    floor: Arc<Floor>,
}

impl LogStore {
    pub(crate) fn new(db: sled::Db, log: sled::Tree, meta: sled::Tree, floor: Arc<Floor>) -> Self {
        LogStore { db, log, meta, floor }
    }

    /// The last committed log id saved by Raft, if any.
    pub fn committed(&self) -> Option<LogId> {
        self.read_meta(COMMITTED_KEY).unwrap_or_else(|e| {
            tracing::warn!("cannot read the committed mark: {e}");
            None
        })
    }

    /// The entries present in `range` of indexes, in order (purged ones are gone; an
    /// entry that cannot be read is logged and skipped).
    pub fn entries(&self, range: impl RangeBounds<u64>) -> Vec<Entry> {
        let Some(keys) = key_range(&range) else {
            return Vec::new();
        };
        self.log
            .range(keys)
            .filter_map(|item| match item.map_err(CodecError::from).and_then(|(k, v)| decode_entry(&k, &v)) {
                Ok(entry) => Some(entry),
                Err(e) => {
                    tracing::warn!("skipping an unreadable log entry: {e}");
                    None
                }
            })
            .collect()
    }

    /// Index of the first entry present, if any.
    pub fn first_index(&self) -> Option<u64> {
        self.edge_index(self.log.first())
    }

    /// Index of the last entry present, if any.
    pub fn last_index(&self) -> Option<u64> {
        self.edge_index(self.log.last())
    }

    /// The first kept and the last index, as `status` shows them, consistent with each
    /// other: `last + 1 - first` entries are kept. A log emptied by a purge keeps none:
    /// `first` is the next index to come and `last` the purged one. `None` while nothing
    /// was ever appended.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let purged = self.read_meta::<LogId>(LAST_PURGED_KEY).unwrap_or_else(|e| {
            tracing::warn!("cannot read the last purged mark: {e}");
            None
        });
        let purged = purged.map(|p| p.index);
        // Last first: the log only grows at its end, and a purge racing these reads can
        // only move its start up, so the start is clamped to the end read before it.
        let last = self.last_index().max(purged)?;
        let first = match (self.first_index(), purged) {
            (Some(first), Some(purged)) => first.max(purged + 1),
            (Some(first), None) => first,
            (None, _) => last + 1,
        };
        Some((first.min(last + 1), last))
    }

    /// Bytes the kept entries take (keys and encoded values; sled's own overhead aside).
    /// Reads every kept entry: the log is bounded by snapshots, so this stays small.
    pub fn size_bytes(&self) -> u64 {
        self.log.iter().filter_map(Result::ok).map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }

    fn edge_index(&self, edge: sled::Result<Option<(sled::IVec, sled::IVec)>>) -> Option<u64> {
        match edge.map_err(CodecError::from).and_then(|kv| kv.map(|(k, _)| key_index(&k)).transpose()) {
            Ok(index) => index,
            Err(e) => {
                tracing::warn!("cannot read the log's bounds: {e}");
                None
            }
        }
    }

    /// Reads every mark and the last entry: what `Store::open` checks.
    pub(crate) fn check(&self) -> Result<(), CodecError> {
        self.read_meta::<Vote>(VOTE_KEY)?;
        self.read_meta::<LogId>(COMMITTED_KEY)?;
        self.read_meta::<LogId>(LAST_PURGED_KEY)?;
        if let Some((k, v)) = self.log.last()? {
            decode_entry(&k, &v)?;
        }
        Ok(())
    }

    /// The saved vote, as the floor counts it.
    pub(crate) fn vote(&self) -> Result<Option<Vote>, CodecError> {
        self.read_meta(VOTE_KEY)
    }

    /// The index the log reaches: its last entry, or the last purged one if it is later.
    pub(crate) fn log_end(&self) -> Result<Option<u64>, CodecError> {
        let purged: Option<LogId> = self.read_meta(LAST_PURGED_KEY)?;
        let last = match self.log.last()? {
            Some((k, _)) => Some(key_index(&k)?),
            None => None,
        };
        Ok(last.max(purged.map(|log_id| log_id.index)))
    }

    fn read_entries<RB: RangeBounds<u64>>(&self, range: &RB) -> Result<Vec<Entry>, CodecError> {
        let Some(keys) = key_range(range) else {
            return Ok(Vec::new());
        };
        self.log
            .range(keys)
            .map(|item| item.map_err(CodecError::from).and_then(|(k, v)| decode_entry(&k, &v)))
            .collect()
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, CodecError> {
        match self.meta.get(key)? {
            Some(bytes) => Ok(Some(decode(String::from_utf8_lossy(key), &bytes)?)),
            None => Ok(None),
        }
    }

    fn write_meta<T: Serialize>(&self, key: &[u8], value: Option<&T>) -> Result<(), CodecError> {
        match value {
            Some(value) => self.meta.insert(key, encode(String::from_utf8_lossy(key), value)?)?,
            None => self.meta.remove(key)?,
        };
        Ok(())
    }

    async fn flush(&self) -> Result<(), CodecError> {
        self.db.flush_async().await?;
        Ok(())
    }

    fn last_log_id(&self) -> Result<Option<LogId>, CodecError> {
        match self.log.last()? {
            Some((k, v)) => Ok(Some(decode_entry(&k, &v)?.log_id)),
            None => Ok(None),
        }
    }

    /// Removes the entries whose keys are in `keys`, in one batch.
    fn remove_range(&self, keys: KeyRange) -> Result<(), CodecError> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(keys).keys() {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }
}

/// A range of log keys, as sled takes it.
type KeyRange = (Bound<[u8; 8]>, Bound<[u8; 8]>);

/// An entry read back, checked against the key it was stored under.
fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, CodecError> {
    let index = key_index(key)?;
    let entry: Entry = decode(format_args!("log entry {index}"), value)?;
    if entry.log_id.index != index {
        return Err(CodecError::Invalid(format!(
            "the log entry stored at index {index} says it is at {}",
            entry.log_id.index
        )));
    }
    Ok(entry)
}

/// The sled key range for a range of indexes; `None` when it is empty.
fn key_range(range: &impl RangeBounds<u64>) -> Option<KeyRange> {
    let first = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let last = match range.end_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (first <= last).then(|| (Bound::Included(index_key(first)), Bound::Included(index_key(last))))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(&range).map_err(to_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = || to_storage(ErrorSubject::Logs, ErrorVerb::Read);
        let last_purged_log_id: Option<LogId> = self.read_meta(LAST_PURGED_KEY).map_err(read())?;
        let last = self.last_log_id().map_err(read())?;
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(VOTE_KEY, Some(vote)).map_err(to_storage(ErrorSubject::Vote, ErrorVerb::Write))?;
        // A vote forgotten in a crash could let this node vote twice in one term.
        self.flush().await.map_err(to_storage(ErrorSubject::Vote, ErrorVerb::Write))?;
        // Flushed: the floor may say so (so a database that later loses it is refused).
        // Votes are rare; the vote itself is safe already, so a failure here only warns.
        let floor = self.floor.clone();
        let facts = Facts { vote: Some(*vote), ..Facts::default() };
        match tokio::task::spawn_blocking(move || floor.raise(facts)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(path = %self.floor.path().display(), "cannot record the saved vote: {e}"),
            Err(e) => tracing::warn!("cannot record the saved vote: {e}"),
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE_KEY).map_err(to_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: losing the latest mark in a crash only means openraft
        // re-applies a little less at start; the next append's flush carries it anyway.
        self.write_meta(COMMITTED_KEY, committed.as_ref()).map_err(to_storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(COMMITTED_KEY).map_err(to_storage(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let (mut count, mut size) = (0, 0);
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = encode(format_args!("log entry {}", entry.log_id.index), &entry)
                .map_err(to_storage(ErrorSubject::Log(entry.log_id), ErrorVerb::Write))?;
            (count, size) = (count + 1, size + bytes.len());
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.log.apply_batch(batch).map_err(to_storage(ErrorSubject::Logs, ErrorVerb::Write))?;
        let written = started.elapsed();
        // The callback tells openraft the entries are durable (a vote for them may be
        // counted): call it only after the fsync.
        match self.flush().await {
            Ok(()) => {
                tracing::debug!(entries = count, bytes = size, ?written, took = ?started.elapsed(), "log appended");
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(e.into_storage(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating the log from here on");
        let delete = || to_storage(ErrorSubject::Logs, ErrorVerb::Delete);
        self.remove_range((Bound::Included(index_key(log_id.index)), Bound::Unbounded)).map_err(delete())?;
        self.flush().await.map_err(delete())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purging the log up to here");
        let delete = || to_storage(ErrorSubject::Logs, ErrorVerb::Delete);
        // The mark goes first: if a crash leaves some purged entries behind, openraft
        // ignores what is at or below it, whereas a mark lost after the entries are gone
        // would leave a hole at the start of the log.
        self.write_meta(LAST_PURGED_KEY, Some(&log_id)).map_err(delete())?;
        self.remove_range((Bound::Unbounded, Bound::Included(index_key(log_id.index)))).map_err(delete())?;
        self.flush().await.map_err(delete())
    }
}
