//! The `burst` workload: a thousand small files put and then deleted at once, first as
//! loose files at the top of the folder, then as one folder.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::bed::{committed, Bed};
use super::file_sets::{per_node, remove_set, slowest, stage_files, sync_set, Place};
use super::machine::{cpu_delta, cpu_seconds, idle_cpu};
use super::{round1, round3, BenchOptions, Figures};

pub(super) fn run(opts: &BenchOptions) -> Result<Figures> {
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
