//! The entry index: `e/<version><first path>` → up to [`ENTRY_CHUNK`] sorted paths whose
//! records hold that version (see [`crate::codec::ENTRY_PREFIX`]).
//!
//! An entry adds one key per chunk of its paths, and rewrites the chunks its paths
//! leave. This module owns the chunks: writing them ([`put_chunks`], `leave_chunks`),
//! building the whole index (at open for a database without one, and at a snapshot
//! install), and reading what changed after an index ([`StateMachine::changed_since`]).
//! A damaged chunk is skipped and the index is built again at the next start.
//!
//! It does not decide what an entry writes (`apply`) nor what a forget removes
//! (`forget`); it only lists them.

use std::collections::BTreeMap;

use raftshare_raft::FileRecord;

use super::{decode_record, read_record, StateMachine, EMPTY};
use crate::codec::{
    chunk_key, decode, encode, entry_start, key_chunk, CodecError, ENTRY_CHUNK, ENTRY_END, ENTRY_INDEX_KEY,
    ENTRY_PREFIX, FILE_PREFIX, FORGOTTEN_KEY, OLD_VERSION_INDEX_KEY, OLD_VERSION_PREFIX,
};

impl StateMachine {
    /// The records (tombstones included) whose version is after `after` (all if `None`),
    /// at most `limit` of them, by version then path. The applier's question: what
    /// changed since the index it has materialised.
    pub fn changed_since(&self, after: Option<u64>, limit: usize) -> Vec<FileRecord> {
        self.changed_since_but(after, limit, |_| false)
    }

    /// [`changed_since`], leaving out (unread) the records of the versions `settled`
    /// says need nothing more.
    ///
    /// [`changed_since`]: StateMachine::changed_since
    pub fn changed_since_but(
        &self,
        after: Option<u64>,
        limit: usize,
        settled: impl Fn(u64) -> bool,
    ) -> Vec<FileRecord> {
        let first = match after {
            None => 0,
            Some(after) => match after.checked_add(1) {
                Some(first) => first,
                None => return Vec::new(),
            },
        };
        self.changed_from(first, None, limit, settled)
    }

    /// The next page after `last`, the last record of a page of [`changed_since`]
    /// (records of one version can span pages).
    ///
    /// [`changed_since`]: StateMachine::changed_since
    pub fn changed_after(&self, last: &FileRecord, limit: usize) -> Vec<FileRecord> {
        self.changed_after_but(last, limit, |_| false)
    }

    /// [`changed_after`] as [`changed_since_but`] leaves records out.
    ///
    /// [`changed_after`]: StateMachine::changed_after
    /// [`changed_since_but`]: StateMachine::changed_since_but
    pub fn changed_after_but(&self, last: &FileRecord, limit: usize, settled: impl Fn(u64) -> bool) -> Vec<FileRecord> {
        self.changed_from(last.version, Some(&last.path), limit, settled)
    }

    /// The records of the versions from `first` on, by version then path; of `first`
    /// itself, only the paths after `after`.
    fn changed_from(
        &self,
        first: u64,
        after: Option<&str>,
        limit: usize,
        settled: impl Fn(u64) -> bool,
    ) -> Vec<FileRecord> {
        let mut changed = Vec::new();
        // Going on inside a version: from the chunk that holds `after`.
        let mut start = match after.and_then(|after| self.chunk_at(first, after)) {
            Some(key) => key,
            None => entry_start(first),
        };
        'scan: loop {
            for item in self.tree.range(start.clone()..ENTRY_END.to_vec()) {
                if changed.len() >= limit {
                    break 'scan;
                }
                let read = item.map_err(CodecError::from).and_then(|(key, value)| {
                    let (version, first) = key_chunk(&key)?;
                    // A settled version's chunks are not even decoded.
                    let paths = if settled(version) { None } else { Some(chunk_paths(version, &first, &value)?) };
                    Ok((version, paths))
                });
                let (version, paths) = match read {
                    Ok(read) => read,
                    Err(e) => {
                        tracing::warn!(
                            "skipping an unreadable chunk of the entry index, built again at the next start: {e}"
                        );
                        let _ = self.tree.remove(ENTRY_INDEX_KEY);
                        continue;
                    }
                };
                let Some(paths) = paths else {
                    // On to the next version: one seek past all of this one's chunks.
                    let Some(next) = version.checked_add(1) else { break 'scan };
                    start = entry_start(next);
                    continue 'scan;
                };
                let skip_to = after.filter(|_| version == first);
                for path in paths.iter().filter(|p| skip_to.is_none_or(|a| p.as_str() > a)) {
                    if changed.len() >= limit {
                        break 'scan;
                    }
                    match read_record(&self.tree, path) {
                        Ok(Some(record)) if record.version == version => changed.push(record),
                        // Changed since this scan began: its new version comes later.
                        Ok(_) => {}
                        Err(e) => tracing::warn!("skipping an unreadable record of the entry index: {e}"),
                    }
                }
            }
            break;
        }
        changed
    }

    /// The key of `version`'s chunk that holds `path` if any does: the last one that
    /// starts at or before it.
    fn chunk_at(&self, version: u64, path: &str) -> Option<Vec<u8>> {
        match self.tree.range(entry_start(version)..=chunk_key(version, path)).next_back() {
            Some(Ok((key, _))) => Some(key.to_vec()),
            Some(Err(e)) => {
                tracing::warn!("cannot read the entry index: {e}");
                None
            }
            None => None,
        }
    }

