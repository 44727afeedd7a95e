//! The replicated data model: node identity, file hashes, `FileOp` commands, the
//! `FileRecord` of the file table, and openraft's type config built from them.
//!
//! Everything here is plain data that crosses the wire and the log, so every type
//! round-trips through bincode (see the tests at the bottom).

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A node's id in the cluster: random, chosen once at `init`, never reused.
pub type NodeId = u64;

/// What the cluster knows of a node besides its id: a name for people and an address for peers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Human-friendly name (defaults to the host name).
    pub name: String,
    /// `ip:port` where the node's transport listens, as peers must dial it.
    pub addr: String,
    /// The public half of the node's identity key (`key::Identity`), hex; a rotated cluster
    /// key is sealed to it. Empty if unknown.
    pub identity: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// A BLAKE3 digest (of a whole file or of one block).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// Lower-case hex, as shown to users and in `--json` output.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..12])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One change to the shared folder, as proposed by a node's scanner.
///
/// `base` is the version (log index) of the path that the proposer's copy was derived
/// from, `None` for a path the proposer believes is new. The conflict rule in
/// `raftshare-storage`'s `table` module decides with it.
///
/// A `Batch` holds leaf ops only. Decoding goes through [`wire::FileOpWire`], whose
/// `Batch` can hold no `Batch`: bincode has no depth limit, and a few kilobytes of nested
/// batches would otherwise overflow the decoding thread's stack (an abort, not an error).
/// The encoding is derived as it always was, so stored logs and snapshots read unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "wire::FileOpWire")]
pub enum FileOp {
    /// Create or replace the file at `path`.
    Put {
        path: String,
        size: u64,
        hash: Digest,
        blocks: Vec<Digest>,
        /// Modification time on the proposer's disk, nanoseconds since the Unix epoch.
        mtime: i64,
        base: Option<u64>,
    },
    /// Remove the file at `path`.
    Delete { path: String, base: Option<u64> },
    /// Several leaf ops in one log entry, applied in order. A batch inside a batch does
    /// not decode (see [`FileOp::check`]).
    Batch(Vec<FileOp>),
    /// Drop the tombstones of deletes at or before log index `upto`: the leader proposes
    /// it once every member has applied those deletes to its disk, so no member can still
    /// hold a deleted file that it would mistake for a new one.
    ForgetDeleted { upto: u64 },
    /// A new cluster key, sealed to each member's identity (`raftshare rotate-key`).
    RotateKey(KeyRotation),
}

/// A cluster key rotation as the log carries it: the new key sealed to each member that
/// was in the membership when it was made, by node id. Only the member itself can open
/// its copy (see `key::Identity`); the state machine keeps the latest rotation so a member
/// that was away can fetch its copy when it comes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotation {
    /// Rotations are numbered 1, 2, ...; a rotation not newer than the last is rejected.
    pub epoch: u64,
    pub sealed: std::collections::BTreeMap<NodeId, serde_bytes::ByteBuf>,
}

/// Why an op cannot be proposed: a batch inside a batch (it would not decode again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a batch inside a batch: a batch holds leaf ops only (put, delete, ...); propose their leaves in one flat batch"
)]
pub struct NestedBatch;

impl FileOp {
    /// The ops this op stands for, with batches flattened, in apply order.
    ///
    /// Iterative, so even a nested batch built in memory (none decodes) cannot exhaust
    /// the stack.
    pub fn leaves(&self) -> Vec<&FileOp> {
        let mut out = Vec::new();
        let mut stack = vec![std::slice::from_ref(self).iter()];
        while let Some(ops) = stack.last_mut() {
            match ops.next() {
                Some(FileOp::Batch(inner)) => stack.push(inner.iter()),
                Some(leaf) => out.push(leaf),
                None => {
                    stack.pop();
                }
            }
        }
        out
    }

