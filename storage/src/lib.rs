//! raftshare's durable state, in one sled database per node: the Raft log, the vote and
//! the log marks, the replicated file table with its snapshots, and this node's own
//! records: what it has on disk (the local index) and what waits to be committed (the
//! outbox).
//!
//! Layout:
//! - `table`: the pure rules of the file table — path validation, conflict names, what
//!   a committed change does — with no I/O, so they can be tested alone.
//! - `store`: [`Store`], opening the database and handing out the handles below.
//! - `log_store`: [`LogStore`], openraft's log storage (entries, vote, committed and
//!   purge marks), durable before it answers.
//! - `state_machine`: [`StateMachine`], the file table in sled, applied atomically per
//!   entry, its entry index (what changed since an index) and change feed, and its
//!   snapshots.
//! - `local`: [`LocalIndex`], what this node has on disk per path ([`LocalEntry`]), with
//!   a block locator kept in step, and the applier's watermark. Never
//!   replicated.
//! - `outbox`: [`Outbox`], the durable queue of local changes ([`PendingOp`]) waiting to
//!   be committed, one per path, oldest first.
//! - `floor`: the record beside the database of what it is known to hold (vote, log end,
//!   applied index), written only after sled flushed it; a database found behind it at
//!   open is refused as damaged.
//! - `codec`: tree names, key layout and bincode encoding (private).

mod codec;
mod floor;
mod local;
mod log_store;
mod outbox;
mod state_machine;
mod store;
pub mod table;

pub use local::{LocalEntry, LocalError, LocalIndex};
pub use log_store::LogStore;
pub use outbox::{Outbox, OutboxError, PendingOp};
pub use state_machine::{SnapshotBuilder, StateMachine};
pub use store::{FloorError, Store, StoreError};
pub use table::{conflict_name, validate_path, PathError, META_DIR};
