//! Names that differ only in case.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use crate::common::{hash_hex, wait_trees, Cluster};
use crate::{assert_no_panic, ls_paths, still_syncs, wait_idle, SETTLE};

/// Whether the file system under `dir` tells `probe` from `PROBE`.
fn case_sensitive(dir: &Path) -> bool {
    let probe = tempfile::tempdir_in(dir).unwrap();
    fs::write(probe.path().join("probe"), b"lower").unwrap();
    fs::write(probe.path().join("PROBE"), b"upper").unwrap();
    fs::read(probe.path().join("probe")).unwrap() == b"lower"
}

/// Linux file systems tell case apart, so the test runs there; elsewhere the temp dir is
/// often case-insensitive (macOS), where two names cannot be two files.
#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "needs a case-sensitive file system for the temp dir, as Linux has")]
fn names_that_differ_only_in_case_are_two_files_and_no_content_is_lost() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    // Probed beside the shared folder (same file system), not in it: the probe would sync.
    let beside = a.shared_dir.parent().unwrap();
    assert!(
        case_sensitive(beside),
        "this test needs a case-sensitive file system, and the one of {} does not tell `probe` from \
         `PROBE`: set TMPDIR to a folder on one that does",
        beside.display()
    );
    // raftshare compares paths byte for byte (no case folding anywhere in the rules, the
    // scanner or the applier): on a case-sensitive disk, as on Linux, both names are kept.
    a.write("Report.txt", b"the report, as a wrote it");
    b.write("report.txt", b"the report, as b wrote it");
    a.write("Docs/plan.md", b"a's plan");
    b.write("docs/plan.md", b"b's plan");
    b.write("docs/PLAN.md", b"b's other plan");
    let want: BTreeMap<String, String> = [
        ("Report.txt", &b"the report, as a wrote it"[..]),
        ("report.txt", b"the report, as b wrote it"),
        ("Docs/plan.md", b"a's plan"),
        ("docs/plan.md", b"b's plan"),
        ("docs/PLAN.md", b"b's other plan"),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_string(), hash_hex(c)))
    .collect();
    wait_trees(&nodes, Some(&want), SETTLE, "all five case variants on both nodes");
    wait_idle(&nodes);
    let want_paths: BTreeSet<String> = want.keys().cloned().collect();
    for node in nodes {
        assert_eq!(ls_paths(node), want_paths, "ls on {}", node.name);
    }

    // An edit and a delete of one variant touch that variant only.
    b.write("Report.txt", b"a's report, edited on b");
    fs::remove_file(a.shared_dir.join("docs/PLAN.md")).unwrap();
    let mut want = want;
    want.insert("Report.txt".into(), hash_hex(b"a's report, edited on b"));
    want.remove("docs/PLAN.md");
    wait_trees(&nodes, Some(&want), SETTLE, "the edit and the delete of one variant only");
    still_syncs(&nodes, a, "after-case.txt");
    assert_no_panic(&nodes);
}
