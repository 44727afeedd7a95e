//! Connections between nodes, and from the CLI to its node.
//!
//! One TCP connection is: the subnet check on accept (before a byte is read), the
//! handshake (see `handshake`: proofs of the cluster key, then Noise keys for this
//! connection), then bincode frames sealed by `FrameCodec`, each an `Envelope { id, body }`.
//! Ids let one connection carry many requests at once: the server handles each request in
//! its own task and answers with the request's id, in whatever order answers are ready.
//!
//! - `serve`: the accept loop, bounded by a semaphore, stopped by a cancellation token.
//! - `Client`: one authenticated connection, multiplexed.
//! - `ConnectionPool`: one `Client` per address, redialled when it breaks.
//!
//! This module moves `Request`s and `Response`s; it never looks inside them.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bincode::Options;
use futures::{FutureExt, SinkExt, StreamExt};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio_serde::formats::Bincode;
use tokio_util::bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::codec::{Framed, FramedParts, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::handshake::{self, Cipher, HandshakeError};
use crate::key::Keyring;
use crate::proto::{Request, Response};
use crate::types::NodeId;

/// Requests one connection may have in progress on the server; past it the server stops
/// reading that connection until answers go out (backpressure, not unbounded tasks).
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;
/// Largest frame on a session made with a replaced key (a `FetchKey`, its answer): a
/// removed computer cannot make this node decode large requests.
const STALE_MAX_FRAME: usize = 4 << 10;

/// Requests a client may queue for its writer before `call` waits.
const CLIENT_QUEUE: usize = 1024;

/// Accept errors (out of file descriptors, mostly) are retried after a pause that
/// doubles from the first to the second value, so a persistent error does not spin.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Refused peers remembered so each is warned about once; past this many the memory is
/// cleared (and peers are warned about again), so a scan cannot grow it without bound.
const WARNED_CAPACITY: usize = 256;

/// A pooled connection that timed out a call and has been silent this long is presumed
/// dead (a peer gone without a FIN) and is redialled; shorter silences are slow peers.
const SILENCE_BEFORE_REDIAL: Duration = Duration::from_secs(2);

/// Everything a node or the CLI needs to open or accept connections.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The cluster key both sides must hold (and the keys rotations replaced); shared, so
    /// a rotation applies to the server and to every new connection at once.
    pub key: Keyring,
    /// This node's id, told to peers in the handshake (`None` for the CLI).
    pub node_id: Option<NodeId>,
    /// Subnets whose addresses the server accepts; everyone else is refused before a byte
    /// is read. Empty means nobody.
    pub allow: Vec<IpNet>,
    /// Bound on connecting plus the whole handshake.
    pub handshake_timeout: Duration,
    /// Largest frame read or written after the handshake (a request or response).
    pub max_frame: usize,
    /// Connections the server holds at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long the server keeps a connection made with a replaced key (it is served
    /// `FetchKey` only): a computer removed since cannot hold connection slots for ever.
    pub stale_session_life: Duration,
}

impl TransportConfig {
    /// Default for `max_frame`: room for a large snapshot chunk or append batch.
    pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

    /// A config with defaults: no node id, loopback only, 5 s handshake, 64 MiB frames, 256 connections.
    pub fn new(key: impl Into<Keyring>) -> Self {
        TransportConfig {
            key: key.into(),
            node_id: None,
            allow: vec![
                Ipv4Net::new(Ipv4Addr::LOCALHOST, 8).expect("valid prefix").trunc().into(),
                Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).expect("valid prefix").into(),
            ],
            handshake_timeout: Duration::from_secs(5),
            max_frame: Self::DEFAULT_MAX_FRAME,
            max_connections: 256,
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

/// Who sent a request: the connection's remote address and the node id it proved in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The remote socket address.
    pub addr: SocketAddr,
    /// The remote's node id (`None` for the CLI or a node not yet initialised).
    pub node_id: Option<NodeId>,
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
    /// The address answers as another node than the one we meant to reach.
    #[error("{addr} is node {found:?}, not node {expected}: the address now belongs to another node")]
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
            source => TransportError::Handshake { addr, source },
        }
    }
}

