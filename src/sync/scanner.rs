//! The scanner: compares the shared folder with the local index and queues what the
//! user changed in the durable outbox. It decides nothing about other nodes' changes.
//!
//! Unchanged files (same size and mtime as indexed) are never re-hashed; a file whose
//! content matches what is indexed or committed only gets its stamp refreshed (that is
//! how the applier's own writes are told from the user's: the echo is ignored).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftshare_raft::admin::EventKind;
use raftshare_raft::FileOp;
use raftshare_storage::table::validate_path;
use raftshare_storage::{LocalEntry, PendingOp};
use tracing::{debug, warn};

use crate::sync::disk::{self, Content, Stamp};
use crate::sync::state::SyncState;

/// Changes found in one look are queued this many at a time (the proposer's entry size).
const QUEUE_EVERY: usize = crate::sync::OPS_PER_ENTRY;

/// A look that found more changes than this many waiting in the outbox waits for the
/// proposer before queueing more: a folder of 100,000 new files is not held in the outbox
/// (and in memory) whole while the cluster commits it 2,000 at a time.
const OUTBOX_AHEAD: usize = 3 * QUEUE_EVERY;

/// How long a look waits for the proposer to take changes off the outbox; after that
/// (no quorum, say) it queues the rest without waiting: they are safer in the outbox
/// than only on disk.
const OUTBOX_PATIENCE: Duration = Duration::from_secs(2);

/// Looks at the folder on behalf of one node.
pub struct Scanner {
    sync: Arc<SyncState>,
    /// See `OUTBOX_AHEAD` and `OUTBOX_PATIENCE`.
    ahead: usize,
    patience: Duration,
    /// This look stopped waiting for the proposer (it took nothing for `OUTBOX_PATIENCE`).
    impatient: AtomicBool,
}

impl Scanner {
    /// A scanner over `sync`'s folder and indexes.
    pub fn new(sync: Arc<SyncState>) -> Scanner {
        Scanner { sync, ahead: OUTBOX_AHEAD, patience: OUTBOX_PATIENCE, impatient: AtomicBool::new(false) }
    }

    /// Compare the whole folder with the index (at start, and when events were lost).
    /// Returns how many changes were queued.
    pub fn scan_all(&self) -> usize {
        if !self.sync.check_marker() {
            return 0;
        }
        self.impatient.store(false, Ordering::Relaxed);
        let started = std::time::Instant::now();
        self.sync.reload_rules();
        let root = self.sync.folder.root().to_path_buf();
        let mut ops = Vec::new();
        let (files, mut queued) = self.check_tree("", &root, &mut ops);
        queued += self.queue(ops);
        let took_ms = started.elapsed().as_millis() as u64;
        debug!(files, changes = queued, took_ms, "looked at the whole folder");
        self.sync.events.push(EventKind::Scanned { files: files as u64, changes: queued as u64, took_ms });
        queued
    }

    /// Look at every file at or under the folder `rel` (`""`: the whole folder, at
    /// `abs`), and at what this node knew there that is gone. Returns how many files are
    /// there, and how many changes were queued already (a big folder's, as it goes).
    /// What was known is listed first; the files are looked at as the walk finds them,
    /// never all held (a moved-in folder of 100,000 files was, twice).
    fn check_tree(&self, rel: &str, abs: &std::path::Path, ops: &mut Vec<FileOp>) -> (usize, usize) {
        let mut gone = self.known_under(rel);
        let (mut files, mut queued) = (0, 0);
        let unreadable = self.sync.walk_each(abs, |p, stamp| {
            files += 1;
            gone.remove(&p);
            self.check(&p, Some(stamp), ops);
            queued += self.spill(ops);
        });
        for p in gone {
            // Not seen because it could not be read, or because it is ignored now: not
            // known to be deleted (an ignored path is never proposed, deleted included).
            if unreadable.covers(&p) || self.sync.is_ignored(&p, false) {
                continue;
            }
            self.check(&p, None, ops);
            queued += self.spill(ops);
        }
        self.sync.unreadable.looked_at(rel, unreadable);
        (files, queued)
    }

