//! The state the sync engine's tasks share, and the folder-level rules they all obey:
//! the marker check (a folder that vanished is never synced, above all never emptied)
//! and the folder lock (a scanner decision and an applier install never interleave).
//!
//! The tasks themselves are `scanner` (disk → outbox), `proposer` (outbox → log),
//! `applier` (log → disk) and `transfer` (blocks between nodes).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use raftshare_raft::{Digest, NodeId};
use raftshare_storage::{LocalIndex, Outbox, StateMachine};
use tokio::sync::Notify;
use tracing::{info, warn};

use raftshare_raft::admin::{EventKind, Transfer};

use crate::events::EventLog;
use crate::sync::blocks::served::ServedBlocks;
use crate::sync::disk::{is_at_or_under, IgnoreRules, Stamp, Unreadable};
use crate::sync::folder::Folder;

/// How long an expected echo of the applier's own change is kept.
const ECHO_KEPT: Duration = Duration::from_secs(10);

/// Counters shown by `status`: written by the applier (pending downloads, bytes
/// received) and the block server (bytes sent); read by the node.
#[derive(Debug, Default)]
pub struct Stats {
    /// Block bytes served to peers.
    pub bytes_sent: AtomicU64,
    /// Block bytes fetched from peers (blocks found on this disk are not counted).
    pub bytes_received: AtomicU64,
    /// Committed files the applier still has to bring to disk.
    pub pending_downloads: AtomicU64,
}

impl Stats {
    /// Count a served or fetched block.
    pub fn count(counter: &AtomicU64, bytes: usize) {
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Everything the sync tasks of one node share: the stores, the folder and the
/// hand-offs between stages, each a part that says who writes it and who reads it.
pub struct SyncState {
    /// This node's id, name and cluster (fixed for the run).
    pub node_id: NodeId,
    pub node_name: String,
    pub cluster_id: String,
    /// The shared folder (written only through it).
    pub folder: Folder,
    /// This node's view of its folder: written by the scanner, the proposer and the applier.
    pub local: LocalIndex,
    /// Local changes waiting to commit: the scanner enqueues, the proposer acks.
    pub outbox: Outbox,
    /// The replicated file table: read by every stage, written only by Raft.
    pub sm: StateMachine,
    pub stats: Stats,
    /// What happened, for people watching (TUI, `raftshare events`): pushed by every stage.
    pub events: EventLog,
    /// The folder's health, its lock and its ignore rules.
    gate: FolderGate,
    /// Downloads in progress: the applier writes, the node's `Transfers` request reads.
    pub transfers: Transfers,
    /// Paths to look at again: the applier and the proposer ask, the scanner takes.
    pub rechecks: Rechecks,
    /// What the scanner's looks could not read: the scanner records, `status` shows.
    pub unreadable: UnreadablePaths,
    /// Paths of the table this node's disk cannot hold: the applier records, `status`
    /// shows.
    pub cannot_hold: CannotHold,
    /// Blocks of files in the trash: the applier remembers them, the fetch step and the
    /// block server read them.
    pub trash: TrashBlocks,
    /// What the applier just left at a path: the applier expects, the scanner takes.
    pub echoes: Echoes,
    /// This node's own entries the proposer recorded whole: the proposer settles, the
    /// applier skips them.
    pub settled: Settled,
    /// Small blocks this node served lately: the block server's own.
    pub served: ServedBlocks,
    /// The scanner's and the proposer's signals to each other about the outbox.
    pub outbox_signals: OutboxSignals,
    /// Wakes the scanner for a full scan (the folder came back): the gate signals, the
    /// watch loop waits.
    pub rescan: Notify,
    /// Wakes the applier outside of table changes (a local decision needs it to look
    /// again): the proposer signals, the applier waits.
    pub applier_wake: Notify,
}

/// The folder's health (its marker), the lock every change of it is made under, and
/// the ignore rules. Read and written by every stage through [`SyncState`].
struct FolderGate {
    rules: RwLock<IgnoreRules>,
    problem: RwLock<Option<String>>,
    lock: Mutex<()>,
}

/// Downloads in progress, by path.
#[derive(Default)]
pub struct Transfers(Mutex<HashMap<String, Transfer>>);

impl Transfers {
    /// Start showing a download.
    pub fn started(&self, t: Transfer) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(t.path.clone(), t);
    }

    /// Add `bytes` to the download of `path`.
    pub fn progress(&self, path: &str, bytes: u64) {
        if let Some(t) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get_mut(path) {
            t.done_bytes = (t.done_bytes + bytes).min(t.total_bytes);
        }
    }

    /// Stop showing the download of `path`.
    pub fn ended(&self, path: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(path);
    }

    /// Downloads in progress, by path.
    pub fn list(&self) -> Vec<Transfer> {
        let mut list: Vec<Transfer> = self.0.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        list.sort_by(|a, b| a.path.cmp(&b.path));
        list
    }
}

/// Paths to look at again: files still being written, or local edits the applier met.
#[derive(Default)]
pub struct Rechecks(Mutex<BTreeSet<String>>);

impl Rechecks {
    /// Ask the scanner to look at `rel` again soon.
    pub fn ask(&self, rel: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(rel.to_string());
    }

