//! Sets of files for `burst`, `scale` and `many`: staged outside the folder, moved in or
//! out of the writer's folder at once, and waited for on the other nodes (counted cheaply,
//! then compared by content).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::bed::Bed;
use super::{round3, SEED};
use crate::cluster::Node;
use crate::{rng, tree};

/// A set of files prepared outside the folder: relative path (under the set's top
/// folder) → BLAKE3 hex.
pub(super) type Expected = BTreeMap<String, String>;

/// Where a set of files lives in a shared folder.
#[derive(Debug, Clone, Copy)]
pub(super) enum Place<'a> {
    /// Under this folder (moved in and out with one rename).
    Folder(&'a str),
    /// At the top of the shared folder, every name starting with this (moved one by one).
    Top(&'a str),
}

impl Place<'_> {
    /// The folder to look in, and the prefix names at its top must have.
    fn within<'p>(&'p self, shared: &Path) -> (PathBuf, &'p str) {
        match self {
            Place::Folder(sub) => (shared.join(sub), ""),
            Place::Top(prefix) => (shared.to_path_buf(), prefix),
        }
    }
}

/// Write `n` files of `size` bytes under `dir` (laid out by `fanout`, see `nested_path`,
/// each name starting with `prefix`); what they hold. They are on disk when it returns:
/// the nodes share this disk, and a node's sync during the measured time must not be
/// the one writing the harness's staging (on separate machines it never would be).
pub(super) fn stage_files(
    dir: &Path,
    prefix: &str,
    n: usize,
    size: usize,
    fanout: &[usize],
    tag: u64,
) -> Result<Expected> {
    let mut expected = Expected::new();
    fs::create_dir_all(dir)?;
    for i in 0..n {
        let rel = format!("{prefix}{}", nested_path(i, fanout));
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let bytes = rng::content(SEED ^ tag, i as u64, 2, size);
        fs::write(&path, &bytes).with_context(|| format!("cannot stage {}", path.display()))?;
        expected.insert(rel, tree::hash_hex(&bytes));
    }
    sync_filesystem(dir).with_context(|| format!("cannot sync the files staged in {}", dir.display()))?;
    Ok(expected)
}

