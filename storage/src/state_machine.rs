//! [`StateMachine`]: the replicated file table in sled, openraft's state machine over it,
//! and its snapshots.
//!
//! Applying an entry runs the pure rules of [`crate::table`] over the tree and writes
//! the records it changed, their entry-index chunks and `last_applied` in one
//! `sled::Batch`, so a crash never leaves a half-applied entry. The entry index (which
//! paths each entry's version still holds, see [`crate::codec::ENTRY_PREFIX`]) lets the
//! applier ask what changed after the index it has materialised
//! ([`StateMachine::changed_since`]), and [`StateMachine::subscribe`] wakes it when the
//! applied index moves. A snapshot is
//! the table's metadata (never file content), bincode-encoded; the current one is kept in
//! the same tree so it survives a restart. The entry index is derived: it is not in the
//! snapshot, and is rebuilt when one is installed.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use raftshare_raft::{
    ApplyResult, Entry, FileOp, FileRecord, KeyRotation, LogId, NodeId, OpOutcome, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::codec::{
    chunk_key, decode, encode, entry_start, file_key, key_chunk, session_key, to_storage, CodecError, ENTRY_CHUNK,
    ENTRY_END, ENTRY_INDEX_KEY, ENTRY_PREFIX, FILE_PREFIX, FORGOTTEN_KEY, KEY_ROTATION_KEY, LAST_APPLIED_KEY,
    MEMBERSHIP_KEY, OLD_VERSION_INDEX_KEY, OLD_VERSION_PREFIX, SESSION_PREFIX, SNAPSHOT_DATA_KEY, SNAPSHOT_META_KEY,
};
use crate::table::{self, validate_path, TableView};

/// What a snapshot's bytes decode to.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    /// Every record of the table, tombstones included, sorted by path.
    files: Vec<FileRecord>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Per origin, the highest outbox seq applied (so retries stay deduplicated on a
    /// node that starts from this snapshot).
    sessions: BTreeMap<NodeId, u64>,
    /// The latest key rotation, so a member that starts from this snapshot (or was away)
    /// can still get its sealed key.
    key_rotation: Option<KeyRotation>,
}

/// The replicated file table of one node (cheap to clone; clones share the database).
#[derive(Clone)]
pub struct StateMachine {
    db: sled::Db,
    tree: sled::Tree,
    /// Orders the writes of the current snapshot: a build that finishes after an install
    /// must not put its older snapshot back.
    snapshot_lock: Arc<Mutex<()>>,
    /// The index of the last applied entry, for [`StateMachine::subscribe`].
    applied: Arc<watch::Sender<Option<u64>>>,
}

/// The value of a marker key: the key says it all.
const EMPTY: &[u8] = &[];

impl StateMachine {
    pub(crate) fn new(
        db: sled::Db,
        tree: sled::Tree,
        snapshot_lock: Arc<Mutex<()>>,
        applied: Arc<watch::Sender<Option<u64>>>,
    ) -> Self {
        StateMachine { db, tree, snapshot_lock, applied }
    }

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
    fn index_all(
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
    fn leave_chunks(&self, batch: &mut sled::Batch, version: u64, paths: &[&str]) -> Result<(), CodecError> {
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

    /// A receiver of the index of the last applied entry: it changes after every batch
    /// of applied entries and after a snapshot is installed.
    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.applied.subscribe()
    }

    /// Tells subscribers the table is now at `index` (nothing if no entry was applied).
    fn announce(&self, index: Option<u64>) {
        if index.is_some() {
            // `send_replace`, not `send`: the value must be current even with no receiver,
            // for the subscribers to come.
            self.applied.send_replace(index);
        }
    }

    /// Publishes the last applied index as read from the database (at open).
    pub(crate) fn announce_applied(&self) -> Result<(), CodecError> {
        let applied = self.read_last_applied()?.map(|log_id| log_id.index);
        self.applied.send_replace(applied);
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

    /// Every record of the table, tombstones included, sorted by path (a record that
    /// cannot be read is logged and skipped).
    pub fn files(&self) -> Vec<FileRecord> {
        self.tree
            .scan_prefix(FILE_PREFIX)
            .filter_map(|item| match item.map_err(CodecError::from).and_then(|(k, v)| decode_record(&k, &v)) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::warn!("skipping an unreadable file record: {e}");
                    None
                }
            })
            .collect()
    }

