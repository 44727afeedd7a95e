//! Who a peer is, over real sockets on 127.0.0.1: the identity key each side proves in
//! the handshake, named through the member directory, never a claimed node id.

mod common;

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use common::{config, identity, WAIT};
use raftshare_raft::admin::AdminRequest;
use raftshare_raft::proto::{Request, Response};
use raftshare_raft::transport::{serve, Client, Member, MemberDirectory, Peer, Service, StaticMembers, TransportError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Answers every request with the peer as the transport named it.
struct WhoAmI;

impl Service for WhoAmI {
    async fn handle(&self, peer: Peer, _: Request) -> Response {
        Response::Error(format!(
            "node {:?} identity {:?} local {}",
            peer.node_id,
            peer.identity.map(hex::encode),
            peer.local
        ))
    }
}

/// A membership a test changes while connections stay open.
#[derive(Debug, Default)]
struct Changing(RwLock<StaticMembers>);

impl MemberDirectory for Changing {
    fn node_of(&self, identity: &[u8; 32]) -> Option<u64> {
        self.0.read().unwrap().node_of(identity)
    }
    fn identity_at(&self, addr: &str) -> Option<[u8; 32]> {
        self.0.read().unwrap().identity_at(addr)
    }
    fn is_member_ip(&self, ip: IpAddr) -> bool {
        self.0.read().unwrap().is_member_ip(ip)
    }
}

async fn ask(client: &Client) -> String {
    match client.call(Request::Admin(AdminRequest::Ping), WAIT).await.unwrap() {
        Response::Error(who) => who,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_peer_is_the_member_holding_its_proven_identity_and_no_one_once_removed() {
    let members = Arc::new(Changing::default());
    let mut server_cfg = config(1, Some(1));
    server_cfg.members = members.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, Arc::new(server_cfg), Arc::new(WhoAmI), shutdown.clone()));

    // Node 2 proves its identity; until the membership lists it, it is no one.
    let client = Client::connect(&addr, &config(1, Some(2))).await.unwrap();
    let proven = hex::encode(identity(2).public());
    assert_eq!(ask(&client).await, format!("node None identity Some({proven:?}) local false"));
    members.0.write().unwrap().0.push(Member {
        node_id: 2,
        addr: "127.0.0.9:1".into(),
        identity: identity(2).public(),
    });
    assert_eq!(ask(&client).await, format!("node Some(2) identity Some({proven:?}) local false"));
    // Removed: the same open connection is no one from its next request.
    members.0.write().unwrap().0.clear();
    assert_eq!(ask(&client).await, format!("node None identity Some({proven:?}) local false"));

    // The CLI proves a throwaway identity: a stranger, whatever it might claim.
    let cli = Client::connect(&addr, &config(1, None)).await.unwrap();
    assert!(ask(&cli).await.starts_with("node None identity Some("), "the CLI is no member");
    assert_ne!(cli.peer_identity(), None);
    shutdown.cancel();
    tokio::time::timeout(WAIT, server).await.expect("serve returns").unwrap();
}

#[tokio::test]
async fn a_member_address_answered_by_another_identity_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    // A key holder that is not node 3 listens where the membership lists node 3.
    let server = tokio::spawn(serve(listener, Arc::new(config(1, Some(4))), Arc::new(WhoAmI), shutdown.clone()));

    let dial_as_member = |listed: [u8; 32]| {
        let mut cfg = config(1, Some(5));
        cfg.members = Arc::new(StaticMembers(vec![Member { node_id: 3, addr: addr.clone(), identity: listed }]));
        cfg
    };
    let err = Client::connect(&addr, &dial_as_member(identity(3).public())).await.unwrap_err();
    assert!(matches!(err, TransportError::WrongIdentity { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&addr) && text.contains("membership lists identity"), "{text}");
    assert!(text.contains(&hex::encode(identity(3).public())) && text.contains(&hex::encode(identity(4).public())));
    assert!(err.is_unreachable(), "openraft backs off from it");

    // The identity the membership lists: let in, and named by the membership.
    let client = Client::connect(&addr, &dial_as_member(identity(4).public())).await.unwrap();
    assert_eq!(client.peer_node_id(), Some(3));
    assert_eq!(client.peer_identity(), Some(identity(4).public()));
    shutdown.cancel();
    tokio::time::timeout(WAIT, server).await.expect("serve returns").unwrap();
}
