//! [`Outbox`]: the durable queue of this node's local changes that wait to be committed,
//! one pending op per path, oldest first.
//!
//! The scanner enqueues, the proposer reads [`Outbox::pending`] and acknowledges what
//! committed. A newer edit of a path replaces the older pending op (only the latest
//! content of a path is worth committing) and goes to the back of the queue. An enqueued
//! op is fsynced before `enqueue` returns, so a change the user made is never lost to a
//! crash while the cluster is out of reach. It neither proposes nor knows Raft.
//!
//! On disk it is one tree, seq → op, so every change of it is one atomic `sled::Batch`;
//! which seq each path has is kept in memory (read back at open), so asking whether a
//! path has a pending op, or acknowledging one, reads nothing from sled.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use raftshare_raft::FileOp;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, CodecError, OLD_OUTBOX_SEQ_TREE, OLD_OUTBOX_TREE, OUTBOX_QUEUE_TREE};
use crate::table::{validate_path, PathError};

/// One local change waiting to be committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOp {
    /// Its place in the queue: increasing, never reused, even across restarts.
    pub seq: u64,
    /// A leaf `Put` or `Delete`.
    pub op: FileOp,
    /// This node's wall clock when it was queued, milliseconds since the Unix epoch.
    pub queued_at_ms: i64,
}

impl PendingOp {
    /// The path the op changes.
    pub fn path(&self) -> &str {
        leaf_path(&self.op).unwrap_or_default()
    }
}

/// Why the outbox refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// `enqueue` was given a `Batch`.
    #[error("cannot queue a batch: the outbox keeps one Put or Delete per path, so queue its ops one by one")]
    Batch,
    /// The op's path could never be committed.
    #[error("cannot queue a change of {path:?}: {source}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Which rule it breaks.
        #[source]
        source: PathError,
    },
    /// sled failed (disk full, I/O error, …).
    #[error("cannot read or write the outbox in the database: {0}")]
    Db(#[source] sled::Error),
    /// Stored bytes do not decode.
    #[error("the outbox is damaged ({0}); the next scan of the shared folder queues the change again")]
    Damaged(String),
}

impl From<CodecError> for OutboxError {
    fn from(error: CodecError) -> Self {
        match error {
            CodecError::Sled(e) => OutboxError::Db(e),
            other => OutboxError::Damaged(other.to_string()),
        }
    }
}