// ---------------------------------------------------------------------------------
// Frames

type WireOptions = bincode::config::WithOtherLimit<bincode::DefaultOptions, bincode::config::Bounded>;

/// The bincode options of every frame after the handshake. The limit makes an answer
/// too large for a frame fail in the encoder, before anything is written. Decoding needs
/// no limit: bincode reads frames from a slice and checks every length prefix against
/// the bytes actually there, so a frame never makes it allocate more than a frame's worth.
fn wire_options(max_frame: usize) -> WireOptions {
    bincode::DefaultOptions::new().with_limit(max_frame as u64)
}

/// Encodes a value exactly as the transport puts it in a frame (for tests and tools).
pub fn encode<T: Serialize>(value: &T, max_frame: usize) -> Result<Vec<u8>, bincode::Error> {
    wire_options(max_frame).serialize(value)
}

/// Decodes a frame's bytes exactly as the transport does (for tests and tools).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_frame: usize) -> Result<T, bincode::Error> {
    wire_options(max_frame).deserialize(bytes)
}

/// Seals frames into Noise messages and opens them again: the only codec after the handshake.
///
/// On the wire, a frame is one or more chunks, each a 4-byte big-endian length and one
/// sealed Noise message (at most 65535 bytes, so the chunk reader never buffers more).
/// Opened, the chunks of a frame hold the frame's length (4 bytes, big-endian) and then
/// its bytes; a frame always starts a new chunk. Noise numbers the chunks of each
/// direction, so a dropped, replayed, reordered or altered chunk does not open, and the
/// connection is closed.
///
/// `max_frame` is checked against the length in a frame's first chunk, and the frame's
/// buffer grows with the chunks that really arrive: a peer that announces a large frame
/// and sends little costs little.
#[derive(Debug)]
pub struct FrameCodec {
    cipher: Cipher,
    /// The number of the next chunk in our direction (writing) or the peer's (reading).
    nonce: u64,
    max_frame: usize,
    /// The frame being read: its announced length and the bytes so far.
    partial: Option<(usize, BytesMut)>,
    /// One chunk's plaintext, reused.
    scratch: Vec<u8>,
}

/// The bytes of a frame's length, in front of its first chunk's plaintext.
const FRAME_HEADER: usize = 4;

impl FrameCodec {
    /// A codec for one direction of a connection keyed by `cipher`; use one for reading
    /// and another for writing.
    pub fn new(cipher: Cipher, max_frame: usize) -> Self {
        FrameCodec { cipher, nonce: 0, max_frame: max_frame.min(u32::MAX as usize), partial: None, scratch: Vec::new() }
    }

    fn open_chunk(&mut self, sealed: &[u8]) -> io::Result<()> {
        self.scratch.resize(sealed.len().saturating_sub(Cipher::TAG_LEN), 0);
        let len = self.cipher.open(self.nonce, sealed, &mut self.scratch).map_err(|e| invalid_data(e.to_string()))?;
        self.nonce += 1;
        let mut plain = &self.scratch[..len];
        let (want, buf) = match &mut self.partial {
            Some(partial) => partial,
            None => {
                let Some((header, rest)) = plain.split_first_chunk::<FRAME_HEADER>() else {
                    return Err(invalid_data("a frame's first chunk is shorter than its length".into()));
                };
                let want = u32::from_be_bytes(*header) as usize;
                if want > self.max_frame {
                    return Err(invalid_data(format!(
                        "a frame of {want} bytes is over this node's limit of {} bytes",
                        self.max_frame
                    )));
                }
                plain = rest;
                self.partial.insert((want, BytesMut::with_capacity(want.min(Cipher::MAX_PLAINTEXT))))
            }
        };
        if plain.len() > *want - buf.len() {
            return Err(invalid_data("a chunk runs past the end of its frame".into()));
        }
        buf.extend_from_slice(plain);
        Ok(())
    }
}

