//! openraft's network over a real server: answers come back, and each kind of failure
//! reaches openraft as the error it reacts to properly.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, Scripted, TestServer};
use openraft::error::{Fatal, InstallSnapshotError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, EntryPayload, StoredMembership};
use raftshare_raft::network::Network;
use raftshare_raft::transport::ConnectionPool;
use raftshare_raft::{Entry, LogId, NodeInfo, SnapshotMeta, Vote};
use tokio::net::TcpListener;

fn option() -> RPCOption {
    RPCOption::new(Duration::from_secs(10))
}

fn network() -> Network {
    Network::new(ConnectionPool::new(Arc::new(config(1, Some(9)))))
}

fn info(addr: String) -> NodeInfo {
    NodeInfo { name: "n1".into(), addr, ..Default::default() }
}

fn append(entries: usize) -> AppendEntriesRequest<raftshare_raft::TypeConfig> {
    let log_id = |i| LogId::new(CommittedLeaderId::new(1, 9), i);
    AppendEntriesRequest {
        vote: Vote::new_committed(1, 9),
        prev_log_id: None,
        entries: (1..=entries as u64).map(|i| Entry { log_id: log_id(i), payload: EntryPayload::Blank }).collect(),
        leader_commit: None,
    }
}

fn chunk(done: bool) -> InstallSnapshotRequest<raftshare_raft::TypeConfig> {
    InstallSnapshotRequest {
        vote: Vote::new_committed(1, 9),
        meta: SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default(), snapshot_id: "s".into() },
        offset: 10,
        data: vec![1, 2, 3],
        done,
    }
}

#[tokio::test]
async fn answers_and_remote_raft_errors_reach_openraft() {
    let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;
    let mut conn = network().new_client(1, &info(server.addr())).await;

    let vote = conn.vote(VoteRequest::new(Vote::new(2, 9), None), option()).await.unwrap();
    assert!(vote.vote_granted);
    assert_eq!(conn.append_entries(append(0), option()).await.unwrap(), AppendEntriesResponse::Success);

    match conn.append_entries(append(1), option()).await.unwrap_err() {
        RPCError::RemoteError(remote) => {
            assert_eq!(remote.target, 1);
            assert_eq!(remote.target_node, Some(info(server.addr())));
            assert!(matches!(remote.source, RaftError::Fatal(Fatal::Stopped)), "{:?}", remote.source);
        }
        other => panic!("{other:?}"),
    }

    assert!(conn.install_snapshot(chunk(true), option()).await.is_ok());
    match conn.install_snapshot(chunk(false), option()).await.unwrap_err() {
        RPCError::RemoteError(remote) => assert!(
            matches!(remote.source, RaftError::APIError(InstallSnapshotError::SnapshotMismatch(_))),
            "{:?}",
            remote.source
        ),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn an_error_answer_or_a_wrong_answer_is_a_network_error() {
    let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;
    let mut conn = network().new_client(1, &info(server.addr())).await;

    match conn.append_entries(append(2), option()).await.unwrap_err() {
        RPCError::Network(e) => assert!(e.to_string().contains("scripted failure"), "{e}"),
        other => panic!("{other:?}"),
    }
    match conn.append_entries(append(3), option()).await.unwrap_err() {
        RPCError::Network(e) => assert!(e.to_string().contains("expected an AppendEntries answer"), "{e}"),
        other => panic!("{other:?}"),
    }
    // The connection is still good.
    assert!(conn.append_entries(append(0), option()).await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn a_node_that_cannot_be_reached_or_is_another_node_is_unreachable() {
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    // new_client never fails, even for a dead address.
    let mut conn = network().new_client(1, &info(dead.clone())).await;
    match conn.vote(VoteRequest::new(Vote::new(2, 9), None), option()).await.unwrap_err() {
        RPCError::Unreachable(e) => assert!(e.to_string().contains(&format!("cannot reach {dead}")), "{e}"),
        other => panic!("{other:?}"),
    }

    // Node 1 listens where we expect node 2.
    let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;
    let mut conn = network().new_client(2, &info(server.addr())).await;
    match conn.vote(VoteRequest::new(Vote::new(2, 9), None), option()).await.unwrap_err() {
        RPCError::Unreachable(e) => assert!(e.to_string().contains("not node 2"), "{e}"),
        other => panic!("{other:?}"),
    }

    // Another cluster's node.
    let mut conn =
        Network::new(ConnectionPool::new(Arc::new(config(2, Some(9))))).new_client(1, &info(server.addr())).await;
    match conn.append_entries(append(0), option()).await.unwrap_err() {
        RPCError::Unreachable(e) => assert!(e.to_string().contains("another cluster"), "{e}"),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}