/// The durable queue of local changes, coalesced per path (cheap to clone; clones share
/// the database and the index).
#[derive(Clone)]
pub struct Outbox {
    /// For `generate_id`: durable and monotonic, so seqs keep increasing across restarts.
    db: sled::Db,
    /// BE seq → `PendingOp`: the queue, in order.
    queue: sled::Tree,
    /// path → the seq of its pending op: the queue's index. Changed under its lock
    /// together with each batch, so it always says what the tree holds.
    index: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Outbox {
    /// The outbox of `db`, its index read back from its queue. A database of the older
    /// layout (a tree of path → op and one of its order) has its pending ops moved into
    /// the queue first, in one batch, and the old trees dropped.
    pub(crate) fn open(db: sled::Db) -> Result<Self, CodecError> {
        let queue = db.open_tree(OUTBOX_QUEUE_TREE)?;
        if db.tree_names().iter().any(|name| name == OLD_OUTBOX_TREE.as_bytes()) {
            let mut moved = sled::Batch::default();
            for item in db.open_tree(OLD_OUTBOX_TREE)?.iter() {
                let (path, bytes) = item?;
                let path = String::from_utf8_lossy(&path);
                match decode_pending(&path, &bytes) {
                    Ok(pending) => moved.insert(&pending.seq.to_be_bytes()[..], bytes),
                    Err(e) => tracing::warn!("dropping an unreadable pending op of the older outbox: {e}"),
                }
            }
            queue.apply_batch(moved)?;
            queue.flush()?;
            db.drop_tree(OLD_OUTBOX_SEQ_TREE)?;
            db.drop_tree(OLD_OUTBOX_TREE)?;
        }
        let mut index = BTreeMap::new();
        // What can never be proposed goes: the next scan of the folder finds the change
        // again (what `OutboxError::Damaged` tells).
        let mut stale = sled::Batch::default();
        for item in queue.iter() {
            let (key, bytes) = item?;
            match read_queued(&key, &bytes) {
                Ok((seq, pending)) if pending.seq == seq && leaf_path(&pending.op).is_some() => {
                    // Only the newest op of a path counts (never more than one, unless the
                    // database was changed by hand).
                    if let Some(older) = index.insert(pending.path().to_owned(), seq) {
                        stale.remove(&older.to_be_bytes()[..]);
                    }
                }
                Ok((seq, _)) => {
                    tracing::warn!("dropping the outbox entry {seq}: it does not hold a change of one path");
                    stale.remove(key);
                }
                Err(e) => {
                    tracing::warn!("dropping an unreadable outbox entry: {e}");
                    stale.remove(key);
                }
            }
        }
        queue.apply_batch(stale)?;
        Ok(Outbox { db, queue, index: Arc::new(Mutex::new(index)) })
    }

    fn index(&self) -> MutexGuard<'_, BTreeMap<String, u64>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `op` (a `Put` or `Delete` with a valid path) in place of any op pending for
    /// its path, and returns its seq once it is on disk.
    pub fn enqueue(&self, op: FileOp) -> Result<u64, OutboxError> {
        Ok(self.enqueue_many(vec![op])?[0])
    }

    /// [`Outbox::enqueue`] for a burst, with one fsync for all; returns the seqs in order.
    /// Every op is checked before any is queued, so a refused burst queues nothing.
    pub fn enqueue_many(&self, ops: Vec<FileOp>) -> Result<Vec<u64>, OutboxError> {
        let seqs = self.enqueue_many_unsynced(ops)?;
        self.sync()?;
        Ok(seqs)
    }

    /// [`Outbox::enqueue_many`] without its fsync: the ops are queued (the proposer may
    /// take them) but not durable until [`Outbox::sync`], for a caller that must not
    /// hold a lock across the fsync.
    pub fn enqueue_many_unsynced(&self, ops: Vec<FileOp>) -> Result<Vec<u64>, OutboxError> {
        ops.iter().try_for_each(check)?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.write(ops)?)
    }

    /// Make every op queued so far durable (one fsync).
    pub fn sync(&self) -> Result<(), OutboxError> {
        self.queue.flush().map_err(OutboxError::Db)?;
        Ok(())
    }

    /// Up to `limit` pending ops, oldest seq first.
    pub fn pending(&self, limit: usize) -> Vec<PendingOp> {
        self.queue
            .iter()
            .filter_map(|item| {
                match item.map_err(CodecError::from).and_then(|(key, bytes)| read_queued(&key, &bytes)) {
                    Ok((_, pending)) => Some(pending),
                    Err(e) => {
                        tracing::warn!("skipping an unreadable outbox entry: {e}");
                        None
                    }
                }
            })
            .take(limit)
            .collect()
    }

    /// The op pending for `path`, if any.
    pub fn get(&self, path: &str) -> Result<Option<PendingOp>, OutboxError> {
        let Some(seq) = self.index().get(path).copied() else { return Ok(None) };
        match self.queue.get(seq.to_be_bytes()).map_err(OutboxError::Db)? {
            Some(bytes) => Ok(Some(decode_pending(path, &bytes)?)),
            // Acked between the two reads.
            None => Ok(None),
        }
    }

    /// Whether an op is pending for `path` (nothing read from disk).
    pub fn contains(&self, path: &str) -> bool {
        self.index().contains_key(path)
    }

    /// Removes `path`'s pending op if it is still the one numbered `seq` (returns whether
    /// it did): an edit queued while `seq` was being committed stays queued.
    ///
    /// Not fsynced: an ack lost in a crash only proposes the op again, which the table
    /// rules turn into `Unchanged` unless the path changed elsewhere meanwhile.
    pub fn ack(&self, path: &str, seq: u64) -> Result<bool, OutboxError> {
        Ok(self.ack_many(&[(path, seq)])?.first().copied().unwrap_or(false))
    }

