//! The tombstone collector: on the leader, once every member has applied deletes to its
//! disk, a `ForgetDeleted` is committed so tombstones do not pile up for years.

use std::sync::Arc;
use std::time::Duration;

use raftshare_raft::{Change, FileOp};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::leader::Leader;
use super::state::Node;

/// How often the leader checks whether tombstones can be forgotten.
pub(super) const TOMBSTONE_GC_EVERY: Duration = Duration::from_secs(5);

impl Node {
    /// On the leader: once every member has applied deletes to its disk, commit a
    /// `ForgetDeleted` so their tombstones do not pile up for years. A member that never
    /// answered, or is offline, holds it back (its last known watermark is used).
    pub(super) async fn forget_tombstones(self: Arc<Self>, shutdown: CancellationToken) {
        // Counting from the last forget applied here, not from 0: a new leader of a big
        // table would read every record to count the tombstones.
        let mut forgotten_upto: Option<u64> = self.sm.forgotten_upto();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TOMBSTONE_GC_EVERY) => {}
            }
            if !matches!(self.leader(), Leader::Me) {
                continue;
            }
            let Some(upto) = self.everyone_materialized() else { continue };
            if forgotten_upto.is_some_and(|f| f >= upto) || self.sm.tombstones_between(forgotten_upto, upto) == 0 {
                forgotten_upto = forgotten_upto.max(Some(upto));
                continue;
            }
            let change = Change {
                origin: self.id,
                origin_name: self.info.name.clone(),
                at_ms: crate::clock::now_ms(),
                op: FileOp::ForgetDeleted { upto },
                seqs: vec![],
            };
            match self.raft.client_write(change).await {
                Ok(resp) => {
                    info!(upto, index = resp.log_id.index, outcome = ?resp.data.outcomes, "forgot tombstones every member has applied");
                    forgotten_upto = Some(upto);
                }
                Err(e) => debug!("cannot forget tombstones now: {e}"),
            }
        }
    }

    /// The lowest applier watermark over every member, if every member has reported one.
    pub(super) fn everyone_materialized(&self) -> Option<u64> {
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        let peers = self.peers.lock().expect("peer table lock");
        let mut lowest = self.sync.local.materialized()?;
        for (id, _) in membership.nodes() {
            if *id != self.id {
                lowest = lowest.min(peers.get(id)?.progress.materialized_index?);
            }
        }
        Some(lowest)
    }
}
