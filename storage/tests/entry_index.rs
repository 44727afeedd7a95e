//! The entry index against the table it indexes: whatever entries wrote, deleted and
//! forgot, "what changed after N" lists every current record exactly once, by version
//! then path, in pages of any size, before and after a reopen and a rebuild.

mod common;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;
use raftshare_raft::{Change, Digest, Entry, FileOp, FileRecord, LogId};
use raftshare_storage::{StateMachine, Store};
use tempfile::TempDir;

/// More paths than one chunk holds, so big entries span chunks.
const PATHS: u16 = 700;

#[derive(Debug, Clone)]
enum Step {
    /// Put (true) or delete (false) each of these paths, in one entry.
    Entry(Vec<(u16, bool)>),
    /// Forget the tombstones up to this many entries back.
    Forget(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop::collection::vec((0..PATHS, prop::bool::weighted(0.7)), 1..600).prop_map(Step::Entry),
        1 => (0u64..4).prop_map(Step::Forget),
    ]
}

fn path(id: u16) -> String {
    format!("d{}/f{id:04}", id % 3)
}

fn entry(index: u64, op: FileOp) -> Entry {
    let change = Change { origin: 1, origin_name: "n".into(), at_ms: 0, op, seqs: vec![] };
    Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(change) }
}

/// Every page of `changed_since(None)` of size `limit`, joined.
fn paged(sm: &StateMachine, limit: usize) -> Vec<FileRecord> {
    let mut all = sm.changed_since(None, limit);
    let mut last = all.last().cloned();
    while let Some(after) = last {
        let page = sm.changed_after(&after, limit);
        assert!(page.len() <= limit);
        last = page.last().cloned();
        all.extend(page);
    }
    all
}

fn check(sm: &StateMachine) -> Result<(), TestCaseError> {
    let mut want = sm.files();
    want.sort_by(|a, b| (a.version, &a.path).cmp(&(b.version, &b.path)));
    prop_assert_eq!(&sm.changed_since(None, usize::MAX), &want);
    for limit in [1, 7, 300] {
        prop_assert_eq!(&paged(sm, limit), &want, "pages of {}", limit);
    }
    let last = want.last().map_or(0, |r| r.version);
    for after in [0, last / 2, last.saturating_sub(1)] {
        let since: Vec<_> = want.iter().filter(|r| r.version > after).cloned().collect();
        prop_assert_eq!(&sm.changed_since(Some(after), usize::MAX), &since, "after {}", after);
    }
    let tombstones = want.iter().filter(|r| r.deleted).count() as u64;
    prop_assert_eq!(sm.tombstones_between(None, last), tombstones);
    Ok(())
}

/// Every path the entry index holds, with its version: each record's path once, at its
/// version (a path that moved on leaves nothing behind).
fn indexed(store: &Store) -> Vec<(u64, String)> {
    let tree = store.db().open_tree("state_machine").unwrap();
    let mut all = Vec::new();
    for item in tree.scan_prefix("e/") {
        let (key, value) = item.unwrap();
        let version = u64::from_be_bytes(key[2..10].try_into().unwrap());
        let paths: Vec<String> = bincode::deserialize(&value).unwrap();
        assert!(paths.len() <= 256, "a chunk of {} paths", paths.len());
        all.extend(paths.into_iter().map(|p| (version, p)));
    }
    all
}

fn check_index(store: &Store) -> Result<(), TestCaseError> {
    let mut want: Vec<_> = store.state_machine().files().into_iter().map(|r| (r.version, r.path)).collect();
    want.sort();
    prop_assert_eq!(indexed(store), want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn changes_are_listed_once_by_version_whatever_was_applied(steps in prop::collection::vec(step(), 1..8)) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = TempDir::new().unwrap();
        {
            let store = common::open(dir.path());
            let mut sm = store.state_machine();
            let mut index: u64 = 0;
            for step in &steps {
                index += 1;
                let op = match step {
                    Step::Entry(ops) => FileOp::Batch(
                        ops.iter()
                            .map(|&(id, put)| {
                                let base = sm.get(&path(id)).filter(|r| !r.deleted).map(|r| r.version);
                                if put {
                                    let content = format!("{id} at {index}");
                                    FileOp::Put {
                                        path: path(id),
                                        size: content.len() as u64,
                                        hash: Digest::of(content.as_bytes()),
                                        blocks: vec![Digest::of(content.as_bytes())],
                                        mtime: 0,
                                        base,
                                    }
                                } else {
                                    FileOp::Delete { path: path(id), base }
                                }
                            })
                            .collect(),
                    ),
                    Step::Forget(back) => FileOp::ForgetDeleted { upto: index.saturating_sub(*back) },
                };
                runtime.block_on(sm.apply([entry(index, op)])).unwrap();
            }
            check(&sm)?;
            check_index(&store)?;
        }
        // Reopened as it is, then with the index to build again from the records.
        let store = common::open(dir.path());
        check(&store.state_machine())?;
        let tree = store.db().open_tree("state_machine").unwrap();
        for key in tree.scan_prefix("e/").keys() {
            tree.remove(key.unwrap()).unwrap();
        }
        tree.remove("m/entry_index").unwrap();
        drop(tree);
        drop(store);
        let store = common::open(dir.path());
        check(&store.state_machine())?;
        check_index(&store)?;
    }
}
