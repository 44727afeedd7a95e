//! The harness every integration test shares: real `raftshare` processes on 127.0.0.1,
//! each with its own data dir and shared folder in a temp dir, killed on drop.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_raftshare");

/// `setpriv`'s arguments that make the program it runs the user `nobody`, with no groups.
pub const AS_NOBODY: [&str; 3] = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"];

/// Whether this process runs as root (whom file modes do not stop).
pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() == 0 }
}

/// Poll `probe` every 50 ms until it gives a value; panic naming `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One raftshare node: its folders, and its process while it runs.
pub struct TestNode {
    pub name: String,
    _tmp: TempDir,
    pub data_dir: PathBuf,
    pub shared_dir: PathBuf,
    pub log_path: PathBuf,
    /// Extra arguments for `run` (e.g. `--fault-hook`).
    pub run_args: Vec<String>,
    /// The binary `start` runs as `nobody` through `setpriv` (see `obey_file_modes`).
    as_nobody: Option<PathBuf>,
    child: Option<Child>,
}

impl TestNode {
    /// `raftshare init` a new node listening on a free port of 127.0.0.1.
    pub fn init(name: &str, extra: &[&str]) -> TestNode {
        let tmp = tempfile::Builder::new().prefix(&format!("raftshare-{name}-")).tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        let shared_dir = tmp.path().join("shared");
        let log_path = tmp.path().join("node.log");
        let node = TestNode {
            name: name.into(),
            _tmp: tmp,
            data_dir,
            shared_dir,
            log_path,
            run_args: vec![],
            as_nobody: None,
            child: None,
        };
        let mut args = vec!["init", "--listen", "127.0.0.1:0", "--name", name];
        let shared = node.shared_dir.to_str().expect("utf-8 temp path").to_string();
        args.extend(["--shared-dir", &shared]);
        args.extend(extra);
        node.cli_ok(&args);
        node
    }

    /// Wipe the data dir and `init` a new node (new id) over the same shared folder, as
    /// a user re-installing a computer would.
    pub fn reinit(&mut self, extra: &[&str]) {
        self.kill9();
        fs::remove_dir_all(&self.data_dir).expect("wipe the data dir");
        let shared = self.shared_dir.to_str().expect("utf-8 temp path").to_string();
        let name = self.name.clone();
        let mut args = vec!["init", "--listen", "127.0.0.1:0", "--name", &name, "--shared-dir", &shared];
        args.extend(extra);
        self.cli_ok(&args);
    }

    /// Change a `key = value` line of this node's config.toml (the node must be stopped,
    /// or restarted afterwards, for it to take effect).
    pub fn set_config(&self, key: &str, value: &str) {
        let path = self.data_dir.join("config.toml");
        let text = fs::read_to_string(&path).expect("config.toml");
        let prefix = format!("{key} = ");
        assert!(text.lines().any(|l| l.starts_with(&prefix)), "config.toml has no {key}:\n{text}");
        let text: Vec<String> = text
            .lines()
            .map(|l| if l.starts_with(&prefix) { format!("{prefix}{value}") } else { l.to_string() })
            .collect();
        fs::write(&path, text.join("\n") + "\n").expect("write config.toml");
    }

    /// The cluster key in this node's data dir, for `init --key` on another node.
    pub fn key(&self) -> String {
        fs::read_to_string(self.data_dir.join("cluster.key")).expect("key file").trim().to_string()
    }

