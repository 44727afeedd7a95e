//! `jepsen-lite bench`: the same harness as `test`, with no faults — how fast a healthy
//! three-node cluster on 127.0.0.1 moves files. Every workload gets a fresh cluster,
//! prints one row for people and one JSON line, and the lines are kept in
//! `OUT/bench.jsonl` (the first line says what machine it ran on).
//!
//! Like the rest of the harness it only sees what a user's script sees: the folders, and
//! `raftshare ... --json`. Times are measured from just before the change becomes visible
//! in the writer's folder (a rename, so it appears at once) until the other nodes' folders
//! hold the same bytes. Bulk sets of files are prepared outside the folder, then moved in
//! with one rename of their top folder (or one rename per file, for loose files at the
//! top), so preparing them is not measured. The harness polls the folders itself, at most
//! about a tenth of the time, so it stays out of the nodes' way on a small machine.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::cluster::{Cluster, Node, LISTING, START};
use crate::history::History;
use crate::rng::{self, Rng};
use crate::tree;

/// Nodes in every benchmark cluster.
const NODES: usize = 3;
/// Fixes every generated content (the figures do not depend on it).
const SEED: u64 = 0xBE4C;

/// One benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Benchmark {
    Latency,
    Burst,
    Scale,
    Big,
    Many,
    Commit,
}

impl Benchmark {
    /// Every workload, in the order `all` runs them.
    pub const ALL: [Benchmark; 6] =
        [Benchmark::Latency, Benchmark::Burst, Benchmark::Scale, Benchmark::Big, Benchmark::Many, Benchmark::Commit];

    /// Its name on the command line and in the JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Latency => "latency",
            Benchmark::Burst => "burst",
            Benchmark::Scale => "scale",
            Benchmark::Big => "big",
            Benchmark::Many => "many",
            Benchmark::Commit => "commit",
        }
    }

    /// `all`, or a comma list of names.
    pub fn parse_list(s: &str) -> Result<Vec<Benchmark>, String> {
        if s.trim() == "all" {
            return Ok(Benchmark::ALL.to_vec());
        }
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let b = Benchmark::ALL.into_iter().find(|b| b.name() == name).ok_or_else(|| {
                format!(
                    "unknown workload `{name}`: use all, or a comma list of latency, burst, scale, big, many, commit"
                )
            })?;
            if !out.contains(&b) {
                out.push(b);
            }
        }
        if out.is_empty() {
            return Err("no workload given".into());
        }
        Ok(out)
    }
}

/// Everything `jepsen-lite bench` is told.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub benchmarks: Vec<Benchmark>,
    pub out: PathBuf,
    pub bin: PathBuf,
    /// `latency`: measured samples.
    pub samples: usize,
    /// `big`: the file's size in MiB.
    pub big_mib: u64,
    /// `many`: how many files.
    pub many: usize,
    /// `commit`: seconds of load per phase.
    pub commit_secs: u64,
    /// Keep the nodes' data and shared folders (node logs are always kept).
    pub keep_data: bool,
}

/// What one workload found: a row for people, a JSON line for scripts.
struct Figures {
    row: String,
    json: Value,
}

/// Run the chosen workloads, each on a fresh cluster; true if every one of them ran.
pub fn run_bench(opts: &BenchOptions) -> Result<bool> {
    // Before anything is written (bench.jsonl would replace the earlier run's).
    let taken = runs_already_in(&opts.out, &opts.benchmarks);
    if !taken.is_empty() {
        bail!(
            "{} already holds a run of {}: choose another --out (nothing was run)",
            opts.out.display(),
            taken.join(", ")
        );
    }
    let _cleanup = RemoveLeftBehind;
    fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    let out = opts.out.canonicalize().unwrap_or(opts.out.clone());
    // Another build may replace the binary while the benchmark runs: use a copy.
    let bin = out.join("raftshare");
    if opts.bin.canonicalize().ok() != bin.canonicalize().ok() {
        fs::copy(&opts.bin, &bin)
            .with_context(|| format!("cannot copy {} to {}", opts.bin.display(), bin.display()))?;
    }
    let source = opts.bin.display().to_string();
    let opts = BenchOptions { out: out.clone(), bin, ..opts.clone() };
    let mut jsonl = File::create(out.join("bench.jsonl")).context("cannot create bench.jsonl")?;

    let mut machine = machine_info(&opts);
    machine["raftshare_copied_from"] = json!(source);
    println!(
        "jepsen-lite bench | {} | {} cores | {} MiB RAM | load {} | raftshare {} | out {}",
        machine["date"].as_str().unwrap_or_default(),
        machine["nproc"],
        machine["mem_total_kib"].as_u64().unwrap_or(0) / 1024,
        machine["loadavg"].as_str().unwrap_or_default(),
        opts.bin.display(),
        out.display()
    );
    println!("{machine}");
    writeln!(jsonl, "{machine}")?;

    let mut summary: Vec<(&'static str, String)> = Vec::new();
    let mut all_ran = true;
    for &bench in &opts.benchmarks {
        eprintln!("bench: {} ...", bench.name());
        let started = Instant::now();
        let figures = match run_one(bench, &opts) {
            Ok(f) => f,
            Err(e) => {
                all_ran = false;
                let why = format!("{e:#}");
                Figures {
                    row: format!("FAILED: {why} (node logs under {})", out.join(bench.name()).display()),
                    json: json!({"workload": bench.name(), "error": why}),
                }
            }
        };
        eprintln!("bench: {} took {:.0} s in all", bench.name(), started.elapsed().as_secs_f64());
        let row = format!("{:<8} {}", bench.name(), figures.row);
        println!("{row}");
        println!("{}", figures.json);
        writeln!(jsonl, "{}", figures.json)?;
        summary.push((bench.name(), figures.row));
    }

    println!(
        "\nsummary ({} cores, {} MiB RAM, {})",
        machine["nproc"],
        machine["mem_total_kib"].as_u64().unwrap_or(0) / 1024,
        machine["date"].as_str().unwrap_or_default()
    );
    println!("WORKLOAD RESULT");
    for (name, row) in &summary {
        println!("{name:<8} {row}");
    }
    println!("JSON lines: {}", out.join("bench.jsonl").display());
    Ok(all_ran)
}

fn run_one(bench: Benchmark, opts: &BenchOptions) -> Result<Figures> {
    match bench {
        Benchmark::Latency => latency(opts),
        Benchmark::Burst => burst(opts),
        Benchmark::Scale => scale(opts),
        Benchmark::Big => big(opts),
        Benchmark::Many => many(opts),
        Benchmark::Commit => commit(opts),
    }
}

// ---------------------------------------------------------------------------------------
/// The workloads among `benchmarks` whose folders under `out` (`latency`, `scale-5000`, ...)
/// already hold a run.
fn runs_already_in(out: &Path, benchmarks: &[Benchmark]) -> Vec<&'static str> {
    let held: Vec<String> = match fs::read_dir(out) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.path().join("nodes").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return Vec::new(),
    };
    let holds = |b: &Benchmark| held.iter().any(|h| h == b.name() || h.starts_with(&format!("{}-", b.name())));
    benchmarks.iter().filter(|b| holds(b)).map(|b| b.name()).collect()
}

