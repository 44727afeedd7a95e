//! The node's own trees: the local index with its locators, and the outbox.

mod common;
use common::open;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use raftshare_raft::{Digest, FileOp};
use raftshare_storage::{LocalEntry, OutboxError, PendingOp};
use tempfile::TempDir;

fn d(name: &str) -> Digest {
    Digest::of(name.as_bytes())
}

/// An entry whose blocks are the digests of `blocks`, and whose hash is that of their names joined.
fn entry(blocks: &[&str], version: Option<u64>) -> LocalEntry {
    LocalEntry {
        size: blocks.len() as u64,
        mtime: 42,
        hash: d(&blocks.concat()),
        blocks: blocks.iter().map(|b| d(b)).collect(),
        version,
    }
}

fn put(path: &str, content: &str, base: Option<u64>) -> FileOp {
    FileOp::Put {
        path: path.to_owned(),
        size: content.len() as u64,
        hash: d(content),
        blocks: vec![d(content)],
        mtime: 1,
        base,
    }
}

fn delete(path: &str, base: Option<u64>) -> FileOp {
    FileOp::Delete { path: path.to_owned(), base }
}

fn paths(pending: &[PendingOp]) -> Vec<&str> {
    pending.iter().map(PendingOp::path).collect()
}

#[test]
fn the_local_index_keeps_its_locators_in_step_and_survives_a_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let local = open(dir.path()).local_index();
        assert!(local.is_empty());
        local.put("a.bin", &entry(&["x", "y", "x"], Some(3))).unwrap();
        local.put("b.bin", &entry(&["y"], None)).unwrap();
        assert_eq!(local.get("a.bin").unwrap(), Some(entry(&["x", "y", "x"], Some(3))));
        // A repeated block is found at its first place.
        assert_eq!(local.find_block(&d("x")), [("a.bin".to_owned(), 0)]);
        assert_eq!(local.find_block(&d("y")), [("a.bin".to_owned(), 1), ("b.bin".to_owned(), 0)]);

        // Overwritten: the old content's blocks no longer point here.
        local.put("a.bin", &entry(&["z"], Some(5))).unwrap();
        assert!(local.find_block(&d("x")).is_empty());
        assert_eq!(local.find_block(&d("y")), [("b.bin".to_owned(), 0)]);
        assert_eq!(local.find_block(&d("z")), [("a.bin".to_owned(), 0)]);

        // Removed: nothing points at it.
        assert_eq!(local.remove("b.bin").unwrap(), Some(entry(&["y"], None)));
        assert_eq!(local.remove("b.bin").unwrap(), None);
        assert!(local.find_block(&d("y")).is_empty());
        assert_eq!(local.get("b.bin").unwrap(), None);

        // Two files with the same content are both found.
        local.put("copy/of/a.bin", &entry(&["z"], None)).unwrap();
        assert_eq!(local.find_block(&d("z")), [("a.bin".to_owned(), 0), ("copy/of/a.bin".to_owned(), 0)]);

        assert_eq!(local.materialized(), None);
        local.set_materialized(7).unwrap();
        local.set_materialized(9).unwrap();
    }
    let local = open(dir.path()).local_index();
    assert_eq!(local.len(), 2);
    assert_eq!(local.materialized(), Some(9));
    assert_eq!(
        local.entries(),
        [("a.bin".to_owned(), entry(&["z"], Some(5))), ("copy/of/a.bin".to_owned(), entry(&["z"], None))]
    );
    assert_eq!(local.find_block(&d("z")), [("a.bin".to_owned(), 0), ("copy/of/a.bin".to_owned(), 0)]);
    local.clear_materialized().unwrap();
    assert_eq!(local.materialized(), None);
}

#[test]
fn paths_under_a_folder_are_the_folder_and_what_is_below_it() {
    let dir = TempDir::new().unwrap();
    let local = open(dir.path()).local_index();
    for path in ["a", "a.txt", "a/b", "a/b/c", "ab/c", "b"] {
        local.put(path, &entry(&[path], None)).unwrap();
    }
    let under = |dir: &str| local.paths_under(dir);
    assert_eq!(under("a"), ["a", "a/b", "a/b/c"]);
    assert_eq!(under("a/b"), ["a/b", "a/b/c"]);
    assert_eq!(under("ab"), ["ab/c"]);
    assert!(under("c").is_empty());
    assert_eq!(under("").len(), 6);
}

