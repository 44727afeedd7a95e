//! Hostile input against real `raftshare` processes on 127.0.0.1: paths and records from
//! a peer that holds the cluster key, block requests for what a node must not serve,
//! names that differ only in case, symlinks in the shared folder, a broken config or
//! database at start, a file rewritten while it is served, and a full disk.
//!
//! After each, the nodes must still serve their cluster (a new file still syncs, `status`
//! answers), nothing outside the shared folders may have changed (a canary folder beside
//! each shared folder, the listing of the shared folder's parent), and no node may have
//! panicked.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{big_content, hash_hex, tree_of, wait_trees, wait_until, Cluster, TestNode, BIN};
use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::key::{ClusterKey, Identity};
use raftshare_raft::proto::{BlockRequest, Request, Response, MAX_BLOCKS_PER_REQUEST};
use raftshare_raft::transport::{Client, TransportConfig};
use raftshare_raft::{Change, Digest, FileOp, OpOutcome, BLOCK_SIZE};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(20);

/// The id our fake peer claims in the handshake (no member has it).
const MALLORY_ID: u64 = 0x4d41_4c4c;

// ---------------------------------------------------------------------------------
// Helpers

/// A connection to a node made as a peer makes it: with the cluster key from the node's
/// data dir, through the real handshake, and then any request a peer may send.
struct Mallory {
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
        Mallory { client, rt }
    }

    fn call(&self, req: Request) -> Response {
        let what: String = format!("{req:?}").chars().take(200).collect();
        self.rt
            .block_on(self.client.call(req, Duration::from_secs(15)))
            .unwrap_or_else(|e| panic!("the node did not answer {what}: {e}"))
    }

    /// Commits `op` as a change from a node called "mallory"; its index and outcomes.
    fn propose(&self, op: FileOp) -> (u64, Vec<OpOutcome>) {
        let change =
            Change { origin: MALLORY_ID, origin_name: "mallory".into(), at_ms: 1_700_000_000_000, op, seqs: vec![] };
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

// ---------------------------------------------------------------------------------
// 1. Paths from a peer holding the cluster key

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

// ---------------------------------------------------------------------------------
// Block requests for what a node must not serve

#[test]
fn hostile_block_requests_get_a_clean_error_and_the_connection_keeps_serving() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    let outside = Outside::guard(a);
    let served = big_content(BLOCK_SIZE as usize + 1000, 7);
    a.write("served.bin", &served);
    wait_until(SETTLE, "served.bin on b", || (b.tree().get("served.bin") == Some(&hash_hex(&served))).then_some(()));

    let mallory = Mallory::connect(a);
    let first = &served[..BLOCK_SIZE as usize];
    let req = |path: &str, index: u32, block: Digest| BlockRequest {
        path: path.into(),
        file_hash: Digest::of(&served),
        index,
        block,
    };
    // A genuine request is served: the checks below are not refused for another reason.
    assert_eq!(mallory.block(req("served.bin", 0, Digest::of(first))).unwrap(), first);

    let canary = fs::read(outside.canary.join("keep.txt")).unwrap();
    let canary_abs = outside.canary.join("keep.txt").display().to_string();
    let marker = fs::read(a.shared_dir.join(".raftshare/folder")).unwrap();
    let key = fs::read(a.data_dir.join("cluster.key")).unwrap();
    let mut hostile = vec![
        // Files outside the folder, with the hash of their real content.
        req("../canary/keep.txt", 0, Digest::of(&canary)),
        req(&canary_abs, 0, Digest::of(&canary)),
        req("../data/cluster.key", 0, Digest::of(&key)),
        req("a/../../data/cluster.key", 0, Digest::of(&key)),
        // The metadata folder.
        req(".raftshare/folder", 0, Digest::of(&marker)),
        // Unknown hashes, absurd indexes, paths no file can have.
        req("served.bin", 0, Digest([0x5a; 32])),
        req("served.bin", u32::MAX, Digest([1; 32])),
        req("no-such-file", 0, Digest([2; 32])),
        req("", 0, Digest([3; 32])),
        req("hostile\0nul", 0, Digest([4; 32])),
        req(&"x".repeat(5000), 0, Digest([5; 32])),
        req("..\\..\\data\\cluster.key", 0, Digest::of(&key)),
    ];
    if let Ok(passwd) = fs::read("/etc/passwd") {
        let head = &passwd[..passwd.len().min(BLOCK_SIZE as usize)];
        hostile.push(req("/etc/passwd", 0, Digest::of(head)));
        hostile.push(req("../../../../../../../../etc/passwd", 0, Digest::of(head)));
    }
    for r in hostile.clone() {
        let what = format!("{:?} block {}", r.path.chars().take(60).collect::<String>(), r.index);
        let err = match mallory.block(r) {
            Ok(bytes) => panic!("{what} was served ({} bytes)", bytes.len()),
            Err(err) => err,
        };
        assert!(err.contains("does not have block"), "{what}: unclear error: {err}");
    }
    // The same in one request for many blocks, the genuine one among them: only it is served.
    let genuine = req("served.bin", 0, Digest::of(first));
    let mut together = hostile.clone();
    together.insert(hostile.len() / 2, genuine.clone());
    let Response::Blocks(answers) = mallory.call(Request::Blocks(together.clone())) else { panic!("not Blocks") };
    assert_eq!(answers.len(), together.len(), "one answer per block asked for");
    for (r, answer) in together.iter().zip(answers) {
        let what = format!("{:?} block {} (together)", r.path.chars().take(60).collect::<String>(), r.index);
        match answer {
            Ok(bytes) => assert!(*r == genuine && bytes.as_slice() == first, "{what} was served"),
            Err(err) => assert!(*r != genuine && err.contains("does not have block"), "{what}: {err}"),
        }
    }
    // More than a request may ask for: refused in words, nothing read.
    let Response::Error(err) = mallory.call(Request::Blocks(vec![genuine; MAX_BLOCKS_PER_REQUEST + 1])) else {
        panic!("too many blocks were not refused")
    };
    assert!(err.contains(&format!("at most {MAX_BLOCKS_PER_REQUEST}")), "{err}");

    // Many at once, on the one connection.
    let many: Vec<Response> = mallory.rt.block_on(many_bad_block_requests(&mallory.client, 200));
    assert!(many.iter().all(|r| matches!(r, Response::Block(Err(_)))), "200 bad requests in flight");

    // The same connection and the node still serve.
    assert_eq!(mallory.block(req("served.bin", 1, Digest::of(&served[BLOCK_SIZE as usize..]))).unwrap().len(), 1000);
    assert_eq!(mallory.status()["folder_problem"], Value::Null);
    still_syncs(&nodes, a, "after-the-block-requests.txt");
    outside.assert_untouched("hostile");
    assert_no_panic(&nodes);
}

