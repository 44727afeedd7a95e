//! Shared harness for the transport tests: a real server on 127.0.0.1 port 0 with a
//! scripted service, and a capture of the server's log lines.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{Fatal, InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{AppendEntriesResponse, InstallSnapshotResponse, VoteResponse};
use openraft::SnapshotSegmentId;
use raftshare_raft::admin::{AdminRequest, AdminResponse, PeerProgress};
use raftshare_raft::key::{ClusterKey, Identity};
use raftshare_raft::proto::{Request, Response};
use raftshare_raft::transport::{serve, MemberDirectory, Peer, Service, TransportConfig};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// A config for 127.0.0.1 with a fixed key byte, as node `node_id` (`None`: as the CLI,
/// with a throwaway identity). Every test node is a member of [`TestNodes`], so a peer's
/// node id is the one whose identity it proves.
pub fn config(key: u8, node_id: Option<u64>) -> TransportConfig {
    let mut cfg = TransportConfig::new(ClusterKey::from_bytes([key; 32]));
    cfg.identity = node_id.map(identity);
    cfg.members = Arc::new(TestNodes);
    cfg
}

static IDENTITIES: Mutex<BTreeMap<u64, Identity>> = Mutex::new(BTreeMap::new());

/// Test node `node_id`'s identity key: made on first use, the same for the whole run.
pub fn identity(node_id: u64) -> Identity {
    IDENTITIES.lock().unwrap().entry(node_id).or_insert_with(Identity::generate).clone()
}

/// The directory of every test node made by [`identity`]; no addresses are listed, so any
/// address may answer with any identity (tests of that use `StaticMembers`).
#[derive(Debug)]
pub struct TestNodes;

impl MemberDirectory for TestNodes {
    fn node_of(&self, proven: &[u8; 32]) -> Option<u64> {
        IDENTITIES.lock().unwrap().iter().find(|(_, id)| id.public() == *proven).map(|(node_id, _)| *node_id)
    }

    fn identity_at(&self, _: &str) -> Option<[u8; 32]> {
        None
    }

    fn is_member_ip(&self, _: IpAddr) -> bool {
        false
    }
}

/// A service whose answers are scripted by the request, so each test can provoke what it needs:
/// - `Ping` → `Pong` carrying the caller's node id (0 for none);
/// - `Log { from: Some(i) }` → waits at the barrier (if any), then `Done(i)`;
/// - `Log { from: None, limit: Some(n) }` → `Done` of `n` bytes (a large answer);
/// - `Status` → never answers; `Leave` → the handler panics;
/// - `JoinCluster { peer }` → `Response::Error(peer)`;
/// - `FetchKey` → `SealedKey` of epoch 1 holding the caller's node id;
/// - `AppendEntries` by number of entries: 0 → Success, 1 → remote Fatal, 2 → `Error`, else a Vote answer;
/// - `Vote` → granted; `InstallSnapshot` → accepted if `done`, else a remote `SnapshotMismatch`.
#[derive(Default)]
pub struct Scripted {
    pub barrier: Option<Barrier>,
}

impl Service for Scripted {
    async fn handle(&self, peer: Peer, req: Request) -> Response {
        match req {
            Request::Admin(AdminRequest::Ping) => Response::Admin(AdminResponse::Pong(PeerProgress {
                node_id: peer.node_id.unwrap_or(0),
                term: 0,
                last_log_index: None,
                applied_index: None,
                materialized_index: None,
            })),
            Request::Admin(AdminRequest::Log { from: Some(i), .. }) => {
                if let Some(barrier) = &self.barrier {
                    barrier.wait().await;
                }
                Response::Admin(AdminResponse::Done(i.to_string()))
            }
            Request::Admin(AdminRequest::Log { from: None, limit }) => {
                Response::Admin(AdminResponse::Done("x".repeat(limit.unwrap_or(0) as usize)))
            }
            Request::Admin(AdminRequest::Status) => std::future::pending().await,
            Request::Admin(AdminRequest::Leave) => panic!("scripted panic"),
            Request::Admin(AdminRequest::JoinCluster { peer, .. }) => Response::Error(peer),
            Request::Admin(other) => Response::Error(format!("unscripted {other:?}")),
            Request::Block(block) => Response::Block(Ok(serde_bytes::ByteBuf::from(block.path.into_bytes()))),
            Request::Blocks(blocks) => Response::Blocks(
                blocks.into_iter().map(|b| Ok(serde_bytes::ByteBuf::from(b.path.into_bytes()))).collect(),
            ),
            Request::FetchKey => {
                let sealed = peer.node_id.unwrap_or(0).to_le_bytes().to_vec();
                Response::SealedKey { epoch: 1, sealed: serde_bytes::ByteBuf::from(sealed) }
            }
            Request::AppendEntries(rpc) => match rpc.entries.len() {
                0 => Response::AppendEntries(Ok(AppendEntriesResponse::Success)),
                1 => Response::AppendEntries(Err(RaftError::Fatal(Fatal::Stopped))),
                2 => Response::Error("scripted failure".into()),
                _ => Response::Vote(Err(RaftError::Fatal(Fatal::Panicked))),
            },
            Request::Vote(rpc) => {
                Response::Vote(Ok(VoteResponse { vote: rpc.vote, vote_granted: true, last_log_id: rpc.last_log_id }))
            }
            Request::InstallSnapshot(rpc) => {
                if rpc.done {
                    return Response::InstallSnapshot(Ok(InstallSnapshotResponse { vote: rpc.vote }));
                }
                let segment = |offset| SnapshotSegmentId { id: rpc.meta.snapshot_id.clone(), offset };
                Response::InstallSnapshot(Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
                    SnapshotMismatch { expect: segment(0), got: segment(rpc.offset) },
                ))))
            }
        }
    }
}

