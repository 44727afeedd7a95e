//! The server end: [`serve`] accepts TCP connections (the connection limits and the
//! subnet check before a byte is read), runs the handshake, and hands each request to the
//! [`Service`] in its own task, writing answers back as they are ready. [`serve_local`]
//! does the same on a Unix socket, without handshake.
//!
//! It does not know what a request means (the `Service` does), how frames are sealed
//! (`codec`) nor who holds which identity (the `MemberDirectory`).

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, SinkExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::bytes::BytesMut;
use tokio_util::sync::CancellationToken;

use super::codec::{frames, is_encode_error, tcp_halves, FrameReader, FrameWriter, Incoming};
use super::limits::{Reserve, Slot, Slots};
use super::{Envelope, Peer, Service, TransportConfig};
use crate::handshake::{self, Deadlines, HandshakeError, PROTOCOL_VERSION};
use crate::key::Identity;
use crate::proto::{Request, Response};

/// Requests one connection may have in progress on the server; past it the server stops
/// reading that connection until answers go out (backpressure, not unbounded tasks).
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;
/// Largest frame on a session made with a replaced key (a `FetchKey`, its answer): a
/// removed computer cannot make this node decode large requests.
const STALE_MAX_FRAME: usize = 4 << 10;

/// Accept errors (out of file descriptors, mostly) are retried after a pause that
/// doubles from the first to the second value, so a persistent error does not spin.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Refused peers remembered so each is warned about once; past this many the memory is
/// cleared (and peers are warned about again), so a scan cannot grow it without bound.
const WARNED_CAPACITY: usize = 256;

/// Connections the local socket holds at once; more wait in the kernel's queue. Only
/// users allowed to open the socket file get there.
const LOCAL_MAX_CONNECTIONS: usize = 64;

/// What the node writes first on its local socket: "raftshare local", then the protocol
/// version (big-endian), so a CLI of another build is told so rather than misread.
const LOCAL_MAGIC: [u8; 4] = *b"RSHL";

/// Accepts connections on `listener` and serves their requests with `service` until
/// `shutdown` is cancelled; returns once every connection task has ended.
///
/// Each peer is named by the identity it proved, through `cfg.members`, afresh for each
/// request: a node removed from the membership is `node_id: None` from its next request.
pub async fn serve(
    listener: TcpListener,
    cfg: Arc<TransportConfig>,
    service: Arc<impl Service>,
    shutdown: CancellationToken,
) {
    let slots = Slots::new(cfg.max_connections, cfg.limits);
    // A server with no identity of its own (a test, a tool) still proves one.
    let identity = Arc::new(cfg.identity.clone().unwrap_or_else(Identity::generate));
    let mut connections = JoinSet::new();
    // A refused or misconfigured peer retries every few hundred milliseconds: warn once
    // per address and reason, not once per attempt.
    let warned = Arc::new(WarnedOnce::default());
    let mut backoff = ACCEPT_BACKOFF.0;

    loop {
        // Accepted at once, even when full: only its address tells whether a connection
        // may have a slot, and one without is closed before a byte is read.
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = ACCEPT_BACKOFF.0;
                    accepted
                }
                Err(e) => {
                    if !waited_after_accept_error("a connection", &e, &mut backoff, &shutdown).await {
                        break;
                    }
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.cancelled() => break,
        };

        let ip = addr.ip().to_canonical();
        let slot = match slots.admit(ip, Reserve::of(ip, || cfg.members.is_member_ip(ip))) {
            Ok(slot) => slot,
            Err(full) => {
                if warned.first(ip, full.why()) {
                    tracing::warn!(peer = %ip, "closed connections from {ip} unread: {}", full.why());
                }
                continue;
            }
        };
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
                let _slot = slot;
                let mut io = handshake::framed(stream);
                if let Err(e) = handshake::refuse(&mut io, &reason, timeout).await {
                    tracing::debug!(%addr, "telling a refused peer why failed: {e}");
                }
            });
            continue;
        }

        let (cfg, service, shutdown, warned, identity) =
            (cfg.clone(), service.clone(), shutdown.clone(), warned.clone(), identity.clone());
        connections.spawn(async move {
            serve_connection(stream, addr, slot, &identity, cfg, service, shutdown, &warned).await;
        });
    }

    // Connection tasks watch the same token; waiting for them means that once `serve`
    // returns no connection is left open.
    while connections.join_next().await.is_some() {}
}

