//! The client end: [`Client`], one authenticated connection carrying many requests at
//! once, told apart by id. A writer task sends queued requests (one flush for all that
//! wait), a reader task hands each answer to its caller.
//!
//! It dials one address once (or the node's local socket); redialling and sharing
//! connections is the pool's job.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::SinkExt;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::bytes::BytesMut;

use super::codec::{frames, is_encode_error, tcp_halves, FrameReader, FrameWriter, Incoming, ReadHalf, WriteHalf};
use super::server::read_local_greeting;
use super::{Envelope, MemberDirectory, NoMembers, TransportConfig, TransportError};
use crate::handshake::{self, Cipher};
use crate::key::Identity;
use crate::proto::{Request, Response};
use crate::types::NodeId;

/// Requests a client may queue for its writer before `call` waits.
const CLIENT_QUEUE: usize = 1024;

/// A connection ready for frames: its halves and what the handshake (if any) proved.
struct Connection {
    addr: String,
    read: ReadHalf,
    write: WriteHalf,
    read_buf: BytesMut,
    cipher: Option<Cipher>,
    max_frame: usize,
    peer_identity: Option<[u8; 32]>,
    members: std::sync::Arc<dyn MemberDirectory>,
    epoch: u64,
    stale: bool,
}

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
    /// The identity the server proved (`None` on the local socket).
    peer_identity: Option<[u8; 32]>,
    /// Names the server from its identity, at each call (a membership can change).
    members: std::sync::Arc<dyn MemberDirectory>,
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
    ///
    /// When the membership lists a member at `addr`, the server must prove that member's
    /// identity, or the connection is refused (`TransportError::WrongIdentity`).
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
        // The CLI is no member: a throwaway identity, proven like any other.
        let identity = cfg.identity.clone().unwrap_or_else(Identity::generate);
        let expect = cfg.members.identity_at(addr);
        let session = handshake::connect(&mut io, &cfg.key, &identity, expect, cfg.handshake_timeout)
            .await
            .map_err(|e| TransportError::handshake_failed(addr, e))?;
        let (read, write, read_buf) = tcp_halves(io);
        Ok(Client::start(Connection {
            addr: addr.to_string(),
            read,
            write,
            read_buf,
            cipher: Some(session.cipher),
            max_frame: cfg.max_frame,
            peer_identity: Some(session.peer_identity),
            members: cfg.members.clone(),
            epoch,
            stale: session.stale,
        }))
    }

    /// Connects to a node's local socket at `path` (see `serve_local`): no key, no
    /// handshake, the socket file's permissions admit us. Waits at most `timeout` for the
    /// node's greeting; frames up to `max_frame` bytes.
    pub async fn connect_local(path: &Path, max_frame: usize, timeout: Duration) -> Result<Client, TransportError> {
        let addr = path.display().to_string();
        let unreachable = |reason: String| TransportError::Unreachable { addr: addr.clone(), reason };
        let mut stream = match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Err(unreachable(
                    "no such socket: the node is not running, or runs with another data dir".into(),
                ))
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(TransportError::Refused {
                    addr,
                    reason: "permission denied: the local socket is for the user running the node".into(),
                })
            }
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable(format!("no answer within {timeout:?}"))),
        };
        read_local_greeting(&mut stream, timeout).await.map_err(|e| TransportError::handshake_failed(&addr, e))?;
        let (read, write) = stream.into_split();
        Ok(Client::start(Connection {
            addr,
            read: Box::new(read),
            write: Box::new(write),
            read_buf: BytesMut::new(),
            cipher: None,
            max_frame,
            peer_identity: None,
            members: std::sync::Arc::new(NoMembers),
            epoch: 0,
            stale: false,
        }))
    }

    fn start(conn: Connection) -> Client {
        let (reader, writer) =
            frames::<Response, Request>(conn.read, conn.write, conn.read_buf, conn.cipher, conn.max_frame);
        let shared = Arc::new(ClientShared {
            addr: conn.addr,
            state: Mutex::new(ClientState::default()),
            created: Instant::now(),
            last_frame_ms: AtomicU64::new(0),
        });
        let (outgoing, queue) = mpsc::channel(CLIENT_QUEUE);
        let tasks = [
            tokio::spawn(write_requests(writer, queue, shared.clone())).abort_handle(),
            tokio::spawn(read_answers(reader, shared.clone())).abort_handle(),
        ];
        Client {
            inner: Arc::new(ClientInner {
                shared,
                outgoing,
                next_id: AtomicU64::new(0),
                peer_identity: conn.peer_identity,
                members: conn.members,
                epoch: conn.epoch,
                stale: conn.stale,
                tasks,
            }),
        }
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

    /// The member holding the identity the server proved, as the membership says now
    /// (`None`: no member holds it, or the local socket).
    pub fn peer_node_id(&self) -> Option<NodeId> {
        self.inner.peer_identity.and_then(|identity| self.inner.members.node_of(&identity))
    }

    /// The identity key the server proved in the handshake (`None` on the local socket).
    pub fn peer_identity(&self) -> Option<[u8; 32]> {
        self.inner.peer_identity
    }

    pub(super) fn same_connection(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The key rotation this connection was authenticated under.
    pub(super) fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// How long no frame has arrived on this connection (for the pool's liveness guess).
    pub(super) fn silent_for(&self) -> Duration {
        self.inner.shared.silent_for()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.shared.addr)
            .field("peer_identity", &self.inner.peer_identity.map(hex::encode))
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
            Some(Ok(Incoming::Envelope(Envelope { id, body }))) => {
                shared.saw_frame();
                shared.answer(id, Ok(body));
            }
            Some(Ok(Incoming::Undecodable { error, .. })) => break format!("an answer did not decode: {error}"),
            Some(Err(e)) => break format!("bad frame or read failure: {e}"),
            None => break "closed by the peer".to_string(),
        }
    };
    shared.close(reason);
}
