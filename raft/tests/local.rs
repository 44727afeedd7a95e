//! The local socket: the same requests on a Unix socket, no key, peers marked `local`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::{config, nested_batch_request, Scripted, WAIT};
use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::proto::{Request, Response};
use raftshare_raft::transport::{serve_local, Client, Peer, Service, TransportConfig, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// A socket path of its own for each test, removed when dropped.
struct SocketPath(PathBuf);

impl SocketPath {
    fn new() -> SocketPath {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("raftshare-local-{}-{}.sock", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&path);
        SocketPath(path)
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Answers `Status` with the peer as the transport named it; anything else as `Scripted`.
struct Local;

impl Service for Local {
    async fn handle(&self, peer: Peer, req: Request) -> Response {
        match req {
            Request::Admin(AdminRequest::Status) => Response::Error(format!("{peer:?}")),
            other => Scripted::default().handle(peer, other).await,
        }
    }
}

fn start(path: &SocketPath, cfg: TransportConfig) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let listener = UnixListener::bind(&path.0).unwrap();
    std::fs::set_permissions(&path.0, std::fs::Permissions::from_mode(0o600)).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_local(listener, Arc::new(cfg), Arc::new(Local), shutdown.clone()));
    (shutdown, task)
}

#[tokio::test]
async fn the_local_socket_serves_requests_without_a_key_and_marks_its_peers_local() {
    let path = SocketPath::new();
    let (shutdown, server) = start(&path, config(1, Some(1)));
    let client = Client::connect_local(&path.0, TransportConfig::DEFAULT_MAX_FRAME, WAIT).await.unwrap();
    let Response::Error(peer) = client.call(Request::Admin(AdminRequest::Status), WAIT).await.unwrap() else {
        panic!("no peer")
    };
    assert_eq!(peer, format!("{:?}", Peer { addr: None, node_id: None, identity: None, local: true }));
    assert_eq!(client.peer_node_id(), None);

    // 5,000 nested batches: an error answer, and the connection goes on serving.
    let mut raw = UnixStream::connect(&path.0).await.unwrap();
    let mut greeting = [0u8; 6];
    raw.read_exact(&mut greeting).await.unwrap();
    let hostile = nested_batch_request(9, 5_000, TransportConfig::DEFAULT_MAX_FRAME);
    let mut codec = raftshare_raft::transport::FrameCodec::plain(TransportConfig::DEFAULT_MAX_FRAME);
    let mut wire = tokio_util::bytes::BytesMut::new();
    tokio_util::codec::Encoder::encode(&mut codec, tokio_util::bytes::Bytes::from(hostile), &mut wire).unwrap();
    raw.write_all(&wire).await.unwrap();
    let mut answers = tokio_util::codec::FramedRead::new(raw, raftshare_raft::transport::FrameCodec::plain(1 << 20));
    let frame = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut answers)).await.expect("an answer in time");
    let answer: raftshare_raft::transport::Envelope<Response> =
        raftshare_raft::transport::decode(&frame.unwrap().unwrap(), 1 << 20).unwrap();
    assert!(matches!(&answer.body, Response::Error(e) if e.contains("a batch inside a batch")), "{:?}", answer.body);
    let pong = client.call(Request::Admin(AdminRequest::Ping), WAIT).await.unwrap();
    assert!(matches!(pong, Response::Admin(AdminResponse::Pong(_))), "{pong:?}");

    shutdown.cancel();
    tokio::time::timeout(WAIT, server).await.expect("serve_local returns").unwrap();
}

#[tokio::test]
async fn no_socket_or_not_a_node_says_so() {
    let path = SocketPath::new();
    let err = Client::connect_local(&path.0, 1 << 20, WAIT).await.unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("the node is not running"), "{err}");

    // Something else listens there: named, not misread.
    let listener = UnixListener::bind(&path.0).unwrap();
    let other = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"HTTP/1.1 400\r\n").await.unwrap();
    });
    let err = Client::connect_local(&path.0, 1 << 20, WAIT).await.unwrap_err();
    assert!(err.to_string().contains("not a raftshare node"), "{err}");
    tokio::time::timeout(WAIT, other).await.unwrap().unwrap();
}
