//! The sled store beyond openraft's suite: what survives a restart, what applying a
//! change does to the table, snapshots of real tables, and opening errors.

mod common;
use common::open;

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftSnapshotBuilder};
use raftshare_raft::{ApplyResult, Change, Digest, Entry, FileOp, LogId, NodeInfo, OpOutcome, StoredMembership, Vote};
use raftshare_storage::{Store, StoreError};
use tempfile::TempDir;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn put(path: &str, content: &[u8], base: Option<u64>) -> FileOp {
    FileOp::Put {
        path: path.to_owned(),
        size: content.len() as u64,
        hash: Digest::of(content),
        blocks: vec![Digest::of(content)],
        mtime: 1_700_000_000_000_000_000,
        base,
    }
}

fn normal(index: u64, origin_name: &str, op: FileOp) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Change {
            origin: 7,
            origin_name: origin_name.to_owned(),
            at_ms: 1_700_000_000_000 + index as i64,
            op,
            seqs: vec![],
        }),
    }
}

fn membership(index: u64) -> (Entry, Membership<u64, NodeInfo>) {
    let nodes = [(1, NodeInfo { name: "one".into(), addr: "127.0.0.1:7001".into(), ..Default::default() })];
    let m = Membership::new(vec![BTreeSet::from([1])], BTreeMap::from(nodes));
    (Entry { log_id: log_id(1, index), payload: EntryPayload::Membership(m.clone()) }, m)
}

fn blank(index: u64) -> Entry {
    Entry { log_id: log_id(1, index), payload: EntryPayload::Blank }
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = TempDir::new().unwrap();
    let (m, mem) = membership(1);
    let entries = vec![
        m,
        normal(2, "laptop", put("a.txt", b"a", None)),
        normal(3, "laptop", FileOp::Delete { path: "a.txt".into(), base: Some(2) }),
        normal(4, "desk", put("b/c.md", b"c", None)),
        blank(5),
    ];
    let files_before;
    {
        let store = open(dir.path());
        let mut log = store.log_store();
        let mut sm = store.state_machine();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_committed(Some(log_id(1, 4))).await.unwrap();
        sm.apply(entries[..4].to_vec()).await.unwrap();
        files_before = sm.files();
        assert_eq!(files_before.len(), 2);
    }
    // Everything above was dropped: the lock is free and only the disk remains.
    let store = open(dir.path());
    let mut log = store.log_store();
    let mut sm = store.state_machine();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 4)));
    assert_eq!(log.committed(), Some(log_id(1, 4)));
    assert_eq!((log.first_index(), log.last_index()), (Some(1), Some(5)));
    assert_eq!(log.entries(..), entries);
    assert_eq!(log.entries(2..4), entries[1..3]);
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, Some(log_id(1, 5))));

    let (applied, stored) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 4)));
    assert_eq!(sm.last_applied(), Some(log_id(1, 4)));
    assert_eq!(stored, StoredMembership::new(Some(log_id(1, 1)), mem));
    assert_eq!(sm.membership(), stored);
    assert_eq!(sm.files(), files_before);
    assert!(sm.get("a.txt").unwrap().deleted);
    assert_eq!(sm.get("b/c.md").unwrap().version, 4);
    assert_eq!(sm.get("nope"), None);
    assert!(store.size_on_disk() > 0);
}

