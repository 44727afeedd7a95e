//! The proposer: turns the outbox into committed log entries.
//!
//! One batch at a time, so the ops of one path commit in the order they were made and
//! each carries the right `base` (the version its local copy came from, read from the
//! local index when the batch is built). A batch that cannot commit (no quorum, no
//! leader) stays in the outbox and is retried with backoff; `status` shows it waiting.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use raftshare_raft::admin::EventKind;
use raftshare_raft::{ApplyResult, Change, FileOp, FileRecord, OpOutcome};
use raftshare_storage::{LocalEntry, PendingOp};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::sync::apply::{finish_temp, installed_entry};
use crate::sync::disk::{self, Stamp};
use crate::sync::error::{ApplyError, CommitError};
use crate::sync::state::SyncState;
use crate::sync::OPS_PER_ENTRY;

/// Backoff between failed proposals.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// A batch as proposed: the outbox entries, their ops with bases, and the change.
struct Batch {
    pending: Vec<PendingOp>,
    ops: Vec<FileOp>,
    change: Change,
}

/// How the proposer commits a batch: the node provides it (through the leader,
/// wherever it is), so the sync engine never depends on the node.
pub trait Committer: Send + Sync + 'static {
    /// Commit `change`; the index of its log entry and the outcome of each of its ops.
    fn commit(&self, change: Change) -> BoxFuture<'_, Result<(u64, ApplyResult), CommitError>>;
}

/// Proposes this node's local changes.
pub struct Proposer {
    sync: Arc<SyncState>,
    committer: Arc<dyn Committer>,
}

impl Proposer {
    /// A proposer for `sync`'s outbox, committing through `committer`.
    pub fn new(sync: Arc<SyncState>, committer: Arc<dyn Committer>) -> Proposer {
        Proposer { sync, committer }
    }

