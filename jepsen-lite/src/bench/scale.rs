//! The `scale` workload: the same folder of files at two sizes, to see whether the time
//! grows linearly with the number of files.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::bed::{committed, Bed};
use super::file_sets::{per_node, slowest, stage_files, sync_set, Place};
use super::machine::{cpu_delta, cpu_seconds, idle_cpu};
use super::{round3, BenchOptions, Figures};

pub(super) fn run(opts: &BenchOptions) -> Result<Figures> {
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
