//! The running node: opens the store, starts Raft and the transport, answers peers and
//! the CLI, and stops cleanly on SIGINT/SIGTERM.
//!
//! The node owns no socket code (that is `raftshare_raft::transport`) and no storage
//! code (`raftshare_storage`); it wires them and implements the admin requests.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use raftshare_raft::admin::{AdminRequest, AdminResponse, EventKind, MemberStatus, PeerProgress, StatusReport};
use raftshare_raft::key::{Identity, Keyring};
use raftshare_raft::network::Network;
use raftshare_raft::proto::{Request, Response, MAX_BLOCKS_PER_REQUEST};
use raftshare_raft::transport::{self, ConnectionPool, Peer, Service, TransportConfig};
use raftshare_raft::{Change, FileOp, NodeId, NodeInfo, Raft};
use raftshare_storage::{LogStore, StateMachine, Store, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{default_allow, Config, DataDir};
use crate::sync::apply::Applier;
use crate::sync::blocks::{
    fetch::BlockFetcher,
    serve::{serve_block, serve_blocks},
};
use crate::sync::error::CommitError;
use crate::sync::folder::Folder;
use crate::sync::proposer::{Committer, Proposer};
use crate::sync::state::SyncState;
use crate::sync::watch;

mod keys;
mod settings;

/// A member that has not answered for this long is shown offline.
const OFFLINE_AFTER: Duration = Duration::from_secs(3);
/// How often members are pinged for liveness.
const PING_EVERY: Duration = Duration::from_millis(500);
/// Timeout of one ping.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// A membership change can wait for a learner to catch up: give it time.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);
/// Forwarding to the leader may hop once more if leadership moved meanwhile.
const MAX_HOPS: u8 = 3;
/// A proposal that does not commit in this time is retried (it may still commit: the
/// conflict rule makes a repeated proposal harmless).
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The file in the data dir that says this node left its cluster.
const LEFT_MARKER: &str = "left";
/// How often the leader checks whether tombstones can be forgotten.
const TOMBSTONE_GC_EVERY: Duration = Duration::from_secs(5);
/// Longest an `Events` request waits for something new.
const MAX_EVENT_WAIT_MS: u64 = 30_000;
/// Most log entries one `log` request returns.
const MAX_LOG_PAGE: u64 = 10_000;
/// How long a node whose Raft quit on its own waits before it starts again (and between
/// attempts while it cannot start: a disk still full).
const RESTART_EVERY: Duration = Duration::from_secs(1);
/// A node that ran this long since its restart is steady: should Raft quit again, it is
/// a new failure, logged even if its reason is the same.
const STEADY: Duration = Duration::from_secs(60);
/// How often the database's floor follows what it holds (a file write only when
/// something changed): what a crash could make a start refuse is at most this old.
const FLOOR_EVERY: Duration = Duration::from_secs(1);

/// One running raftshare node.
pub struct Node {
    id: NodeId,
    info: NodeInfo,
    /// The cluster key in use and the ones rotations replaced (shared with the transport).
    keys: Keyring,
    /// This node's own key pair: rotated cluster keys are sealed to it.
    identity: Identity,
    raft: Raft,
    store: Store,
    log: LogStore,
    sm: StateMachine,
    pool: ConnectionPool,
    peers: Mutex<HashMap<NodeId, PeerSeen>>,
    sync: Arc<SyncState>,
    /// Whether `Partition` is allowed (`run --fault-hook`), and whom it cut off.
    fault_hook: bool,
    isolated: Mutex<HashSet<NodeId>>,
    /// Written when this node leaves its cluster: it will not start again as a member.
    left_marker: PathBuf,
    left: AtomicBool,
    /// The data dir and the settings the node started with (the Config view's requests).
    settings: settings::Settings,
}

#[derive(Debug, Clone)]
struct PeerSeen {
    at: Instant,
    progress: PeerProgress,
    /// Whether the last event about it said online (so each change is told once).
    announced: bool,
}

impl PeerSeen {
    fn online(&self) -> bool {
        self.at.elapsed() < OFFLINE_AFTER
    }
}

/// What a cluster-wide request on a node that never bootstrapped or joined is told.
const NOT_IN_A_CLUSTER: &str = "this node is not in a cluster yet: `raftshare bootstrap` starts one here, \
     `raftshare join ADDRESS` joins one (the address of a computer already in it)";

/// Where the leader is, as this node knows it.
enum Leader {
    Me,
    Peer(String),
    Unknown,
}

/// Start the node of `data_dir` and serve until SIGINT or SIGTERM.
///
/// Should Raft stop on its own while the node runs (a storage error, such as a full disk
/// under the database: openraft's core then quits for good, and sled refuses every write
/// after one failed), the node is taken down in order and started again in this process,
/// retried every `RESTART_EVERY` until it runs: it takes part in its cluster again as soon
/// as the cause is gone, without a person restarting it. A node that cannot start at all
/// says why and ends, as before.
pub async fn run(data_dir: DataDir, fault_hook: bool) -> Result<()> {
    let stop = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(stop_signals()?, stop.clone()));
    let result = supervise(&data_dir, fault_hook, &stop).await;
    signals.abort();
    result
}