/// Flush everything written to the filesystem `dir` is on (`syncfs`).
fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let folder = fs::File::open(dir)?;
    // SAFETY: syncfs takes a descriptor, held open by `folder` across the call.
    match unsafe { libc::syncfs(folder.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The path of file `i` in a tree whose levels have `fanout[k]` folders each:
/// `[10, 10]` gives `d3/e7/f000073.bin` for 73 (100 leaf folders, files spread evenly).
fn nested_path(i: usize, fanout: &[usize]) -> String {
    let mut out = String::new();
    let mut rest = i;
    for (level, &k) in fanout.iter().enumerate() {
        let letter = (b'd' + level as u8) as char;
        out += &format!("{letter}{}/", rest % k.max(1));
        rest /= k.max(1);
    }
    out + &format!("f{i:07}.bin")
}

/// Regular files under `dir` whose top-level name starts with `prefix` (the metadata
/// folder left out), counted from the folder entries alone (no stat, no read): cheap
/// enough to ask often. A missing folder holds none.
fn count_files(dir: &Path, prefix: &str) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            if d == dir {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name == tree::META_DIR || !name.starts_with(prefix) {
                    continue;
                }
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// Whether `dir` holds exactly `expected` among its paths starting with `prefix` (paths
/// and contents); else what differs.
fn check_tree(dir: &Path, prefix: &str, expected: &Expected) -> Result<(), String> {
    let mut seen = tree::tree_of(dir);
    seen.retain(|path, _| path.starts_with(prefix));
    if seen.len() != expected.len() {
        return Err(format!("{} files instead of {}", seen.len(), expected.len()));
    }
    for (path, hash) in expected {
        match seen.get(path) {
            None => return Err(format!("{path} is missing")),
            Some(s) if &s.hash != hash => return Err(format!("{path} has other content")),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Wait until every node of `nodes` holds `want` files at `place` (checked against
/// `expected` when given); the time each got there, from `t0`. Each round counts every
/// waiting node first and only then reads the contents of those that have the count, so
/// one node's check is never part of another's time. Rounds start at most every ~10×
/// what the counting costs, so the harness stays out of the nodes' way.
fn wait_files(
    nodes: &[Arc<Node>],
    place: Place,
    want: usize,
    expected: Option<&Expected>,
    t0: Instant,
    bound: Duration,
) -> Result<Vec<(String, f64)>> {
    let mut done: Vec<(String, f64)> = Vec::new();
    let mut last_count: BTreeMap<String, usize> = BTreeMap::new();
    let mut mismatch: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let round = Instant::now();
        let mut counted = Vec::new();
        for node in nodes {
            if done.iter().any(|(n, _)| n == &node.name) {
                continue;
            }
            let (dir, prefix) = place.within(&node.shared_dir);
            let count = count_files(&dir, prefix);
            last_count.insert(node.name.clone(), count);
            if count == want {
                counted.push((node, t0.elapsed().as_secs_f64()));
            }
        }
        let cost = round.elapsed();
        for (node, at) in counted {
            let (dir, prefix) = place.within(&node.shared_dir);
            match expected.map(|e| check_tree(&dir, prefix, e)).unwrap_or(Ok(())) {
                Ok(()) => done.push((node.name.clone(), at)),
                Err(why) => {
                    mismatch.insert(node.name.clone(), why);
                }
            }
        }
        if done.len() == nodes.len() {
            done.sort_by(|a, b| a.0.cmp(&b.0));
            return Ok(done);
        }
        if t0.elapsed() > bound {
            let state: Vec<String> = nodes
                .iter()
                .filter(|n| !done.iter().any(|(d, _)| d == &n.name))
                .map(|n| {
                    let count = last_count.get(&n.name).copied().unwrap_or(0);
                    let why = mismatch.get(&n.name).map(|w| format!(" ({w})")).unwrap_or_default();
                    format!("{} has {count} of {want}{why}", n.name)
                })
                .collect();
            bail!(
                "after {} s, not every node has the {want} files at {place:?}: {}",
                bound.as_secs(),
                state.join("; ")
            );
        }
        let period = (cost * 10).clamp(Duration::from_millis(5), Duration::from_secs(1));
        thread::sleep(period.saturating_sub(round.elapsed()));
    }
}

/// The slowest node's time.
pub(super) fn slowest(times: &[(String, f64)]) -> f64 {
    times.iter().map(|(_, t)| *t).fold(0.0, f64::max)
}

pub(super) fn per_node(times: &[(String, f64)]) -> Value {
    Value::Object(times.iter().map(|(n, t)| (n.clone(), json!(round3(*t)))).collect())
}

/// Seconds per node until a set of files was synced, and the seconds the harness itself
/// took to move the files in or out (on a busy machine, part of every node's time).
pub(super) type Moved = (Vec<(String, f64)>, f64);

/// Move a staged set of files into the writer's folder at `place` and wait until the
/// other nodes hold the same. A folder moves in with one rename; files at the top one
/// rename each, as fast as they go (the clock starts before the first).
pub(super) fn sync_set(
    bed: &Bed,
    writer: &Node,
    staged: &Path,
    place: Place,
    expected: &Expected,
    bound: Duration,
) -> Result<Moved> {
    let names = match place {
        Place::Top(_) => expected.keys().cloned().collect(),
        Place::Folder(_) => Vec::new(),
    };
    let t0 = Instant::now();
    match place {
        Place::Folder(sub) => fs::rename(staged, writer.shared_dir.join(sub))
            .with_context(|| format!("cannot move {sub} into the folder"))?,
        Place::Top(_) => {
            for name in &names {
                fs::rename(staged.join(name), writer.shared_dir.join(name))
                    .with_context(|| format!("cannot move {name} into the folder"))?;
            }
        }
    }
    let moved = t0.elapsed().as_secs_f64();
    Ok((wait_files(&bed.others(writer), place, expected.len(), Some(expected), t0, bound)?, moved))
}

/// Take a set of files out of the writer's folder at once (renamed to `to`, outside it)
/// and wait until it is gone from the other nodes.
pub(super) fn remove_set(bed: &Bed, writer: &Node, place: Place, to: &Path, bound: Duration) -> Result<Moved> {
    fs::create_dir_all(to)?;
    let (dir, prefix) = place.within(&writer.shared_dir);
    let names: Vec<String> = match place {
        Place::Top(_) => fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(prefix))
            .collect(),
        Place::Folder(_) => Vec::new(),
    };
    let t0 = Instant::now();
    match place {
        Place::Folder(sub) => fs::rename(&dir, to.join(sub))?,
        Place::Top(_) => {
            for name in &names {
                fs::rename(dir.join(name), to.join(name))?;
            }
        }
    }
    let moved = t0.elapsed().as_secs_f64();
    Ok((wait_files(&bed.others(writer), place, 0, None, t0, bound)?, moved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_spread_files_over_the_folders() {
        assert_eq!(nested_path(73, &[10, 10]), "d3/e7/f0000073.bin");
        assert_eq!(nested_path(5, &[]), "f0000005.bin");
        let folders: std::collections::BTreeSet<String> =
            (0..1000).map(|i| nested_path(i, &[10, 10]).rsplit_once('/').unwrap().0.to_string()).collect();
        assert_eq!(folders.len(), 100);
    }

    #[test]
    fn files_are_counted_without_the_others() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(count_files(&dir.path().join("missing"), ""), 0);
        let expected = stage_files(dir.path(), "", 25, 10, &[3, 2], 9).unwrap();
        assert_eq!(count_files(dir.path(), ""), 25);
        assert_eq!(check_tree(dir.path(), "", &expected), Ok(()));
        let top = stage_files(dir.path(), "top-", 4, 10, &[], 9).unwrap();
        fs::create_dir_all(dir.path().join(tree::META_DIR)).unwrap();
        fs::write(dir.path().join(tree::META_DIR).join("top-x"), b"meta").unwrap();
        assert_eq!(count_files(dir.path(), "top-"), 4, "only the prefix, never the metadata folder");
        assert_eq!(count_files(dir.path(), ""), 29);
        assert_eq!(check_tree(dir.path(), "top-", &top), Ok(()));
        assert_eq!(check_tree(dir.path(), "", &expected), Err("29 files instead of 25".into()));
        fs::write(dir.path().join(format!("top-{}", nested_path(2, &[]))), b"changed").unwrap();
        assert!(check_tree(dir.path(), "top-", &top).unwrap_err().contains("other content"));
    }
}
