//! Symlinks in the shared folder are not followed.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use raftshare_raft::proto::BlockRequest;
use raftshare_raft::Digest;

use crate::common::{hash_hex, tree_of, Cluster, TestNode};
use crate::{assert_no_panic, listing, ls_all, still_syncs, wait_applied, wait_idle, Mallory, Outside, SETTLE};

/// Secrets outside `node`'s shared folder, and symlinks to them inside it.
struct Secrets {
    dir: PathBuf,
    file: PathBuf,
    hashes: Mutex<BTreeSet<String>>,
}

impl Secrets {
    fn plant(node: &TestNode) -> Secrets {
        let parent = node.shared_dir.parent().unwrap();
        let dir = parent.join("secret-dir");
        fs::create_dir_all(dir.join("inner")).unwrap();
        let file = parent.join("secret-file.txt");
        let secrets = Secrets { dir, file, hashes: Mutex::new(BTreeSet::new()) };
        secrets.write(&secrets.dir.join("secret.txt"), "SECRET in a folder outside");
        secrets.write(&secrets.dir.join("inner/deeper.txt"), "SECRET deeper in a folder outside");
        secrets.write(&secrets.file, "SECRET file outside");
        let shared = &node.shared_dir;
        symlink(&secrets.dir, shared.join("linked-dir")).unwrap();
        symlink(&secrets.file, shared.join("linked-file.txt")).unwrap();
        symlink("../secret-dir", shared.join("relative-link")).unwrap();
        symlink(shared, shared.join("loop")).unwrap();
        symlink(parent.join("nowhere"), shared.join("dangling")).unwrap();
        fs::create_dir_all(shared.join("real")).unwrap();
        symlink("../linked-dir/secret.txt", shared.join("real/link-to-link.txt")).unwrap();
        secrets
    }

    /// Write a secret outside the folder, remembering its hash.
    fn write(&self, path: &Path, text: &str) {
        fs::write(path, text).unwrap();
        self.hashes.lock().unwrap().insert(hash_hex(text.as_bytes()));
    }

    /// No node lists a path through a link, or content that is a secret; no folder holds one.
    fn assert_not_leaked(&self, nodes: &[&TestNode]) {
        let hashes = self.hashes.lock().unwrap().clone();
        let links = ["linked-dir", "linked-file.txt", "relative-link", "loop", "dangling", "real/link-to-link.txt"];
        for node in nodes {
            for f in ls_all(node) {
                let path = f["path"].as_str().unwrap();
                assert!(!links.iter().any(|l| path.starts_with(l)), "{} lists {path}, through a symlink", node.name);
                assert!(
                    !hashes.contains(f["hash"].as_str().unwrap()),
                    "{} lists {path} with a secret's content",
                    node.name
                );
            }
            for (path, hash) in node.tree() {
                assert!(!hashes.contains(&hash), "{} holds a secret at {path}", node.name);
            }
        }
    }
}

#[test]
fn symlinks_made_while_the_node_runs_are_not_followed() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    let outside = Outside::guard(b);
    let secrets = Secrets::plant(a);
    still_syncs(&nodes, a, "after-the-links.txt");
    wait_idle(&nodes);
    secrets.assert_not_leaked(&nodes);

    // Secrets that change or appear behind the links are not seen either.
    secrets.write(&secrets.dir.join("secret.txt"), "SECRET in a folder outside, changed");
    secrets.write(&secrets.dir.join("new-secret.txt"), "SECRET new in a folder outside");
    secrets.write(&secrets.file, "SECRET file outside, changed");
    still_syncs(&nodes, a, "after-the-secrets-changed.txt");
    wait_idle(&nodes);
    secrets.assert_not_leaked(&nodes);
    // Nothing was written through the links either.
    assert!(fs::symlink_metadata(a.shared_dir.join("linked-dir")).unwrap().file_type().is_symlink());
    let behind: Vec<String> = listing(&secrets.dir).into_iter().collect();
    assert_eq!(behind, ["inner", "inner/deeper.txt", "new-secret.txt", "secret.txt"], "the folder behind the link");
    assert_eq!(fs::read(&secrets.file).unwrap(), b"SECRET file outside, changed");
    outside.assert_untouched("secret");
    assert_no_panic(&nodes);
}

