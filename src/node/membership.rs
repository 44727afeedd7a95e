//! Changing the membership: bootstrap a cluster, join one, and on the leader add,
//! promote and remove members (refusing a removal that would stall the cluster).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use openraft::ChangeMembers;
use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::proto::{Request, Response};
use raftshare_raft::NodeId;
use tracing::info;

use super::leader::{write_error, MEMBERSHIP_TIMEOUT};
use super::peers::PING_TIMEOUT;
use super::state::{Node, PeerSeen};

impl Node {
    pub(super) async fn change_membership(&self, req: AdminRequest) -> Result<AdminResponse> {
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let is_member = |id: &NodeId| membership.get_node(id).is_some();
        match req {
            AdminRequest::AddMember { id, node, learner, .. } => {
                if let Some((other, _)) = membership.nodes().find(|(other, n)| **other != id && n.addr == node.addr) {
                    anyhow::bail!(
                        "address {} already belongs to member {other}; if that computer was wiped, run `raftshare remove {other}` first",
                        node.addr
                    );
                }
                let already_voter = voters.contains(&id);
                if !is_member(&id) {
                    info!(id, node = %node, "adding learner");
                    self.raft.add_learner(id, node.clone(), true).await.map_err(write_error)?;
                }
                if !learner && !already_voter {
                    info!(id, "promoting to voter");
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await
                        .map_err(write_error)?;
                }
                let role = if learner && !already_voter { "learner" } else { "voter" };
                Ok(AdminResponse::Done(format!("{} ({id}) is a {role} of the cluster", node.name)))
            }
            AdminRequest::Promote { id, .. } => {
                if !is_member(&id) {
                    anyhow::bail!("node {id} is not a member: `raftshare status` lists the members");
                }
                if !voters.contains(&id) {
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await
                        .map_err(write_error)?;
                }
                Ok(AdminResponse::Done(format!("node {id} is a voter")))
            }
            AdminRequest::RemoveMember { id, .. } => {
                if !is_member(&id) {
                    anyhow::bail!("node {id} is not a member: `raftshare status` lists the members");
                }
                let change = if voters.contains(&id) {
                    if voters.len() == 1 {
                        anyhow::bail!("node {id} is the last voter: a cluster cannot remove its last voter");
                    }
                    // The change commits only once a majority of the voters left agrees:
                    // with too few of them online it would hold up every change until
                    // they came back.
                    let left: Vec<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
                    let offline: Vec<NodeId> = {
                        let peers = self.peers.lock().expect("peer table lock");
                        left.iter()
                            .copied()
                            .filter(|v| *v != self.id && !peers.get(v).is_some_and(PeerSeen::online))
                            .collect()
                    };
                    if (left.len() - offline.len()) * 2 <= left.len() {
                        let names: Vec<String> =
                            offline.iter().map(|v| format!("{} ({v})", self.member_name(*v))).collect();
                        anyhow::bail!(
                            "removing node {id} now would stall the cluster: of the {} voters left, {} are offline ({}), \
                             and nothing commits without a majority of them; bring them back first, or remove an offline one",
                            left.len(),
                            offline.len(),
                            names.join(", ")
                        );
                    }
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                info!(id, "removing member");
                self.raft.change_membership(change, false).await.map_err(write_error)?;
                Ok(AdminResponse::Done(format!("node {id} was removed from the cluster")))
            }
            other => anyhow::bail!("not a membership request: {other:?}"),
        }
    }

    pub(super) async fn bootstrap(&self) -> Result<AdminResponse> {
        if self.raft.is_initialized().await? {
            let status = self.status();
            anyhow::bail!(
                "this node is already part of a cluster ({} members, term {}): `bootstrap` only starts a new cluster; \
                 to move this computer to another cluster, stop it, remove its data dir and `init` again",
                status.members.len(),
                status.term
            );
        }
        let members = BTreeMap::from([(self.id, self.info.clone())]);
        self.raft.initialize(members).await.context("cannot bootstrap")?;
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .current_leader(self.id, "bootstrap")
            .await
            .context("bootstrapped, but this node did not become leader within 10 s")?;
        Ok(AdminResponse::Done(format!(
            "cluster {} started with {} ({}) as its only member: run `raftshare invite` to add another computer",
            self.keys.cluster_id(),
            self.info.name,
            self.id
        )))
    }

    pub(super) async fn join_cluster(&self, peer: &str, learner: bool) -> Result<AdminResponse> {
        if self.raft.is_initialized().await? {
            anyhow::bail!(
                "this node is already part of a cluster: to move it to another one, stop it, remove its data dir and `init` again"
            );
        }
        // This node's own address (in any of its forms) would only ask itself.
        if let Ok(Response::Admin(AdminResponse::Pong(progress))) =
            self.pool.call(peer, Request::Admin(AdminRequest::Ping), PING_TIMEOUT).await
        {
            if progress.node_id == self.id {
                anyhow::bail!("{peer} is this node itself: give the address of a computer already in the cluster");
            }
        }
        let req = AdminRequest::AddMember { id: self.id, node: self.info.clone(), learner, hops: 0 };
        match self.pool.call(peer, Request::Admin(req), MEMBERSHIP_TIMEOUT).await {
            Ok(Response::Admin(AdminResponse::Done(msg))) => {
                self.raft
                    .wait(Some(Duration::from_secs(30)))
                    .metrics(|m| m.membership_config.membership().get_node(&self.id).is_some(), "join")
                    .await
                    .context("the cluster accepted this node, but its membership did not arrive within 30 s")?;
                Ok(AdminResponse::Done(format!("joined the cluster through {peer}: {msg}")))
            }
            Ok(Response::Error(e)) => anyhow::bail!("{peer} refused the join: {e}"),
            Ok(other) => anyhow::bail!("{peer} gave an unexpected answer: {other:?}"),
            Err(e) => anyhow::bail!("cannot join through {peer}: {e}"),
        }
    }
}
