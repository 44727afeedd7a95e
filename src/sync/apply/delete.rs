//! Applying deletes: a file the user did not change since it was synced goes to the
//! trash; the folders it left are synced before the index forgets it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use raftshare_raft::admin::EventKind;
use raftshare_raft::FileRecord;
use raftshare_storage::LocalEntry;
use tracing::{info, warn};

use super::decide::{is_own, is_stale, local_entry, same_stamp};
use super::plan::Outcome;
use crate::sync::disk::{self, Stamp};
use crate::sync::error::ApplyError;
use crate::sync::folder;
use crate::sync::state::SyncState;

/// Apply deletes: each file the user did not change since goes to the trash; the
/// folders they left are synced once, then the index forgets them.
pub(super) fn delete_batch(sync: &SyncState, records: &[FileRecord]) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(records.len());
    let mut trashed = Vec::new();
    let mut folders = BTreeSet::new();
    let _guard = sync.lock_folder();
    for record in records {
        match trash_deleted(sync, record) {
            Ok(Some(folder)) => {
                folders.insert(folder);
                trashed.push(record);
            }
            Ok(None) => outcomes.push(Outcome::Done),
            Err(why) => outcomes.push(Outcome::Later(why.to_string())),
        }
    }
    let paths: Vec<&str> = trashed.iter().map(|r| r.path.as_str()).collect();
    if let Err(why) = unindex_trashed(sync, &paths, folders) {
        let why = why.to_string();
        outcomes.extend(trashed.iter().map(|_| Outcome::Later(why.clone())));
        return outcomes;
    }
    for record in trashed {
        let rel = &record.path;
        info!(path = %rel, version = record.version, by = %record.origin_name, "deleted");
        sync.events.push(EventKind::Deleted { path: rel.clone(), by: record.origin_name.clone() });
        outcomes.push(Outcome::Done);
    }
    outcomes
}

/// The files at `paths` were moved to the trash out of `folders` (under the folder
/// lock): the folders are synced, then the paths leave the local index (the watcher's
/// echo is expected) and the folders left empty go. If the folders cannot be synced the
/// moves may not be durable: the paths stay indexed (the next pass finds them gone).
pub(super) fn unindex_trashed(sync: &SyncState, paths: &[&str], folders: BTreeSet<PathBuf>) -> Result<(), ApplyError> {
    let folders: Vec<PathBuf> = folders.into_iter().collect();
    if let Err(e) = folder::sync_all(&folders) {
        return Err(ApplyError::io("cannot sync the folders of deleted files", e));
    }
    let gone: Vec<(&str, Option<&LocalEntry>)> = paths.iter().map(|path| (*path, None)).collect();
    match sync.local.update(&gone) {
        Ok(_) => sync.echoes.expect(paths.iter().map(|path| (*path, None))),
        Err(e) => warn!("cannot take {} deleted files out of the local index: {e}", gone.len()),
    }
    for folder in folders.iter().rev() {
        sync.folder.prune_empty(folder);
    }
    Ok(())
}

/// Move a deleted record's file to the trash if it is still the deleted version.
/// Returns the folder it left (None: nothing to move).
pub(super) fn trash_deleted(sync: &SyncState, record: &FileRecord) -> Result<Option<PathBuf>, ApplyError> {
    let rel = &record.path;
    let Ok(abs) = sync.folder.path_of(rel) else { return Ok(None) };
    if sync.is_ignored(rel, false) {
        return Ok(None); // out of sync here: an ignored file is never deleted by the cluster
    }
    if sync.has_pending(rel) {
        if is_own(sync, record) {
            return Ok(None);
        }
        return Err(ApplyError::LocalChangeFirst { path: rel.clone() });
    }
    if is_stale(sync, record) {
        return Ok(None);
    }
    let entry = local_entry(sync, rel);
    let Some(stamp) = disk::stamp(&abs).map_err(|e| ApplyError::io(format!("cannot read {rel:?}"), e))? else {
        if entry.is_some() {
            let _ = sync.local.remove(rel);
        }
        return Ok(None);
    };
    trash_unchanged(sync, rel, &abs, &stamp, entry.as_ref(), Some(&record.hash))
        .map_err(|e| ApplyError::io(format!("cannot delete {rel:?}"), e))
}

/// Move the file at `rel` (`abs`, found with `stamp`) to the trash if no one changed it
/// here since this node indexed it as `entry` (see [`unchanged`]); returns the folder it
/// left. A file changed here, or saved over between the look and the move (it is put
/// back), stays, and the scanner is asked to look at it: the edit beats the delete.
pub(super) fn trash_unchanged(
    sync: &SyncState,
    rel: &str,
    abs: &Path,
    stamp: &Stamp,
    entry: Option<&LocalEntry>,
    also: Option<&raftshare_raft::Digest>,
) -> std::io::Result<Option<PathBuf>> {
    let Some((hash, blocks)) = unchanged(abs, stamp, entry, also) else {
        sync.rechecks.ask(rel);
        return Ok(None);
    };
    let Some((trashed, left)) = sync.folder.trash_seen(rel, &hash, stamp)? else {
        sync.rechecks.ask(rel);
        return Ok(None);
    };
    sync.trash.remember(trashed, &blocks);
    Ok(Some(left))
}

/// What the file at `abs` (with `stamp`) holds, if no one changed it here since this node
/// indexed it as `entry`: the same stamp, or, for a file only touched, the same content as
/// the index or as `also`.
pub(super) fn unchanged(
    abs: &Path,
    stamp: &Stamp,
    entry: Option<&LocalEntry>,
    also: Option<&raftshare_raft::Digest>,
) -> Option<(raftshare_raft::Digest, Vec<raftshare_raft::Digest>)> {
    if let Some(e) = entry.filter(|e| same_stamp(e, stamp)) {
        return Some((e.hash, e.blocks.clone()));
    }
    let content = disk::hash_file(abs).ok().flatten()?;
    let mut known = entry.map(|e| &e.hash).into_iter().chain(also);
    known.any(|hash| *hash == content.hash).then_some((content.hash, content.blocks))
}