#[test]
fn a_damaged_local_entry_is_an_error_not_a_panic_and_a_put_repairs_it() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    let local = store.local_index();
    local.put("ok", &entry(&["o"], None)).unwrap();
    store.db().open_tree("local_index").unwrap().insert("bad", &[0xff, 0xff][..]).unwrap();
    let err = local.get("bad").unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    // Listing skips it rather than failing the whole folder.
    assert_eq!(local.entries().len(), 1);
    local.put("bad", &entry(&["fixed"], None)).unwrap();
    assert_eq!(local.get("bad").unwrap(), Some(entry(&["fixed"], None)));
    assert_eq!(local.find_block(&d("fixed")), [("bad".to_owned(), 0)]);
}

#[test]
fn outbox_paths_under_a_folder_are_the_folder_and_what_is_below_it() {
    let dir = TempDir::new().unwrap();
    let outbox = open(dir.path()).outbox();
    for path in ["a", "a.txt", "a/b", "a/b/c", "ab/c"] {
        outbox.enqueue(put(path, path, None)).unwrap();
    }
    outbox.enqueue(delete("b", None)).unwrap();
    assert_eq!(outbox.paths_under("a"), ["a", "a/b", "a/b/c"]);
    assert_eq!(outbox.paths_under("a/b"), ["a/b", "a/b/c"]);
    assert_eq!(outbox.paths_under("ab"), ["ab/c"]);
    assert!(outbox.paths_under("c").is_empty());
    assert_eq!(outbox.paths_under("").len(), 6);
}

#[test]
fn the_outbox_coalesces_per_path_in_seq_order() {
    let dir = TempDir::new().unwrap();
    let outbox = open(dir.path()).outbox();
    assert!(outbox.is_empty());
    let a1 = outbox.enqueue(put("a", "1", None)).unwrap();
    let b = outbox.enqueue(put("b", "1", Some(2))).unwrap();
    let c = outbox.enqueue(delete("c", Some(4))).unwrap();
    assert!(a1 < b && b < c);
    assert_eq!(paths(&outbox.pending(10)), ["a", "b", "c"]);

    // A newer edit of `a` replaces the pending one and goes to the back.
    let a2 = outbox.enqueue(put("a", "2", None)).unwrap();
    assert!(a2 > c);
    assert_eq!(outbox.len(), 3);
    let pending = outbox.pending(10);
    assert_eq!(paths(&pending), ["b", "c", "a"]);
    assert_eq!(pending.iter().map(|p| p.seq).collect::<Vec<_>>(), [b, c, a2]);
    assert_eq!(pending[2].op, put("a", "2", None));
    assert!(pending[2].queued_at_ms > 1_600_000_000_000);
    assert_eq!(paths(&outbox.pending(2)), ["b", "c"]);
    assert_eq!(outbox.get("a").unwrap().map(|p| p.seq), Some(a2));

    // The proposer acks the op it committed (a1): the newer one stays.
    assert!(!outbox.ack("a", a1).unwrap());
    assert_eq!(outbox.get("a").unwrap().map(|p| p.op), Some(put("a", "2", None)));
    assert!(outbox.ack("a", a2).unwrap());
    assert!(!outbox.ack("a", a2).unwrap());
    assert!(outbox.ack("b", b).unwrap());
    assert_eq!(paths(&outbox.pending(10)), ["c"]);
    assert_eq!(outbox.len(), 1);
}

#[test]
fn a_burst_is_queued_and_acked_as_one_and_behaves_as_one_at_a_time() {
    let dir = TempDir::new().unwrap();
    let outbox = open(dir.path()).outbox();
    let old_c = outbox.enqueue(put("c", "0", None)).unwrap();
    // The same path twice in one burst: the later op wins, as if queued one by one.
    let seqs = outbox.enqueue_many(vec![put("a", "1", None), delete("b", Some(1)), put("a", "2", None)]).unwrap();
    assert_eq!(seqs.len(), 3);
    assert!(old_c < seqs[0] && seqs[0] < seqs[1] && seqs[1] < seqs[2]);
    assert_eq!(paths(&outbox.pending(10)), ["c", "b", "a"]);
    assert_eq!(outbox.get("a").unwrap().map(|p| p.op), Some(put("a", "2", None)));

    // Acks of an entry: an outdated seq and an unknown path are not acked, the rest are.
    let acked = outbox.ack_many(&[("a", seqs[0]), ("b", seqs[1]), ("zz", 1), ("c", old_c)]).unwrap();
    assert_eq!(acked, [false, true, false, true]);
    assert_eq!(paths(&outbox.pending(10)), ["a"]);
    assert_eq!(outbox.ack_many(&[("a", seqs[2])]).unwrap(), [true]);
    assert!(outbox.is_empty());
}

