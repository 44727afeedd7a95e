//! `status`: what this node knows of itself, its log and every member.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use openraft::ServerState;
use raftshare_raft::admin::{MemberStatus, StatusReport};
use raftshare_raft::NodeId;

use super::state::Node;

impl Node {
    pub(super) fn status(&self) -> StatusReport {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let in_cluster = membership.get_node(&self.id).is_some();
        let role = match m.state {
            _ if self.left.load(Ordering::Relaxed) => "removed",
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Shutdown => "shutdown",
            _ if membership.nodes().next().is_none() => "uninitialized",
            _ if !in_cluster || self.left.load(Ordering::Relaxed) => "removed",
            _ if voters.contains(&self.id) => "follower",
            _ => "learner",
        };
        let peers = self.peers.lock().expect("peer table lock").clone();
        // From the store, not the metrics: the two are read at different moments, and
        // `first_log_index` must never pass `last_log_index + 1`.
        let bounds = self.log.bounds();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let seen = peers.get(id);
                let matched_index = if *id == self.id {
                    m.last_log_index
                } else if let Some(replication) = &m.replication {
                    replication.get(id).copied().flatten().map(|l| l.index)
                } else {
                    seen.and_then(|s| s.progress.last_log_index)
                };
                MemberStatus {
                    id: *id,
                    name: node.name.clone(),
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    online: *id == self.id || seen.is_some_and(|s| s.online()),
                    matched_index,
                    last_seen_ms: if *id == self.id {
                        Some(0)
                    } else {
                        seen.map(|s| s.at.elapsed().as_millis() as u64)
                    },
                    identity: node.identity.clone(),
                }
            })
            .collect();
        StatusReport {
            node_id: self.id,
            name: self.info.name.clone(),
            addr: self.info.addr.clone(),
            cluster_id: self.keys.cluster_id(),
            role: role.to_string(),
            leader_id: m.current_leader,
            leader_addr: m.current_leader.and_then(|id| membership.get_node(&id)).map(|n| n.addr.clone()),
            term: m.current_term,
            last_log_index: bounds.map(|(_, last)| last),
            committed_index: self.log.committed().map(|l| l.index),
            applied_index: m.last_applied.map(|l| l.index),
            first_log_index: bounds.map(|(first, _)| first),
            snapshot_index: m.snapshot.map(|l| l.index),
            db_size_bytes: self.store.size_on_disk(),
            log_size_bytes: self.log.size_bytes(),
            pending_outbox: self.sync.outbox.len() as u64,
            pending_downloads: self.sync.stats.pending_downloads.load(Ordering::Relaxed),
            bytes_sent: self.sync.stats.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.sync.stats.bytes_received.load(Ordering::Relaxed),
            folder_problem: self.sync.problem(),
            unreadable: self.sync.unreadable.list(),
            cannot_hold: self.sync.cannot_hold.list(),
            members,
        }
    }
}
