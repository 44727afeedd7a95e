//! A full disk during a download, and under the database.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use raftshare_raft::BLOCK_SIZE;
use serde_json::Value;

use crate::common::{big_content, is_root, wait_until, Cluster, TestNode};
use crate::{assert_no_panic, copy_dir, listing, ls_all, ls_paths, still_syncs, temp_bytes, Mallory, Outside, SETTLE};

/// Mounts made for one test, undone (lazily, so a busy mount cannot stop it) on drop.
#[derive(Default)]
struct Mounts(Mutex<Vec<PathBuf>>);

impl Mounts {
    fn mount(&self, args: &[&str], at: &Path) {
        let status = Command::new("mount").args(args).arg(at).status().expect("run mount");
        assert!(status.success(), "mount {args:?} {} failed", at.display());
        self.0.lock().unwrap().push(at.to_path_buf());
    }

    fn undo(&self) {
        for at in self.0.lock().unwrap().drain(..).rev() {
            let _ = Command::new("umount").arg("-l").arg(&at).status();
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        self.undo();
    }
}

/// Undoes `Mounts` when dropped: declared after the nodes, it runs before their temp
/// dirs are removed, so nothing is left behind in mount points.
struct UnmountFirst<'a>(&'a Mounts);

impl Drop for UnmountFirst<'_> {
    fn drop(&mut self) {
        self.0.undo();
    }
}

/// Bytes free on the file system of `path`.
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().expect("run df");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("df said {text:?}"))
}

