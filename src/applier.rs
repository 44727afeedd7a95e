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

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures::stream::{self, StreamExt, TryStreamExt};
use raftshare_raft::admin::{EventKind, Transfer};
use raftshare_raft::{FileRecord, BLOCK_SIZE};
use raftshare_storage::LocalEntry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::folder;
use crate::proposer::now_ms;
use crate::scan::{self, Stamp};
use crate::sync::SyncState;
use crate::transfer::{block_len, BlockFetcher};

/// Files assembled at once.
const FILES_IN_FLIGHT: usize = 32;
/// Blocks of one file fetched at once.
const BLOCKS_IN_FLIGHT: usize = 8;
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

/// What became of one record.
enum Outcome {
    /// On disk as committed (or nothing to do).
    Done,
    /// Not now (a local edit, a file being written, no peer had a block): retry later.
    Later(String),
}

/// Records read from the table at once by a pass.
const PAGE: usize = 8192;

/// Files made durable and installed together (one sync for the batch)...
const BATCH_FILES: usize = 512;
/// ...or closed once it holds this many bytes (big files are installed as they come).
const BATCH_BYTES: u64 = 256 << 20;

/// A download assembled in its temp file and checked, not yet durable nor installed.
struct Assembled {
    record: FileRecord,
    temp: PathBuf,
    /// What the target held when the download was decided (None: nothing).
    on_disk: Option<Stamp>,
    /// Bytes that came over the network.
    fetched: u64,
    /// The temp file's stamp once written, when known (the rename into place keeps it).
    stamp: Option<Stamp>,
}

/// What a record needs, decided for its whole batch at once.
struct Decided {
    decision: Decision,
    /// A small file whose block the index says is on this disk already.
    here: bool,
}

/// A batch being installed: the outcomes settled before, and the install task.
struct Installing {
    settled: Vec<Outcome>,
    task: tokio::task::JoinHandle<Vec<(Assembled, Outcome)>>,
}

/// A small file fetched with others, after its write on a blocking thread.
enum SmallWrite {
    Ready(Assembled),
    /// No peer sent it intact: why.
    NotFetched(String),
    /// It could not be written: why.
    Failed(FileRecord, String),
}

/// Requests of small files, each a list of the files and what they go with.
type FirstsRequests<T> = Vec<Vec<(T, FileRecord)>>;

/// A record after the fetch step of a batch.
enum Prepared {
    /// Nothing to install (done already, or not now).
    Settled(Outcome),
    Ready(Box<Assembled>),
}

/// Small files fetched whole: at most this many in one request...
const FIRSTS_PER_REQUEST: usize = 128;
/// ...and this many bytes.
const FIRSTS_BYTES: u64 = 4 << 20;
/// Such requests in flight at once.
const FIRSTS_REQUESTS_IN_FLIGHT: usize = 4;

/// Whether a record to replace is a small file to fetch whole from a peer.
fn fetched_whole(here: bool, record: &FileRecord) -> bool {
    is_small(record) && !here && !record.blocks.is_empty()
}

/// Group small files fetched whole into requests: one origin each (asked first), at most
/// `FIRSTS_PER_REQUEST` files and `FIRSTS_BYTES` bytes.
fn firsts_requests<T>(files: Vec<(T, FileRecord)>) -> FirstsRequests<T> {
    // Per origin: its requests, and the bytes of its last one.
    let mut by_origin: std::collections::BTreeMap<raftshare_raft::NodeId, (FirstsRequests<T>, u64)> =
        Default::default();
    for file in files {
        let (requests, bytes) = by_origin.entry(file.1.origin).or_default();
        let full =
            requests.last().is_none_or(|last| last.len() >= FIRSTS_PER_REQUEST || *bytes + file.1.size > FIRSTS_BYTES);
        if full {
            requests.push(Vec::new());
            *bytes = 0;
        }
        *bytes += file.1.size;
        requests.last_mut().expect("a request was just pushed").push(file);
    }
    by_origin.into_values().flat_map(|(requests, _)| requests).collect()
}