    /// Make `start` run the node as a user whom file modes stop, for tests about folders
    /// it may not read. As root (whom they do not stop) that is `nobody`, through `setpriv`
    /// (util-linux), with this node's temp dir (its data dir, shared folder and log) given
    /// to that user. As anyone else the node already obeys file modes: nothing to do.
    /// Panics, saying what is missing, if the node cannot be run as `nobody`.
    pub fn obey_file_modes(&mut self) {
        if !is_root() {
            return;
        }
        let root = self._tmp.path().to_path_buf();
        let runs = |bin: &Path| {
            Command::new("setpriv")
                .args(AS_NOBODY)
                .arg(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        // `nobody` may not reach the built binary (a target dir under /root): give it a copy.
        let mut bin = PathBuf::from(BIN);
        if !runs(&bin) {
            bin = root.join("raftshare");
            fs::copy(BIN, &bin).expect("copy the raftshare binary for nobody");
        }
        let status = Command::new("chown").args(["-R", "nobody:nogroup"]).arg(&root).status().expect("run chown");
        assert!(status.success(), "chown -R nobody:nogroup {} failed", root.display());
        assert!(
            runs(&bin),
            "cannot run {} as nobody with `setpriv {}`: this test runs as root, whom file modes do not \
             stop, so it runs its node as nobody (install util-linux for setpriv, and make sure the users \
             nobody and nogroup exist)",
            bin.display(),
            AS_NOBODY.join(" ")
        );
        let writable = Command::new("setpriv")
            .args(AS_NOBODY)
            .args(["test", "-w"])
            .arg(&self.data_dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            writable,
            "nobody cannot write {}: the temp dir's parent must let other users through (set TMPDIR to \
             a folder that does)",
            self.data_dir.display()
        );
        self.as_nobody = Some(bin);
    }

    /// Start `raftshare run --headless`, logging to `log_path`.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("log file");
        let mut command = match &self.as_nobody {
            // setpriv execs the node: the pid to signal is the node's.
            Some(bin) => {
                let mut command = Command::new("setpriv");
                command.args(AS_NOBODY).arg(bin);
                command
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(["run", "--headless"])
            .args(&self.run_args)
            .env("RAFTSHARE_DATA_DIR", &self.data_dir)
            .env("RUST_LOG", "info,openraft=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn raftshare run");
        self.child = Some(child);
    }

    /// Start and wait until the node answers `status`.
    pub fn start_ready(&mut self) {
        self.start();
        self.wait_ready();
    }

    /// Wait until the running node answers `status`.
    pub fn wait_ready(&mut self) {
        let name = self.name.clone();
        wait_until(Duration::from_secs(20), &format!("{name} to answer `status`"), || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(exit)) = child.try_wait() {
                    panic!("{name} exited with {exit} at start:\n{}", self.log_text());
                }
            }
            self.status()
        });
    }

    /// SIGKILL, as a power cut would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait (bounded) for a clean exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "{} did not stop cleanly ({status}):\n{}", self.name, self.log_text());
                return;
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop within 15 s of SIGTERM:\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The running node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node runs").id()
    }

    /// Run a CLI command against this node's data dir.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("RAFTSHARE_DATA_DIR", &self.data_dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run raftshare")
    }

    /// Run a CLI command that must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "`raftshare {}` on {} failed ({}):\n{}",
            args.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Run a CLI command that must fail; its stderr.
    pub fn cli_err(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "`raftshare {}` on {} should have failed but printed:\n{}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).expect("utf-8 stderr")
    }

    /// `status --json`, or None while the node does not answer.
    pub fn status(&self) -> Option<Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("status --json is JSON"))
    }

    /// `log --json` (panics if the node does not answer).
    pub fn log(&self) -> Vec<Value> {
        let out = self.cli_ok(&["log", "--json"]);
        serde_json::from_str::<Value>(&out).expect("log --json is JSON").as_array().expect("an array").clone()
    }

    /// The node's advertised address (known once it has run).
    pub fn addr(&self) -> String {
        self.status().expect("node answers status")["addr"].as_str().expect("addr").to_string()
    }

    /// What the node logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The node id that `init` chose (read from config.toml, so it works while the node is down).
    pub fn node_id(&self) -> u64 {
        let config = fs::read_to_string(self.data_dir.join("config.toml")).expect("config.toml");
        config
            .lines()
            .find_map(|l| l.strip_prefix("node_id = "))
            .and_then(|v| v.trim().parse().ok())
            .expect("node_id in config.toml")
    }

    /// Write a file into the shared folder, creating folders as needed.
    pub fn write(&self, rel: &str, bytes: &[u8]) {
        let path = self.shared_dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    /// The shared folder's files (metadata folder excluded): relative path → BLAKE3 hex.
    pub fn tree(&self) -> BTreeMap<String, String> {
        tree_of(&self.shared_dir)
    }

    /// A number from `status --json`.
    pub fn stat(&self, field: &str) -> u64 {
        self.status().unwrap_or_else(|| panic!("{} answers status", self.name))[field]
            .as_u64()
            .unwrap_or_else(|| panic!("status has {field}"))
    }

    pub fn data_path(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            // The temp dir goes with the node: show what it said about trouble first.
            let log = self.log_text();
            let trouble: Vec<&str> = log
                .lines()
                .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && !l.contains("openraft"))
                .collect();
            eprintln!("--- {} warnings and errors (last 40) ---", self.name);
            for line in trouble.iter().rev().take(40).rev() {
                eprintln!("{line}");
            }
            // The whole log outlives the temp dir, for a closer look.
            let test = std::thread::current().name().unwrap_or("test").replace("::", "-");
            let kept = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("failed-test-logs")
                .join(format!("{test}-{}.log", self.name));
            if fs::create_dir_all(kept.parent().unwrap()).is_ok() && fs::write(&kept, &log).is_ok() {
                eprintln!("--- {}'s whole log: {}", self.name, kept.display());
            }
        }
    }
}

