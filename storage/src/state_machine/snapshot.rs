//! Snapshots: the table's metadata (every record, tombstones included; never file
//! content), the marks and the sessions, bincode-encoded. The current snapshot is kept in
//! the tree beside the table, so it survives a restart.
//!
//! Building copies the table between two applies ([`SnapshotBuilder`]); installing checks
//! a received snapshot, then replaces the table, its entry index and the marks in one
//! batch. It does not tell subscribers, nor flush, nor decide when: the `RaftStateMachine`
//! glue does.

use std::collections::BTreeMap;
use std::io::Cursor;

use openraft::storage::Snapshot;
use openraft::{ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use raftshare_raft::{
    FileRecord, KeyRotation, LogId, NodeId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use serde::{Deserialize, Serialize};

use super::StateMachine;
use crate::codec::{
    decode, encode, file_key, session_key, to_storage, CodecError, FILE_PREFIX, KEY_ROTATION_KEY, LAST_APPLIED_KEY,
    MEMBERSHIP_KEY, SESSION_PREFIX, SNAPSHOT_DATA_KEY, SNAPSHOT_META_KEY,
};
use crate::table::validate_path;

/// What a snapshot's bytes decode to.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotPayload {
    /// Every record of the table, tombstones included, sorted by path.
    pub(super) files: Vec<FileRecord>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Per origin, the highest outbox seq applied (so retries stay deduplicated on a
    /// node that starts from this snapshot).
    sessions: BTreeMap<NodeId, u64>,
    /// The latest key rotation, so a member that starts from this snapshot (or was away)
    /// can still get its sealed key.
    key_rotation: Option<KeyRotation>,
}

impl StateMachine {
    pub(super) fn read_snapshot_meta(&self) -> Result<Option<SnapshotMeta>, CodecError> {
        match self.tree.get(SNAPSHOT_META_KEY)? {
            Some(bytes) => Ok(Some(decode("the snapshot's metadata", &bytes)?)),
            None => Ok(None),
        }
    }

    pub(super) fn read_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, CodecError> {
        let Some(meta) = self.read_snapshot_meta()? else {
            return Ok(None);
        };
        let data = self
            .tree
            .get(SNAPSHOT_DATA_KEY)?
            .ok_or_else(|| CodecError::Invalid(format!("snapshot {} has metadata but no data", meta.snapshot_id)))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data.to_vec())) }))
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
    pub(super) fn replace_with(
        &self,
        meta: &SnapshotMeta,
        payload: &SnapshotPayload,
        data: Vec<u8>,
    ) -> Result<(), CodecError> {
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
    pub(super) fn capture(&self) -> Result<Captured, CodecError> {
        Ok(Captured {
            files: self.tree.scan_prefix(FILE_PREFIX).values().collect::<Result<_, _>>()?,
            last_applied: self.read_last_applied()?,
            membership: self.read_membership()?,
            sessions: self.read_sessions()?,
            key_rotation: self.key_rotation_stored()?,
        })
    }
}

/// Decodes a snapshot received from a peer and checks it before it replaces the table.
pub(super) fn check_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<SnapshotPayload, CodecError> {
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

/// The table as it was when openraft asked for a snapshot builder.
pub(super) struct Captured {
    /// Encoded records, in path order.
    files: Vec<sled::IVec>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    sessions: BTreeMap<NodeId, u64>,
    key_rotation: Option<KeyRotation>,
}

/// Builds a snapshot from the copy of the table taken when it was created.
pub struct SnapshotBuilder {
    pub(super) state_machine: StateMachine,
    pub(super) captured: Result<Captured, StorageError>,
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