// The test bed: a fresh cluster per workload, stopped and cleaned up whatever happens.

/// A running cluster under `OUT/<name>/`; dropping it stops every node (SIGTERM, bounded,
/// then the cluster's own kill-on-drop) and removes the nodes' folders unless kept.
struct Bed {
    cluster: Option<Cluster>,
    nodes: Vec<Arc<Node>>,
    root: PathBuf,
    keep_data: bool,
}

impl Bed {
    fn start(opts: &BenchOptions, name: &str) -> Result<Bed> {
        let root = opts.out.join(name);
        if root.join("nodes").exists() {
            bail!("{} already holds a run: choose another --out", root.display());
        }
        fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let history = Arc::new(History::create(&root.join("history.jsonl"), false)?);
        eprintln!("bench: {name}: starting {NODES} nodes under {}", root.display());
        let cluster = Cluster::start(&opts.bin, &root.join("nodes"), NODES, history)
            .with_context(|| format!("the {name} cluster could not be set up (node logs under {})", root.display()))?;
        let nodes = cluster.slots();
        let bed = Bed { cluster: Some(cluster), nodes, root, keep_data: opts.keep_data };
        // Let the new cluster's own traffic (joins, first pings) die down.
        thread::sleep(Duration::from_secs(1));
        Ok(bed)
    }

    fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("the cluster lives as long as the bed")
    }

    fn leader(&self) -> Result<Arc<Node>> {
        self.cluster().leader(Duration::from_secs(15)).ok_or_else(|| anyhow!("no leader within 15 s"))
    }

    /// The other nodes than `writer`.
    fn others(&self, writer: &Node) -> Vec<Arc<Node>> {
        self.nodes.iter().filter(|n| n.id != writer.id).cloned().collect()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            cluster.shutdown();
        }
        if !self.keep_data {
            let mut left = LEFT_BEHIND.lock().unwrap_or_else(|p| p.into_inner());
            for node in &self.nodes {
                left.extend([&node.data_dir, &node.shared_dir, &node.staging_dir].map(|d| d.to_path_buf()));
            }
            left.push(self.root.join("cp"));
        }
    }
}

/// The folders of finished workloads, removed once every workload ran: on ext4 without
/// a journal, creating a file where many were deleted in the last minutes is several
/// times slower (the kernel skips recently freed inodes one by one), so removing one
/// workload's 300,000 files right away would slow the next workload down.
static LEFT_BEHIND: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes the folders left behind when the benchmark ends, however it ends.
struct RemoveLeftBehind;