    /// Queue what was found so far once it makes a log entry's worth: a big folder's
    /// first changes commit while the rest is still being hashed, and a burst is never
    /// held in memory whole.
    fn spill(&self, ops: &mut Vec<FileOp>) -> usize {
        if ops.len() < QUEUE_EVERY {
            return 0;
        }
        let queued = self.queue(std::mem::take(ops));
        if !self.impatient.load(Ordering::Relaxed)
            && !self.sync.outbox_signals.wait_until_at_most(&self.sync.outbox, self.ahead, self.patience)
        {
            debug!("the outbox is not being committed: queueing the rest of this look without waiting");
            self.impatient.store(true, Ordering::Relaxed);
        }
        queued
    }

    /// Look at paths the watcher reported (files or folders, absolute).
    pub fn scan_paths(&self, paths: &BTreeSet<PathBuf>) -> usize {
        if !self.sync.check_marker() {
            return 0;
        }
        self.impatient.store(false, Ordering::Relaxed);
        let root = self.sync.folder.root().to_path_buf();
        let mut rels: BTreeSet<String> = self.sync.rechecks.take();
        for path in paths {
            if let Some(rel) = disk::relative(&root, path) {
                if rel == disk::IGNORE_FILE {
                    self.sync.reload_rules();
                    // A rule taken out uncovers files no event will name: look at all.
                    self.sync.rescan.notify_one();
                }
                rels.insert(rel);
            }
        }
        let mut ops = Vec::new();
        let mut queued = 0;
        for rel in rels {
            queued += self.check_path(&rel, &mut ops);
            queued += self.spill(&mut ops);
        }
        queued + self.queue(ops)
    }

    /// Look again at the paths set aside (files that were still being written).
    pub fn scan_rechecks(&self) -> usize {
        self.scan_paths(&BTreeSet::new())
    }

    fn queue(&self, mut ops: Vec<FileOp>) -> usize {
        // The same change seen twice (a full scan and an event, say) is queued once:
        // re-queueing would give it a new seq and have it proposed a second time. Under the
        // folder lock, so the proposer cannot record and acknowledge the pending copy
        // between this look and the enqueue (the content would be proposed twice, and a
        // conflict kept twice).
        // Also, the applier may have written the path since `check` looked (it installs
        // under the same lock): an op that no longer describes the disk is dropped and the
        // path looked at again, or this node would propose the old content as its own edit.
        let guard = self.sync.lock_folder();
        // The folder may have been unmounted since the look began: its files would all
        // look deleted. Deletes go out only while the marker is still there.
        if ops.iter().any(|op| matches!(op, FileOp::Delete { .. })) && !self.sync.folder.has_marker() {
            warn!("the shared folder lost its marker during a look: its deletes are not proposed");
            ops.retain(|op| !matches!(op, FileOp::Delete { .. }));
        }
        ops.retain(|op| {
            !self.already_pending(op) && !self.already_indexed(op) && self.still_on_disk(op) && self.still_known(op)
        });
        let n = ops.len();
        if n == 0 {
            return 0;
        }
        for op in &ops {
            if let FileOp::Put { path, .. } | FileOp::Delete { path, .. } = op {
                let deleted = matches!(op, FileOp::Delete { .. });
                self.sync.events.push(EventKind::LocalChange { path: path.clone(), deleted });
            }
        }
        let queued = self.sync.outbox.enqueue_many_unsynced(ops);
        // The fsync without the lock: the proposer recording a commit and the applier
        // installing files need not wait for it.
        drop(guard);
        match queued.and_then(|_| self.sync.outbox.sync()) {
            Ok(()) => self.sync.outbox_signals.ready.notify_one(),
            Err(e) => warn!("cannot queue {n} local changes: {e}"),
        }
        n
    }

