//! raftshare's durable state, in one sled database per node: the Raft log, the vote and
//! the log marks, and the replicated file table with its snapshots.
//!
//! Layout:
//! - `table`: the pure rules of the file table — path validation, conflict names, what
//!   a committed change does — with no I/O, so they can be tested alone.
//! - `store`: [`Store`], opening the database and handing out the handles below.
//! - `log_store`: [`LogStore`], openraft's log storage (entries, vote, committed and
//!   purge marks), durable before it answers.
//! - `state_machine`: [`StateMachine`], the file table in sled, applied atomically per
//!   entry, and its snapshots.
//! - `codec`: tree names, key layout and bincode encoding (private).

mod codec;
mod log_store;
mod state_machine;
mod store;
pub mod table;

pub use log_store::LogStore;
pub use state_machine::{SnapshotBuilder, StateMachine};
pub use store::{Store, StoreError};
pub use table::{conflict_name, validate_path, PathError, META_DIR};
