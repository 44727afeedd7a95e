//! Every message survives the exact bincode the transport puts on the wire.
//!
//! bincode cannot decode `#[serde(flatten)]`, untagged enums or `skip_serializing_if`
//! fields; openraft's types are checked here, variant by variant, with real content
//! (entries, memberships, errors), since a failure would only show on a live cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io;

use openraft::error::{Fatal, InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, Membership, SnapshotSegmentId};
use raftshare_raft::admin::{
    AdminRequest, AdminResponse, ConfigChange, ConfigReport, MemberStatus, PeerProgress, PendingChange, PendingReport,
    StatusReport,
};
use raftshare_raft::proto::{BlockRequest, Request, Response};
use raftshare_raft::transport::{decode, encode, Envelope, TransportConfig};
use raftshare_raft::{
    ApplyResult, Change, Digest, Entry, FileOp, FileRecord, LogId, NodeId, NodeInfo, OpOutcome, SnapshotMeta,
    StorageError, StoredMembership, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

const MAX: usize = TransportConfig::DEFAULT_MAX_FRAME;

/// Encodes, decodes, and checks nothing was lost: same `Debug`, same bytes again.
fn roundtrip<T: Serialize + DeserializeOwned + Debug>(value: &T) {
    let bytes = encode(value, MAX).unwrap_or_else(|e| panic!("encode {value:?}: {e}"));
    let back: T = decode(&bytes, MAX).unwrap_or_else(|e| panic!("decode {value:?}: {e}"));
    assert_eq!(format!("{value:?}"), format!("{back:?}"));
    assert_eq!(bytes, encode(&back, MAX).unwrap());
    // And inside the envelope, as it really travels.
    let envelope = Envelope { id: u64::MAX, body: value };
    let bytes = encode(&envelope, MAX).unwrap();
    let back: Envelope<T> = decode(&bytes, MAX).unwrap();
    assert_eq!(back.id, u64::MAX);
    assert_eq!(format!("{value:?}"), format!("{:?}", back.body));
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn node(name: &str) -> NodeInfo {
    NodeInfo { name: name.into(), addr: format!("10.0.0.{}:7070", name.len()), identity: "ab".repeat(32) }
}

fn membership() -> Membership<NodeId, NodeInfo> {
    let nodes: BTreeMap<NodeId, NodeInfo> = [(1, node("a")), (2, node("bb")), (3, node("ccc"))].into();
    // Joint config plus a learner (3).
    Membership::new(vec![BTreeSet::from([1]), BTreeSet::from([1, 2])], nodes)
}

fn entries() -> Vec<Entry> {
    let put = FileOp::Put {
        path: "docs/ä b.txt".into(),
        size: 5,
        hash: Digest::of(b"hello"),
        blocks: vec![Digest::of(b"hello")],
        mtime: -1,
        base: Some(3),
    };
    let change = Change {
        origin: 2,
        origin_name: "laptop".into(),
        at_ms: 1_700_000_000_000,
        op: FileOp::Batch(vec![put, FileOp::Delete { path: "old".into(), base: None }]),
        seqs: vec![1, 2],
    };
    vec![
        Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank },
        Entry { log_id: log_id(1, 2), payload: EntryPayload::Membership(membership()) },
        Entry { log_id: log_id(2, 3), payload: EntryPayload::Normal(change) },
    ]
}

fn vote() -> Vote {
    Vote::new_committed(4, 1)
}

fn snapshot_meta() -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id(2, 3)),
        last_membership: StoredMembership::new(Some(log_id(1, 2)), membership()),
        snapshot_id: "2-3-1700000000".into(),
    }
}

fn storage_error() -> StorageError {
    StorageError::from_io_error(ErrorSubject::Logs, ErrorVerb::Write, io::Error::other("disk full"))
}