/// The next whole sealed chunk at the front of `src`, once it has all arrived. Nothing is
/// taken from `src` before then, so a stream that ends inside a chunk, even right after
/// its length, ends with bytes left over: an error, not a clean close (tokio's
/// `LengthDelimitedCodec` kept a length it had read to itself, and a stream cut just
/// after one looked cleanly closed).
fn next_chunk(src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
    let Some(head) = src.first_chunk::<4>() else { return Ok(None) };
    let len = u32::from_be_bytes(*head) as usize;
    if len > Cipher::MAX_SEALED {
        return Err(invalid_data(format!("a chunk of {len} bytes is over the limit of {} bytes", Cipher::MAX_SEALED)));
    }
    let whole = 4 + len;
    if src.len() < whole {
        src.reserve(whole - src.len());
        return Ok(None);
    }
    let mut chunk = src.split_to(whole);
    Ok(Some(chunk.split_off(4)))
}

fn invalid_data(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        loop {
            if let Some((want, buf)) = &self.partial {
                if buf.len() == *want {
                    return Ok(self.partial.take().map(|(_, buf)| buf));
                }
            }
            let Some(sealed) = next_chunk(src)? else { return Ok(None) };
            self.open_chunk(&sealed)?;
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if !src.is_empty() => Err(invalid_data("the stream ended inside a chunk (bytes remaining)".into())),
            None if self.partial.is_some() => Err(invalid_data("the stream ended inside a frame".into())),
            None => Ok(None),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        if frame.len() > self.max_frame {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a frame of {} bytes is over the limit of {} bytes", frame.len(), self.max_frame),
            ));
        }
        let mut rest = &frame[..];
        let mut header = Some((frame.len() as u32).to_be_bytes());
        // A frame always has a first chunk, even when empty: it carries the length.
        while header.is_some() || !rest.is_empty() {
            self.scratch.clear();
            if let Some(header) = header.take() {
                self.scratch.extend_from_slice(&header);
            }
            let take = rest.len().min(Cipher::MAX_PLAINTEXT - self.scratch.len());
            self.scratch.extend_from_slice(&rest[..take]);
            rest = &rest[take..];

            let sealed_len = self.scratch.len() + Cipher::TAG_LEN;
            dst.reserve(4 + sealed_len);
            dst.put_u32(sealed_len as u32);
            let start = dst.len();
            dst.resize(start + sealed_len, 0);
            self.cipher
                .seal(self.nonce, &self.scratch, &mut dst[start..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            self.nonce += 1;
        }
        Ok(())
    }
}

type FrameReader<T> =
    tokio_serde::Framed<Framed<OwnedReadHalf, FrameCodec>, Envelope<T>, (), Bincode<Envelope<T>, (), WireOptions>>;

type FrameWriter<T> = tokio_serde::Framed<
    FramedWrite<OwnedWriteHalf, FrameCodec>,
    (),
    Envelope<T>,
    Bincode<(), Envelope<T>, WireOptions>,
>;

/// Turns a handshaken connection into typed frame halves, so reading and writing never
/// wait on each other.
fn frames<In, Out>(
    framed: Framed<TcpStream, LengthDelimitedCodec>,
    cipher: Cipher,
    max_frame: usize,
) -> (FrameReader<In>, FrameWriter<Out>)
where
    In: DeserializeOwned,
    Out: Serialize,
{
    let parts = framed.into_parts();
    let (read, write) = parts.io.into_split();
    // Bytes that arrived behind the last handshake frame belong to the first request: the
    // client sends it right behind `Finish`. Handed over as parts, they are decoded
    // before the socket is read again (a plain `FramedRead` would wait for more bytes).
    let mut read = FramedParts::new::<Bytes>(read, FrameCodec::new(cipher.clone(), max_frame));
    read.read_buf = parts.read_buf;
    let read = Framed::from_parts(read);
    let write = FramedWrite::new(write, FrameCodec::new(cipher, max_frame));
    (
        tokio_serde::Framed::new(read, Bincode::from(wire_options(max_frame))),
        tokio_serde::Framed::new(write, Bincode::from(wire_options(max_frame))),
    )
}