/// Every regular file under `root` except the metadata folder: relative path → BLAKE3 hex.
pub fn tree_of(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().to_string();
            if rel == ".raftshare" {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                walk(root, &path, out);
            } else if meta.is_file() {
                if let Ok(bytes) = fs::read(&path) {
                    out.insert(rel, blake3::hash(&bytes).to_hex().to_string());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// BLAKE3 hex of some bytes, as `tree` reports it.
pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// `len` bytes that differ from block to block (and from file to file by `seed`).
pub fn big_content(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    out
}

/// Wait until every given node's folder equals `want` (or, with `want` None, until they
/// all equal each other); returns the common tree.
pub fn wait_trees(
    nodes: &[&TestNode],
    want: Option<&BTreeMap<String, String>>,
    timeout: Duration,
    what: &str,
) -> BTreeMap<String, String> {
    let start = Instant::now();
    loop {
        let last = nodes.iter().map(|n| n.tree()).collect::<Vec<_>>();
        let target = want.cloned().unwrap_or_else(|| last[0].clone());
        if last.iter().all(|t| *t == target) {
            return target;
        }
        if start.elapsed() > timeout {
            let mut report = String::new();
            for (node, tree) in nodes.iter().zip(&last) {
                let differ: Vec<String> = target
                    .iter()
                    .filter(|(p, h)| tree.get(*p) != Some(h))
                    .map(|(p, h)| format!("{p}: {} vs {}", &h[..8], tree.get(p).map(|h| &h[..8]).unwrap_or("absent")))
                    .chain(tree.keys().filter(|p| !target.contains_key(*p)).map(|p| format!("{p}: extra")))
                    .collect();
                report += &format!("\n{}: {} files, differing from the target: {differ:?}", node.name, tree.len());
            }
            panic!("timed out after {timeout:?} waiting for: {what}{report}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Several nodes of one cluster: node 0 bootstrapped, the others joined through it.
pub struct Cluster {
    pub nodes: Vec<TestNode>,
}

impl Cluster {
    /// Start `n` voters and wait until every node agrees on the leader and the members.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| {})
    }

    /// Like `start`, with `prepare` run on each node after `init`, before its first `run`.
    pub fn start_with(n: usize, prepare: impl Fn(&mut TestNode)) -> Cluster {
        let names = ["a", "b", "c", "d", "e"];
        let mut first = TestNode::init(names[0], &[]);
        prepare(&mut first);
        first.start_ready();
        first.cli_ok(&["bootstrap"]);
        let key = first.key();
        let mut nodes = vec![first];
        for name in &names[1..n] {
            let mut node = TestNode::init(name, &["--key", &key]);
            prepare(&mut node);
            node.start_ready();
            let leader_addr = nodes[0].addr();
            node.cli_ok(&["join", &leader_addr]);
            nodes.push(node);
        }
        let cluster = Cluster { nodes };
        cluster.wait_converged(Duration::from_secs(10));
        cluster
    }

    /// Like `start`, with every node run with `--fault-hook` (so `partition` works).
    pub fn start_faulty(n: usize) -> Cluster {
        Cluster::start_with(n, |node| node.run_args = vec!["--fault-hook".into()])
    }

    /// Cut node `i` off from every other node, both ways (needs `start_faulty`).
    pub fn isolate(&self, i: usize) {
        let others: Vec<String> =
            (0..self.nodes.len()).filter(|j| *j != i).map(|j| self.nodes[j].node_id().to_string()).collect();
        let mut args = vec!["partition"];
        args.extend(others.iter().map(String::as_str));
        self.nodes[i].cli_ok(&args);
        let id = self.nodes[i].node_id().to_string();
        for (j, node) in self.nodes.iter().enumerate() {
            if j != i {
                node.cli_ok(&["partition", &id]);
            }
        }
    }

    /// End every partition.
    pub fn heal(&self) {
        for node in &self.nodes {
            node.cli_ok(&["partition"]);
        }
    }

    /// Wait until every running node names the same leader, lists every node as an online
    /// voter, and has the same committed index. Returns the statuses.
    pub fn wait_converged(&self, timeout: Duration) -> Vec<Value> {
        let running: Vec<&TestNode> = self.nodes.iter().filter(|n| n.is_running()).collect();
        wait_agree(&running, self.nodes.len(), timeout)
    }
}

/// Wait until `nodes` name the same leader, list `want` members, all online voters, and
/// have the same committed index. Returns their statuses.
pub fn wait_agree(running: &[&TestNode], want: usize, timeout: Duration) -> Vec<Value> {
    {
        wait_until(timeout, "all nodes to agree on leader, voters and committed index", || {
            let statuses: Vec<Value> = running.iter().map(|n| n.status()).collect::<Option<_>>()?;
            let leader = &statuses[0]["leader_id"];
            let committed = &statuses[0]["committed_index"];
            let agreed = statuses.iter().all(|s| {
                let members = s["members"].as_array().map(|m| m.as_slice()).unwrap_or(&[]);
                !leader.is_null()
                    && &s["leader_id"] == leader
                    && &s["committed_index"] == committed
                    && members.len() == want
                    && members.iter().all(|m| m["voter"] == true && m["online"] == true)
            });
            agreed.then_some(statuses)
        })
    }
}

impl Cluster {
    /// Stop every node (SIGTERM), then start them all again and wait until each answers.
    pub fn restart_all(&mut self) {
        for node in self.nodes.iter_mut() {
            node.stop();
        }
        for node in self.nodes.iter_mut() {
            node.start();
        }
        for node in self.nodes.iter_mut() {
            node.wait_ready();
        }
    }

    /// The index in `nodes` of the node that every answering node calls leader.
    pub fn leader(&self) -> usize {
        let status = self.nodes.iter().find_map(|n| n.status()).expect("a node answers");
        let id = status["leader_id"].as_u64().expect("a leader");
        self.index_of(id)
    }

    pub fn index_of(&self, id: u64) -> usize {
        self.nodes.iter().position(|n| n.node_id() == id).unwrap_or_else(|| panic!("no node has id {id}"))
    }
}

/// A folder made unreadable (mode 000) for as long as this lives, its mode given back on
/// drop (even by a panic: the temp dir could not be removed otherwise).
pub struct Unreadable {
    dir: PathBuf,
    mode: u32,
}

impl Unreadable {
    pub fn make(dir: &Path) -> Unreadable {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir).unwrap().permissions().mode();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o000)).unwrap();
        Unreadable { dir: dir.to_path_buf(), mode }
    }
}

impl Drop for Unreadable {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(self.mode));
    }
}