/// Serves the same requests on a Unix socket until `shutdown` is cancelled, for the CLI
/// of this machine: no handshake and no key, the socket file's permissions (0600, set by
/// whoever binds it) are the credential. Its peers are `local: true`, with no address,
/// identity or node id. Returns once every connection task has ended.
pub async fn serve_local(
    listener: UnixListener,
    cfg: Arc<TransportConfig>,
    service: Arc<impl Service>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(LOCAL_MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    stream
                }
                Err(e) => {
                    if !waited_after_accept_error("a local connection", &e, &mut backoff, &shutdown).await {
                        break;
                    }
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.cancelled() => break,
        };
        let (cfg, service, shutdown) = (cfg.clone(), service.clone(), shutdown.clone());
        connections.spawn(async move {
            let _permit = permit;
            serve_local_connection(stream, cfg, service, shutdown).await;
        });
    }
    while connections.join_next().await.is_some() {}
}

async fn serve_local_connection<S: Service>(
    mut stream: UnixStream,
    cfg: Arc<TransportConfig>,
    service: Arc<S>,
    shutdown: CancellationToken,
) {
    let mut greeting = LOCAL_MAGIC.to_vec();
    greeting.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    match tokio::time::timeout(cfg.handshake_timeout, stream.write_all(&greeting)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return tracing::debug!("greeting a local peer failed: {e}"),
        Err(_) => return tracing::debug!("a local peer read nothing within {:?}", cfg.handshake_timeout),
    }
    let (read, write) = stream.into_split();
    let (reader, writer) =
        frames::<Request, Response>(Box::new(read), Box::new(write), BytesMut::new(), None, cfg.max_frame);
    let peer = || Peer { addr: None, node_id: None, identity: None, local: true };
    serve_requests(reader, writer, peer, None, &cfg, service, shutdown).await;
}