    /// Whether the folder still shows what `op` says: the file as hashed, or no file.
    fn still_on_disk(&self, op: &FileOp) -> bool {
        let (path, want) = match op {
            FileOp::Put { path, size, mtime, .. } => (path, Some(Stamp { size: *size, mtime: *mtime })),
            FileOp::Delete { path, .. } => (path, None),
            FileOp::Batch(_) | FileOp::ForgetDeleted { .. } | FileOp::RotateKey(_) => return true,
        };
        let Ok(abs) = self.sync.folder.path_of(path) else { return false };
        // A stat that fails is no proof of anything: above all not of a delete.
        let Ok(now) = disk::stamp(&abs) else {
            self.sync.rechecks.ask(path);
            return false;
        };
        if now != want {
            self.sync.rechecks.ask(path);
        }
        now == want
    }

    /// Whether a delete is still this node's to propose: the path is still indexed or
    /// has a put waiting (the applier, removing a file for another node's delete, also
    /// forgets it).
    fn still_known(&self, op: &FileOp) -> bool {
        let FileOp::Delete { path, .. } = op else { return true };
        matches!(self.sync.local.get(path), Ok(Some(_))) || self.pending_put(path)
    }

    /// A put of the content the local index already holds for its path: committed (or
    /// kept as a conflict copy) since the scanner looked. Not if another change of the
    /// path waits (an edit reverted, a delete undone): this put must replace it.
    fn already_indexed(&self, op: &FileOp) -> bool {
        let FileOp::Put { path, hash, .. } = op else { return false };
        match self.sync.outbox.get(path) {
            Ok(None) => {}
            Ok(Some(PendingOp { op: FileOp::Put { hash: waiting, .. }, .. })) if waiting == *hash => {}
            _ => return false,
        }
        matches!(self.sync.local.get(path), Ok(Some(entry)) if entry.hash == *hash)
    }

    /// Whether the change of `rel` waiting in the outbox (if any) no longer describes the
    /// file at `stamp`: a delete of a file that is back, or a put of other content.
    fn pending_outdated(&self, rel: &str, stamp: &Stamp) -> bool {
        // `get` looks in the outbox's in-memory path index first: a path with nothing
        // waiting costs no database read.
        match self.sync.outbox.get(rel) {
            Ok(Some(PendingOp { op: FileOp::Put { size, mtime, .. }, .. })) => {
                size != stamp.size || mtime != stamp.mtime
            }
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(e) => {
                warn!(path = rel, "{e}");
                false
            }
        }
    }

    fn already_pending(&self, op: &FileOp) -> bool {
        let path = match op {
            FileOp::Put { path, .. } | FileOp::Delete { path, .. } => path,
            FileOp::Batch(_) | FileOp::ForgetDeleted { .. } | FileOp::RotateKey(_) => return false,
        };
        let Ok(Some(pending)) = self.sync.outbox.get(path) else { return false };
        match (&pending.op, op) {
            (FileOp::Put { hash: a, mtime: ma, .. }, FileOp::Put { hash: b, mtime: mb, .. }) => a == b && ma == mb,
            (FileOp::Delete { .. }, FileOp::Delete { .. }) => true,
            _ => false,
        }
    }

    /// A reported path: a file, a folder (look at everything in and under it), or gone.
    /// Returns how many changes it queued already (a big folder's, as it goes).
    fn check_path(&self, rel: &str, ops: &mut Vec<FileOp>) -> usize {
        let abs = match self.sync.folder.path_of(rel) {
            Ok(abs) => abs,
            Err(e) => {
                debug!(path = rel, "not synced: {e}");
                return 0;
            }
        };
        // One lstat: whether it is a folder, and a file's stamp.
        let meta = match disk::lstat(&abs) {
            Ok(meta) => meta,
            Err(e) => {
                self.sync.unreadable.add(rel, e);
                return 0;
            }
        };
        let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
        if self.sync.is_ignored(rel, is_dir) {
            return 0;
        }
        if !is_dir && self.sync.unreadable.covers(rel) {
            // Readable again: a folder's look (below) says so for the folder's paths.
            self.sync.unreadable.looked_at(rel, Default::default());
        }
        if is_dir {
            return self.check_tree(rel, &abs, ops).1;
        }
        let stamp = meta.as_ref().and_then(disk::file_stamp);
        if self.sync.echoes.is_echo(rel, stamp) {
            // The applier's own rename, indexed as the disk shows it.
            return 0;
        }
        let was_file = self.check(rel, stamp, ops);
        // A removed folder (or one replaced by a file: a folder moved away reports no
        // event for what was in it): everything that was under it is gone too. A path
        // this node had as a file, with no change of it waiting, was no folder: nothing
        // can be indexed or queued under it (two reads fewer for each file of a mass
        // delete).
        if !was_file || self.sync.outbox.contains(rel) {
            for p in self.known_under(rel) {
                if p != rel && !self.sync.is_ignored(&p, false) {
                    let Ok(abs) = self.sync.folder.path_of(&p) else { continue };
                    match disk::stamp(&abs) {
                        Ok(stamp) => {
                            self.check(&p, stamp, ops);
                        }
                        Err(e) => self.sync.unreadable.add(&p, e),
                    }
                }
            }
        }
        0
    }

