//! The disk is not always honest: what one computer cannot read, or chose to ignore,
//! never turns into a delete on the others. Real processes on 127.0.0.1.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use common::{wait_until, Cluster, TestNode, Unreadable};

const SETTLE: Duration = Duration::from_secs(30);

/// Wait until every node's folder holds the same `files` files; returns that tree.
fn wait_same(nodes: &[TestNode], files: usize) -> BTreeMap<String, String> {
    wait_until(SETTLE, &format!("every node to hold the same {files} files"), || {
        let trees: Vec<BTreeMap<String, String>> = nodes.iter().map(TestNode::tree).collect();
        (trees[0].len() == files && trees.iter().all(|t| *t == trees[0])).then(|| trees[0].clone())
    })
}

/// The `unreadable` list of a node's status, once it names `what`.
fn unreadable_names(node: &TestNode, what: &str) -> Vec<String> {
    wait_until(SETTLE, &format!("status to list {what:?} as unreadable"), || {
        let list: Vec<String> =
            node.status()?["unreadable"].as_array()?.iter().filter_map(|v| v.as_str().map(String::from)).collect();
        list.iter().any(|p| p.starts_with(what)).then_some(list)
    })
}

/// Run as root (as CI does), the nodes run as `nobody`: root reads a folder of mode 000
/// all the same (see `TestNode::obey_file_modes`).
#[test]
fn a_subfolder_one_node_cannot_read_is_not_deleted_anywhere() {
    let mut cluster = Cluster::start_with(3, |node| node.obey_file_modes());
    let a = &cluster.nodes[0];
    a.write("photos/one.jpg", b"first photo");
    a.write("photos/two.jpg", b"second photo");
    a.write("top.txt", b"at the top");
    let before = wait_same(&cluster.nodes, 3);

    // On B the folder becomes unreadable: its watcher reports the change of mode, and a
    // restart looks at the whole folder again. Neither may propose a delete.
    let photos = cluster.nodes[1].shared_dir.join("photos");
    let unreadable = Unreadable::make(&photos);
    unreadable_names(&cluster.nodes[1], "photos");
    cluster.nodes[1].stop();
    cluster.nodes[1].start_ready();
    let listed = unreadable_names(&cluster.nodes[1], "photos");
    assert!(listed.iter().any(|p| p.contains("ermission denied")), "the reason is given: {listed:?}");
    let plain = cluster.nodes[1].cli_ok(&["status"]);
    assert!(plain.contains("unreadable photos"), "plain status names it:\n{plain}");

    // A change B makes after its look goes out: the look is over, and it proposed no delete.
    cluster.nodes[1].write("after.txt", b"made on b after the look");
    for node in [&cluster.nodes[0], &cluster.nodes[2]] {
        wait_until(SETTLE, "b's later file to reach the others", || {
            node.shared_dir.join("after.txt").exists().then_some(())
        });
        for photo in ["photos/one.jpg", "photos/two.jpg"] {
            assert!(
                node.shared_dir.join(photo).exists(),
                "{photo} was deleted on {} by b's unreadable folder",
                node.name
            );
        }
    }

    // Readable again: B says so and everything agrees.
    drop(unreadable);
    cluster.nodes[1].stop();
    cluster.nodes[1].start_ready();
    wait_until(SETTLE, "b's status to list nothing unreadable", || {
        cluster.nodes[1].status()?["unreadable"].as_array()?.is_empty().then_some(())
    });
    let after = wait_same(&cluster.nodes, 4);
    for (path, hash) in &before {
        assert_eq!(after.get(path), Some(hash), "{path} is on every node as it was");
    }
}

/// A file that a rule of `.raftshareignore` covers is out of sync in both directions:
/// removing it on one computer does not delete it elsewhere, at once or at a restart.
#[test]
fn removing_an_ignored_file_is_not_proposed_at_the_next_start() {
    let mut cluster = Cluster::start(2);
    cluster.nodes[0].write("x.log", b"a log line");
    wait_same(&cluster.nodes, 1);
    cluster.nodes[0].write(".raftshareignore", b"*.log\n");
    wait_same(&cluster.nodes, 2);

    fs::remove_file(cluster.nodes[0].shared_dir.join("x.log")).unwrap();
    cluster.nodes[0].stop();
    cluster.nodes[0].start_ready();
    cluster.nodes[0].write("after.txt", b"made after the restart's look");
    let b = &cluster.nodes[1];
    wait_until(SETTLE, "a's later file to reach b", || b.shared_dir.join("after.txt").exists().then_some(()));
    assert_eq!(
        fs::read(b.shared_dir.join("x.log")).ok().as_deref(),
        Some(&b"a log line"[..]),
        "b's ignored x.log was deleted by a's removal of its own"
    );
}

