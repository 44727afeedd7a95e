//! Connections between nodes, and from the CLI to its node.
//!
//! One TCP connection is: the subnet check and the connection limits on accept (before a
//! byte is read), the handshake (see `handshake`: proofs of the cluster key, each side's
//! identity key, then Noise keys for this connection), then bincode frames sealed by
//! [`FrameCodec`], each an `Envelope { id, body }`. Ids let one connection carry many
//! requests at once: the server handles each request in its own task and answers with the
//! request's id, in whatever order answers are ready.
//!
//! Who a peer is comes from the [`MemberDirectory`]: the handshake proves an identity key,
//! the directory (the node's Raft membership) says which member holds it, if any.
//!
//! The same requests are also served on a Unix socket ([`serve_local`],
//! [`Client::connect_local`]): no handshake, no key, the socket file's permissions are the
//! credential, and its peers are marked `local`.
//!
//! This module owns what both ends share: [`TransportConfig`], [`Envelope`], [`Peer`],
//! the [`Service`] a server runs, and [`TransportError`]. The ends are in:
//! - `codec`: [`FrameCodec`] (frames sealed into Noise messages) and the typed frame
//!   halves of a connection.
//! - `members`: [`MemberDirectory`], from a proven identity to a member.
//! - `limits`: [`ConnectionLimits`] and the server's accounting of connection slots.
//! - `server`: [`serve`] and [`serve_local`], the accept loops, stopped by a cancellation
//!   token.
//! - `client`: [`Client`], one authenticated connection, multiplexed.
//! - `pool`: [`ConnectionPool`], one `Client` per address, redialled when it breaks.
//!
//! This module moves `Request`s and `Response`s; it never looks inside them.

mod client;
mod codec;
mod limits;
pub(crate) mod members;
mod pool;
mod server;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::handshake::HandshakeError;
use crate::key::{Identity, Keyring};
use crate::proto::{Request, Response};
use crate::types::NodeId;

pub use client::Client;
pub use codec::{decode, encode, FrameCodec};
pub use limits::ConnectionLimits;
pub use members::{Member, MemberDirectory, NoMembers, StaticMembers};
pub use pool::ConnectionPool;
pub use server::{serve, serve_local};

/// Everything a node or the CLI needs to open or accept connections.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The cluster key both sides must hold (and the keys rotations replaced); shared, so
    /// a rotation applies to the server and to every new connection at once.
    pub key: Keyring,
    /// This node's identity key, proven to every peer in the handshake. `None` (the CLI,
    /// which is no member): a throwaway one for each connection.
    pub identity: Option<Identity>,
    /// Who holds which identity: the server names its peers from it, and a client checks
    /// that a member's address answers with that member's identity.
    pub members: Arc<dyn MemberDirectory>,
    /// Subnets whose addresses the server accepts; everyone else is refused before a byte
    /// is read. Empty means nobody.
    pub allow: Vec<IpNet>,
    /// Bound on connecting plus the whole handshake.
    pub handshake_timeout: Duration,
    /// How long the server waits for a client's first message: a socket that says
    /// nothing gives its slot back this soon.
    pub hello_timeout: Duration,
    /// Largest frame read or written after the handshake (a request or response).
    pub max_frame: usize,
    /// Connections the server holds at once, reserved slots included; past it (and past
    /// `limits`) new connections are closed at once.
    pub max_connections: usize,
    /// Limits per address and the slots kept for this machine and for members.
    pub limits: ConnectionLimits,
    /// How long the server keeps a connection made with a replaced key (it is served
    /// `FetchKey` only): a computer removed since cannot hold connection slots for ever.
    pub stale_session_life: Duration,
}

impl TransportConfig {
    /// Default for `max_frame`: room for a large snapshot chunk or append batch.
    pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

    /// A config with defaults: no identity (a throwaway one per connection), no members,
    /// loopback only, 5 s handshake of which 2 s for the client's hello, 64 MiB frames,
    /// 256 connections, `ConnectionLimits::default()`.
    pub fn new(key: impl Into<Keyring>) -> Self {
        TransportConfig {
            key: key.into(),
            identity: None,
            members: Arc::new(NoMembers),
            allow: vec![
                Ipv4Net::new(Ipv4Addr::LOCALHOST, 8).expect("valid prefix").trunc().into(),
                Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).expect("valid prefix").into(),
            ],
            handshake_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(2),
            max_frame: Self::DEFAULT_MAX_FRAME,
            max_connections: 256,
            limits: ConnectionLimits::default(),
            stale_session_life: Duration::from_secs(30),
        }
    }

    /// Whether the server lets `ip` in (an IPv4 peer on a dual-stack socket counts as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// One frame after the handshake: a request or response and the id that pairs them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Chosen by the client, unique per connection; the response carries it back.
    pub id: u64,
    /// The request or response.
    pub body: T,
}

