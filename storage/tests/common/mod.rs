//! What the storage tests share.

use std::path::Path;
use std::time::{Duration, Instant};

use raftshare_storage::{Store, StoreError};

/// Opens the store at `path`, waiting (at most 10 s) while a store just dropped in this
/// process still holds its lock: sled's background writes keep the file open for a moment
/// after the last handle goes.
pub fn open(path: &Path) -> Store {
    let started = Instant::now();
    try_open(path)
        .unwrap_or_else(|e| panic!("cannot open the store at {} (after {:?}): {e}", path.display(), started.elapsed()))
}

/// [`open`]'s answer, for a test that expects the open to fail (with something other
/// than the lock of a store this process just dropped).
pub fn try_open(path: &Path) -> Result<Store, StoreError> {
    let started = Instant::now();
    loop {
        match Store::open(path) {
            Err(StoreError::Locked { .. }) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            answer => return answer,
        }
    }
}
