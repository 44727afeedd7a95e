//! jepsen-lite: see README.md ("Breaking it on purpose: jepsen-lite").

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use jepsen_lite::bench::{self, BenchOptions, Benchmark};
use jepsen_lite::plan::NemesisKind;
use jepsen_lite::runner::{self, TestOptions};

/// Break a real raftshare cluster on purpose, and prove that nothing acknowledged is lost.
#[derive(Debug, Parser)]
#[command(name = "jepsen-lite", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a cluster under load and faults, heal it, check it. Exit 0: pass, 1: a check
    /// failed, 2: the harness itself could not run.
    Test {
        /// Cluster size (3 or 5 make sense).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
        nodes: u64,
        /// Seconds of load and faults (healing and checking come after).
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Faults: all, none, or a comma list of kill, pause, partition, membership.
        #[arg(long, default_value = "all")]
        nemesis: String,
        /// Fixes the schedule and the contents (default: from the clock; always printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Where the history, plan, report and node logs go (default: target/jepsen-lite/<seed>-...).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The raftshare binary (default: $RAFTSHARE_BIN, else next to this program).
        #[arg(long)]
        bin: Option<PathBuf>,
        /// Workload operations per second.
        #[arg(long, default_value_t = 4.0)]
        rate: f64,
        /// Most seconds to wait, after healing, for the cluster to settle.
        #[arg(long, default_value_t = 120)]
        settle: u64,
        /// Keep the nodes' data and shared folders even when the run passes.
        #[arg(long)]
        keep_data: bool,
    },
    /// Time a healthy cluster (no faults): latency, burst, scale, big, many, commit. Each
    /// workload prints a row and a JSON line; all lines go to OUT/bench.jsonl. Exit 0: every
    /// workload ran, 1: one failed, 2: the harness itself could not run.
    Bench {
        /// all, or a comma list of latency, burst, scale, big, many, commit.
        #[arg(long, default_value = "all")]
        workloads: String,
        /// Where bench.jsonl and the node logs go (default: target/jepsen-lite/bench-<time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The raftshare binary (default: $RAFTSHARE_BIN, else next to this program).
        #[arg(long)]
        bin: Option<PathBuf>,
        /// latency: measured samples.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
        samples: u64,
        /// big: the file's size in MiB.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
        big_mib: u64,
        /// many: how many files.
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        many: u64,
        /// commit: seconds of load in each of its phases.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        commit_secs: u64,
        /// Keep the nodes' data and shared folders (node logs are always kept).
        #[arg(long)]
        keep_data: bool,
    },
    /// Run the checker again on a saved run's folder.
    Check { out: PathBuf },
    /// Print the plan a seed gives (JSON), without running anything.
    Plan {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, default_value_t = 60)]
        time: u64,
        #[arg(long, default_value = "all")]
        nemesis: String,
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value_t = 4.0)]
        rate: f64,
    },
}

fn main() -> ExitCode {
    if let Err(e) = runner::kill_children_when_interrupted() {
        eprintln!("jepsen-lite: {e:#}");
        return ExitCode::from(2);
    }
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("jepsen-lite: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Cmd::Test { nodes, time, nemesis, seed, out, bin, rate, settle, keep_data } => {
            let nemeses = NemesisKind::parse_list(&nemesis).map_err(anyhow::Error::msg)?;
            let seed = seed.unwrap_or_else(|| {
                SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64 % 1_000_000).unwrap_or(1)
            });
            if bin.is_none() && std::env::var_os("RAFTSHARE_BIN").is_none() {
                runner::build_bin_under_cargo()?;
            }
            let bin = runner::find_bin(bin)?;
            let mut opts = TestOptions {
                nodes: nodes as usize,
                time_s: time,
                nemeses,
                seed,
                out: PathBuf::new(),
                bin,
                rate,
                settle_s: settle,
                keep_data,
            };
            opts.out = out.unwrap_or_else(|| {
                let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                PathBuf::from(format!(
                    "target/jepsen-lite/{stamp}-seed{seed}-{nodes}n-{}",
                    opts.nemesis_arg().replace(',', "+")
                ))
            });
            runner::run_test(&opts)
        }
        Cmd::Bench { workloads, out, bin, samples, big_mib, many, commit_secs, keep_data } => {
            let benchmarks = Benchmark::parse_list(&workloads).map_err(anyhow::Error::msg)?;
            if bin.is_none() && std::env::var_os("RAFTSHARE_BIN").is_none() {
                runner::build_bin_under_cargo()?;
            }
            let out = out.unwrap_or_else(|| {
                let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                PathBuf::from(format!("target/jepsen-lite/bench-{stamp}"))
            });
            bench::run_bench(&BenchOptions {
                benchmarks,
                out,
                bin: runner::find_bin(bin)?,
                samples: samples as usize,
                big_mib,
                many: many as usize,
                commit_secs,
                keep_data,
            })
        }
        Cmd::Check { out } => runner::check_saved(&out, 0),
        Cmd::Plan { nodes, time, nemesis, seed, rate } => {
            let nemeses = NemesisKind::parse_list(&nemesis).map_err(anyhow::Error::msg)?;
            let opts = TestOptions {
                nodes: nodes as usize,
                time_s: time,
                nemeses,
                seed,
                out: PathBuf::new(),
                bin: PathBuf::new(),
                rate,
                settle_s: 0,
                keep_data: false,
            };
            println!("{}", serde_json::to_string_pretty(&opts.plan())?);
            Ok(true)
        }
    }
}