    /// The paths to look at again (and forget them).
    pub fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The paths the scanner could not read at its last look at them, with why.
#[derive(Default)]
pub struct UnreadablePaths(Mutex<Unreadable>);

impl UnreadablePaths {
    /// A look at `dir` (`""`: the whole folder) found `found` unreadable: it replaces
    /// what earlier looks found at or under `dir`. A path that became readable or
    /// unreadable is logged once.
    pub fn looked_at(&self, dir: &str, found: Unreadable) {
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let before: Vec<String> = known.0.keys().filter(|p| is_at_or_under(p, dir)).cloned().collect();
        for path in &before {
            if !found.0.contains_key(path) {
                known.0.remove(path);
                info!(path = %path, "readable again: synced as usual");
            }
        }
        for (path, why) in found.0 {
            if !known.0.contains_key(&path) {
                warn!(path = %path, "cannot be read ({why}): nothing in it is proposed or deleted until it can");
            }
            known.0.insert(path, why);
        }
    }

    /// One path that could not be read.
    pub fn add(&self, rel: &str, why: impl std::fmt::Display) {
        let mut found = Unreadable::default();
        found.add(rel, why);
        self.looked_at(rel, found);
    }

    /// Whether `rel` is at or under a path that could not be read.
    pub fn covers(&self, rel: &str) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).covers(rel)
    }

    /// `path: why` for each, for people (`/` for the folder itself).
    pub fn list(&self) -> Vec<String> {
        let known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        known.0.iter().map(|(p, why)| format!("{}: {why}", if p.is_empty() { "/" } else { p })).collect()
    }
}

/// Paths of the file table this node cannot hold (a name too long for its disk, a parent
/// that is a link here), with why: never retried for ever in silence, and never a delete.
#[derive(Default)]
pub struct CannotHold(Mutex<BTreeMap<String, String>>);

impl CannotHold {
    /// `rel` cannot be held here, for `why` (said once in the log).
    pub fn add(&self, rel: &str, why: impl std::fmt::Display) {
        let why = why.to_string();
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if held.get(rel) != Some(&why) {
            warn!(path = rel, "this node cannot hold it: {why}");
            held.insert(rel.to_string(), why);
        }
    }

    /// `rel` is held here now (or no longer in the table).
    pub fn clear(&self, rel: &str) {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if held.remove(rel).is_some() {
            info!(path = rel, "this node holds it now");
        }
    }

    /// `path: why` for each, for people.
    pub fn list(&self) -> Vec<String> {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.iter().map(|(p, why)| format!("{p}: {why}")).collect()
    }
}

/// Blocks of files moved to the trash: block digest → (trash file, block index).
#[derive(Default)]
pub struct TrashBlocks(Mutex<HashMap<Digest, (PathBuf, u32)>>);

impl TrashBlocks {
    /// Remember the blocks of a file moved to the trash, so a rename or a conflict copy
    /// can still be built from them.
    pub fn remember(&self, file: PathBuf, blocks: &[Digest]) {
        let mut trash = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (i, block) in blocks.iter().enumerate() {
            trash.insert(*block, (file.clone(), i as u32));
        }
    }

