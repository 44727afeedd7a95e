//! Applying committed entries: each one runs the pure rules of [`crate::table`] over a
//! [`PendingTable`] (the tree overlaid with the entry's own writes), then writes the
//! records it changed, their entry-index chunks, the sessions, the forget mark and
//! `last_applied` in one `sled::Batch`, so a crash never leaves a half-applied entry.
//!
//! It decides nothing itself (the rules are in `table`), keeps no index layout (that is
//! `entry_index`) and never tells subscribers (the `RaftStateMachine` glue does, once
//! per batch of entries).

use std::collections::BTreeMap;

use openraft::EntryPayload;
use raftshare_raft::{ApplyResult, Entry, FileOp, FileRecord, KeyRotation, NodeId, OpOutcome, StoredMembership};

use super::entry_index::put_chunks;
use super::{read_record, StateMachine};
use crate::codec::{
    encode, file_key, session_key, CodecError, ENTRY_INDEX_KEY, FORGOTTEN_KEY, KEY_ROTATION_KEY, LAST_APPLIED_KEY,
    MEMBERSHIP_KEY,
};
use crate::table::{self, TableView};

impl StateMachine {
    /// Applies one committed entry in one batch; returns what it did.
    pub(super) fn apply_entry(&self, entry: &Entry) -> Result<ApplyResult, CodecError> {
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
                let whole_entry = matches!(change.op, FileOp::RotateKey(_));
                for (i, leaf) in change.op.leaves().into_iter().enumerate() {
                    if let FileOp::RotateKey(rotation) = leaf {
                        let leader = log_id.leader_id.node_id;
                        outcomes.push(self.rotate_key(rotation, change.origin, leader, whole_entry, &mut batch)?);
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

    /// Records `rotation` as the latest, if [`table::check_rotation`] takes it.
    fn rotate_key(
        &self,
        rotation: &KeyRotation,
        origin: NodeId,
        leader: NodeId,
        whole_entry: bool,
        batch: &mut sled::Batch,
    ) -> Result<OpOutcome, CodecError> {
        let last = self.key_rotation_stored()?.map_or(0, |r| r.epoch);
        if let Err(reason) = table::check_rotation(last, rotation, origin, leader, whole_entry) {
            return Ok(OpOutcome::Rejected { path: String::new(), reason });
        }
        batch.insert(KEY_ROTATION_KEY, encode("the key rotation", rotation)?);
        Ok(OpOutcome::KeyRotated { epoch: rotation.epoch })
    }
}

/// The table as the rules see it while one entry is applied: the tree, overlaid with the
/// records the entry has written so far (which go to sled in one batch at the end).
pub(super) struct PendingTable<'a> {
    pub(super) tree: &'a sled::Tree,
    /// The entry's writes: a record, or `None` for a path it removes from the table.
    pub(super) writes: BTreeMap<String, Option<FileRecord>>,
    /// What the tree held for the paths read so far (before this entry): each is read
    /// from sled once per entry, not again when its write is stored.
    read: std::cell::RefCell<std::collections::HashMap<String, Option<FileRecord>>>,
    /// The forget mark as this entry leaves it, once it forgot tombstones (stored with
    /// the entry's writes).
    pub(super) forgotten: Option<u64>,
    /// A chunk of the entry index would not read: it is built again at the next start.
    pub(super) damaged_index: bool,
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
        // The forget mark decides which versions are read: its rules are in `forget`.
        self.forget(upto)
    }
}
