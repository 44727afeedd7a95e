//! The `latency` workload: one small file at a time, written on each node in turn, timed
//! until every other node holds it; and the percentiles of those times.

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::bed::Bed;
use super::{round3, BenchOptions, Figures, SEED};
use crate::rng;

pub(super) fn run(opts: &BenchOptions) -> Result<Figures> {
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
    fn stats_sort_their_samples() {
        let s = Stats::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.n, s.p50, s.p99, s.max, s.min, s.mean), (4, 2.0, 10.0, 10.0, 1.0, 4.0));
        assert_eq!(Stats::of(&[]).n, 0);
    }
}
