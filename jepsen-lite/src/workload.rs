//! The workload: carries out the plan's edits in the nodes' folders, the way a user and
//! their editor would, and records each change it made (`Record::Op`).
//!
//! A write is either a rename of a finished file from outside the folder (atomic) or an
//! in-place truncate-and-write. The node's folder lock is held while writing, so the
//! sampler never reads a file the workload is in the middle of writing.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Node};
use crate::history::{Change, History, Op, Record};
use crate::plan::{PlannedOp, WorkOp};
use crate::rng;
use crate::tree::{self, hash_hex};

/// (path, hash) pairs the workload wrote, shared with the sampler.
pub type Written = Mutex<HashSet<(String, String)>>;

/// Carries out planned edits.
pub struct Workload<'a> {
    pub cluster: &'a Cluster,
    pub history: &'a History,
    pub seed: u64,
    pub written: &'a Written,
}

impl Workload<'_> {
    /// Carry out `ops`, each at its time after `start`, until they are done or `stop`.
    pub fn run(&self, ops: &[PlannedOp], start: Instant, stop: &AtomicBool) {
        for op in ops {
            let at = start + Duration::from_millis(op.at_ms);
            while Instant::now() < at {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                thread::sleep((at - Instant::now()).min(Duration::from_millis(50)));
            }
            if stop.load(Ordering::SeqCst) {
                return;
            }
            self.execute(op);
        }
    }

    fn execute(&self, planned: &PlannedOp) {
        let id = planned.id;
        match &planned.op {
            WorkOp::Write { slot, path, len, in_place, new } => {
                let Some(node) = self.cluster.slot(*slot) else { return };
                let bytes = rng::content(self.seed, id, 0, *len);
                let cause = if *new { "add" } else { "modify" };
                let _guard = node.folder_lock.lock().unwrap_or_else(|p| p.into_inner());
                self.write(&node, id, path, &bytes, *in_place, cause);
            }
            WorkOp::Concurrent { slots, path, len } => {
                let (Some(a), Some(b)) = (self.cluster.slot(slots[0]), self.cluster.slot(slots[1])) else { return };
                if a.id == b.id {
                    return;
                }
                let first = rng::content(self.seed, id, 0, *len);
                let second = rng::content(self.seed, id, 1, *len);
                let _ga = a.folder_lock.lock().unwrap_or_else(|p| p.into_inner());
                let _gb = b.folder_lock.lock().unwrap_or_else(|p| p.into_inner());
                self.write(&a, id, path, &first, false, "concurrent");
                self.write(&b, id, path, &second, false, "concurrent");
            }
            WorkOp::Delete { slot, path } => {
                let Some(node) = self.cluster.slot(*slot) else { return };
                let _guard = node.folder_lock.lock().unwrap_or_else(|p| p.into_inner());
                let t_start_ms = self.history.t_ms();
                match fs::remove_file(node.shared_dir.join(path)) {
                    Ok(()) => self.op(&node, id, t_start_ms, Change::Delete, path, None, "delete", false),
                    Err(e) => self.skipped(&node, id, format!("delete {path}: {}", why(&e))),
                }
            }
            WorkOp::Rename { slot, from, to } => {
                let Some(node) = self.cluster.slot(*slot) else { return };
                let _guard = node.folder_lock.lock().unwrap_or_else(|p| p.into_inner());
                let t_start_ms = self.history.t_ms();
                let source = node.shared_dir.join(from);
                if !source.is_file() {
                    self.skipped(&node, id, format!("rename {from} -> {to}: {from} is not on this node"));
                    return;
                }
                match place(&node.shared_dir, to, &source) {
                    Ok(()) => {
                        // What moved is whatever this node had: read it where it landed.
                        let bytes = fs::read(node.shared_dir.join(to)).unwrap_or_default();
                        self.op(&node, id, t_start_ms, Change::Delete, from, None, "rename", false);
                        self.op(&node, id, t_start_ms, Change::Put, to, Some(&bytes), "rename", false);
                    }
                    Err(e) => self.skipped(&node, id, format!("rename {from} -> {to}: {}", why(&e))),
                }
            }
            WorkOp::RemoveDir { slot, dir } => {
                let Some(node) = self.cluster.slot(*slot) else { return };
                let _guard = node.folder_lock.lock().unwrap_or_else(|p| p.into_inner());
                let t_start_ms = self.history.t_ms();
                let root = node.shared_dir.join(dir.trim_end_matches('/'));
                let files = tree::tree_of(&root);
                if files.is_empty() {
                    self.skipped(&node, id, format!("remove {dir}: no files there on this node"));
                }
                // File by file, so a file the node installs meanwhile is left alone (and
                // nothing is recorded as deleted that was not).
                for rel in files.keys() {
                    let path = format!("{dir}{rel}");
                    if fs::remove_file(node.shared_dir.join(&path)).is_ok() {
                        self.op(&node, id, t_start_ms, Change::Delete, &path, None, "remove_dir", false);
                    }
                }
                remove_empty_dirs(&root);
            }
        }
    }

    /// Write `bytes` to `path` in `node`'s folder (the caller holds the folder lock).
    fn write(&self, node: &Node, id: u64, path: &str, bytes: &[u8], in_place: bool, cause: &str) {
        let t_start_ms = self.history.t_ms();
        let hash = hash_hex(bytes);
        self.written.lock().unwrap_or_else(|p| p.into_inner()).insert((path.to_string(), hash));
        let result = if in_place {
            write_in_place(&node.shared_dir, path, bytes)
        } else {
            let staged = node.staging_dir.join(format!("op{id}-{}", node.name));
            fs::write(&staged, bytes).and_then(|()| place(&node.shared_dir, path, &staged))
        };
        match result {
            Ok(()) => self.op(node, id, t_start_ms, Change::Put, path, Some(bytes), cause, in_place),
            Err(e) => self.skipped(node, id, format!("write {path}: {}", why(&e))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn op(
        &self,
        node: &Node,
        id: u64,
        t_start_ms: u64,
        change: Change,
        path: &str,
        bytes: Option<&[u8]>,
        cause: &str,
        in_place: bool,
    ) {
        if let Some(bytes) = bytes {
            let pair = (path.to_string(), hash_hex(bytes));
            self.written.lock().unwrap_or_else(|p| p.into_inner()).insert(pair);
        }
        self.history.record(&Record::Op(Op {
            id,
            t_start_ms,
            t_ms: self.history.t_ms(),
            node: node.name.clone(),
            node_id: node.id,
            change,
            path: path.to_string(),
            hash: bytes.map(hash_hex),
            size: bytes.map(|b| b.len() as u64),
            cause: cause.to_string(),
            in_place,
        }));
    }

    fn skipped(&self, node: &Node, id: u64, what: String) {
        self.history.record(&Record::Skipped { t_ms: self.history.t_ms(), id, node: node.name.clone(), what });
    }
}

fn why(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "not on this node".to_string(),
        _ => e.to_string(),
    }
}

/// Rename `from` to `rel` inside `root`, creating folders; retried when the node removes
/// a folder it emptied just as the rename needed it.
fn place(root: &Path, rel: &str, from: &Path) -> io::Result<()> {
    let target = root.join(rel);
    let parent = target.parent().unwrap_or(root);
    let mut attempt = 0;
    loop {
        attempt += 1;
        fs::create_dir_all(parent)?;
        match fs::rename(from, &target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 5 && from.exists() => continue,
            other => return other,
        }
    }
}

/// Truncate (or create) `rel` and write `bytes` into it, as many editors save.
fn write_in_place(root: &Path, rel: &str, bytes: &[u8]) -> io::Result<()> {
    let target = root.join(rel);
    let parent = target.parent().unwrap_or(root);
    let mut attempt = 0;
    loop {
        attempt += 1;
        fs::create_dir_all(parent)?;
        match File::create(&target) {
            Ok(mut file) => return file.write_all(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 5 => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Remove `dir` and the folders under it that are empty (a file that appeared stays).
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}