impl Drop for RemoveLeftBehind {
    fn drop(&mut self) {
        let left = std::mem::take(&mut *LEFT_BEHIND.lock().unwrap_or_else(|p| p.into_inner()));
        for dir in left {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

// ---------------------------------------------------------------------------------------
// latency

fn latency(opts: &BenchOptions) -> Result<Figures> {
    const WARMUP: usize = 3;
    const SIZE: usize = 1024;
    const BOUND: Duration = Duration::from_secs(30);
    let bed = Bed::start(opts, "latency")?;
    let leader_id = bed.leader()?.id;
    let (mut all, mut from_leader, mut from_follower) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..WARMUP + opts.samples {
        // Round robin: a follower's change is forwarded to the leader, one hop more.
        let writer = &bed.nodes[i % bed.nodes.len()];
        // At the top of the folder: see `commit` for why not in a subfolder.
        let rel = format!("lat-s{i:04}.bin");
        let bytes = rng::content(SEED, i as u64, 1, SIZE);
        let staged = writer.staging_dir.join(format!("lat-{i}"));
        fs::write(&staged, &bytes)?;
        let mut waiting: Vec<(String, PathBuf)> =
            bed.others(writer).iter().map(|n| (n.name.clone(), n.shared_dir.join(&rel))).collect();
        let t0 = Instant::now();
        fs::rename(&staged, writer.shared_dir.join(&rel))?;
        loop {
            // A missing file fails the open at once; the node renames a complete file in.
            waiting.retain(|(_, p)| fs::read(p).map(|b| b != bytes).unwrap_or(true));
            if waiting.is_empty() {
                break;
            }
            if t0.elapsed() > BOUND {
                let names: Vec<&str> = waiting.iter().map(|(n, _)| n.as_str()).collect();
                bail!(
                    "sample {i}: {rel} written on {} is not on {} after {} s",
                    writer.name,
                    names.join(", "),
                    BOUND.as_secs()
                );
            }
            thread::sleep(Duration::from_micros(200));
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        if i >= WARMUP {
            all.push(ms);
            if writer.id == leader_id {
                from_leader.push(ms);
            } else {
                from_follower.push(ms);
            }
        }
        // Let this sample's tail (acks, index updates) finish before the next one.
        thread::sleep(Duration::from_millis(50));
    }
    let s = Stats::of(&all);
    let (l, f) = (Stats::of(&from_leader), Stats::of(&from_follower));
    Ok(Figures {
        row: format!(
            "1 KiB file on all 3 nodes: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} samples; written on the \
             leader p50 {:.1} ms, on a follower p50 {:.1} ms)",
            s.p50, s.p99, s.max, s.n, l.p50, f.p50
        ),
        json: json!({
            "workload": "latency", "samples": s.n, "size_bytes": SIZE,
            "p50_ms": round3(s.p50), "p99_ms": round3(s.p99), "max_ms": round3(s.max), "mean_ms": round3(s.mean),
            "min_ms": round3(s.min),
            "p50_ms_written_on_leader": round3(l.p50), "p50_ms_written_on_follower": round3(f.p50),
        }),
    })
}

/// Summary of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
    min: f64,
    mean: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Stats {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mean = if sorted.is_empty() { 0.0 } else { sorted.iter().sum::<f64>() / sorted.len() as f64 };
        Stats {
            n: sorted.len(),
            p50: percentile(&sorted, 50.0),
            p99: percentile(&sorted, 99.0),
            max: sorted.last().copied().unwrap_or(0.0),
            min: sorted.first().copied().unwrap_or(0.0),
            mean,
        }
    }
}

/// Nearest-rank percentile of sorted samples (0 when there are none): the smallest
/// sample with at least `p` percent of the samples at or below it.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------
// burst, scale, many: sets of files

/// A set of files prepared outside the folder: relative path (under the set's top
/// folder) → BLAKE3 hex.
type Expected = BTreeMap<String, String>;

/// Where a set of files lives in a shared folder.
#[derive(Debug, Clone, Copy)]
enum Place<'a> {
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
fn stage_files(dir: &Path, prefix: &str, n: usize, size: usize, fanout: &[usize], tag: u64) -> Result<Expected> {
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
fn slowest(times: &[(String, f64)]) -> f64 {
    times.iter().map(|(_, t)| *t).fold(0.0, f64::max)
}

fn per_node(times: &[(String, f64)]) -> Value {
    Value::Object(times.iter().map(|(n, t)| (n.clone(), json!(round3(*t)))).collect())
}

/// Seconds per node until a set of files was synced, and the seconds the harness itself
/// took to move the files in or out (on a busy machine, part of every node's time).
type Moved = (Vec<(String, f64)>, f64);

/// Move a staged set of files into the writer's folder at `place` and wait until the
/// other nodes hold the same. A folder moves in with one rename; files at the top one
/// rename each, as fast as they go (the clock starts before the first).
fn sync_set(
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
fn remove_set(bed: &Bed, writer: &Node, place: Place, to: &Path, bound: Duration) -> Result<Moved> {
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

/// CPU seconds each node used so far (user + system).
fn cpu_seconds(nodes: &[Arc<Node>]) -> BTreeMap<String, f64> {
    nodes
        .iter()
        .filter_map(|n| {
            let stat = fs::read_to_string(format!("/proc/{}/stat", n.pid()?)).ok()?;
            Some((n.name.clone(), cpu_ticks(&stat)? as f64 / clock_ticks()))
        })
        .collect()
}

fn cpu_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Value {
    Value::Object(
        after.iter().map(|(n, t)| (n.clone(), json!(round3(t - before.get(n).copied().unwrap_or(0.0))))).collect(),
    )
}

/// Each node's CPU use (percent of one core) over a few seconds with nothing to do: a
/// healthy idle node uses next to none.
fn idle_cpu(nodes: &[Arc<Node>]) -> (Value, f64) {
    const FOR: Duration = Duration::from_secs(3);
    thread::sleep(Duration::from_secs(1));
    let before = cpu_seconds(nodes);
    thread::sleep(FOR);
    let after = cpu_seconds(nodes);
    let pct: BTreeMap<String, f64> = after
        .iter()
        .map(|(n, t)| (n.clone(), round1(100.0 * (t - before.get(n).copied().unwrap_or(0.0)) / FOR.as_secs_f64())))
        .collect();
    let max = pct.values().copied().fold(0.0, f64::max);
    (json!(pct), max)
}

/// The leader's committed index now.
fn committed(bed: &Bed) -> Result<u64> {
    let leader = bed.leader()?;
    leader
        .status()
        .and_then(|s| s["committed_index"].as_u64())
        .ok_or_else(|| anyhow!("{} (the leader) does not tell its committed index", leader.name))
}

fn burst(opts: &BenchOptions) -> Result<Figures> {
    const N: usize = 1000;
    const SIZE: usize = 4096;
    const BOUND: Duration = Duration::from_secs(300);
    let bed = Bed::start(opts, "burst")?;
    let writer = bed.nodes[0].clone();
    let mut parts = Vec::new();
    // The same burst twice: loose files at the top of the folder, then one folder of them.
    for (k, place) in [Place::Top("burst-"), Place::Folder("burst")].into_iter().enumerate() {
        let staged = writer.staging_dir.join(format!("burst{k}"));
        let expected = match place {
            Place::Top(prefix) => stage_files(&staged, prefix, N, SIZE, &[], 1)?,
            Place::Folder(_) => stage_files(&staged, "", N, SIZE, &[], 1)?,
        };
        let (c0, cpu0) = (committed(&bed)?, cpu_seconds(&bed.nodes));
        let (put, put_moved) = sync_set(&bed, &writer, &staged, place, &expected, BOUND)?;
        let (c1, cpu1) = (committed(&bed)?, cpu_seconds(&bed.nodes));
        let (idle, idle_max) = idle_cpu(&bed.nodes);
        let (del, delete_moved) =
            remove_set(&bed, &writer, place, &writer.staging_dir.join(format!("deleted{k}")), BOUND)?;
        let c2 = committed(&bed)?;
        let (tp, td) = (slowest(&put), slowest(&del));
        eprintln!(
            "bench: burst: {place:?}: put {tp:.2} s (moving in took {put_moved:.2} s), delete {td:.2} s (moving out {delete_moved:.2} s)"
        );
        parts.push(json!({
            "place": match place { Place::Top(_) => "top", Place::Folder(_) => "folder" },
            "put_s": round3(tp), "put_files_per_s": round1(N as f64 / tp), "put_s_per_node": per_node(&put),
            "delete_s": round3(td), "delete_s_per_node": per_node(&del),
            "put_moved_s": round3(put_moved), "delete_moved_s": round3(delete_moved),
            "put_log_entries": c1.saturating_sub(c0), "delete_log_entries": c2.saturating_sub(c1),
            "put_cpu_s": cpu_delta(&cpu0, &cpu1), "idle_cpu_pct_after_put": idle, "idle_cpu_pct_max": idle_max,
        }));
    }
    let f = |k: usize, field: &str| parts[k][field].as_f64().unwrap_or(0.0);
    Ok(Figures {
        row: format!(
            "{N} files of 4 KiB: at the top {:.2} s ({:.0} files/s), deleted in {:.2} s; as one folder {:.2} s \
             ({:.0} files/s), deleted in {:.2} s; idle CPU after: top {:.0}%, folder {:.0}% of a core",
            f(0, "put_s"),
            f(0, "put_files_per_s"),
            f(0, "delete_s"),
            f(1, "put_s"),
            f(1, "put_files_per_s"),
            f(1, "delete_s"),
            f(0, "idle_cpu_pct_max"),
            f(1, "idle_cpu_pct_max"),
        ),
        json: json!({
            "workload": "burst", "files": N, "size_bytes": SIZE, "writer": writer.name,
            "put_s": f(0, "put_s"), "delete_s": f(0, "delete_s"),
            "folder_put_s": f(1, "put_s"), "folder_delete_s": f(1, "delete_s"),
            "top": parts[0], "folder": parts[1],
        }),
    })
}

fn scale(opts: &BenchOptions) -> Result<Figures> {
    const SIZE: usize = 1024;
    let mut runs = Vec::new();
    for n in [5_000usize, 20_000] {
        let bed = Bed::start(opts, &format!("scale-{n}"))?;
        let writer = bed.nodes[0].clone();
        let staged = writer.staging_dir.join("scale");
        // 100 folders two levels deep.
        let expected = stage_files(&staged, "", n, SIZE, &[10, 10], 2)?;
        let (c0, cpu0) = (committed(&bed)?, cpu_seconds(&bed.nodes));
        let bound = Duration::from_secs(300 + n as u64 / 20);
        let (times, _) = sync_set(&bed, &writer, &staged, Place::Folder("scale"), &expected, bound)?;
        let (c1, cpu1) = (committed(&bed)?, cpu_seconds(&bed.nodes));
        let t = slowest(&times);
        eprintln!("bench: scale: {n} files in {t:.2} s");
        let (idle, _) = idle_cpu(&bed.nodes);
        runs.push((n, t, per_node(&times), c1.saturating_sub(c0), cpu_delta(&cpu0, &cpu1), idle));
    }
    let (small, large) = (&runs[0], &runs[1]);
    let ratio = large.1 / small.1;
    let linear = large.0 as f64 / small.0 as f64;
    Ok(Figures {
        row: format!(
            "{} files: {:.2} s ({:.0}/s); {} files: {:.2} s ({:.0}/s); ratio {ratio:.2} (linear would be {linear:.1})",
            small.0,
            small.1,
            small.0 as f64 / small.1,
            large.0,
            large.1,
            large.0 as f64 / large.1
        ),
        json: json!({
            "workload": "scale", "size_bytes": SIZE, "folders": 100,
            "files_small": small.0, "small_s": round3(small.1), "small_s_per_node": small.2,
            "small_log_entries": small.3, "small_cpu_s": small.4, "small_idle_cpu_pct_after": small.5,
            "files_large": large.0, "large_s": round3(large.1), "large_s_per_node": large.2,
            "large_log_entries": large.3, "large_cpu_s": large.4, "large_idle_cpu_pct_after": large.5,
            "ratio": round3(ratio), "linear_ratio": linear,
        }),
    })
}

fn many(opts: &BenchOptions) -> Result<Figures> {
    const SIZE: usize = 512;
    const PROBE: &str = "many-restart-probe.txt";
    let n = opts.many;
    let bed = Bed::start(opts, "many")?;
    let writer = bed.nodes[0].clone();
    let staged = writer.staging_dir.join("many");
    eprintln!("bench: many: staging {n} files");
    // 1000 folders, three levels deep.
    let expected = stage_files(&staged, "", n, SIZE, &[10, 10, 10], 3)?;
    thread::sleep(Duration::from_secs(2));
    let idle = rss(&bed.nodes)?;
    let (c0, cpu0) = (committed(&bed)?, cpu_seconds(&bed.nodes));
    eprintln!("bench: many: syncing {n} files");
    let bound = Duration::from_secs(600 + n as u64 / 50);
    let (times, _) = sync_set(&bed, &writer, &staged, Place::Folder("many"), &expected, bound)?;
    let t = slowest(&times);
    let (c1, cpu1) = (committed(&bed)?, cpu_seconds(&bed.nodes));
    let after = rss(&bed.nodes)?;
    let (idle_cpu_pct, idle_cpu_max) = idle_cpu(&bed.nodes);
    let mut memory = Vec::new();
    let mut per_file_max: f64 = 0.0;
    for (name, (idle_rss, _)) in &idle {
        let (rss_now, peak) = after.get(name).copied().unwrap_or((0, 0));
        let per_file = (peak.saturating_sub(*idle_rss) * 1024) as f64 / n as f64;
        per_file_max = per_file_max.max(per_file);
        memory.push(json!({
            "node": name, "idle_rss_kib": idle_rss, "peak_rss_kib": peak, "rss_after_kib": rss_now,
            "peak_above_idle_bytes_per_file": round1(per_file),
        }));
    }
    eprintln!("bench: many: {n} files in {t:.1} s; restarting one node");

    // Restart a follower that holds every file: its start-up scan ends with a `scanned`
    // event (with the node's clock). A file dropped in while it was stopped shows when
    // the cluster has what the scan found.
    let leader = bed.leader()?;
    let restarted = bed
        .nodes
        .iter()
        .rev()
        .find(|n| n.id != leader.id && n.id != writer.id)
        .cloned()
        .unwrap_or(bed.nodes[2].clone());
    let witness = bed.others(&restarted)[0].clone();
    let stop0 = Instant::now();
    restarted.stop();
    let stop_s = stop0.elapsed().as_secs_f64();
    let probe_bytes = format!("written while {} was stopped\n", restarted.name).into_bytes();
    let probe_staged = restarted.staging_dir.join(PROBE);
    fs::write(&probe_staged, &probe_bytes)?;
    fs::rename(&probe_staged, restarted.shared_dir.join(PROBE))?;
    let wall0 = unix_ms();
    let t0 = Instant::now();
    restarted.start()?;
    let (answered, gave_up) = (AtomicBool::new(false), AtomicBool::new(false));
    let (status_s, visible_s) = thread::scope(|s| -> Result<(f64, f64)> {
        let status = s.spawn(|| -> Result<f64> {
            loop {
                if restarted.status().is_some() {
                    answered.store(true, Ordering::SeqCst);
                    return Ok(t0.elapsed().as_secs_f64());
                }
                if gave_up.load(Ordering::SeqCst) {
                    bail!("given up");
                }
                if t0.elapsed() > START + Duration::from_secs(60) {
                    bail!(
                        "{} did not answer `status` within {} s of its restart",
                        restarted.name,
                        t0.elapsed().as_secs()
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        let bound = Duration::from_secs(600);
        let target = witness.shared_dir.join(PROBE);
        let visible = loop {
            if fs::read(&target).is_ok_and(|b| b == probe_bytes) {
                break t0.elapsed().as_secs_f64();
            }
            if t0.elapsed() > bound {
                gave_up.store(true, Ordering::SeqCst);
                bail!(
                    "{PROBE}, dropped into {}'s folder while it was stopped, is not on {} {} s after the restart \
                     (status answered: {})",
                    restarted.name,
                    witness.name,
                    bound.as_secs(),
                    answered.load(Ordering::SeqCst)
                );
            }
            thread::sleep(Duration::from_millis(1));
        };
        let status = status.join().map_err(|_| anyhow!("the status poller panicked"))??;
        Ok((status, visible))
    })?;
    let events = restarted.cli(&["events", "--json"], LISTING)?;
    let scan_done_s = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["type"] == "scanned")
        .and_then(|e| parse_rfc3339_ms(e["at"].as_str()?))
        .map(|at| (at - wall0) as f64 / 1000.0);
    let restarted_rss = rss(std::slice::from_ref(&restarted))?.get(&restarted.name).copied().unwrap_or((0, 0));
    let scan = scan_done_s.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "unknown".into());
    Ok(Figures {
        row: format!(
            "{n} files of {SIZE} B on all nodes in {t:.1} s ({:.0} files/s); peak RSS above idle {:.0} B/file; \
             idle CPU after up to {idle_cpu_max:.0}% of a core; restart of {}: status after {status_s:.2} s, start-up scan done after {scan}, a file made offline \
             on {} after {visible_s:.2} s",
            n as f64 / t,
            per_file_max,
            restarted.name,
            witness.name
        ),
        json: json!({
            "workload": "many", "files": n, "size_bytes": SIZE, "folders": 1000, "writer": writer.name,
            "sync_s": round3(t), "files_per_s": round1(n as f64 / t), "sync_s_per_node": per_node(&times),
            "log_entries": c1.saturating_sub(c0), "cpu_s": cpu_delta(&cpu0, &cpu1),
            "memory": memory, "peak_above_idle_bytes_per_file_max": round1(per_file_max),
            "idle_cpu_pct_after": idle_cpu_pct,
            "restart": {
                "node": restarted.name, "stop_s": round3(stop_s), "status_answers_s": round3(status_s),
                "scan_done_s": scan_done_s.map(round3),
                "probe_visible_on": witness.name, "probe_visible_s": round3(visible_s),
                "peak_rss_kib": restarted_rss.1, "rss_kib": restarted_rss.0,
                "signal": "the restarted node's `scanned` event (its start-up scan compared the whole folder)",
            },
        }),
    })
}

/// (VmRSS, VmHWM) in KiB of each running node.
fn rss(nodes: &[Arc<Node>]) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    for node in nodes {
        let pid = node.pid().ok_or_else(|| anyhow!("{} is not running", node.name))?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status of {}", node.name))?;
        let (Some(rss), Some(hwm)) = (kib_field(&status, "VmRSS"), kib_field(&status, "VmHWM")) else {
            bail!("no VmRSS/VmHWM in /proc/{pid}/status of {}", node.name);
        };
        out.insert(node.name.clone(), (rss, hwm));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// big

fn big(opts: &BenchOptions) -> Result<Figures> {
    const NAME: &str = "big.bin";
    let size = opts.big_mib * 1024 * 1024;
    let bed = Bed::start(opts, "big")?;
    let writer = bed.nodes[0].clone();
    let staged = writer.staging_dir.join(NAME);
    eprintln!("bench: big: writing a {} MiB file outside the folder", opts.big_mib);
    let hash = write_noise(&staged, size)?;
    let (c0, cpu0) = (committed(&bed)?, cpu_seconds(&bed.nodes));
    let t0 = Instant::now();
    fs::rename(&staged, writer.shared_dir.join(NAME))?;
    let bound = Duration::from_secs(120 + opts.big_mib);
    let mut times: Vec<(String, f64)> = Vec::new();
    let others = bed.others(&writer);
    // The node renames a complete, verified file into place: its full size means it is there.
    while times.len() < others.len() {
        for node in &others {
            if times.iter().any(|(n, _)| n == &node.name) {
                continue;
            }
            if fs::metadata(node.shared_dir.join(NAME)).is_ok_and(|m| m.len() == size) {
                times.push((node.name.clone(), t0.elapsed().as_secs_f64()));
            }
        }
        if t0.elapsed() > bound {
            bail!("the {} MiB file is not on every node after {} s", opts.big_mib, bound.as_secs());
        }
        thread::sleep(Duration::from_millis(5));
    }
    let (c1, cpu1) = (committed(&bed)?, cpu_seconds(&bed.nodes));
    let t = slowest(&times);
    for node in &others {
        let got = hash_file(&node.shared_dir.join(NAME))?;
        if got != hash {
            bail!("{}'s {NAME} has other content than the original", node.name);
        }
    }
    // The physical limit: the same bytes written twice more on this disk, fsynced.
    eprintln!("bench: big: copying it twice with fsync, for the limit of this disk");
    let cp_dir = bed.root.join("cp");
    fs::create_dir_all(&cp_dir)?;
    let source = writer.shared_dir.join(NAME);
    let c_t0 = Instant::now();
    for copy in ["a", "b"] {
        let dir = cp_dir.join(copy);
        fs::create_dir_all(&dir)?;
        copy_fsync(&source, &dir.join(NAME))?;
    }
    let cp = c_t0.elapsed().as_secs_f64();
    let _ = fs::remove_dir_all(&cp_dir);
    let mib = opts.big_mib as f64;
    Ok(Figures {
        row: format!(
            "{} MiB file on all nodes in {t:.2} s ({:.0} MiB/s per node); 2 copies with fsync take {cp:.2} s: \
             raftshare/cp {:.2}, {:.0}% of the cp limit",
            opts.big_mib,
            mib / t,
            t / cp,
            100.0 * cp / t
        ),
        json: json!({
            "workload": "big", "size_mib": opts.big_mib, "writer": writer.name,
            "sync_s": round3(t), "sync_s_per_node": per_node(&times), "mib_per_s_per_node": round1(mib / t),
            "cp_twice_fsync_s": round3(cp), "ratio_raftshare_over_cp": round3(t / cp),
            "percent_of_cp_limit": round1(100.0 * cp / t),
            "log_entries": c1.saturating_sub(c0), "cpu_s": cpu_delta(&cpu0, &cpu1),
        }),
    })
}

/// Write `size` pseudo-random bytes to `path`, fsynced; their BLAKE3 hex.
fn write_noise(path: &Path, size: u64) -> Result<String> {
    let mut file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut rng = Rng::stream(SEED, 4);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        file.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn hash_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().to_hex().to_string());
        }
        hasher.update(&buf[..n]);
    }
}

/// Copy through user space (not `copy_file_range`, which some file systems turn into a
/// reflink that copies nothing), fsync the file and its folder: what a receiver must do.
fn copy_fsync(from: &Path, to: &Path) -> Result<()> {
    let mut src = File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let mut dst = OpenOptions::new().create(true).write(true).truncate(true).open(to)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
    }
    dst.sync_all()?;
    if let Some(parent) = to.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// commit

/// One phase of the commit workload: every node writes small files at `per_node_rate`
/// files/s (None: as fast as it can) for the phase's seconds.
struct Phase {
    name: &'static str,
    per_node_rate: Option<f64>,
}

fn commit(opts: &BenchOptions) -> Result<Figures> {
    // No CLI command proposes a change directly (`AdminRequest::Propose` is only sent by a
    // node's own proposer), so commits are driven the way a user drives them: files.
    // A node proposes one batch at a time and its watcher closes a batch after 3 ms of
    // quiet, so slow writers give one-op entries and fast ones give big batches.
    // The files go at the top of the folder: in a subfolder, this build's scanner walks
    // the subfolder again each time it is opened, its own walks included (notify reports
    // opens), which keeps a core busy and would hide the commit path behind it.
    const PHASES: [Phase; 4] = [
        Phase { name: "50/s", per_node_rate: Some(50.0) },
        Phase { name: "200/s", per_node_rate: Some(200.0) },
        Phase { name: "1000/s", per_node_rate: Some(1000.0) },
        Phase { name: "flood", per_node_rate: None },
    ];
    let bed = Bed::start(opts, "commit")?;
    let secs = Duration::from_secs(opts.commit_secs.max(1));
    let mut results = Vec::new();
    for (k, phase) in PHASES.iter().enumerate() {
        eprintln!("bench: commit: phase {} for {} s", phase.name, secs.as_secs());
        results.push(commit_phase(&bed, phase, k, secs)?);
        thread::sleep(Duration::from_secs(1));
    }
    let best_entries = results.iter().map(|r| r["entries_per_s"].as_f64().unwrap_or(0.0)).fold(0.0, f64::max);
    let best_ops = results.iter().map(|r| r["ops_per_s"].as_f64().unwrap_or(0.0)).fold(0.0, f64::max);
    let rows: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "{}: {:.1} entries/s, {:.0} ops/s, {:.1} ops/entry",
                r["phase"].as_str().unwrap_or_default(),
                r["entries_per_s"].as_f64().unwrap_or(0.0),
                r["ops_per_s"].as_f64().unwrap_or(0.0),
                r["ops_per_entry"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    Ok(Figures {
        row: format!(
            "max {best_entries:.0} commits/s, max {best_ops:.0} file ops/s (3 nodes writing 64 B files; per node rate \
             → {})",
            rows.join("; ")
        ),
        json: json!({
            "workload": "commit", "size_bytes": 64, "writers": NODES, "phase_s": secs.as_secs(),
            "max_entries_per_s": round1(best_entries), "max_ops_per_s": round1(best_ops), "phases": results,
            "method": "files written in every node's folder; entries and ops counted from the leader's \
                       committed index and `raftshare log --json` over the writing window",
        }),
    })
}

fn commit_phase(bed: &Bed, phase: &Phase, k: usize, secs: Duration) -> Result<Value> {
    // A flood writer stops here, so the backlog it leaves drains in bounded time.
    const FLOOD_CAP: usize = 20_000;
    let prefix = format!("c{k}-");
    let c0 = committed(bed)?;
    let w0 = Instant::now();
    let written: Vec<usize> = thread::scope(|s| -> Result<Vec<usize>> {
        let writers: Vec<_> = bed
            .nodes
            .iter()
            .map(|node| {
                let prefix = &prefix;
                s.spawn(move || write_small_files(node, prefix, phase.per_node_rate, w0 + secs, FLOOD_CAP))
            })
            .collect();
        writers.into_iter().map(|w| w.join().map_err(|_| anyhow!("a writer panicked"))?).collect::<Result<Vec<usize>>>()
    })?;
    let c1 = committed(bed)?;
    let window = w0.elapsed().as_secs_f64();
    let total: usize = written.iter().sum();
    // Drain: every file written is in the file table (an empty outbox alone is not
    // enough: the watcher and the scanner may not have queued the last files yet).
    let bound = Duration::from_secs(300);
    loop {
        let mut waiting: Vec<String> = bed
            .nodes
            .iter()
            .filter_map(|n| match n.status().and_then(|s| s["pending_outbox"].as_u64()) {
                Some(0) => None,
                Some(p) => Some(format!("{} has {p} changes waiting", n.name)),
                None => Some(format!("{} does not answer `status`", n.name)),
            })
            .collect();
        if waiting.is_empty() {
            let in_table = files_under(bed.leader()?.as_ref(), &prefix)?;
            if in_table < total {
                waiting.push(format!("the file table holds {in_table} of the {total} files written"));
            }
        }
        if waiting.is_empty() {
            break;
        }
        if w0.elapsed() > secs + bound {
            bail!(
                "phase {}: not drained {} s after the writers stopped: {}",
                phase.name,
                bound.as_secs(),
                waiting.join("; ")
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    let drained = w0.elapsed().as_secs_f64();
    let c2 = committed(bed)?;
    let leader = bed.leader()?;
    let log = log_range(&leader, c0 + 1, c2)?;
    let ops_in = |lo: u64, hi: u64| -> (u64, u64) {
        let entries = log.iter().filter(|(i, _)| *i > lo && *i <= hi);
        let changes = entries.clone().filter(|(_, ops)| *ops > 0).count() as u64;
        (changes, entries.map(|(_, ops)| *ops).sum())
    };
    let (changes_window, ops_window) = ops_in(c0, c1);
    let (_, ops_all) = ops_in(c0, c2);
    let entries_window = c1.saturating_sub(c0);
    Ok(json!({
        "phase": phase.name,
        "per_node_rate": phase.per_node_rate,
        "files_written": total,
        "window_s": round3(window),
        "entries": entries_window,
        "entries_per_s": round1(entries_window as f64 / window),
        "ops_per_s": round1(ops_window as f64 / window),
        "ops_per_entry": round3(if changes_window == 0 { 0.0 } else { ops_window as f64 / changes_window as f64 }),
        "drained_s": round3(drained),
        "ops_per_s_until_drained": round1(ops_all as f64 / drained),
        "log_entries_seen": log.len(),
        "log_complete": log.len() as u64 == c2.saturating_sub(c0),
    }))
}

/// Write 64-byte files `<prefix><node>-f<i>.bin` at the top of `node`'s folder until
/// `until` (or `cap` files), at `rate` files/s or as fast as possible; how many it wrote.
fn write_small_files(node: &Node, prefix: &str, rate: Option<f64>, until: Instant, cap: usize) -> Result<usize> {
    let start = Instant::now();
    let mut i = 0usize;
    while Instant::now() < until && i < cap {
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
        let staged = node.staging_dir.join("commit.tmp");
        let bytes = rng::content(SEED ^ 5, i as u64, node.id, 64);
        fs::write(&staged, &bytes)?;
        fs::rename(&staged, node.shared_dir.join(format!("{prefix}{}-f{i:06}.bin", node.name)))?;
        i += 1;
    }
    Ok(i)
}

/// Files whose path starts with `prefix` in `node`'s file table (`ls --json`, tombstones
/// left out).
fn files_under(node: &Node, prefix: &str) -> Result<usize> {
    let ls = node.cli_json(&["ls", "--json"], LISTING)?;
    Ok(ls
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["deleted"] != true && f["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
        .count())
}

/// (index, ops) of every entry in `from..=to` the node still keeps.
fn log_range(node: &Node, from: u64, to: u64) -> Result<Vec<(u64, u64)>> {
    const PAGE: u64 = 10_000;
    let mut out = Vec::new();
    let mut next = from;
    while next <= to {
        let (f, l) = (next.to_string(), PAGE.to_string());
        let page = node.cli_json(&["log", "--json", "--from", &f, "--limit", &l], LISTING)?;
        let entries = page.as_array().cloned().unwrap_or_default();
        let Some(last) = entries.last().and_then(|e| e["index"].as_u64()) else { break };
        for e in &entries {
            if let Some(i) = e["index"].as_u64().filter(|i| *i <= to) {
                out.push((i, e["ops"].as_array().map_or(0, |o| o.len() as u64)));
            }
        }
        next = last + 1;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Pure helpers: machine facts, /proc parsing, time.

fn machine_info(opts: &BenchOptions) -> Value {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    let loadavg = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loadavg = loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    json!({
        "workload": "machine",
        "date": utc_rfc3339(unix_ms() / 1000),
        "nproc": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_total_kib": kib_field(&meminfo, "MemTotal"),
        "cpu": cpu,
        "loadavg": loadavg,
        "raftshare": opts.bin.display().to_string(),
        "workloads": opts.benchmarks.iter().map(|b| b.name()).collect::<Vec<_>>(),
    })
}

/// A `Name:   1234 kB` field of /proc/meminfo or /proc/<pid>/status, in KiB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// utime + stime (clock ticks) from a /proc/<pid>/stat line; the command name may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on every usual Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix seconds as `2025-11-25T16:24:39Z`.
fn utc_rfc3339(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// Milliseconds since the epoch of an RFC 3339 time as raftshare prints them
/// (`2025-11-25T16:24:39.123Z`, or with a `+hh:mm` offset); None if it is not one.
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (clock, offset_s) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (c, sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60))
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut parts = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (parts.next()??, parts.next()??, parts.next()??);
    let ms = if frac.is_empty() { 0 } else { format!("{:0<3}", &frac[..frac.len().min(3)]).parse::<i64>().ok()? };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    Some(secs * 1000 + ms)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 50.0), 50.0);
        assert_eq!(percentile(&hundred, 99.0), 99.0);
        assert_eq!(percentile(&hundred, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 99.0), 4.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[5.0, 6.0], 0.0), 5.0);
    }

    #[test]
    fn an_out_folder_holding_a_run_is_refused_before_anything_is_written() {
        let out = tempfile::tempdir().unwrap();
        for held in ["latency/nodes", "scale-5000/nodes", "burst"] {
            fs::create_dir_all(out.path().join(held)).unwrap();
        }
        let all = Benchmark::parse_list("all").unwrap();
        // `burst` has no nodes folder: a run that never started holds nothing.
        assert_eq!(runs_already_in(out.path(), &all), ["latency", "scale"]);
        assert!(runs_already_in(out.path(), &[Benchmark::Big, Benchmark::Burst]).is_empty());
        assert!(runs_already_in(&out.path().join("missing"), &all).is_empty());

        let opts = BenchOptions {
            benchmarks: all,
            out: out.path().to_path_buf(),
            bin: out.path().join("no-such-raftshare"),
            samples: 1,
            big_mib: 1,
            many: 1,
            commit_secs: 1,
            keep_data: false,
        };
        let err = run_bench(&opts).unwrap_err().to_string();
        assert!(err.contains("already holds a run of latency, scale"), "{err}");
        assert!(!out.path().join("bench.jsonl").exists(), "nothing is written");
    }

    #[test]
    fn stats_sort_their_samples() {
        let s = Stats::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.n, s.p50, s.p99, s.max, s.min, s.mean), (4, 2.0, 10.0, 10.0, 1.0, 4.0));
        assert_eq!(Stats::of(&[]).n, 0);
    }

    #[test]
    fn workload_lists_parse() {
        assert_eq!(Benchmark::parse_list("all").unwrap(), Benchmark::ALL.to_vec());
        assert_eq!(Benchmark::parse_list("burst, latency,burst").unwrap(), vec![Benchmark::Burst, Benchmark::Latency]);
        assert!(Benchmark::parse_list("latency,fast").unwrap_err().contains("fast"));
        assert!(Benchmark::parse_list("").is_err());
    }

    #[test]
    fn nested_paths_spread_files_over_the_folders() {
        assert_eq!(nested_path(73, &[10, 10]), "d3/e7/f0000073.bin");
        assert_eq!(nested_path(5, &[]), "f0000005.bin");
        let folders: std::collections::BTreeSet<String> =
            (0..1000).map(|i| nested_path(i, &[10, 10]).rsplit_once('/').unwrap().0.to_string()).collect();
        assert_eq!(folders.len(), 100);
    }

    #[test]
    fn proc_fields_parse() {
        let status = "Name:\traftshare\nVmHWM:\t   51234 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(kib_field(status, "VmHWM"), Some(51234));
        assert_eq!(kib_field(status, "VmRSS"), Some(40960));
        assert_eq!(kib_field(status, "VmSwap"), None);
        assert_eq!(kib_field("MemTotal:       24683656 kB\nMemFree: 1 kB\n", "MemTotal"), Some(24683656));
        let stat = "1234 (rafts (hare) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 42";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_rfc3339(1_764_087_879), "2025-11-25T16:24:39Z");
        assert_eq!(utc_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(parse_rfc3339_ms("2025-11-25T16:24:39Z"), Some(1_764_087_879_000));
        assert_eq!(parse_rfc3339_ms("2025-11-25T16:24:39.123Z"), Some(1_764_087_879_123));
        assert_eq!(parse_rfc3339_ms("2025-11-25T16:24:39.1Z"), Some(1_764_087_879_100));
        assert_eq!(parse_rfc3339_ms("2025-11-25T16:24:39.123456789Z"), Some(1_764_087_879_123));
        assert_eq!(parse_rfc3339_ms("2025-11-25T17:24:39.5+01:00"), Some(1_764_087_879_500));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        for secs in [0, 86_399, 86_400, 1_000_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339_ms(&utc_rfc3339(secs)), Some(secs * 1000));
        }
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
