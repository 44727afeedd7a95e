//! openraft's own storage test suite, run against the sled store.

use openraft::testing::{StoreBuilder, Suite};
use raftshare_raft::{StorageError, TypeConfig};
use raftshare_storage::{LogStore, StateMachine, Store};
use tempfile::TempDir;

/// A fresh store in a temporary folder per test; the folder goes with the guard.
struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("a temporary folder");
        let store = Store::open(dir.path()).expect("open the store");
        Ok((dir, store.log_store(), store.state_machine()))
    }
}

// A plain #[test]: the suite starts a runtime of its own for every case.
#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(TempStoreBuilder) {
        panic!("openraft's storage suite failed: {e}");
    }
}