/// Split `puts` into batches, each a list of groups of records with the same content (in
/// the table's order).
///
/// A content has one group in the whole page, in the batch of its first record: its temp
/// files are named by content and place in the group, and the next batch is fetched
/// while this one is installed, so a second group of it would rewrite a temp file the
/// install is renaming into place.
fn batches(puts: Vec<FileRecord>) -> Vec<Vec<Vec<FileRecord>>> {
    let mut batches: Vec<Vec<Vec<FileRecord>>> = vec![Vec::new()];
    // Where each content's group is: its batch, and its place there.
    let mut groups: std::collections::HashMap<(raftshare_raft::Digest, u64), (usize, usize)> = Default::default();
    let (mut files, mut bytes) = (0, 0);
    for record in puts {
        if let Some(&(b, g)) = groups.get(&(record.hash, record.size)) {
            if b + 1 == batches.len() {
                files += 1;
                bytes += record.size;
            }
            batches[b][g].push(record);
            continue;
        }
        if files >= BATCH_FILES || bytes >= BATCH_BYTES {
            batches.push(Vec::new());
            (files, bytes) = (0, 0);
        }
        files += 1;
        bytes += record.size;
        let b = batches.len() - 1;
        groups.insert((record.hash, record.size), (b, batches[b].len()));
        batches[b].push(vec![record]);
    }
    batches.retain(|batch| !batch.is_empty());
    batches
}

/// Whether every outcome is Done (the others are logged).
fn all_done(outcomes: Vec<Outcome>) -> bool {
    let mut complete = true;
    for outcome in outcomes {
        if let Outcome::Later(why) = outcome {
            debug!("not yet: {why}");
            complete = false;
        }
    }
    complete
}

/// How long downloads wait after one ran out of disk space.
const DISK_FULL_PAUSE: Duration = Duration::from_secs(10);
/// How a download that ran out of disk space says so (its temp file is gone already).
const NO_SPACE: &str = "no space left on this disk";

/// Materialises the file table into the folder.
pub struct Applier {
    sync: Arc<SyncState>,
    fetcher: BlockFetcher,
    /// Downloads wait until then: the disk was full (retrying at once would only fetch
    /// the same blocks again and fill the disk again).
    disk_full_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Applier {
    /// An applier for `sync`'s folder, fetching with `fetcher`.
    pub fn new(sync: Arc<SyncState>, fetcher: BlockFetcher) -> Applier {
        Applier { sync, fetcher, disk_full_until: std::sync::Mutex::new(None) }
    }

    /// Whether downloads wait for disk space now.
    fn waiting_for_space(&self) -> bool {
        let until = *self.disk_full_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|t| std::time::Instant::now() < t)
    }

