//! A file rewritten while it is read and served.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use raftshare_raft::BLOCK_SIZE;

use crate::common::{big_content, hash_hex, wait_trees, wait_until, Cluster};
use crate::{assert_no_panic, listing, wait_idle, SETTLE};

/// (folder, path) → every hash seen there.
type Samples = BTreeMap<(String, String), BTreeSet<String>>;

/// Samples the files of some folders (their metadata folder aside) until finished: each
/// file is read whenever its inode, size or mtime changed, and kept only if it did not
/// change while read.
struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Samples>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(folders: Vec<(String, PathBuf)>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Samples>> = Arc::default();
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = thread::spawn(move || {
            // What each file was when last hashed (inode, size, mtime), so an unchanged
            // file is not read again.
            let mut known: BTreeMap<PathBuf, (u64, u64, i64, i64)> = BTreeMap::new();
            while !stop2.load(Ordering::Relaxed) {
                for (name, root) in &folders {
                    for path in listing(root).into_iter().filter(|p| !p.starts_with(".raftshare")) {
                        let abs = root.join(&path);
                        let Ok(meta) = fs::symlink_metadata(&abs) else { continue };
                        if !meta.is_file() {
                            continue;
                        }
                        let stamp = (meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec());
                        if known.get(&abs) == Some(&stamp) {
                            continue;
                        }
                        let Ok(bytes) = fs::read(&abs) else { continue };
                        // Only a file that did not change while read is a sample.
                        let after =
                            fs::symlink_metadata(&abs).ok().map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()));
                        if after != Some(stamp) {
                            continue;
                        }
                        known.insert(abs, stamp);
                        seen2.lock().unwrap().entry((name.clone(), path)).or_default().insert(hash_hex(&bytes));
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        Sampler { stop, seen, thread: Some(thread) }
    }

    fn finish(mut self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("the sampler thread");
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Version `k` of a `len`-byte content: every 1 MiB block differs from the same block of
/// every other version (so nothing can be reused from an older one).
fn version(base: &[u8], k: u64) -> Vec<u8> {
    let mut out = base.to_vec();
    for (i, block) in out.chunks_mut(BLOCK_SIZE as usize).enumerate() {
        block[..8].copy_from_slice(&k.to_le_bytes());
        block[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    }
    out
}

/// How a's file gets its next version.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rewrite {
    /// In place, in one write (same size, no truncation): the bytes under a block being
    /// read or served change.
    InPlace,
    /// A whole new file renamed over it: the file being served is replaced.
    Replaced,
}

/// What a run of `rewrite_while_served` saw.
struct Rewritten {
    /// The hash of every whole version written.
    versions: BTreeSet<String>,
    /// The hashes the log committed for big.bin.
    committed: Vec<String>,
    /// Every hash b and c showed for every file of theirs.
    seen: Samples,
    last: String,
}

/// On a 3-node cluster, a 64 MiB file on a gets 5 versions, each written once b or c is
/// fetching the one before, with b's and c's folders sampled all along; returns once
/// every node holds the last.
fn rewrite_while_served(how: Rewrite) -> Rewritten {
    use std::os::unix::fs::FileExt;
    const SIZE: usize = 64 << 20;
    const REWRITES: u64 = 4;
    let cluster = Cluster::start(3);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let nodes = [a, b, c];
    let sampler = Sampler::start(vec![("b".into(), b.shared_dir.clone()), ("c".into(), c.shared_dir.clone())]);

    let base = big_content(SIZE, 42);
    let path = a.shared_dir.join("big.bin");
    // Staged beside the folder, same file system: the rename is atomic.
    let staged = a.shared_dir.parent().unwrap().join("big.bin.staged");
    let mut versions = BTreeSet::new();
    let mut file = None;
    for k in 0..=REWRITES {
        let content = version(&base, k);
        let hash = hash_hex(&content);
        versions.insert(hash.clone());
        let received = b.stat("bytes_received") + c.stat("bytes_received");
        match (how, &file) {
            // The first version appears whole either way: an empty file, made and then
            // filled, is a real state of the folder that the scanner may commit.
            (Rewrite::InPlace, Some(f)) => {
                let f: &fs::File = f;
                f.write_all_at(&content, 0).unwrap();
                f.sync_data().unwrap();
            }
            _ => {
                fs::write(&staged, &content).unwrap();
                fs::rename(&staged, &path).unwrap();
                if how == Rewrite::InPlace {
                    file = Some(fs::OpenOptions::new().write(true).open(&path).unwrap());
                }
            }
        }
        if k < REWRITES {
            wait_until(SETTLE, &format!("b or c to fetch version {k}"), || {
                let fetched = b.stat("bytes_received") + c.stat("bytes_received") >= received + 2 * BLOCK_SIZE;
                let has = [b, c].iter().any(|n| n.tree().get("big.bin") == Some(&hash));
                (fetched || has).then_some(())
            });
        }
    }
    drop(file);
    let last = hash_hex(&version(&base, REWRITES));
    let want = BTreeMap::from([("big.bin".to_string(), last.clone())]);
    wait_trees(&nodes, Some(&want), Duration::from_secs(60), "every node to hold a's last version");
    let seen = sampler.finish();
    let committed = a
        .log()
        .iter()
        .flat_map(|entry| entry["ops"].as_array().unwrap().clone())
        .filter(|op| op["op"] == "put" && op["path"] == "big.bin")
        .map(|op| op["hash"].as_str().unwrap().to_string())
        .collect();
    wait_idle(&nodes);
    assert_no_panic(&nodes);
    Rewritten { versions, committed, seen, last }
}

/// b and c only ever showed big.bin, with content from `legit`, and ended with the last.
fn assert_only(run: &Rewritten, legit: &BTreeSet<String>) {
    for ((node, path), hashes) in &run.seen {
        assert_eq!(path, "big.bin", "{node} showed another file");
        let strays: Vec<&String> = hashes.difference(legit).collect();
        assert!(strays.is_empty(), "{node} showed {path} with content a's folder never had: {strays:?}");
    }
    for node in ["b", "c"] {
        let shown = run.seen.get(&(node.into(), "big.bin".into()));
        assert!(shown.is_some_and(|h| h.contains(&run.last)), "the sampler never saw {node} with the last version");
    }
}

#[test]
fn a_file_replaced_while_it_is_served_arrives_only_as_whole_versions() {
    let run = rewrite_while_served(Rewrite::Replaced);
    // a's folder only ever held whole versions: nothing else may be committed or shown.
    let torn: Vec<&String> = run.committed.iter().filter(|h| !run.versions.contains(*h)).collect();
    assert!(torn.is_empty(), "a committed content no version had: {torn:?}");
    assert_only(&run, &run.versions);
}

#[test]
fn a_file_rewritten_in_place_while_it_is_served_never_arrives_as_a_mix() {
    let run = rewrite_while_served(Rewrite::InPlace);
    // A read of a's file that overlaps a rewrite can be committed (the README accepts a
    // half-written in-place edit: its size and mtime did not change while hashed); such
    // content is then a real state of a's folder. What b and c show must be a whole
    // version or such a committed state: never a mix assembled from blocks of two.
    let legit: BTreeSet<String> = run.versions.iter().chain(&run.committed).cloned().collect();
    assert_only(&run, &legit);
}