#[tokio::test]
async fn applying_a_batch_follows_the_table_rules() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    let results = sm.apply([normal(1, "alice", put("a/report.txt", b"v1", None)), blank(2)]).await.unwrap();
    assert_eq!(
        results,
        [
            ApplyResult { outcomes: vec![OpOutcome::Written { path: "a/report.txt".into(), version: 1 }] },
            ApplyResult::default(),
        ]
    );

    let batch = FileOp::Batch(vec![
        put("a/report.txt", b"bob's", None),
        put("new.txt", b"n", None),
        FileOp::Batch(vec![FileOp::Delete { path: "new.txt".into(), base: Some(3) }]),
        put("../outside", b"x", None),
        FileOp::Delete { path: "a/report.txt".into(), base: Some(0) },
        put("a/report.txt", b"v1", Some(0)),
    ]);
    let results = sm.apply([normal(3, "bob", batch)]).await.unwrap();
    let outcomes = &results[0].outcomes;
    assert_eq!(outcomes.len(), 6);
    assert_eq!(
        outcomes[..3],
        [
            OpOutcome::Conflict {
                path: "a/report.txt".into(),
                kept_as: "a/report.conflict-bob-3.txt".into(),
                version: 3
            },
            OpOutcome::Written { path: "new.txt".into(), version: 3 },
            OpOutcome::Deleted { path: "new.txt".into(), version: 3 },
        ]
    );
    assert!(matches!(&outcomes[3], OpOutcome::Rejected { path, .. } if path == "../outside"));
    assert_eq!(
        outcomes[4..],
        [
            OpOutcome::DeleteDropped { path: "a/report.txt".into() },
            OpOutcome::Unchanged { path: "a/report.txt".into() },
        ]
    );

    let paths: Vec<_> = sm.files().into_iter().map(|r| (r.path, r.version, r.deleted)).collect();
    assert_eq!(
        paths,
        [
            ("a/report.conflict-bob-3.txt".to_owned(), 3, false),
            ("a/report.txt".to_owned(), 1, false),
            ("new.txt".to_owned(), 3, true),
        ]
    );
    let copy = sm.get("a/report.conflict-bob-3.txt").unwrap();
    assert_eq!(
        (copy.hash, copy.origin_name.as_str(), copy.modified_at_ms),
        (Digest::of(b"bob's"), "bob", 1_700_000_000_003)
    );
    assert_eq!(sm.last_applied(), Some(log_id(1, 3)));
}

#[tokio::test]
async fn a_snapshot_carries_the_table_to_another_node_and_survives_a_restart() {
    let (dir_l, dir_f) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let leader = open(dir_l.path());
    let mut sm_l = leader.state_machine();
    let (m, _) = membership(1);
    sm_l.apply([m, normal(2, "l", put("x/y.bin", b"y", None)), normal(3, "l", put("z", b"z", None))]).await.unwrap();
    let built = sm_l.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 3)));

    // A second build of the same state gets another id.
    let again = sm_l.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_ne!(again.meta.snapshot_id, built.meta.snapshot_id);

    {
        let follower = open(dir_f.path());
        let mut sm_f = follower.state_machine();
        // What the follower had is replaced entirely.
        sm_f.apply([normal(1, "f", put("stale.txt", b"s", None))]).await.unwrap();
        let mut received = sm_f.begin_receiving_snapshot().await.unwrap();
        *received = *built.snapshot.clone();
        sm_f.install_snapshot(&built.meta, received).await.unwrap();
        assert_eq!(sm_f.files(), sm_l.files());
    }
    let follower = open(dir_f.path());
    let mut sm_f = follower.state_machine();
    assert_eq!(sm_f.files(), sm_l.files());
    assert_eq!(sm_f.get("stale.txt"), None);
    assert_eq!(sm_f.applied_state().await.unwrap(), sm_l.applied_state().await.unwrap());
    let current = sm_f.get_current_snapshot().await.unwrap().expect("the installed snapshot");
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    sm.apply([normal(1, "n", put("keep.txt", b"k", None))]).await.unwrap();
    let mut meta = sm.get_snapshot_builder().await.build_snapshot().await.unwrap().meta;
    meta.snapshot_id = "garbage".into();
    let garbage = Box::new(std::io::Cursor::new(vec![0xff; 5]));
    assert!(sm.install_snapshot(&meta, garbage).await.is_err());
    assert_eq!(sm.files().len(), 1);
    assert_eq!(sm.last_applied(), Some(log_id(1, 1)));
}

