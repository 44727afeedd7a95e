//! The transport against a real server on 127.0.0.1: round trips, multiplexing, the
//! handshake's and the subnet check's refusals, limits, timeouts and shutdown.

mod common;

use std::time::Duration;

use common::{config, until_closed, Logs, Scripted, TestServer, WAIT};
use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::handshake::{self, Cipher};
use raftshare_raft::key::Identity;
use raftshare_raft::proto::{Request, Response};
use raftshare_raft::transport::{
    encode, Client, ConnectionPool, Envelope, FrameCodec, TransportConfig, TransportError,
};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;
use tokio_util::bytes::{Bytes, BytesMut};
use tokio_util::codec::Encoder;

fn ping() -> Request {
    Request::Admin(AdminRequest::Ping)
}

fn log_from(i: u64) -> Request {
    Request::Admin(AdminRequest::Log { from: Some(i), limit: None })
}

fn done(response: Response) -> String {
    match response {
        Response::Admin(AdminResponse::Done(text)) => text,
        other => panic!("expected Done, got {other:?}"),
    }
}

#[tokio::test]
async fn a_request_gets_its_response_and_the_server_knows_who_asked() {
    let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;
    let client = Client::connect(&server.addr(), &config(1, Some(42))).await.unwrap();
    assert_eq!(client.peer_node_id(), Some(1));

    match client.call(ping(), WAIT).await.unwrap() {
        Response::Admin(AdminResponse::Pong(progress)) => assert_eq!(progress.node_id, 42),
        other => panic!("{other:?}"),
    }
    assert_eq!(done(client.call(log_from(7), WAIT).await.unwrap()), "7");
    assert!(!client.is_closed());
    server.stop().await;
}

#[tokio::test]
async fn a_hundred_concurrent_calls_on_one_connection_each_get_their_own_answer() {
    // Every handler waits until all 100 requests are in progress: this only finishes if
    // one connection really carries them all at once.
    let service = Scripted { barrier: Some(Barrier::new(100)) };
    let server = TestServer::start(config(1, Some(1)), service).await;
    let client = Client::connect(&server.addr(), &config(1, None)).await.unwrap();

    let calls = (0..100u64).map(|i| {
        let client = client.clone();
        async move { (i, client.call(log_from(i), WAIT).await) }
    });
    for (i, answer) in futures::future::join_all(calls).await {
        assert_eq!(done(answer.unwrap()), i.to_string());
    }
    server.stop().await;
}

#[tokio::test]
async fn another_cluster_key_fails_on_both_sides_with_a_clear_message() {
    let (logs, _guard) = Logs::capture();
    let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;

    let err = Client::connect(&server.addr(), &config(2, Some(2))).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TransportError::Rejected { .. }), "{text}");
    assert!(
        text.starts_with(&format!("{} rejected the handshake: this node belongs to another cluster", server.addr())),
        "{text}"
    );
    assert!(text.contains("wrong cluster key — use the key from `raftshare invite`"), "{text}");
    assert!(err.is_unreachable());

    let line = logs.wait_for(&["WARN", "handshake from 127.0.0.1", "belongs to another cluster"]).await;
    assert!(line.contains(&config(2, None).key.cluster_id()), "{line}");

    // A peer retrying with the same wrong key is warned about once, then only in debug.
    let again = Client::connect(&server.addr(), &config(2, Some(2))).await.unwrap_err();
    assert_eq!(again.to_string(), text);
    logs.wait_for(&["DEBUG", "handshake from 127.0.0.1", "belongs to another cluster"]).await;
    let warnings = logs.text().lines().filter(|l| l.contains("WARN") && l.contains("another cluster")).count();
    assert_eq!(warnings, 1);
    server.stop().await;
}