/// A running `serve`; dropping it stops the server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts `serve` on 127.0.0.1, port 0.
    pub async fn start(cfg: TransportConfig, service: Scripted) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        TestServer::start_on(listener, cfg, service)
    }

    /// Starts `serve` on a listener the test bound itself.
    pub fn start_on(listener: TcpListener, cfg: TransportConfig, service: Scripted) -> TestServer {
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, Arc::new(cfg), Arc::new(service), shutdown.clone()));
        TestServer { addr, shutdown, task: Some(task) }
    }

    /// The address as the client API takes it.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Cancels the server and waits (bounded) until `serve` has returned.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(WAIT, task).await.expect("serve returns after shutdown").expect("serve task");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Log lines written while the returned guard lives (this thread only: use the default
/// current-thread `#[tokio::test]`, so the server's tasks log on this thread too).
#[derive(Clone, Default)]
pub struct Logs {
    text: Arc<Mutex<String>>,
    changed: Arc<Notify>,
}

struct LogWriter(Logs);

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.text.lock().unwrap().push_str(&String::from_utf8_lossy(buf));
        self.0.changed.notify_waiters();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Starts capturing `debug` and above.
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Waits (bounded) until a line containing every one of `needles` was logged.
    pub async fn wait_for(&self, needles: &[&str]) -> String {
        let found = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(line) = self.text().lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                    return line.to_string();
                }
                changed.await;
            }
        };
        match tokio::time::timeout(WAIT, found).await {
            Ok(line) => line,
            Err(_) => panic!("no log line with {needles:?} in:\n{}", self.text()),
        }
    }
}

/// Reads from a raw socket until the server closes it (EOF or reset), bounded by `WAIT`.
pub async fn until_closed(stream: &mut TcpStream) {
    let mut buf = vec![0u8; 4096];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(WAIT, closed).await.expect("the server closes the connection");
}

/// A `Propose` request whose op is `depth` batches nested in one another around one
/// delete, as the frame bytes a hostile key holder would send (built by hand: building
/// the value and encoding it would recurse as deep).
pub fn nested_batch_request(id: u64, depth: usize, max_frame: usize) -> Vec<u8> {
    use raftshare_raft::transport::{encode, Envelope};
    use raftshare_raft::{Change, FileOp};
    let leaf = FileOp::Delete { path: "deep".into(), base: None };
    let one_level = FileOp::Batch(vec![leaf.clone()]);
    let change = Change { origin: 1, origin_name: "n".into(), at_ms: 0, op: one_level.clone(), seqs: vec![] };
    let request = Envelope { id, body: Request::Admin(AdminRequest::Propose { change, hops: 0 }) };
    let whole = encode(&request, max_frame).unwrap();
    let (op, leaf) = (encode(&one_level, max_frame).unwrap(), encode(&leaf, max_frame).unwrap());
    let at = whole.windows(op.len()).position(|w| w == op).expect("the op is in the request");
    // A batch of one op is its tag and a length of 1, in front of that op.
    let header = &op[..op.len() - leaf.len()];
    let mut nested = header.repeat(depth);
    nested.extend_from_slice(&leaf);
    [&whole[..at], &nested[..], &whole[at + op.len()..]].concat()
}
