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
//!
//! This module owns the options, the choice of workloads, running them one after the
//! other and the report (rows, summary table, `bench.jsonl`). Layout:
//! - `bed` — the fresh cluster each workload runs on, and its cleanup.
//! - `file_sets` — sets of files staged outside the folder, moved in, waited for.
//! - `machine` — the machine's facts and the nodes' CPU and memory, from /proc.
//! - `clock` — wall-clock times as raftshare prints them.
//! - one module per workload: `latency`, `burst`, `scale`, `big`, `many`, `commit`.

mod bed;
mod big;
mod burst;
mod clock;
mod commit;
mod file_sets;
mod latency;
mod machine;
mod many;
mod scale;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use self::bed::RemoveLeftBehind;
use self::machine::machine_info;

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
        Benchmark::Latency => latency::run(opts),
        Benchmark::Burst => burst::run(opts),
        Benchmark::Scale => scale::run(opts),
        Benchmark::Big => big::run(opts),
        Benchmark::Many => many::run(opts),
        Benchmark::Commit => commit::run(opts),
    }
}

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
    fn workload_lists_parse() {
        assert_eq!(Benchmark::parse_list("all").unwrap(), Benchmark::ALL.to_vec());
        assert_eq!(Benchmark::parse_list("burst, latency,burst").unwrap(), vec![Benchmark::Burst, Benchmark::Latency]);
        assert!(Benchmark::parse_list("latency,fast").unwrap_err().contains("fast"));
        assert!(Benchmark::parse_list("").is_err());
    }
}