#[test]
fn symlinked_folders_present_at_start_are_not_followed() {
    let mut cluster = Cluster::start(2);
    let secrets = Secrets::plant(&cluster.nodes[0]);
    cluster.nodes[0].stop();
    cluster.nodes[0].start_ready();
    cluster.wait_converged(SETTLE);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    still_syncs(&nodes, a, "after-the-restart.txt");
    secrets.assert_not_leaked(&nodes);

    secrets.write(&secrets.dir.join("secret.txt"), "SECRET in a folder outside, changed after the restart");
    secrets.write(&secrets.dir.join("new-after-restart.txt"), "SECRET new after the restart");
    secrets.write(&secrets.dir.join("inner/deeper.txt"), "SECRET deeper, changed after the restart");
    still_syncs(&nodes, a, "after-the-secrets-changed.txt");
    wait_idle(&nodes);
    secrets.assert_not_leaked(&nodes);
    assert_no_panic(&nodes);
}

#[test]
fn a_synced_file_under_a_locally_symlinked_folder_is_neither_read_nor_written_through_it() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    // On b, `notes` is a symlink to a folder outside; on a, a real folder of that name.
    let behind = b.shared_dir.parent().unwrap().join("behind-the-link");
    fs::create_dir_all(&behind).unwrap();
    fs::write(behind.join("plan.txt"), b"SECRET private plan of b").unwrap();
    symlink(&behind, b.shared_dir.join("notes")).unwrap();
    let outside = Outside::guard(b);
    let before = tree_of(&behind);

    a.write("notes/plan.txt", b"a's plan, in a real folder");
    a.write("notes/new.txt", b"a's new note");
    still_syncs(&nodes, a, "after-the-notes.txt");
    // Give b's applier and scanner every chance to act on the two notes.
    wait_applied(&nodes, a.stat("committed_index"));
    still_syncs(&nodes, b, "after-the-notes-2.txt");

    // Every way it goes wrong, together.
    let mut wrong = Vec::new();
    let now = tree_of(&behind);
    if now != before {
        wrong.push(format!("b changed the folder its symlink points to: {before:?} became {now:?}"));
    }
    let secret = hash_hex(b"SECRET private plan of b");
    for node in nodes {
        for f in ls_all(node) {
            if f["hash"] == secret.as_str() {
                wrong
                    .push(format!("{} lists b's private file as {} (deleted: {})", node.name, f["path"], f["deleted"]));
            }
        }
        if node.tree().values().any(|h| *h == secret) {
            wrong.push(format!("{} holds b's private file", node.name));
        }
    }
    for entry in a.log() {
        if entry["ops"].as_array().unwrap().iter().any(|op| op["hash"] == secret.as_str()) {
            wrong.push(format!("b's private file was proposed: {entry}"));
        }
    }
    if a.tree().get("notes/plan.txt") != Some(&hash_hex(b"a's plan, in a real folder")) {
        wrong.push(format!("a's notes/plan.txt is not a's any more: {:?}", a.tree()));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    outside.assert_untouched("notes");
    assert_no_panic(&nodes);
}

#[test]
fn a_block_request_through_a_symlink_does_not_read_outside_the_folder() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    let secrets = Secrets::plant(a);
    still_syncs(&nodes, a, "after-the-links.txt");
    let mallory = Mallory::connect(a);
    for (path, text) in [
        ("linked-dir/secret.txt", "SECRET in a folder outside"),
        ("relative-link/inner/deeper.txt", "SECRET deeper in a folder outside"),
        ("linked-file.txt", "SECRET file outside"),
        ("real/link-to-link.txt", "SECRET in a folder outside"),
    ] {
        let hash = Digest::of(text.as_bytes());
        let req = BlockRequest { path: path.into(), file_hash: hash, index: 0, block: hash };
        if let Ok(bytes) = mallory.block(req) {
            panic!("{path} was served through a symlink: {:?}", String::from_utf8_lossy(&bytes));
        }
    }
    secrets.assert_not_leaked(&nodes);
    assert_no_panic(&nodes);
}