#[test]
fn the_outbox_refuses_batches_and_invalid_paths_and_a_refused_burst_queues_nothing() {
    let dir = TempDir::new().unwrap();
    let outbox = open(dir.path()).outbox();
    let err = outbox.enqueue(FileOp::Batch(vec![put("a", "1", None)])).unwrap_err();
    assert!(matches!(err, OutboxError::Batch), "{err:?}");
    let err = outbox.enqueue(put("../escape", "1", None)).unwrap_err();
    assert!(matches!(&err, OutboxError::InvalidPath { path, .. } if path == "../escape"), "{err:?}");
    assert!(err.to_string().contains(".."), "{err}");
    let err = outbox.enqueue_many(vec![put("fine", "1", None), delete(".raftshare/db", None)]).unwrap_err();
    assert!(matches!(err, OutboxError::InvalidPath { .. }), "{err:?}");
    assert!(outbox.is_empty());
    assert_eq!(outbox.enqueue_many(Vec::new()).unwrap(), Vec::<u64>::new());
}

#[test]
fn enqueued_changes_survive_a_reopen_and_seqs_keep_increasing() {
    let dir = TempDir::new().unwrap();
    let seqs = {
        let outbox = open(dir.path()).outbox();
        let seqs =
            outbox.enqueue_many(vec![put("x", "1", None), delete("y", Some(3)), put("x", "2", Some(9))]).unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        seqs
    };
    let outbox = open(dir.path()).outbox();
    let pending = outbox.pending(usize::MAX);
    assert_eq!(paths(&pending), ["y", "x"]);
    assert_eq!(pending.iter().map(|p| p.seq).collect::<Vec<_>>(), [seqs[1], seqs[2]]);
    assert_eq!(pending[1].op, put("x", "2", Some(9)));
    let next = outbox.enqueue(put("z", "1", None)).unwrap();
    assert!(next > seqs[2], "seq {next} after a restart is not above {}", seqs[2]);
}

#[test]
fn an_older_outbox_is_moved_into_the_queue_at_open_and_its_trees_dropped() {
    let dir = TempDir::new().unwrap();
    let ops = {
        let store = open(dir.path());
        // The layout before the queue: path → op, and seq → path for the order.
        let (by_path, by_seq) = (store.db().open_tree("outbox").unwrap(), store.db().open_tree("outbox_seq").unwrap());
        let ops: Vec<PendingOp> = [put("b", "1", None), delete("a", Some(2))]
            .into_iter()
            .map(|op| PendingOp { seq: store.db().generate_id().unwrap(), op, queued_at_ms: 1 })
            .collect();
        for pending in &ops {
            by_path.insert(pending.path(), bincode::serialize(pending).unwrap()).unwrap();
            by_seq.insert(pending.seq.to_be_bytes(), pending.path()).unwrap();
        }
        store.db().flush().unwrap();
        ops
    };
    let store = open(dir.path());
    let outbox = store.outbox();
    assert_eq!(outbox.pending(10), ops, "the old ops, in their order");
    assert_eq!(outbox.len(), 2);
    assert_eq!(outbox.get("a").unwrap().map(|p| p.seq), Some(ops[1].seq));
    let names: Vec<_> = store.db().tree_names().iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
    assert!(!names.iter().any(|n| n == "outbox" || n == "outbox_seq"), "old trees left: {names:?}");
    assert_eq!(outbox.ack_many(&[("b", ops[0].seq), ("a", ops[1].seq)]).unwrap(), [true, true]);
    drop((outbox, store));
    assert!(open(dir.path()).outbox().is_empty(), "acks of moved ops hold across a reopen");
}

