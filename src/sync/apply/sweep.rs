//! The sweep after forgotten tombstones: files this node holds at a committed version
//! whose path the table no longer knows at all are deleted, unless changed here since.

use std::collections::BTreeSet;

use raftshare_raft::admin::EventKind;
use raftshare_storage::LocalEntry;
use tracing::{info, warn};

use super::decide::local_entry;
use super::delete::{trash_unchanged, unindex_trashed};
use crate::sync::disk::{self};
use crate::sync::state::SyncState;

/// Delete the files this node holds at a committed version whose path the table no
/// longer knows at all: deleted, and the tombstone forgotten before this node applied it.
/// A file changed here since is looked at again instead (the scanner proposes it); one
/// never committed (no version) is this node's own and stays.
///
/// Only versions at or below the forget mark can have lost their record so: a newer one
/// may be this node's own change, committed but not yet applied here.
pub(super) fn delete_forgotten(sync: &SyncState) {
    let Some(mark) = sync.sm.forgotten_upto() else { return };
    let orphans: Vec<(String, LocalEntry)> = sync
        .local
        .entries()
        .into_iter()
        .filter(|(rel, e)| e.version.is_some_and(|v| v <= mark) && sync.sm.get(rel).is_none())
        .collect();
    if orphans.is_empty() {
        return;
    }
    let _guard = sync.lock_folder();
    let mut folders = BTreeSet::new();
    let mut trashed = Vec::new();
    for (rel, entry) in orphans {
        // Under the lock: not recorded meanwhile, and no local change of it waiting.
        if sync.has_pending(&rel)
            || sync.is_ignored(&rel, false)
            || sync.sm.get(&rel).is_some()
            || local_entry(sync, &rel).as_ref() != Some(&entry)
        {
            continue;
        }
        let Ok(abs) = sync.folder.path_of(&rel) else { continue };
        match disk::stamp(&abs) {
            Ok(None) => {
                let _ = sync.local.remove(&rel);
            }
            Ok(Some(stamp)) => match trash_unchanged(sync, &rel, &abs, &stamp, Some(&entry), None) {
                Ok(Some(left)) => {
                    folders.insert(left);
                    trashed.push(rel);
                }
                Ok(None) => {}
                Err(e) => warn!(path = %rel, "cannot delete a file the cluster deleted: {e}"),
            },
            // Unreadable: the scanner decides.
            Err(_) => sync.rechecks.ask(&rel),
        }
    }
    let paths: Vec<&str> = trashed.iter().map(String::as_str).collect();
    if let Err(why) = unindex_trashed(sync, &paths, folders) {
        warn!("{why}");
        return;
    }
    for rel in trashed {
        info!(path = %rel, "deleted: the cluster deleted it and forgot its tombstone before this node applied it");
        sync.events.push(EventKind::Deleted { path: rel, by: "the cluster".into() });
    }
}
