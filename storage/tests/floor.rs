//! The floor: a database found behind what it is known to have held is refused, and a
//! database that only went on working (or crashed) is never taken for a damaged one.

mod common;
use common::open;

use std::fs;
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};
use raftshare_raft::{Entry, LogId, Vote};
use raftshare_storage::{Store, StoreError};
use tempfile::TempDir;

const FLOOR: &str = "state-floor";

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Blank }
}

/// Vote `term`, entries `from..=to` appended and applied, the floor raised.
async fn work(store: &Store, term: u64, from: u64, to: u64) {
    let (mut log, mut sm) = (store.log_store(), store.state_machine());
    log.save_vote(&Vote::new(term, 1)).await.unwrap();
    log.blocking_append((from..=to).map(|i| blank(term, i))).await.unwrap();
    sm.apply((from..=to).map(|i| blank(term, i))).await.unwrap();
    store.raise_floor().await.unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn corrupt_detail(dir: &Path) -> String {
    match Store::open(dir) {
        Err(StoreError::Corrupt { detail, .. }) => detail,
        Err(e) => panic!("refused, but not as corrupt: {e}"),
        Ok(_) => panic!("a database behind its floor was opened"),
    }
}

#[tokio::test]
async fn a_database_found_behind_its_floor_is_refused_saying_what_it_lacks() {
    let dir = TempDir::new().unwrap();
    let older = TempDir::new().unwrap();
    {
        let store = open(dir.path());
        work(&store, 1, 0, 3).await;
    }
    // What sled would recover from a torn file: an older state of the same database.
    copy_dir(dir.path(), older.path());
    {
        let store = open(dir.path());
        work(&store, 2, 4, 12).await;
    }
    fs::copy(dir.path().join(FLOOR), older.path().join(FLOOR)).unwrap();
    let detail = corrupt_detail(older.path());
    for words in ["its vote is", "its Raft log ends at entry 3, but it reached entry 12", "file table is at entry 3"] {
        assert!(detail.contains(words), "{detail:?} does not say {words:?}");
    }
    let message = Store::open(older.path()).err().unwrap().to_string();
    assert!(message.contains("corrupt") && message.contains("move it away"), "{message}");

    // An emptied database (sled starts a new one from an empty file): nothing is left.
    let emptied = TempDir::new().unwrap();
    fs::copy(dir.path().join(FLOOR), emptied.path().join(FLOOR)).unwrap();
    let detail = corrupt_detail(emptied.path());
    assert!(detail.contains("vote is gone") && detail.contains("log is empty"), "{detail:?}");

    // The newer database itself opens.
    drop(open(dir.path()));
}

#[tokio::test]
async fn truncating_and_purging_after_the_floor_is_no_false_alarm() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(dir.path());
        let (mut log, mut sm) = (store.log_store(), store.state_machine());
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        log.blocking_append((1..=10).map(|i| blank(1, i))).await.unwrap();
        sm.apply((1..=4).map(|i| blank(1, i))).await.unwrap();
        store.raise_floor().await.unwrap();
        // A new leader takes back what was not committed; a snapshot lets the log go.
        log.truncate(log_id(1, 5)).await.unwrap();
        log.purge(log_id(1, 4)).await.unwrap();
        store.raise_floor().await.unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.log_store().last_index(), None);
}

#[tokio::test]
async fn a_database_without_a_floor_is_accepted_and_gets_one() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(dir.path());
        work(&store, 1, 0, 3).await;
    }
    fs::remove_file(dir.path().join(FLOOR)).unwrap();
    drop(open(dir.path()));
    let text = fs::read_to_string(dir.path().join(FLOOR)).expect("a floor for the older database");
    assert!(text.contains("vote = 1 1 uncommitted") && text.contains("log_end = 3"), "{text}");
    assert!(text.contains("applied = 3"), "{text}");
}

#[test]
fn a_damaged_floor_is_reported_as_a_corrupt_database() {
    let dir = TempDir::new().unwrap();
    drop(open(dir.path()));
    fs::write(dir.path().join(FLOOR), b"vote = ?\n").unwrap();
    let detail = corrupt_detail(dir.path());
    assert!(detail.contains(FLOOR) && detail.contains("does not read back"), "{detail:?}");
}

#[tokio::test]
async fn a_new_database_records_its_vote_as_soon_as_it_is_saved() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    store.log_store().save_vote(&Vote::new(5, 1)).await.unwrap();
    let text = fs::read_to_string(dir.path().join(FLOOR)).unwrap();
    assert!(text.contains("vote = 5 1 uncommitted"), "{text}");
}