/// A value that could not be framed (too large, unencodable) fails in the codec before
/// anything is written, so the connection is still good: tell it from a socket error.
/// (The codec's own length check never fires first: bincode's limit is the frame limit.)
fn is_encode_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<bincode::Error>())
}

// ---------------------------------------------------------------------------------
// Server

/// Accepts connections on `listener` and serves their requests with `service` until
/// `shutdown` is cancelled; returns once every connection task has ended.
pub async fn serve(
    listener: TcpListener,
    cfg: Arc<TransportConfig>,
    service: Arc<impl Service>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let mut connections = JoinSet::new();
    // A refused or misconfigured peer retries every few hundred milliseconds: warn once
    // per address and reason, not once per attempt.
    let warned = Arc::new(WarnedOnce::default());
    let mut backoff = ACCEPT_BACKOFF.0;

    loop {
        // Take a slot before accepting: when full, peers wait in the kernel's queue
        // rather than costing us a task and buffers each.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.cancelled() => break,
        };
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = ACCEPT_BACKOFF.0;
                    accepted
                }
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}; retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.cancelled() => break,
        };

        let ip = addr.ip().to_canonical();
        if !cfg.allows(ip) {
            if warned.first(ip, "subnet") {
                tracing::warn!(
                    peer = %ip,
                    allowed = ?cfg.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "refused connections from {ip}: not in this node's allowed subnets; add its subnet to `allow` in this node's config to let it in"
                );
            }
            let reason = format!("your address {ip} is not in this node's allowed subnets");
            let timeout = cfg.handshake_timeout;
            connections.spawn(async move {
                let _permit = permit;
                let mut io = handshake::framed(stream);
                if let Err(e) = handshake::refuse(&mut io, &reason, timeout).await {
                    tracing::debug!(%addr, "telling a refused peer why failed: {e}");
                }
            });
            continue;
        }

        let (cfg, service, shutdown, warned) = (cfg.clone(), service.clone(), shutdown.clone(), warned.clone());
        connections.spawn(async move {
            let _permit = permit;
            serve_connection(stream, addr, cfg, service, shutdown, &warned).await;
        });
    }

    // Connection tasks watch the same token; waiting for them means that once `serve`
    // returns no connection is left open.
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<S: Service>(
    stream: TcpStream,
    addr: SocketAddr,
    cfg: Arc<TransportConfig>,
    service: Arc<S>,
    shutdown: CancellationToken,
    warned: &WarnedOnce,
) {
    // Small frames (votes, heartbeats) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mut io = handshake::framed(stream);
    let handshake = handshake::accept(&mut io, &cfg.key, cfg.node_id, cfg.handshake_timeout);
    let epoch = cfg.key.epoch();
    let (node_id, cipher, stale) = tokio::select! {
        result = handshake => match result {
            Ok(session) => (session.peer, session.cipher, session.stale),
            // A peer configured for another cluster or version: its user needs to know.
            Err(e @ (HandshakeError::NotRaftshare
            | HandshakeError::Version { .. }
            | HandshakeError::AnotherCluster { .. }
            | HandshakeError::WrongKey)) if warned.first(addr.ip().to_canonical(), kind_of(&e)) => {
                tracing::warn!(%addr, "handshake from {addr} failed: {e}");
                return;
            }
            Err(e) => {
                tracing::debug!(%addr, "handshake from {addr} failed: {e}");
                return;
            }
        },
        _ = shutdown.cancelled() => return,
    };
    let peer = Peer { addr, node_id };
    tracing::debug!(?peer, "connection authenticated");

    // A session on a replaced key is served `FetchKey` only: small frames, for a while.
    let max_frame = if stale { STALE_MAX_FRAME.min(cfg.max_frame) } else { cfg.max_frame };
    let ends = tokio::time::Instant::now() + cfg.stale_session_life;
    let (mut reader, mut writer) = frames::<Request, Response>(io, cipher, max_frame);
    let (answers_tx, mut answers) = mpsc::channel::<Envelope<Response>>(MAX_IN_FLIGHT_PER_CONNECTION);
    // Owned here: when the connection ends, requests still in progress are dropped,
    // since their answers have nowhere to go.
    let mut handlers = JoinSet::new();

    let why = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break "shutting down".to_string(),
            _ = tokio::time::sleep_until(ends), if stale => break "a session on a replaced key ends".to_string(),
            frame = reader.next(), if handlers.len() < MAX_IN_FLIGHT_PER_CONNECTION => match frame {
                Some(Ok(Envelope { id, body })) => {
                    // A peer that proved a replaced key (or a session from before the key
                    // changed) is served its sealed new key and nothing else.
                    if (stale || cfg.key.epoch() != epoch) && !matches!(body, Request::FetchKey) {
                        // Not awaited: only this loop empties the channel. A peer whose
                        // answers pile up unread is dropped.
                        match answers_tx.try_send(Envelope { id, body: Response::KeyRotated }) {
                            Ok(()) => continue,
                            Err(_) => break "too many answers waiting to be read".to_string(),
                        }
                    }
                    let (service, answers_tx) = (service.clone(), answers_tx.clone());
                    handlers.spawn(async move {
                        let body = AssertUnwindSafe(service.handle(peer, body))
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|_| {
                                Response::Error("the node failed while handling this request (a bug: see its log)".into())
                            });
                        let _ = answers_tx.send(Envelope { id, body }).await;
                    });
                }
                // An oversized frame or undecodable bytes: the stream cannot be trusted
                // to be in step any more.
                Some(Err(e)) => break format!("bad frame: {e}"),
                None => break "closed by the peer".to_string(),
            },
            Some(answer) = answers.recv() => {
                // A peer that stops reading must not hold up shutdown.
                let written = tokio::select! {
                    written = write_answer(&mut writer, answer) => written,
                    _ = shutdown.cancelled() => break "shutting down".to_string(),
                };
                if let Err(e) = written {
                    break format!("write failed: {e}");
                }
            }
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
        }
    };
    tracing::debug!(?peer, "connection ended: {why}");
}

