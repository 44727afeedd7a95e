//! Fetching a batch into temp files: from blocks already on this disk, from a temp
//! file of the same content, or from peers (through the `BlockFetcher`); small files
//! written in one go. Nothing here touches the shared folder itself: only temp files in
//! the metadata folder.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures::stream::{self, StreamExt, TryStreamExt};
use raftshare_raft::admin::{EventKind, Transfer};
use raftshare_raft::{FileRecord, BLOCK_SIZE};
use raftshare_storage::table::is_conflict_copy;
use tracing::warn;

use super::decide::{Decided, Decision};
use super::plan::{is_small, Outcome};
use crate::clock::now_ms;
use crate::sync::blocks::fetch::{block_len, BlockFetcher};
use crate::sync::disk::{self, Stamp};
use crate::sync::error::{ApplyError, FetchError};
use crate::sync::folder;
use crate::sync::state::SyncState;

/// Blocks of one file fetched at once.
pub(super) const BLOCKS_IN_FLIGHT: usize = 8;
/// How long downloads wait after one ran out of disk space.
pub(super) const DISK_FULL_PAUSE: Duration = Duration::from_secs(10);

/// A download assembled in its temp file and checked, not yet durable nor installed.
pub(super) struct Assembled {
    pub(super) record: FileRecord,
    pub(super) temp: PathBuf,
    /// What the target held when the download was decided (None: nothing).
    pub(super) on_disk: Option<Stamp>,
    /// Bytes that came over the network.
    pub(super) fetched: u64,
    /// The temp file's stamp once written, when known (the rename into place keeps it).
    pub(super) stamp: Option<Stamp>,
}

/// A small file fetched with others, after its write on a blocking thread.
pub(super) enum SmallWrite {
    Ready(Assembled),
    /// No peer sent it intact: why.
    NotFetched(FetchError),
    /// It could not be written: why.
    Failed(FileRecord, ApplyError),
}

/// A record after the fetch step of a batch.
pub(super) enum Prepared {
    /// Nothing to install (done already, or not now).
    Settled(Outcome),
    Ready(Box<Assembled>),
}

/// Fetches records into temp files, and pauses downloads while the disk is full.
pub(super) struct Downloader {
    sync: Arc<SyncState>,
    fetcher: BlockFetcher,
    /// Downloads wait until then: the disk was full (retrying at once would only fetch
    /// the same blocks again and fill the disk again).
    disk_full_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Downloader {
    pub(super) fn new(sync: Arc<SyncState>, fetcher: BlockFetcher) -> Downloader {
        Downloader { sync, fetcher, disk_full_until: std::sync::Mutex::new(None) }
    }

    /// Whether downloads wait for disk space now.
    fn waiting_for_space(&self) -> bool {
        let until = *self.disk_full_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|t| std::time::Instant::now() < t)
    }