/// How one run of the node ended.
enum Ended {
    /// SIGINT or SIGTERM: the node stopped, as asked.
    Stopped,
    /// Raft's core quit on its own (the reason is logged).
    RaftQuit,
}

/// Runs the node until `stop`, starting it again whenever Raft quits on its own.
async fn supervise(data_dir: &DataDir, fault_hook: bool, stop: &CancellationToken) -> Result<()> {
    // A disk that stays full makes every restart fail the same way: say each reason once.
    let mut quits = SaidOnce::default();
    let mut failed_starts = SaidOnce::default();
    // The first start reports its errors: a node that cannot start says why and ends.
    let mut ended = serve(data_dir, fault_hook, stop, &mut quits).await?;
    while let Ended::RaftQuit = ended {
        ended = loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(RESTART_EVERY) => {}
            }
            match serve(data_dir, fault_hook, stop, &mut quits).await {
                Ok(ended) => break ended,
                // Damage found at open does not go away by waiting.
                Err(e) if e.downcast_ref::<StoreError>().is_some_and(|e| matches!(e, StoreError::Corrupt { .. })) => {
                    return Err(e)
                }
                Err(e) => {
                    let said = format!("{e:#}");
                    if failed_starts.first(&said) {
                        warn!("cannot start the node again yet: {said}; retrying every {RESTART_EVERY:?}");
                    }
                }
            }
        };
        failed_starts.forget();
    }
    Ok(())
}

/// Remembers the last thing said, so that the same reason, again and again, is logged once.
#[derive(Default)]
struct SaidOnce(Option<String>);

impl SaidOnce {
    /// Whether `said` differs from the last thing said (and remembers it).
    fn first(&mut self, said: &str) -> bool {
        if self.0.as_deref() == Some(said) {
            return false;
        }
        self.0 = Some(said.to_owned());
        true
    }

    /// Forget what was said; returns whether anything was.
    fn forget(&mut self) -> bool {
        self.0.take().is_some()
    }
}