#[tokio::test]
async fn purge_and_truncate_are_kept_across_a_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(dir.path());
        let mut log = store.log_store();
        log.blocking_append((1..=10).map(blank)).await.unwrap();
        log.purge(log_id(1, 3)).await.unwrap();
        log.truncate(log_id(1, 9)).await.unwrap();
    }
    let store = open(dir.path());
    let mut log = store.log_store();
    assert_eq!((log.first_index(), log.last_index()), (Some(4), Some(8)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 3)), Some(log_id(1, 8))));
    assert_eq!(log.entries(..).len(), 5);
    assert!(log.entries(5..5).is_empty());
    assert!(log.entries(20..).is_empty());
}

#[tokio::test]
async fn the_log_bounds_count_the_kept_entries_even_when_a_purge_kept_none() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    let mut log = store.log_store();
    assert_eq!(log.bounds(), None, "nothing appended yet");
    log.blocking_append((1..=5).map(blank)).await.unwrap();
    assert_eq!(log.bounds(), Some((1, 5)));
    log.purge(log_id(1, 2)).await.unwrap();
    assert_eq!(log.bounds(), Some((3, 5)));
    // Everything applied went into a snapshot: the log is empty, the next entry is 6.
    log.purge(log_id(1, 5)).await.unwrap();
    assert_eq!((log.first_index(), log.last_index()), (None, None));
    assert_eq!(log.bounds(), Some((6, 5)));
    log.blocking_append([blank(6)]).await.unwrap();
    assert_eq!(log.bounds(), Some((6, 6)));
}

#[test]
fn a_second_open_says_the_database_is_in_use() {
    let dir = TempDir::new().unwrap();
    let _first = open(dir.path());
    let err = Store::open(dir.path()).err().expect("the second open must fail");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("in use by another raftshare process"), "{message}");
    assert!(message.contains(&dir.path().display().to_string()), "{message}");
}

#[test]
fn a_damaged_mark_is_reported_at_open() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(dir.path());
        // Simulate damage: a vote that does not decode.
        store.db().open_tree("raft_meta").unwrap().insert("vote", &[1u8, 2][..]).unwrap();
        store.db().flush().unwrap();
    }
    let err = common::try_open(dir.path()).err().expect("a damaged vote must be reported");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

/// `(path, version, deleted)` of each record, to compare briefly.
fn summary(records: &[raftshare_raft::FileRecord]) -> Vec<(String, u64, bool)> {
    records.iter().map(|r| (r.path.clone(), r.version, r.deleted)).collect()
}

fn s(path: &str, version: u64, deleted: bool) -> (String, u64, bool) {
    (path.to_owned(), version, deleted)
}

