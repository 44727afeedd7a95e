//! The sampler: reads the nodes' folders over and over during the run, under each node's
//! folder lock (so never in the middle of a workload write), and records every file
//! whose (path, content) the workload had not written by then. The checker then decides
//! whether the committed log explains it (a conflict copy, a half-written in-place edit
//! that was committed) or it is a temp or partial file that should never be seen.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::history::{History, Record, Sample};
use crate::tree;
use crate::workload::Written;

/// Sample until `stop`; records the totals at the end.
pub fn run(cluster: &Cluster, history: &History, written: &Written, stop: &AtomicBool) {
    let (mut folders, mut files) = (0u64, 0u64);
    // Each unknown (node, path, content) is recorded the first time it is seen.
    let mut recorded: HashSet<(String, String, String)> = HashSet::new();
    while !stop.load(Ordering::SeqCst) {
        let nodes = cluster.live();
        // About one look at each folder a second.
        let pause = Duration::from_millis((1000 / nodes.len().max(1) as u64).max(100));
        for node in nodes {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let seen = {
                let _guard = node.folder_lock.lock().unwrap_or_else(|p| p.into_inner());
                tree::tree_of(&node.shared_dir)
            };
            folders += 1;
            files += seen.len() as u64;
            let t_ms = history.t_ms();
            let known = written.lock().unwrap_or_else(|p| p.into_inner());
            let unknown: Vec<_> =
                seen.into_iter().filter(|(path, s)| !known.contains(&(path.clone(), s.hash.clone()))).collect();
            drop(known);
            for (path, s) in unknown {
                if !recorded.insert((node.name.clone(), path.clone(), s.hash.clone())) {
                    continue;
                }
                history.record(&Record::Sample(Sample {
                    t_ms,
                    node: node.name.clone(),
                    path,
                    size: s.size,
                    hash: s.hash,
                }));
            }
            thread::sleep(pause);
        }
    }
    history.record(&Record::SampleStats { folders, files });
}
