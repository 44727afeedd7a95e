//! One test from start to verdict: set up the cluster, run the workload, the nemesis,
//! the sampler and the supervisor together for `--time`, heal everything, wait (bounded)
//! for the cluster to settle, collect each node's view, stop the nodes, save it all in
//! the output folder, and run the checker on what was saved.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::checker::{self, CheckResult, NodeView, RunData, Settle};
use crate::cluster::{retry, Cluster, Node, LISTING, QUICK};
use crate::history::{History, Record};
use crate::nemesis::{sleep_until, Nemesis};
use crate::plan::{NemesisKind, Plan, PlanConfig};
use crate::tree;
use crate::workload::{Workload, Written};
use crate::{process, sampler};

/// Everything `jepsen-lite test` is told.
#[derive(Debug, Clone)]
pub struct TestOptions {
    pub nodes: usize,
    pub time_s: u64,
    pub nemeses: Vec<NemesisKind>,
    pub seed: u64,
    pub out: PathBuf,
    pub bin: PathBuf,
    pub rate: f64,
    pub settle_s: u64,
    pub keep_data: bool,
}

impl TestOptions {
    /// The plan these options give.
    pub fn plan(&self) -> Plan {
        Plan::generate(PlanConfig {
            seed: self.seed,
            nodes: self.nodes,
            time_ms: self.time_s * 1000,
            rate: self.rate,
            nemeses: self.nemeses.clone(),
        })
    }

    /// `--nemesis` as given back: `none`, or the kinds.
    pub fn nemesis_arg(&self) -> String {
        if self.nemeses.is_empty() {
            "none".into()
        } else if self.nemeses == NemesisKind::ALL {
            "all".into()
        } else {
            self.nemeses.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
        }
    }

    /// The command that replays this run's plan.
    pub fn rerun(&self) -> String {
        let mut cmd = format!(
            "jepsen-lite test --nodes {} --time {} --nemesis {} --seed {}",
            self.nodes,
            self.time_s,
            self.nemesis_arg(),
            self.seed
        );
        if self.rate != 4.0 {
            cmd += &format!(" --rate {}", self.rate);
        }
        cmd
    }
}

/// The raftshare binary: `explicit`, else `$RAFTSHARE_BIN`, else `raftshare` next to this
/// executable (or in the sibling release/debug folder of a cargo target dir).
pub fn find_bin(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(bin) = explicit.or_else(|| std::env::var_os("RAFTSHARE_BIN").map(PathBuf::from)) {
        if !bin.is_file() {
            bail!("no raftshare binary at {}", bin.display());
        }
        return Ok(bin);
    }
    let exe = std::env::current_exe().context("cannot tell where jepsen-lite itself is")?;
    let dir = exe.parent().context("jepsen-lite's folder")?;
    let candidates = [dir.join("raftshare"), dir.join("../release/raftshare"), dir.join("../debug/raftshare")];
    if let Some(bin) = candidates.iter().find(|c| c.is_file()) {
        return Ok(bin.canonicalize().unwrap_or(bin.clone()));
    }
    bail!(
        "no raftshare binary next to {}: build it (`cargo build --release -p raftshare`), or pass --bin PATH \
         (or set RAFTSHARE_BIN)",
        exe.display()
    )
}

/// When run by `cargo run`, build the raftshare binary of the same profile first, so the
/// test never runs a stale node.
pub fn build_bin_under_cargo() -> Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else { return Ok(()) };
    let exe = std::env::current_exe()?;
    let release = exe.parent().is_some_and(|d| d.ends_with("release"));
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "raftshare", "--bin", "raftshare"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "jepsen-lite: building the node first: cargo build -p raftshare{}",
        if release { " --release" } else { "" }
    );
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("cannot build raftshare ({status}); fix the build or pass --bin PATH to an existing binary");
    }
    Ok(())
}