#[test]
fn damaged_outbox_entries_are_dropped_at_open_and_the_rest_kept() {
    let dir = TempDir::new().unwrap();
    let good = {
        let store = open(dir.path());
        let good = store.outbox().enqueue(put("a", "1", None)).unwrap();
        let queue = store.db().open_tree("outbox_queue").unwrap();
        queue.insert(u64::MAX.to_be_bytes(), &b"not a pending op"[..]).unwrap();
        queue.insert(b"odd", &b"a key of 3 bytes"[..]).unwrap();
        store.db().flush().unwrap();
        good
    };
    let store = open(dir.path());
    let outbox = store.outbox();
    assert_eq!(outbox.pending(10).iter().map(|p| p.seq).collect::<Vec<_>>(), [good]);
    assert_eq!(outbox.len(), 1);
    assert_eq!(store.db().open_tree("outbox_queue").unwrap().len(), 1, "the damaged entries are gone");
}

/// Paths by the blocks they hold.
type Holders = BTreeMap<u8, BTreeSet<String>>;

/// What the block locator must say after a sequence of puts and removes.
fn expected(model: &BTreeMap<String, Vec<u8>>) -> Holders {
    let mut blocks = Holders::new();
    for (path, content) in model {
        for b in content {
            blocks.entry(*b).or_default().insert(path.clone());
        }
    }
    blocks
}

fn byte_entry(content: &[u8]) -> LocalEntry {
    LocalEntry {
        size: content.len() as u64,
        mtime: 0,
        hash: Digest::of(content),
        blocks: content.iter().map(|b| Digest::of(&[*b])).collect(),
        version: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any sequence of puts and removes, one at a time or several in one `update` (the
    /// same path possibly twice in one), leaves the locators saying exactly what the
    /// entries say: no stale hit, no missing one.
    #[test]
    fn locators_match_the_entries(
        ops in proptest::collection::vec((0..4u8, proptest::option::of(proptest::collection::vec(0..5u8, 0..4))), 1..30),
        chunk in 1..6usize,
    ) {
        let dir = TempDir::new().unwrap();
        let local = open(dir.path()).local_index();
        let mut model = BTreeMap::new();
        for group in ops.chunks(chunk) {
            let entries: Vec<(String, Option<LocalEntry>)> =
                group.iter().map(|(file, content)| (format!("f{file}"), content.as_deref().map(byte_entry))).collect();
            let mut replaced_model = Vec::new();
            for ((path, entry), (_, content)) in entries.iter().zip(group) {
                replaced_model.push(model.get(path).map(|c: &Vec<u8>| byte_entry(c)));
                match content {
                    Some(content) => {
                        model.insert(path.clone(), content.clone());
                    }
                    None => {
                        model.remove(path);
                    }
                }
                prop_assert_eq!(entry.is_some(), content.is_some());
            }
            let replaced = if chunk == 1 {
                let (path, entry) = &entries[0];
                match entry {
                    Some(entry) => {
                        local.put(path, entry).unwrap();
                        vec![replaced_model[0].clone()]
                    }
                    None => vec![local.remove(path).unwrap()],
                }
            } else {
                let changes: Vec<(&str, Option<&LocalEntry>)> =
                    entries.iter().map(|(p, e)| (p.as_str(), e.as_ref())).collect();
                local.update(&changes).unwrap()
            };
            prop_assert_eq!(replaced, replaced_model);
        }
        let blocks = expected(&model);
        let none = BTreeSet::new();
        for b in 0..5u8 {
            let found: BTreeSet<String> = local.find_block(&Digest::of(&[b])).into_iter().map(|(p, _)| p).collect();
            prop_assert_eq!(&found, blocks.get(&b).unwrap_or(&none), "block {}", b);
            for (path, index) in local.find_block(&Digest::of(&[b])) {
                prop_assert_eq!(model[&path][index as usize], b);
            }
        }
        prop_assert_eq!(local.len(), model.len());
        let listed: Vec<_> = local.entries().into_iter().map(|(p, e)| (p, e.hash)).collect();
        let wanted: Vec<_> = model.iter().map(|(p, c)| (p.clone(), Digest::of(c))).collect();
        prop_assert_eq!(listed, wanted);
    }
}