/// `n` requests for blocks nobody has, in flight at once on one connection.
async fn many_bad_block_requests(client: &Client, n: u32) -> Vec<Response> {
    let calls = (0..n).map(|i| {
        let req = BlockRequest {
            path: format!("../hostile-{i}"),
            file_hash: Digest([9; 32]),
            index: i,
            block: Digest([i as u8; 32]),
        };
        let client = client.clone();
        async move { client.call(Request::Block(req), Duration::from_secs(15)).await.expect("an answer") }
    });
    let mut out = Vec::new();
    for handle in calls.map(tokio::spawn).collect::<Vec<_>>() {
        out.push(handle.await.expect("a call task"));
    }
    out
}

// ---------------------------------------------------------------------------------
// Records with a valid path whose size, blocks or path no disk can hold as described

/// A put of `path` claiming `size` bytes in `blocks`, for content no node has (a hash of
/// its own per path, so no two of them share a download).
fn odd_put(path: &str, size: u64, blocks: usize) -> FileOp {
    let digest = Digest::of(format!("content no node has, for {path}").as_bytes());
    FileOp::Put { path: path.into(), size, hash: digest, blocks: vec![digest; blocks], mtime: i64::MIN, base: None }
}

/// Real disk space (not the apparent size of sparse files) used by a node's temp files.
fn temp_bytes(node: &TestNode) -> u64 {
    let tmp = node.shared_dir.join(".raftshare/tmp");
    fs::read_dir(tmp).map(|d| d.flatten().map(|e| e.metadata().unwrap().blocks() * 512).sum()).unwrap_or(0)
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

// ---------------------------------------------------------------------------------
// 2. Names that differ only in case

/// Whether the file system under `dir` tells `probe` from `PROBE`.
fn case_sensitive(dir: &Path) -> bool {
    let probe = tempfile::tempdir_in(dir).unwrap();
    fs::write(probe.path().join("probe"), b"lower").unwrap();
    fs::write(probe.path().join("PROBE"), b"upper").unwrap();
    fs::read(probe.path().join("probe")).unwrap() == b"lower"
}

#[test]
fn names_that_differ_only_in_case_are_two_files_and_no_content_is_lost() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    // Probed beside the shared folder (same file system), not in it: the probe would sync.
    let beside = a.shared_dir.parent().unwrap();
    if !case_sensitive(beside) {
        eprintln!("skipped: the file system of {} does not tell `probe` from `PROBE`", beside.display());
        return;
    }
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

// ---------------------------------------------------------------------------------
// 3. Symlinks in the shared folder are not followed

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

// ---------------------------------------------------------------------------------
// 4. A missing or damaged config or database at start

/// How long a node with a broken data dir may take to give up.
const GIVE_UP: Duration = Duration::from_secs(15);

/// A child process, killed (and reaped) when dropped, even by a panic.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `raftshare ARGS` with `RAFTSHARE_DATA_DIR=data_dir`, bounded by `GIVE_UP`: whether it
/// exited in time and succeeded, what it wrote to stderr, and how long it took. A process
/// still running at `GIVE_UP` (or that says it started a node) is killed.
fn run_bounded(data_dir: &Path, args: &[&str]) -> (Option<bool>, String, Duration) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let mut child = Reaped(
        Command::new(BIN)
            .args(args)
            .env("RAFTSHARE_DATA_DIR", data_dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out.reopen().unwrap())
            .spawn()
            .expect("spawn raftshare"),
    );
    let mut exit = None;
    let mut serving = false;
    while started.elapsed() < GIVE_UP {
        exit = child.0.try_wait().expect("wait");
        // A node that says it started is not refusing: no need to wait any longer.
        serving = fs::read_to_string(out.path()).unwrap_or_default().contains("raftshare node started");
        if exit.is_some() || serving {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let mut said = String::new();
    if exit.is_none() && serving {
        // What state it started from, for the report.
        let ask = |args: &[&str]| {
            let out = Command::new(BIN).args(args).env("RAFTSHARE_DATA_DIR", data_dir).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let status = wait_until(SETTLE, "the node to answer status", || {
            serde_json::from_str::<Value>(&ask(&["status", "--json"])).ok()
        });
        said = format!(
            "\nit started as {} with applied index {}; ls: {}",
            status["role"],
            status["applied_index"],
            ask(&["ls", "--json"]).replace('\n', "")
        );
    }
    let took = started.elapsed();
    drop(child);
    (exit.map(|e| e.success()), fs::read_to_string(out.path()).unwrap() + &said, took)
}

/// `run --headless` and `status` fail at once, saying every one of `words` (`run`'s
/// message) and of `status_words` (`status`'s), without a panic; else what went wrong.
fn refused(data_dir: &Path, case: &str, words: &[&str], status_words: &[&str]) -> Result<(), String> {
    for (args, words) in [(&["run", "--headless"][..], words), (&["status"][..], status_words)] {
        let (exit, stderr, took) = run_bounded(data_dir, args);
        let cmd = format!("{case}: `raftshare {}`", args.join(" "));
        let tail = tail(&stderr, 3);
        match exit {
            None => return Err(format!("{cmd} was still running after {took:?}:\n{}", tail.trim_start())),
            Some(true) => return Err(format!("{cmd} succeeded:\n{tail}")),
            Some(false) => {}
        }
        if stderr.contains("panicked") {
            return Err(format!("{cmd} panicked:\n{tail}"));
        }
        let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        if error.len() != 1 {
            return Err(format!("{cmd} must end with one `error:` line:\n{tail}"));
        }
        if let Some(word) = words.iter().find(|w| !error[0].contains(**w)) {
            return Err(format!("{cmd}: the error does not say {word:?}: {}", error[0]));
        }
    }
    Ok(())
}

fn assert_refused(data_dir: &Path, case: &str, words: &[&str], status_words: &[&str]) {
    if let Err(e) = refused(data_dir, case, words, status_words) {
        panic!("{e}");
    }
}

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

/// A node that ran, made a cluster and synced a file, stopped cleanly; a copy of its data
/// dir to restore between cases; and its `ls --all --json` before it stopped.
fn stopped_node() -> (TestNode, tempfile::TempDir, Vec<Value>) {
    let mut node = TestNode::init("a", &[]);
    node.start_ready();
    node.cli_ok(&["bootstrap"]);
    node.write("kept.txt", b"a file in the table");
    wait_until(SETTLE, "kept.txt in the table", || node.cli_ok(&["ls"]).contains("kept.txt").then_some(()));
    let ls = ls_all(&node);
    node.stop();
    let backup = tempfile::tempdir().unwrap();
    copy_dir(&node.data_dir, &backup.path().join("data"));
    (node, backup, ls)
}

fn restore(node: &TestNode, backup: &tempfile::TempDir) {
    let _ = fs::remove_dir_all(&node.data_dir);
    let _ = fs::remove_file(&node.data_dir);
    copy_dir(&backup.path().join("data"), &node.data_dir);
}

/// After the cases, the restored node starts and serves again (nothing was half-repaired).
fn assert_restored_node_runs(node: &mut TestNode, backup: &tempfile::TempDir) {
    restore(node, backup);
    node.start_ready();
    wait_until(SETTLE, "the restored node to lead and list kept.txt", || {
        (node.status()?["role"] == "leader" && node.cli_ok(&["ls"]).contains("kept.txt")).then_some(())
    });
    node.stop();
}

#[test]
fn a_missing_or_broken_config_stops_the_node_at_start_with_a_clear_message() {
    let (mut node, backup, _) = stopped_node();
    let config = node.data_dir.join("config.toml");
    let key = node.data_dir.join("cluster.key");
    let text = fs::read_to_string(&config).unwrap();
    let data = node.data_dir.display().to_string();
    let not_valid = ["config.toml is not a valid raftshare config"];
    let set = |line: &str, value: &str| {
        let prefix = format!("{line} = ");
        let lines: Vec<String> =
            text.lines().map(|l| if l.starts_with(&prefix) { format!("{prefix}{value}") } else { l.into() }).collect();
        lines.join("\n")
    };
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "config.toml deleted",
            Box::new(|| fs::remove_file(&config).unwrap()),
            vec!["no raftshare node is set up in", &data, "raftshare init"],
        ),
        ("config.toml empty", Box::new(|| fs::write(&config, "").unwrap()), not_valid.to_vec()),
        (
            "config.toml garbage text",
            Box::new(|| fs::write(&config, "}}} not toml {{{\n").unwrap()),
            not_valid.to_vec(),
        ),
        (
            "config.toml cut in half",
            Box::new(|| fs::write(&config, &text[..text.len() / 2]).unwrap()),
            not_valid.to_vec(),
        ),
        (
            "config.toml random bytes",
            Box::new(|| fs::write(&config, big_content(4096, 3)).unwrap()),
            vec!["config.toml"],
        ),
        (
            "config.toml wrong type",
            Box::new(|| fs::write(&config, set("node_id", "\"x\"")).unwrap()),
            not_valid.to_vec(),
        ),
        (
            "config.toml bad address",
            Box::new(|| fs::write(&config, set("listen", "\"nowhere\"")).unwrap()),
            not_valid.to_vec(),
        ),
        (
            "config.toml unusable raft timing",
            Box::new(|| fs::write(&config, set("election_min_ms", "5000")).unwrap()),
            vec!["[raft] settings in config.toml"],
        ),
        (
            "cluster.key deleted",
            Box::new(|| fs::remove_file(&key).unwrap()),
            vec!["cannot read the cluster key", "cluster.key"],
        ),
        (
            "cluster.key garbage",
            Box::new(|| fs::write(&key, "not a key at all").unwrap()),
            vec!["cluster.key does not hold a valid cluster key", "64 hex characters"],
        ),
    ];
    for (case, break_it, words) in cases {
        restore(&node, &backup);
        break_it();
        // `status` reads the same files first, and must say the same.
        let status_words: Vec<&str> = if case.contains("raft timing") { vec!["cannot talk to"] } else { words.clone() };
        assert_refused(&node.data_dir, case, &words, &status_words);
    }
    assert_restored_node_runs(&mut node, &backup);
}

#[test]
fn a_data_dir_that_is_missing_or_a_file_stops_the_node_at_start_with_a_clear_message() {
    let (mut node, backup, _) = stopped_node();
    let data = node.data_dir.display().to_string();

    fs::remove_dir_all(&node.data_dir).unwrap();
    assert_refused(
        &node.data_dir,
        "no data dir",
        &["no raftshare node is set up in", &data, "raftshare init"],
        &["no raftshare node is set up in"],
    );
    fs::write(&node.data_dir, b"a file where the data dir should be").unwrap();
    assert_refused(&node.data_dir, "data dir is a file", &[&data, "config.toml"], &[&data]);
    assert_restored_node_runs(&mut node, &backup);
}

/// Ways to damage the sled database of a stopped node: (what, how).
type Damage = (&'static str, Box<dyn Fn(&Path)>);

/// sled's main file in the database folder `db`.
fn sled_file(db: &Path) -> PathBuf {
    let main = db.join("db");
    assert!(main.is_file(), "sled's db file is {}", main.display());
    main
}

/// Write `n` bytes of garbage into `path` at `at`.
fn scribble(path: &Path, at: u64, n: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&big_content(n, at + 1)).unwrap();
}

/// Damage each way, run the node on it, and collect what did not fail cleanly.
fn refused_after_damage(node: &TestNode, backup: &tempfile::TempDir, cases: Vec<Damage>) -> Vec<String> {
    let db = node.data_dir.join("db");
    let path = db.display().to_string();
    let mut wrong = Vec::new();
    for (case, damage) in cases {
        restore(node, backup);
        damage(&db);
        if let Err(e) = refused(&node.data_dir, case, &["database", &path], &["cannot talk to"]) {
            wrong.push(e);
        }
    }
    wrong
}

#[test]
fn a_damaged_database_stops_the_node_at_start_with_a_clear_message() {
    let (mut node, backup, before) = stopped_node();
    let cases: Vec<Damage> = vec![
        ("conf file garbage", Box::new(|db| scribble(&db.join("conf"), 0, 64))),
        (
            "db folder is a file",
            Box::new(|db| {
                fs::remove_dir_all(db).unwrap();
                fs::write(db, b"not a database").unwrap();
            }),
        ),
        (
            "blobs folder is a file",
            Box::new(|db| {
                fs::remove_dir_all(db.join("blobs")).unwrap();
                fs::write(db.join("blobs"), b"not a folder").unwrap();
            }),
        ),
    ];
    let wrong = refused_after_damage(&node, &backup, cases);
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));

    // sled rebuilds a deleted conf file: the node starts with everything it had.
    restore(&node, &backup);
    fs::remove_file(node.data_dir.join("db/conf")).unwrap();
    node.start_ready();
    wait_until(SETTLE, "the node to lead again", || (node.status()?["role"] == "leader").then_some(()));
    assert_eq!(ls_all(&node), before, "the table after sled rebuilt its conf file");
    node.stop();
    assert_restored_node_runs(&mut node, &backup);
}