/// One run of the node: opens the store, starts Raft and every task, serves until `stop`
/// or until Raft quits on its own, then stops them all in order and lets go of the
/// database (every handle to it is gone when this returns, so it can be opened again).
async fn serve(data_dir: &DataDir, fault_hook: bool, stop: &CancellationToken, quits: &mut SaidOnce) -> Result<Ended> {
    let (mut config, key) = data_dir.load()?;
    let left_marker = data_dir.root().join(LEFT_MARKER);
    if left_marker.exists() {
        anyhow::bail!(
            "this node left its cluster (`raftshare leave`); its folder {} is left as it was. To use this computer \
             again, remove {} and run `raftshare init` and `raftshare join`",
            config.shared_dir.display(),
            data_dir.root().display()
        );
    }
    let store = Store::open(&data_dir.db_path())?;
    let listener = bind(config.listen).await?;
    let bound = listener.local_addr()?;
    if config.listen.port() == 0 {
        // Peers find this node by the address in the membership: keep the port for good.
        config.listen.set_port(bound.port());
        config.advertise.set_port(bound.port());
        data_dir.save(&config)?;
    }
    let allow = if config.allow.is_empty() { default_allow() } else { config.allow.clone() };
    let cluster_id = key.cluster_id();
    let identity = data_dir.identity()?;
    let keys = Keyring::new(key, 0, data_dir.replaced_keys());
    let tcfg = Arc::new(TransportConfig { node_id: Some(config.node_id), allow, ..TransportConfig::new(keys.clone()) });
    let pool = ConnectionPool::new(tcfg.clone());
    let raft_config = raft_config(&config, &cluster_id)?;
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        Network::new(pool.clone()),
        store.log_store(),
        store.state_machine(),
    )
    .await
    .context("cannot start Raft on the stored state")?;

    let sync = Arc::new(SyncState::new(
        config.node_id,
        config.name.clone(),
        cluster_id.clone(),
        Folder::new(&config.shared_dir),
        store.local_index(),
        store.outbox(),
        store.state_machine(),
    ));
    if sync.check_marker() {
        // The trash of an earlier run is not indexed in memory any more: nothing can use it.
        let _ = sync.folder.empty_trash();
    }
    let node = Arc::new(Node {
        id: config.node_id,
        info: NodeInfo {
            name: config.name.clone(),
            addr: config.advertise.to_string(),
            identity: identity.public_hex(),
        },
        keys,
        identity,
        raft,
        log: store.log_store(),
        sm: store.state_machine(),
        store,
        pool,
        peers: Mutex::new(HashMap::new()),
        sync: sync.clone(),
        fault_hook,
        isolated: Mutex::new(HashSet::new()),
        left_marker,
        left: AtomicBool::new(false),
        settings: settings::Settings::new(data_dir.clone(), config.clone()),
    });
    // A rotation applied while the node was stopped (or the epoch of the key in use).
    node.adopt_rotation();
    let shutdown = CancellationToken::new();
    let rotations = tokio::spawn(node.clone().follow_rotations(shutdown.clone()));
    let server = tokio::spawn(transport::serve(listener, tcfg, Arc::new(NodeService(node.clone())), shutdown.clone()));
    let prober = tokio::spawn(node.clone().probe_peers(shutdown.clone()));
    let fetcher = BlockFetcher::new(node.id, node.raft.clone(), node.pool.clone(), sync.clone());
    let applier = tokio::spawn(Applier::new(sync.clone(), fetcher).run(shutdown.clone()));
    let proposer = tokio::spawn(Proposer::new(sync.clone(), node.clone()).run(shutdown.clone()));
    let watcher = tokio::spawn(watch::feed_scanner(sync.clone(), shutdown.clone()));
    let tombstones = tokio::spawn(node.clone().forget_tombstones(shutdown.clone()));
    let beacon = tokio::spawn(crate::discovery::serve(node.raft.clone(), config.clone(), shutdown.clone()));
    let floor = tokio::spawn(keep_floor(node.store.clone(), shutdown.clone()));
    info!(
        node_id = node.id,
        name = %config.name,
        listen = %bound,
        advertise = %node.info.addr,
        shared_dir = %config.shared_dir.display(),
        "raftshare node started"
    );

    let started = Instant::now();
    let ended = tokio::select! {
        _ = stop.cancelled() => Ended::Stopped,
        why = raft_quit(&node) => {
            if started.elapsed() > STEADY {
                // Not the failure of the restart before: say it, even if alike.
                quits.forget();
            }
            if quits.first(&why) {
                tracing::error!(
                    "Raft stopped on its own ({why}): restarting the node; it takes part in its cluster again once \
                     the cause is gone (a full disk: free some space)"
                );
            } else {
                debug!("Raft stopped on its own again ({why}): restarting the node");
            }
            Ended::RaftQuit
        }
    };
    info!("stopping");
    shutdown.cancel();
    match (node.raft.shutdown().await, &ended) {
        (Ok(()), _) => {}
        (Err(e), Ended::Stopped) => warn!("raft did not stop cleanly: {e}"),
        (Err(e), Ended::RaftQuit) => debug!("raft had stopped already: {e}"),
    }
    let _ = server.await;
    for task in [prober, applier, proposer, watcher, beacon, tombstones, rotations, floor] {
        let _ = task.await;
    }
    if let Ended::RaftQuit = ended {
        // sled refuses every write after a failed one: nothing more to save in this run.
        drop(node);
        info!("stopped");
        return Ok(ended);
    }
    node.store.db().flush_async().await.context("cannot flush the database on stop")?;
    // The last word: everything Raft did, recorded for the next start to check against.
    if let Err(e) = node.store.raise_floor().await {
        warn!("{e}");
    }
    info!("stopped");
    Ok(ended)
}

/// Waits until Raft's core stopped without being asked to (not after `leave`), and says why.
async fn raft_quit(node: &Node) -> String {
    let mut metrics = node.raft.metrics();
    loop {
        let quit = {
            let m = metrics.borrow_and_update();
            match &m.running_state {
                Err(fatal) => Some(fatal.to_string()),
                Ok(()) if m.state == ServerState::Shutdown => Some("its core shut down".to_string()),
                Ok(()) => None,
            }
        };
        if let Some(why) = quit {
            if !node.left.load(Ordering::Relaxed) {
                return why;
            }
        }
        if metrics.changed().await.is_err() {
            // The core is gone and says nothing more.
            if node.left.load(Ordering::Relaxed) {
                return std::future::pending().await;
            }
            return "its core ended".to_string();
        }
    }
}