    /// Whether this op can be proposed: a batch holds leaf ops only, since a nested batch
    /// would be written to the log and then never decode again. Ops off the wire always
    /// pass (they did decode); a proposer that builds ops in memory checks here.
    pub fn check(&self) -> Result<(), NestedBatch> {
        match self {
            FileOp::Batch(ops) if ops.iter().any(|op| matches!(op, FileOp::Batch(_))) => Err(NestedBatch),
            _ => Ok(()),
        }
    }
}

/// The decoding side of [`FileOp`]: the same variants in the same order (so the same
/// bytes), but a batch's ops are [`LeafWire`]s, whose `Batch` never decodes. Decoding is
/// thus two levels deep at most, whatever the input.
mod wire {
    use serde::de::{Deserializer, Error};
    use serde::Deserialize;

    use super::{Digest, FileOp, KeyRotation, NestedBatch};

    #[derive(Deserialize)]
    #[serde(rename = "FileOp")]
    pub(super) enum FileOpWire {
        Put { path: String, size: u64, hash: Digest, blocks: Vec<Digest>, mtime: i64, base: Option<u64> },
        Delete { path: String, base: Option<u64> },
        Batch(Vec<LeafWire>),
        ForgetDeleted { upto: u64 },
        RotateKey(KeyRotation),
    }

    #[derive(Deserialize)]
    #[serde(rename = "FileOp")]
    pub(super) enum LeafWire {
        Put { path: String, size: u64, hash: Digest, blocks: Vec<Digest>, mtime: i64, base: Option<u64> },
        Delete { path: String, base: Option<u64> },
        Batch(Refused),
        ForgetDeleted { upto: u64 },
        RotateKey(KeyRotation),
    }

    /// Stands for a batch inside a batch: decoding one is an error, before any of it is read.
    pub(super) enum Refused {}

    impl<'de> Deserialize<'de> for Refused {
        fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            Err(D::Error::custom(NestedBatch))
        }
    }

    impl From<FileOpWire> for FileOp {
        fn from(op: FileOpWire) -> FileOp {
            match op {
                FileOpWire::Put { path, size, hash, blocks, mtime, base } => {
                    FileOp::Put { path, size, hash, blocks, mtime, base }
                }
                FileOpWire::Delete { path, base } => FileOp::Delete { path, base },
                FileOpWire::Batch(ops) => FileOp::Batch(ops.into_iter().map(FileOp::from).collect()),
                FileOpWire::ForgetDeleted { upto } => FileOp::ForgetDeleted { upto },
                FileOpWire::RotateKey(rotation) => FileOp::RotateKey(rotation),
            }
        }
    }

    impl From<LeafWire> for FileOp {
        fn from(op: LeafWire) -> FileOp {
            match op {
                LeafWire::Put { path, size, hash, blocks, mtime, base } => {
                    FileOp::Put { path, size, hash, blocks, mtime, base }
                }
                LeafWire::Delete { path, base } => FileOp::Delete { path, base },
                LeafWire::Batch(never) => match never {},
                LeafWire::ForgetDeleted { upto } => FileOp::ForgetDeleted { upto },
                LeafWire::RotateKey(rotation) => FileOp::RotateKey(rotation),
            }
        }
    }
}

/// The application data of a log entry: a `FileOp` and who made it, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The node whose user made the change.
    pub origin: NodeId,
    /// That node's name at the time, used in conflict file names.
    pub origin_name: String,
    /// The origin's wall clock, milliseconds since the Unix epoch: shown, never decided on.
    pub at_ms: i64,
    /// What changed.
    pub op: FileOp,
    /// The origin's outbox sequence number of each leaf op, in `op.leaves()` order (empty
    /// for changes that do not come from an outbox). A leaf whose seq is not above the
    /// highest already applied from its origin is a duplicate of an earlier proposal (a
    /// retry after a lost answer) and is skipped, so every local change applies once.
    pub seqs: Vec<u64>,
}