#[test]
fn a_database_damaged_in_its_log_is_refused_not_started_from_an_older_state() {
    let (mut node, backup, _) = stopped_node();
    let cases: Vec<Damage> = vec![
        ("db file emptied", Box::new(|db| fs::write(sled_file(db), b"").unwrap())),
        (
            "db file cut in half",
            Box::new(|db| {
                let main = sled_file(db);
                let len = fs::metadata(&main).unwrap().len();
                fs::OpenOptions::new().write(true).open(&main).unwrap().set_len(len / 2).unwrap();
            }),
        ),
        (
            "db file overwritten with garbage",
            Box::new(|db| {
                let main = sled_file(db);
                scribble(&main, 0, fs::metadata(&main).unwrap().len() as usize);
            }),
        ),
        (
            "db file garbage in the middle",
            Box::new(|db| {
                let main = sled_file(db);
                let len = fs::metadata(&main).unwrap().len();
                scribble(&main, len / 3, (len / 3) as usize);
            }),
        ),
    ];
    let wrong = refused_after_damage(&node, &backup, cases);
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    assert_restored_node_runs(&mut node, &backup);
}

#[test]
fn a_damaged_sled_conf_file_is_called_damaged_with_a_way_out() {
    let (node, backup, _) = stopped_node();
    restore(&node, &backup);
    scribble(&node.data_dir.join("db/conf"), 0, 64);
    assert_refused(&node.data_dir, "conf file garbage", &["corrupt", "move it away"], &["cannot talk to"]);
}