    /// The record at `path`, live or tombstone.
    pub fn get(&self, path: &str) -> Option<FileRecord> {
        read_record(&self.tree, path).unwrap_or_else(|e| {
            tracing::warn!(path, "cannot read a file record: {e}");
            None
        })
    }

    /// How many tombstones have a version in `(after, upto]` (reads only the records
    /// written in that range, through the entry index).
    pub fn tombstones_between(&self, after: Option<u64>, upto: u64) -> u64 {
        let start = after.map(|a| a.saturating_add(1)).unwrap_or(0);
        if start > upto {
            return 0;
        }
        let mut count = 0;
        for item in self.tree.range(entry_start(start)..entry_start(upto.saturating_add(1))) {
            let Ok((version, paths)) = item.map_err(CodecError::from).and_then(|(key, value)| read_chunk(&key, &value))
            else {
                continue;
            };
            let tombstones = paths.iter().filter(|p| self.get(p).is_some_and(|r| r.deleted && r.version == version));
            count += tombstones.count() as u64;
        }
        count
    }

    /// The highest `upto` of a `ForgetDeleted` applied here (none since the last snapshot
    /// installed: `None`). No tombstone is at or below it.
    pub fn forgotten_upto(&self) -> Option<u64> {
        read_forgotten(&self.tree)
    }

    /// The log id of the last entry applied to the table.
    pub fn last_applied(&self) -> Option<LogId> {
        self.read_last_applied().unwrap_or_else(|e| {
            tracing::warn!("cannot read the last applied log id: {e}");
            None
        })
    }

    /// The membership of the last membership entry applied.
    pub fn membership(&self) -> StoredMembership {
        self.read_membership().unwrap_or_else(|e| {
            tracing::warn!("cannot read the applied membership: {e}");
            StoredMembership::default()
        })
    }

    /// Reads every mark and the current snapshot's metadata: what `Store::open` checks.
    pub(crate) fn check(&self) -> Result<(), CodecError> {
        self.read_last_applied()?;
        self.read_membership()?;
        self.read_snapshot_meta()?;
        Ok(())
    }

    pub(crate) fn read_last_applied(&self) -> Result<Option<LogId>, CodecError> {
        match self.tree.get(LAST_APPLIED_KEY)? {
            Some(bytes) => decode("the last applied log id", &bytes),
            None => Ok(None),
        }
    }

    fn read_membership(&self) -> Result<StoredMembership, CodecError> {
        match self.tree.get(MEMBERSHIP_KEY)? {
            Some(bytes) => decode("the applied membership", &bytes),
            None => Ok(StoredMembership::default()),
        }
    }

    fn read_snapshot_meta(&self) -> Result<Option<SnapshotMeta>, CodecError> {
        match self.tree.get(SNAPSHOT_META_KEY)? {
            Some(bytes) => Ok(Some(decode("the snapshot's metadata", &bytes)?)),
            None => Ok(None),
        }
    }