#[tokio::test]
async fn changed_since_lists_what_was_written_after_an_index_once_by_version() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    assert!(sm.changed_since(None, usize::MAX).is_empty());
    sm.apply([
        normal(1, "n", put("a", b"1", None)),
        normal(2, "n", put("b", b"1", None)),
        blank(3),
        normal(4, "n", put("c", b"1", None)),
    ])
    .await
    .unwrap();
    assert_eq!(summary(&sm.changed_since(None, usize::MAX)), [s("a", 1, false), s("b", 2, false), s("c", 4, false)]);
    assert_eq!(summary(&sm.changed_since(Some(2), usize::MAX)), [s("c", 4, false)]);

    sm.apply([
        // Overwrites `a`: its old version must not be listed any more.
        normal(5, "n", put("a", b"2", Some(1))),
        normal(6, "n", FileOp::Delete { path: "b".into(), base: Some(2) }),
        // Two paths at one version come by path; the stale put leaves a conflict copy.
        normal(7, "bob", FileOp::Batch(vec![put("z", b"z", None), put("m", b"m", None), put("c", b"x", None)])),
    ])
    .await
    .unwrap();
    let all = sm.changed_since(None, usize::MAX);
    assert_eq!(
        summary(&all),
        [
            s("c", 4, false),
            s("a", 5, false),
            s("b", 6, true),
            s("c.conflict-bob-7", 7, false),
            s("m", 7, false),
            s("z", 7, false)
        ]
    );
    assert_eq!(all.len(), sm.files().len(), "every record is listed once");
    assert_eq!(sm.changed_since(Some(4), usize::MAX), all[1..]);
    assert_eq!(sm.changed_since(Some(5), 2), all[2..4]);
    assert_eq!(sm.changed_since(Some(0), 1), all[..1]);
    assert!(sm.changed_since(Some(7), usize::MAX).is_empty());
    assert!(sm.changed_since(Some(u64::MAX), usize::MAX).is_empty());
    assert!(sm.changed_since(None, 0).is_empty());
    assert_eq!(sm.changed_since(Some(5), usize::MAX)[0], sm.get("b").unwrap());
    // Pages of two: version 7's three records span two pages, none lost or repeated.
    let mut paged = sm.changed_since(None, 2);
    while let Some(last) = paged.last().cloned() {
        let next = sm.changed_after(&last, 2);
        if next.is_empty() {
            break;
        }
        paged.extend(next);
    }
    assert_eq!(paged, all);
    assert_eq!(sm.changed_after(&all[3], usize::MAX), all[4..]);
    assert!(sm.changed_after(&all[5], usize::MAX).is_empty());

    // Settled versions are left out, wherever they fall in a page.
    let unsettled: Vec<_> = all.iter().filter(|r| r.version != 5 && r.version != 7).cloned().collect();
    assert_eq!(summary(&unsettled), [s("c", 4, false), s("b", 6, true)]);
    assert_eq!(sm.changed_since_but(None, usize::MAX, |v| v == 5 || v == 7), unsettled);
    assert_eq!(sm.changed_since_but(None, 1, |v| v == 4), all[1..2], "a page is full of unsettled records");
    assert!(sm.changed_since_but(Some(4), usize::MAX, |_| true).is_empty());
    let mut paged = sm.changed_since_but(None, 1, |v| v == 5);
    while let Some(last) = paged.last().cloned() {
        let next = sm.changed_after_but(&last, 1, |v| v == 5);
        if next.is_empty() {
            break;
        }
        paged.extend(next);
    }
    assert_eq!(paged, all.iter().filter(|r| r.version != 5).cloned().collect::<Vec<_>>());
}

#[tokio::test]
async fn changed_since_follows_an_installed_snapshot_and_a_reopen() {
    let (dir_l, dir_f) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let leader = open(dir_l.path());
    let mut sm_l = leader.state_machine();
    sm_l.apply([
        normal(1, "l", put("x", b"1", None)),
        normal(2, "l", put("y", b"1", None)),
        normal(3, "l", put("x", b"2", Some(1))),
    ])
    .await
    .unwrap();
    let built = sm_l.get_snapshot_builder().await.build_snapshot().await.unwrap();
    {
        let follower = open(dir_f.path());
        let mut sm_f = follower.state_machine();
        let mut applied = sm_f.subscribe();
        sm_f.apply([normal(1, "f", put("stale", b"s", None)), normal(2, "f", put("x", b"old", None))]).await.unwrap();
        assert_eq!(*applied.borrow_and_update(), Some(2));
        sm_f.install_snapshot(&built.meta, built.snapshot.clone()).await.unwrap();
        assert!(applied.has_changed().unwrap());
        assert_eq!(*applied.borrow_and_update(), Some(3));
        assert_eq!(summary(&sm_f.changed_since(None, usize::MAX)), [s("y", 2, false), s("x", 3, false)]);
        assert_eq!(sm_f.changed_since(Some(2), usize::MAX), sm_l.changed_since(Some(2), usize::MAX));
    }
    let follower = open(dir_f.path());
    let sm_f = follower.state_machine();
    assert_eq!(*sm_f.subscribe().borrow(), Some(3));
    assert_eq!(summary(&sm_f.changed_since(None, usize::MAX)), [s("y", 2, false), s("x", 3, false)]);
}