#[test]
fn every_raft_request_survives_the_wire() {
    roundtrip(&Request::AppendEntries(AppendEntriesRequest {
        vote: vote(),
        prev_log_id: Some(log_id(1, 0)),
        entries: entries(),
        leader_commit: Some(log_id(1, 2)),
    }));
    // A heartbeat: no entries, nothing committed yet.
    roundtrip(&Request::AppendEntries(AppendEntriesRequest {
        vote: Vote::new(1, 2),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    }));
    roundtrip(&Request::Vote(VoteRequest::new(Vote::new(5, 3), Some(log_id(4, 9)))));
    roundtrip(&Request::Vote(VoteRequest::new(Vote::new(1, 3), None)));
    roundtrip(&Request::InstallSnapshot(InstallSnapshotRequest {
        vote: vote(),
        meta: snapshot_meta(),
        offset: 1 << 20,
        data: (0..=255).collect(),
        done: true,
    }));
}

#[test]
fn every_raft_response_survives_the_wire() {
    for ok in [
        AppendEntriesResponse::Success,
        AppendEntriesResponse::PartialSuccess(Some(log_id(2, 3))),
        AppendEntriesResponse::PartialSuccess(None),
        AppendEntriesResponse::Conflict,
        AppendEntriesResponse::HigherVote(vote()),
    ] {
        roundtrip(&Response::AppendEntries(Ok(ok)));
    }
    for fatal in [Fatal::StorageError(storage_error()), Fatal::Panicked, Fatal::Stopped] {
        roundtrip(&Response::AppendEntries(Err(RaftError::Fatal(fatal.clone()))));
        roundtrip(&Response::Vote(Err(RaftError::Fatal(fatal.clone()))));
        roundtrip(&Response::InstallSnapshot(Err(RaftError::Fatal(fatal))));
    }
    roundtrip(&Response::Vote(Ok(VoteResponse { vote: vote(), vote_granted: true, last_log_id: Some(log_id(2, 3)) })));
    roundtrip(&Response::Vote(Ok(VoteResponse { vote: Vote::new(9, 2), vote_granted: false, last_log_id: None })));
    roundtrip(&Response::InstallSnapshot(Ok(InstallSnapshotResponse { vote: vote() })));
    let segment = |offset| SnapshotSegmentId { id: "2-3-1700000000".into(), offset };
    roundtrip(&Response::InstallSnapshot(Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
        SnapshotMismatch { expect: segment(0), got: segment(4096) },
    )))));
    roundtrip(&Response::Error("cannot do that: try this".into()));
}

