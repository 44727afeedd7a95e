//! The applier: brings the folder in line with the committed file table.
//!
//! For every record newer than this node's watermark: a file is assembled in a temp file
//! inside the metadata folder from blocks already on this disk or fetched from peers,
//! each block verified against the record (the writer hashed the blocks and the whole
//! file in the same read, so verified blocks are the file the record's hash names; a
//! copy of a temp or local file is hashed whole); it is fsynced and renamed over the
//! target, and the folder fsynced. A delete moves the file to the trash. A path the user
//! changed since it was last synced is never overwritten: the scanner proposes the edit
//! and the conflict rule decides.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use raftshare_raft::FileRecord;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::sync::blocks::fetch::BlockFetcher;
use crate::sync::state::SyncState;

mod decide;
mod delete;
mod fetch;
mod install;
mod plan;
mod sweep;

use decide::{decide_put, Decided, Decision};
use delete::delete_batch;
pub(crate) use fetch::finish_temp;
use fetch::{Assembled, Downloader, Prepared};
pub(crate) use install::installed_entry;
use install::{install_batch, Installing};
use plan::{all_done, batches, fetched_whole, firsts_requests, is_small, Outcome, FIRSTS_REQUESTS_IN_FLIGHT, PAGE};
use sweep::delete_forgotten;

/// Files assembled at once.
const FILES_IN_FLIGHT: usize = 32;
/// The trash and the temp folder are emptied once the applier had nothing to do for this
/// long: not between the entries of a burst (the files of a delete would be unlinked
/// while the next entry's waited, and on a machine shared with other nodes, while they
/// work), and not at once after a mass delete, which on ext4 without a journal slows
/// the next files created near them (the kernel skips recently freed inodes).
const TIDY_WHEN_IDLE: Duration = Duration::from_secs(2);
/// ...or at once after a pass, when the trash holds this many blocks.
const TRASH_KEPT_BLOCKS: usize = 16 << 10;
/// A pass that could not finish everything is retried after this long.
const RETRY: Duration = Duration::from_millis(300);

/// Materialises the file table into the folder.
pub struct Applier {
    sync: Arc<SyncState>,
    /// Brings each batch's files into temp files.
    downloads: Downloader,
}

impl Applier {
    /// An applier for `sync`'s folder, fetching with `fetcher`.
    pub fn new(sync: Arc<SyncState>, fetcher: BlockFetcher) -> Applier {
        Applier { downloads: Downloader::new(sync.clone(), fetcher), sync }
    }

