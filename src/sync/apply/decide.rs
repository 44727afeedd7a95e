//! Deciding what one committed record needs on this disk: nothing (the disk holds it,
//! or this node's own change waits), not yet (a local edit goes first), or a download
//! replacing what the target holds now. Reads the disk and the local index; writes only
//! the index, to adopt content that is already in place.

use raftshare_raft::FileRecord;
use raftshare_storage::LocalEntry;
use tracing::warn;

use crate::sync::disk::{self, Stamp};
use crate::sync::state::SyncState;

/// What a record needs, decided for its whole batch at once.
pub(super) struct Decided {
    pub(super) decision: Decision,
    /// A small file whose block the index says is on this disk already.
    pub(super) here: bool,
}

/// What to do with a live record.
pub(super) enum Decision {
    Done,
    Later(String),
    /// Write it; the target currently holds this (None: nothing).
    Replace(Option<Stamp>),
}

pub(super) fn local_entry(sync: &SyncState, rel: &str) -> Option<LocalEntry> {
    sync.local.get(rel).unwrap_or_else(|e| {
        warn!(path = rel, "{e}");
        None
    })
}

pub(super) fn same_stamp(entry: &LocalEntry, stamp: &Stamp) -> bool {
    entry.size == stamp.size && entry.mtime == stamp.mtime
}

/// What `record`, just read from the table, needs. Whether a newer version was applied
/// meanwhile is checked once, at the rename ([`place`]): a record outdated in between
/// costs a download, and checking every record here cost a table read each.
pub(super) fn decide_put(sync: &SyncState, record: &FileRecord) -> Decision {
    let rel = &record.path;
    if sync.is_ignored(rel, false) {
        // Out of sync here, both ways: neither fetched nor written over (a file of this
        // node's own at that path stays as it is), and the watermark moves on.
        return Decision::Done;
    }
    let entry = local_entry(sync, rel);
    if entry.as_ref().is_some_and(|e| e.version >= Some(record.version)) {
        return Decision::Done;
    }
    if sync.has_pending(rel) {
        if is_own(sync, record) {
            return Decision::Done;
        }
        return Decision::Later(format!("a local change of {rel:?} is being committed first"));
    }
    let abs = match sync.folder.path_of(rel) {
        Ok(abs) => abs,
        Err(e) => {
            sync.cannot_hold.add(rel, e);
            return Decision::Done;
        }
    };
    sync.cannot_hold.clear(rel);
    let stamp = match disk::stamp(&abs) {
        Ok(stamp) => stamp,
        Err(e) => return Decision::Later(format!("cannot read {rel:?}: {e}")),
    };
    let Some(stamp) = stamp else {
        if abs.is_dir() {
            return Decision::Later(format!("{rel:?} is a folder here, and a file in the table"));
        }
        if entry.is_some() {
            // Deleted here and not proposed yet: the scanner proposes the delete first.
            sync.rechecks.ask(rel);
            return Decision::Later(format!("{rel:?} was deleted here; the scanner proposes that first"));
        }
        return Decision::Replace(None);
    };
    if let Some(entry) = entry.as_ref().filter(|e| same_stamp(e, &stamp)) {
        if entry.hash == record.hash {
            adopt(sync, rel, entry.clone(), stamp, record.version);
            return Decision::Done;
        }
        return Decision::Replace(Some(stamp));
    }
    // The file is not what this node last synced: the user's, or still being written.
    match disk::hash_file(&abs) {
        Ok(Some(content)) if content.hash == record.hash => {
            let entry = LocalEntry {
                size: content.stamp.size,
                mtime: content.stamp.mtime,
                hash: content.hash,
                blocks: content.blocks,
                version: Some(record.version),
            };
            adopt(sync, rel, entry, content.stamp, record.version);
            Decision::Done
        }
        Ok(_) => {
            sync.rechecks.ask(rel);
            Decision::Later(format!("{rel:?} was changed here; the scanner proposes that edit first"))
        }
        Err(e) => Decision::Later(format!("cannot read {rel:?}: {e}")),
    }
}

/// Whether `record` is this node's own change while a change of its path waits in the
/// outbox: the disk holds it or the newer change already, and the proposer records the
/// outcome (and calls [`SyncState::reapply`] if this node's change lost). Retrying such
/// records made every pass of a burst's writer incomplete, each redoing all the records
/// since the watermark 300 ms later.
pub(super) fn is_own(sync: &SyncState, record: &FileRecord) -> bool {
    record.origin == sync.node_id
}

/// Whether the table has moved past `record` since the pass read it: acting on it would
/// write an old version over a newer one (the newer record has its own turn).
pub(super) fn is_stale(sync: &SyncState, record: &FileRecord) -> bool {
    sync.sm.get(&record.path).is_none_or(|now| now.version != record.version)
}

pub(super) fn adopt(sync: &SyncState, rel: &str, mut entry: LocalEntry, stamp: Stamp, version: u64) {
    entry.size = stamp.size;
    entry.mtime = stamp.mtime;
    entry.version = Some(version);
    if let Err(e) = sync.local.put(rel, &entry) {
        warn!(path = rel, "{e}");
    }
}
