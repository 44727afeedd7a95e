//! The node's request service: every request a peer or the CLI sends, checked against
//! who sent it (`authorize`), then routed to the part of the node that answers it. Raft
//! RPCs go to openraft, blocks to the block server, admin requests to the node's own
//! handlers.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::proto::{Request, Response, MAX_BLOCKS_PER_REQUEST};
use raftshare_raft::transport::{Peer, Service};
use raftshare_raft::NodeId;
use tracing::{debug, warn};

use super::authorize::{may_ask, Caller};
use super::state::Node;
use crate::sync::blocks::serve::{serve_block, serve_blocks};

/// Longest an `Events` request waits for something new.
pub(super) const MAX_EVENT_WAIT_MS: u64 = 30_000;

/// Most log entries one `log` request returns.
pub(super) const MAX_LOG_PAGE: u64 = 10_000;

pub(super) struct NodeService(pub(super) Arc<Node>);

impl Service for NodeService {
    async fn handle(&self, peer: Peer, req: Request) -> Response {
        let node = &self.0;
        if node.fault_hook && peer.node_id.is_some_and(|id| node.isolated.lock().expect("isolated lock").contains(&id))
        {
            // A partition drops packets: the caller hears nothing and times out.
            return std::future::pending().await;
        }
        let mut caller = node.caller(&peer);
        let view = node.view();
        let raft_rpc = matches!(req, Request::AppendEntries(_) | Request::Vote(_) | Request::InstallSnapshot(_));
        if let (
            Caller::Outsider(None),
            Some(identity),
            Request::Admin(AdminRequest::AddMember { id, node: joiner, .. }),
        ) = (caller, peer.identity, &req)
        {
            // A computer joining asks to be added with the identity it proved here, and
            // under no other: it is taken for the node it asks to add, and nothing more.
            if joiner.identity == hex::encode(identity) {
                caller = Caller::Outsider(Some(*id));
            }
        }
        if let (Caller::Outsider(None), Some(identity)) = (caller, peer.identity) {
            // A member this node does not know yet (it was away when that one joined).
            if raft_rpc && view.in_a_cluster {
                if let Some(id) = node.vouched_for(identity).await.filter(|id| *id != node.id) {
                    caller = Caller::Member(id);
                }
            }
        }
        if let Err(why) = may_ask(caller, view, &req) {
            debug!(peer = ?peer.addr, ?caller, "request refused: {why}");
            return Response::Error(why);
        }
        match req {
            Request::AppendEntries(rpc) => Response::AppendEntries(node.raft.append_entries(rpc).await),
            Request::Vote(rpc) => Response::Vote(node.raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => Response::InstallSnapshot(node.raft.install_snapshot(rpc).await),
            Request::Admin(req) => match node.admin(req).await {
                Ok(resp) => Response::Admin(resp),
                Err(e) => Response::Error(format!("{e:#}")),
            },
            Request::FetchKey => node.sealed_key_for(peer),
            Request::Block(req) => {
                let sync = node.sync.clone();
                match tokio::task::spawn_blocking(move || serve_block(&sync, &req)).await {
                    Ok(result) => Response::Block(result.map(serde_bytes::ByteBuf::from)),
                    Err(e) => Response::Error(format!("cannot read the block: {e}")),
                }
            }
            Request::Blocks(reqs) if reqs.len() > MAX_BLOCKS_PER_REQUEST => Response::Error(format!(
                "{} blocks asked for at once; at most {MAX_BLOCKS_PER_REQUEST} are served",
                reqs.len()
            )),
            Request::Blocks(reqs) => {
                let sync = node.sync.clone();
                match tokio::task::spawn_blocking(move || serve_blocks(&sync, &reqs)).await {
                    Ok(results) => {
                        Response::Blocks(results.into_iter().map(|r| r.map(serde_bytes::ByteBuf::from)).collect())
                    }
                    Err(e) => Response::Error(format!("cannot read the blocks: {e}")),
                }
            }
        }
    }
}

impl Node {
    pub(super) async fn admin(&self, req: AdminRequest) -> Result<AdminResponse> {
        match req {
            AdminRequest::Ping => Ok(AdminResponse::Pong(self.progress())),
            AdminRequest::Status => Ok(AdminResponse::Status(Box::new(self.status()))),
            AdminRequest::Log { from, limit } => Ok(AdminResponse::Log(self.log_page(from, limit))),
            AdminRequest::Bootstrap => self.bootstrap().await,
            AdminRequest::JoinCluster { peer, learner } => self.join_cluster(&peer, learner).await,
            AdminRequest::Leave => {
                let req = AdminRequest::RemoveMember { id: self.id, hops: 0 };
                let done = self.on_leader(req).await.context("cannot leave the cluster")?;
                // Out of the cluster: stop taking part (no elections that would disturb
                // it), and remember it across restarts. The folder stays as it is.
                std::fs::write(&self.left_marker, b"this node left its cluster\n").with_context(|| {
                    format!("left the cluster, but cannot record it in {}", self.left_marker.display())
                })?;
                self.left.store(true, Ordering::Relaxed);
                let _ = self.raft.shutdown().await;
                warn!("this node left its cluster: it no longer receives or sends changes");
                Ok(done)
            }
            AdminRequest::Propose { change, hops } => self.propose(change, hops).await,
            AdminRequest::Ls => Ok(AdminResponse::Files(self.sm.files())),
            AdminRequest::Events { after, wait_ms } => {
                let wait = Duration::from_millis(wait_ms.min(MAX_EVENT_WAIT_MS));
                Ok(AdminResponse::Events(self.sync.events.wait_since(after, wait).await))
            }
            AdminRequest::Transfers => Ok(AdminResponse::Transfers(self.sync.transfers.list())),
            AdminRequest::Partition { isolate } => self.partition(isolate),
            AdminRequest::GetConfig => self.config_report(),
            AdminRequest::SetConfig(change) => self.set_config(change).await,
            AdminRequest::Pending => Ok(AdminResponse::Pending(self.pending_report())),
            AdminRequest::SetMemberInfo { id, node, hops } => self.set_member_info(id, node, hops).await,
            AdminRequest::RotateKey { hops } => self.rotate_key(hops).await,
            req @ (AdminRequest::AddMember { .. }
            | AdminRequest::Promote { .. }
            | AdminRequest::RemoveMember { .. }) => self.on_leader(req).await,
        }
    }

    /// The fault hook: cut this node off from `isolate` (both directions), or heal.
    pub(super) fn partition(&self, isolate: Vec<NodeId>) -> Result<AdminResponse> {
        if !self.fault_hook {
            anyhow::bail!(
                "fault injection is off: it exists only for tests, on a node started with `run --fault-hook`"
            );
        }
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        let addrs: HashSet<String> =
            isolate.iter().filter_map(|id| membership.get_node(id)).map(|n| n.addr.clone()).collect();
        *self.isolated.lock().expect("isolated lock") = isolate.iter().copied().collect();
        self.pool.cut_off(addrs);
        warn!(?isolate, "fault hook: traffic to and from these members is dropped");
        Ok(AdminResponse::Done(if isolate.is_empty() { "healed".into() } else { format!("isolated from {isolate:?}") }))
    }

    pub(super) fn log_page(&self, from: Option<u64>, limit: Option<u64>) -> Vec<raftshare_raft::Entry> {
        let first = self.log.first_index().unwrap_or(0);
        let from = from.unwrap_or(first).max(first);
        let limit = limit.unwrap_or(MAX_LOG_PAGE).min(MAX_LOG_PAGE);
        self.log.entries(from..from.saturating_add(limit))
    }
}