    fn read_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, CodecError> {
        let Some(meta) = self.read_snapshot_meta()? else {
            return Ok(None);
        };
        let data = self
            .tree
            .get(SNAPSHOT_DATA_KEY)?
            .ok_or_else(|| CodecError::Invalid(format!("snapshot {} has metadata but no data", meta.snapshot_id)))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data.to_vec())) }))
    }

    /// Applies one committed entry in one batch; returns what it did.
    fn apply_entry(&self, entry: &Entry) -> Result<ApplyResult, CodecError> {
        let log_id = entry.log_id;
        let mut batch = sled::Batch::default();
        let result = match &entry.payload {
            EntryPayload::Blank => ApplyResult::default(),
            EntryPayload::Normal(change) => {
                let mut pending = PendingTable::new(&self.tree);
                let applied = self.read_session(change.origin)?;
                let mut highest = applied;
                let origin = table::Origin::from(change);
                let mut outcomes = Vec::new();
                for (i, leaf) in change.op.leaves().into_iter().enumerate() {
                    if let FileOp::RotateKey(rotation) = leaf {
                        outcomes.push(self.rotate_key(rotation, &mut batch)?);
                        continue;
                    }
                    if let Some(seq) = change.seqs.get(i).copied() {
                        if applied.is_some_and(|a| seq <= a) {
                            let path = match leaf {
                                FileOp::Put { path, .. } | FileOp::Delete { path, .. } => path.clone(),
                                _ => String::new(),
                            };
                            outcomes.push(OpOutcome::Duplicate { path });
                            continue;
                        }
                        highest = highest.max(Some(seq));
                    }
                    outcomes.push(table::apply_op(&mut pending, origin, leaf, log_id.index)?);
                }
                if let Some(highest) = highest.filter(|h| Some(*h) != applied) {
                    batch.insert(session_key(change.origin), &highest.to_be_bytes()[..]);
                }
                if let Some(mark) = pending.forgotten {
                    batch.insert(FORGOTTEN_KEY, &mark.to_be_bytes()[..]);
                }
                if pending.damaged_index {
                    batch.remove(ENTRY_INDEX_KEY);
                }
                // Every record written holds this entry's version: its path joins this
                // entry's chunks and leaves those of the version it held before.
                let mut leaving: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
                let mut arriving = Vec::new();
                for (path, record) in &pending.writes {
                    // The tree still holds the record as it was before this entry.
                    if let Some(before) = pending.before(path)? {
                        leaving.entry(before.version).or_default().push(path);
                    }
                    match record {
                        Some(record) => {
                            batch.insert(file_key(path), encode(format_args!("the record of {path:?}"), record)?);
                            arriving.push(path.clone());
                        }
                        None => batch.remove(file_key(path)),
                    }
                }
                for (version, paths) in leaving {
                    self.leave_chunks(&mut batch, version, &paths)?;
                }
                put_chunks(&mut batch, log_id.index, &arriving)?;
                ApplyResult { outcomes }
            }
            EntryPayload::Membership(membership) => {
                let stored = StoredMembership::new(Some(log_id), membership.clone());
                batch.insert(MEMBERSHIP_KEY, encode("the membership", &stored)?);
                ApplyResult::default()
            }
        };
        batch.insert(LAST_APPLIED_KEY, encode("the last applied log id", &Some(log_id))?);
        self.tree.apply_batch(batch)?;
        Ok(result)
    }

    /// Records `rotation` as the latest, if it is newer than the one recorded.
    fn rotate_key(&self, rotation: &KeyRotation, batch: &mut sled::Batch) -> Result<OpOutcome, CodecError> {
        let last = self.key_rotation_stored()?.map_or(0, |r| r.epoch);
        if rotation.epoch <= last {
            return Ok(OpOutcome::Rejected {
                path: String::new(),
                reason: format!("key rotation {} is not newer than rotation {last}", rotation.epoch),
            });
        }
        batch.insert(KEY_ROTATION_KEY, encode("the key rotation", rotation)?);
        Ok(OpOutcome::KeyRotated { epoch: rotation.epoch })
    }

    fn key_rotation_stored(&self) -> Result<Option<KeyRotation>, CodecError> {
        match self.tree.get(KEY_ROTATION_KEY)? {
            Some(bytes) => Ok(Some(decode("the key rotation", &bytes)?)),
            None => Ok(None),
        }
    }

    /// The latest key rotation applied, if any.
    pub fn key_rotation(&self) -> Option<KeyRotation> {
        self.key_rotation_stored().unwrap_or_else(|e| {
            tracing::warn!("cannot read the key rotation: {e}");
            None
        })
    }

    /// Makes `meta`/`data` the current snapshot unless a newer one is already there.
    fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), CodecError> {
        let _guard = self.snapshot_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(current) = self.read_snapshot_meta()? {
            if current.last_log_id > meta.last_log_id {
                return Ok(());
            }
        }
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META_KEY, encode("the snapshot's metadata", meta)?);
        batch.insert(SNAPSHOT_DATA_KEY, data);
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Replaces the whole table, the marks and the current snapshot in one batch.
    fn replace_with(&self, meta: &SnapshotMeta, payload: &SnapshotPayload, data: Vec<u8>) -> Result<(), CodecError> {
        let mut batch = sled::Batch::default();
        // No apply can slip in between the scan and the batch: openraft calls
        // `install_snapshot` and `apply` from one task, one at a time.
        for prefix in [FILE_PREFIX, SESSION_PREFIX] {
            for key in self.tree.scan_prefix(prefix).keys() {
                batch.remove(key?);
            }
        }
        for record in &payload.files {
            batch.insert(file_key(&record.path), encode(format_args!("the record of {:?}", record.path), record)?);
        }
        // The snapshot does not say how far its table was forgotten: the index is built
        // without a forget mark.
        self.index_all(&mut batch, payload.files.iter().map(|r| (r.version, r.path.clone())))?;
        for (origin, seq) in &payload.sessions {
            batch.insert(session_key(*origin), &seq.to_be_bytes()[..]);
        }
        match &payload.key_rotation {
            Some(rotation) => batch.insert(KEY_ROTATION_KEY, encode("the key rotation", rotation)?),
            None => batch.remove(KEY_ROTATION_KEY),
        }
        // openraft's metadata is authoritative for the marks; the payload carries the
        // same values so that a snapshot's bytes describe themselves.
        batch.insert(LAST_APPLIED_KEY, encode("the last applied log id", &meta.last_log_id)?);
        batch.insert(MEMBERSHIP_KEY, encode("the membership", &meta.last_membership)?);
        batch.insert(SNAPSHOT_META_KEY, encode("the snapshot's metadata", meta)?);
        batch.insert(SNAPSHOT_DATA_KEY, data);
        let _guard = self.snapshot_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// A consistent copy of what a snapshot needs, taken between two applies.
    fn capture(&self) -> Result<Captured, CodecError> {
        Ok(Captured {
            files: self.tree.scan_prefix(FILE_PREFIX).values().collect::<Result<_, _>>()?,
            last_applied: self.read_last_applied()?,
            membership: self.read_membership()?,
            sessions: self.read_sessions()?,
            key_rotation: self.key_rotation_stored()?,
        })
    }

    fn read_session(&self, origin: NodeId) -> Result<Option<u64>, CodecError> {
        match self.tree.get(session_key(origin))? {
            Some(bytes) => Ok(Some(be_u64("a session", &bytes)?)),
            None => Ok(None),
        }
    }

    fn read_sessions(&self) -> Result<BTreeMap<NodeId, u64>, CodecError> {
        let mut sessions = BTreeMap::new();
        for item in self.tree.scan_prefix(SESSION_PREFIX) {
            let (key, value) = item?;
            let origin = be_u64("a session key", &key[SESSION_PREFIX.len()..])?;
            sessions.insert(origin, be_u64("a session", &value)?);
        }
        Ok(sessions)
    }
}

