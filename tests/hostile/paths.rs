//! Paths from a peer holding the cluster key: rejected at apply, on every node, and
//! nothing is written or deleted outside the shared folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use raftshare_raft::{FileOp, OpOutcome};
use serde_json::Value;

use crate::common::{hash_hex, wait_trees, Cluster};
use crate::{assert_no_panic, delete, listing, ls_paths, put, still_syncs, wait_applied, Mallory, Outside, SETTLE};

/// Paths a peer could send, and a word of the reason each must be rejected with.
fn hostile_paths(canary: &Path) -> Vec<(String, &'static str)> {
    let long_name = format!("hostile-{}", "a".repeat(5000 - 8));
    let long_component = format!("hostile-{}", "b".repeat(300 - 8));
    vec![
        ("..".into(), "`..`"),
        ("../hostile-parent.txt".into(), "`..`"),
        ("a/../../hostile-up.txt".into(), "`..`"),
        ("../canary/hostile-into-canary.txt".into(), "`..`"),
        ("hostile-dir/..".into(), "`..`"),
        (format!("{}/hostile-absolute.txt", canary.display()), "absolute"),
        ("/etc/hostile-raftshare.txt".into(), "absolute"),
        ("/".into(), "absolute"),
        ("hostile\0nul.txt".into(), "NUL"),
        ("../hostile\0nul".into(), "NUL"),
        (long_name, "more than the limit of 4096"),
        (long_component, "more than the limit of 255"),
        (".raftshare".into(), "`.raftshare`"),
        (".raftshare/folder".into(), "`.raftshare`"),
        (".raftshare/hostile-meta.txt".into(), "`.raftshare`"),
        (".raftshare/tmp/hostile.part".into(), "`.raftshare`"),
        ("..\\..\\hostile-backslash.txt".into(), "backslash"),
        ("hostile\\sub.txt".into(), "backslash"),
        ("".into(), "empty"),
        (".".into(), "`.` component"),
        ("./hostile-dot.txt".into(), "`.` component"),
        ("a/./hostile-dot.txt".into(), "`.` component"),
        ("a//hostile-double.txt".into(), "empty component"),
        ("hostile-trailing/".into(), "empty component"),
    ]
}

fn assert_rejected(outcome: &OpOutcome, path: &str, word: &str) {
    match outcome {
        OpOutcome::Rejected { path: p, reason } => {
            assert_eq!(p, path);
            assert!(reason.contains(word), "{path:?} was rejected, but the reason does not say {word:?}: {reason}");
        }
        other => panic!("{:?} was not rejected: {other:?}", path.chars().take(80).collect::<String>()),
    }
}

#[test]
fn hostile_paths_from_a_peer_are_rejected_at_apply_and_nothing_leaves_the_folder() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    let (outside_a, outside_b) = (Outside::guard(a), Outside::guard(b));

    // A file every node has, whose blocks a valid put in the batch below can reuse.
    let control = b"control content, on every node";
    a.write("control.txt", control);
    let want = BTreeMap::from([("control.txt".to_string(), hash_hex(control))]);
    wait_trees(&nodes, Some(&want), SETTLE, "control.txt on both nodes");

    // From a follower (forwarded to the leader) and from the leader itself.
    let via_b = Mallory::connect(b);
    let via_a = Mallory::connect(a);
    let paths = hostile_paths(&outside_a.canary);
    let mut last = 0;
    for (i, (path, word)) in paths.iter().enumerate() {
        let mallory = if i % 2 == 0 { &via_b } else { &via_a };
        let (index, outcomes) = mallory.propose(put(path, b"hostile content"));
        assert_eq!(outcomes.len(), 1, "{outcomes:?}");
        assert_rejected(&outcomes[0], path, word);
        let (index2, outcomes) = mallory.propose(delete(path));
        assert_rejected(&outcomes[0], path, word);
        last = index.max(index2);
    }
    // Deletes aimed at files that exist outside the folder.
    let canary_keep = outside_a.canary.join("keep.txt").display().to_string();
    for path in [canary_keep.as_str(), "../canary/keep.txt", "../data/config.toml", "../data/cluster.key"] {
        let (index, outcomes) = via_a.propose(FileOp::Delete { path: path.into(), base: None });
        assert!(matches!(&outcomes[0], OpOutcome::Rejected { .. }), "{path}: {outcomes:?}");
        last = last.max(index);
    }
    // One batch of everything, with a valid put in the middle: only that one is written.
    let mut ops: Vec<FileOp> = paths.iter().map(|(p, _)| put(p, b"hostile content")).collect();
    ops.insert(paths.len() / 2, put("batch-ok.txt", control));
    ops.extend(paths.iter().map(|(p, _)| delete(p)));
    let (index, outcomes) = via_b.propose(FileOp::Batch(ops));
    assert_eq!(outcomes.len(), 2 * paths.len() + 1);
    let (valid, hostile): (Vec<_>, Vec<_>) =
        outcomes.iter().partition(|o| matches!(o, OpOutcome::Written { path, .. } if path == "batch-ok.txt"));
    assert_eq!(valid.len(), 1, "the valid put of the batch is written: {outcomes:?}");
    assert!(hostile.iter().all(|o| matches!(o, OpOutcome::Rejected { .. })), "{hostile:?}");
    last = last.max(index);
    wait_applied(&nodes, last);

    // The table never lists a hostile path, on any node; the valid one arrives.
    let want_ls = BTreeSet::from(["batch-ok.txt".to_string(), "control.txt".to_string()]);
    for node in nodes {
        assert_eq!(ls_paths(node), want_ls, "ls --all on {}", node.name);
        // The log holds the rejected proposals: showing them must not break the CLI.
        assert!(!node.log().is_empty());
    }
    let want_tree = BTreeMap::from([
        ("batch-ok.txt".to_string(), hash_hex(control)),
        ("control.txt".to_string(), hash_hex(control)),
    ]);
    wait_trees(&nodes, Some(&want_tree), SETTLE, "the batch's valid put on both nodes, and nothing else");

    // Still serving (the connections too), nothing outside touched, the marker kept.
    still_syncs(&nodes, b, "after-the-paths.txt");
    assert_eq!(via_a.status()["folder_problem"], Value::Null);
    assert_eq!(via_b.status()["folder_problem"], Value::Null);
    for (node, outside) in [(a, &outside_a), (b, &outside_b)] {
        outside.assert_untouched("hostile");
        assert!(node.shared_dir.join(".raftshare/folder").is_file(), "{}'s marker is still there", node.name);
        let in_folder: Vec<String> = listing(&node.shared_dir).into_iter().filter(|p| p.contains("hostile")).collect();
        assert!(in_folder.is_empty(), "hostile names in {}'s folder: {in_folder:?}", node.name);
    }
    assert!(!Path::new("/etc/hostile-raftshare.txt").exists());
    assert_no_panic(&nodes);
}