    /// Apply until `shutdown`: a pass at start (changes missed while stopped), then one
    /// each time the table moves, and retries while something is left.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut applied = self.sync.sm.subscribe();
        // A complete pass did work since the last tidy: the trash or the temp folder
        // may hold files.
        let mut untidy = false;
        loop {
            let (complete, worked) = match self.sync.problem() {
                None => self.pass().await,
                Some(_) => (false, false),
            };
            untidy |= complete && worked;
            if untidy && complete && self.sync.trash.len() >= TRASH_KEPT_BLOCKS {
                self.tidy().await;
                untidy = false;
            }
            let wait = match (complete, untidy) {
                (false, _) => RETRY,
                (true, true) => TIDY_WHEN_IDLE,
                (true, false) => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = applied.changed() => if changed.is_err() { return },
                _ = self.sync.applier_wake.notified() => {}
                _ = tokio::time::sleep(wait) => if complete && untidy {
                    self.tidy().await;
                    untidy = false;
                },
            }
        }
    }

    /// Empty the trash and the temp folder, after a complete pass and before the next.
    async fn tidy(&self) {
        let sync = self.sync.clone();
        let emptied = tokio::task::spawn_blocking(move || {
            sync.empty_trash();
            // Every record is on disk: a temp file left now belongs to nothing (a download
            // whose file was deleted or replaced meanwhile).
            let _guard = sync.lock_folder();
            if let Err(e) = sync.folder.empty_tmp() {
                debug!("cannot clear the temp folder: {e}");
            }
        });
        if let Err(e) = emptied.await {
            warn!("the task emptying the trash failed: {e}");
        }
    }

    /// One pass over the records newer than the watermark: whether all are on disk, and
    /// whether there were any.
    async fn pass(&self) -> (bool, bool) {
        let Some(target) = self.sync.sm.last_applied().map(|l| l.index) else { return (true, false) };
        let after = self.sync.local.materialized();
        if after.is_some_and(|a| a >= target) {
            return (true, false);
        }
        // A page at a time: a node catching up on 100,000 files does not hold them all.
        let mut complete = true;
        let mut newest = target;
        // This node's own entries that the proposer settled are not even read.
        let settled = |version| self.sync.settled.is_settled(version);
        let mut page = self.sync.sm.changed_since_but(after, PAGE, settled);
        while let Some(last) = page.last().cloned() {
            newest = newest.max(last.version);
            let full = page.len() >= PAGE;
            complete &= self.apply_page(page).await;
            if !full {
                break;
            }
            page = self.sync.sm.changed_after_but(&last, PAGE, settled);
        }
        if complete && self.sync.sm.forgotten_upto().is_some_and(|f| after.is_none_or(|a| f > a)) {
            // Tombstones were forgotten here before this node had materialised them: a
            // node that joined from a snapshot replays the forgets of the entries made
            // before it joined. The files they deleted are in no record now.
            let sync = self.sync.clone();
            let _ = tokio::task::spawn_blocking(move || delete_forgotten(&sync)).await;
        }
        if complete {
            match self.sync.local.set_materialized(newest) {
                Ok(()) => self.sync.settled.forget_upto(newest),
                Err(e) => warn!("cannot record the applied watermark: {e}"),
            }
        }
        (complete, true)
    }

    /// Bring one page of records to disk; true if every one of them is there.
    async fn apply_page(&self, records: Vec<FileRecord>) -> bool {
        let (deletes, puts): (Vec<FileRecord>, Vec<FileRecord>) = records.into_iter().partition(|r| r.deleted);
        self.sync.stats.pending_downloads.store(puts.len() as u64, Ordering::Relaxed);

        // Puts first: a rename's new path is built from the old file's blocks before the
        // delete of the old path moves it away (a delete of an earlier page left them in
        // the trash, emptied only once a pass is complete). Each batch is fetched into
        // temp files, made durable with one sync, then installed together, while the next
        // batch is fetched.
        let mut complete = true;
        let mut installing: Option<Installing> = None;
        for batch in batches(puts) {
            let fetched = self.fetch_batch(batch).await;
            if let Some(previous) = installing.take() {
                complete &= self.installed(previous).await;
            }
            installing = Some(self.start_install(fetched));
        }
        if let Some(last) = installing {
            complete &= self.installed(last).await;
        }
        if !deletes.is_empty() {
            let sync = self.sync.clone();
            let outcomes = tokio::task::spawn_blocking(move || delete_batch(&sync, &deletes))
                .await
                .unwrap_or_else(|e| vec![Outcome::Later(format!("delete task failed: {e}"))]);
            complete &= all_done(outcomes);
        }
        complete
    }

    /// Fetch one batch into temp files: what is settled already, and what is ready to be
    /// installed.
    async fn fetch_batch(&self, batch: Vec<Vec<FileRecord>>) -> (Vec<Outcome>, Vec<Assembled>) {
        // What every record needs is decided in one blocking call (most of a burst's
        // records need one index lookup and one lstat each).
        let sync = self.sync.clone();
        let decided = tokio::task::spawn_blocking(move || {
            let decide = |record: FileRecord| {
                let decision = decide_put(&sync, &record);
                // A small file's block is looked for here only where the index has it.
                let here = matches!(decision, Decision::Replace(_))
                    && is_small(&record)
                    && record.blocks.first().is_some_and(|b| sync.may_have_block(b));
                (Decided { decision, here }, record)
            };
            batch.into_iter().map(|group| group.into_iter().map(decide).collect::<Vec<_>>()).collect::<Vec<_>>()
        })
        .await;
        let decided = match decided {
            Ok(decided) => decided,
            Err(e) => return (vec![Outcome::Later(format!("task failed: {e}"))], Vec::new()),
        };
        // Small files that only a peer has, each its own content, come many per request.
        let (mut firsts, mut others) = (Vec::new(), Vec::new());
        for group in decided {
            let whole = match group.as_slice() {
                [(Decided { decision: Decision::Replace(on_disk), here }, record)] if fetched_whole(*here, record) => {
                    Some(*on_disk)
                }
                _ => None,
            };
            match whole {
                // The group's one record.
                Some(on_disk) => firsts.extend(group.into_iter().map(|(_, record)| (on_disk, record))),
                None => others.push(group),
            }
        }
        let firsts = stream::iter(firsts_requests(firsts))
            .map(|request| self.downloads.prepare_firsts(request))
            .buffer_unordered(FIRSTS_REQUESTS_IN_FLIGHT)
            .flat_map(stream::iter)
            .collect::<Vec<Prepared>>();
        let others = stream::iter(others)
            .map(|same_content| self.downloads.prepare_all(same_content))
            .buffer_unordered(FILES_IN_FLIGHT)
            .flat_map(stream::iter)
            .collect::<Vec<Prepared>>();
        let (firsts, others) = futures::join!(firsts, others);
        let mut settled = Vec::new();
        let mut ready = Vec::new();
        for p in firsts.into_iter().chain(others) {
            match p {
                Prepared::Settled(outcome) => settled.push(outcome),
                Prepared::Ready(assembled) => ready.push(*assembled),
            }
        }
        (settled, ready)
    }

    /// Sync and install a fetched batch on a blocking thread, while the next one is
    /// fetched; [`Applier::installed`] waits for it.
    fn start_install(&self, (settled, ready): (Vec<Outcome>, Vec<Assembled>)) -> Installing {
        let sync = self.sync.clone();
        let files = ready.len();
        let task = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let installed = if ready.is_empty() { Vec::new() } else { install_batch(&sync, ready) };
            debug!(files, took = ?started.elapsed(), "installed a batch");
            if files >= crate::memory::LARGE_BURST {
                crate::memory::give_back_freed();
            }
            installed
        });
        Installing { settled, task }
    }

    /// Wait for an install; true if every record of its batch is on disk.
    async fn installed(&self, Installing { mut settled, task }: Installing) -> bool {
        match task.await {
            Ok(installed) => {
                for (assembled, outcome) in installed {
                    if matches!(outcome, Outcome::Done) {
                        self.downloads.received(&assembled);
                    }
                    settled.push(outcome);
                }
            }
            Err(e) => settled.push(Outcome::Later(format!("install task failed: {e}"))),
        }
        all_done(settled)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use raftshare_raft::{Digest, FileOp, BLOCK_SIZE};
    use raftshare_storage::LocalEntry;

    use super::delete::trash_deleted;
    use super::plan::{BATCH_BYTES, BATCH_FILES, FIRSTS_BYTES, FIRSTS_PER_REQUEST};
    use super::*;
    use crate::sync::disk;

    fn record(path: &str, content: &[u8], version: u64) -> FileRecord {
        FileRecord {
            path: path.to_string(),
            size: content.len() as u64,
            hash: Digest::of(content),
            blocks: vec![Digest::of(content)],
            mtime: 0,
            version,
            origin: 1,
            origin_name: "a".to_string(),
            modified_at_ms: 0,
            deleted: false,
        }
    }

    /// Commits `op` to `sync`'s table at `index`.
    fn apply(sync: &SyncState, index: u64, op: FileOp) {
        use openraft::storage::RaftStateMachine;
        let change = raftshare_raft::Change { origin: 2, origin_name: "b".into(), at_ms: 0, op, seqs: vec![] };
        let log_id = raftshare_raft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index);
        let entry = raftshare_raft::Entry { log_id, payload: openraft::EntryPayload::Normal(change) };
        let mut sm = sync.sm.clone();
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(sm.apply([entry])).unwrap();
    }

    /// Writes `rel` and indexes it as this node's copy of `version`.
    fn write_indexed(sync: &SyncState, rel: &str, content: &[u8], version: Option<u64>) -> LocalEntry {
        let abs = sync.folder.root().join(rel);
        fs::create_dir_all(abs.parent().unwrap()).unwrap();
        fs::write(&abs, content).unwrap();
        let stamp = disk::stamp(&abs).unwrap().unwrap();
        let hash = Digest::of(content);
        let entry = LocalEntry { size: stamp.size, mtime: stamp.mtime, hash, blocks: vec![hash], version };
        sync.local.put(rel, &entry).unwrap();
        entry
    }

    #[test]
    fn files_whose_tombstones_were_forgotten_before_this_node_applied_them_are_deleted() {
        let t = crate::sync::state::TestSync::new();
        let sync = &t.sync;
        let root = sync.folder.root().to_path_buf();
        // What this node had materialised at version 1.
        let kept = write_indexed(sync, "kept.txt", b"k", Some(1));
        write_indexed(sync, "gone.txt", b"g", Some(1));
        write_indexed(sync, "sub/old.txt", b"o", Some(1));
        write_indexed(sync, "edited.txt", b"e", Some(1));
        write_indexed(sync, "touched.txt", b"t", Some(1));
        // A file of this node's own, never committed.
        write_indexed(sync, "mine.txt", b"m", None);
        // This node's own change, committed at 9 and recorded by the proposer, not yet
        // applied here (a follower hears of the commit before applying it).
        write_indexed(sync, "new.txt", b"n", Some(9));
        // The table knows only kept.txt: the others were deleted and forgotten.
        let put = FileOp::Put {
            path: "kept.txt".into(),
            size: 1,
            hash: kept.hash,
            blocks: vec![kept.hash],
            mtime: kept.mtime,
            base: None,
        };
        apply(sync, 1, put);
        // Edited here since it was indexed; only touched (same content, a new mtime).
        fs::write(root.join("edited.txt"), b"edited here").unwrap();
        let touched = fs::File::options().write(true).open(root.join("touched.txt")).unwrap();
        touched.set_modified(std::time::SystemTime::now() + Duration::from_secs(60)).unwrap();
        drop(touched);

        // Nothing was forgotten yet: nothing is deleted.
        delete_forgotten(sync);
        assert_eq!(fs::read(root.join("gone.txt")).unwrap(), b"g");
        // Tombstones up to 5 forgotten.
        apply(sync, 6, FileOp::ForgetDeleted { upto: 5 });
        delete_forgotten(sync);

        assert!(!root.join("gone.txt").exists() && !root.join("sub").exists(), "deleted, with its emptied folder");
        assert_eq!(sync.local.get("gone.txt").unwrap(), None);
        assert_eq!(sync.local.get("sub/old.txt").unwrap(), None);
        assert_eq!(fs::read(root.join("kept.txt")).unwrap(), b"k");
        assert_eq!(sync.local.get("kept.txt").unwrap(), Some(kept));
        assert_eq!(fs::read(root.join("mine.txt")).unwrap(), b"m", "never committed: this node's own");
        assert_eq!(fs::read(root.join("edited.txt")).unwrap(), b"edited here");
        assert!(sync.rechecks.take().contains("edited.txt"), "the scanner looks at the edit");
        assert!(!root.join("touched.txt").exists(), "only touched: its content is the deleted one");
        assert_eq!(fs::read(root.join("new.txt")).unwrap(), b"n", "newer than the forget: not forgotten");
        assert!(sync.local.get("new.txt").unwrap().is_some());
        // The deleted content stays in the trash, for a move elsewhere to use.
        assert_eq!(fs::read(sync.folder.trash_dir().join(Digest::of(b"g").to_hex())).unwrap(), b"g");
    }

    #[test]
    fn a_deleted_file_only_touched_here_is_deleted_even_if_this_node_missed_its_last_version() {
        let t = crate::sync::state::TestSync::new();
        let sync = &t.sync;
        let abs = sync.folder.root().join("a.txt");
        // This node has version 1; version 2 and its delete came in one page.
        let old = write_indexed(sync, "a.txt", b"old", Some(1));
        let new = Digest::of(b"new");
        apply(
            sync,
            1,
            FileOp::Put { path: "a.txt".into(), size: 3, hash: old.hash, blocks: vec![old.hash], mtime: 0, base: None },
        );
        apply(
            sync,
            2,
            FileOp::Put { path: "a.txt".into(), size: 3, hash: new, blocks: vec![new], mtime: 0, base: Some(1) },
        );
        apply(sync, 3, FileOp::Delete { path: "a.txt".into(), base: Some(2) });
        let tombstone = sync.sm.get("a.txt").expect("a tombstone");
        assert!(tombstone.deleted);
        // Touched here: the same content as indexed, a new mtime.
        let file = fs::File::options().write(true).open(&abs).unwrap();
        file.set_modified(std::time::SystemTime::now() + Duration::from_secs(60)).unwrap();
        drop(file);
        assert!(trash_deleted(sync, &tombstone).unwrap().is_some(), "moved to the trash");
        assert!(!abs.exists());

        // An edit here is kept, and looked at again.
        write_indexed(sync, "b.txt", b"old", Some(4));
        apply(
            sync,
            4,
            FileOp::Put { path: "b.txt".into(), size: 3, hash: old.hash, blocks: vec![old.hash], mtime: 0, base: None },
        );
        apply(sync, 5, FileOp::Delete { path: "b.txt".into(), base: Some(4) });
        fs::write(sync.folder.root().join("b.txt"), b"edited").unwrap();
        assert!(matches!(trash_deleted(sync, &sync.sm.get("b.txt").unwrap()), Ok(None)));
        assert_eq!(fs::read(sync.folder.root().join("b.txt")).unwrap(), b"edited");
        assert!(sync.rechecks.take().contains("b.txt"));
    }

    #[test]
    fn batches_are_bounded_and_group_records_of_one_content() {
        let mut puts: Vec<FileRecord> =
            (0..BATCH_FILES as u64 + 10).map(|i| record(&format!("f{i}"), &i.to_le_bytes(), i + 1)).collect();
        // Same content under three names: one group, fetched once, in the table's order.
        puts.insert(3, record("copy-1", &0u64.to_le_bytes(), 900));
        puts.insert(7, record("copy-2", &0u64.to_le_bytes(), 901));
        let batches = batches(puts);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].iter().map(Vec::len).sum::<usize>(), BATCH_FILES);
        assert_eq!(batches[1].iter().map(Vec::len).sum::<usize>(), 12);
        let names: Vec<&str> = batches[0][0].iter().map(|r| r.path.as_str()).collect();
        assert_eq!(names, ["f0", "copy-1", "copy-2"]);
        assert!(batches[0][1..].iter().all(|g| g.len() == 1));

        // A content met again in a later batch joins its group in the first: each of
        // its temp files is written once in the page.
        let mut puts: Vec<FileRecord> =
            (0..BATCH_FILES as u64 + 10).map(|i| record(&format!("f{i}"), &i.to_le_bytes(), i + 1)).collect();
        puts.push(record("late-copy", &5u64.to_le_bytes(), 950));
        let batches = super::batches(puts);
        assert_eq!(batches.len(), 2);
        let names: Vec<&str> = batches[0][5].iter().map(|r| r.path.as_str()).collect();
        assert_eq!(names, ["f5", "late-copy"]);
        assert!(batches[1].iter().flatten().all(|r| r.path != "late-copy"));

        // A batch is closed once it holds BATCH_BYTES.
        let big = |path: &str, n: u8| FileRecord { size: BATCH_BYTES / 2 + 1, ..record(path, &[n], 1) };
        let batches = super::batches(vec![big("a", 1), big("b", 2), big("c", 3)]);
        assert_eq!(batches.iter().map(|b| b.len()).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn small_files_are_asked_for_by_origin_in_bounded_requests() {
        let of = |origin: u64, n: usize, size: u64| {
            (0..n).map(move |i| ((), FileRecord { origin, size, ..record(&format!("{origin}-{size}-{i}"), &[1], 1) }))
        };
        // Origin 2's files interleaved with origin 1's; 1 has more than one request holds.
        let mut files: Vec<((), FileRecord)> = of(1, FIRSTS_PER_REQUEST + 5, 10).collect();
        files.splice(3..3, of(2, 3, 10));
        // Origin 3's big small files fill a request by bytes first.
        let per_request = (FIRSTS_BYTES / BLOCK_SIZE) as usize;
        files.extend(of(3, per_request + 1, BLOCK_SIZE));
        let requests = firsts_requests(files);
        let shape: Vec<(u64, usize)> = requests.iter().map(|r| (r[0].1.origin, r.len())).collect();
        assert_eq!(shape, [(1, FIRSTS_PER_REQUEST), (1, 5), (2, 3), (3, per_request), (3, 1)]);
        for request in &requests {
            assert!(request.iter().all(|(_, r)| r.origin == request[0].1.origin), "one origin per request");
            assert!(request.iter().map(|(_, r)| r.size).sum::<u64>() <= FIRSTS_BYTES);
        }
        // The table's order within an origin.
        assert_eq!(
            requests[0][..3].iter().map(|(_, r)| r.path.as_str()).collect::<Vec<_>>(),
            ["1-10-0", "1-10-1", "1-10-2"]
        );
    }

    #[test]
    fn a_path_with_a_local_change_waiting_is_left_alone_and_done_only_for_this_nodes_own_record() {
        let t = crate::sync::state::TestSync::new();
        let sync = &t.sync;
        fs::write(sync.folder.root().join("a.txt"), b"newer here").unwrap();
        sync.outbox.enqueue(FileOp::Delete { path: "a.txt".into(), base: None }).unwrap();
        let own = record("a.txt", b"mine", 3);
        let theirs = FileRecord { origin: 2, origin_name: "b".into(), ..record("a.txt", b"theirs", 4) };
        assert!(matches!(decide_put(sync, &own), Decision::Done), "the proposer records what became of it");
        assert!(matches!(decide_put(sync, &theirs), Decision::Later(_)), "the local change is committed first");
        let (own_gone, theirs_gone) = (FileRecord { deleted: true, ..own }, FileRecord { deleted: true, ..theirs });
        assert!(matches!(trash_deleted(sync, &own_gone), Ok(None)));
        assert!(trash_deleted(sync, &theirs_gone).is_err());
        assert_eq!(fs::read(sync.folder.root().join("a.txt")).unwrap(), b"newer here", "the local file is untouched");
    }
}