fn kind_of(e: &HandshakeError) -> &'static str {
    match e {
        HandshakeError::NotRaftshare => "not raftshare",
        HandshakeError::Version { .. } => "version",
        HandshakeError::AnotherCluster { .. } => "another cluster",
        HandshakeError::WrongKey => "wrong key",
        _ => "other",
    }
}

/// Which (address, reason) pairs were warned about already.
#[derive(Default)]
struct WarnedOnce(Mutex<HashSet<(IpAddr, &'static str)>>);

impl WarnedOnce {
    /// True the first time `ip` is seen with `reason` (and again after the memory was cleared).
    fn first(&self, ip: IpAddr, reason: &'static str) -> bool {
        let mut seen = self.0.lock().expect("warned lock");
        if seen.len() >= WARNED_CAPACITY {
            seen.clear();
        }
        seen.insert((ip, reason))
    }
}

async fn write_answer(writer: &mut FrameWriter<Response>, answer: Envelope<Response>) -> io::Result<()> {
    let id = answer.id;
    match writer.send(answer).await {
        Err(e) if is_encode_error(&e) => {
            // Tell the caller rather than leave it waiting for its timeout.
            let body = Response::Error(format!(
                "the answer is too large to send ({e}): raise max_frame or ask for less at once"
            ));
            writer.send(Envelope { id, body }).await
        }
        other => other,
    }
}

// ---------------------------------------------------------------------------------
// Client

/// One authenticated, multiplexed connection to a node. Cheap to clone; the connection
/// and its tasks end when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    shared: Arc<ClientShared>,
    outgoing: mpsc::Sender<Envelope<Request>>,
    next_id: AtomicU64,
    peer_node_id: Option<NodeId>,
    /// The key rotation this connection was authenticated under.
    epoch: u64,
    /// The server holds a newer key than ours: only `FetchKey` is served.
    stale: bool,
    tasks: [AbortHandle; 2],
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        // Nobody is left to wait for an answer. The reader waits on the socket and the
        // writer may be stuck on a peer that stopped reading: end both, which drops the
        // socket's halves and closes it.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the caller side and the reader and writer tasks share.
struct ClientShared {
    addr: String,
    state: Mutex<ClientState>,
    created: Instant,
    /// Milliseconds after `created` when the last frame arrived (for the pool's liveness guess).
    last_frame_ms: AtomicU64,
}

#[derive(Default)]
struct ClientState {
    /// Set once, when the connection breaks: why.
    closed: Option<String>,
    pending: HashMap<u64, oneshot::Sender<Result<Response, TransportError>>>,
}

impl ClientShared {
    fn closed_error(&self, reason: &str) -> TransportError {
        TransportError::Closed { addr: self.addr.clone(), reason: reason.to_string() }
    }

    /// Registers a call, unless the connection is closed: checked under the same lock
    /// that `close` drains under, so no call can wait on a dead connection.
    fn register(&self, id: u64) -> Result<oneshot::Receiver<Result<Response, TransportError>>, TransportError> {
        let mut state = self.state.lock().expect("client state lock");
        if let Some(reason) = &state.closed {
            return Err(self.closed_error(reason));
        }
        let (tx, rx) = oneshot::channel();
        state.pending.insert(id, tx);
        Ok(rx)
    }

    fn answer(&self, id: u64, result: Result<Response, TransportError>) {
        let waiter = self.state.lock().expect("client state lock").pending.remove(&id);
        // No waiter: the call timed out or was dropped; its late answer is discarded.
        if let Some(waiter) = waiter {
            let _ = waiter.send(result);
        }
    }

    fn forget(&self, id: u64) {
        self.state.lock().expect("client state lock").pending.remove(&id);
    }

    fn close(&self, reason: String) {
        let pending = {
            let mut state = self.state.lock().expect("client state lock");
            if state.closed.is_none() {
                tracing::debug!(addr = %self.addr, "connection closed: {reason}");
                state.closed = Some(reason.clone());
            }
            std::mem::take(&mut state.pending)
        };
        for (_, waiter) in pending {
            let _ = waiter.send(Err(self.closed_error(&reason)));
        }
    }

    fn is_closed(&self) -> bool {
        self.state.lock().expect("client state lock").closed.is_some()
    }

    fn saw_frame(&self) {
        self.last_frame_ms.store(self.created.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_frame_ms.load(Ordering::Relaxed));
        self.created.elapsed().saturating_sub(last)
    }
}

/// Removes a call's entry if the call ends without an answer (timeout, or the caller
/// dropped it), so abandoned calls do not pile up.
struct Pending<'a> {
    shared: &'a ClientShared,
    id: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.id);
    }
}