#[tokio::test]
async fn a_table_without_the_entry_index_gets_one_at_open() {
    let dir = TempDir::new().unwrap();
    let expected = {
        let store = open(dir.path());
        let mut sm = store.state_machine();
        sm.apply([
            normal(1, "n", put("a", b"1", None)),
            normal(2, "n", put("b", b"1", None)),
            normal(3, "n", put("a", b"2", Some(1))),
        ])
        .await
        .unwrap();
        let expected = sm.changed_since(None, usize::MAX);
        assert_eq!(summary(&expected), [s("b", 2, false), s("a", 3, false)]);
        // Make it look like a database of the older layout: a version-index key per
        // record instead of the entry index.
        let tree = store.db().open_tree("state_machine").unwrap();
        for key in tree.scan_prefix("e/").keys() {
            tree.remove(key.unwrap()).unwrap();
        }
        tree.remove("m/entry_index").unwrap();
        for record in sm.files() {
            let key = [b"v/".as_slice(), &record.version.to_be_bytes(), record.path.as_bytes()].concat();
            tree.insert(key, &[][..]).unwrap();
        }
        tree.insert("m/version_index", &[][..]).unwrap();
        assert!(sm.changed_since(None, usize::MAX).is_empty());
        expected
    };
    let store = open(dir.path());
    assert_eq!(store.state_machine().changed_since(None, usize::MAX), expected);
    let tree = store.db().open_tree("state_machine").unwrap();
    assert_eq!(tree.scan_prefix("v/").count(), 0, "the older index is gone");
    assert!(tree.get("m/version_index").unwrap().is_none());
}

#[tokio::test]
async fn subscribers_see_the_applied_index_move() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    let mut applied = sm.subscribe();
    assert_eq!(*applied.borrow_and_update(), None);

    let waiter =
        tokio::spawn(async move { applied.wait_for(|index| *index >= Some(3)).await.map(|index| *index).unwrap() });
    sm.apply([blank(1), normal(2, "n", put("a", b"1", None))]).await.unwrap();
    // A subscriber of another clone sees the same feed.
    let mut late = store.state_machine().subscribe();
    assert_eq!(*late.borrow_and_update(), Some(2));
    sm.apply([normal(3, "n", put("b", b"1", None))]).await.unwrap();
    let seen = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert_eq!(seen, Some(3));
    assert!(late.has_changed().unwrap());
    assert_eq!(*late.borrow(), Some(3));
}

fn rotation(epoch: u64, members: &[u64]) -> FileOp {
    let sealed = members.iter().map(|m| (*m, serde_bytes::ByteBuf::from(vec![*m as u8; 48]))).collect();
    FileOp::RotateKey(raftshare_raft::KeyRotation { epoch, sealed })
}

/// An entry of `op` proposed by `origin`, written by leader 1 (as `log_id` makes them).
fn proposed_by(origin: u64, index: u64, op: FileOp) -> Entry {
    let mut entry = normal(index, "l", op);
    if let EntryPayload::Normal(change) = &mut entry.payload {
        change.origin = origin;
    }
    entry
}

fn rejected_because(result: &ApplyResult, why: &str) -> bool {
    matches!(&result.outcomes[..], [OpOutcome::Rejected { reason, .. }] if reason.contains(why))
}

#[tokio::test]
async fn only_the_leaders_own_next_rotation_is_taken_and_a_refused_one_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    let results = sm
        .apply([
            // A member's forgery (origin 7, written by leader 1), at the next epoch.
            proposed_by(7, 1, rotation(1, &[7])),
            // The leader's own, skipping ahead, and at the last epoch there is.
            proposed_by(1, 2, rotation(5, &[1])),
            proposed_by(1, 3, rotation(u64::MAX, &[1])),
            // Hidden in a batch.
            proposed_by(1, 4, FileOp::Batch(vec![rotation(1, &[1])])),
        ])
        .await
        .unwrap();
    assert!(rejected_because(&results[0], "proposed by node 7"), "{:?}", results[0]);
    assert!(rejected_because(&results[1], "not the next one"), "{:?}", results[1]);
    assert!(rejected_because(&results[2], "not the next one"), "{:?}", results[2]);
    assert!(rejected_because(&results[3], "inside a batch"), "{:?}", results[3]);
    assert_eq!(sm.key_rotation(), None, "a refused rotation is not recorded");
    // The leader's next rotation is still rotation 1.
    let results = sm.apply([proposed_by(1, 5, rotation(1, &[1, 2]))]).await.unwrap();
    assert_eq!(results[0].outcomes, [OpOutcome::KeyRotated { epoch: 1 }]);
    assert_eq!(sm.key_rotation().map(|r| r.epoch), Some(1));
}

