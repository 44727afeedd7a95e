//! [`ConnectionPool`]: one [`Client`] per address, dialled on first use (concurrent
//! callers share the dial), redialled when it breaks or its key was rotated, and the test
//! fault hook that cuts addresses off.
//!
//! It never reads a frame: calls go through the cached `Client`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Client, TransportConfig, TransportError};
use crate::proto::{Request, Response};
use crate::types::NodeId;

/// A pooled connection that timed out a call and has been silent this long is presumed
/// dead (a peer gone without a FIN) and is redialled; shorter silences are slow peers.
const SILENCE_BEFORE_REDIAL: Duration = Duration::from_secs(2);

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
                if client.silent_for() >= SILENCE_BEFORE_REDIAL.max(timeout) {
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
        if let Some(client) = cached.as_ref().filter(|c| !c.is_closed() && c.epoch() == epoch) {
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
