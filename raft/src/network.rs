//! openraft's network over the transport: each Raft RPC is one `Request` on the pooled
//! connection to the target's address; and [`RaftMembers`], the transport's member
//! directory read from the Raft membership.
//!
//! Errors are sorted the way openraft reacts to them: a peer that cannot be reached or
//! authenticated is `Unreachable` (openraft backs off before retrying), the peer's own
//! `RaftError` is a `RemoteError`, anything else is a `Network` error.

use std::error::Error;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use crate::proto::{Request, Response};
use crate::transport::{members, ConnectionPool, MemberDirectory, TransportError};
use crate::types::{NodeId, NodeInfo, Raft, TypeConfig};

/// The transport's [`MemberDirectory`] read from a Raft node's membership (voters and
/// learners, as its metrics show them), so who a peer is follows every membership change
/// at once. Empty until [`RaftMembers::follow`] (the transport is made before Raft).
#[derive(Debug, Default)]
pub struct RaftMembers(std::sync::OnceLock<tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, NodeInfo>>>);

impl RaftMembers {
    /// Reads the membership of `raft` from now on; the first call wins.
    pub fn follow(&self, raft: &Raft) {
        let _ = self.0.set(raft.metrics());
    }

    fn lookup<T>(
        &self,
        look: impl FnOnce(&mut dyn Iterator<Item = (NodeId, &str, Option<[u8; 32]>)>) -> T,
    ) -> Option<T> {
        let metrics = self.0.get()?.borrow();
        let mut nodes = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.addr.as_str(), identity_of(node)));
        Some(look(&mut nodes))
    }
}

/// The public identity key a member's `NodeInfo` lists (`None`: none, or not hex).
pub fn identity_of(node: &NodeInfo) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(&node.identity, &mut key).ok().map(|()| key)
}

impl MemberDirectory for RaftMembers {
    fn node_of(&self, identity: &[u8; 32]) -> Option<NodeId> {
        self.lookup(|nodes| members::node_of(nodes, identity)).flatten()
    }

    fn identity_at(&self, addr: &str) -> Option<[u8; 32]> {
        self.lookup(|nodes| members::identity_at(nodes, addr)).flatten()
    }

    fn is_member_ip(&self, ip: std::net::IpAddr) -> bool {
        self.lookup(|nodes| members::is_member_ip(nodes, ip)).unwrap_or(false)
    }
}

/// openraft's `RaftNetworkFactory`: hands out per-target clients sharing one connection pool.
#[derive(Debug, Clone)]
pub struct Network {
    pool: ConnectionPool,
}

impl Network {
    /// A factory whose clients send through `pool`.
    pub fn new(pool: ConnectionPool) -> Self {
        Network { pool }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = NetworkConnection;

    // Never dials: openraft cannot handle a failure here, so the first RPC dials (and
    // every RPC after a broken connection redials, through the pool).
    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> NetworkConnection {
        NetworkConnection { pool: self.pool.clone(), target, node: node.clone() }
    }
}

/// openraft's `RaftNetwork` to one target node.
#[derive(Debug, Clone)]
pub struct NetworkConnection {
    pool: ConnectionPool,
    target: NodeId,
    node: NodeInfo,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>;

impl NetworkConnection {
    /// Sends one request and returns the answer, or the error sorted for openraft.
    async fn send<E: Error>(
        &self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>> {
        // openraft drops the RPC at `hard_ttl`; stopping at `soft_ttl` lets our error,
        // which says what went wrong, reach it first.
        let timeout = option.soft_ttl();
        match self.pool.call_node(&self.node.addr, Some(self.target), req, timeout).await {
            Ok(Response::Error(message)) => {
                let addr = self.node.addr.clone();
                Err(network_error(&TransportError::Remote { addr, message }))
            }
            Ok(response) => Ok(response),
            Err(e) if e.is_unreachable() => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(network_error(&e)),
        }
    }

    fn remote<E: Error>(&self, e: RaftError<NodeId, E>) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e))
    }

    fn unexpected<E: Error>(&self, what: &str, got: &Response) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
        let addr = self.node.addr.clone();
        let message = format!("expected {what}, got {}", response_kind(got));
        network_error(&TransportError::Remote { addr, message })
    }
}

fn network_error<E: Error>(e: &TransportError) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(e))
}

fn response_kind(response: &Response) -> &'static str {
    match response {
        Response::AppendEntries(_) => "an AppendEntries answer",
        Response::Vote(_) => "a Vote answer",
        Response::InstallSnapshot(_) => "an InstallSnapshot answer",
        Response::Admin(_) => "an admin answer",
        Response::Block(_) => "a block",
        Response::Blocks(_) => "blocks",
        Response::Error(_) => "an error",
        Response::KeyRotated => "\"the cluster key was rotated\" (this node's key is a replaced one)",
        Response::SealedKey { .. } => "a sealed key",
    }
}

impl RaftNetwork<TypeConfig> for NetworkConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self.send(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.unexpected("an AppendEntries answer", &other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.send(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.unexpected("an InstallSnapshot answer", &other)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        match self.send(Request::Vote(rpc), &option).await? {
            Response::Vote(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.unexpected("a Vote answer", &other)),
        }
    }
}