fn be_u64(what: &str, bytes: &[u8]) -> Result<u64, CodecError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| CodecError::Invalid(format!("{what} is not 8 bytes")))?;
    Ok(u64::from_be_bytes(array))
}

/// The table as the rules see it while one entry is applied: the tree, overlaid with the
/// records the entry has written so far (which go to sled in one batch at the end).
struct PendingTable<'a> {
    tree: &'a sled::Tree,
    /// The entry's writes: a record, or `None` for a path it removes from the table.
    writes: BTreeMap<String, Option<FileRecord>>,
    /// What the tree held for the paths read so far (before this entry): each is read
    /// from sled once per entry, not again when its write is stored.
    read: std::cell::RefCell<std::collections::HashMap<String, Option<FileRecord>>>,
    /// The forget mark as this entry leaves it, once it forgot tombstones (stored with
    /// the entry's writes).
    forgotten: Option<u64>,
    /// A chunk of the entry index would not read: it is built again at the next start.
    damaged_index: bool,
}

impl<'a> PendingTable<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        PendingTable { tree, writes: BTreeMap::new(), read: Default::default(), forgotten: None, damaged_index: false }
    }

    /// The record the tree holds for `path` (as before this entry).
    fn before(&self, path: &str) -> Result<Option<FileRecord>, CodecError> {
        if let Some(record) = self.read.borrow().get(path) {
            return Ok(record.clone());
        }
        let record = read_record(self.tree, path)?;
        self.read.borrow_mut().insert(path.to_owned(), record.clone());
        Ok(record)
    }
}