/// One path of the replicated file table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    /// BLAKE3 of the whole file; for a tombstone, of the content that was deleted.
    pub hash: Digest,
    /// BLAKE3 of each block of `BLOCK_SIZE` bytes (the last one may be shorter).
    pub blocks: Vec<Digest>,
    /// Modification time on the origin's disk, nanoseconds since the Unix epoch.
    pub mtime: i64,
    /// Log index of the entry that last wrote this path.
    pub version: u64,
    /// The node that made that change, and its name then.
    pub origin: NodeId,
    pub origin_name: String,
    /// The origin's wall clock at the change, milliseconds since the Unix epoch.
    pub modified_at_ms: i64,
    /// A tombstone: the path was deleted at `version`; `hash` is what was deleted.
    pub deleted: bool,
}

/// Size of the blocks that files are hashed and transferred in.
pub const BLOCK_SIZE: u64 = 1 << 20;

/// What applying one leaf op did to the file table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpOutcome {
    /// The path now holds the op's content at this version.
    Written { path: String, version: u64 },
    /// The op's base was stale: its content was kept under another name.
    Conflict { path: String, kept_as: String, version: u64 },
    /// The path is now a tombstone.
    Deleted { path: String, version: u64 },
    /// Nothing changed (same content already there, or a delete of an absent path).
    Unchanged { path: String },
    /// A delete whose base was stale: dropped, since an edit beats a delete.
    DeleteDropped { path: String },
    /// An invalid op: it had no effect.
    Rejected { path: String, reason: String },
    /// Tombstones dropped by `ForgetDeleted`.
    Forgotten { tombstones: u64 },
    /// A retried op already applied from an earlier proposal: skipped.
    Duplicate { path: String },
    /// The cluster key of rotation `epoch` is now the one to use.
    KeyRotated { epoch: u64 },
}

/// The response of the state machine to one log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// One outcome per leaf op, in apply order (empty for blank and membership entries).
    pub outcomes: Vec<OpOutcome>,
}

