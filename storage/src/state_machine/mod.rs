//! [`StateMachine`]: the replicated file table in sled, and openraft's state machine
//! over it.
//!
//! Everything lives in one tree (`state_machine`, keys in [`crate::codec`]): `f/<path>`
//! records, the entry index, `m/…` marks, sessions and the current snapshot. This module
//! owns the type, its plain reads (records, marks) and the `RaftStateMachine` glue; the
//! work is in its parts:
//! - `apply`: one committed entry → the pure rules of [`crate::table`] over the tree →
//!   one `sled::Batch` of records, entry-index chunks and `last_applied`, so a crash
//!   never leaves a half-applied entry.
//! - `entry_index`: which paths each entry's version still holds, and the applier's
//!   question built on it: what changed after the index it has materialised
//!   ([`StateMachine::changed_since`]).
//! - `forget`: the forget mark (`m/forgotten_upto`) and the tombstones a `ForgetDeleted`
//!   removes.
//! - `snapshot`: the table's metadata (never file content), bincode-encoded, built and
//!   installed; the entry index is derived, not in the snapshot, and is rebuilt when one
//!   is installed.
//!
//! [`StateMachine::subscribe`] wakes the applier when the applied index moves.

mod apply;
mod entry_index;
mod forget;
mod snapshot;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend};
use raftshare_raft::{
    ApplyResult, Entry, FileRecord, KeyRotation, LogId, NodeId, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use tokio::sync::watch;

use crate::codec::{
    decode, file_key, session_key, to_storage, CodecError, FILE_PREFIX, KEY_ROTATION_KEY, LAST_APPLIED_KEY,
    MEMBERSHIP_KEY, SESSION_PREFIX,
};

use snapshot::check_snapshot;

pub use snapshot::SnapshotBuilder;

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