    /// The paths at or under `dir` (`""`: all) that this node has synced or has queued a
    /// change of.
    fn known_under(&self, dir: &str) -> BTreeSet<String> {
        let queued = self.sync.outbox.paths_under(dir);
        self.sync.local.paths_under(dir).into_iter().chain(queued).collect()
    }

    /// Whether a put of `rel` waits in the outbox.
    fn pending_put(&self, rel: &str) -> bool {
        matches!(self.sync.outbox.get(rel), Ok(Some(PendingOp { op: FileOp::Put { .. }, .. })))
    }

    /// Decide whether `rel`, now at `stamp` (None: no regular file there), changed.
    /// Returns whether the local index holds `rel` (as a file: only files are indexed).
    fn check(&self, rel: &str, stamp: Option<Stamp>, ops: &mut Vec<FileOp>) -> bool {
        if let Err(e) = validate_path(rel) {
            debug!(path = rel, "not synced: {e}");
            return false;
        }
        let entry = match self.sync.local.get(rel) {
            Ok(entry) => entry,
            Err(e) => {
                warn!(path = rel, "{e}");
                None
            }
        };
        let indexed = entry.is_some();
        self.decide(rel, stamp, entry, ops);
        indexed
    }

    /// `check` once `rel`'s local entry is read.
    fn decide(&self, rel: &str, stamp: Option<Stamp>, entry: Option<LocalEntry>, ops: &mut Vec<FileOp>) {
        let Some(stamp) = stamp else {
            // Gone: a delete if this node had the file, or if a put of it still waits to
            // commit (made and removed before it committed: the put, if it commits after
            // all, must not outlive the file). `queue` checks again under the folder lock,
            // once for all the ops of a look: still gone, and not removed by the applier.
            if entry.is_some() || self.pending_put(rel) {
                debug!(path = rel, "deleted locally");
                ops.push(FileOp::Delete { path: rel.to_string(), base: None });
            }
            return;
        };
        // A change still waiting that the disk no longer shows (an edit reverted, a
        // delete undone) is replaced by what the disk holds, even if that is what was
        // synced last.
        let outdated = self.pending_outdated(rel, &stamp);
        if !outdated && entry.as_ref().is_some_and(|e| e.size == stamp.size && e.mtime == stamp.mtime) {
            return;
        }
        let Ok(abs) = self.sync.folder.path_of(rel) else { return };
        let content = match disk::hash_file(&abs) {
            Ok(Some(content)) => content,
            Ok(None) => {
                // Still being written (or gone meanwhile): look again soon.
                self.sync.rechecks.ask(rel);
                return;
            }
            Err(e) => {
                warn!(path = rel, "cannot read: {e}");
                return;
            }
        };
        // Content this node already knows (indexed here, or committed): only its stamp is
        // recorded, under the folder lock (the applier writes the index under it too).
        // New content is a put, which `queue` checks under the lock once for the look's
        // ops: still on disk as hashed, and not installed by the applier meanwhile.
        let record = self.sync.sm.get(rel).filter(|r| !r.deleted && r.hash == content.hash);
        if !outdated && (entry.as_ref().is_some_and(|e| e.hash == content.hash) || record.is_some()) {
            let _guard = self.sync.lock_folder();
            if disk::stamp(&abs).ok().flatten() != Some(content.stamp) {
                self.sync.rechecks.ask(rel);
                return;
            }
            let now = self.sync.local.get(rel).ok().flatten();
            if now != entry {
                // The applier changed this path meanwhile: decide again from scratch.
                self.sync.rechecks.ask(rel);
                return;
            }
            if let Some(entry) = &entry {
                if entry.hash == content.hash {
                    self.refresh(rel, &content, entry.version);
                    return;
                }
            }
            if let Some(record) = record {
                // Already committed with this content (the applier's write, or the same
                // file made here and elsewhere): nothing to propose.
                self.refresh(rel, &content, Some(record.version));
                return;
            }
        }
        debug!(path = rel, size = content.stamp.size, "changed locally");
        ops.push(FileOp::Put {
            path: rel.to_string(),
            size: content.stamp.size,
            hash: content.hash,
            blocks: content.blocks,
            mtime: content.stamp.mtime,
            base: None,
        });
    }