/// Raises the database's floor every `FLOOR_EVERY` until `shutdown`, warning once per
/// distinct failure (a full disk fails it every time).
async fn keep_floor(store: Store, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(FLOOR_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = SaidOnce::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        match store.raise_floor().await {
            Ok(()) => {
                if failing.forget() {
                    info!("the database's floor is recorded again");
                }
            }
            Err(e) => {
                let said = e.to_string();
                if failing.first(&said) {
                    warn!("{said}");
                }
            }
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // A restarted node must get its port back even while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| format!("cannot listen on {addr}: is another raftshare node using it?"))?;
    Ok(socket.listen(1024)?)
}

fn raft_config(config: &Config, cluster_id: &str) -> Result<openraft::Config> {
    let tuning = &config.raft;
    let raft_config = openraft::Config {
        cluster_name: cluster_id.to_string(),
        heartbeat_interval: tuning.heartbeat_ms,
        election_timeout_min: tuning.election_min_ms,
        election_timeout_max: tuning.election_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every),
        max_in_snapshot_log_to_keep: 0,
        // A snapshot chunk crosses a LAN, not a socket pair: give it seconds, not openraft's 200 ms.
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    raft_config.validate().context("the [raft] settings in config.toml are not usable")
}

/// SIGINT and SIGTERM, listened to from now on (so one sent while the node restarts is
/// not missed).
fn stop_signals() -> Result<[tokio::signal::unix::Signal; 2]> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind| signal(kind).context("cannot listen for SIGINT and SIGTERM");
    Ok([listen(SignalKind::interrupt())?, listen(SignalKind::terminate())?])
}

/// Cancels `stop` at the first of `signals`.
async fn cancel_on_signal(signals: [tokio::signal::unix::Signal; 2], stop: CancellationToken) {
    let [mut interrupt, mut terminate] = signals;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    stop.cancel();
}

struct NodeService(Arc<Node>);

impl Service for NodeService {
    async fn handle(&self, peer: Peer, req: Request) -> Response {
        let node = &self.0;
        if node.fault_hook && peer.node_id.is_some_and(|id| node.isolated.lock().expect("isolated lock").contains(&id))
        {
            // A partition drops packets: the caller hears nothing and times out.
            return std::future::pending().await;
        }
        match req {
            Request::AppendEntries(rpc) => Response::AppendEntries(node.raft.append_entries(rpc).await),
            Request::Vote(rpc) => Response::Vote(node.raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => Response::InstallSnapshot(node.raft.install_snapshot(rpc).await),
            // A computer removed from the cluster (still running, with a key that was
            // not rotated since) must not commit changes nobody can fetch from it.
            Request::Admin(
                AdminRequest::Propose { .. } | AdminRequest::RotateKey { .. } | AdminRequest::SetMemberInfo { .. },
            ) if peer.node_id.is_some_and(|id| !node.is_member(id)) => Response::Error(format!(
                "node {} is not a member of this cluster (it was removed, or has not joined): its changes are not taken",
                peer.node_id.unwrap_or_default()
            )),
            Request::Admin(req) => match node.admin(req).await {
                Ok(resp) => Response::Admin(resp),
                Err(e) => Response::Error(format!("{e:#}")),
            },
            Request::FetchKey => node.sealed_key_for(peer),
            Request::Block(req) => {
                let sync = node.sync.clone();
                match tokio::task::spawn_blocking(move || serve_block(&sync, &req)).await {
                    Ok(result) => Response::Block(result.map(serde_bytes::ByteBuf::from)),
                    Err(e) => Response::Error(format!("cannot read the block: {e}")),
                }
            }
            Request::Blocks(reqs) if reqs.len() > MAX_BLOCKS_PER_REQUEST => Response::Error(format!(
                "{} blocks asked for at once; at most {MAX_BLOCKS_PER_REQUEST} are served",
                reqs.len()
            )),
            Request::Blocks(reqs) => {
                let sync = node.sync.clone();
                match tokio::task::spawn_blocking(move || serve_blocks(&sync, &reqs)).await {
                    Ok(results) => {
                        Response::Blocks(results.into_iter().map(|r| r.map(serde_bytes::ByteBuf::from)).collect())
                    }
                    Err(e) => Response::Error(format!("cannot read the blocks: {e}")),
                }
            }
        }
    }
}

impl Node {
    /// Whether `id` is this node or in the membership (as a voter or a learner).
    fn is_member(&self, id: NodeId) -> bool {
        id == self.id || self.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some()
    }

    async fn admin(&self, req: AdminRequest) -> Result<AdminResponse> {
        match req {
            AdminRequest::Ping => Ok(AdminResponse::Pong(self.progress())),
            AdminRequest::Status => Ok(AdminResponse::Status(Box::new(self.status()))),
            AdminRequest::Log { from, limit } => Ok(AdminResponse::Log(self.log_page(from, limit))),
            AdminRequest::Bootstrap => self.bootstrap().await,
            AdminRequest::JoinCluster { peer, learner } => self.join_cluster(&peer, learner).await,
            AdminRequest::Leave => {
                let req = AdminRequest::RemoveMember { id: self.id, hops: 0 };
                let done = self.on_leader(req).await.context("cannot leave the cluster")?;
                // Out of the cluster: stop taking part (no elections that would disturb
                // it), and remember it across restarts. The folder stays as it is.
                std::fs::write(&self.left_marker, b"this node left its cluster\n").with_context(|| {
                    format!("left the cluster, but cannot record it in {}", self.left_marker.display())
                })?;
                self.left.store(true, Ordering::Relaxed);
                let _ = self.raft.shutdown().await;
                warn!("this node left its cluster: it no longer receives or sends changes");
                Ok(done)
            }
            AdminRequest::Propose { change, hops } => self.propose(change, hops).await,
            AdminRequest::Ls => Ok(AdminResponse::Files(self.sm.files())),
            AdminRequest::Events { after, wait_ms } => {
                let wait = Duration::from_millis(wait_ms.min(MAX_EVENT_WAIT_MS));
                Ok(AdminResponse::Events(self.sync.events.wait_since(after, wait).await))
            }
            AdminRequest::Transfers => Ok(AdminResponse::Transfers(self.sync.transfers.list())),
            AdminRequest::Partition { isolate } => self.partition(isolate),
            AdminRequest::GetConfig => self.config_report(),
            AdminRequest::SetConfig(change) => self.set_config(change).await,
            AdminRequest::Pending => Ok(AdminResponse::Pending(self.pending_report())),
            AdminRequest::SetMemberInfo { id, node, hops } => self.set_member_info(id, node, hops).await,
            AdminRequest::RotateKey { hops } => self.rotate_key(hops).await,
            req @ (AdminRequest::AddMember { .. }
            | AdminRequest::Promote { .. }
            | AdminRequest::RemoveMember { .. }) => self.on_leader(req).await,
        }
    }

    /// Commit `change` through the leader: here if this node leads, else forwarded.
    pub async fn propose(&self, change: Change, hops: u8) -> Result<AdminResponse> {
        match self.leader() {
            Leader::Me => match self.raft.client_write(change).await {
                Ok(resp) => Ok(AdminResponse::Committed { index: resp.log_id.index, result: resp.data }),
                Err(e) => Err(write_error(e)),
            },
            Leader::Peer(addr) => {
                if hops >= MAX_HOPS {
                    anyhow::bail!("the change went round {hops} nodes without finding the leader");
                }
                let req = AdminRequest::Propose { change, hops: hops + 1 };
                match self.pool.call(&addr, Request::Admin(req), PROPOSE_TIMEOUT).await {
                    Ok(Response::Admin(resp)) => Ok(resp),
                    Ok(Response::Error(e)) => Err(anyhow::anyhow!(e)),
                    Ok(other) => anyhow::bail!("the leader at {addr} gave an unexpected answer: {other:?}"),
                    Err(e) => Err(anyhow::anyhow!("cannot reach the leader: {e}")),
                }
            }
            Leader::Unknown => anyhow::bail!("no leader is known right now: the change waits in the outbox"),
        }
    }

    /// The fault hook: cut this node off from `isolate` (both directions), or heal.
    fn partition(&self, isolate: Vec<NodeId>) -> Result<AdminResponse> {
        if !self.fault_hook {
            anyhow::bail!(
                "fault injection is off: it exists only for tests, on a node started with `run --fault-hook`"
            );
        }
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        let addrs: HashSet<String> =
            isolate.iter().filter_map(|id| membership.get_node(id)).map(|n| n.addr.clone()).collect();
        *self.isolated.lock().expect("isolated lock") = isolate.iter().copied().collect();
        self.pool.cut_off(addrs);
        warn!(?isolate, "fault hook: traffic to and from these members is dropped");
        Ok(AdminResponse::Done(if isolate.is_empty() { "healed".into() } else { format!("isolated from {isolate:?}") }))
    }

    fn member_name(&self, id: NodeId) -> String {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config.membership().get_node(&id).map(|n| n.name.clone()).unwrap_or_else(|| id.to_string())
    }

    fn progress(&self) -> PeerProgress {
        let m = self.raft.metrics().borrow().clone();
        PeerProgress {
            node_id: self.id,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            materialized_index: self.sync.local.materialized(),
        }
    }

    /// On the leader: once every member has applied deletes to its disk, commit a
    /// `ForgetDeleted` so their tombstones do not pile up for years. A member that never
    /// answered, or is offline, holds it back (its last known watermark is used).
    async fn forget_tombstones(self: Arc<Self>, shutdown: CancellationToken) {
        // Counting from the last forget applied here, not from 0: a new leader of a big
        // table would read every record to count the tombstones.
        let mut forgotten_upto: Option<u64> = self.sm.forgotten_upto();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TOMBSTONE_GC_EVERY) => {}
            }
            if !matches!(self.leader(), Leader::Me) {
                continue;
            }
            let Some(upto) = self.everyone_materialized() else { continue };
            if forgotten_upto.is_some_and(|f| f >= upto) || self.sm.tombstones_between(forgotten_upto, upto) == 0 {
                forgotten_upto = forgotten_upto.max(Some(upto));
                continue;
            }
            let change = Change {
                origin: self.id,
                origin_name: self.info.name.clone(),
                at_ms: crate::clock::now_ms(),
                op: FileOp::ForgetDeleted { upto },
                seqs: vec![],
            };
            match self.raft.client_write(change).await {
                Ok(resp) => {
                    info!(upto, index = resp.log_id.index, outcome = ?resp.data.outcomes, "forgot tombstones every member has applied");
                    forgotten_upto = Some(upto);
                }
                Err(e) => debug!("cannot forget tombstones now: {e}"),
            }
        }
    }

    /// The lowest applier watermark over every member, if every member has reported one.
    fn everyone_materialized(&self) -> Option<u64> {
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        let peers = self.peers.lock().expect("peer table lock");
        let mut lowest = self.sync.local.materialized()?;
        for (id, _) in membership.nodes() {
            if *id != self.id {
                lowest = lowest.min(peers.get(id)?.progress.materialized_index?);
            }
        }
        Some(lowest)
    }

    fn leader(&self) -> Leader {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(id) if id == self.id => Leader::Me,
            Some(id) => match m.membership_config.membership().get_node(&id) {
                Some(node) => Leader::Peer(node.addr.clone()),
                None => Leader::Unknown,
            },
            None => Leader::Unknown,
        }
    }

    /// Run a membership request here if this node leads, else forward it to the leader.
    async fn on_leader(&self, req: AdminRequest) -> Result<AdminResponse> {
        match self.leader() {
            Leader::Me => self.change_membership(req).await,
            Leader::Peer(addr) => {
                let req = with_hop(req)?;
                match self.pool.call(&addr, Request::Admin(req), MEMBERSHIP_TIMEOUT).await {
                    Ok(Response::Admin(resp)) => Ok(resp),
                    Ok(Response::Error(e)) => Err(anyhow::anyhow!(e)),
                    Ok(other) => anyhow::bail!("the leader at {addr} gave an unexpected answer: {other:?}"),
                    Err(e) => Err(anyhow::anyhow!("cannot reach the leader: {e}")),
                }
            }
            Leader::Unknown => Err(self.no_leader().await),
        }
    }

    /// Why a request for the leader cannot go anywhere now: this node is in no cluster
    /// yet, or no leader is known.
    async fn no_leader(&self) -> anyhow::Error {
        match self.raft.is_initialized().await {
            Ok(true) => anyhow::anyhow!("no leader is known right now (an election may be running, or too few members are online): try again in a few seconds"),
            Ok(false) => anyhow::anyhow!(NOT_IN_A_CLUSTER),
            Err(e) => e.into(),
        }
    }

    /// The other members (voters and learners), with the addresses peers dial.
    fn other_members(&self) -> Vec<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    async fn change_membership(&self, req: AdminRequest) -> Result<AdminResponse> {
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let is_member = |id: &NodeId| membership.get_node(id).is_some();
        match req {
            AdminRequest::AddMember { id, node, learner, .. } => {
                if let Some((other, _)) = membership.nodes().find(|(other, n)| **other != id && n.addr == node.addr) {
                    anyhow::bail!(
                        "address {} already belongs to member {other}; if that computer was wiped, run `raftshare remove {other}` first",
                        node.addr
                    );
                }
                let already_voter = voters.contains(&id);
                if !is_member(&id) {
                    info!(id, node = %node, "adding learner");
                    self.raft.add_learner(id, node.clone(), true).await.map_err(write_error)?;
                }
                if !learner && !already_voter {
                    info!(id, "promoting to voter");
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await
                        .map_err(write_error)?;
                }
                let role = if learner && !already_voter { "learner" } else { "voter" };
                Ok(AdminResponse::Done(format!("{} ({id}) is a {role} of the cluster", node.name)))
            }
            AdminRequest::Promote { id, .. } => {
                if !is_member(&id) {
                    anyhow::bail!("node {id} is not a member: `raftshare status` lists the members");
                }
                if !voters.contains(&id) {
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await
                        .map_err(write_error)?;
                }
                Ok(AdminResponse::Done(format!("node {id} is a voter")))
            }
            AdminRequest::RemoveMember { id, .. } => {
                if !is_member(&id) {
                    anyhow::bail!("node {id} is not a member: `raftshare status` lists the members");
                }
                let change = if voters.contains(&id) {
                    if voters.len() == 1 {
                        anyhow::bail!("node {id} is the last voter: a cluster cannot remove its last voter");
                    }
                    // The change commits only once a majority of the voters left agrees:
                    // with too few of them online it would hold up every change until
                    // they came back.
                    let left: Vec<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
                    let offline: Vec<NodeId> = {
                        let peers = self.peers.lock().expect("peer table lock");
                        left.iter()
                            .copied()
                            .filter(|v| *v != self.id && !peers.get(v).is_some_and(PeerSeen::online))
                            .collect()
                    };
                    if (left.len() - offline.len()) * 2 <= left.len() {
                        let names: Vec<String> =
                            offline.iter().map(|v| format!("{} ({v})", self.member_name(*v))).collect();
                        anyhow::bail!(
                            "removing node {id} now would stall the cluster: of the {} voters left, {} are offline ({}), \
                             and nothing commits without a majority of them; bring them back first, or remove an offline one",
                            left.len(),
                            offline.len(),
                            names.join(", ")
                        );
                    }
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                info!(id, "removing member");
                self.raft.change_membership(change, false).await.map_err(write_error)?;
                Ok(AdminResponse::Done(format!("node {id} was removed from the cluster")))
            }
            other => anyhow::bail!("not a membership request: {other:?}"),
        }
    }

    async fn bootstrap(&self) -> Result<AdminResponse> {
        if self.raft.is_initialized().await? {
            let status = self.status();
            anyhow::bail!(
                "this node is already part of a cluster ({} members, term {}): `bootstrap` only starts a new cluster; \
                 to move this computer to another cluster, stop it, remove its data dir and `init` again",
                status.members.len(),
                status.term
            );
        }
        let members = BTreeMap::from([(self.id, self.info.clone())]);
        self.raft.initialize(members).await.context("cannot bootstrap")?;
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .current_leader(self.id, "bootstrap")
            .await
            .context("bootstrapped, but this node did not become leader within 10 s")?;
        Ok(AdminResponse::Done(format!(
            "cluster {} started with {} ({}) as its only member: run `raftshare invite` to add another computer",
            self.keys.cluster_id(),
            self.info.name,
            self.id
        )))
    }

    async fn join_cluster(&self, peer: &str, learner: bool) -> Result<AdminResponse> {
        if self.raft.is_initialized().await? {
            anyhow::bail!(
                "this node is already part of a cluster: to move it to another one, stop it, remove its data dir and `init` again"
            );
        }
        // This node's own address (in any of its forms) would only ask itself.
        if let Ok(Response::Admin(AdminResponse::Pong(progress))) =
            self.pool.call(peer, Request::Admin(AdminRequest::Ping), PING_TIMEOUT).await
        {
            if progress.node_id == self.id {
                anyhow::bail!("{peer} is this node itself: give the address of a computer already in the cluster");
            }
        }
        let req = AdminRequest::AddMember { id: self.id, node: self.info.clone(), learner, hops: 0 };
        match self.pool.call(peer, Request::Admin(req), MEMBERSHIP_TIMEOUT).await {
            Ok(Response::Admin(AdminResponse::Done(msg))) => {
                self.raft
                    .wait(Some(Duration::from_secs(30)))
                    .metrics(|m| m.membership_config.membership().get_node(&self.id).is_some(), "join")
                    .await
                    .context("the cluster accepted this node, but its membership did not arrive within 30 s")?;
                Ok(AdminResponse::Done(format!("joined the cluster through {peer}: {msg}")))
            }
            Ok(Response::Error(e)) => anyhow::bail!("{peer} refused the join: {e}"),
            Ok(other) => anyhow::bail!("{peer} gave an unexpected answer: {other:?}"),
            Err(e) => anyhow::bail!("cannot join through {peer}: {e}"),
        }
    }

    fn log_page(&self, from: Option<u64>, limit: Option<u64>) -> Vec<raftshare_raft::Entry> {
        let first = self.log.first_index().unwrap_or(0);
        let from = from.unwrap_or(first).max(first);
        let limit = limit.unwrap_or(MAX_LOG_PAGE).min(MAX_LOG_PAGE);
        self.log.entries(from..from.saturating_add(limit))
    }

    fn status(&self) -> StatusReport {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let in_cluster = membership.get_node(&self.id).is_some();
        let role = match m.state {
            _ if self.left.load(Ordering::Relaxed) => "removed",
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Shutdown => "shutdown",
            _ if membership.nodes().next().is_none() => "uninitialized",
            _ if !in_cluster || self.left.load(Ordering::Relaxed) => "removed",
            _ if voters.contains(&self.id) => "follower",
            _ => "learner",
        };
        let peers = self.peers.lock().expect("peer table lock").clone();
        // From the store, not the metrics: the two are read at different moments, and
        // `first_log_index` must never pass `last_log_index + 1`.
        let bounds = self.log.bounds();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let seen = peers.get(id);
                let matched_index = if *id == self.id {
                    m.last_log_index
                } else if let Some(replication) = &m.replication {
                    replication.get(id).copied().flatten().map(|l| l.index)
                } else {
                    seen.and_then(|s| s.progress.last_log_index)
                };
                MemberStatus {
                    id: *id,
                    name: node.name.clone(),
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    online: *id == self.id || seen.is_some_and(|s| s.online()),
                    matched_index,
                    last_seen_ms: if *id == self.id {
                        Some(0)
                    } else {
                        seen.map(|s| s.at.elapsed().as_millis() as u64)
                    },
                }
            })
            .collect();
        StatusReport {
            node_id: self.id,
            name: self.info.name.clone(),
            addr: self.info.addr.clone(),
            cluster_id: self.keys.cluster_id(),
            role: role.to_string(),
            leader_id: m.current_leader,
            leader_addr: m.current_leader.and_then(|id| membership.get_node(&id)).map(|n| n.addr.clone()),
            term: m.current_term,
            last_log_index: bounds.map(|(_, last)| last),
            committed_index: self.log.committed().map(|l| l.index),
            applied_index: m.last_applied.map(|l| l.index),
            first_log_index: bounds.map(|(first, _)| first),
            snapshot_index: m.snapshot.map(|l| l.index),
            db_size_bytes: self.store.size_on_disk(),
            log_size_bytes: self.log.size_bytes(),
            pending_outbox: self.sync.outbox.len() as u64,
            pending_downloads: self.sync.stats.pending_downloads.load(Ordering::Relaxed),
            bytes_sent: self.sync.stats.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.sync.stats.bytes_received.load(Ordering::Relaxed),
            folder_problem: self.sync.problem(),
            members,
        }
    }

    /// Ping every other member, so `status` can say who is online and how far along.
    async fn probe_peers(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(PING_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let pings = self.other_members().into_iter().map(|(id, addr)| {
                let node = self.clone();
                async move {
                    let answer = node.pool.call(&addr, Request::Admin(AdminRequest::Ping), PING_TIMEOUT).await;
                    if let Ok(Response::KeyRotated) = answer {
                        // Our key was replaced while we were away: the peer has our copy.
                        match node.fetch_rotated_key().await {
                            Ok(()) => {}
                            Err(e) => warn!("{e:#}"),
                        }
                    }
                    let change = {
                        let mut peers = node.peers.lock().expect("peer table lock");
                        if let Ok(Response::Admin(AdminResponse::Pong(progress))) = answer {
                            if progress.node_id == id {
                                let announced = peers.get(&id).is_some_and(|s| s.announced);
                                peers.insert(id, PeerSeen { at: Instant::now(), progress, announced });
                            }
                        }
                        peers.get_mut(&id).and_then(|seen| {
                            let online = seen.online();
                            (online != seen.announced).then(|| {
                                seen.announced = online;
                                online
                            })
                        })
                    };
                    if let Some(online) = change {
                        let name = node.member_name(id);
                        let kind = if online {
                            EventKind::NodeOnline { id, name }
                        } else {
                            EventKind::NodeOffline { id, name }
                        };
                        node.sync.events.push(kind);
                    }
                }
            });
            futures::future::join_all(pings).await;
        }
    }
}