openraft::declare_raft_types!(
    /// openraft's type config for raftshare.
    pub TypeConfig:
        D = Change,
        R = ApplyResult,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of a raftshare node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A Raft log entry of raftshare.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (term, leader, index).
pub type LogId = openraft::LogId<NodeId>;
/// The membership as stored in the log.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
/// A snapshot of the file table.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
/// The vote.
pub type Vote = openraft::Vote<NodeId>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<NodeId>;

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: Serialize + for<'a> Deserialize<'a> + PartialEq + fmt::Debug>(value: T) {
        let bytes = bincode::serialize(&value).expect("encode");
        let back: T = bincode::deserialize(&bytes).expect("decode");
        assert_eq!(value, back);
    }

    #[test]
    fn data_model_roundtrips_through_bincode() {
        let put = FileOp::Put {
            path: "a/b.txt".into(),
            size: 3,
            hash: Digest::of(b"abc"),
            blocks: vec![Digest::of(b"abc")],
            mtime: 1_700_000_000_000_000_000,
            base: Some(4),
        };
        let change = Change {
            origin: 7,
            origin_name: "laptop".into(),
            at_ms: 1_700_000_000_000,
            op: FileOp::Batch(vec![put.clone(), FileOp::Delete { path: "x".into(), base: None }]),
            seqs: vec![3, 4],
        };
        roundtrip(change.clone());
        roundtrip(NodeInfo { name: "n".into(), addr: "127.0.0.1:1".into(), identity: "ab".repeat(32) });
        roundtrip(ApplyResult {
            outcomes: vec![OpOutcome::Conflict { path: "a".into(), kept_as: "b".into(), version: 3 }],
        });
        let entry = Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(2, 1), 9),
            payload: openraft::EntryPayload::Normal(change),
        };
        roundtrip(entry);
    }

    fn delete(path: &str) -> FileOp {
        FileOp::Delete { path: path.into(), base: Some(3) }
    }

    #[test]
    fn leaf_ops_keep_their_encoding_so_stored_logs_still_read() {
        // Variant 1 (u32), the path (u64 length, bytes), `Some` (1), 3 (u64): the bytes
        // every stored log and snapshot holds; the variant order must not move.
        let stored = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'a', 1, 3, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(bincode::serialize(&delete("a")).unwrap(), stored);
        assert_eq!(bincode::deserialize::<FileOp>(&stored).unwrap(), delete("a"));
        let mut batch = vec![2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        batch.extend_from_slice(&stored);
        assert_eq!(bincode::serialize(&FileOp::Batch(vec![delete("a")])).unwrap(), batch);
        assert_eq!(bincode::deserialize::<FileOp>(&batch).unwrap(), FileOp::Batch(vec![delete("a")]));
        let rotation = KeyRotation { epoch: 2, sealed: [(7, serde_bytes::ByteBuf::from(vec![1, 2]))].into() };
        for op in [
            FileOp::ForgetDeleted { upto: 9 },
            FileOp::RotateKey(rotation),
            FileOp::Batch(vec![]),
            FileOp::Batch(vec![delete("x"), FileOp::ForgetDeleted { upto: 1 }]),
        ] {
            roundtrip(op);
        }
    }

    /// The bytes of `depth` batches nested in one another around one delete.
    fn nested_batches(depth: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for _ in 0..depth {
            bytes.extend_from_slice(&bincode::serialize(&FileOp::Batch(vec![])).unwrap()[..4]);
            bytes.extend_from_slice(&1u64.to_le_bytes());
        }
        bytes.extend_from_slice(&bincode::serialize(&delete("deep")).unwrap());
        bytes
    }

    #[test]
    fn nested_batches_never_decode_however_deep() {
        assert_eq!(bincode::deserialize::<FileOp>(&nested_batches(1)).unwrap(), FileOp::Batch(vec![delete("deep")]));
        for depth in [2, 3, 5_000, 100_000] {
            let err = bincode::deserialize::<FileOp>(&nested_batches(depth)).unwrap_err();
            assert!(err.to_string().contains("a batch inside a batch"), "depth {depth}: {err}");
        }
        // Nor as part of a log entry.
        let mut change =
            bincode::serialize(&Change { origin: 1, origin_name: "n".into(), at_ms: 0, op: delete("x"), seqs: vec![] })
                .unwrap();
        let op_at = change.len() - 8 - bincode::serialize(&delete("x")).unwrap().len();
        change.splice(op_at..change.len() - 8, nested_batches(5_000));
        let err = bincode::deserialize::<Change>(&change).unwrap_err();
        assert!(err.to_string().contains("a batch inside a batch"), "{err}");
    }

    #[test]
    fn check_refuses_a_batch_inside_a_batch() {
        assert_eq!(FileOp::Batch(vec![delete("a"), delete("b")]).check(), Ok(()));
        assert_eq!(delete("a").check(), Ok(()));
        let nested = FileOp::Batch(vec![delete("a"), FileOp::Batch(vec![delete("b")])]);
        assert_eq!(nested.check(), Err(NestedBatch));
        assert!(NestedBatch.to_string().contains("one flat batch"));
    }

    #[test]
    fn leaves_of_a_deep_batch_built_in_memory_do_not_exhaust_the_stack() {
        let mut op = delete("deep");
        for _ in 0..100_000 {
            op = FileOp::Batch(vec![op]);
        }
        assert_eq!(op.leaves(), [&delete("deep")]);
        // Dropping is recursive too: unwrap it level by level.
        while let FileOp::Batch(mut inner) = op {
            op = inner.pop().unwrap();
        }
    }

    #[test]
    fn leaves_flatten_nested_batches_in_order() {
        let d = |p: &str| FileOp::Delete { path: p.into(), base: None };
        let op = FileOp::Batch(vec![d("1"), FileOp::Batch(vec![d("2"), d("3")]), d("4")]);
        let paths: Vec<_> = op
            .leaves()
            .into_iter()
            .map(|l| match l {
                FileOp::Delete { path, .. } => path.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(paths, ["1", "2", "3", "4"]);
    }
}