    /// How many blocks the trash holds.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the trash holds no block.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the trash holds `block`, if it does.
    pub fn find(&self, block: &Digest) -> Option<(PathBuf, u32)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(block).cloned()
    }

    /// Forget every block; whether there were any.
    fn clear(&self) -> bool {
        let mut trash = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let had = !trash.is_empty();
        trash.clear();
        had
    }
}

/// What the applier just left at a path (its stamp, None: moved away), and when: the
/// watcher reports the applier's own renames back, and the scanner need not look them
/// up in the index when the disk still shows exactly that.
#[derive(Default)]
pub struct Echoes(Mutex<HashMap<String, (Option<Stamp>, Instant)>>);

impl Echoes {
    /// The applier left these paths as stamped (None: moved away) and indexed them so.
    pub fn expect<'a>(&self, left: impl IntoIterator<Item = (&'a str, Option<Stamp>)>) {
        let now = Instant::now();
        let mut echoes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // An echo the watcher never brought (it was coalesced, or the scanner looked
        // first) is dropped after a while.
        echoes.retain(|_, (_, at)| now.duration_since(*at) < ECHO_KEPT);
        echoes.extend(left.into_iter().map(|(path, stamp)| (path.to_string(), (stamp, now))));
    }

    /// Whether `stamp`, just read at `rel`, is what the applier left there: its own
    /// change, nothing for the scanner to do. Forgets `rel` either way: only the first
    /// look after the applier's change can be its echo.
    pub fn is_echo(&self, rel: &str, stamp: Option<Stamp>) -> bool {
        let mut echoes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        echoes.remove(rel).is_some_and(|(left, _)| left == stamp)
    }
}

/// Log entries of this node's own changes whose every outcome the proposer recorded in
/// the local index: their records need nothing more from the applier.
#[derive(Default)]
pub struct Settled(Mutex<BTreeSet<u64>>);

impl Settled {
    /// The proposer recorded every outcome of this node's entry `index` in the local
    /// index (the disk holds each change, or a newer one still to be proposed).
    pub fn settle(&self, index: u64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(index);
    }

    /// Whether the records of entry `index` need nothing from the applier.
    pub fn is_settled(&self, index: u64) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(&index)
    }

    /// The applier has materialised up to `index`: what is settled up to there is done.
    pub fn forget_upto(&self, upto: u64) {
        let mut settled = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *settled = settled.split_off(&upto.saturating_add(1));
    }
}

/// The scanner and the proposer, about the outbox: the scanner says it grew (`ready`),
/// the proposer says it took changes off (`drained`), and a big look waits for that.
pub struct OutboxSignals {
    /// Wakes the proposer when the outbox grew.
    pub ready: Notify,
    /// Counts the proposer's takings off the outbox; the scanner waits on it.
    drained: (Mutex<u64>, std::sync::Condvar),
}

impl Default for OutboxSignals {
    fn default() -> OutboxSignals {
        OutboxSignals { ready: Notify::new(), drained: (Mutex::new(0), std::sync::Condvar::new()) }
    }
}

impl OutboxSignals {
    /// The proposer took committed changes off the outbox: wakes a waiting scanner.
    pub fn drained(&self) {
        let (taken, drained) = &self.drained;
        *taken.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        drained.notify_all();
    }

    /// Wait (blocking) until `outbox` holds at most `most` changes; false if the
    /// proposer took none off it for `patience` (no quorum, say).
    pub fn wait_until_at_most(&self, outbox: &Outbox, most: usize, patience: Duration) -> bool {
        let (taken, drained) = &self.drained;
        loop {
            let seen = *taken.lock().unwrap_or_else(|p| p.into_inner());
            // Counted without the lock: the proposer's signal never waits for a count.
            if outbox.len() <= most {
                return true;
            }
            let guard = taken.lock().unwrap_or_else(|p| p.into_inner());
            let (guard, waited) =
                drained.wait_timeout_while(guard, patience, |now| *now == seen).unwrap_or_else(|p| p.into_inner());
            drop(guard);
            if waited.timed_out() {
                return false;
            }
        }
    }
}

