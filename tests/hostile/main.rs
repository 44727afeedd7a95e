//! Hostile input against real `raftshare` processes on 127.0.0.1: paths and records from
//! a peer that holds the cluster key, block requests for what a node must not serve,
//! names that differ only in case, symlinks in the shared folder, a broken config or
//! database at start, a file rewritten while it is served, and a full disk.
//!
//! After each, the nodes must still serve their cluster (a new file still syncs, `status`
//! answers), nothing outside the shared folders may have changed (a canary folder beside
//! each shared folder, the listing of the shared folder's parent), and no node may have
//! panicked.
//!
//! One test binary, one module per kind of hostile input; this file holds what they
//! share: a peer gone bad (`Mallory`) and the checks every section ends with.

#[path = "../common/mod.rs"]
mod common;

mod block_requests;
mod broken_at_start;
mod case;
mod full_disk;
mod paths;
mod records;
mod rewritten;
mod symlinks;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::{hash_hex, tree_of, wait_until, TestNode};
use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::key::{ClusterKey, Identity};
use raftshare_raft::proto::{BlockRequest, Request, Response};
use raftshare_raft::transport::{Client, TransportConfig};
use raftshare_raft::{Change, Digest, FileOp, OpOutcome, BLOCK_SIZE};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------
// Helpers

/// A connection to a node made as a peer makes it: with the cluster key from the node's
/// data dir, through the real handshake, and then any request a peer may send.
struct Mallory {
    /// The node whose identity it holds: its changes are that node's.
    as_node: u64,
    // Dropped before the runtime its tasks run on.
    client: Client,
    rt: tokio::runtime::Runtime,
}

impl Mallory {
    fn connect(node: &TestNode) -> Mallory {
        let key = ClusterKey::from_hex(&node.key()).expect("the node's key file holds a key");
        let mut cfg = TransportConfig::new(key);
        // A member gone bad: it holds the identity key of the node it talks to (a
        // member's own), so the node takes it for that member.
        let identity = fs::read_to_string(node.data_path().join("identity.key")).expect("the node's identity file");
        cfg.identity = Some(Identity::from_text(&identity).expect("the node's identity file holds an identity"));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let addr = node.addr();
        let client = rt.block_on(Client::connect(&addr, &cfg)).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Mallory { as_node: node.node_id(), client, rt }
    }

    fn call(&self, req: Request) -> Response {
        let what: String = format!("{req:?}").chars().take(200).collect();
        self.rt
            .block_on(self.client.call(req, Duration::from_secs(15)))
            .unwrap_or_else(|e| panic!("the node did not answer {what}: {e}"))
    }

    /// Commits `op` as a change made on the node it holds the identity of (under the name
    /// "mallory"); its index and outcomes.
    fn propose(&self, op: FileOp) -> (u64, Vec<OpOutcome>) {
        let change =
            Change { origin: self.as_node, origin_name: "mallory".into(), at_ms: 1_700_000_000_000, op, seqs: vec![] };
        match self.call(Request::Admin(AdminRequest::Propose { change, hops: 0 })) {
            Response::Admin(AdminResponse::Committed { index, result }) => (index, result.outcomes),
            other => panic!("a proposal was answered with {other:?}"),
        }
    }

    fn block(&self, req: BlockRequest) -> Result<Vec<u8>, String> {
        match self.call(Request::Block(req)) {
            Response::Block(result) => result.map(|bytes| bytes.into_vec()),
            other => panic!("a block request was answered with {other:?}"),
        }
    }

    fn status(&self) -> Value {
        match self.call(Request::Admin(AdminRequest::Status)) {
            Response::Admin(AdminResponse::Status(report)) => serde_json::to_value(report).unwrap(),
            other => panic!("status was answered with {other:?}"),
        }
    }
}

fn put(path: &str, content: &[u8]) -> FileOp {
    FileOp::Put {
        path: path.into(),
        size: content.len() as u64,
        hash: Digest::of(content),
        blocks: content.chunks(BLOCK_SIZE as usize).map(Digest::of).collect(),
        mtime: 1_700_000_000_000_000_000,
        base: None,
    }
}

fn delete(path: &str) -> FileOp {
    FileOp::Delete { path: path.into(), base: Some(1) }
}

/// `ls --all --json` of a node.
fn ls_all(node: &TestNode) -> Vec<Value> {
    let out = node.cli_ok(&["ls", "--all", "--json"]);
    serde_json::from_str::<Value>(&out).expect("ls --json is JSON").as_array().expect("an array").clone()
}