impl TableView for PendingTable<'_> {
    type Error = CodecError;

    fn get(&self, path: &str) -> Result<Option<FileRecord>, CodecError> {
        match self.writes.get(path) {
            Some(record) => Ok(record.clone()),
            None => self.before(path),
        }
    }

    fn put(&mut self, record: FileRecord) -> Result<(), CodecError> {
        self.writes.insert(record.path.clone(), Some(record));
        Ok(())
    }

    fn forget_tombstones(&mut self, upto: u64) -> Result<u64, CodecError> {
        let mut forgotten = 0;
        let mark = match self.forgotten {
            Some(mark) => Some(mark),
            None => read_forgotten(self.tree),
        };
        // The mark rises only past what was read whole: an index known to be incomplete,
        // or a chunk or record that will not read, may hide tombstones, and a later forget
        // reads from the old mark again (after the rebuild at the next start).
        let mut whole = !self.damaged_index && self.tree.get(ENTRY_INDEX_KEY)?.is_some();
        // The entry index lists records by version: only those above the last forget's
        // mark and up to `upto` can be tombstones to forget (a table of 100,000 files was
        // read whole at every forget, on every node).
        let start = mark.map_or(0, |m| m.saturating_add(1));
        for item in self.tree.range(entry_start(start)..entry_start(upto.saturating_add(1).max(start))) {
            let (key, value) = item?;
            let (version, paths) = match read_chunk(&key, &value) {
                Ok(chunk) => chunk,
                Err(e) => {
                    // Its tombstones stay; the node goes on (the index is built again at
                    // the next start).
                    tracing::warn!("skipping a damaged chunk of the entry index while forgetting tombstones: {e}");
                    self.damaged_index = true;
                    whole = false;
                    continue;
                }
            };
            for path in paths {
                match self.get(&path) {
                    Ok(Some(record)) if record.deleted && record.version == version && version <= upto => {
                        self.writes.insert(path, None);
                        forgotten += 1;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(
                            "keeping {path:?}, whose record will not read, while forgetting tombstones: {e}"
                        );
                        whole = false;
                    }
                }
            }
        }
        if whole {
            self.forgotten = Some(mark.map_or(upto, |m| m.max(upto)));
        }
        Ok(forgotten)
    }
}

/// Adds `version`'s entry-index chunks for `paths` (sorted) to `batch`.
fn put_chunks(batch: &mut sled::Batch, version: u64, paths: &[String]) -> Result<(), CodecError> {
    for chunk in paths.chunks(ENTRY_CHUNK) {
        batch.insert(chunk_key(version, &chunk[0]), encode("a chunk of the entry index", &chunk)?);
    }
    Ok(())
}

