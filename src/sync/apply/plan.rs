//! Planning a page of records: which records are installed together (batches bounded
//! by files and bytes, one group per content) and which small files are asked for many
//! in one request. Pure functions on records: no disk, no network.

use raftshare_raft::{FileRecord, BLOCK_SIZE};
use tracing::debug;

/// What became of one record.
pub(super) enum Outcome {
    /// On disk as committed (or nothing to do).
    Done,
    /// Not now (a local edit, a file being written, no peer had a block): retry later.
    Later(String),
}
/// Whether every outcome is Done (the others are logged).
pub(super) fn all_done(outcomes: Vec<Outcome>) -> bool {
    let mut complete = true;
    for outcome in outcomes {
        if let Outcome::Later(why) = outcome {
            debug!("not yet: {why}");
            complete = false;
        }
    }
    complete
}

/// Records read from the table at once by a pass.
pub(super) const PAGE: usize = 8192;

/// Files made durable and installed together (one sync for the batch)...
pub(super) const BATCH_FILES: usize = 512;
/// ...or closed once it holds this many bytes (big files are installed as they come).
pub(super) const BATCH_BYTES: u64 = 256 << 20;

/// Requests of small files, each a list of the files and what they go with.
pub(super) type FirstsRequests<T> = Vec<Vec<(T, FileRecord)>>;

/// Small files fetched whole: at most this many in one request...
pub(super) const FIRSTS_PER_REQUEST: usize = 128;
/// ...and this many bytes.
pub(super) const FIRSTS_BYTES: u64 = 4 << 20;
/// Such requests in flight at once.
pub(super) const FIRSTS_REQUESTS_IN_FLIGHT: usize = 4;

/// Whether a record to replace is a small file to fetch whole from a peer.
pub(super) fn fetched_whole(here: bool, record: &FileRecord) -> bool {
    is_small(record) && !here && !record.blocks.is_empty()
}

/// Group small files fetched whole into requests: one origin each (asked first), at most
/// `FIRSTS_PER_REQUEST` files and `FIRSTS_BYTES` bytes.
pub(super) fn firsts_requests<T>(files: Vec<(T, FileRecord)>) -> FirstsRequests<T> {
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
pub(super) fn batches(puts: Vec<FileRecord>) -> Vec<Vec<Vec<FileRecord>>> {
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

/// Whether `record` is a file of at most one block (most files: written in one go).
pub(super) fn is_small(record: &FileRecord) -> bool {
    record.blocks.len() <= 1 && record.size <= BLOCK_SIZE
}