    /// Replaces, in `batch`, whatever index the tree holds (an entry index, or an older
    /// database's version index) with a complete entry index of `records` (version,
    /// path). Returns how many paths it lists.
    pub(super) fn index_all(
        &self,
        batch: &mut sled::Batch,
        records: impl IntoIterator<Item = (u64, String)>,
    ) -> Result<usize, CodecError> {
        for prefix in [OLD_VERSION_PREFIX, ENTRY_PREFIX] {
            for key in self.tree.scan_prefix(prefix).keys() {
                batch.remove(key?);
            }
        }
        batch.remove(OLD_VERSION_INDEX_KEY);
        let mut by_version: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (version, path) in records {
            by_version.entry(version).or_default().push(path);
        }
        let mut indexed = 0;
        for (version, mut paths) in by_version {
            paths.sort();
            indexed += paths.len();
            put_chunks(batch, version, &paths)?;
        }
        batch.insert(ENTRY_INDEX_KEY, EMPTY);
        // The forget mark goes, and the next forget reads the whole index once: a forget
        // may have raised it past tombstones an incomplete index hid from it.
        batch.remove(FORGOTTEN_KEY);
        Ok(indexed)
    }

    /// Takes `paths` (sorted) out of `version`'s entry-index chunks, in `batch`: each chunk
    /// that held one is written again without it, under its new first path.
    pub(super) fn leave_chunks(&self, batch: &mut sled::Batch, version: u64, paths: &[&str]) -> Result<(), CodecError> {
        let (Some(first), Some(last)) = (paths.first(), paths.last()) else { return Ok(()) };
        let start = self.chunk_at(version, first).unwrap_or_else(|| entry_start(version));
        let end = version.checked_add(1).map_or_else(|| ENTRY_END.to_vec(), entry_start);
        for item in self.tree.range(start..end) {
            let (key, value) = item?;
            let (_, starts_at) = key_chunk(&key)?;
            if starts_at.as_str() > *last {
                break;
            }
            let mut chunk = match chunk_paths(version, &starts_at, &value) {
                Ok(chunk) => chunk,
                Err(e) => {
                    // Not worth stopping the node for: the chunk goes, and the whole index
                    // is built again from the records at the next start.
                    tracing::warn!("dropping a damaged chunk of the entry index, rebuilt at the next start: {e}");
                    batch.remove(key);
                    batch.remove(ENTRY_INDEX_KEY);
                    continue;
                }
            };
            let held = chunk.len();
            chunk.retain(|p| paths.binary_search(&p.as_str()).is_err());
            if chunk.len() == held {
                continue;
            }
            batch.remove(key);
            if let Some(new_first) = chunk.first() {
                batch.insert(chunk_key(version, new_first), encode("a chunk of the entry index", &chunk)?);
            }
        }
        Ok(())
    }

    /// Builds the entry index if this database predates it (or has the older version
    /// index, which goes); a no-op otherwise.
    pub(crate) fn ensure_entry_index(&self) -> Result<(), CodecError> {
        if self.tree.get(ENTRY_INDEX_KEY)?.is_some() {
            return Ok(());
        }
        let mut records = Vec::new();
        for item in self.tree.scan_prefix(FILE_PREFIX) {
            let (key, value) = item?;
            // Like `files`, a damaged record is skipped rather than keeping the node down.
            match decode_record(&key, &value) {
                Ok(record) => records.push((record.version, record.path)),
                Err(e) => tracing::warn!("leaving an unreadable file record out of the entry index: {e}"),
            }
        }
        let mut batch = sled::Batch::default();
        let indexed = self.index_all(&mut batch, records)?;
        self.tree.apply_batch(batch)?;
        if indexed > 0 {
            tracing::info!(records = indexed, "built the file table's entry index");
        }
        Ok(())
    }
}

/// Adds `version`'s entry-index chunks for `paths` (sorted) to `batch`.
pub(super) fn put_chunks(batch: &mut sled::Batch, version: u64, paths: &[String]) -> Result<(), CodecError> {
    for chunk in paths.chunks(ENTRY_CHUNK) {
        batch.insert(chunk_key(version, &chunk[0]), encode("a chunk of the entry index", &chunk)?);
    }
    Ok(())
}

/// An entry-index chunk read back: its version and its sorted paths.
pub(super) fn read_chunk(key: &[u8], value: &[u8]) -> Result<(u64, Vec<String>), CodecError> {
    let (version, first) = key_chunk(key)?;
    Ok((version, chunk_paths(version, &first, value)?))
}

/// The sorted paths of `version`'s chunk that starts at `first` (its key, read already),
/// checked against that key.
fn chunk_paths(version: u64, first: &str, value: &[u8]) -> Result<Vec<String>, CodecError> {
    let paths: Vec<String> = decode(format_args!("chunk {first:?} of entry {version}'s index"), value)?;
    if paths.first().map(String::as_str) != Some(first) || !paths.is_sorted_by(|a, b| a < b) {
        return Err(CodecError::Invalid(format!(
            "chunk {first:?} of entry {version}'s index is not what its key says"
        )));
    }
    Ok(paths)
}