/// An entry-index chunk read back: its version and its sorted paths.
fn read_chunk(key: &[u8], value: &[u8]) -> Result<(u64, Vec<String>), CodecError> {
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

/// The forget mark (see [`FORGOTTEN_KEY`]); a damaged one counts as none: the next forget
/// reads the entry index from the start, which gives the same outcome.
fn read_forgotten(tree: &sled::Tree) -> Option<u64> {
    let read = tree.get(FORGOTTEN_KEY).map_err(CodecError::from).and_then(|bytes| match bytes {
        Some(bytes) => be_u64("the forget mark", &bytes).map(Some),
        None => Ok(None),
    });
    read.unwrap_or_else(|e| {
        tracing::warn!("cannot read how far tombstones were forgotten, looking from the start: {e}");
        None
    })
}

/// Decodes a snapshot received from a peer and checks it before it replaces the table.
fn check_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<SnapshotPayload, CodecError> {
    let payload: SnapshotPayload = decode(format_args!("snapshot {}", meta.snapshot_id), data)?;
    for record in &payload.files {
        // Every path in a table passed `validate_path` when it was applied; one that does
        // not is a damaged snapshot, and must not reach the shared folder.
        if let Err(e) = validate_path(&record.path) {
            return Err(CodecError::Invalid(format!(
                "snapshot {} holds an invalid path {:?}: {e}",
                meta.snapshot_id, record.path
            )));
        }
    }
    Ok(payload)
}

fn read_record(tree: &sled::Tree, path: &str) -> Result<Option<FileRecord>, CodecError> {
    let key = file_key(path);
    match tree.get(&key)? {
        Some(bytes) => Ok(Some(decode_record(&key, &bytes)?)),
        None => Ok(None),
    }
}

/// A record read back, checked against the key it was stored under.
fn decode_record(key: &[u8], value: &[u8]) -> Result<FileRecord, CodecError> {
    let path = String::from_utf8_lossy(&key[FILE_PREFIX.len().min(key.len())..]);
    let record: FileRecord = decode(format_args!("the record of {path:?}"), value)?;
    if record.path != path {
        return Err(CodecError::Invalid(format!("the record stored at {path:?} is for {:?}", record.path)));
    }
    Ok(record)
}

/// The table as it was when openraft asked for a snapshot builder.
struct Captured {
    /// Encoded records, in path order.
    files: Vec<sled::IVec>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    sessions: BTreeMap<NodeId, u64>,
    key_rotation: Option<KeyRotation>,
}

/// Builds a snapshot from the copy of the table taken when it was created.
pub struct SnapshotBuilder {
    state_machine: StateMachine,
    captured: Result<Captured, StorageError>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let captured = self.captured.as_ref().map_err(Clone::clone)?;
        let read = || to_storage(ErrorSubject::StateMachine, ErrorVerb::Read);
        let files = captured
            .files
            .iter()
            .map(|bytes| decode::<FileRecord>("a file record", bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(read())?;
        let payload = SnapshotPayload {
            files,
            last_applied: captured.last_applied,
            membership: captured.membership.clone(),
            sessions: captured.sessions.clone(),
            key_rotation: captured.key_rotation.clone(),
        };
        let data = encode("a snapshot", &payload).map_err(read())?;

        // sled's id generator is durable and monotonic: ids never repeat, even after a
        // restart, while openraft tells snapshots apart by id alone.
        let unique =
            self.state_machine.db.generate_id().map_err(to_storage(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        let snapshot_id = match payload.last_applied {
            Some(last) => format!("{}-{}-{unique}", last.leader_id, last.index),
            None => format!("--{unique}"),
        };
        let meta = SnapshotMeta { last_log_id: payload.last_applied, last_membership: payload.membership, snapshot_id };
        let write = || to_storage(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write);
        self.state_machine.save_snapshot(&meta, &data).map_err(write())?;
        // openraft purges the log behind a snapshot next: the table it stands for must be
        // on disk first.
        let flushed = self.state_machine.db.flush_async().await;
        flushed.map_err(to_storage(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built a snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let read = || to_storage(ErrorSubject::StateMachine, ErrorVerb::Read);
        Ok((self.read_last_applied().map_err(read())?, self.read_membership().map_err(read())?))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Not flushed here: the log keeps every entry after the last snapshot and the
        // committed mark is saved, so openraft re-applies whatever a crash took back.
        let started = std::time::Instant::now();
        let mut results = Vec::new();
        let mut last = None;
        for entry in entries {
            match self.apply_entry(&entry) {
                Ok(result) => {
                    results.push(result);
                    last = Some(entry.log_id.index);
                }
                Err(e) => {
                    // What did apply is in the table: the applier may go ahead with it.
                    self.announce(last);
                    return Err(e.into_storage(ErrorSubject::Apply(entry.log_id), ErrorVerb::Write));
                }
            }
        }
        self.announce(last);
        tracing::debug!(entries = results.len(), upto = last, took = ?started.elapsed(), "applied");
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Copied now, between two applies: openraft builds the snapshot in another task
        // while it goes on applying.
        let captured = self.capture().map_err(to_storage(ErrorSubject::StateMachine, ErrorVerb::Read));
        SnapshotBuilder { state_machine: self.clone(), captured }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let payload = check_snapshot(meta, &data).map_err(to_storage(subject(), ErrorVerb::Read))?;
        self.replace_with(meta, &payload, data).map_err(to_storage(subject(), ErrorVerb::Write))?;
        self.db.flush_async().await.map_err(to_storage(subject(), ErrorVerb::Write))?;
        self.announce(meta.last_log_id.map(|log_id| log_id.index));
        tracing::info!(snapshot = %meta.snapshot_id, files = payload.files.len(), "installed a snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.read_snapshot().map_err(to_storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}
