//! The test bed: a fresh cluster per workload under `OUT/<name>/`, stopped and cleaned up
//! whatever happens, and the leader's commit index that workloads read before and after.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::{BenchOptions, NODES};
use crate::cluster::{Cluster, Node};
use crate::history::History;

/// A running cluster under `OUT/<name>/`; dropping it stops every node (SIGTERM, bounded,
/// then the cluster's own kill-on-drop) and removes the nodes' folders unless kept.
pub(super) struct Bed {
    cluster: Option<Cluster>,
    pub(super) nodes: Vec<Arc<Node>>,
    pub(super) root: PathBuf,
    keep_data: bool,
}

impl Bed {
    pub(super) fn start(opts: &BenchOptions, name: &str) -> Result<Bed> {
        let root = opts.out.join(name);
        if root.join("nodes").exists() {
            bail!("{} already holds a run: choose another --out", root.display());
        }
        fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let history = Arc::new(History::create(&root.join("history.jsonl"), false)?);
        eprintln!("bench: {name}: starting {NODES} nodes under {}", root.display());
        let cluster = Cluster::start(&opts.bin, &root.join("nodes"), NODES, history)
            .with_context(|| format!("the {name} cluster could not be set up (node logs under {})", root.display()))?;
        let nodes = cluster.slots();
        let bed = Bed { cluster: Some(cluster), nodes, root, keep_data: opts.keep_data };
        // Let the new cluster's own traffic (joins, first pings) die down.
        thread::sleep(Duration::from_secs(1));
        Ok(bed)
    }

    fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("the cluster lives as long as the bed")
    }

    pub(super) fn leader(&self) -> Result<Arc<Node>> {
        self.cluster().leader(Duration::from_secs(15)).ok_or_else(|| anyhow!("no leader within 15 s"))
    }

    /// The other nodes than `writer`.
    pub(super) fn others(&self, writer: &Node) -> Vec<Arc<Node>> {
        self.nodes.iter().filter(|n| n.id != writer.id).cloned().collect()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            cluster.shutdown();
        }
        if !self.keep_data {
            let mut left = LEFT_BEHIND.lock().unwrap_or_else(|p| p.into_inner());
            for node in &self.nodes {
                left.extend([&node.data_dir, &node.shared_dir, &node.staging_dir].map(|d| d.to_path_buf()));
            }
            left.push(self.root.join("cp"));
        }
    }
}

/// The folders of finished workloads, removed once every workload ran: on ext4 without
/// a journal, creating a file where many were deleted in the last minutes is several
/// times slower (the kernel skips recently freed inodes one by one), so removing one
/// workload's 300,000 files right away would slow the next workload down.
static LEFT_BEHIND: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes the folders left behind when the benchmark ends, however it ends.
pub(super) struct RemoveLeftBehind;

impl Drop for RemoveLeftBehind {
    fn drop(&mut self) {
        let left = std::mem::take(&mut *LEFT_BEHIND.lock().unwrap_or_else(|p| p.into_inner()));
        for dir in left {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// The leader's committed index now.
pub(super) fn committed(bed: &Bed) -> Result<u64> {
    let leader = bed.leader()?;
    leader
        .status()
        .and_then(|s| s["committed_index"].as_u64())
        .ok_or_else(|| anyhow!("{} (the leader) does not tell its committed index", leader.name))
}
