//! Records with a valid path whose size, blocks or path no disk can hold as described.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use raftshare_raft::{Digest, FileOp, OpOutcome, BLOCK_SIZE};

use crate::common::{big_content, hash_hex, Cluster};
use crate::{assert_no_panic, ls_paths, still_syncs, temp_bytes, wait_applied, wait_idle, Mallory, Outside, SETTLE};

/// A put of `path` claiming `size` bytes in `blocks`, for content no node has (a hash of
/// its own per path, so no two of them share a download).
fn odd_put(path: &str, size: u64, blocks: usize) -> FileOp {
    let digest = Digest::of(format!("content no node has, for {path}").as_bytes());
    FileOp::Put { path: path.into(), size, hash: digest, blocks: vec![digest; blocks], mtime: i64::MIN, base: None }
}

#[test]
fn records_that_cannot_be_assembled_leave_the_nodes_serving() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    let outside = Outside::guard(b);
    let mallory = Mallory::connect(a);
    // A path the table accepts (20 components of 200 bytes, 4019 bytes in all) but that
    // is longer than the OS allows once joined to the shared folder.
    let deep = (0..20).map(|i| format!("{i:02}{}", "d".repeat(198))).collect::<Vec<_>>().join("/");
    assert!(deep.len() <= 4096);
    let ops = vec![
        odd_put("fewer-blocks-than-bytes.bin", 5 << 30, 1),
        odd_put("largest-size.bin", u64::MAX, 1),
        odd_put("no-blocks.bin", 12, 0),
        odd_put(&deep, 12, 1),
        // Content no member has at all.
        odd_put("nobody-has-it.bin", 12, 1),
    ];
    let (index, outcomes) = mallory.propose(FileOp::Batch(ops));
    assert_eq!(outcomes.len(), 5, "{outcomes:?}");
    wait_applied(&nodes, index);

    // Whatever the table made of them, the nodes keep serving and syncing both ways.
    still_syncs(&nodes, b, "after-odd-records.txt");
    still_syncs(&nodes, a, "after-odd-records-2.txt");
    for node in nodes {
        let tree = node.tree();
        let made: Vec<&String> = tree.keys().filter(|p| p.ends_with(".bin") || p.starts_with("00")).collect();
        assert!(made.is_empty(), "{} wrote files no content matches: {made:?}", node.name);
        let used = temp_bytes(node);
        assert!(used < 16 << 20, "{}'s temp files use {used} bytes of disk", node.name);
    }
    outside.assert_untouched("hostile");
    assert_no_panic(&nodes);
}

#[test]
fn a_put_with_more_blocks_than_bytes_does_not_panic_the_applier() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    let mallory = Mallory::connect(b);
    let (index, _) = mallory.propose(odd_put("more-blocks-than-bytes.bin", 0, 3));
    wait_applied(&nodes, index);
    still_syncs(&nodes, a, "after-more-blocks.txt");
    assert_no_panic(&nodes);
}

#[test]
fn a_block_of_another_length_than_its_record_says_is_never_written() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    // A real 100-byte file: both nodes hold, and serve, its one block.
    still_syncs(&nodes, a, "short.txt");
    let body = format!("short.txt written by {} to show the cluster still syncs", a.name);
    let short = Digest::of(body.as_bytes());
    // A record that says its first block (of BLOCK_SIZE bytes) is that short one.
    let odd = FileOp::Put {
        path: "odd.bin".into(),
        size: BLOCK_SIZE + 50,
        hash: Digest::of(b"whatever"),
        blocks: vec![short, short],
        mtime: 0,
        base: None,
    };
    let (index, _) = Mallory::connect(a).propose(odd);
    wait_applied(&nodes, index);
    // A file proposed after it arrives once the applier has tried odd.bin too.
    still_syncs(&nodes, b, "after-odd.txt");
    for node in nodes {
        assert!(
            !node.tree().contains_key("odd.bin"),
            "{} installed a file built of blocks of the wrong size",
            node.name
        );
    }
    assert_no_panic(&nodes);
}

#[test]
fn puts_whose_size_and_blocks_disagree_are_rejected_at_apply() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    let mallory = Mallory::connect(a);
    let ops = vec![
        odd_put("fewer-blocks-than-bytes.bin", 5 << 30, 1),
        odd_put("largest-size.bin", u64::MAX, 1),
        odd_put("no-blocks.bin", 12, 0),
    ];
    let (index, outcomes) = mallory.propose(FileOp::Batch(ops));
    for outcome in &outcomes {
        assert!(matches!(outcome, OpOutcome::Rejected { .. }), "not rejected: {outcome:?}");
    }
    wait_applied(&nodes, index);
    assert!(ls_paths(a).is_empty(), "{:?}", ls_paths(a));
    wait_idle(&nodes);
}

#[test]
fn a_put_claiming_a_known_hash_with_another_size_does_not_disturb_its_download() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    let mallory = Mallory::connect(a);
    // The content of a file a is about to share, claimed first at another size.
    let real = big_content(3 * BLOCK_SIZE as usize, 11);
    let decoy = FileOp::Put {
        path: "decoy.bin".into(),
        size: 5 << 30,
        hash: Digest::of(&real),
        blocks: vec![Digest::of(&real[..BLOCK_SIZE as usize])],
        mtime: 0,
        base: None,
    };
    let (index, _) = mallory.propose(decoy);
    wait_applied(&nodes, index);
    a.write("real.bin", &real);
    let want = hash_hex(&real);
    let started = Instant::now();
    while b.tree().get("real.bin") != Some(&want) {
        if started.elapsed() > SETTLE {
            let temps: Vec<(String, u64)> = fs::read_dir(b.shared_dir.join(".raftshare/tmp"))
                .unwrap()
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
                .collect();
            panic!(
                "real.bin did not reach b in {SETTLE:?}: b has {:?}, temp files (apparent sizes) {temps:?}, \
                 pending_downloads {}",
                b.tree().get("real.bin"),
                b.stat("pending_downloads")
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    still_syncs(&nodes, a, "after-the-decoy.txt");
    assert_no_panic(&nodes);
}