/// Who sent a request, as the transport proved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The remote socket address (`None` on the local socket).
    pub addr: Option<SocketAddr>,
    /// The member holding the identity the peer proved, looked up in the membership for
    /// each request: `None` for the CLI, a computer not yet a member, a removed node, and
    /// the local socket. Never what the peer claims.
    pub node_id: Option<NodeId>,
    /// The public half of the identity key the peer proved in the handshake (`None` on
    /// the local socket, which has no handshake): a joiner can add itself only with this.
    pub identity: Option<[u8; 32]>,
    /// The request came over the local socket ([`serve_local`]): from this machine, by a
    /// user allowed to open the socket file.
    pub local: bool,
}

/// What a server does with requests: one call per request, concurrently.
pub trait Service: Send + Sync + 'static {
    /// Answers one request from `peer`.
    fn handle(&self, peer: Peer, req: Request) -> impl Future<Output = Response> + Send;
}

/// Why a call or a connection failed, worded for the user: which address, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No TCP connection (refused, no route, no answer) or no handshake in time.
    #[error("cannot reach {addr} ({reason}): is `raftshare run` started there?")]
    Unreachable { addr: String, reason: String },
    /// The address does not parse or resolve.
    #[error("{addr} is not an address to dial ({reason}): use host:port, e.g. 192.168.1.20:7070")]
    BadAddress { addr: String, reason: String },
    /// The server refused us before the handshake (the subnet check).
    #[error("{addr} refused the connection: {reason}")]
    Refused { addr: String, reason: String },
    /// The server rejected our handshake (another cluster, wrong key, version).
    #[error("{addr} rejected the handshake: {reason}")]
    Rejected { addr: String, reason: String },
    /// The handshake failed on our side (the server could not prove it holds the key, or spoke garbage).
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        addr: String,
        #[source]
        source: HandshakeError,
    },
    /// The address proved an identity other than the membership's for it: refused.
    #[error("{addr} is not the member the membership lists there: {source}")]
    WrongIdentity {
        addr: String,
        #[source]
        source: HandshakeError,
    },
    /// The address answers as another node than the one we meant to reach.
    #[error("{addr} is node {found:?}, not node {expected}: the address now belongs to another node (or to none)")]
    WrongNode { addr: String, expected: NodeId, found: Option<NodeId> },
    /// The call got no answer in time (the connection stays open).
    #[error("{addr} did not answer within {after:?}")]
    Timeout { addr: String, after: Duration },
    /// The connection broke; in-flight and later calls on it fail.
    #[error("connection to {addr} closed ({reason})")]
    Closed { addr: String, reason: String },
    /// The request does not fit in a frame (`max_frame`); nothing was sent.
    #[error("request to {addr} is too large to send ({reason}): raise max_frame or send less at once")]
    TooLarge { addr: String, reason: String },
    /// The peer answered, but with an error of its own.
    #[error("{addr} could not serve the request: {message}")]
    Remote { addr: String, message: String },
}

impl TransportError {
    /// True when no answer can come from this peer right now (it could not be reached or
    /// authenticated, or the connection broke): callers back off instead of retrying at once.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            TransportError::Unreachable { .. }
                | TransportError::BadAddress { .. }
                | TransportError::Refused { .. }
                | TransportError::Rejected { .. }
                | TransportError::Handshake { .. }
                | TransportError::WrongNode { .. }
                | TransportError::WrongIdentity { .. }
                | TransportError::Closed { .. }
        )
    }

    fn connect_failed(addr: &str, e: &io::Error) -> Self {
        let addr = addr.to_string();
        match e.kind() {
            io::ErrorKind::InvalidInput => TransportError::BadAddress { addr, reason: e.to_string() },
            io::ErrorKind::ConnectionRefused => {
                TransportError::Unreachable { addr, reason: "connection refused".into() }
            }
            io::ErrorKind::TimedOut => TransportError::Unreachable { addr, reason: "connection timed out".into() },
            _ => TransportError::Unreachable { addr, reason: e.to_string() },
        }
    }

    fn handshake_failed(addr: &str, e: HandshakeError) -> Self {
        let addr = addr.to_string();
        match e {
            HandshakeError::Refused(reason) => TransportError::Refused { addr, reason },
            HandshakeError::Rejected(reason) => TransportError::Rejected { addr, reason },
            HandshakeError::Timeout(after) => {
                TransportError::Unreachable { addr, reason: format!("no handshake within {after:?}") }
            }
            HandshakeError::Closed => {
                TransportError::Closed { addr, reason: "the peer closed it during the handshake".into() }
            }
            source @ HandshakeError::WrongIdentity { .. } => TransportError::WrongIdentity { addr, source },
            source => TransportError::Handshake { addr, source },
        }
    }
}
