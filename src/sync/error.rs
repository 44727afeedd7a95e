//! The sync engine's errors, typed so that callers decide on a kind, never on a
//! message's wording.

use std::io;

use thiserror::Error;

/// Why bringing one file to this disk failed (tried again later).
#[derive(Debug, Error)]
pub enum ApplyError {
    /// The disk is full: downloads pause before trying again.
    #[error("no space left on this disk ({what}: {source})")]
    NoSpace {
        what: String,
        #[source]
        source: io::Error,
    },
    /// Any other I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// Bytes written for `path` are not the content its record names.
    #[error("{path:?}: its content does not match its hash")]
    Mismatch { path: String },
    /// A local change of `path` waits in the outbox: it is proposed first, and the
    /// conflict rule decides.
    #[error("a local change of {path:?} is being committed first")]
    LocalChangeFirst { path: String },
    /// The disk changed under the applier (`what` says how): `path` is looked at again.
    #[error("{path:?} {what}")]
    ChangedHere { path: String, what: &'static str },
    /// No peer sent a block intact.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The local index could not record what is on disk.
    #[error("cannot update the local index: {0}")]
    Index(#[from] raftshare_storage::LocalError),
    /// The blocking task doing the work ended abnormally.
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ApplyError {
    /// `what` failed with `source`: a full disk or quota is told apart.
    pub fn io(what: impl Into<String>, source: io::Error) -> ApplyError {
        let what = what.into();
        match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ApplyError::NoSpace { what, source },
            _ => ApplyError::Io { what, source },
        }
    }

    /// Whether this is a full disk (downloads then wait for space).
    pub fn is_no_space(&self) -> bool {
        matches!(self, ApplyError::NoSpace { .. })
    }
}

/// No member sent block `index` of `path` intact; `why` lists what each answered.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("block {index} of {path:?}: {}", why.join("; "))]
pub struct FetchError {
    pub path: String,
    pub index: u32,
    pub why: Vec<String>,
}

/// A batch of local changes did not commit (it stays in the outbox and is sent again).
#[derive(Debug, Error)]
#[error("{why}")]
pub struct CommitError {
    /// What the node said: no leader, no quorum, the leader unreachable, ….
    pub why: String,
}
