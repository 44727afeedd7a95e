//! The `big` workload: one large file (`--big-mib`), timed against the limit of this disk
//! (the same bytes copied twice with fsync).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::bed::{committed, Bed};
use super::file_sets::{per_node, slowest};
use super::machine::{cpu_delta, cpu_seconds};
use super::{round1, round3, BenchOptions, Figures, SEED};
use crate::rng::Rng;

pub(super) fn run(opts: &BenchOptions) -> Result<Figures> {
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