#[test]
fn every_admin_message_survives_the_wire() {
    for request in [
        AdminRequest::Ping,
        AdminRequest::Status,
        AdminRequest::Log { from: Some(3), limit: None },
        AdminRequest::Log { from: None, limit: Some(10) },
        AdminRequest::Bootstrap,
        AdminRequest::JoinCluster { peer: "10.0.0.2:7070".into(), learner: true },
        AdminRequest::AddMember { id: 7, node: node("n7"), learner: false, hops: 1 },
        AdminRequest::Promote { id: 7, hops: 0 },
        AdminRequest::RemoveMember { id: 7, hops: 2 },
        AdminRequest::Leave,
        AdminRequest::Ls,
        AdminRequest::GetConfig,
        AdminRequest::SetConfig(ConfigChange::default()),
        AdminRequest::SetConfig(ConfigChange {
            name: Some("desk".into()),
            shared_dir: Some("/home/me/Shared".into()),
            listen: Some("0.0.0.0:7070".into()),
            allow: Some(vec![]),
            ignore: Some(vec!["*.tmp".into(), "build/".into()]),
        }),
        AdminRequest::Pending,
        AdminRequest::SetMemberInfo { id: 7, node: node("renamed"), hops: 1 },
        AdminRequest::Propose {
            change: Change {
                origin: 3,
                origin_name: "c".into(),
                at_ms: 1,
                op: FileOp::Batch(vec![FileOp::Delete { path: "x".into(), base: Some(2) }]),
                seqs: vec![9],
            },
            hops: 1,
        },
    ] {
        roundtrip(&Request::Admin(request));
    }
    roundtrip(&Request::Block(BlockRequest {
        path: "a/b".into(),
        file_hash: Digest::of(b"ab"),
        index: 3,
        block: Digest::of(b"b"),
    }));
    roundtrip(&Response::Block(Ok(serde_bytes::ByteBuf::from(vec![7u8; 1 << 20]))));
    roundtrip(&Response::Block(Err("gone".into())));
    let block = BlockRequest { path: "c".into(), file_hash: Digest::of(b"c"), index: 0, block: Digest::of(b"c") };
    roundtrip(&Request::Blocks(vec![block.clone(), BlockRequest { path: "d".into(), ..block }]));
    roundtrip(&Response::Blocks(vec![Ok(serde_bytes::ByteBuf::from(vec![1u8; 4096])), Err("gone".into())]));
    let status = StatusReport {
        node_id: 1,
        name: "a".into(),
        addr: "10.0.0.1:7070".into(),
        cluster_id: "0123456789abcdef".into(),
        role: "leader".into(),
        leader_id: Some(1),
        leader_addr: None,
        term: 4,
        last_log_index: Some(3),
        committed_index: Some(3),
        applied_index: None,
        first_log_index: Some(1),
        snapshot_index: None,
        db_size_bytes: 1 << 30,
        log_size_bytes: 1 << 20,
        pending_outbox: 2,
        pending_downloads: 3,
        bytes_sent: 4,
        bytes_received: 5,
        folder_problem: Some("marker missing".into()),
        unreadable: vec!["photos: Permission denied (os error 13)".into()],
        cannot_hold: vec!["docs/a.txt: goes through the symbolic link docs".into()],
        members: vec![MemberStatus {
            id: 2,
            name: "bb".into(),
            addr: "10.0.0.2:7070".into(),
            voter: false,
            online: true,
            matched_index: None,
            last_seen_ms: Some(12),
            identity: "ab".repeat(32),
        }],
    };
    for response in [
        AdminResponse::Pong(PeerProgress {
            node_id: 1,
            term: 2,
            last_log_index: Some(3),
            applied_index: None,
            materialized_index: Some(2),
        }),
        AdminResponse::Status(Box::new(status)),
        AdminResponse::Log(entries()),
        AdminResponse::Done("joined".into()),
        AdminResponse::Committed {
            index: 9,
            result: ApplyResult { outcomes: vec![OpOutcome::Written { path: "p".into(), version: 9 }] },
        },
        AdminResponse::Files(vec![FileRecord {
            path: "p".into(),
            size: 1,
            hash: Digest::of(b"p"),
            blocks: vec![Digest::of(b"p")],
            mtime: 5,
            version: 9,
            origin: 3,
            origin_name: "c".into(),
            modified_at_ms: 6,
            deleted: false,
        }]),
    ] {
        roundtrip(&Response::Admin(response));
    }
    let config = ConfigReport {
        node_id: 1,
        name: "desk".into(),
        shared_dir: "/home/me/Shared".into(),
        listen: "0.0.0.0:7070".into(),
        advertise: "10.0.0.1:7070".into(),
        allow: vec!["10.0.0.0/24".into()],
        ignore: vec![],
        config_path: "/x/config.toml".into(),
        restart_needed: vec!["allow".into()],
    };
    for response in [
        AdminResponse::Config(Box::new(config.clone())),
        AdminResponse::ConfigSaved { report: Box::new(config), message: "restart the node".into() },
        AdminResponse::Pending(PendingReport {
            outbox: vec![PendingChange { path: "a".into(), deleted: true, queued_at_ms: -1 }],
            missing: vec!["b".into()],
        }),
        AdminResponse::Pending(PendingReport::default()),
    ] {
        roundtrip(&Response::Admin(response));
    }
}

#[test]
fn a_length_prefix_larger_than_its_frame_is_refused_not_allocated() {
    // A Vec claiming 2^64-1 bytes, in a 9-byte frame.
    let mut forged = vec![253u8];
    forged.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(decode::<Vec<u8>>(&forged, MAX).is_err());
    assert!(decode::<Request>(&[0, 0, 0, 253, 255, 255, 255, 255, 255, 255, 255, 255], MAX).is_err());
    assert!(decode::<Vec<String>>(&forged, MAX).is_err());
    // A truncated frame.
    let bytes = encode(&vec![7u8; 100], MAX).unwrap();
    assert!(decode::<Vec<u8>>(&bytes[..10], MAX).is_err());
    // Encoding over the limit fails before anything is sent.
    assert!(encode(&vec![0u8; 100], 50).is_err());
}