/// Put `node`'s shared folder (and, with `data`, its data dir too: then they share its
/// space) on a tmpfs of `size`, mounted at `disk` beside them.
fn on_small_disk(node: &TestNode, size: &str, data: bool, mounts: &Mounts) {
    let disk = node.shared_dir.parent().unwrap().join("disk");
    fs::create_dir_all(&disk).unwrap();
    mounts.mount(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"], &disk);
    fs::create_dir_all(disk.join("shared")).unwrap();
    fs::create_dir_all(&node.shared_dir).unwrap();
    mounts.mount(&["--bind", disk.join("shared").to_str().unwrap()], &node.shared_dir);
    if data {
        copy_dir(&node.data_dir, &disk.join("data"));
        mounts.mount(&["--bind", disk.join("data").to_str().unwrap()], &node.data_dir);
    }
}

/// After `b_out_of_space(_, true, _)`: b's disk kept full, and files written on `a` (a
/// quorum without b) until b's Raft stopped on the full disk. Returns what fills the disk
/// and how many files were written.
fn raft_log_on_a_full_disk(a: &TestNode, b: &TestNode) -> (Filler, usize) {
    // Once b gives its download up it removes its temp file, which frees the disk again:
    // fill it then (as another program would), so that the Raft log surely meets a full disk.
    wait_until(SETTLE, "b to give its download up", || {
        b.log_text().contains("no space left on this disk").then_some(())
    });
    let mut filler = Filler::new(b.shared_dir.parent().unwrap().join("disk/filler"));
    // sled writes into the space of segments it reuses before it needs more, and a batch
    // of changes is one small entry: write until b's log meets the full disk. b frees
    // space meanwhile (its trash, once the applier is idle): the filler takes it back.
    let mut written = 0;
    wait_until(SETTLE, "b's Raft to stop on the full disk", || {
        filler.top_up();
        for _ in 0..5 {
            let name = format!("while-full-{written}-{}.txt", "x".repeat(160));
            a.write(&name, format!("{written}: while b's disk is full").as_bytes());
            written += 1;
        }
        b.log_text().contains("Raft stopped on its own").then_some(())
    });
    (filler, written)
}

/// A file that takes whatever space is left on its disk, as another program would.
struct Filler {
    path: PathBuf,
    file: fs::File,
}

impl Filler {
    fn new(path: PathBuf) -> Filler {
        let file = fs::File::create(&path).unwrap();
        let mut filler = Filler { path, file };
        filler.top_up();
        filler
    }

    /// Writes until the disk has no space left (smaller and smaller writes: the last
    /// bytes free go too).
    fn top_up(&mut self) {
        use std::io::Write;
        let chunk = vec![0x5a; 64 << 10];
        for size in [64 << 10, 4 << 10, 512, 1] {
            while self.file.write_all(&chunk[..size]).is_ok() {}
        }
    }

    /// The user frees the space.
    fn remove(self) {
        drop(self.file);
        fs::remove_file(&self.path).unwrap();
    }
}

/// `n` nodes, b's shared folder (and with `data`, its data dir) on a 16 MiB disk, and a
/// file of 24 MiB written on a, once b's disk is full. Panics unless run as root.
fn b_out_of_space(n: usize, data: bool, mounts: &Mounts) -> Cluster {
    assert!(
        is_root(),
        "this test mounts a 16 MiB tmpfs, which needs root: run it as root (`.ci/run` does, with \
         `cargo test --workspace -- --ignored`)"
    );
    let cluster = Cluster::start_with(n, |node| {
        if node.name == "b" {
            on_small_disk(node, "16m", data, mounts);
        }
    });
    // Should a wait below fail, unmount before the nodes' temp dirs go.
    let unmount = UnmountFirst(mounts);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
    still_syncs(&nodes, a, "before-the-big-file.txt");
    // Renamed in whole: a file still being written may be synced as it stands (and then
    // b's download would be of that, not of the 24 MiB this test is about).
    let staged = a.shared_dir.with_extension("too-big.staged");
    fs::write(&staged, big_content(24 << 20, 9)).unwrap();
    fs::rename(&staged, a.shared_dir.join("too-big.bin")).unwrap();
    let disk = b.shared_dir.parent().unwrap().join("disk");
    // Full, or full a moment ago: b gives the download up and removes its temp file.
    wait_until(SETTLE, "b's disk to fill up", || {
        (free_bytes(&disk) < BLOCK_SIZE || b.log_text().contains("no space left on this disk")).then_some(())
    });
    std::mem::forget(unmount);
    cluster
}

#[test]
#[ignore = "needs root: mounts a 16 MiB tmpfs under a node's folders"]
fn a_download_larger_than_the_disk_leaves_no_partial_file_and_the_node_serving() {
    let mounts = Mounts::default();
    let cluster = b_out_of_space(2, false, &mounts);
    let _unmount = UnmountFirst(&mounts);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let outside = Outside::guard(b);

    // Nothing partial in b's folder; b answers and still takes part in the log.
    let tree = b.tree();
    assert_eq!(tree.keys().collect::<Vec<_>>(), ["before-the-big-file.txt"], "b's folder: {tree:?}");
    let mallory = Mallory::connect(b);
    assert_eq!(mallory.status()["folder_problem"], Value::Null);
    for i in 0..3 {
        a.write(&format!("while-b-is-full-{i}.txt"), b"a small file b has no room for");
    }
    wait_until(SETTLE, "b to replicate the log while its disk is full", || {
        let status = a.status()?;
        let committed = status["committed_index"].as_u64()?;
        let b_id = b.node_id();
        let member = status["members"].as_array()?.iter().find(|m| m["id"] == b_id)?.clone();
        (ls_paths(a).len() == 5 && member["matched_index"].as_u64()? >= committed).then_some(())
    });
    assert_eq!(b.status().unwrap()["role"], "follower");
    outside.assert_untouched("too-big");
    assert_no_panic(&[a, b]);
}

#[test]
#[ignore = "needs root: mounts a 16 MiB tmpfs under a node's folders"]
fn a_download_that_fills_the_disk_is_given_up_cleanly_and_syncing_resumes() {
    let mounts = Mounts::default();
    let cluster = b_out_of_space(2, false, &mounts);
    let _unmount = UnmountFirst(&mounts);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let mut wrong = Vec::new();

    // A measurement window, not a wait for a condition: how much b fetches while stuck.
    let fetched = b.stat("bytes_received");
    thread::sleep(Duration::from_secs(3));
    let again = b.stat("bytes_received") - fetched;
    if again > 24 << 20 {
        wrong.push(format!("in 3 s with a full disk, b fetched {again} bytes again for a 24 MiB file"));
    }

    // The source deletes the file: b drops the download, its temp file, and syncs again.
    fs::remove_file(a.shared_dir.join("too-big.bin")).unwrap();
    a.write("after-the-big-file.txt", b"after");
    let resumed = (|| {
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            if b.tree().contains_key("after-the-big-file.txt") && temp_bytes(b) < BLOCK_SIZE {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    })();
    if !resumed {
        wrong.push(format!(
            "{SETTLE:?} after the source deleted it, b still holds {} bytes of temp files ({:?}) and has not \
             received after-the-big-file.txt",
            temp_bytes(b),
            listing(&b.shared_dir.join(".raftshare/tmp"))
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_no_panic(&[a, b]);
}

#[test]
#[ignore = "needs root: mounts a 16 MiB tmpfs under a node's folders"]
fn a_full_disk_under_the_database_does_not_stop_raft_for_good() {
    let mounts = Mounts::default();
    let cluster = b_out_of_space(3, true, &mounts);
    let _unmount = UnmountFirst(&mounts);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let (filler, written) = raft_log_on_a_full_disk(a, b);
    wait_until(SETTLE, "a and c to commit the files written", || (ls_paths(a).len() >= 2 + written).then_some(()));
    fs::remove_file(a.shared_dir.join("too-big.bin")).unwrap();
    wait_until(SETTLE, "a to commit the delete", || {
        ls_all(a).iter().any(|f| f["path"] == "too-big.bin" && f["deleted"] == true).then_some(())
    });
    for temp in fs::read_dir(b.shared_dir.join(".raftshare/tmp")).unwrap().flatten() {
        fs::remove_file(temp.path()).unwrap();
    }
    filler.remove();
    still_syncs(&[a, b, c], a, "after-space-was-freed.txt");
    assert_ne!(b.status().unwrap()["role"], "shutdown");
    assert_no_panic(&[a, b, c]);
}

#[test]
#[ignore = "needs root: mounts a 16 MiB tmpfs under a node's folders"]
fn a_node_waiting_for_space_to_start_again_stops_at_once_on_sigterm() {
    let mounts = Mounts::default();
    let mut cluster = b_out_of_space(3, true, &mounts);
    let _unmount = UnmountFirst(&mounts);
    let (mut filler, _) = raft_log_on_a_full_disk(&cluster.nodes[0], &cluster.nodes[1]);
    let b = &mut cluster.nodes[1];
    wait_until(SETTLE, "b to wait for space to start again", || {
        filler.top_up();
        b.log_text().contains("cannot start the node again yet").then_some(())
    });
    // Space is not coming back (the filler keeps the disk full): b must not wait for it.
    // `stop` sends SIGTERM and fails, with b's log, unless b exits cleanly within 15 s.
    b.stop();
}
