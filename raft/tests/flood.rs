//! Idle sockets from the subnet cannot lock out the local CLI or a member: real sockets
//! on 127.0.0.1, flooded from other loopback addresses (Linux routes all of 127/8 to
//! this machine, so a test can connect from 127.0.0.2 and on).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::{config, Scripted, TestServer, WAIT};
use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::handshake;
use raftshare_raft::key::Identity;
use raftshare_raft::proto::{Request, Response};
use raftshare_raft::transport::{Client, Member, StaticMembers, TransportConfig};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `to` from the loopback address `127.0.0.<from>`.
async fn connect_from(from: u8, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, from)), 0)).unwrap();
    tokio::time::timeout(WAIT, socket.connect(to)).await.expect("connect in time").expect("connect")
}

/// Reads until the server closes the socket (bounded); how many bytes it sent first.
async fn bytes_before_close(stream: &mut TcpStream) -> usize {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    };
    tokio::time::timeout(WAIT, read_all).await.expect("the server closes the socket")
}

/// A server whose idle sockets are never timed out (so a flood holds what it gets) and
/// that lists a member at 127.0.0.3.
fn patient_server_config() -> TransportConfig {
    let mut cfg = config(1, Some(1));
    cfg.hello_timeout = Duration::from_secs(600);
    cfg.handshake_timeout = Duration::from_secs(600);
    cfg.members = Arc::new(StaticMembers(vec![Member {
        node_id: 3,
        addr: "127.0.0.3:7070".into(),
        identity: common::identity(3).public(),
    }]));
    cfg
}

async fn ping(client: &Client) {
    let answer = client.call(Request::Admin(AdminRequest::Ping), WAIT).await.unwrap();
    assert!(matches!(answer, Response::Admin(AdminResponse::Pong(_))), "{answer:?}");
}

/// The CLI's connection from 127.0.0.1, with a client-side deadline short of `WAIT`.
async fn cli(server: &TestServer) -> Client {
    let mut cfg = config(1, None);
    cfg.handshake_timeout = Duration::from_secs(5);
    Client::connect(&server.addr(), &cfg).await.unwrap_or_else(|e| panic!("the CLI is locked out: {e}"))
}

#[tokio::test]
async fn six_hundred_idle_sockets_from_one_address_hold_only_its_handshake_share() {
    let server = TestServer::start(patient_server_config(), Scripted::default()).await;
    let mut flood = Vec::new();
    for _ in 0..600 {
        flood.push(connect_from(2, server.addr).await);
    }
    // The CLI and a member get in at once.
    ping(&cli(&server).await).await;
    let mut io = handshake::framed(connect_from(3, server.addr).await);
    let member = handshake::connect(&mut io, &config(1, None).key, &common::identity(3), None, WAIT).await;
    member.expect("a member is let in during the flood");

    // The flood: 16 sockets got a hello and are held; every other was closed unread.
    let mut greeted = 0;
    for mut socket in flood.drain(16..) {
        assert_eq!(bytes_before_close(&mut socket).await, 0, "a socket over the limit was read from or answered");
    }
    for socket in &mut flood {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(WAIT, socket.read(&mut byte)).await.expect("the hello arrives");
        greeted += usize::from(read.unwrap() == 1);
    }
    assert_eq!(greeted, 16, "the sockets within the limit are greeted and held");
    server.stop().await;
}

#[tokio::test]
async fn a_flood_from_many_addresses_leaves_the_slots_kept_for_the_cli_and_members() {
    let server = TestServer::start(patient_server_config(), Scripted::default()).await;
    // 50 addresses with 12 sockets each: under each address's limit, over the 208 slots
    // everyone shares.
    let mut flood = Vec::new();
    for from in 10..60 {
        for _ in 0..12 {
            flood.push(connect_from(from, server.addr).await);
        }
    }
    // Another stranger: no slot, closed unread.
    let mut stranger = connect_from(4, server.addr).await;
    assert_eq!(bytes_before_close(&mut stranger).await, 0, "a stranger got a slot");
    // The CLI (127.0.0.1) and the member (127.0.0.3) use the slots kept for them.
    let clis = [cli(&server).await, cli(&server).await];
    for client in &clis {
        ping(client).await;
    }
    let mut io = handshake::framed(connect_from(3, server.addr).await);
    handshake::connect(&mut io, &config(1, None).key, &Identity::generate(), None, WAIT)
        .await
        .expect("a member's address is let in during the flood");
    drop(flood);
    server.stop().await;
}

#[tokio::test]
async fn a_socket_that_says_nothing_is_closed_after_the_hello_deadline() {
    let mut cfg = config(1, Some(1));
    cfg.hello_timeout = Duration::from_millis(200);
    cfg.handshake_timeout = Duration::from_secs(60);
    let server = TestServer::start(cfg, Scripted::default()).await;
    let started = std::time::Instant::now();
    let mut idle = connect_from(2, server.addr).await;
    assert!(bytes_before_close(&mut idle).await > 0, "it was greeted first");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "closed after {:?}, not at the hello deadline",
        started.elapsed()
    );
    server.stop().await;
}
