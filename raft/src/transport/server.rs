//! The server end: [`serve`] accepts connections (the subnet check before a byte is
//! read, a semaphore bounding how many are held), runs the handshake, and hands each
//! request to the [`Service`] in its own task, writing answers back as they are ready.
//!
//! It does not know what a request means (the `Service` does) nor how frames are sealed
//! (`codec`).

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::codec::{frames, is_encode_error, FrameWriter};
use super::{Envelope, Peer, Service, TransportConfig};
use crate::handshake::{self, HandshakeError};
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