#[tokio::test]
async fn after_a_rotation_a_replaced_key_is_served_its_sealed_key_and_nothing_else() {
    // The server's key 1 was replaced by key 2.
    let server_cfg = config(1, Some(1));
    let keys = server_cfg.key.clone();
    assert!(keys.install(config(2, None).key.current(), 1));
    let server = TestServer::start(server_cfg, Scripted::default()).await;

    // A member that was away still holds key 1: let in, but only to fetch its key.
    let away = Client::connect(&server.addr(), &config(1, Some(7))).await.unwrap();
    assert!(away.is_stale());
    assert!(matches!(away.call(ping(), WAIT).await.unwrap(), Response::KeyRotated));
    assert!(matches!(away.call(log_from(1), WAIT).await.unwrap(), Response::KeyRotated));
    match away.call(Request::FetchKey, WAIT).await.unwrap() {
        Response::SealedKey { epoch: 1, sealed } => assert_eq!(sealed.as_ref(), 7u64.to_le_bytes()),
        other => panic!("{other:?}"),
    }

    // The new key is served in full; a key the server never had is another cluster.
    let current = Client::connect(&server.addr(), &config(2, Some(8))).await.unwrap();
    assert!(!current.is_stale());
    assert!(matches!(current.call(ping(), WAIT).await.unwrap(), Response::Admin(AdminResponse::Pong(_))));
    let err = Client::connect(&server.addr(), &config(3, Some(9))).await.unwrap_err();
    assert!(err.to_string().contains("another cluster"), "{err}");

    // A connection made before the next rotation is served nothing but its key after it.
    assert!(keys.install(config(4, None).key.current(), 2));
    assert!(matches!(current.call(ping(), WAIT).await.unwrap(), Response::KeyRotated));
    assert!(matches!(current.call(Request::FetchKey, WAIT).await.unwrap(), Response::SealedKey { .. }));
    server.stop().await;
}