/// Client side of the local socket's greeting: the node's magic and protocol version.
pub(super) async fn read_local_greeting(stream: &mut UnixStream, timeout: Duration) -> Result<(), HandshakeError> {
    let mut greeting = [0u8; 6];
    match tokio::time::timeout(timeout, stream.read_exact(&mut greeting)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(HandshakeError::Closed),
        Ok(Err(e)) => return Err(HandshakeError::Io(e)),
        Err(_) => return Err(HandshakeError::Timeout(timeout)),
    }
    if greeting[..4] != LOCAL_MAGIC {
        return Err(HandshakeError::NotRaftshare);
    }
    let theirs = u16::from_be_bytes([greeting[4], greeting[5]]);
    if theirs != PROTOCOL_VERSION {
        return Err(HandshakeError::Version { ours: PROTOCOL_VERSION, theirs });
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // one connection's parts, each from a different owner
async fn serve_connection<S: Service>(
    stream: TcpStream,
    addr: SocketAddr,
    mut slot: Slot,
    identity: &Identity,
    cfg: Arc<TransportConfig>,
    service: Arc<S>,
    shutdown: CancellationToken,
    warned: &WarnedOnce,
) {
    // Small frames (votes, heartbeats) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mut io = handshake::framed(stream);
    let deadlines = Deadlines { hello: cfg.hello_timeout.min(cfg.handshake_timeout), whole: cfg.handshake_timeout };
    let handshake = handshake::accept(&mut io, &cfg.key, identity, deadlines);
    let epoch = cfg.key.epoch();
    let session = tokio::select! {
        result = handshake => match result {
            Ok(session) => session,
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
    slot.authenticated();
    let proven = session.peer_identity;
    let members = cfg.members.clone();
    let peer =
        move || Peer { addr: Some(addr), node_id: members.node_of(&proven), identity: Some(proven), local: false };
    tracing::debug!(peer = ?peer(), "connection authenticated");

    // A session on a replaced key is served `FetchKey` only: small frames.
    let max_frame = if session.stale { STALE_MAX_FRAME.min(cfg.max_frame) } else { cfg.max_frame };
    let (read, write, read_buf) = tcp_halves(io);
    let (reader, writer) = frames::<Request, Response>(read, write, read_buf, Some(session.cipher), max_frame);
    serve_requests(reader, writer, peer, Some((epoch, session.stale)), &cfg, service, shutdown).await;
}

/// Serves one connection's requests until it ends. `key` is the key rotation the
/// connection was authenticated under and whether that key was a replaced one (`None`
/// on the local socket, which proves no key): such a session is served `FetchKey` only,
/// for `stale_session_life`.
async fn serve_requests<S: Service>(
    mut reader: FrameReader<Request>,
    mut writer: FrameWriter<Response>,
    peer: impl Fn() -> Peer,
    key: Option<(u64, bool)>,
    cfg: &TransportConfig,
    service: Arc<S>,
    shutdown: CancellationToken,
) {
    let stale = key.is_some_and(|(_, stale)| stale);
    let ends = tokio::time::Instant::now() + cfg.stale_session_life;
    let (answers_tx, mut answers) = mpsc::channel::<Envelope<Response>>(MAX_IN_FLIGHT_PER_CONNECTION);
    // Owned here: when the connection ends, requests still in progress are dropped,
    // since their answers have nowhere to go.
    let mut handlers = JoinSet::new();

    let why = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break "shutting down".to_string(),
            _ = tokio::time::sleep_until(ends), if stale => break "a session on a replaced key ends".to_string(),
            frame = reader.next(), if handlers.len() < MAX_IN_FLIGHT_PER_CONNECTION => match frame {
                Some(Ok(Incoming::Envelope(Envelope { id, body }))) => {
                    // A peer that proved a replaced key (or a session from before the key
                    // changed) is served its sealed new key and nothing else.
                    let rotated = key.is_some_and(|(epoch, stale)| stale || cfg.key.epoch() != epoch);
                    if rotated && !matches!(body, Request::FetchKey) {
                        // Not awaited: only this loop empties the channel. A peer whose
                        // answers pile up unread is dropped.
                        match answers_tx.try_send(Envelope { id, body: Response::KeyRotated }) {
                            Ok(()) => continue,
                            Err(_) => break "too many answers waiting to be read".to_string(),
                        }
                    }
                    let (service, answers_tx, peer) = (service.clone(), answers_tx.clone(), peer());
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
                // The frame was whole (the codec found its end), only its request did
                // not decode (a batch inside a batch, another build's request): the
                // stream is still in step, so say why and go on.
                Some(Ok(Incoming::Undecodable { id: Some(id), error })) => {
                    let body = Response::Error(format!(
                        "this node could not decode the request ({error}): is the other side the same raftshare version?"
                    ));
                    match answers_tx.try_send(Envelope { id, body }) {
                        Ok(()) => continue,
                        Err(_) => break "too many answers waiting to be read".to_string(),
                    }
                }
                Some(Ok(Incoming::Undecodable { id: None, error })) => break format!("a frame without an id: {error}"),
                // An oversized frame or one that does not open: the stream cannot be
                // trusted to be in step any more.
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
    tracing::debug!(peer = ?peer(), "connection ended: {why}");
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

/// After `accept` failed (out of file descriptors, say): waits `backoff`, then doubles it
/// up to its cap. False when `shutdown` came first.
async fn waited_after_accept_error(
    what: &str,
    e: &std::io::Error,
    backoff: &mut Duration,
    shutdown: &CancellationToken,
) -> bool {
    tracing::warn!("accepting {what} failed: {e}; retrying in {backoff:?}");
    let waited = tokio::select! {
        _ = tokio::time::sleep(*backoff) => true,
        _ = shutdown.cancelled() => false,
    };
    *backoff = (*backoff * 2).min(ACCEPT_BACKOFF.1);
    waited
}