impl SyncState {
    /// Shared state over the given stores and folder.
    pub fn new(
        node_id: NodeId,
        node_name: String,
        cluster_id: String,
        folder: Folder,
        local: LocalIndex,
        outbox: Outbox,
        sm: StateMachine,
    ) -> SyncState {
        let rules = IgnoreRules::load(folder.root());
        SyncState {
            node_id,
            node_name,
            cluster_id,
            folder,
            local,
            outbox,
            sm,
            stats: Stats::default(),
            events: EventLog::default(),
            gate: FolderGate { rules: RwLock::new(rules), problem: RwLock::new(None), lock: Mutex::new(()) },
            transfers: Transfers::default(),
            rechecks: Rechecks::default(),
            unreadable: UnreadablePaths::default(),
            cannot_hold: CannotHold::default(),
            trash: TrashBlocks::default(),
            echoes: Echoes::default(),
            settled: Settled::default(),
            served: ServedBlocks::default(),
            outbox_signals: OutboxSignals::default(),
            rescan: Notify::new(),
            applier_wake: Notify::new(),
        }
    }

    /// Hold while deciding on and changing one path of the folder.
    pub fn lock_folder(&self) -> MutexGuard<'_, ()> {
        self.gate.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `rel` is left out of sync.
    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        self.gate.rules.read().unwrap_or_else(|p| p.into_inner()).is_ignored(rel, is_dir)
    }

    /// The synced files under `start`, handed to `each` as `disk::walk_each` finds them
    /// (with the rules as they are now: `each` may read them again).
    pub fn walk_each(&self, start: &std::path::Path, each: impl FnMut(String, crate::sync::disk::Stamp)) -> Unreadable {
        let rules = self.gate.rules.read().unwrap_or_else(|p| p.into_inner()).clone();
        crate::sync::disk::walk_each(self.folder.root(), start, &rules, each)
    }

    /// Read `.raftshareignore` again.
    pub fn reload_rules(&self) {
        let rules = IgnoreRules::load(self.folder.root());
        *self.gate.rules.write().unwrap_or_else(|p| p.into_inner()) = rules;
    }

    /// Why the folder is not synced now, if it is not.
    pub fn problem(&self) -> Option<String> {
        self.gate.problem.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Check the marker and update the problem; true when the folder is usable.
    ///
    /// A folder without its marker is only adopted (marker created) when this node has
    /// never synced anything: otherwise it may be an unmounted drive or a moved folder,
    /// and syncing it would propose deleting everything.
    pub fn check_marker(&self) -> bool {
        let ok = if self.folder.has_marker() {
            true
        } else if self.local.is_empty() {
            match self.folder.create_marker(&self.cluster_id) {
                Ok(()) => {
                    info!(folder = %self.folder.root().display(), "new shared folder: marker created");
                    true
                }
                Err(e) => {
                    self.set_problem(format!("cannot set up the shared folder {}: {e}", self.folder.root().display()));
                    return false;
                }
            }
        } else {
            false
        };
        if ok {
            if self.gate.problem.write().unwrap_or_else(|p| p.into_inner()).take().is_some() {
                info!(folder = %self.folder.root().display(), "the shared folder is back: syncing again");
                self.events.push(EventKind::Folder { problem: None });
                self.rescan.notify_one();
            }
            if let Err(e) = self.folder.prepare() {
                self.set_problem(format!("cannot prepare {}: {e}", self.folder.root().display()));
                return false;
            }
        } else {
            self.set_problem(format!(
                "the shared folder {} has lost its marker .raftshare/folder (unmounted drive? moved or deleted folder?): \
                 nothing is synced from or to it until it is back",
                self.folder.root().display()
            ));
        }
        ok
    }

    fn set_problem(&self, why: String) {
        let mut problem = self.gate.problem.write().unwrap_or_else(|p| p.into_inner());
        if problem.as_deref() != Some(&why) {
            warn!("{why}");
            self.events.push(EventKind::Folder { problem: Some(why.clone()) });
        }
        *problem = Some(why);
    }

    /// Whether a local change of `path` waits in the outbox (the applier leaves it alone).
    pub fn has_pending(&self, path: &str) -> bool {
        self.outbox.contains(path)
    }

    /// Make the applier look at `path` again even if its record is older than the
    /// watermark (this node's own op on it was dropped or lost a conflict).
    pub fn reapply(&self, path: &str) {
        if let Some(record) = self.sm.get(path) {
            let before = record.version.saturating_sub(1);
            if self.local.materialized().is_some_and(|m| m > before) {
                if let Err(e) = self.local.set_materialized(before) {
                    warn!("cannot move the applied watermark back: {e}");
                }
            }
        }
        self.applier_wake.notify_one();
    }

    /// Whether a file here or in the trash is indexed as holding `block` (not read).
    pub fn may_have_block(&self, block: &Digest) -> bool {
        !self.local.find_block(block).is_empty() || self.trash.find(block).is_some()
    }

    /// Empty the trash (when nothing is waiting for its blocks).
    pub fn empty_trash(&self) {
        if !self.trash.clear() {
            return;
        }
        if let Err(e) = self.folder.empty_trash() {
            warn!("cannot empty the trash in {}: {e}", self.folder.trash_dir().display());
        }
    }

    /// Read a block that some local file (or the trash) holds, checked against its hash.
    pub fn local_block(&self, block: &Digest) -> Option<Vec<u8>> {
        for (rel, index) in self.local.find_block(block) {
            if let Ok(path) = self.folder.path_of(&rel) {
                if let Ok(Some(bytes)) = Folder::read_block(&path, index, block) {
                    return Some(bytes);
                }
            }
        }
        let (file, index) = self.trash.find(block)?;
        Folder::read_block(&file, index, block).ok().flatten()
    }
}