#[test]
fn a_shared_folder_that_is_a_file_or_unreadable_is_reported_by_status() {
    let mut node = TestNode::init("a", &[]);
    node.start_ready();
    node.cli_ok(&["bootstrap"]);
    node.write("kept.txt", b"kept");
    wait_until(SETTLE, "kept.txt in the table", || node.cli_ok(&["ls"]).contains("kept.txt").then_some(()));
    node.stop();

    // A file where the folder was (say, a drive that did not mount): the node runs, syncs
    // nothing there, and says why.
    let aside = node.shared_dir.with_extension("aside");
    fs::rename(&node.shared_dir, &aside).unwrap();
    fs::write(&node.shared_dir, b"not a folder").unwrap();
    node.start_ready();
    let problem = wait_until(SETTLE, "status to name the folder problem", || {
        node.status()?["folder_problem"].as_str().map(str::to_string)
    });
    assert!(problem.contains(&node.shared_dir.display().to_string()), "{problem}");
    assert_eq!(fs::read(&node.shared_dir).unwrap(), b"not a folder", "the file in the way is left alone");
    node.stop();
    fs::remove_file(&node.shared_dir).unwrap();
    fs::rename(&aside, &node.shared_dir).unwrap();

    if is_root() {
        eprintln!("skipped the unreadable-folder case: the tests run as root, whom chmod 000 does not stop");
    } else {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&node.shared_dir, fs::Permissions::from_mode(0o000)).unwrap();
        node.start();
        let problem = wait_until(SETTLE, "status to name the unreadable folder", || {
            node.status()?["folder_problem"].as_str().map(str::to_string)
        });
        fs::set_permissions(&node.shared_dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(problem.contains(&node.shared_dir.display().to_string()), "{problem}");
        node.stop();
    }
    node.start_ready();
    wait_until(SETTLE, "the folder to be synced again", || node.status()?["folder_problem"].is_null().then_some(()));
    assert_eq!(node.tree().get("kept.txt"), Some(&hash_hex(b"kept")));
    assert_no_panic(&[&node]);
}

