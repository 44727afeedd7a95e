//! Installing a fetched batch: temp files made durable together, renamed into place
//! (the old file to the trash), their folders synced, and only then indexed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use raftshare_raft::FileRecord;
use raftshare_storage::LocalEntry;
use tracing::{debug, info, warn};

use super::decide::{is_stale, local_entry};
use super::fetch::Assembled;
use super::plan::Outcome;
use crate::sync::disk::{self, Stamp};
use crate::sync::error::ApplyError;
use crate::sync::folder;
use crate::sync::state::SyncState;

/// A batch being installed: the outcomes settled before, and the install task.
pub(super) struct Installing {
    pub(super) settled: Vec<Outcome>,
    pub(super) task: tokio::task::JoinHandle<Vec<(Assembled, Outcome)>>,
}

/// Make the batch's temp files durable, rename them into place, make the renames
/// durable, and only then index them: a crash leaves each target old or new, and the
/// index never claims a version the disk may not hold.
pub(super) fn install_batch(sync: &SyncState, ready: Vec<Assembled>) -> Vec<(Assembled, Outcome)> {
    let started = std::time::Instant::now();
    let temps: Vec<&Path> = ready.iter().map(|a| a.temp.as_path()).collect();
    let synced = folder::sync_all(&temps);
    let sync_took = started.elapsed();
    if let Err(e) = synced {
        let why = ApplyError::io("cannot sync the downloaded files", e).to_string();
        return ready.into_iter().map(|a| (a, Outcome::Later(why.clone()))).collect();
    }
    let _guard = sync.lock_folder();
    let mut results = Vec::with_capacity(ready.len());
    let mut placed = Vec::new();
    for assembled in ready {
        match place(sync, &assembled) {
            Ok(Some(target)) => placed.push((assembled, target)),
            Ok(None) => results.push((assembled, Outcome::Done)),
            Err(why) => results.push((assembled, Outcome::Later(why.to_string()))),
        }
    }
    let place_took = started.elapsed() - sync_took;
    let folders: BTreeSet<&Path> = placed.iter().filter_map(|(_, target)| target.parent()).collect();
    if let Err(e) = folder::sync_all(&folders.into_iter().collect::<Vec<_>>()) {
        // In place but maybe not durable: not indexed; the next pass finds the content
        // there and adopts it.
        let why = ApplyError::io("cannot sync the folders of the received files", e).to_string();
        results.extend(placed.into_iter().map(|(a, _)| (a, Outcome::Later(why.clone()))));
        return results;
    }
    let entries: Vec<(&str, LocalEntry)> = placed
        .iter()
        .map(|(a, target)| (a.record.path.as_str(), installed_entry(target, &a.record, a.stamp)))
        .collect();
    let changes: Vec<(&str, Option<&LocalEntry>)> = entries.iter().map(|(path, e)| (*path, Some(e))).collect();
    let index_started = std::time::Instant::now();
    match sync.local.update(&changes) {
        Ok(_) => {
            sync.echoes.expect(entries.iter().map(|(path, e)| (*path, Some(Stamp { size: e.size, mtime: e.mtime }))))
        }
        // The next pass finds the content in place and adopts it.
        Err(e) => warn!("cannot index {} received files: {e}", changes.len()),
    }
    debug!(
        files = changes.len(),
        sync = ?sync_took,
        place = ?place_took,
        index = ?index_started.elapsed(),
        "install steps"
    );
    for (assembled, _) in placed {
        let record = &assembled.record;
        info!(path = %record.path, version = record.version, from = %record.origin_name, "received");
        results.push((assembled, Outcome::Done));
    }
    results
}

/// Rename one assembled file into place (the old file to the trash), if the table and
/// the disk are still as when it was decided. Returns where it went (None: the record is
/// outdated, nothing to do).
pub(super) fn place(sync: &SyncState, assembled: &Assembled) -> Result<Option<PathBuf>, ApplyError> {
    let rel = &assembled.record.path;
    let abs = sync.folder.path_of(rel).map_err(|e| ApplyError::io(format!("cannot place {rel:?}"), e))?;
    if is_stale(sync, &assembled.record) {
        return Ok(None);
    }
    let now = disk::stamp(&abs).ok().flatten();
    if now != assembled.on_disk {
        return Err(ApplyError::ChangedHere { path: rel.clone(), what: "changed while its new version was fetched" });
    }
    if let Some(seen) = now {
        let (hash, blocks) = local_entry(sync, rel).map(|e| (e.hash, e.blocks)).unwrap_or_default();
        let moved = sync
            .folder
            .trash_seen(rel, &hash, &seen)
            .map_err(|e| ApplyError::io(format!("cannot move the old {rel:?} aside"), e))?;
        let Some((trashed, _)) = moved else {
            sync.rechecks.ask(rel);
            return Err(ApplyError::ChangedHere {
                path: rel.clone(),
                what: "was saved here while its new version was installed",
            });
        };
        sync.trash.remember(trashed, &blocks);
    }
    match sync.folder.place(&assembled.temp, rel) {
        Ok(_) => Ok(Some(abs)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Saved here between the look above and the rename: the scanner proposes it.
            sync.rechecks.ask(rel);
            Err(ApplyError::ChangedHere {
                path: rel.clone(),
                what: "was made here while its new version was installed",
            })
        }
        Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {
            // Too long for this disk (its root is longer, or its names shorter): said in
            // `status`, not retried for ever.
            sync.cannot_hold.add(rel, e);
            Ok(None)
        }
        Err(e) => Err(ApplyError::io(format!("cannot install {rel:?}"), e)),
    }
}

/// The local index entry of `record` just installed at `abs`: stamped as `known` (its
/// temp file's), else as the disk stamps it now.
pub(crate) fn installed_entry(abs: &Path, record: &FileRecord, known: Option<Stamp>) -> LocalEntry {
    let stamp =
        known.or_else(|| disk::stamp(abs).ok().flatten()).unwrap_or(Stamp { size: record.size, mtime: record.mtime });
    LocalEntry {
        size: stamp.size,
        mtime: stamp.mtime,
        hash: record.hash,
        blocks: record.blocks.clone(),
        version: Some(record.version),
    }
}