    fn disk_full(&self, record: &FileRecord, why: &str) {
        let mut until = self.disk_full_until.lock().unwrap_or_else(|p| p.into_inner());
        if until.is_none_or(|t| std::time::Instant::now() >= t) {
            warn!(
                path = %record.path,
                size = record.size,
                "{why}: the download was given up and its temp file removed; downloads wait {DISK_FULL_PAUSE:?}, \
                 then try again (free some space on this disk)"
            );
        }
        *until = Some(std::time::Instant::now() + DISK_FULL_PAUSE);
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
            if untidy && complete && self.sync.trash_blocks() >= TRASH_KEPT_BLOCKS {
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
        let settled = |version| self.sync.is_settled(version);
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
                Ok(()) => self.sync.forget_settled(newest),
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
            .map(|request| self.prepare_firsts(request))
            .buffer_unordered(FIRSTS_REQUESTS_IN_FLIGHT)
            .flat_map(stream::iter)
            .collect::<Vec<Prepared>>();
        let others = stream::iter(others)
            .map(|same_content| self.prepare_all(same_content))
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
                        self.received(&assembled);
                    }
                    settled.push(outcome);
                }
            }
            Err(e) => settled.push(Outcome::Later(format!("install task failed: {e}"))),
        }
        all_done(settled)
    }

    /// Prepare records of one content, in order: the first is assembled as usual, the
    /// others copy its temp file (they cannot share it: each is renamed into place).
    async fn prepare_all(&self, same_content: Vec<(Decided, FileRecord)>) -> Vec<Prepared> {
        let mut prepared: Vec<Prepared> = Vec::with_capacity(same_content.len());
        for (n, (decision, record)) in same_content.into_iter().enumerate() {
            let temp = self.sync.folder.temp_for(&record.hash, record.size, n);
            let model = prepared.iter().find_map(|p| match p {
                Prepared::Ready(a) => Some(a.temp.clone()),
                Prepared::Settled(_) => None,
            });
            let p = self.prepare(decision, record, temp, model).await;
            self.sync.stats.pending_downloads.fetch_sub(1, Ordering::Relaxed);
            prepared.push(p);
        }
        prepared
    }

    /// After `decision`, if it is a download, assemble `record` in `temp` (from a copy of
    /// `model`, a temp file of the same content, when there is one).
    async fn prepare(&self, decided: Decided, record: FileRecord, temp: PathBuf, model: Option<PathBuf>) -> Prepared {
        let on_disk = match decided.decision {
            Decision::Done => return Prepared::Settled(Outcome::Done),
            Decision::Later(why) => return Prepared::Settled(Outcome::Later(why)),
            Decision::Replace(on_disk) => on_disk,
        };
        if self.waiting_for_space() {
            return waits_for_space(&record);
        }
        if is_small(&record) && model.is_none() {
            return self.prepare_small(record, temp, on_disk, decided.here).await;
        }
        if let Some(model) = model {
            if let Ok(Ok(())) = tokio::task::spawn_blocking({
                let (r, t) = (record.clone(), temp.clone());
                move || -> Result<(), String> {
                    fs::copy(&model, &t).map_err(|e| write_error(&format!("cannot write {}", t.display()), &e))?;
                    finish_temp(&r, &t)
                }
            })
            .await
            {
                return Prepared::Ready(Box::new(Assembled { record, temp, on_disk, fetched: 0, stamp: None }));
            }
        }
        self.transfer_started(&record);
        let assembled = self.assemble(&record, &temp).await;
        self.sync.transfer_ended(&record.path);
        match assembled {
            Ok(fetched) => Prepared::Ready(Box::new(Assembled { record, temp, on_disk, fetched, stamp: None })),
            Err(why) => self.gave_up(&record, why),
        }
    }

    /// [`Applier::prepare`] for a file of at most one block: copied from this disk when a
    /// file here holds it, else fetched whole; written to its temp file in one go, its
    /// hash checked in memory.
    async fn prepare_small(&self, record: FileRecord, temp: PathBuf, on_disk: Option<Stamp>, here: bool) -> Prepared {
        if here {
            let (sync, r, t) = (self.sync.clone(), record.clone(), temp.clone());
            let copied = tokio::task::spawn_blocking(move || {
                let bytes = r.blocks.first().and_then(|b| sync.local_block(b))?;
                (bytes.len() as u64 == r.size).then(|| write_small(&r, &t, &bytes))
            })
            .await
            .unwrap_or_else(|e| Some(Err(format!("write task failed: {e}"))));
            match copied {
                Some(Ok(stamp)) => {
                    return Prepared::Ready(Box::new(Assembled {
                        record,
                        temp,
                        on_disk,
                        fetched: 0,
                        stamp: Some(stamp),
                    }))
                }
                Some(Err(why)) => return self.gave_up(&record, why),
                None => {}
            }
        }
        let (content, fetched) = if record.blocks.is_empty() {
            (Vec::new(), 0)
        } else {
            self.transfer_started(&record);
            let bytes = self.fetcher.fetch(&record, 0).await;
            self.sync.transfer_ended(&record.path);
            match bytes {
                Ok(bytes) => {
                    let n = bytes.len() as u64;
                    (bytes, n)
                }
                Err(why) => return Prepared::Settled(Outcome::Later(why)),
            }
        };
        let (r, t) = (record.clone(), temp.clone());
        let written = tokio::task::spawn_blocking(move || write_small(&r, &t, &content))
            .await
            .unwrap_or_else(|e| Err(format!("write task failed: {e}")));
        match written {
            Ok(stamp) => Prepared::Ready(Box::new(Assembled { record, temp, on_disk, fetched, stamp: Some(stamp) })),
            Err(why) => self.gave_up(&record, why),
        }
    }

    /// [`Applier::prepare`] for small files fetched whole, many in one request
    /// ([`firsts_requests`]): each written to its temp file, all in one blocking call.
    async fn prepare_firsts(&self, request: Vec<(Option<Stamp>, FileRecord)>) -> Vec<Prepared> {
        let files = request.len() as u64;
        let (stamps, records): (Vec<Option<Stamp>>, Vec<FileRecord>) = request.into_iter().unzip();
        let prepared = if self.waiting_for_space() {
            records.iter().map(waits_for_space).collect()
        } else {
            records.iter().for_each(|r| self.transfer_started(r));
            let contents = self.fetcher.fetch_firsts(&records).await;
            records.iter().for_each(|r| self.sync.transfer_ended(&r.path));
            let sync = self.sync.clone();
            let written = tokio::task::spawn_blocking(move || {
                let write = |((record, on_disk), content): ((FileRecord, Option<Stamp>), Result<Vec<u8>, String>)| {
                    let content = match content {
                        Ok(content) => content,
                        Err(why) => return SmallWrite::NotFetched(why),
                    };
                    let temp = sync.folder.temp_for(&record.hash, record.size, 0);
                    match write_small(&record, &temp, &content) {
                        Ok(stamp) => {
                            let fetched = content.len() as u64;
                            SmallWrite::Ready(Assembled { record, temp, on_disk, fetched, stamp: Some(stamp) })
                        }
                        Err(why) => SmallWrite::Failed(record, why),
                    }
                };
                records.into_iter().zip(stamps).zip(contents).map(write).collect::<Vec<_>>()
            })
            .await;
            match written {
                Ok(written) => written
                    .into_iter()
                    .map(|w| match w {
                        SmallWrite::Ready(assembled) => Prepared::Ready(Box::new(assembled)),
                        SmallWrite::NotFetched(why) => Prepared::Settled(Outcome::Later(why)),
                        SmallWrite::Failed(record, why) => self.gave_up(&record, why),
                    })
                    .collect(),
                Err(e) => vec![Prepared::Settled(Outcome::Later(format!("write task failed: {e}")))],
            }
        };
        self.sync.stats.pending_downloads.fetch_sub(files, Ordering::Relaxed);
        prepared
    }

    /// A download that failed for `why`: tried again later; a full disk pauses downloads.
    fn gave_up(&self, record: &FileRecord, why: String) -> Prepared {
        if why.starts_with(NO_SPACE) {
            self.disk_full(record, &why);
        }
        Prepared::Settled(Outcome::Later(why))
    }

    /// Show `record`'s download among the transfers (until `transfer_ended`).
    fn transfer_started(&self, record: &FileRecord) {
        self.sync.transfer_started(Transfer {
            path: record.path.clone(),
            from: record.origin_name.clone(),
            total_bytes: record.size,
            done_bytes: 0,
            started_ms: now_ms(),
        });
    }

    /// Tell the events feed that `assembled` arrived.
    fn received(&self, assembled: &Assembled) {
        let record = &assembled.record;
        let (path, from) = (record.path.clone(), record.origin_name.clone());
        if path.contains(".conflict-") && path.contains(&format!("-{}", record.version)) {
            self.sync.events.push(EventKind::Conflict { path: path.clone(), kept_as: path.clone(), by: from.clone() });
        }
        self.sync.events.push(EventKind::Received { path, from, size: record.size, fetched: assembled.fetched });
    }

    /// Build the record's content in `temp`: blocks already there (a resumed transfer),
    /// blocks elsewhere on this disk, then blocks from peers. Returns how many bytes came
    /// over the network.
    async fn assemble(&self, record: &FileRecord, temp: &Path) -> Result<u64, String> {
        let result = self.assemble_in(record, temp).await;
        if result.as_ref().is_err_and(|why| why.starts_with(NO_SPACE)) {
            // What filled the disk goes: the next attempt starts over.
            let _ = fs::remove_file(temp);
        }
        result
    }

    async fn assemble_in(&self, record: &FileRecord, temp: &Path) -> Result<u64, String> {
        let temp = temp.to_path_buf();
        let sync = self.sync.clone();
        let r = record.clone();
        let t = temp.clone();
        let missing = tokio::task::spawn_blocking(move || fill_locally(&sync, &r, &t))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| write_error(&format!("cannot write {}", temp.display()), &e))?;
        let missing_bytes: u64 = missing.iter().map(|i| block_len(record, *i)).sum();
        self.sync.transfer_progress(&record.path, record.size - missing_bytes);
        if !missing.is_empty() {
            let file = Arc::new(OpenOptions::new().write(true).open(&temp).map_err(|e| e.to_string())?);
            // The first failure ends the transfer: no more blocks are fetched for it.
            let fetched: Result<Vec<()>, String> = stream::iter(missing)
                .map(|index| {
                    let file = file.clone();
                    async move {
                        let bytes = self.fetcher.fetch(record, index).await?;
                        self.sync.transfer_progress(&record.path, bytes.len() as u64);
                        let offset = index as u64 * BLOCK_SIZE;
                        tokio::task::spawn_blocking(move || {
                            file.write_all_at(&bytes, offset)?;
                            // The disk starts on it now, not all at the batch's sync.
                            folder::start_writeback(&file, offset, bytes.len() as u64);
                            Ok(())
                        })
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| write_error("cannot write a block", &e))
                    }
                })
                .buffer_unordered(BLOCKS_IN_FLIGHT)
                .try_collect()
                .await;
            fetched?;
        }
        // Every block is verified (kept, copied or fetched): the whole file is what the
        // record's hash describes, as the writer hashed blocks and file in one read.
        let r = record.clone();
        tokio::task::spawn_blocking(move || give_origin_mtime(&r, &temp)).await.map_err(|e| e.to_string())??;
        Ok(missing_bytes)
    }
}