/// Whether this process runs as root (file permissions do not stop it).
fn is_root() -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() == 0 }
}

// ---------------------------------------------------------------------------------
// 5. A file rewritten while it is read and served

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

// ---------------------------------------------------------------------------------
// 6. A full disk during a download

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
/// file of 24 MiB written on a, once b's disk is full. None if the test cannot mount.
fn b_out_of_space(n: usize, data: bool, mounts: &Mounts) -> Option<Cluster> {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root, and the tests do not run as root");
        return None;
    }
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
    Some(cluster)
}

#[test]
fn a_download_larger_than_the_disk_leaves_no_partial_file_and_the_node_serving() {
    let mounts = Mounts::default();
    let Some(cluster) = b_out_of_space(2, false, &mounts) else { return };
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
fn a_download_that_fills_the_disk_is_given_up_cleanly_and_syncing_resumes() {
    let mounts = Mounts::default();
    let Some(cluster) = b_out_of_space(2, false, &mounts) else { return };
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
fn a_full_disk_under_the_database_does_not_stop_raft_for_good() {
    let mounts = Mounts::default();
    let Some(cluster) = b_out_of_space(3, true, &mounts) else { return };
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
fn a_node_waiting_for_space_to_start_again_stops_at_once_on_sigterm() {
    let mounts = Mounts::default();
    let Some(mut cluster) = b_out_of_space(3, true, &mounts) else { return };
    let _unmount = UnmountFirst(&mounts);
    let (mut filler, _) = raft_log_on_a_full_disk(&cluster.nodes[0], &cluster.nodes[1]);
    let b = &mut cluster.nodes[1];
    wait_until(SETTLE, "b to wait for space to start again", || {
        filler.top_up();
        b.log_text().contains("cannot start the node again yet").then_some(())
    });
    let asked = Instant::now();
    b.stop();
    assert!(asked.elapsed() < Duration::from_secs(3), "b took {:?} to stop on SIGTERM", asked.elapsed());
}