#[tokio::test]
async fn the_latest_key_rotation_is_kept_refused_when_not_next_and_carried_by_snapshots() {
    let (dir_l, dir_f) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let leader = open(dir_l.path());
    let mut sm = leader.state_machine();
    assert_eq!(sm.key_rotation(), None);
    let results =
        sm.apply([proposed_by(1, 1, rotation(1, &[1, 2])), proposed_by(1, 2, rotation(1, &[3]))]).await.unwrap();
    assert_eq!(results[0].outcomes, [OpOutcome::KeyRotated { epoch: 1 }]);
    assert!(rejected_because(&results[1], "not the next one"), "{:?}", results[1]);
    sm.apply([proposed_by(1, 3, rotation(2, &[1, 3]))]).await.unwrap();
    let kept = sm.key_rotation().expect("a rotation");
    assert_eq!((kept.epoch, kept.sealed.keys().copied().collect::<Vec<_>>()), (2, vec![1, 3]));

    let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    {
        let follower = open(dir_f.path());
        let mut sm_f = follower.state_machine();
        let mut received = sm_f.begin_receiving_snapshot().await.unwrap();
        *received = *built.snapshot.clone();
        sm_f.install_snapshot(&built.meta, received).await.unwrap();
    }
    assert_eq!(open(dir_f.path()).state_machine().key_rotation(), Some(kept.clone()));
    drop((sm, leader));
    assert_eq!(open(dir_l.path()).state_machine().key_rotation(), Some(kept), "kept across a reopen");
}

#[test]
fn the_whole_file_locator_of_an_older_database_is_dropped_at_open() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("db");
    {
        let store = open(&path);
        store
            .local_index()
            .put(
                "a",
                &raftshare_storage::LocalEntry {
                    size: 1,
                    mtime: 1,
                    hash: Digest::of(b"a"),
                    blocks: vec![Digest::of(b"a")],
                    version: Some(1),
                },
            )
            .unwrap();
        // What an older node wrote beside its local index.
        store.db().open_tree("local_hashes").unwrap().insert(b"some key", &[][..]).unwrap();
        store.db().flush().unwrap();
    }
    let store = open(&path);
    let names: Vec<Vec<u8>> = store.db().tree_names().into_iter().map(|n| n.to_vec()).collect();
    assert!(!names.contains(&b"local_hashes".to_vec()), "the old tree is gone");
    assert_eq!(store.local_index().find_block(&Digest::of(b"a")), [("a".to_owned(), 0)]);
}

fn delete(path: &str, base: u64) -> FileOp {
    FileOp::Delete { path: path.to_owned(), base: Some(base) }
}

fn forgotten(results: &[ApplyResult]) -> Vec<u64> {
    results
        .iter()
        .flat_map(|r| &r.outcomes)
        .filter_map(|o| match o {
            OpOutcome::Forgotten { tombstones } => Some(*tombstones),
            _ => None,
        })
        .collect()
}

/// The key of `version`'s entry-index chunk that starts at `first` (`""`: the prefix of
/// all of that version's chunks).
fn chunk_key(version: u64, first: &str) -> Vec<u8> {
    [b"e/".as_slice(), &version.to_be_bytes(), first.as_bytes()].concat()
}

/// `m/forgotten_upto` of the state machine tree, as stored.
const FORGET_MARK: &str = "m/forgotten_upto";