/// Sets the flags when dropped, so helper threads end even if the main one panics.
struct StopOnDrop<'a>(&'a [&'a AtomicBool]);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        for flag in self.0 {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

/// Run one test; true if every check passed. Errors are the harness's own failures
/// (no binary, a cluster that cannot even start).
pub fn run_test(opts: &TestOptions) -> Result<bool> {
    let out = &opts.out;
    if out.join("history.jsonl").exists() {
        bail!("{} already holds a run: choose another --out", out.display());
    }
    fs::create_dir_all(out.join("final")).with_context(|| format!("cannot create {}", out.display()))?;
    let plan = opts.plan();
    fs::write(out.join("plan.json"), serde_json::to_string_pretty(&plan)?)?;
    println!(
        "jepsen-lite: seed {} | {} nodes | {} s | nemesis {}",
        opts.seed,
        opts.nodes,
        opts.time_s,
        opts.nemesis_arg()
    );
    println!("  rerun:     {}", opts.rerun());
    println!("  plan:      {}", plan.summary());
    println!("  raftshare: {}", opts.bin.display());
    println!("  out:       {}", out.display());

    let history = Arc::new(History::create(&out.join("history.jsonl"), true)?);
    let started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    history.record(&Record::Start {
        seed: opts.seed,
        nodes: opts.nodes,
        time_s: opts.time_s,
        nemesis: opts.nemesis_arg(),
        bin: opts.bin.display().to_string(),
        started_unix_ms,
    });
    let cluster = Cluster::start(&opts.bin, &out.join("nodes"), opts.nodes, history.clone())
        .context("the cluster could not be set up (node logs are in the out folder)")?;
    history.nemesis("ready", &cluster.slots().iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), "cluster up");

    let written: Written = Mutex::new(Default::default());
    let load_stop = AtomicBool::new(false);
    let all_stop = AtomicBool::new(false);
    let settle = thread::scope(|s| {
        let _stop = StopOnDrop(&[&load_stop, &all_stop]);
        let start = Instant::now();
        let workload = Workload { cluster: &cluster, history: &history, seed: opts.seed, written: &written };
        let nemesis = Nemesis { cluster: &cluster, history: &history };
        let (plan, load_stop_ref) = (&plan, &load_stop);
        let w = s.spawn(move || workload.run(&plan.ops, start, load_stop_ref));
        let n = s.spawn(move || nemesis.run(&plan.faults, start, load_stop_ref));
        let sm = s.spawn(|| sampler::run(&cluster, &history, &written, &all_stop));
        let sv = s.spawn(|| {
            while !all_stop.load(Ordering::SeqCst) {
                cluster.supervise();
                thread::sleep(Duration::from_millis(200));
            }
        });
        sleep_until(start + Duration::from_secs(opts.time_s), &load_stop);
        load_stop.store(true, Ordering::SeqCst);
        for t in [w, n] {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        history.nemesis("load-end", &[], "workload and faults stopped");
        heal_everything(&cluster, &history);
        let settle = settle(&cluster, Duration::from_secs(opts.settle_s));
        history.nemesis(
            "settle",
            &[],
            format!(
                "{} after {:.1} s {}",
                if settle.converged { "converged" } else { "NOT converged" },
                settle.waited_ms as f64 / 1000.0,
                settle.reason
            ),
        );
        all_stop.store(true, Ordering::SeqCst);
        for t in [sm, sv] {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        settle
    });

    let views: Vec<NodeView> = cluster.live().iter().map(|n| view_of(n)).collect();
    cluster.shutdown();
    for view in &views {
        fs::write(out.join("final").join(format!("{}.json", view.name)), serde_json::to_string_pretty(view)?)?;
    }
    fs::write(out.join("final/settle.json"), serde_json::to_string_pretty(&settle)?)?;
    drop(cluster);

    let passed = check_saved(out, opts.seed)?;
    if passed && !opts.keep_data {
        for dir in fs::read_dir(out.join("nodes"))?.flatten() {
            for sub in ["data", "shared", "staging"] {
                let _ = fs::remove_dir_all(dir.path().join(sub));
            }
        }
    }
    Ok(passed)
}

/// Run the checker on a saved run, print and save the report; true if all passed.
pub fn check_saved(out: &Path, seed: u64) -> Result<bool> {
    let data = RunData::load(out)?;
    let results = checker::check_all(&data);
    let passed = results.iter().all(CheckResult::passed);
    let seed = data
        .history
        .iter()
        .find_map(|r| if let Record::Start { seed, .. } = r { Some(*seed) } else { None })
        .unwrap_or(seed);
    let verdict = format!(
        "verdict: {} (seed {seed}) — history, plan and node logs in {}",
        if passed { "PASS" } else { "FAIL" },
        out.display()
    );
    let mut printed = String::new();
    let mut full = String::new();
    for r in &results {
        printed += &r.details(10);
        full += &r.details(0);
    }
    println!("\n{printed}{verdict}");
    fs::write(out.join("report.txt"), format!("{full}{verdict}\n"))?;
    Ok(passed)
}

/// Undo every fault still in force: resume, restart, heal partitions; then retire the
/// nodes that are not members any more.
fn heal_everything(cluster: &Cluster, history: &History) {
    for node in cluster.live() {
        if node.is_paused() {
            let result = node.resume();
            history.nemesis("resume", &[&node.name], format!("healing at the end: {}", ok(&result)));
        }
        if !node.is_running() {
            let result = node.start_ready();
            history.nemesis("restart", &[&node.name], format!("healing at the end: {}", ok(&result)));
        }
    }
    for node in cluster.live() {
        if let Err(e) = retry(3, || node.cli(&["partition"], QUICK)) {
            history.nemesis("failed", &[&node.name], format!("heal at the end: {e:#}"));
        }
    }
    let names: Vec<String> = cluster.live().iter().map(|n| n.name.clone()).collect();
    history.nemesis("heal", &names.iter().map(String::as_str).collect::<Vec<_>>(), "every fault healed");
    match cluster.members(Duration::from_secs(30)) {
        Some(members) => {
            for node in cluster.live().into_iter().filter(|n| !members.contains(&n.id)) {
                cluster.retire(&node);
                history.nemesis("retire", &[&node.name], "not a member at the end");
            }
        }
        None => history.nemesis("failed", &[], "no leader 30 s after healing: membership not reconciled"),
    }
}

fn ok(result: &Result<()>) -> String {
    match result {
        Ok(()) => "ok".into(),
        Err(e) => format!("FAILED: {e:#}"),
    }
}

/// Wait until the live nodes agree and their folders match their tables, twice in a row.
fn settle(cluster: &Cluster, timeout: Duration) -> Settle {
    let start = Instant::now();
    let mut streak = 0;
    loop {
        let nodes = cluster.live();
        let active = nodes.iter().map(|n| n.name.clone()).collect();
        match converged(&nodes) {
            Ok(()) => {
                streak += 1;
                if streak >= 2 {
                    let waited_ms = start.elapsed().as_millis() as u64;
                    return Settle { converged: true, waited_ms, reason: String::new(), active };
                }
            }
            Err(reason) => {
                streak = 0;
                if start.elapsed() > timeout {
                    let waited_ms = start.elapsed().as_millis() as u64;
                    return Settle { converged: false, waited_ms, reason, active };
                }
            }
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Ok if every node names the same leader, has applied the same committed index, has
/// nothing pending, and holds in its folder exactly the table `ls` shows, the same table
/// everywhere; else why not.
fn converged(nodes: &[Arc<Node>]) -> Result<(), String> {
    let mut agreed: Option<(String, Value, Value, BTreeMap<String, String>)> = None;
    for node in nodes {
        let name = &node.name;
        let s = node.status().ok_or_else(|| format!("{name} does not answer `status`"))?;
        if !s["folder_problem"].is_null() {
            return Err(format!("{name}: {}", s["folder_problem"]));
        }
        if s["leader_id"].is_null() {
            return Err(format!("{name} knows no leader"));
        }
        if s["applied_index"] != s["committed_index"] {
            return Err(format!("{name} applied {} of {}", s["applied_index"], s["committed_index"]));
        }
        for field in ["pending_outbox", "pending_downloads"] {
            if s[field].as_u64() != Some(0) {
                return Err(format!("{name} has {field} = {}", s[field]));
            }
        }
        let ls = ls_map(node).map_err(|e| format!("{e:#}"))?;
        let tree = tree::hashes_of(&node.shared_dir);
        if tree != ls {
            return Err(format!("{name}'s folder ({} files) differs from its ls ({} files)", tree.len(), ls.len()));
        }
        match &agreed {
            None => agreed = Some((name.clone(), s["leader_id"].clone(), s["committed_index"].clone(), ls)),
            Some((first, leader, committed, table)) => {
                if &s["leader_id"] != leader || &s["committed_index"] != committed {
                    return Err(format!(
                        "{name} says leader {} commit {}, {first} says leader {leader} commit {committed}",
                        s["leader_id"], s["committed_index"]
                    ));
                }
                if &ls != table {
                    return Err(format!("{name}'s table differs from {first}'s"));
                }
            }
        }
    }
    if agreed.is_none() {
        return Err("no live node".into());
    }
    Ok(())
}

fn ls_map(node: &Node) -> Result<BTreeMap<String, String>> {
    let ls = node.cli_json(&["ls", "--json"], LISTING)?;
    Ok(ls
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["deleted"] != true)
        .filter_map(|f| Some((f["path"].as_str()?.to_string(), f["hash"].as_str()?.to_string())))
        .collect())
}

/// Everything the checker needs from one node.
fn view_of(node: &Node) -> NodeView {
    let mut errors = Vec::new();
    let mut keep = |r: Result<Value>| match r {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(format!("{e:#}"));
            None
        }
    };
    let status = keep(node.cli_json(&["status", "--json"], QUICK));
    let ls = keep(node.cli_json(&["ls", "--json"], LISTING)).and_then(|v| v.as_array().cloned());
    let log = keep(full_log(node).map(Value::Array)).and_then(|v| v.as_array().cloned());
    NodeView { name: node.name.clone(), id: node.id, status, ls, log, tree: tree::hashes_of(&node.shared_dir), errors }
}

/// Every kept log entry, page by page.
fn full_log(node: &Node) -> Result<Vec<Value>> {
    const PAGE: usize = 10_000;
    let mut out = Vec::new();
    let mut from: Option<u64> = None;
    loop {
        let from_arg = from.map(|f| f.to_string());
        let limit = PAGE.to_string();
        let mut args = vec!["log", "--json", "--limit", &limit];
        if let Some(f) = &from_arg {
            args.extend(["--from", f]);
        }
        let page = node.cli_json(&args, LISTING)?;
        let page = page.as_array().cloned().unwrap_or_default();
        let n = page.len();
        from = page.last().and_then(|e| e["index"].as_u64()).map(|i| i + 1);
        out.extend(page);
        if n < PAGE || from.is_none() {
            return Ok(out);
        }
    }
}

/// Kill every child if the harness is interrupted by a panic or a signal (see `process`).
pub fn kill_children_when_interrupted() -> Result<()> {
    process::install_panic_hook();
    process::kill_children_on_signals()
}