/// A download not started while downloads wait for disk space.
fn waits_for_space(record: &FileRecord) -> Prepared {
    Prepared::Settled(Outcome::Later(format!("{NO_SPACE}: {:?} waits for space", record.path)))
}

/// `what` failed with `e`, said so that a full disk is recognised (`NO_SPACE`).
fn write_error(what: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::StorageFull || e.kind() == std::io::ErrorKind::QuotaExceeded {
        format!("{NO_SPACE} ({what}: {e})")
    } else {
        format!("{what}: {e}")
    }
}

/// What to do with a live record.
enum Decision {
    Done,
    Later(String),
    /// Write it; the target currently holds this (None: nothing).
    Replace(Option<Stamp>),
}

fn local_entry(sync: &SyncState, rel: &str) -> Option<LocalEntry> {
    sync.local.get(rel).unwrap_or_else(|e| {
        warn!(path = rel, "{e}");
        None
    })
}

fn same_stamp(entry: &LocalEntry, stamp: &Stamp) -> bool {
    entry.size == stamp.size && entry.mtime == stamp.mtime
}

/// What `record`, just read from the table, needs. Whether a newer version was applied
/// meanwhile is checked once, at the rename ([`place`]): a record outdated in between
/// costs a download, and checking every record here cost a table read each.
fn decide_put(sync: &SyncState, record: &FileRecord) -> Decision {
    let rel = &record.path;
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
            warn!("skipping a record the folder cannot hold: {e}");
            return Decision::Done;
        }
    };
    let stamp = match scan::stamp(&abs) {
        Ok(stamp) => stamp,
        Err(e) => return Decision::Later(format!("cannot read {rel:?}: {e}")),
    };
    let Some(stamp) = stamp else {
        if abs.is_dir() {
            return Decision::Later(format!("{rel:?} is a folder here, and a file in the table"));
        }
        if entry.is_some() {
            // Deleted here and not proposed yet: the scanner proposes the delete first.
            sync.recheck(rel);
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
    match scan::hash_file(&abs) {
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
            sync.recheck(rel);
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
fn is_own(sync: &SyncState, record: &FileRecord) -> bool {
    record.origin == sync.node_id
}

/// Whether the table has moved past `record` since the pass read it: acting on it would
/// write an old version over a newer one (the newer record has its own turn).
fn is_stale(sync: &SyncState, record: &FileRecord) -> bool {
    sync.sm.get(&record.path).is_none_or(|now| now.version != record.version)
}

fn adopt(sync: &SyncState, rel: &str, mut entry: LocalEntry, stamp: Stamp, version: u64) {
    entry.size = stamp.size;
    entry.mtime = stamp.mtime;
    entry.version = Some(version);
    if let Err(e) = sync.local.put(rel, &entry) {
        warn!(path = rel, "{e}");
    }
}

/// Prepare the temp file and copy in every block found on this disk; returns the
/// indexes still missing.
fn fill_locally(sync: &SyncState, record: &FileRecord, temp: &Path) -> std::io::Result<Vec<u32>> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(temp)?;
    // A temp file of the record's size may hold blocks of a transfer that broke: those
    // are kept. Any other is new (or of no use): nothing in it is worth reading.
    let resumable = file.metadata()?.len() == record.size;
    if !resumable {
        file.set_len(0)?;
        file.set_len(record.size)?;
    }
    let mut missing = Vec::new();
    // Only a file's last block can be short: small files need a small buffer.
    let mut buf = vec![0u8; record.size.min(BLOCK_SIZE) as usize];
    for (i, want) in record.blocks.iter().enumerate() {
        let offset = i as u64 * BLOCK_SIZE;
        let len = block_len(record, i as u32) as usize;
        if resumable {
            let n = folder::read_at_full(&file, &mut buf[..len], offset)?;
            if n == len && raftshare_raft::Digest::of(&buf[..len]) == *want {
                continue; // already there: a transfer that broke resumes here
            }
        } else if *want == zeros_digest(len) {
            continue; // a new temp file reads as zeros: a block of zeros is there already
        }
        match sync.local_block(want) {
            Some(bytes) if bytes.len() == len => file.write_all_at(&bytes, offset)?,
            _ => missing.push(i as u32),
        }
    }
    Ok(missing)
}

/// The digest of `len` zero bytes (a full block's is computed once).
fn zeros_digest(len: usize) -> raftshare_raft::Digest {
    static FULL: std::sync::OnceLock<raftshare_raft::Digest> = std::sync::OnceLock::new();
    let of = |len| raftshare_raft::Digest::of(&vec![0u8; len]);
    if len as u64 == BLOCK_SIZE {
        *FULL.get_or_init(|| of(len))
    } else {
        of(len)
    }
}

/// Whether `record` is a file of at most one block (most files: written in one go).
fn is_small(record: &FileRecord) -> bool {
    record.blocks.len() <= 1 && record.size <= BLOCK_SIZE
}

/// Write a small file's whole `content` to `temp`, if it is the record's content, with
/// the origin's mtime (durable: [`folder::sync_all`]); returns its stamp (from the open
/// file: no second lookup of the path).
fn write_small(record: &FileRecord, temp: &Path, content: &[u8]) -> Result<Stamp, String> {
    if content.len() as u64 != record.size || raftshare_raft::Digest::of(content) != record.hash {
        return Err(format!("{:?}: its content does not match its hash", record.path));
    }
    let written = (|| {
        let mut file = File::create(temp)?;
        std::io::Write::write_all(&mut file, content)?;
        set_origin_mtime(&file, record);
        Ok(scan::stamp_of(&file.metadata()?))
    })();
    written.map_err(|e: std::io::Error| {
        let _ = fs::remove_file(temp);
        write_error(&format!("cannot write {}", temp.display()), &e)
    })
}

/// Check the whole file and give it the origin's mtime (durable: [`folder::sync_all`]).
pub(crate) fn finish_temp(record: &FileRecord, temp: &Path) -> Result<(), String> {
    let hash = folder::hash_whole(temp).map_err(|e| e.to_string())?;
    if hash != record.hash {
        let _ = fs::remove_file(temp);
        return Err(format!("{:?} did not match its hash once assembled; starting over", record.path));
    }
    give_origin_mtime(record, temp)
}

/// Give the temp file at `temp` the origin's mtime.
fn give_origin_mtime(record: &FileRecord, temp: &Path) -> Result<(), String> {
    let file = File::options().write(true).open(temp).map_err(|e| e.to_string())?;
    set_origin_mtime(&file, record);
    Ok(())
}

/// Give a temp file the mtime `record` had on its origin (a filesystem without mtimes
/// still gets the content).
fn set_origin_mtime(file: &File, record: &FileRecord) {
    if record.mtime > 0 {
        let _ = file.set_modified(UNIX_EPOCH + Duration::from_nanos(record.mtime as u64));
    }
}

/// Make the batch's temp files durable, rename them into place, make the renames
/// durable, and only then index them: a crash leaves each target old or new, and the
/// index never claims a version the disk may not hold.
fn install_batch(sync: &SyncState, ready: Vec<Assembled>) -> Vec<(Assembled, Outcome)> {
    let started = std::time::Instant::now();
    let temps: Vec<&Path> = ready.iter().map(|a| a.temp.as_path()).collect();
    let synced = folder::sync_all(&temps);
    let sync_took = started.elapsed();
    if let Err(e) = synced {
        let why = write_error("cannot sync the downloaded files", &e);
        return ready.into_iter().map(|a| (a, Outcome::Later(why.clone()))).collect();
    }
    let _guard = sync.lock_folder();
    let mut results = Vec::with_capacity(ready.len());
    let mut placed = Vec::new();
    for assembled in ready {
        match place(sync, &assembled) {
            Ok(Some(target)) => placed.push((assembled, target)),
            Ok(None) => results.push((assembled, Outcome::Done)),
            Err(why) => results.push((assembled, Outcome::Later(why))),
        }
    }
    let place_took = started.elapsed() - sync_took;
    let folders: BTreeSet<&Path> = placed.iter().filter_map(|(_, target)| target.parent()).collect();
    if let Err(e) = folder::sync_all(&folders.into_iter().collect::<Vec<_>>()) {
        // In place but maybe not durable: not indexed; the next pass finds the content
        // there and adopts it.
        let why = write_error("cannot sync the folders of the received files", &e);
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
            sync.expect_echoes(entries.iter().map(|(path, e)| (*path, Some(Stamp { size: e.size, mtime: e.mtime }))))
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
fn place(sync: &SyncState, assembled: &Assembled) -> Result<Option<PathBuf>, String> {
    let rel = &assembled.record.path;
    let abs = sync.folder.path_of(rel).map_err(|e| e.to_string())?;
    if is_stale(sync, &assembled.record) {
        return Ok(None);
    }
    let now = scan::stamp(&abs).ok().flatten();
    if now != assembled.on_disk {
        return Err(format!("{rel:?} changed while its new version was fetched"));
    }
    if let Some(seen) = now {
        let (hash, blocks) = local_entry(sync, rel).map(|e| (e.hash, e.blocks)).unwrap_or_default();
        let moved =
            sync.folder.trash_seen(rel, &hash, &seen).map_err(|e| format!("cannot move the old {rel:?} aside: {e}"))?;
        let Some((trashed, _)) = moved else {
            sync.recheck(rel);
            return Err(format!("{rel:?} was saved here while its new version was installed"));
        };
        sync.remember_trash(trashed, &blocks);
    }
    match sync.folder.place(&assembled.temp, rel) {
        Ok(_) => Ok(Some(abs)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Saved here between the look above and the rename: the scanner proposes it.
            sync.recheck(rel);
            Err(format!("{rel:?} was made here while its new version was installed"))
        }
        Err(e) => Err(format!("cannot install {rel:?}: {e}")),
    }
}

/// The local index entry of `record` just installed at `abs`: stamped as `known` (its
/// temp file's), else as the disk stamps it now.
pub(crate) fn installed_entry(abs: &Path, record: &FileRecord, known: Option<Stamp>) -> LocalEntry {
    let stamp =
        known.or_else(|| scan::stamp(abs).ok().flatten()).unwrap_or(Stamp { size: record.size, mtime: record.mtime });
    LocalEntry {
        size: stamp.size,
        mtime: stamp.mtime,
        hash: record.hash,
        blocks: record.blocks.clone(),
        version: Some(record.version),
    }
}

/// Apply deletes: each file the user did not change since goes to the trash; the
/// folders they left are synced once, then the index forgets them.
fn delete_batch(sync: &SyncState, records: &[FileRecord]) -> Vec<Outcome> {
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
            Err(why) => outcomes.push(Outcome::Later(why)),
        }
    }
    let paths: Vec<&str> = trashed.iter().map(|r| r.path.as_str()).collect();
    if let Err(why) = unindex_trashed(sync, &paths, folders) {
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
fn unindex_trashed(sync: &SyncState, paths: &[&str], folders: BTreeSet<PathBuf>) -> Result<(), String> {
    let folders: Vec<PathBuf> = folders.into_iter().collect();
    if let Err(e) = folder::sync_all(&folders) {
        return Err(format!("cannot sync the folders of deleted files: {e}"));
    }
    let gone: Vec<(&str, Option<&LocalEntry>)> = paths.iter().map(|path| (*path, None)).collect();
    match sync.local.update(&gone) {
        Ok(_) => sync.expect_echoes(paths.iter().map(|path| (*path, None))),
        Err(e) => warn!("cannot take {} deleted files out of the local index: {e}", gone.len()),
    }
    for folder in folders.iter().rev() {
        sync.folder.prune_empty(folder);
    }
    Ok(())
}

/// Move a deleted record's file to the trash if it is still the deleted version.
/// Returns the folder it left (None: nothing to move).
fn trash_deleted(sync: &SyncState, record: &FileRecord) -> Result<Option<PathBuf>, String> {
    let rel = &record.path;
    let Ok(abs) = sync.folder.path_of(rel) else { return Ok(None) };
    if sync.has_pending(rel) {
        if is_own(sync, record) {
            return Ok(None);
        }
        return Err(format!("a local change of {rel:?} is being committed first"));
    }
    if is_stale(sync, record) {
        return Ok(None);
    }
    let entry = local_entry(sync, rel);
    let Some(stamp) = scan::stamp(&abs).map_err(|e| format!("cannot read {rel:?}: {e}"))? else {
        if entry.is_some() {
            let _ = sync.local.remove(rel);
        }
        return Ok(None);
    };
    trash_unchanged(sync, rel, &abs, &stamp, entry.as_ref(), Some(&record.hash))
        .map_err(|e| format!("cannot delete {rel:?}: {e}"))
}

/// Move the file at `rel` (`abs`, found with `stamp`) to the trash if no one changed it
/// here since this node indexed it as `entry` (see [`unchanged`]); returns the folder it
/// left. A file changed here, or saved over between the look and the move (it is put
/// back), stays, and the scanner is asked to look at it: the edit beats the delete.
fn trash_unchanged(
    sync: &SyncState,
    rel: &str,
    abs: &Path,
    stamp: &Stamp,
    entry: Option<&LocalEntry>,
    also: Option<&raftshare_raft::Digest>,
) -> std::io::Result<Option<PathBuf>> {
    let Some((hash, blocks)) = unchanged(abs, stamp, entry, also) else {
        sync.recheck(rel);
        return Ok(None);
    };
    let Some((trashed, left)) = sync.folder.trash_seen(rel, &hash, stamp)? else {
        sync.recheck(rel);
        return Ok(None);
    };
    sync.remember_trash(trashed, &blocks);
    Ok(Some(left))
}

/// What the file at `abs` (with `stamp`) holds, if no one changed it here since this node
/// indexed it as `entry`: the same stamp, or, for a file only touched, the same content as
/// the index or as `also`.
fn unchanged(
    abs: &Path,
    stamp: &Stamp,
    entry: Option<&LocalEntry>,
    also: Option<&raftshare_raft::Digest>,
) -> Option<(raftshare_raft::Digest, Vec<raftshare_raft::Digest>)> {
    if let Some(e) = entry.filter(|e| same_stamp(e, stamp)) {
        return Some((e.hash, e.blocks.clone()));
    }
    let content = scan::hash_file(abs).ok().flatten()?;
    let mut known = entry.map(|e| &e.hash).into_iter().chain(also);
    known.any(|hash| *hash == content.hash).then_some((content.hash, content.blocks))
}

/// Delete the files this node holds at a committed version whose path the table no
/// longer knows at all: deleted, and the tombstone forgotten before this node applied it.
/// A file changed here since is looked at again instead (the scanner proposes it); one
/// never committed (no version) is this node's own and stays.
///
/// Only versions at or below the forget mark can have lost their record so: a newer one
/// may be this node's own change, committed but not yet applied here.
fn delete_forgotten(sync: &SyncState) {
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
        if sync.has_pending(&rel) || sync.sm.get(&rel).is_some() || local_entry(sync, &rel).as_ref() != Some(&entry) {
            continue;
        }
        let Ok(abs) = sync.folder.path_of(&rel) else { continue };
        match scan::stamp(&abs) {
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
            Err(_) => sync.recheck(&rel),
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

#[cfg(test)]
mod tests {
    use raftshare_raft::{Digest, FileOp};

    use super::*;

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
        let stamp = scan::stamp(&abs).unwrap().unwrap();
        let hash = Digest::of(content);
        let entry = LocalEntry { size: stamp.size, mtime: stamp.mtime, hash, blocks: vec![hash], version };
        sync.local.put(rel, &entry).unwrap();
        entry
    }

    #[test]
    fn files_whose_tombstones_were_forgotten_before_this_node_applied_them_are_deleted() {
        let t = crate::sync::TestSync::new();
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
        assert!(sync.take_rechecks().contains("edited.txt"), "the scanner looks at the edit");
        assert!(!root.join("touched.txt").exists(), "only touched: its content is the deleted one");
        assert_eq!(fs::read(root.join("new.txt")).unwrap(), b"n", "newer than the forget: not forgotten");
        assert!(sync.local.get("new.txt").unwrap().is_some());
        // The deleted content stays in the trash, for a move elsewhere to use.
        assert_eq!(fs::read(sync.folder.trash_dir().join(Digest::of(b"g").to_hex())).unwrap(), b"g");
    }

    #[test]
    fn a_deleted_file_only_touched_here_is_deleted_even_if_this_node_missed_its_last_version() {
        let t = crate::sync::TestSync::new();
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
        assert_eq!(trash_deleted(sync, &sync.sm.get("b.txt").unwrap()), Ok(None));
        assert_eq!(fs::read(sync.folder.root().join("b.txt")).unwrap(), b"edited");
        assert!(sync.take_rechecks().contains("b.txt"));
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
        let t = crate::sync::TestSync::new();
        let sync = &t.sync;
        fs::write(sync.folder.root().join("a.txt"), b"newer here").unwrap();
        sync.outbox.enqueue(FileOp::Delete { path: "a.txt".into(), base: None }).unwrap();
        let own = record("a.txt", b"mine", 3);
        let theirs = FileRecord { origin: 2, origin_name: "b".into(), ..record("a.txt", b"theirs", 4) };
        assert!(matches!(decide_put(sync, &own), Decision::Done), "the proposer records what became of it");
        assert!(matches!(decide_put(sync, &theirs), Decision::Later(_)), "the local change is committed first");
        let (own_gone, theirs_gone) = (FileRecord { deleted: true, ..own }, FileRecord { deleted: true, ..theirs });
        assert_eq!(trash_deleted(sync, &own_gone), Ok(None));
        assert!(trash_deleted(sync, &theirs_gone).is_err());
        assert_eq!(fs::read(sync.folder.root().join("a.txt")).unwrap(), b"newer here", "the local file is untouched");
    }
}