impl Client {
    /// Dials `addr` (`host:port`) and runs the handshake, both within `cfg.handshake_timeout` each.
    pub async fn connect(addr: &str, cfg: &TransportConfig) -> Result<Client, TransportError> {
        let stream = match tokio::time::timeout(cfg.handshake_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(TransportError::connect_failed(addr, &e)),
            Err(_) => {
                return Err(TransportError::Unreachable {
                    addr: addr.to_string(),
                    reason: format!("no answer within {:?}", cfg.handshake_timeout),
                })
            }
        };
        let _ = stream.set_nodelay(true);
        let mut io = handshake::framed(stream);
        let epoch = cfg.key.epoch();
        let session = handshake::connect(&mut io, &cfg.key, cfg.node_id, cfg.handshake_timeout)
            .await
            .map_err(|e| TransportError::handshake_failed(addr, e))?;
        let stale = session.stale;
        let peer_node_id = session.peer;

        let (reader, writer) = frames::<Response, Request>(io, session.cipher, cfg.max_frame);
        let shared = Arc::new(ClientShared {
            addr: addr.to_string(),
            state: Mutex::new(ClientState::default()),
            created: Instant::now(),
            last_frame_ms: AtomicU64::new(0),
        });
        let (outgoing, queue) = mpsc::channel(CLIENT_QUEUE);
        let tasks = [
            tokio::spawn(write_requests(writer, queue, shared.clone())).abort_handle(),
            tokio::spawn(read_answers(reader, shared.clone())).abort_handle(),
        ];
        Ok(Client {
            inner: Arc::new(ClientInner {
                shared,
                outgoing,
                next_id: AtomicU64::new(0),
                peer_node_id,
                epoch,
                stale,
                tasks,
            }),
        })
    }

