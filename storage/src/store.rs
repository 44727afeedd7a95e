//! [`Store`]: the node's one sled database, opened once, shared by the Raft log store,
//! the state machine, the local index and the outbox.
//!
//! It owns opening (with a clear message when another process holds the database, or
//! when it is damaged — including damage sled recovers from silently, found by comparing
//! the database with its floor) and handing out the handles; it does not know Raft.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::codec::{
    CodecError, LOCAL_BLOCKS_TREE, LOCAL_HASHES_TREE, LOCAL_INDEX_TREE, LOCAL_META_TREE, LOG_TREE, RAFT_META_TREE,
    STATE_MACHINE_TREE,
};
use crate::floor::{Facts, Floor};
use crate::local::LocalIndex;
use crate::log_store::LogStore;
use crate::outbox::Outbox;
use crate::state_machine::StateMachine;

/// sled's page cache: its default (1 GiB) is far more than a file table needs, and RSS
/// matters on a laptop sharing a folder.
const CACHE_CAPACITY: u64 = 4 << 20;

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (most likely another `raftshare run`) has the database open.
    #[error(
        "the database at {} is in use by another raftshare process: stop that process, or use another --data-dir",
        path.display()
    )]
    Locked {
        /// The database folder.
        path: PathBuf,
    },
    /// The database is damaged.
    #[error(
        "the database at {} is corrupt ({detail}): move it away and set this computer up as a new node (`raftshare \
         init` with a new data folder, then `raftshare join`: a node that lost its database must not rejoin under its \
         old id, it may have lost its vote), then `raftshare remove` the old node from another member",
        path.display()
    )]
    Corrupt {
        /// The database folder.
        path: PathBuf,
        /// What was found damaged.
        detail: String,
    },
    /// Any other failure (permissions, disk full, …).
    #[error("cannot open the database at {}: {source}", path.display())]
    Open {
        /// The database folder.
        path: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
}

/// The floor (the record of what the database holds) could not be brought up to date.
/// The database itself is unharmed; only a later check at open knows less.
#[derive(Debug, thiserror::Error)]
#[error("cannot record what the database at {} holds: {reason}", path.display())]
pub struct FloorError {
    path: PathBuf,
    reason: String,
}

impl StoreError {
    fn from_sled(path: &Path, error: sled::Error) -> Self {
        let path = path.to_owned();
        match error {
            // sled reports its file lock as a plain I/O error; its text is the only sign.
            sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => StoreError::Locked { path },
            sled::Error::Corruption { .. } => StoreError::Corrupt { path, detail: error.to_string() },
            // A damaged `conf` file reads as "a database of an older sled": it is damage.
            sled::Error::Unsupported(ref what) => {
                StoreError::Corrupt { path, detail: format!("its configuration file does not read back: {what}") }
            }
            source => StoreError::Open { path, source },
        }
    }

    fn from_codec(path: &Path, error: CodecError) -> Self {
        match error {
            CodecError::Sled(e) => StoreError::from_sled(path, e),
            other => StoreError::Corrupt { path: path.to_owned(), detail: other.to_string() },
        }
    }
}

/// The node's sled database, with the trees of the Raft log, the file table, the local
/// index and the outbox.
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    log: LogStore,
    state_machine: StateMachine,
    local_index: LocalIndex,
    outbox: Outbox,
    floor: Arc<Floor>,
}

