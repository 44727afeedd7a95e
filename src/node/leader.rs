//! Sending a request to the leader: one route for every caller. A request only the
//! leader carries out is done here when this node leads, or sent on to the leader with
//! one more hop (a request that went round too many nodes stops), or answered with why
//! it cannot go anywhere now.

use std::time::Duration;

use anyhow::Result;
use futures::future::BoxFuture;
use openraft::error::{ClientWriteError, RaftError};
use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::proto::{Request, Response};
use raftshare_raft::{ApplyResult, Change, FileOp, NodeId, NodeInfo};

use super::state::{Node, NOT_IN_A_CLUSTER};

use crate::sync::error::CommitError;
use crate::sync::proposer::Committer;

/// Forwarding to the leader may hop once more if leadership moved meanwhile.
pub(super) const MAX_HOPS: u8 = 3;

/// A proposal that does not commit in this time is retried (it may still commit: the
/// conflict rule makes a repeated proposal harmless).
pub(super) const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A membership change can wait for a learner to catch up: give it time.
pub(super) const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the leader is, as this node knows it.
pub(super) enum Leader {
    Me,
    Peer(String),
    Unknown,
}

/// Where a request for the leader was carried: here (this node leads: the request is
/// handed back, for the caller to carry out), or the leader's answer.
pub(super) enum Routed {
    Here(AdminRequest),
    There(AdminResponse),
}

impl Node {
    pub(super) fn leader(&self) -> Leader {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(id) if id == self.id => Leader::Me,
            Some(id) => match m.membership_config.membership().get_node(&id) {
                Some(node) => Leader::Peer(node.addr.clone()),
                None => Leader::Unknown,
            },
            None => Leader::Unknown,
        }
    }

    /// The one route for a request only the leader carries out: handed back if this
    /// node leads, else sent on to the leader with one more hop and its answer returned,
    /// else why it cannot go anywhere now.
    pub(super) async fn to_leader(&self, req: AdminRequest) -> Result<Routed> {
        let addr = match self.leader() {
            Leader::Me => return Ok(Routed::Here(req)),
            Leader::Peer(addr) => addr,
            Leader::Unknown => return Err(self.no_leader().await),
        };
        let timeout = if matches!(req, AdminRequest::Propose { .. }) { PROPOSE_TIMEOUT } else { MEMBERSHIP_TIMEOUT };
        match self.pool.call(&addr, Request::Admin(next_hop(req)?), timeout).await {
            Ok(Response::Admin(resp)) => Ok(Routed::There(resp)),
            Ok(Response::Error(e)) => Err(anyhow::anyhow!(e)),
            Ok(other) => anyhow::bail!("the leader at {addr} gave an unexpected answer: {other:?}"),
            Err(e) => Err(anyhow::anyhow!("cannot reach the leader at {addr}: {e}")),
        }
    }

    /// Run a membership request here if this node leads, else on the leader.
    pub(super) async fn on_leader(&self, req: AdminRequest) -> Result<AdminResponse> {
        match self.to_leader(req).await? {
            Routed::Here(req) => self.change_membership(req).await,
            Routed::There(resp) => Ok(resp),
        }
    }

    /// Why a request for the leader cannot go anywhere now: this node is in no cluster
    /// yet, or no leader is known.
    pub(super) async fn no_leader(&self) -> anyhow::Error {
        match self.raft.is_initialized().await {
            Ok(true) => anyhow::anyhow!("no leader is known right now (an election may be running, or too few members are online): try again in a few seconds"),
            Ok(false) => anyhow::anyhow!(NOT_IN_A_CLUSTER),
            Err(e) => e.into(),
        }
    }

    /// Commit `change` through the leader: here if this node leads, else on the leader.
    /// A key rotation is refused: it is made only by the leader's own `rotate-key`.
    pub(super) async fn propose(&self, change: Change, hops: u8) -> Result<AdminResponse> {
        if carries_rotation(&change) {
            anyhow::bail!(
                "a key rotation is not taken as a proposal: the leader makes it itself (`raftshare rotate-key`)"
            );
        }
        match self.to_leader(AdminRequest::Propose { change, hops }).await? {
            Routed::Here(AdminRequest::Propose { change, .. }) => self.write_here(change).await,
            Routed::Here(other) => anyhow::bail!("not a proposal: {other:?}"),
            Routed::There(resp) => Ok(resp),
        }
    }

    /// Append `change` to the log on this node, which leads (else openraft refuses it).
    pub(super) async fn write_here(&self, change: Change) -> Result<AdminResponse> {
        match self.raft.client_write(change).await {
            Ok(resp) => Ok(AdminResponse::Committed { index: resp.log_id.index, result: resp.data }),
            Err(e) => Err(write_error(e)),
        }
    }
}

/// Whether `change` holds a key rotation anywhere (batches looked into).
pub(super) fn carries_rotation(change: &Change) -> bool {
    change.op.leaves().iter().any(|op| matches!(op, FileOp::RotateKey(_)))
}

/// `req` as sent on to the leader: one hop further, or refused once it went round
/// `MAX_HOPS` nodes (leadership moving while it travels).
fn next_hop(req: AdminRequest) -> Result<AdminRequest> {
    let bump = |hops: u8| {
        if hops >= MAX_HOPS {
            anyhow::bail!("the request went round {hops} nodes without finding the leader: try again in a few seconds")
        }
        Ok(hops + 1)
    };
    Ok(match req {
        AdminRequest::AddMember { id, node, learner, hops } => {
            AdminRequest::AddMember { id, node, learner, hops: bump(hops)? }
        }
        AdminRequest::Promote { id, hops } => AdminRequest::Promote { id, hops: bump(hops)? },
        AdminRequest::RemoveMember { id, hops } => AdminRequest::RemoveMember { id, hops: bump(hops)? },
        AdminRequest::Propose { change, hops } => AdminRequest::Propose { change, hops: bump(hops)? },
        AdminRequest::SetMemberInfo { id, node, hops } => AdminRequest::SetMemberInfo { id, node, hops: bump(hops)? },
        AdminRequest::RotateKey { hops } => AdminRequest::RotateKey { hops: bump(hops)? },
        other => other,
    })
}

/// A failed Raft write, said for people.
pub(super) fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> anyhow::Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => anyhow::anyhow!(
            "leadership moved to {} while the change was made: try again",
            f.leader_node.map(|n| n.to_string()).unwrap_or_else(|| "another node".into())
        ),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            anyhow::anyhow!("membership change refused: {c}")
        }
        RaftError::Fatal(f) => anyhow::anyhow!("raft stopped: {f}"),
    }
}

/// The proposer's way to the log: a proposal through the leader.
impl Committer for Node {
    fn commit(&self, change: Change) -> BoxFuture<'_, Result<(u64, ApplyResult), CommitError>> {
        Box::pin(async move {
            match self.propose(change, 0).await {
                Ok(AdminResponse::Committed { index, result }) => Ok((index, result)),
                Ok(other) => Err(CommitError { why: format!("the leader answered a proposal with {other:?}") }),
                Err(e) => Err(CommitError { why: format!("{e:#}") }),
            }
        })
    }
}
