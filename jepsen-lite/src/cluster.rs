//! The raftshare nodes of a run: set up, started, killed, paused, stopped and retired by
//! the harness, driven only through the `raftshare` CLI and their folders. Each running
//! node has an `events --follow --json` reader whose `sent` events become acks.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::history::{Ack, History, Record};
use crate::process::{self, run_bounded, Guarded};

/// A `status`, `partition` or similar quick request.
pub const QUICK: Duration = Duration::from_secs(5);
/// `ls`, `log`: may be long.
pub const LISTING: Duration = Duration::from_secs(30);
/// `join`, `promote`, `remove`, `leave`: may wait for a learner to catch up.
pub const MEMBERSHIP: Duration = Duration::from_secs(90);
/// A started node answers `status` within this.
pub const START: Duration = Duration::from_secs(20);
/// A node stops within this after SIGTERM.
pub const STOP: Duration = Duration::from_secs(20);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One raftshare node: its folders under `<out>/nodes/<name>/`, and its process.
pub struct Node {
    pub name: String,
    pub id: u64,
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub shared_dir: PathBuf,
    /// Where the workload prepares files before renaming them into the folder (same
    /// file system, outside the folder).
    pub staging_dir: PathBuf,
    pub log_path: PathBuf,
    bin: PathBuf,
    history: Arc<History>,
    addr: Mutex<Option<String>>,
    proc: Mutex<Option<Guarded>>,
    paused: AtomicBool,
    retired: AtomicBool,
    /// Incremented at each start: events of one process are numbered from 1.
    generation: AtomicU64,
    /// Held by the workload while it writes into the folder, and by the sampler while it
    /// reads it: a sample never sees a write of the workload half done.
    pub folder_lock: Mutex<()>,
    follower: Mutex<Option<(u64, Guarded)>>,
    /// (generation, highest event seq seen): events already turned into acks.
    acked: Arc<Mutex<(u64, u64)>>,
}