#[tokio::test]
async fn a_session_on_a_replaced_key_takes_small_frames_and_ends_after_a_while() {
    let mut server_cfg = config(1, Some(1));
    server_cfg.stale_session_life = Duration::from_millis(300);
    let keys = server_cfg.key.clone();
    assert!(keys.install(config(2, None).key.current(), 1));
    let server = TestServer::start(server_cfg, Scripted::default()).await;
    let big = || Request::Admin(AdminRequest::JoinCluster { peer: "x".repeat(20_000), learner: false });

    // A computer holding the replaced key cannot make the node decode a large request.
    let away = Client::connect(&server.addr(), &config(1, Some(7))).await.unwrap();
    assert!(away.is_stale());
    assert!(away.call(big(), WAIT).await.is_err(), "a 20 KB request on a stale session");
    // Nor hold its connection: it ends on its own.
    let away = Client::connect(&server.addr(), &config(1, Some(7))).await.unwrap();
    assert!(matches!(away.call(Request::FetchKey, WAIT).await.unwrap(), Response::SealedKey { .. }));
    let started = std::time::Instant::now();
    while !away.is_closed() && away.call(ping(), WAIT).await.is_ok() {
        assert!(started.elapsed() < WAIT, "a session on a replaced key still open after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A session on the current key is not limited so.
    let current = Client::connect(&server.addr(), &config(2, Some(8))).await.unwrap();
    assert!(matches!(current.call(big(), WAIT).await.unwrap(), Response::Error(_)));
    server.stop().await;
}

#[tokio::test]
async fn an_address_outside_the_allowed_subnets_is_refused_with_the_reason_and_logged_once() {
    let (logs, _guard) = Logs::capture();
    let mut cfg = config(1, Some(1));
    cfg.allow = vec!["10.0.0.0/8".parse().unwrap()];
    let server = TestServer::start(cfg, Scripted::default()).await;

    for _ in 0..2 {
        let err = Client::connect(&server.addr(), &config(1, None)).await.unwrap_err();
        assert!(matches!(err, TransportError::Refused { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "{} refused the connection: your address 127.0.0.1 is not in this node's allowed subnets",
                server.addr()
            )
        );
    }
    // The warning is logged before the refusal is sent, so both are in by now.
    let warnings: Vec<_> = logs
        .text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("refused connections from 127.0.0.1"))
        .map(String::from)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("10.0.0.0/8"), "{}", warnings[0]);
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_that_connection_and_the_server_keeps_serving() {
    let mut cfg = config(1, Some(1));
    cfg.max_frame = 1 << 20;
    let server = TestServer::start(cfg, Scripted::default()).await;
    let good = Client::connect(&server.addr(), &config(1, None)).await.unwrap();

    for claimed in [u32::MAX, (1 << 20) + 1] {
        // Authenticate for real, then announce a frame over the limit: the server must
        // refuse from the length prefix alone, without buffering (or allocating) it.
        let client_cfg = config(1, None);
        let mut io = handshake::framed(TcpStream::connect(server.addr).await.unwrap());
        handshake::connect(&mut io, &client_cfg.key, &Identity::generate(), None, WAIT).await.unwrap();
        let mut raw = io.into_inner();
        raw.write_all(&claimed.to_be_bytes()).await.unwrap();
        raw.write_all(&[0u8; 1024]).await.unwrap();
        until_closed(&mut raw).await;
    }

    assert_eq!(done(good.call(log_from(1), WAIT).await.unwrap()), "1");
    let fresh = Client::connect(&server.addr(), &config(1, None)).await.unwrap();
    assert_eq!(done(fresh.call(log_from(2), WAIT).await.unwrap()), "2");
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_handshake_times_out_and_the_server_keeps_serving() {
    let mut cfg = config(1, Some(1));
    cfg.handshake_timeout = Duration::from_millis(300);
    cfg.max_connections = 2;
    let server = TestServer::start(cfg, Scripted::default()).await;

    // Connect and say nothing: the server's hello arrives, then the close.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let client = Client::connect(&server.addr(), &config(1, None)).await.unwrap();
    assert_eq!(done(client.call(log_from(3), WAIT).await.unwrap()), "3");
    until_closed(&mut silent).await;

    // The stalled connection's slot is free again (max_connections = 2).
    let other = Client::connect(&server.addr(), &config(1, None)).await.unwrap();
    assert_eq!(done(other.call(log_from(4), WAIT).await.unwrap()), "4");
    server.stop().await;
}

#[tokio::test]
async fn an_unanswered_call_times_out_and_the_connection_stays_usable() {
    let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;
    let client = Client::connect(&server.addr(), &config(1, None)).await.unwrap();

    let err = client.call(Request::Admin(AdminRequest::Status), Duration::from_millis(200)).await.unwrap_err();
    assert_eq!(err.to_string(), format!("{} did not answer within 200ms", server.addr()));
    assert!(!err.is_unreachable());
    assert!(!client.is_closed());
    assert_eq!(done(client.call(log_from(5), WAIT).await.unwrap()), "5");
    server.stop().await;
}

#[tokio::test]
async fn size_limits_fail_the_one_call_not_the_connection() {
    let mut server_cfg = config(1, Some(1));
    server_cfg.max_frame = 64 * 1024;
    let server = TestServer::start(server_cfg, Scripted::default()).await;
    let mut client_cfg = config(1, None);
    client_cfg.max_frame = 16 * 1024;
    let client = Client::connect(&server.addr(), &client_cfg).await.unwrap();

    // A request over our own limit is never sent.
    let big = Request::Admin(AdminRequest::JoinCluster { peer: "x".repeat(20_000), learner: false });
    let err = client.call(big, WAIT).await.unwrap_err();
    assert!(matches!(err, TransportError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("too large"), "{err}");

    // An answer over the server's limit comes back as an error answer.
    let huge_answer = Request::Admin(AdminRequest::Log { from: None, limit: Some(100_000) });
    match client.call(huge_answer, WAIT).await.unwrap() {
        Response::Error(text) => assert!(text.contains("too large"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert!(!client.is_closed());
    assert_eq!(done(client.call(log_from(6), WAIT).await.unwrap()), "6");
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_answers_with_an_error() {
    let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;
    let client = Client::connect(&server.addr(), &config(1, None)).await.unwrap();
    match client.call(Request::Admin(AdminRequest::Leave), WAIT).await.unwrap() {
        Response::Error(text) => assert!(text.contains("failed while handling"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(done(client.call(log_from(8), WAIT).await.unwrap()), "8");
    server.stop().await;
}

#[tokio::test]
async fn dialling_nothing_or_nonsense_says_what_to_check() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let err = Client::connect(&addr, &config(1, None)).await.unwrap_err();
    assert_eq!(err.to_string(), format!("cannot reach {addr} (connection refused): is `raftshare run` started there?"));
    assert!(err.is_unreachable());

    let err = Client::connect("not an address", &config(1, None)).await.unwrap_err();
    assert!(matches!(err, TransportError::BadAddress { .. }), "{err}");
    assert!(err.to_string().contains("use host:port"), "{err}");
}

#[tokio::test]
async fn shutdown_ends_every_connection_and_serve_returns() {
    let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;
    let client = Client::connect(&server.addr(), &config(1, None)).await.unwrap();
    // A call left waiting on the server when it stops.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.call(Request::Admin(AdminRequest::Status), WAIT).await })
    };
    assert_eq!(done(client.call(log_from(1), WAIT).await.unwrap()), "1");
    server.stop().await;

    let err = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(err, TransportError::Closed { .. }), "{err}");
    assert!(err.to_string().starts_with("connection to 127.0.0.1:"), "{err}");
    assert!(err.is_unreachable());
    assert!(client.is_closed());
    let err = client.call(ping(), WAIT).await.unwrap_err();
    assert!(matches!(err, TransportError::Closed { .. }), "{err}");
}

#[tokio::test]
async fn dropping_the_client_closes_its_connection() {
    let (logs, _guard) = Logs::capture();
    let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;
    let client = Client::connect(&server.addr(), &config(1, Some(5))).await.unwrap();
    let copy = client.clone();
    assert_eq!(done(client.call(log_from(1), WAIT).await.unwrap()), "1");
    drop(client);
    // A clone keeps the connection alive...
    assert_eq!(done(copy.call(log_from(2), WAIT).await.unwrap()), "2");
    drop(copy);
    // ...and the last one closes it: the server sees the end of the stream.
    logs.wait_for(&["connection ended", "node_id: Some(5)", "closed by the peer"]).await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_a_peer_that_stopped_reading() {
    let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;
    let mut io = handshake::framed(TcpStream::connect(server.addr).await.unwrap());
    let session = handshake::connect(&mut io, &config(1, None).key, &Identity::generate(), None, WAIT).await.unwrap();
    let mut raw = io.into_inner();
    let mut sealer = FrameCodec::new(session.cipher, TransportConfig::DEFAULT_MAX_FRAME);
    // Ask for far more than the socket buffers hold, and never read.
    for id in 0..4 {
        let ask = Request::Admin(AdminRequest::Log { from: None, limit: Some(8 << 20) });
        let frame = encode(&Envelope { id, body: ask }, TransportConfig::DEFAULT_MAX_FRAME).unwrap();
        let mut sealed = BytesMut::new();
        sealer.encode(Bytes::from(frame), &mut sealed).unwrap();
        raw.write_all(&sealed).await.unwrap();
    }
    // A first full chunk proves the server is writing an answer; the rest of the 32 MiB
    // cannot fit in the socket buffers, so it stays stuck mid-write.
    let mut prefix = [0u8; 4];
    tokio::time::timeout(WAIT, raw.read_exact(&mut prefix)).await.unwrap().unwrap();
    assert_eq!(u32::from_be_bytes(prefix) as usize, Cipher::MAX_SEALED);
    server.stop().await;
}

#[tokio::test]
async fn the_pool_reuses_one_connection_and_redials_after_a_restart() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = TestServer::start_on(listener, config(1, Some(1)), Scripted::default());
    let pool = ConnectionPool::new(Arc::new(config(1, Some(9))));

    assert_eq!(done(pool.call(&addr.to_string(), log_from(1), WAIT).await.unwrap()), "1");
    let first = pool.client(&addr.to_string()).await.unwrap();
    assert_eq!(done(pool.clone().call(&addr.to_string(), log_from(2), WAIT).await.unwrap()), "2");
    let again = pool.client(&addr.to_string()).await.unwrap();
    assert_eq!(format!("{first:?}"), format!("{again:?}"));

    // Restart the server on the same port.
    server.stop().await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let server = TestServer::start_on(listener, config(1, Some(1)), Scripted::default());

    // At most one call can still hit the broken connection; it is then redialled.
    match pool.call(&addr.to_string(), log_from(3), WAIT).await {
        Ok(answer) => assert_eq!(done(answer), "3"),
        Err(e) => assert!(e.is_unreachable(), "{e}"),
    }
    assert_eq!(done(pool.call(&addr.to_string(), log_from(4), WAIT).await.unwrap()), "4");
    assert!(first.is_closed());
    server.stop().await;
}

#[tokio::test]
async fn the_pool_checks_it_reached_the_node_it_meant() {
    let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;
    let pool = ConnectionPool::new(Arc::new(config(1, Some(9))));
    let err = pool.call_node(&server.addr(), Some(2), ping(), WAIT).await.unwrap_err();
    assert!(matches!(err, TransportError::WrongNode { expected: 2, found: Some(1), .. }), "{err}");
    assert!(err.is_unreachable());
    assert!(pool.call_node(&server.addr(), Some(1), ping(), WAIT).await.is_ok());
    server.stop().await;
}

/// Answers only once the test opens its gate; counts the requests that reached it.
struct Gated {
    gate: Arc<tokio::sync::Semaphore>,
    arrived: Arc<std::sync::atomic::AtomicUsize>,
}

impl raftshare_raft::transport::Service for Gated {
    async fn handle(&self, _peer: raftshare_raft::transport::Peer, _req: Request) -> Response {
        self.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _passed = self.gate.acquire().await;
        Response::Admin(AdminResponse::Done("x".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flooded_across_a_key_change_ends_instead_of_wedging() {
    use futures::StreamExt;
    use std::sync::atomic::Ordering;
    const MAX: usize = TransportConfig::DEFAULT_MAX_FRAME;
    const IN_FLIGHT: usize = 1024;
    let cfg = config(1, Some(1));
    let keys = cfg.key.clone();
    let (gate, arrived) = (Arc::new(tokio::sync::Semaphore::new(0)), Arc::new(std::sync::atomic::AtomicUsize::new(0)));
    let service = Gated { gate: gate.clone(), arrived: arrived.clone() };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server =
        tokio::spawn(raftshare_raft::transport::serve(listener, Arc::new(cfg), Arc::new(service), shutdown.clone()));

    let mut io = handshake::framed(TcpStream::connect(addr).await.unwrap());
    let session = handshake::connect(&mut io, &config(1, Some(9)).key, &common::identity(9), None, WAIT).await.unwrap();
    let (read_half, mut write_half) = io.into_inner().into_split();
    // Every answer is read, so the node's writes never wait on the socket.
    let cipher = session.cipher.clone();
    let reader = tokio::spawn(async move {
        let mut frames = tokio_util::codec::FramedRead::new(read_half, FrameCodec::new(cipher, MAX));
        while let Some(Ok(_)) = frames.next().await {}
    });
    let mut sealer = FrameCodec::new(session.cipher.clone(), MAX);
    let mut buf = BytesMut::new();
    for id in 0..(IN_FLIGHT + 20_000) as u64 {
        let frame = encode(&Envelope { id, body: Request::Admin(AdminRequest::Ping) }, MAX).unwrap();
        sealer.encode(Bytes::from(frame), &mut buf).unwrap();
    }
    let writer = tokio::spawn(async move {
        let _ = write_half.write_all(&buf).await;
        let _ = write_half.shutdown().await;
    });
    // Every handler slot taken, then the key replaced: the rest is answered KeyRotated.
    let started = std::time::Instant::now();
    while arrived.load(Ordering::SeqCst) < IN_FLIGHT {
        assert!(started.elapsed() < WAIT, "only {} requests reached the service", arrived.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(keys.install(config(2, None).key.current(), 1));
    gate.add_permits(IN_FLIGHT);
    // All answered and the stream closed by us, or the flood cut off: either way it ends.
    tokio::time::timeout(WAIT, reader).await.expect("the connection wedged").unwrap();
    writer.abort();
    shutdown.cancel();
    tokio::time::timeout(WAIT, server).await.expect("serve did not return after shutdown").unwrap();
}