    /// Sends `req` and waits at most `timeout` for its answer. Many calls may be in flight at once.
    pub async fn call(&self, req: Request, timeout: Duration) -> Result<Response, TransportError> {
        let shared = &self.inner.shared;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let answer = shared.register(id)?;
        let _pending = Pending { shared, id };
        let exchange = async {
            self.inner
                .outgoing
                .send(Envelope { id, body: req })
                .await
                .map_err(|_| shared.closed_error("the writer stopped"))?;
            answer.await.unwrap_or_else(|_| Err(shared.closed_error("the reader stopped")))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(TransportError::Timeout { addr: shared.addr.clone(), after: timeout }))
    }

    /// True once the connection broke: every call fails from then on; dial a new one.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.is_closed() || self.inner.outgoing.is_closed()
    }

    /// The address this client dialled.
    pub fn addr(&self) -> &str {
        &self.inner.shared.addr
    }

    /// Whether the server holds a newer cluster key than this side's: it answers
    /// `KeyRotated` to everything but `FetchKey`.
    pub fn is_stale(&self) -> bool {
        self.inner.stale
    }

    /// The node id the server proved in the handshake (`None`: not initialised yet).
    pub fn peer_node_id(&self) -> Option<NodeId> {
        self.inner.peer_node_id
    }

    fn same_connection(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.shared.addr)
            .field("peer_node_id", &self.inner.peer_node_id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

async fn write_requests(
    mut writer: FrameWriter<Request>,
    mut queue: mpsc::Receiver<Envelope<Request>>,
    shared: Arc<ClientShared>,
) {
    while let Some(request) = queue.recv().await {
        let id = request.id;
        match writer.feed(request).await {
            Ok(()) => {}
            Err(e) if is_encode_error(&e) => {
                let addr = shared.addr.clone();
                shared.answer(id, Err(TransportError::TooLarge { addr, reason: e.to_string() }));
            }
            Err(e) => return shared.close(format!("write failed: {e}")),
        }
        // Flush only when no other request waits: concurrent calls share one write.
        if queue.is_empty() {
            if let Err(e) = writer.flush().await {
                return shared.close(format!("write failed: {e}"));
            }
        }
    }
    // The client is going away: close our side so the server sees EOF (if the task is
    // aborted first, dropping the write half does the same).
    let _ = writer.close().await;
}

async fn read_answers(mut reader: FrameReader<Response>, shared: Arc<ClientShared>) {
    let reason = loop {
        match reader.next().await {
            Some(Ok(Envelope { id, body })) => {
                shared.saw_frame();
                shared.answer(id, Ok(body));
            }
            Some(Err(e)) => break format!("bad frame or read failure: {e}"),
            None => break "closed by the peer".to_string(),
        }
    };
    shared.close(reason);
}

// ---------------------------------------------------------------------------------
// Pool

/// One cached `Client` per address, dialled on first use and redialled when closed.
/// Clones share the cache.
#[derive(Clone)]
pub struct ConnectionPool {
    cfg: Arc<TransportConfig>,
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    /// Addresses cut off by a test's fault hook (see `cut_off`); empty in normal runs.
    cut: Arc<Mutex<HashSet<String>>>,
}

/// The connection to one address; the async lock makes concurrent callers share one dial.
type Slot = Arc<tokio::sync::Mutex<Option<Client>>>;

impl ConnectionPool {
    /// An empty pool dialling with `cfg`.
    pub fn new(cfg: Arc<TransportConfig>) -> Self {
        ConnectionPool { cfg, slots: Arc::default(), cut: Arc::default() }
    }

    /// Fault injection for partition tests: calls to these addresses fail as if the
    /// network dropped them, and their cached connections are closed. An empty set heals.
    /// The node only calls this when started with its explicit fault-hook flag.
    pub fn cut_off(&self, addrs: HashSet<String>) {
        for addr in &addrs {
            self.forget(addr);
        }
        *self.cut.lock().unwrap_or_else(|p| p.into_inner()) = addrs;
    }

    fn is_cut(&self, addr: &str) -> bool {
        self.cut.lock().unwrap_or_else(|p| p.into_inner()).contains(addr)
    }

    /// The config the pool dials with.
    pub fn config(&self) -> &Arc<TransportConfig> {
        &self.cfg
    }

    /// Sends `req` to `addr` over the cached connection (dialling if needed); dialling
    /// and answering together take at most `timeout`.
    pub async fn call(&self, addr: &str, req: Request, timeout: Duration) -> Result<Response, TransportError> {
        self.call_node(addr, None, req, timeout).await
    }

    /// Like `call`, but fails with `WrongNode` unless the server at `addr` proved to be
    /// `node_id` (`None`: anyone): an address can be reused by another node.
    pub async fn call_node(
        &self,
        addr: &str,
        node_id: Option<NodeId>,
        req: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        if self.is_cut(addr) {
            return Err(TransportError::Unreachable {
                addr: addr.to_string(),
                reason: "cut off by the fault hook".to_string(),
            });
        }
        let started = Instant::now();
        let client = match tokio::time::timeout(timeout, self.client(addr)).await {
            Ok(client) => client?,
            Err(_) => {
                return Err(TransportError::Unreachable {
                    addr: addr.to_string(),
                    reason: format!("no handshake within {timeout:?}"),
                })
            }
        };
        if let Some(expected) = node_id {
            if client.peer_node_id() != Some(expected) {
                return Err(TransportError::WrongNode {
                    addr: addr.to_string(),
                    expected,
                    found: client.peer_node_id(),
                });
            }
        }
        let left = timeout.saturating_sub(started.elapsed());
        match client.call(req, left).await {
            Err(TransportError::Timeout { addr, .. }) => {
                if client.inner.shared.silent_for() >= SILENCE_BEFORE_REDIAL.max(timeout) {
                    self.evict(&addr, &client).await;
                }
                Err(TransportError::Timeout { addr, after: timeout })
            }
            Err(e) => {
                if client.is_closed() {
                    self.evict(addr, &client).await;
                }
                Err(e)
            }
            ok => ok,
        }
    }

    /// The cached connection to `addr`, dialled now if there is none or it broke.
    pub async fn client(&self, addr: &str) -> Result<Client, TransportError> {
        let slot = self.slot(addr);
        // One dial per address at a time: concurrent callers wait for it and share it.
        let mut cached = slot.lock().await;
        // A connection made under a key that was rotated since is dialled again.
        let epoch = self.cfg.key.epoch();
        if let Some(client) = cached.as_ref().filter(|c| !c.is_closed() && c.inner.epoch == epoch) {
            return Ok(client.clone());
        }
        *cached = None;
        let client = Client::connect(addr, &self.cfg).await?;
        *cached = Some(client.clone());
        Ok(client)
    }

    /// Drops the cached connection to `addr` (say, after its node left the cluster).
    pub fn forget(&self, addr: &str) {
        self.slots.lock().expect("pool lock").remove(addr);
    }

    fn slot(&self, addr: &str) -> Slot {
        self.slots.lock().expect("pool lock").entry(addr.to_string()).or_default().clone()
    }

    async fn evict(&self, addr: &str, client: &Client) {
        let slot = self.slot(addr);
        let mut cached = slot.lock().await;
        // Only if nobody replaced it meanwhile.
        if cached.as_ref().is_some_and(|c| c.same_connection(client)) {
            *cached = None;
        }
    }
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addrs: Vec<String> = self.slots.lock().expect("pool lock").keys().cloned().collect();
        f.debug_struct("ConnectionPool").field("addrs", &addrs).finish()
    }
}
