//! Durability under a crash: what the store acknowledged must be on disk even if the
//! process dies right after, before sled's background flusher runs.
//!
//! The test re-runs its own binary as a child that writes, gets the acknowledgement, and
//! aborts; the parent then reopens the database.

use std::process::Command;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use raftshare_raft::{Change, Digest, Entry, FileOp, LogId, Vote};
use raftshare_storage::Store;
use tempfile::TempDir;

const CHILD_DIR: &str = "RAFTSHARE_STORAGE_CRASH_DIR";
const TEST_NAME: &str = "acknowledged_writes_survive_an_abort";

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(2, 1), index)
}

fn entry(index: u64) -> Entry {
    let op = FileOp::Put {
        path: format!("f{index}"),
        size: 1,
        hash: Digest::of(&[index as u8]),
        blocks: vec![Digest::of(&[index as u8])],
        mtime: 0,
        base: None,
    };
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Change { origin: 1, origin_name: "n".into(), at_ms: 0, op, seqs: vec![] }),
    }
}

/// The child: acknowledged writes, then an abort (no destructor, no final flush).
async fn write_then_crash(dir: &str) -> ! {
    let store = Store::open(dir.as_ref()).expect("open the store");
    let mut log = store.log_store();
    let mut sm = store.state_machine();
    log.save_vote(&Vote::new(2, 1)).await.unwrap();
    log.blocking_append((1..=3).map(entry)).await.unwrap();
    sm.apply((1..=2).map(entry)).await.unwrap();
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    log.purge(log_id(1)).await.unwrap();
    // The floor is raised only past flushed state: the reopen below must not take the
    // crash for damage.
    store.raise_floor().await.unwrap();
    log.blocking_append([entry(4)]).await.unwrap();
    // Last, after every flush above: only the outbox's own fsync can save it.
    let outbox = store.outbox();
    outbox.enqueue(FileOp::Delete { path: "f9".into(), base: Some(9) }).unwrap();
    outbox.enqueue_many(vec![FileOp::Delete { path: "f7".into(), base: None }]).unwrap();
    println!("snapshot {}", snapshot.meta.snapshot_id);
    std::process::abort();
}

#[test]
fn acknowledged_writes_survive_an_abort() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        tokio::runtime::Runtime::new().unwrap().block_on(write_then_crash(&dir));
    }
    let dir = TempDir::new().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(!child.status.success(), "the child must abort: {stdout}");
    assert!(stdout.contains("snapshot "), "the child did not get through its writes: {stdout}");

    let store = Store::open(dir.path()).expect("reopen after the crash");
    let mut log = store.log_store();
    let mut sm = store.state_machine();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1)), Some(log_id(4))));
        assert_eq!(log.entries(..), (2..=4).map(entry).collect::<Vec<_>>());
        // The snapshot and the table it stands for were flushed before the purge.
        let snapshot = sm.get_current_snapshot().await.unwrap().expect("the snapshot");
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(2)));
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2)));
        assert_eq!(sm.files().len(), 2);
    });
    let queued: Vec<_> = store.outbox().pending(10).into_iter().map(|p| p.op).collect();
    assert_eq!(
        queued,
        [FileOp::Delete { path: "f9".into(), base: Some(9) }, FileOp::Delete { path: "f7".into(), base: None }]
    );
}
