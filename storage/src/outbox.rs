//! [`Outbox`]: the durable queue of this node's local changes that wait to be committed,
//! one pending op per path, oldest first.
//!
//! The scanner enqueues, the proposer reads [`Outbox::pending`] and acknowledges what
//! committed. A newer edit of a path replaces the older pending op (only the latest
//! content of a path is worth committing) and goes to the back of the queue. An enqueued
//! op is fsynced before `enqueue` returns, so a change the user made is never lost to a
//! crash while the cluster is out of reach. It neither proposes nor knows Raft.

use std::time::{SystemTime, UNIX_EPOCH};

use raftshare_raft::FileOp;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, Transactional};

use crate::codec::{decode, encode, CodecError};
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
/// the database).
#[derive(Clone)]
pub struct Outbox {
    /// For `generate_id`: durable and monotonic, so seqs keep increasing across restarts.
    db: sled::Db,
    /// path → `PendingOp`.
    by_path: sled::Tree,
    /// BE seq → path: the queue's order.
    by_seq: sled::Tree,
}

impl Outbox {
    pub(crate) fn new(db: sled::Db, by_path: sled::Tree, by_seq: sled::Tree) -> Self {
        Outbox { db, by_path, by_seq }
    }

    /// Queues `op` (a `Put` or `Delete` with a valid path) in place of any op pending for
    /// its path, and returns its seq once it is on disk.
    pub fn enqueue(&self, op: FileOp) -> Result<u64, OutboxError> {
        Ok(self.enqueue_many(vec![op])?[0])
    }

    /// [`Outbox::enqueue`] for a burst, with one fsync for all; returns the seqs in order.
    /// Every op is checked before any is queued, so a refused burst queues nothing.
    pub fn enqueue_many(&self, ops: Vec<FileOp>) -> Result<Vec<u64>, OutboxError> {
        ops.iter().try_for_each(check)?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let seqs = self.write(ops)?;
        self.flush()?;
        Ok(seqs)
    }

    /// Up to `limit` pending ops, oldest seq first.
    pub fn pending(&self, limit: usize) -> Vec<PendingOp> {
        self.by_seq
            .iter()
            .filter_map(|item| match item.map_err(CodecError::from).and_then(|(k, v)| self.read_queued(&k, &v)) {
                Ok(pending) => pending,
                Err(e) => {
                    tracing::warn!("skipping an unreadable outbox entry: {e}");
                    None
                }
            })
            .take(limit)
            .collect()
    }

    /// The op pending for `path`, if any.
    pub fn get(&self, path: &str) -> Result<Option<PendingOp>, OutboxError> {
        match self.by_path.get(path.as_bytes()).map_err(OutboxError::Db)? {
            Some(bytes) => Ok(Some(decode_pending(path, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Removes `path`'s pending op if it is still the one numbered `seq` (returns whether
    /// it did): an edit queued while `seq` was being committed stays queued.
    ///
    /// Not fsynced: an ack lost in a crash only proposes the op again, which the table
    /// rules turn into `Unchanged` unless the path changed elsewhere meanwhile.
    pub fn ack(&self, path: &str, seq: u64) -> Result<bool, OutboxError> {
        Ok(self.ack_many(&[(path, seq)])?.first().copied().unwrap_or(false))
    }

    /// [`Outbox::ack`] for the ops of one log entry, in one transaction (sled's exclusive
    /// lock taken once for the entry, not once per op). Returns for each whether it was
    /// removed.
    pub fn ack_many(&self, acks: &[(&str, u64)]) -> Result<Vec<bool>, OutboxError> {
        let acked = (&self.by_path, &self.by_seq).transaction(|(by_path, by_seq)| {
            let mut acked = Vec::with_capacity(acks.len());
            for &(path, seq) in acks {
                let Some(bytes) = by_path.get(path.as_bytes())? else {
                    acked.push(false);
                    continue;
                };
                let current = decode_pending(path, &bytes).map_err(ConflictableTransactionError::Abort)?;
                if current.seq != seq {
                    acked.push(false);
                    continue;
                }
                by_path.remove(path.as_bytes())?;
                by_seq.remove(&seq.to_be_bytes()[..])?;
                acked.push(true);
            }
            Ok(acked)
        });
        acked.map_err(|e| OutboxError::from(CodecError::from(e)))
    }

    /// The paths with a pending op at or under the folder `dir` (`""`: all of them).
    pub fn paths_under(&self, dir: &str) -> Vec<String> {
        crate::codec::paths_under(&self.by_path, dir, "outbox")
    }

    /// How many paths have a pending op (counts them: O(n)).
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Writes one checked op under a fresh seq, replacing the path's previous one.
    /// Queue `ops` in one transaction; returns their seqs in order.
    fn write(&self, ops: Vec<FileOp>) -> Result<Vec<u64>, CodecError> {
        let mut queued = Vec::with_capacity(ops.len());
        for op in ops {
            let seq = self.db.generate_id()?;
            let pending = PendingOp { seq, op, queued_at_ms: now_ms() };
            let value = encode(format_args!("the pending op of {:?}", pending.path()), &pending)?;
            queued.push((pending, value));
        }
        let written = (&self.by_path, &self.by_seq).transaction(|(by_path, by_seq)| {
            for (pending, value) in &queued {
                let path = pending.path();
                if let Some(old) = by_path.insert(path.as_bytes(), value.as_slice())? {
                    match decode_pending(path, &old) {
                        Ok(old) => {
                            by_seq.remove(&old.seq.to_be_bytes()[..])?;
                        }
                        // Its seq key is left behind; `pending` skips it, since the path's op
                        // no longer has that seq.
                        Err(e) => tracing::warn!("replacing a damaged pending op: {e}"),
                    }
                }
                by_seq.insert(&pending.seq.to_be_bytes()[..], path.as_bytes())?;
            }
            Ok(())
        });
        written?;
        Ok(queued.into_iter().map(|(pending, _)| pending.seq).collect())
    }

    fn flush(&self) -> Result<(), OutboxError> {
        // A tree's flush is the whole database's: both trees go to disk.
        self.by_path.flush().map_err(OutboxError::Db)?;
        Ok(())
    }

    /// The pending op a queue slot points to, or `None` if the slot is stale (its path
    /// was re-queued between our reads of the two trees).
    fn read_queued(&self, seq_key: &[u8], path: &[u8]) -> Result<Option<PendingOp>, CodecError> {
        let seq = seq_key
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| CodecError::Invalid(format!("an outbox seq key of {} bytes", seq_key.len())))?;
        let path = std::str::from_utf8(path)
            .map_err(|_| CodecError::Invalid(format!("the outbox slot {seq} names a path that is not UTF-8")))?;
        match self.by_path.get(path.as_bytes())? {
            Some(bytes) => {
                let pending = decode_pending(path, &bytes)?;
                Ok((pending.seq == seq).then_some(pending))
            }
            None => Ok(None),
        }
    }
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