#[tokio::test]
async fn a_forget_reads_only_above_the_last_one_and_its_mark_is_kept() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    let mut sm = store.state_machine();
    assert_eq!(sm.forgotten_upto(), None);
    let abc = FileOp::Batch(vec![put("a", b"a", None), put("b", b"b", None), put("c", b"c", None)]);
    sm.apply([normal(1, "n", abc), normal(2, "n", delete("a", 1)), normal(3, "n", delete("b", 1))]).await.unwrap();

    let results = sm.apply([normal(4, "n", FileOp::ForgetDeleted { upto: 2 })]).await.unwrap();
    assert_eq!(forgotten(&results), [1], "only a's tombstone is at or below 2");
    assert_eq!(sm.forgotten_upto(), Some(2));
    assert_eq!(summary(&sm.files()), [s("b", 3, true), s("c", 1, false)]);

    // The entry index at or below the mark is never read again: a damaged chunk there
    // (its paths cannot be tombstones any more) does not stop the next forget.
    let tree = store.db().open_tree("state_machine").unwrap();
    let chunk_key = chunk_key(1, "zz");
    tree.insert(chunk_key.clone(), &[0xff, 0xff][..]).unwrap();

    // An `upto` past its own entry stops before the entry.
    let results =
        sm.apply([normal(5, "n", delete("c", 1)), normal(6, "n", FileOp::ForgetDeleted { upto: 100 })]).await.unwrap();
    assert_eq!(forgotten(&results), [2], "b's and c's tombstones");
    assert_eq!(sm.forgotten_upto(), Some(5));
    // A lower `upto` never lowers the mark.
    let results = sm.apply([normal(7, "n", FileOp::ForgetDeleted { upto: 3 })]).await.unwrap();
    assert_eq!(forgotten(&results), [0]);
    assert_eq!(sm.forgotten_upto(), Some(5));
    tree.remove(chunk_key).unwrap();

    // A damaged mark counts as none: the next forget reads from the start, same outcome.
    tree.insert(FORGET_MARK, &[1u8, 2][..]).unwrap();
    assert_eq!(sm.forgotten_upto(), None);
    let results = sm
        .apply([
            normal(8, "n", put("d", b"d", None)),
            normal(9, "n", delete("d", 8)),
            normal(10, "n", FileOp::ForgetDeleted { upto: 9 }),
        ])
        .await
        .unwrap();
    assert_eq!(forgotten(&results), [1]);
    assert_eq!(sm.forgotten_upto(), Some(9));
    drop((sm, tree));
    drop(store);

    let store = open(dir.path());
    let mut sm = store.state_machine();
    assert_eq!(sm.forgotten_upto(), Some(9), "kept across a reopen");

    // A snapshot does not carry the mark: a node that installs one starts from 0.
    let other_dir = TempDir::new().unwrap();
    let other = open(other_dir.path());
    let mut sm_o = other.state_machine();
    sm_o.apply([normal(1, "o", put("x", b"x", None)), normal(2, "o", delete("x", 1))]).await.unwrap();
    sm_o.apply([normal(3, "o", FileOp::ForgetDeleted { upto: 2 })]).await.unwrap();
    assert_eq!(sm_o.forgotten_upto(), Some(2));
    let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let mut received = sm_o.begin_receiving_snapshot().await.unwrap();
    *received = *built.snapshot.clone();
    sm_o.install_snapshot(&built.meta, received).await.unwrap();
    assert_eq!(sm_o.forgotten_upto(), None);
    assert_eq!(sm_o.files(), sm.files());
}

#[tokio::test]
async fn a_damaged_chunk_of_the_entry_index_is_dropped_and_built_again_at_the_next_open() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(dir.path());
        let mut sm = store.state_machine();
        sm.apply([normal(1, "n", FileOp::Batch(vec![put("a", b"a", None), put("b", b"b", None)]))]).await.unwrap();
        let tree = store.db().open_tree("state_machine").unwrap();
        tree.insert(chunk_key(1, "a"), &[0xff, 0xff][..]).unwrap();
        // An edit of b leaves that chunk: it is applied all the same, and the chunk goes.
        let results = sm.apply([normal(2, "n", put("b", b"2", Some(1)))]).await.unwrap();
        assert_eq!(results[0].outcomes, [OpOutcome::Written { path: "b".into(), version: 2 }]);
        assert_eq!(summary(&sm.changed_since(None, usize::MAX)), [s("b", 2, false)]);
    }
    let store = open(dir.path());
    let mut sm = store.state_machine();
    assert_eq!(
        summary(&sm.changed_since(None, usize::MAX)),
        [s("a", 1, false), s("b", 2, false)],
        "built again from the records"
    );

    // A damaged chunk met by a forget, or by a reader, does not stop the node either.
    let tree = store.db().open_tree("state_machine").unwrap();
    tree.insert(chunk_key(2, "zz"), &[0xff][..]).unwrap();
    let results =
        sm.apply([normal(3, "n", delete("b", 2)), normal(4, "n", FileOp::ForgetDeleted { upto: 3 })]).await.unwrap();
    assert_eq!(forgotten(&results), [1], "b's tombstone, in a chunk that reads");
    assert_eq!(summary(&sm.changed_since(None, usize::MAX)), [s("a", 1, false)]);
    drop((sm, tree));
    drop(store);
    let store = open(dir.path());
    let tree = store.db().open_tree("state_machine").unwrap();
    assert_eq!(tree.scan_prefix(chunk_key(2, "")).count(), 0, "rebuilt");
    assert_eq!(summary(&store.state_machine().changed_since(None, usize::MAX)), [s("a", 1, false)]);
}