fn ls_paths(node: &TestNode) -> BTreeSet<String> {
    ls_all(node).iter().map(|f| f["path"].as_str().expect("a path").to_string()).collect()
}

/// Wait until every node has applied the entry at `index`.
fn wait_applied(nodes: &[&TestNode], index: u64) {
    wait_until(SETTLE, &format!("every node to apply entry {index}"), || {
        nodes
            .iter()
            .all(|n| n.status().and_then(|s| s["applied_index"].as_u64()).is_some_and(|i| i >= index))
            .then_some(())
    });
}

/// Wait until the nodes have nothing in their outbox and nothing to download.
fn wait_idle(nodes: &[&TestNode]) {
    wait_until(SETTLE, "every node to have nothing pending", || {
        nodes
            .iter()
            .all(|n| n.status().is_some_and(|s| s["pending_outbox"] == 0 && s["pending_downloads"] == 0))
            .then_some(())
    });
}

/// Write `name` on `from` and wait until every node has it: the cluster still syncs.
fn still_syncs(nodes: &[&TestNode], from: &TestNode, name: &str) {
    let body = format!("{name} written by {} to show the cluster still syncs", from.name);
    from.write(name, body.as_bytes());
    let want = hash_hex(body.as_bytes());
    let started = Instant::now();
    while !nodes.iter().all(|n| n.tree().get(name) == Some(&want)) {
        if started.elapsed() > SETTLE {
            let report: Vec<String> = nodes
                .iter()
                .map(|n| format!("{}: has it {}, status {:?}", n.name, n.tree().contains_key(name), n.status()))
                .collect();
            panic!(
                "timed out after {SETTLE:?} waiting for {name} from {} to reach every node:\n{}",
                from.name,
                report.join("\n")
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    for node in nodes {
        assert!(node.status().is_some(), "{} answers status", node.name);
    }
}

fn assert_no_panic(nodes: &[&TestNode]) {
    for node in nodes {
        let log = node.log_text();
        assert!(!log.contains("panicked"), "{} panicked:\n{}", node.name, tail(&log, 60));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Names of every entry under `dir` (recursively, symlinks not followed), relative.
fn listing(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// What must not change outside a node's shared folder: a canary folder beside it (names
/// and contents), and the names in the shared folder's parent.
struct Outside {
    parent: PathBuf,
    canary: PathBuf,
    parent_names: BTreeSet<String>,
    canary_tree: BTreeMap<String, String>,
}

impl Outside {
    /// Make the canary beside `node`'s shared folder and remember how things look.
    fn guard(node: &TestNode) -> Outside {
        let parent = node.shared_dir.parent().expect("the shared folder has a parent").to_path_buf();
        let canary = parent.join("canary");
        fs::create_dir_all(canary.join("sub")).unwrap();
        fs::write(canary.join("keep.txt"), format!("canary of {}", node.name)).unwrap();
        fs::write(canary.join("sub/deep.txt"), b"deeper canary").unwrap();
        let mut outside = Outside { parent, canary, parent_names: BTreeSet::new(), canary_tree: BTreeMap::new() };
        outside.parent_names = outside.top_names();
        outside.canary_tree = tree_of(&outside.canary);
        outside
    }

    fn top_names(&self) -> BTreeSet<String> {
        fs::read_dir(&self.parent).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }

    /// Nothing beside the shared folder changed, and no entry named like `marker` exists
    /// anywhere in the node's temp dir outside its shared folder.
    fn assert_untouched(&self, marker: &str) {
        assert_eq!(self.top_names(), self.parent_names, "the shared folder's parent {} changed", self.parent.display());
        assert_eq!(tree_of(&self.canary), self.canary_tree, "the canary {} changed", self.canary.display());
        let canary_names = listing(&self.canary);
        assert_eq!(canary_names, BTreeSet::from(["keep.txt".into(), "sub".into(), "sub/deep.txt".into()]));
        let strays: Vec<String> =
            listing(&self.parent).into_iter().filter(|p| !p.starts_with("shared") && p.contains(marker)).collect();
        assert!(strays.is_empty(), "entries named like {marker:?} outside the shared folder: {strays:?}");
    }
}

/// Real disk space (not the apparent size of sparse files) used by a node's temp files.
fn temp_bytes(node: &TestNode) -> u64 {
    let tmp = node.shared_dir.join(".raftshare/tmp");
    fs::read_dir(tmp).map(|d| d.flatten().map(|e| e.metadata().unwrap().blocks() * 512).sum()).unwrap_or(0)
}

/// Copy the folder `from` to `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}