impl Node {
    /// `raftshare init` a node named `name` listening on a free port of 127.0.0.1.
    pub fn init(bin: &Path, root: &Path, name: &str, key: Option<&str>, history: Arc<History>) -> Result<Node> {
        let dir = root.join(name);
        let staging_dir = dir.join("staging");
        fs::create_dir_all(&staging_dir).with_context(|| format!("cannot create {}", staging_dir.display()))?;
        let mut node = Node {
            name: name.to_string(),
            id: 0,
            data_dir: dir.join("data"),
            shared_dir: dir.join("shared"),
            staging_dir,
            log_path: dir.join("node.log"),
            dir,
            bin: bin.to_path_buf(),
            history,
            addr: Mutex::new(None),
            proc: Mutex::new(None),
            paused: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            folder_lock: Mutex::new(()),
            follower: Mutex::new(None),
            acked: Arc::new(Mutex::new((0, 0))),
        };
        let shared = node.shared_dir.to_string_lossy().to_string();
        let mut args = vec!["init", "--listen", "127.0.0.1:0", "--name", name, "--shared-dir", &shared];
        if let Some(key) = key {
            args.extend(["--key", key]);
        }
        node.cli(&args, QUICK)?;
        let config = fs::read_to_string(node.data_dir.join("config.toml")).context("config.toml after init")?;
        node.id = config
            .lines()
            .find_map(|l| l.strip_prefix("node_id = "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no node_id in {}'s config.toml", node.name))?;
        Ok(node)
    }

    /// The cluster key (for `init --key` on another node).
    pub fn key(&self) -> Result<String> {
        Ok(fs::read_to_string(self.data_dir.join("cluster.key"))?.trim().to_string())
    }

    /// Run a CLI command on this node's data dir, within `timeout`; its stdout.
    pub fn cli(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).env("RAFTSHARE_DATA_DIR", &self.data_dir).env_remove("RUST_LOG");
        let out =
            run_bounded(cmd, timeout).with_context(|| format!("`raftshare {}` on {}", args.join(" "), self.name))?;
        if !out.status.success() {
            bail!(
                "`raftshare {}` on {} failed ({}): {}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// A CLI command whose stdout is JSON.
    pub fn cli_json(&self, args: &[&str], timeout: Duration) -> Result<Value> {
        let out = self.cli(args, timeout)?;
        serde_json::from_str(&out)
            .with_context(|| format!("`raftshare {}` on {} is not JSON", args.join(" "), self.name))
    }

    /// `status --json`; None if the node is not running, paused, or does not answer.
    pub fn status(&self) -> Option<Value> {
        if !self.is_running() || self.is_paused() {
            return None;
        }
        self.cli_json(&["status", "--json"], QUICK).ok()
    }

    /// The node's address (known once it has run).
    pub fn addr(&self) -> Option<String> {
        if let Some(addr) = lock(&self.addr).clone() {
            return Some(addr);
        }
        let addr = self.status()?["addr"].as_str()?.to_string();
        *lock(&self.addr) = Some(addr.clone());
        Some(addr)
    }

    /// Start `raftshare run --headless --fault-hook`, appending to `node.log`.
    pub fn start(&self) -> Result<()> {
        let mut proc = lock(&self.proc);
        if proc.is_some() {
            bail!("{} is already running", self.name);
        }
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let mut log = OpenOptions::new().create(true).append(true).open(&self.log_path)?;
        writeln!(log, "--- jepsen-lite: start #{generation} of {} at {} ms ---", self.name, self.history.t_ms())?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["run", "--headless", "--fault-hook"])
            .env("RAFTSHARE_DATA_DIR", &self.data_dir)
            .env("RUST_LOG", std::env::var("JEPSEN_NODE_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        *proc = Some(Guarded::spawn(&mut cmd).with_context(|| format!("cannot start {}", self.bin.display()))?);
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Wait until the started node answers `status`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.status() {
                if let Some(addr) = status["addr"].as_str() {
                    *lock(&self.addr) = Some(addr.to_string());
                }
                return Ok(());
            }
            if let Some(exit) = lock(&self.proc).as_mut().and_then(|g| g.try_wait()) {
                bail!("{} exited at start ({exit}); see {}", self.name, self.log_path.display());
            }
            if start.elapsed() > timeout {
                bail!("{} did not answer `status` within {} s of its start", self.name, timeout.as_secs());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start and wait until it answers.
    pub fn start_ready(&self) -> Result<()> {
        self.start()?;
        self.wait_ready(START)
    }

    /// SIGKILL, as a power cut would.
    pub fn kill9(&self) {
        if let Some(mut child) = lock(&self.proc).take() {
            child.kill();
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// SIGSTOP.
    pub fn pause(&self) -> Result<()> {
        let proc = lock(&self.proc);
        let child = proc.as_ref().ok_or_else(|| anyhow!("{} is not running", self.name))?;
        process::signal(child.pid(), "STOP")?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<()> {
        let proc = lock(&self.proc);
        let child = proc.as_ref().ok_or_else(|| anyhow!("{} is not running", self.name))?;
        process::signal(child.pid(), "CONT")?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// SIGTERM and wait (bounded) for a clean exit; records how it went. False if it was
    /// not running.
    pub fn stop(&self) -> bool {
        let Some(mut child) = lock(&self.proc).take() else { return false };
        if self.paused.swap(false, Ordering::SeqCst) {
            let _ = process::signal(child.pid(), "CONT");
        }
        let _ = process::signal(child.pid(), "TERM");
        let (clean, status) = match child.wait_for(STOP) {
            Some(status) => (status.success(), status.to_string()),
            None => {
                child.kill();
                (false, format!("still running {} s after SIGTERM: killed", STOP.as_secs()))
            }
        };
        self.history.record(&Record::Stopped { t_ms: self.history.t_ms(), node: self.name.clone(), clean, status });
        true
    }

    /// The running process's id (None when stopped), e.g. to read its memory use.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.proc).as_ref().map(|g| g.pid())
    }

    pub fn is_running(&self) -> bool {
        lock(&self.proc).is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// If the process exited although nobody stopped it: record that, forget the process.
    fn check_exit(&self) {
        let mut proc = lock(&self.proc);
        if let Some(status) = proc.as_mut().and_then(|g| g.try_wait()) {
            *proc = None;
            self.history.record(&Record::Exit {
                t_ms: self.history.t_ms(),
                node: self.name.clone(),
                status: status.to_string(),
            });
        }
    }

    /// Keep one `events --follow --json` reader on the running node (a new one after each
    /// restart, since events are numbered per process).
    fn follow_events(self: &Arc<Self>) {
        let mut follower = lock(&self.follower);
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some((g, child)) = follower.as_mut() {
            if *g == generation && child.try_wait().is_none() {
                return;
            }
        }
        *follower = None;
        if !self.is_running() || self.is_paused() || self.is_retired() {
            return;
        }
        let mut cmd = Command::new(&self.bin);
        cmd.args(["events", "--follow", "--json"])
            .env("RAFTSHARE_DATA_DIR", &self.data_dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let Ok(mut child) = Guarded::spawn(&mut cmd) else { return };
        let Some(stdout) = child.child().stdout.take() else { return };
        *follower = Some((generation, child));
        let node = self.clone();
        thread::spawn(move || node.read_events(generation, BufReader::new(stdout)));
    }

    fn read_events(&self, generation: u64, lines: impl BufRead) {
        let mut copy = OpenOptions::new().create(true).append(true).open(self.dir.join("events.jsonl")).ok();
        for line in lines.lines() {
            let Ok(line) = line else { break };
            if let Some(copy) = copy.as_mut() {
                let _ = writeln!(copy, "{line}");
            }
            let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
            if event["type"] != "sent" {
                continue;
            }
            let (Some(seq), Some(index)) = (event["seq"].as_u64(), event["index"].as_u64()) else { continue };
            {
                let mut acked = lock(&self.acked);
                if acked.0 > generation || (acked.0 == generation && seq <= acked.1) {
                    continue;
                }
                *acked = (generation, seq);
            }
            let paths = event["paths"]
                .as_array()
                .map(|p| p.iter().filter_map(|p| p.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            self.history.record(&Record::Ack(Ack {
                t_ms: self.history.t_ms(),
                node: self.name.clone(),
                node_id: self.id,
                index,
                paths,
                at: event["at"].as_str().unwrap_or_default().to_string(),
            }));
        }
    }

    /// Stop following events (its reader thread ends with the pipe).
    pub fn stop_following(&self) {
        *lock(&self.follower) = None;
    }
}

/// Every node of a run, and which of them the workload and the faults aim at.
pub struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    key: String,
    pub history: Arc<History>,
    /// Every node ever set up (retired ones too).
    nodes: Mutex<Vec<Arc<Node>>>,
    /// The members the plan's slots point to.
    slots: Mutex<Vec<Arc<Node>>>,
    next_name: AtomicUsize,
}

impl Cluster {
    /// Set up and start `n` nodes under `root`: the first bootstraps, the others join it;
    /// returns once all agree on a leader and see each other as voters.
    pub fn start(bin: &Path, root: &Path, n: usize, history: Arc<History>) -> Result<Cluster> {
        fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        spread_on_disk(root);
        let first = Arc::new(Node::init(bin, root, "n1", None, history.clone())?);
        first.start_ready()?;
        first.cli(&["bootstrap"], MEMBERSHIP)?;
        let key = first.key()?;
        let cluster = Cluster {
            bin: bin.to_path_buf(),
            root: root.to_path_buf(),
            key,
            history,
            nodes: Mutex::new(vec![first.clone()]),
            slots: Mutex::new(vec![first.clone()]),
            next_name: AtomicUsize::new(2),
        };
        let contact = first.addr().ok_or_else(|| anyhow!("n1 does not tell its address"))?;
        for _ in 1..n {
            let node = cluster.new_node()?;
            retry(3, || node.cli(&["join", &contact], MEMBERSHIP))?;
            lock(&cluster.slots).push(node);
        }
        cluster.wait_agreed(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Set up and start one more node with the cluster's key (not a member yet).
    pub fn new_node(&self) -> Result<Arc<Node>> {
        let name = format!("n{}", self.next_name.fetch_add(1, Ordering::SeqCst));
        let node = Arc::new(Node::init(&self.bin, &self.root, &name, Some(&self.key), self.history.clone())?);
        lock(&self.nodes).push(node.clone());
        node.start_ready()?;
        Ok(node)
    }

    /// Wait until every slot's node answers, they name the same leader, and each lists
    /// all of them as online voters.
    fn wait_agreed(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let want: BTreeSet<u64> = self.slots().iter().map(|n| n.id).collect();
        loop {
            let statuses: Option<Vec<Value>> = self.slots().iter().map(|n| n.status()).collect();
            if let Some(statuses) = statuses {
                let leader = &statuses[0]["leader_id"];
                let agreed = statuses.iter().all(|s| {
                    let voters: BTreeSet<u64> = s["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|m| m["voter"] == true && m["online"] == true)
                        .filter_map(|m| m["id"].as_u64())
                        .collect();
                    !leader.is_null() && &s["leader_id"] == leader && voters == want
                });
                if agreed {
                    return Ok(());
                }
            }
            if start.elapsed() > timeout {
                bail!("the new cluster did not agree on a leader and its voters within {} s", timeout.as_secs());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The nodes the slots point to now.
    pub fn slots(&self) -> Vec<Arc<Node>> {
        lock(&self.slots).clone()
    }

    /// The node in slot `k` (modulo the number of slots; None if there are none).
    pub fn slot(&self, k: usize) -> Option<Arc<Node>> {
        let slots = lock(&self.slots);
        (!slots.is_empty()).then(|| slots[k % slots.len()].clone())
    }

    /// Give `old`'s slot to `new`.
    pub fn replace_slot(&self, old: &Node, new: Arc<Node>) {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.iter_mut().find(|n| n.id == old.id) {
            *slot = new;
        }
    }

    /// Every node ever set up.
    pub fn all(&self) -> Vec<Arc<Node>> {
        lock(&self.nodes).clone()
    }

    /// The nodes not retired.
    pub fn live(&self) -> Vec<Arc<Node>> {
        self.all().into_iter().filter(|n| !n.is_retired()).collect()
    }

    /// The node by id, among the live ones.
    pub fn by_id(&self, id: u64) -> Option<Arc<Node>> {
        self.live().into_iter().find(|n| n.id == id)
    }

    /// The leader, as the first answering node names it; waits up to `wait` for one.
    pub fn leader(&self, wait: Duration) -> Option<Arc<Node>> {
        let start = Instant::now();
        loop {
            for node in self.slots() {
                if let Some(id) = node.status().and_then(|s| s["leader_id"].as_u64()) {
                    if let Some(leader) = self.by_id(id) {
                        return Some(leader);
                    }
                }
            }
            if start.elapsed() > wait {
                return None;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The member ids, as the leader reports them.
    pub fn members(&self, wait: Duration) -> Option<BTreeSet<u64>> {
        let leader = self.leader(wait)?;
        let status = leader.status()?;
        Some(status["members"].as_array()?.iter().filter_map(|m| m["id"].as_u64()).collect())
    }

    /// Stop a node for good (it left the cluster, or never joined).
    pub fn retire(&self, node: &Node) {
        node.retired.store(true, Ordering::SeqCst);
        node.stop_following();
        node.stop();
        lock(&self.slots).retain(|n| n.id != node.id);
    }

    /// One round of supervision: notice nodes that exited by themselves, keep an events
    /// reader on every running node.
    pub fn supervise(&self) {
        for node in self.live() {
            node.check_exit();
            node.follow_events();
        }
    }

    /// Stop every events reader and every node (SIGTERM, bounded).
    pub fn shutdown(&self) {
        for node in self.all() {
            node.stop_following();
        }
        for node in self.all() {
            node.stop();
        }
    }
}

impl Drop for Cluster {
    /// Whatever happened, no process of the run outlives it: readers hold their node, so
    /// the nodes' own guards would not fire while a reader waits on its pipe.
    fn drop(&mut self) {
        for node in self.all() {
            node.stop_following();
            node.kill9();
        }
    }
}

/// Try `f` up to `times` times, a second apart; the last error if all fail.
pub fn retry<T>(times: usize, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut last = None;
    for i in 0..times {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
        if i + 1 < times {
            thread::sleep(Duration::from_secs(1));
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("not tried")))
}

/// Ask ext4 to place each folder created in `dir` (each node's) in a block group of its
/// own, as if the nodes had disks of their own (`chattr +T`, the Orlov allocator's "top
/// of a directory hierarchy"). On one shared disk, the nodes otherwise create files in
/// the same block groups, and on ext4 without a journal, creating a file skips every
/// inode of its group freed in the last minutes, one by one: a node's (or an earlier
/// run's) deletes slowed another node's next 1,000 files from 0.5 s to 2 s (perf:
/// `recently_deleted` under `__ext4_new_inode`). Best effort: elsewhere it does nothing.
pub fn spread_on_disk(dir: &Path) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        /// `FS_TOPDIR_FL` of linux/fs.h (not in the libc crate).
        const TOPDIR: libc::c_int = 0x0002_0000;
        let Ok(folder) = fs::File::open(dir) else { return };
        let mut flags: libc::c_int = 0;
        // SAFETY: both ioctls take a pointer to an int that lives across the call, on a
        // descriptor `folder` holds open.
        unsafe {
            if libc::ioctl(folder.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) == 0 && flags & TOPDIR == 0 {
                flags |= TOPDIR;
                libc::ioctl(folder.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The folder's inode flags and whether it is on ext4 (`None`: flags unreadable).
    fn flags_on(dir: &Path) -> Option<(libc::c_int, bool)> {
        use std::os::fd::AsRawFd;
        let folder = fs::File::open(dir).ok()?;
        let mut flags: libc::c_int = 0;
        let mut fs_stat: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: pointers to locals that outlive the calls, on an open descriptor.
        unsafe {
            if libc::ioctl(folder.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) != 0
                || libc::fstatfs(folder.as_raw_fd(), &mut fs_stat) != 0
            {
                return None;
            }
        }
        Some((flags, fs_stat.f_type == 0xEF53))
    }

    #[test]
    fn node_folders_are_spread_over_the_disk_where_ext4_can() {
        let dir = tempfile::tempdir().unwrap();
        let before = flags_on(dir.path());
        spread_on_disk(dir.path());
        spread_on_disk(dir.path()); // twice: nothing more
        match (before, flags_on(dir.path())) {
            (Some((old, true)), Some((new, _))) => {
                assert_eq!(old & 0x2_0000, 0, "a new folder is not a top directory yet");
                assert_eq!(new, old | 0x2_0000, "ext4 keeps the folder's other flags and adds the top-directory one");
            }
            // Another filesystem: nothing to ask, nothing broken.
            (_, after) => assert_eq!(after.map(|(f, _)| f), before.map(|(f, _)| f)),
        }
        let missing = dir.path().join("not-there");
        spread_on_disk(&missing);
        assert!(!missing.exists());
    }
}