/// A file written in pieces, with pauses far longer than the watcher's quiet gap (a
/// download, a slow USB copy), is committed once, whole: never a half-written version.
#[test]
fn a_file_written_slowly_is_committed_once_and_whole() {
    use std::io::Write;
    let cluster = Cluster::start(2);
    let a = &cluster.nodes[0];
    let chunk = vec![7u8; 256 << 10];
    let mut file = fs::File::create(a.shared_dir.join("video.mp4")).unwrap();
    for _ in 0..5 {
        file.write_all(&chunk).unwrap();
        file.flush().unwrap();
        // The writer's pause (the workload), far longer than the watcher's quiet gap.
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(file);
    let whole = 5 * chunk.len() as u64;
    let b = &cluster.nodes[1];
    wait_until(SETTLE, "the whole file on b", || {
        (fs::metadata(b.shared_dir.join("video.mp4")).ok()?.len() == whole).then_some(())
    });
    let puts: Vec<u64> = a
        .log()
        .iter()
        .flat_map(|entry| entry["ops"].as_array().cloned().unwrap_or_default())
        .filter(|op| op["op"] == "put" && op["path"] == "video.mp4")
        .map(|op| op["size"].as_u64().unwrap())
        .collect();
    assert_eq!(puts, vec![whole], "video.mp4 was committed as these versions (sizes)");
}

/// A path one node ignores while the table has it live is left alone there, and does not
/// hold that node's applier back: later changes apply, and tombstones are still
/// forgotten cluster-wide.
#[test]
fn a_path_ignored_on_one_node_does_not_hold_the_cluster_back() {
    let mut cluster = Cluster::start(3);
    cluster.nodes[0].write("y.txt", b"to be deleted later");
    wait_same(&cluster.nodes, 1);
    cluster.nodes[2].stop();

    cluster.nodes[0].write("x.log", b"a's log");
    wait_until(SETTLE, "a to commit x.log", || {
        let out = cluster.nodes[0].cli_ok(&["ls", "--json"]);
        out.contains("\"x.log\"").then_some(())
    });
    let c = &mut cluster.nodes[2];
    fs::write(c.shared_dir.join(".raftshareignore"), b"*.log\n").unwrap();
    fs::write(c.shared_dir.join("x.log"), b"c's own log").unwrap();
    c.start_ready();

    fs::remove_file(cluster.nodes[0].shared_dir.join("y.txt")).unwrap();
    let c = &cluster.nodes[2];
    wait_until(SETTLE, "c to apply the delete of y.txt", || (!c.shared_dir.join("y.txt").exists()).then_some(()));
    wait_until(SETTLE, "the tombstone of y.txt to be forgotten (every node applied it)", || {
        let out = cluster.nodes[0].cli_ok(&["ls", "--all", "--json"]);
        (!out.contains("\"y.txt\"")).then_some(())
    });
    assert_eq!(fs::read(c.shared_dir.join("x.log")).unwrap(), b"c's own log", "c's ignored file is its own");
}

/// The list named `field` of a node's status, once an entry satisfies `found`.
fn status_list(node: &TestNode, field: &str, what: &str, found: impl Fn(&str) -> bool) -> Vec<String> {
    wait_until(SETTLE, &format!("status's {field} to name {what}"), || {
        let list: Vec<String> =
            node.status()?[field].as_array()?.iter().filter_map(|v| v.as_str().map(String::from)).collect();
        list.iter().any(|p| found(p)).then_some(list)
    })
}

/// A path this node cannot hold (here: under a folder that is a link on this disk) is
/// said in `status`, never written through the link, and holds nothing else back.
#[test]
fn a_path_this_disk_cannot_hold_is_named_and_holds_nothing_back() {
    let cluster = Cluster::start(2);
    let outside = tempfile::tempdir().unwrap();
    let b = &cluster.nodes[1];
    std::os::unix::fs::symlink(outside.path(), b.shared_dir.join("docs")).unwrap();
    cluster.nodes[0].write("docs/a.txt", b"through a link on b");
    let listed = status_list(b, "cannot_hold", "docs/a.txt", |p| p.starts_with("docs/a.txt"));
    assert!(listed.iter().any(|p| p.contains("link")), "the reason is given: {listed:?}");
    assert!(b.cli_ok(&["status"]).contains("not here  docs/a.txt"), "plain status names it");
    cluster.nodes[0].write("after.txt", b"later");
    wait_until(SETTLE, "b to get a later file", || b.shared_dir.join("after.txt").exists().then_some(()));
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "nothing was written through the link");
}

/// A file whose name is not UTF-8 cannot be synced: its node says so, with what to do.
#[test]
fn a_name_that_is_not_utf8_is_named_in_status() {
    use std::os::unix::ffi::OsStrExt;
    let cluster = Cluster::start(1);
    let a = &cluster.nodes[0];
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(a.shared_dir.join(name), b"latin-1 name").unwrap();
    // A look at the whole folder (a restart's) finds it.
    let mut cluster = cluster;
    cluster.nodes[0].stop();
    cluster.nodes[0].start_ready();
    let listed = status_list(&cluster.nodes[0], "unreadable", "the latin-1 name", |p| p.contains("not valid UTF-8"));
    assert!(listed.iter().any(|p| p.starts_with("caf")), "{listed:?}");
}