    /// [`Outbox::ack`] for the ops of one log entry, in one batch (sled's exclusive lock
    /// taken once for the entry, not once per op). Returns for each whether it was removed.
    pub fn ack_many(&self, acks: &[(&str, u64)]) -> Result<Vec<bool>, OutboxError> {
        let mut index = self.index();
        let mut batch = sled::Batch::default();
        let mut acked = Vec::with_capacity(acks.len());
        for &(path, seq) in acks {
            let current = index.get(path) == Some(&seq);
            if current {
                batch.remove(&seq.to_be_bytes()[..]);
                index.remove(path);
            }
            acked.push(current);
        }
        if let Err(e) = self.queue.apply_batch(batch) {
            // Nothing was removed: the index must say so again.
            for (&(path, seq), &was) in acks.iter().zip(&acked) {
                if was {
                    index.insert(path.to_owned(), seq);
                }
            }
            return Err(OutboxError::Db(e));
        }
        Ok(acked)
    }

    /// The paths with a pending op at or under the folder `dir` (`""`: all of them), sorted.
    pub fn paths_under(&self, dir: &str) -> Vec<String> {
        let index = self.index();
        if dir.is_empty() {
            return index.keys().cloned().collect();
        }
        let exact = index.contains_key(dir).then(|| dir.to_owned());
        let prefix = format!("{dir}/");
        let under = index.range(prefix.clone()..).map(|(path, _)| path).take_while(|path| path.starts_with(&prefix));
        exact.into_iter().chain(under.cloned()).collect()
    }

    /// How many paths have a pending op.
    pub fn len(&self) -> usize {
        self.index().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.index().is_empty()
    }

    /// Queue checked `ops` in one batch, each in place of its path's pending op; returns
    /// their seqs in order.
    fn write(&self, ops: Vec<FileOp>) -> Result<Vec<u64>, CodecError> {
        let mut queued = Vec::with_capacity(ops.len());
        for op in ops {
            let seq = self.db.generate_id()?;
            let pending = PendingOp { seq, op, queued_at_ms: now_ms() };
            let value = encode(format_args!("the pending op of {:?}", pending.path()), &pending)?;
            queued.push((pending, value));
        }
        let mut index = self.index();
        // What the index says of each path before this batch, to go back to on failure.
        let before: Vec<(String, Option<u64>)> =
            queued.iter().map(|(pending, _)| (pending.path().to_owned(), index.get(pending.path()).copied())).collect();
        let mut batch = sled::Batch::default();
        for (pending, value) in &queued {
            if let Some(old) = index.insert(pending.path().to_owned(), pending.seq) {
                batch.remove(&old.to_be_bytes()[..]);
            }
            batch.insert(&pending.seq.to_be_bytes()[..], value.as_slice());
        }
        if let Err(e) = self.queue.apply_batch(batch) {
            for (path, old) in before {
                match old {
                    Some(seq) => index.insert(path, seq),
                    None => index.remove(&path),
                };
            }
            return Err(e.into());
        }
        Ok(queued.into_iter().map(|(pending, _)| pending.seq).collect())
    }
}

/// A queue entry read back: its seq (from the key) and its op.
fn read_queued(key: &[u8], bytes: &[u8]) -> Result<(u64, PendingOp), CodecError> {
    let seq = key
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| CodecError::Invalid(format!("an outbox key of {} bytes", key.len())))?;
    Ok((seq, decode(format_args!("the pending op {seq}"), bytes)?))
}

/// Refuses what the outbox cannot hold: a batch, or a path no node would accept.
fn check(op: &FileOp) -> Result<(), OutboxError> {
    let path = leaf_path(op).ok_or(OutboxError::Batch)?;
    validate_path(path).map_err(|source| OutboxError::InvalidPath { path: path.to_owned(), source })
}

fn leaf_path(op: &FileOp) -> Option<&str> {
    match op {
        FileOp::Put { path, .. } | FileOp::Delete { path, .. } => Some(path),
        FileOp::Batch(_) | FileOp::ForgetDeleted { .. } | FileOp::RotateKey(_) => None,
    }
}

/// A pending op read back, checked against the path it was stored under.
fn decode_pending(path: &str, bytes: &[u8]) -> Result<PendingOp, CodecError> {
    let pending: PendingOp = decode(format_args!("the pending op of {path:?}"), bytes)?;
    if pending.path() != path {
        return Err(CodecError::Invalid(format!("the pending op stored at {path:?} is for {:?}", pending.path())));
    }
    Ok(pending)
}

fn now_ms() -> i64 {
    // A clock before 1970 is a broken clock; 0 only affects what `status` shows.
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