/// A `SyncState` on a real database and a real folder in a temp dir, for unit tests
/// (node 1, "a", of cluster "cluster"; the folder's marker in place).
#[cfg(test)]
pub(crate) struct TestSync {
    pub sync: std::sync::Arc<SyncState>,
    _store: raftshare_storage::Store,
    _tmp: tempfile::TempDir,
}

#[cfg(test)]
impl TestSync {
    pub fn new() -> TestSync {
        let tmp = tempfile::tempdir().unwrap();
        let store = raftshare_storage::Store::open(&tmp.path().join("db")).unwrap();
        let folder = Folder::new(tmp.path().join("shared"));
        std::fs::create_dir_all(folder.root()).unwrap();
        let sync = std::sync::Arc::new(SyncState::new(
            1,
            "a".into(),
            "cluster".into(),
            folder,
            store.local_index(),
            store.outbox(),
            store.state_machine(),
        ));
        assert!(sync.check_marker());
        TestSync { sync, _store: store, _tmp: tmp }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_look_after_the_applier_can_be_its_echo() {
        let t = TestSync::new();
        let s = |size, mtime| Some(Stamp { size, mtime });
        t.sync.echoes.expect([("a.txt", s(3, 10)), ("b.txt", None), ("c.txt", s(1, 1))]);
        assert!(t.sync.echoes.is_echo("a.txt", s(3, 10)), "the disk shows what the applier left");
        assert!(!t.sync.echoes.is_echo("a.txt", s(3, 10)), "an echo is taken once: a later look is the scanner's");
        assert!(t.sync.echoes.is_echo("b.txt", None), "a file the applier moved away");
        assert!(!t.sync.echoes.is_echo("c.txt", s(1, 2)), "changed since the applier left it");
        assert!(!t.sync.echoes.is_echo("c.txt", s(1, 1)), "forgotten by the look that saw the change");
        assert!(!t.sync.echoes.is_echo("d.txt", None), "a path the applier did not touch");
    }

    #[test]
    fn settled_entries_are_known_until_the_applier_passes_them() {
        let t = TestSync::new();
        t.sync.settled.settle(4);
        t.sync.settled.settle(7);
        assert!(t.sync.settled.is_settled(4) && t.sync.settled.is_settled(7) && !t.sync.settled.is_settled(5));
        t.sync.settled.forget_upto(5);
        assert!(!t.sync.settled.is_settled(4), "materialised: forgotten");
        assert!(t.sync.settled.is_settled(7), "still ahead of the watermark");
        t.sync.settled.forget_upto(u64::MAX);
        assert!(!t.sync.settled.is_settled(7));
    }
}