    /// Propose until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF.0;
        let mut failures = 0u32;
        // A batch whose fate is unknown (no answer, or an error after it may have reached
        // the leader) is sent again exactly as it was, same ops, bases and seqs, until it
        // gets an answer: whichever copy commits first applies, the others are duplicates.
        // Building a new batch instead could give a path a base older than the version
        // the lost attempt wrote, and turn this node's own edit into a conflict copy.
        let mut unanswered: Option<Batch> = None;
        loop {
            let batch = match unanswered.take() {
                Some(batch) => batch,
                None => {
                    let pending =
                        if self.sync.problem().is_some() { vec![] } else { self.sync.outbox.pending(OPS_PER_ENTRY) };
                    if pending.is_empty() {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = self.sync.outbox_signals.ready.notified() => {}
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                    self.build(pending)
                }
            };
            match self.propose(&batch).await {
                Ok(()) => {
                    // Off the runtime's threads: trimming a large heap takes a moment.
                    if batch.ops.len() >= crate::memory::LARGE_BURST {
                        tokio::task::spawn_blocking(crate::memory::give_back_freed);
                    }
                    if failures > 0 {
                        info!("local changes commit again after {failures} failed attempts");
                    }
                    backoff = BACKOFF.0;
                    failures = 0;
                }
                Err(e) => {
                    unanswered = Some(batch);
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        warn!(waiting = self.sync.outbox.len(), "local changes cannot commit yet: {e:#}");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    }

    /// One log entry's worth of pending ops, each with its base read now and its outbox
    /// seq (so the state machine can tell a retry from a new change).
    fn build(&self, pending: Vec<PendingOp>) -> Batch {
        let ops: Vec<FileOp> = pending.iter().map(|p| with_base(&p.op, self.base(p.path()))).collect();
        let seqs: Vec<u64> = pending.iter().map(|p| p.seq).collect();
        let op = if ops.len() == 1 { ops[0].clone() } else { FileOp::Batch(ops.clone()) };
        let change = Change {
            origin: self.sync.node_id,
            origin_name: self.sync.node_name.clone(),
            at_ms: crate::clock::now_ms(),
            op,
            seqs,
        };
        Batch { pending, ops, change }
    }

    async fn propose(&self, batch: &Batch) -> Result<(), CommitError> {
        let Batch { pending, ops, change } = batch;
        let started = std::time::Instant::now();
        let (index, result) = self.committer.commit(change.clone()).await?;
        if result.outcomes.len() != ops.len() {
            warn!(index, "entry {index} has {} outcomes for {} ops", result.outcomes.len(), ops.len());
        }
        debug!(index, ops = ops.len(), took = ?started.elapsed(), "committed local changes");
        let paths = pending.iter().map(|p| p.path().to_string()).collect();
        self.sync.events.push(EventKind::Sent { index, paths });
        // Under the folder lock throughout, so the scanner never sees a path between its
        // index update and its ack; the plain outcomes go to the index in one transaction.
        let _guard = self.sync.lock_folder();
        let mut plain = Vec::new();
        for (op, outcome) in ops.iter().zip(&result.outcomes) {
            if let Some(change) = self.record(op, outcome) {
                plain.push(change);
            }
        }
        let changes: Vec<(&str, Option<&LocalEntry>)> =
            plain.iter().map(|(path, entry)| (path.as_str(), entry.as_ref())).collect();
        match self.sync.local.update(&changes) {
            // Every op plain and recorded: the entry's records are this disk's own changes
            // (a conflict, a dropped delete or a duplicate leaves the applier work to do).
            Ok(_) if plain.len() == ops.len() && result.outcomes.len() == ops.len() => self.sync.settled.settle(index),
            Ok(_) => {}
            Err(e) => warn!(index, "cannot record {} committed local changes in the local index: {e}", changes.len()),
        }
        // An op the entry has no outcome for (never expected) stays queued, to be proposed
        // again, rather than leave the outbox unrecorded.
        let acks: Vec<(&str, u64)> = pending.iter().take(result.outcomes.len()).map(|p| (p.path(), p.seq)).collect();
        if let Err(e) = self.sync.outbox.ack_many(&acks) {
            warn!(index, "cannot take {} committed changes off the outbox: {e}", acks.len());
        }
        self.sync.outbox_signals.drained();
        Ok(())
    }

    fn base(&self, path: &str) -> Option<u64> {
        self.sync.local.get(path).ok().flatten().and_then(|e| e.version)
    }

    /// What the local index learns from the outcome of one of this node's ops (called
    /// under the folder lock). The plain cases are returned, for the caller to write with
    /// the others of the entry: the path's new entry, or None to remove it.
    fn record(&self, op: &FileOp, outcome: &OpOutcome) -> Option<(String, Option<LocalEntry>)> {
        let sync = &self.sync;
        match (op, outcome) {
            (FileOp::Put { path, size, hash, blocks, mtime, .. }, OpOutcome::Written { version, .. }) => {
                let entry = LocalEntry {
                    size: *size,
                    mtime: *mtime,
                    hash: *hash,
                    blocks: blocks.clone(),
                    version: Some(*version),
                };
                return Some((path.clone(), Some(entry)));
            }
            (FileOp::Put { path, size, hash, blocks, mtime, .. }, OpOutcome::Unchanged { .. }) => {
                let version = sync.sm.get(path).filter(|r| !r.deleted && r.hash == *hash).map(|r| r.version);
                let entry = LocalEntry { size: *size, mtime: *mtime, hash: *hash, blocks: blocks.clone(), version };
                return Some((path.clone(), Some(entry)));
            }
            (FileOp::Put { path, size, hash, blocks, mtime, .. }, OpOutcome::Conflict { kept_as, version, .. }) => {
                // This content now lives on as `kept_as`; the path itself may take the
                // winning version (the applier keeps these blocks in the trash for the copy).
                info!(path = %path, kept_as = %kept_as, "conflict: this node's edit is kept as a copy");
                sync.events.push(EventKind::Conflict {
                    path: path.clone(),
                    kept_as: kept_as.clone(),
                    by: sync.node_name.clone(),
                });
                // (This node may not have applied that entry yet: the record is rebuilt here.)
                let copy = FileRecord {
                    path: kept_as.clone(),
                    size: *size,
                    hash: *hash,
                    blocks: blocks.clone(),
                    mtime: *mtime,
                    version: *version,
                    origin: sync.node_id,
                    origin_name: sync.node_name.clone(),
                    modified_at_ms: 0,
                    deleted: false,
                };
                keep_conflict_copy(sync, path, &copy);
                let version = sync.local.get(path).ok().flatten().and_then(|e| e.version);
                let entry = LocalEntry { size: *size, mtime: *mtime, hash: *hash, blocks: blocks.clone(), version };
                let _ = sync.local.put(path, &entry);
                sync.reapply(path);
            }
            (FileOp::Delete { path, .. }, OpOutcome::Deleted { .. } | OpOutcome::Unchanged { .. }) => {
                return Some((path.clone(), None));
            }
            (FileOp::Delete { path, .. }, OpOutcome::DeleteDropped { .. }) => {
                info!(path = %path, "the delete was dropped: the file was changed elsewhere meanwhile");
                let _ = sync.local.remove(path);
                sync.reapply(path);
            }
            (FileOp::Put { path, size, hash, blocks, mtime, .. }, OpOutcome::Duplicate { .. }) => {
                // An earlier attempt committed; the table tells what became of it. If the path
                // holds other content, that attempt was kept as a conflict copy (or was
                // superseded): as for a conflict, index this content under its old version so
                // its blocks stay findable for the copy and the applier may bring the path in
                // line (the trash keeps the blocks meanwhile).
                let committed = sync.sm.get(path).filter(|r| !r.deleted && r.hash == *hash).map(|r| r.version);
                let version = committed.or_else(|| sync.local.get(path).ok().flatten().and_then(|e| e.version));
                let entry = LocalEntry { size: *size, mtime: *mtime, hash: *hash, blocks: blocks.clone(), version };
                let _ = sync.local.put(path, &entry);
                sync.reapply(path);
            }
            (FileOp::Delete { path, .. }, OpOutcome::Duplicate { .. }) => {
                if sync.sm.get(path).is_none_or(|r| r.deleted) {
                    let _ = sync.local.remove(path);
                }
                sync.reapply(path);
            }
            (_, OpOutcome::Rejected { path, reason }) => warn!(path = %path, "change rejected: {reason}"),
            (op, outcome) => warn!("unexpected outcome {outcome:?} for {op:?}"),
        }
        None
    }
}

/// `op` with the base its path has now, unless it was queued with one of its own (a
/// withdrawn conflict copy names the version it removes).
fn with_base(op: &FileOp, base: Option<u64>) -> FileOp {
    match op.clone() {
        FileOp::Put { path, size, hash, blocks, mtime, base: own } => {
            FileOp::Put { path, size, hash, blocks, mtime, base: own.or(base) }
        }
        FileOp::Delete { path, base: own } => FileOp::Delete { path, base: own.or(base) },
        batch => batch,
    }
}

/// This node's edit of `from` was kept as the conflict copy `copy`: only this node has its
/// bytes, so put the copy in the folder now, from the file as it was proposed. If the user
/// has since changed or deleted that file (and the bytes are nowhere else on this disk),
/// nobody can ever fetch the copy: withdraw it (a delete of exactly that version), rather
/// than leave every node waiting for content that no longer exists.
///
/// Called with the folder lock held.
fn keep_conflict_copy(sync: &SyncState, from: &str, copy: &FileRecord) {
    let (Ok(source), Ok(target)) = (sync.folder.path_of(from), sync.folder.path_of(&copy.path)) else { return };
    if fs::symlink_metadata(&target).is_ok() {
        return; // something is there already: the applier decides
    }
    let proposed = Stamp { size: copy.size, mtime: copy.mtime };
    if disk::stamp(&source).ok().flatten() == Some(proposed) {
        match copy_into_folder(sync, &source, copy) {
            Ok(()) => return,
            Err(e) => debug!(path = %copy.path, "cannot keep the conflict copy from {from:?} at once: {e}"),
        }
    }
    if copy.blocks.iter().all(|b| sync.local_block(b).is_some()) {
        return; // the applier builds it from the blocks on this disk
    }
    info!(path = %copy.path, "the edit kept as this conflict copy was changed or deleted here since: withdrawing the copy");
    let withdraw = FileOp::Delete { path: copy.path.clone(), base: Some(copy.version) };
    match sync.outbox.enqueue(withdraw) {
        Ok(_) => sync.outbox_signals.ready.notify_one(),
        Err(e) => warn!(path = %copy.path, "cannot withdraw the conflict copy: {e}"),
    }
}

/// Copy `source` (which still holds `copy`'s content) to `copy.path`: a verified, synced
/// temp file renamed into place, and indexed at the copy's version.
fn copy_into_folder(sync: &SyncState, source: &std::path::Path, copy: &FileRecord) -> Result<(), ApplyError> {
    let temp = sync.folder.tmp_dir().join(format!("{}.copy", copy.hash.to_hex()));
    sync.folder
        .copy_to_temp(source, &temp)
        .map_err(|e| ApplyError::io(format!("cannot copy to {}", temp.display()), e))?;
    finish_temp(copy, &temp)?;
    crate::sync::folder::sync_all(&[&temp])
        .map_err(|e| ApplyError::io(format!("cannot sync {}", temp.display()), e))?;
    if let Err(e) = sync.folder.install(&temp, &copy.path) {
        let _ = fs::remove_file(&temp);
        return Err(ApplyError::io(format!("cannot install {:?}", copy.path), e));
    }
    let target = sync.folder.path_of(&copy.path).map_err(|e| ApplyError::io("an invalid path", e))?;
    let entry = installed_entry(&target, copy, None);
    Ok(sync.local.put(&copy.path, &entry)?)
}