#[tokio::test]
async fn a_forget_that_cannot_read_everything_leaves_its_mark_where_it_was() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(dir.path());
        let mut sm = store.state_machine();
        sm.apply([normal(1, "n", FileOp::Batch(vec![put("a", b"a", None), put("b", b"b", None)]))]).await.unwrap();
        sm.apply([normal(2, "n", delete("a", 1))]).await.unwrap();
        // a's tombstone is in a chunk that will not read: it stays, and so does the mark.
        let tree = store.db().open_tree("state_machine").unwrap();
        tree.insert(chunk_key(2, "a"), &[0xff][..]).unwrap();
        let results = sm.apply([normal(3, "n", FileOp::ForgetDeleted { upto: 2 })]).await.unwrap();
        assert_eq!(forgotten(&results), [0]);
        assert_eq!(sm.forgotten_upto(), None, "not past a tombstone it could not see");
    }
    // Rebuilt at the open: the next forget finds it.
    let store = open(dir.path());
    let mut sm = store.state_machine();
    assert_eq!(sm.tombstones_between(sm.forgotten_upto(), 4), 1, "the leader counts it");
    let results = sm.apply([normal(4, "n", FileOp::ForgetDeleted { upto: 3 })]).await.unwrap();
    assert_eq!(forgotten(&results), [1]);
    assert_eq!(sm.forgotten_upto(), Some(3));
    assert_eq!(summary(&sm.files()), [s("b", 1, false)]);

    // A record that will not read in the forget's range: applied all the same (openraft
    // stops a node whose apply fails), the mark stays.
    sm.apply([normal(5, "n", FileOp::Batch(vec![put("x", b"x", None), put("y", b"y", None)]))]).await.unwrap();
    sm.apply([normal(6, "n", delete("x", 5))]).await.unwrap();
    let tree = store.db().open_tree("state_machine").unwrap();
    let y = tree.get("f/y").unwrap().unwrap();
    tree.insert("f/y", &[0xff][..]).unwrap();
    let results = sm.apply([normal(7, "n", FileOp::ForgetDeleted { upto: 6 })]).await.unwrap();
    assert_eq!(forgotten(&results), [1], "x's tombstone, which reads");
    assert_eq!(sm.forgotten_upto(), Some(3));
    tree.insert("f/y", y).unwrap();

    // A forget never reaches its own entry: a delete beside it keeps its tombstone (no
    // applier has seen it yet), above the mark, for a later forget.
    let both = FileOp::Batch(vec![FileOp::ForgetDeleted { upto: 99 }, delete("y", 5)]);
    sm.apply([normal(8, "n", both)]).await.unwrap();
    assert_eq!(sm.forgotten_upto(), Some(7));
    assert!(sm.get("y").is_some_and(|r| r.deleted && r.version == 8));
    let results = sm.apply([normal(9, "n", FileOp::ForgetDeleted { upto: 8 })]).await.unwrap();
    assert_eq!(forgotten(&results), [1]);
    assert_eq!(summary(&sm.files()), [s("b", 1, false)]);
}
