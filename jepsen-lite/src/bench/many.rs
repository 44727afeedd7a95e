//! The `many` workload: a large tree of small files (`--many`), the memory each file costs
//! a node, and how soon a restarted node holding them all is back in step.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use super::bed::{committed, Bed};
use super::clock::{parse_rfc3339_ms, unix_ms};
use super::file_sets::{per_node, slowest, stage_files, sync_set, Place};
use super::machine::{cpu_delta, cpu_seconds, idle_cpu, rss};
use super::{round1, round3, BenchOptions, Figures};
use crate::cluster::{LISTING, START};

pub(super) fn run(opts: &BenchOptions) -> Result<Figures> {
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