impl Store {
    /// Opens (or creates) the database in the folder `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY)
            .open()
            .map_err(|e| StoreError::from_sled(path, e))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| StoreError::from_sled(path, e));
        let corrupt = |detail| StoreError::Corrupt { path: path.to_owned(), detail };
        let (floor, saved) = Floor::read(path).map_err(corrupt)?;
        let floor = Arc::new(floor);
        let log = LogStore::new(db.clone(), tree(LOG_TREE)?, tree(RAFT_META_TREE)?, floor.clone());
        let (applied, _) = watch::channel(None);
        let state_machine =
            StateMachine::new(db.clone(), tree(STATE_MACHINE_TREE)?, Arc::new(Mutex::new(())), Arc::new(applied));
        let local_index = LocalIndex::new(tree(LOCAL_INDEX_TREE)?, tree(LOCAL_BLOCKS_TREE)?, tree(LOCAL_META_TREE)?);
        // Read every mark back now: a damaged database is reported at start, with its
        // path, rather than as an openraft storage error once the node runs.
        let codec = |e| StoreError::from_codec(path, e);
        log.check().map_err(codec)?;
        state_machine.check().map_err(codec)?;
        local_index.check().map_err(codec)?;
        // Before anything is written: sled may have recovered an older state from a
        // damaged file, and starting from it would break Raft's promises (a vote or
        // committed entries forgotten).
        let held = facts(&log, &state_machine).map_err(codec)?;
        if let Some(detail) = saved.and_then(|saved| held.shortfall(&saved)) {
            return Err(corrupt(detail));
        }
        state_machine.ensure_entry_index().map_err(codec)?;
        let outbox = Outbox::open(db.clone()).map_err(codec)?;
        // Older databases have a locator of whole-file hashes that nothing read: its
        // space is given back.
        db.drop_tree(LOCAL_HASHES_TREE).map_err(|e| StoreError::from_sled(path, e))?;
        state_machine.announce_applied().map_err(codec)?;
        if saved.is_none() {
            // A new database, or one from before floors: what it holds now is its floor.
            let recorded =
                db.flush().map_err(|e| e.to_string()).and_then(|_| floor.raise(held).map_err(|e| e.to_string()));
            if let Err(e) = recorded {
                tracing::warn!(path = %floor.path().display(), "cannot record what the database holds: {e}");
            }
        }
        Ok(Store { path: path.to_owned(), db, log, state_machine, local_index, outbox, floor })
    }

    /// Records what the database holds now as its floor, once sled has flushed it: an
    /// open that later finds the database behind it refuses it as damaged. Cheap when
    /// nothing changed (a flush with nothing to write, no file write); call it now and
    /// then while the node runs, and when it stops.
    pub async fn raise_floor(&self) -> Result<(), FloorError> {
        let failed = |reason: String| FloorError { path: self.path.clone(), reason };
        // Read before the flush: the flush makes at least this much durable.
        let held = facts(&self.log, &self.state_machine).map_err(|e| failed(e.to_string()))?;
        self.db.flush_async().await.map_err(|e| failed(format!("sled cannot flush: {e}")))?;
        let floor = self.floor.clone();
        match tokio::task::spawn_blocking(move || floor.raise(held)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failed(format!("cannot write {}: {e}", self.floor.path().display()))),
            Err(e) => Err(failed(e.to_string())),
        }
    }

    /// The Raft log store (give it to `openraft::Raft::new`; clones share the database).
    pub fn log_store(&self) -> LogStore {
        self.log.clone()
    }

    /// The state machine holding the file table (give it to `openraft::Raft::new`).
    pub fn state_machine(&self) -> StateMachine {
        self.state_machine.clone()
    }

    /// What this node has on disk in its shared folder (clones share the database).
    pub fn local_index(&self) -> LocalIndex {
        self.local_index.clone()
    }

    /// The durable queue of local changes waiting to be committed (clones share the database).
    pub fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    /// The folder the database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sled database itself, for trees of the node's own. The trees `raft_log`,
    /// `raft_meta`, `state_machine`, `local_index`, `local_blocks`, `local_hashes`,
    /// `local_meta` and `outbox_queue` (and older databases' `outbox` and `outbox_seq`)
    /// belong to this crate.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Bytes the database takes on disk (0 if sled cannot tell).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or_else(|e| {
            tracing::warn!(path = %self.path.display(), "cannot measure the database: {e}");
            0
        })
    }
}

/// What the database holds now, as the floor counts it.
fn facts(log: &LogStore, state_machine: &StateMachine) -> Result<Facts, crate::codec::CodecError> {
    Ok(Facts::of(log.vote()?, log.log_end()?, state_machine.read_last_applied()?))
}