    fn refresh(&self, rel: &str, content: &Content, version: Option<u64>) {
        let entry = LocalEntry {
            size: content.stamp.size,
            mtime: content.stamp.mtime,
            hash: content.hash,
            blocks: content.blocks.clone(),
            version,
        };
        if let Err(e) = self.sync.local.put(rel, &entry) {
            warn!(path = rel, "{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    //! The windows between the scanner's look at a path and its enqueue, against a real
    //! database and folder: what the applier or the proposer does in between must not
    //! turn into a stale change of this node.

    use std::fs;

    use super::*;
    use crate::sync::state::TestSync;
    use raftshare_raft::Digest;

    struct Setup {
        sync: Arc<SyncState>,
        scanner: Scanner,
        _test: TestSync,
    }

    fn setup() -> Setup {
        let test = TestSync::new();
        let sync = test.sync.clone();
        let scanner = Scanner::new(sync.clone());
        Setup { sync, scanner, _test: test }
    }

    fn write(sync: &SyncState, rel: &str, bytes: &[u8]) {
        fs::write(sync.folder.root().join(rel), bytes).unwrap();
    }

    /// What `check` decides for `rel` now.
    fn look(s: &Setup, rel: &str) -> Vec<FileOp> {
        let stamp = disk::stamp(&s.sync.folder.root().join(rel)).unwrap();
        let mut ops = vec![];
        s.scanner.check(rel, stamp, &mut ops);
        ops
    }

    /// `n` small files in a new folder `dir`, and a scanner that lets `QUEUE_EVERY` changes
    /// wait in the outbox and waits `patience` for the proposer.
    fn big_folder(s: &Setup, dir: &str, n: usize, patience: Duration) -> Arc<Scanner> {
        fs::create_dir(s.sync.folder.root().join(dir)).unwrap();
        for i in 0..n {
            write(&s.sync, &format!("{dir}/f{i}"), format!("{i}").as_bytes());
        }
        Arc::new(Scanner { ahead: QUEUE_EVERY, patience, ..Scanner::new(s.sync.clone()) })
    }

    #[test]
    fn a_big_look_waits_for_the_proposer_once_the_outbox_is_ahead() {
        let s = setup();
        let n = 2 * QUEUE_EVERY + 10;
        let scanner = big_folder(&s, "many", n, Duration::from_secs(120));
        let dir = s.sync.folder.root().join("many");
        let looking = std::thread::spawn({
            let scanner = scanner.clone();
            move || scanner.scan_paths(&BTreeSet::from([dir]))
        });
        // Two lots queued, the second put the outbox over `ahead`: the look waits.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while s.sync.outbox.len() < 2 * QUEUE_EVERY {
            assert!(std::time::Instant::now() < deadline, "the scanner queued only {}", s.sync.outbox.len());
            std::thread::yield_now();
        }
        assert!(!looking.is_finished(), "the look went on without the proposer");
        assert_eq!(s.sync.outbox.len(), 2 * QUEUE_EVERY);
        // The proposer takes them off (committed): the look queues the rest.
        let pending = s.sync.outbox.pending(n);
        let acks: Vec<(&str, u64)> = pending.iter().map(|p| (p.path(), p.seq)).collect();
        s.sync.outbox.ack_many(&acks).unwrap();
        s.sync.outbox_signals.drained();
        assert_eq!(looking.join().unwrap(), n);
        assert_eq!(s.sync.outbox.len(), 10);
    }

    #[test]
    fn a_look_stops_waiting_for_a_proposer_that_takes_nothing() {
        let s = setup();
        let n = 3 * QUEUE_EVERY + 10;
        let scanner = big_folder(&s, "many", n, Duration::from_millis(50));
        // No proposer (no quorum): every change still reaches the outbox.
        assert_eq!(scanner.scan_paths(&BTreeSet::from([s.sync.folder.root().join("many")])), n);
        assert_eq!(s.sync.outbox.len(), n);
    }

    #[test]
    fn a_change_is_queued_when_the_disk_still_shows_it() {
        let s = setup();
        write(&s.sync, "a.txt", b"mine");
        let ops = look(&s, "a.txt");
        assert_eq!(ops.len(), 1);
        assert_eq!(s.scanner.queue(ops), 1);
        assert!(s.sync.has_pending("a.txt"));
    }

    #[test]
    fn a_put_is_dropped_if_the_applier_replaced_the_file_since_the_look() {
        let s = setup();
        write(&s.sync, "a.txt", b"mine, older");
        let ops = look(&s, "a.txt");
        // The applier installs another node's newer version before the enqueue.
        write(&s.sync, "a.txt", b"theirs, a different size");
        assert_eq!(s.scanner.queue(ops), 0, "the old content must not be proposed as this node's edit");
        assert!(!s.sync.has_pending("a.txt"));
        assert!(s.sync.rechecks.take().contains("a.txt"), "the path is looked at again");
    }

    #[test]
    fn a_delete_is_dropped_if_the_file_came_back_since_the_look() {
        let s = setup();
        write(&s.sync, "a.txt", b"x");
        let put = look(&s, "a.txt");
        s.scanner.queue(put);
        fs::remove_file(s.sync.folder.root().join("a.txt")).unwrap();
        let delete = look(&s, "a.txt");
        assert!(matches!(delete.as_slice(), [FileOp::Delete { .. }]), "{delete:?}");
        write(&s.sync, "a.txt", b"back again");
        assert_eq!(s.scanner.queue(delete), 0);
        assert!(s.sync.rechecks.take().contains("a.txt"));
    }

    #[test]
    fn a_delete_is_dropped_if_the_applier_removed_the_file_since_the_look() {
        let s = setup();
        write(&s.sync, "a.txt", b"x");
        let content = disk::hash_file(&s.sync.folder.root().join("a.txt")).unwrap().unwrap();
        let entry = LocalEntry {
            size: content.stamp.size,
            mtime: content.stamp.mtime,
            hash: content.hash,
            blocks: content.blocks,
            version: Some(3),
        };
        s.sync.local.put("a.txt", &entry).unwrap();
        fs::remove_file(s.sync.folder.root().join("a.txt")).unwrap();
        let delete = look(&s, "a.txt");
        assert!(matches!(delete.as_slice(), [FileOp::Delete { .. }]), "{delete:?}");
        // Meanwhile the applier carried out another node's delete: file gone, path forgotten.
        s.sync.local.remove("a.txt").unwrap();
        assert_eq!(s.scanner.queue(delete), 0, "not this node's delete to propose");
        assert!(s.sync.outbox.is_empty());
    }

    #[test]
    fn a_put_is_dropped_if_the_proposer_committed_that_content_since_the_look() {
        let s = setup();
        write(&s.sync, "a.txt", b"mine");
        let first = look(&s, "a.txt");
        s.scanner.queue(first.clone());
        // The same content seen again (an event and a recheck) while the first commits:
        // the proposer records it in the local index and acknowledges the outbox entry.
        let again = look(&s, "a.txt");
        let FileOp::Put { size, hash, blocks, mtime, .. } = &first[0] else { panic!() };
        let entry = LocalEntry { size: *size, mtime: *mtime, hash: *hash, blocks: blocks.clone(), version: Some(5) };
        s.sync.local.put("a.txt", &entry).unwrap();
        let seq = s.sync.outbox.get("a.txt").unwrap().unwrap().seq;
        assert!(s.sync.outbox.ack("a.txt", seq).unwrap());
        assert_eq!(s.scanner.queue(again), 0, "proposed once, not twice");
    }

    #[test]
    fn a_gone_file_whose_folder_change_waits_still_has_the_paths_under_it_looked_at() {
        let s = setup();
        let file = |content: &[u8]| LocalEntry {
            size: content.len() as u64,
            mtime: 1,
            hash: raftshare_raft::Digest::of(content),
            blocks: vec![raftshare_raft::Digest::of(content)],
            version: Some(1),
        };
        // `a` was a file, then became a folder: `a/x` committed, the delete of `a` waits.
        s.sync.local.put("a", &file(b"a")).unwrap();
        s.sync.local.put("a/x", &file(b"x")).unwrap();
        s.sync.outbox.enqueue(FileOp::Delete { path: "a".into(), base: None }).unwrap();
        // A plain file, gone.
        s.sync.local.put("b", &file(b"b")).unwrap();
        // The folder `a` is moved away whole (one event, none for what was in it).
        let paths = BTreeSet::from([s.sync.folder.root().join("a"), s.sync.folder.root().join("b")]);
        assert_eq!(s.scanner.scan_paths(&paths), 2, "a/x and b");
        for path in ["a/x", "b"] {
            let pending = s.sync.outbox.get(path).unwrap().unwrap();
            assert!(matches!(pending.op, FileOp::Delete { .. }), "{path}: {pending:?}");
        }
    }

    #[test]
    fn a_file_made_and_removed_before_its_put_commits_is_queued_as_a_delete() {
        let s = setup();
        fs::create_dir_all(s.sync.folder.root().join("sub")).unwrap();
        write(&s.sync, "sub/new.txt", b"never committed");
        write(&s.sync, "top.txt", b"never committed either");
        assert_eq!(s.scanner.scan_all(), 2);
        fs::remove_dir_all(s.sync.folder.root().join("sub")).unwrap();
        fs::remove_file(s.sync.folder.root().join("top.txt")).unwrap();
        // A removed folder (as the watcher reports it) and a full scan both see it.
        let paths = BTreeSet::from([s.sync.folder.root().join("sub")]);
        assert_eq!(s.scanner.scan_paths(&paths), 1);
        assert_eq!(s.scanner.scan_all(), 1);
        for path in ["sub/new.txt", "top.txt"] {
            let pending = s.sync.outbox.get(path).unwrap().unwrap();
            assert!(matches!(pending.op, FileOp::Delete { .. }), "{path}: {pending:?}");
        }
    }

    /// Indexes `rel` as on disk now, as this node's copy of `version`.
    fn index_now(s: &Setup, rel: &str, version: u64) -> LocalEntry {
        let c = disk::hash_file(&s.sync.folder.root().join(rel)).unwrap().unwrap();
        let entry = LocalEntry {
            size: c.stamp.size,
            mtime: c.stamp.mtime,
            hash: c.hash,
            blocks: c.blocks,
            version: Some(version),
        };
        s.sync.local.put(rel, &entry).unwrap();
        entry
    }

    fn set_mtime(s: &Setup, rel: &str, nanos: i64) {
        let file = fs::File::options().write(true).open(s.sync.folder.root().join(rel)).unwrap();
        file.set_modified(std::time::UNIX_EPOCH + Duration::from_nanos(nanos as u64)).unwrap();
    }

    fn reported(s: &Setup, rel: &str) -> BTreeSet<PathBuf> {
        BTreeSet::from([s.sync.folder.root().join(rel)])
    }

    fn pending(s: &Setup, rel: &str) -> Option<FileOp> {
        s.sync.outbox.get(rel).unwrap().map(|p| p.op)
    }

    #[test]
    fn an_edit_reverted_before_it_committed_is_proposed_as_reverted() {
        let s = setup();
        write(&s.sync, "a.txt", b"AAAA");
        let synced = index_now(&s, "a.txt", 1);
        write(&s.sync, "a.txt", b"BBBBBB");
        s.scanner.scan_paths(&reported(&s, "a.txt"));
        assert!(matches!(pending(&s, "a.txt"), Some(FileOp::Put { hash, .. }) if hash == Digest::of(b"BBBBBB")));
        // Back to what was synced, down to its mtime (a backup copied back with `cp -p`).
        write(&s.sync, "a.txt", b"AAAA");
        set_mtime(&s, "a.txt", synced.mtime);
        s.scanner.scan_paths(&reported(&s, "a.txt"));
        let Some(FileOp::Put { hash, .. }) = pending(&s, "a.txt") else { panic!("{:?}", pending(&s, "a.txt")) };
        assert_eq!(hash, Digest::of(b"AAAA"), "the revert replaces the waiting edit");
    }

    #[test]
    fn a_delete_undone_before_it_committed_is_replaced_by_the_file() {
        let s = setup();
        write(&s.sync, "a.txt", b"AAAA");
        index_now(&s, "a.txt", 1);
        let aside = s.sync.folder.meta_dir().join("aside");
        fs::rename(s.sync.folder.root().join("a.txt"), &aside).unwrap();
        s.scanner.scan_paths(&reported(&s, "a.txt"));
        assert!(matches!(pending(&s, "a.txt"), Some(FileOp::Delete { .. })));
        // Undone: the same file (same mtime) is back.
        fs::rename(&aside, s.sync.folder.root().join("a.txt")).unwrap();
        s.scanner.scan_paths(&reported(&s, "a.txt"));
        let Some(FileOp::Put { hash, .. }) = pending(&s, "a.txt") else { panic!("{:?}", pending(&s, "a.txt")) };
        assert_eq!(hash, Digest::of(b"AAAA"));
    }

    #[test]
    fn a_folder_replaced_by_a_file_takes_its_files_with_it() {
        let s = setup();
        fs::create_dir(s.sync.folder.root().join("a")).unwrap();
        write(&s.sync, "a/x", b"x");
        index_now(&s, "a/x", 1);
        fs::rename(s.sync.folder.root().join("a"), s.sync.folder.meta_dir().join("aside")).unwrap();
        write(&s.sync, "a", b"now a file");
        // Moving a folder away reports no event for what was in it: only `a` is named.
        s.scanner.scan_paths(&reported(&s, "a"));
        assert!(matches!(pending(&s, "a/x"), Some(FileOp::Delete { .. })), "{:?}", pending(&s, "a/x"));
        assert!(matches!(pending(&s, "a"), Some(FileOp::Put { .. })));
    }

    #[test]
    fn a_rule_taken_out_of_the_ignore_file_has_the_whole_folder_looked_at() {
        use futures::FutureExt;
        let s = setup();
        write(&s.sync, disk::IGNORE_FILE, b"*.log\n");
        write(&s.sync, "x.log", b"log");
        s.scanner.scan_paths(&reported(&s, disk::IGNORE_FILE));
        s.sync.rescan.notified().now_or_never().expect("a full look asked for");
        s.scanner.scan_all();
        assert!(!s.sync.outbox.contains("x.log"));
        write(&s.sync, disk::IGNORE_FILE, b"\n");
        s.scanner.scan_paths(&reported(&s, disk::IGNORE_FILE));
        // What the node's scan loop does when asked.
        s.sync.rescan.notified().now_or_never().expect("a full look asked for");
        s.scanner.scan_all();
        assert!(s.sync.outbox.contains("x.log"), "no longer ignored: proposed");
    }
}