    fn disk_full(&self, record: &FileRecord, why: &ApplyError) {
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

    /// Prepare records of one content, in order: the first is assembled as usual, the
    /// others copy its temp file (they cannot share it: each is renamed into place).
    pub(super) async fn prepare_all(&self, same_content: Vec<(Decided, FileRecord)>) -> Vec<Prepared> {
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
                let (r, t, folder) = (record.clone(), temp.clone(), self.sync.folder.clone());
                move || -> Result<(), ApplyError> {
                    folder
                        .copy_to_temp(&model, &t)
                        .map_err(|e| ApplyError::io(format!("cannot write {}", t.display()), e))?;
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
        self.sync.transfers.ended(&record.path);
        match assembled {
            Ok(fetched) => Prepared::Ready(Box::new(Assembled { record, temp, on_disk, fetched, stamp: None })),
            Err(why) => self.gave_up(&record, why),
        }
    }

    /// [`Downloader::prepare`] for a file of at most one block: copied from this disk when a
    /// file here holds it, else fetched whole; written to its temp file in one go, its
    /// hash checked in memory.
    async fn prepare_small(&self, record: FileRecord, temp: PathBuf, on_disk: Option<Stamp>, here: bool) -> Prepared {
        if here {
            let (sync, r, t) = (self.sync.clone(), record.clone(), temp.clone());
            let copied = tokio::task::spawn_blocking(move || {
                let bytes = r.blocks.first().and_then(|b| sync.local_block(b))?;
                (bytes.len() as u64 == r.size).then(|| write_small(&sync.folder, &r, &t, &bytes))
            })
            .await
            .unwrap_or_else(|e| Some(Err(e.into())));
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
            self.sync.transfers.ended(&record.path);
            match bytes {
                Ok(bytes) => {
                    let n = bytes.len() as u64;
                    (bytes, n)
                }
                Err(why) => return Prepared::Settled(Outcome::Later(why.to_string())),
            }
        };
        let (r, t, folder) = (record.clone(), temp.clone(), self.sync.folder.clone());
        let written = tokio::task::spawn_blocking(move || write_small(&folder, &r, &t, &content))
            .await
            .unwrap_or_else(|e| Err(e.into()));
        match written {
            Ok(stamp) => Prepared::Ready(Box::new(Assembled { record, temp, on_disk, fetched, stamp: Some(stamp) })),
            Err(why) => self.gave_up(&record, why),
        }
    }

    /// [`Downloader::prepare`] for small files fetched whole, many in one request
    /// ([`firsts_requests`]): each written to its temp file, all in one blocking call.
    pub(super) async fn prepare_firsts(&self, request: Vec<(Option<Stamp>, FileRecord)>) -> Vec<Prepared> {
        let files = request.len() as u64;
        let (stamps, records): (Vec<Option<Stamp>>, Vec<FileRecord>) = request.into_iter().unzip();
        let prepared = if self.waiting_for_space() {
            records.iter().map(waits_for_space).collect()
        } else {
            records.iter().for_each(|r| self.transfer_started(r));
            let contents = self.fetcher.fetch_firsts(&records).await;
            records.iter().for_each(|r| self.sync.transfers.ended(&r.path));
            let sync = self.sync.clone();
            let written = tokio::task::spawn_blocking(move || {
                let write =
                    |((record, on_disk), content): ((FileRecord, Option<Stamp>), Result<Vec<u8>, FetchError>)| {
                        let content = match content {
                            Ok(content) => content,
                            Err(why) => return SmallWrite::NotFetched(why),
                        };
                        let temp = sync.folder.temp_for(&record.hash, record.size, 0);
                        match write_small(&sync.folder, &record, &temp, &content) {
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
                        SmallWrite::NotFetched(why) => Prepared::Settled(Outcome::Later(why.to_string())),
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
    fn gave_up(&self, record: &FileRecord, why: ApplyError) -> Prepared {
        if why.is_no_space() {
            self.disk_full(record, &why);
        }
        Prepared::Settled(Outcome::Later(why.to_string()))
    }

    /// Show `record`'s download among the transfers (until `transfer_ended`).
    fn transfer_started(&self, record: &FileRecord) {
        self.sync.transfers.started(Transfer {
            path: record.path.clone(),
            from: record.origin_name.clone(),
            total_bytes: record.size,
            done_bytes: 0,
            started_ms: now_ms(),
        });
    }

    /// Tell the events feed that `assembled` arrived.
    pub(super) fn received(&self, assembled: &Assembled) {
        let record = &assembled.record;
        let (path, from) = (record.path.clone(), record.origin_name.clone());
        if is_conflict_copy(&path, &from, record.version) {
            self.sync.events.push(EventKind::Conflict { path: path.clone(), kept_as: path.clone(), by: from.clone() });
        }
        self.sync.events.push(EventKind::Received { path, from, size: record.size, fetched: assembled.fetched });
    }

    /// Build the record's content in `temp`: blocks already there (a resumed transfer),
    /// blocks elsewhere on this disk, then blocks from peers. Returns how many bytes came
    /// over the network.
    async fn assemble(&self, record: &FileRecord, temp: &Path) -> Result<u64, ApplyError> {
        let result = self.assemble_in(record, temp).await;
        if result.as_ref().is_err_and(ApplyError::is_no_space) {
            // What filled the disk goes: the next attempt starts over.
            let _ = fs::remove_file(temp);
        }
        result
    }

    async fn assemble_in(&self, record: &FileRecord, temp: &Path) -> Result<u64, ApplyError> {
        let temp = temp.to_path_buf();
        let sync = self.sync.clone();
        let r = record.clone();
        let t = temp.clone();
        let missing = tokio::task::spawn_blocking(move || fill_locally(&sync, &r, &t))
            .await?
            .map_err(|e| ApplyError::io(format!("cannot write {}", temp.display()), e))?;
        let missing_bytes: u64 = missing.iter().map(|i| block_len(record, *i)).sum();
        self.sync.transfers.progress(&record.path, record.size - missing_bytes);
        if !missing.is_empty() {
            let file = Arc::new(
                OpenOptions::new()
                    .write(true)
                    .open(&temp)
                    .map_err(|e| ApplyError::io(format!("cannot open {}", temp.display()), e))?,
            );
            // The first failure ends the transfer: no more blocks are fetched for it.
            let fetched: Result<Vec<()>, ApplyError> = stream::iter(missing)
                .map(|index| {
                    let file = file.clone();
                    async move {
                        let bytes = self.fetcher.fetch(record, index).await?;
                        self.sync.transfers.progress(&record.path, bytes.len() as u64);
                        let offset = index as u64 * BLOCK_SIZE;
                        tokio::task::spawn_blocking(move || {
                            file.write_all_at(&bytes, offset)?;
                            // The disk starts on it now, not all at the batch's sync.
                            folder::start_writeback(&file, offset, bytes.len() as u64);
                            Ok(())
                        })
                        .await?
                        .map_err(|e| ApplyError::io("cannot write a block", e))
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
        tokio::task::spawn_blocking(move || give_origin_mtime(&r, &temp)).await??;
        Ok(missing_bytes)
    }
}

/// A download not started while downloads wait for disk space.
pub(super) fn waits_for_space(record: &FileRecord) -> Prepared {
    Prepared::Settled(Outcome::Later(format!("no space left on this disk: {:?} waits for space", record.path)))
}

/// Prepare the temp file and copy in every block found on this disk; returns the
/// indexes still missing.
pub(super) fn fill_locally(sync: &SyncState, record: &FileRecord, temp: &Path) -> std::io::Result<Vec<u32>> {
    let file = sync.folder.open_temp(temp, true)?;
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
pub(super) fn zeros_digest(len: usize) -> raftshare_raft::Digest {
    static FULL: std::sync::OnceLock<raftshare_raft::Digest> = std::sync::OnceLock::new();
    let of = |len| raftshare_raft::Digest::of(&vec![0u8; len]);
    if len as u64 == BLOCK_SIZE {
        *FULL.get_or_init(|| of(len))
    } else {
        of(len)
    }
}

/// Write a small file's whole `content` to `temp`, if it is the record's content, with
/// the origin's mtime (durable: [`folder::sync_all`]); returns its stamp (from the open
/// file: no second lookup of the path).
pub(super) fn write_small(
    folder: &folder::Folder,
    record: &FileRecord,
    temp: &Path,
    content: &[u8],
) -> Result<Stamp, ApplyError> {
    if content.len() as u64 != record.size || raftshare_raft::Digest::of(content) != record.hash {
        return Err(ApplyError::Mismatch { path: record.path.clone() });
    }
    let written = (|| {
        let mut file = folder.open_temp(temp, false)?;
        std::io::Write::write_all(&mut file, content)?;
        set_origin_mtime(&file, record);
        Ok(disk::stamp_of(&file.metadata()?))
    })();
    written.map_err(|e: std::io::Error| {
        let _ = fs::remove_file(temp);
        ApplyError::io(format!("cannot write {}", temp.display()), e)
    })
}

/// Check the whole file and give it the origin's mtime (durable: [`folder::sync_all`]).
pub(crate) fn finish_temp(record: &FileRecord, temp: &Path) -> Result<(), ApplyError> {
    let hash = folder::hash_whole(temp).map_err(|e| ApplyError::io(format!("cannot read {}", temp.display()), e))?;
    if hash != record.hash {
        let _ = fs::remove_file(temp);
        return Err(ApplyError::Mismatch { path: record.path.clone() });
    }
    give_origin_mtime(record, temp)
}

/// Give the temp file at `temp` the origin's mtime.
pub(super) fn give_origin_mtime(record: &FileRecord, temp: &Path) -> Result<(), ApplyError> {
    let file = File::options()
        .write(true)
        .open(temp)
        .map_err(|e| ApplyError::io(format!("cannot open {}", temp.display()), e))?;
    set_origin_mtime(&file, record);
    Ok(())
}

/// Give a temp file the mtime `record` had on its origin (a filesystem without mtimes
/// still gets the content).
pub(super) fn set_origin_mtime(file: &File, record: &FileRecord) {
    if record.mtime > 0 {
        let _ = file.set_modified(UNIX_EPOCH + Duration::from_nanos(record.mtime as u64));
    }
}