impl Node {
    /// Send an admin request on to the leader at `addr` (`hops`: how far it came already).
    async fn forward(&self, addr: &str, hops: u8, req: AdminRequest) -> Result<AdminResponse> {
        if hops >= MAX_HOPS {
            anyhow::bail!("the request went round {hops} nodes without finding the leader: try again in a few seconds");
        }
        match self.pool.call(addr, Request::Admin(req), MEMBERSHIP_TIMEOUT).await {
            Ok(Response::Admin(resp)) => Ok(resp),
            Ok(Response::Error(e)) => Err(anyhow::anyhow!(e)),
            Ok(_) => anyhow::bail!("the leader at {addr} gave an unexpected answer"),
            Err(e) => Err(anyhow::anyhow!("cannot reach the leader at {addr}: {e}")),
        }
    }
}

fn with_hop(req: AdminRequest) -> Result<AdminRequest> {
    let bump = |hops: u8| {
        if hops >= MAX_HOPS {
            anyhow::bail!("the request went round {hops} nodes without finding the leader: try again in a few seconds")
        }
        Ok(hops + 1)
    };
    Ok(match req {
        AdminRequest::AddMember { id, node, learner, hops } => {
            AdminRequest::AddMember { id, node, learner, hops: bump(hops)? }
        }
        AdminRequest::Promote { id, hops } => AdminRequest::Promote { id, hops: bump(hops)? },
        AdminRequest::RemoveMember { id, hops } => AdminRequest::RemoveMember { id, hops: bump(hops)? },
        other => other,
    })
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> anyhow::Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => anyhow::anyhow!(
            "leadership moved to {} while the change was made: try again",
            f.leader_node.map(|n| n.to_string()).unwrap_or_else(|| "another node".into())
        ),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            anyhow::anyhow!("membership change refused: {c}")
        }
        RaftError::Fatal(f) => anyhow::anyhow!("raft stopped: {f}"),
    }
}

impl Committer for Node {
    fn commit(
        &self,
        change: Change,
    ) -> futures::future::BoxFuture<'_, Result<(u64, raftshare_raft::ApplyResult), CommitError>> {
        Box::pin(async move {
            match self.propose(change, 0).await {
                Ok(AdminResponse::Committed { index, result }) => Ok((index, result)),
                Ok(other) => Err(CommitError { why: format!("the leader answered a proposal with {other:?}") }),
                Err(e) => Err(CommitError { why: format!("{e:#}") }),
            }
        })
    }
}
