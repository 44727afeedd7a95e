//! The `commit` workload: every node writes small files at rising rates, and the leader's
//! log tells how many entries and file ops were committed per second.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use super::bed::{committed, Bed};
use super::{round1, round3, BenchOptions, Figures, NODES, SEED};
use crate::cluster::{Node, LISTING};
use crate::rng;

/// One phase of the commit workload: every node writes small files at `per_node_rate`
/// files/s (None: as fast as it can) for the phase's seconds.
struct Phase {
    name: &'static str,
    per_node_rate: Option<f64>,
}

pub(super) fn run(opts: &BenchOptions) -> Result<Figures> {
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
