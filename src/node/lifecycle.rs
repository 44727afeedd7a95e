//! One node's life: the supervisor that starts it, restarts it when Raft quits on its
//! own (a full disk), and stops every task in order on SIGINT or SIGTERM.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use openraft::{ServerState, SnapshotPolicy};
use raftshare_raft::key::Keyring;
use raftshare_raft::network::{Network, RaftMembers};
use raftshare_raft::transport::{self, ConnectionPool, TransportConfig};
use raftshare_raft::{NodeInfo, Raft};
use raftshare_storage::{Store, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::service::NodeService;
use super::state::Node;
use super::state::Settings;
use crate::config::{default_allow, Config, DataDir};
use crate::sync::apply::Applier;
use crate::sync::blocks::fetch::BlockFetcher;
use crate::sync::folder::Folder;
use crate::sync::proposer::Proposer;
use crate::sync::state::SyncState;
use crate::sync::watch;

/// The file in the data dir that says this node left its cluster.
pub(super) const LEFT_MARKER: &str = "left";

/// How long a node whose Raft quit on its own waits before it starts again (and between
/// attempts while it cannot start: a disk still full).
pub(super) const RESTART_EVERY: Duration = Duration::from_secs(1);

/// A node that ran this long since its restart is steady: should Raft quit again, it is
/// a new failure, logged even if its reason is the same.
pub(super) const STEADY: Duration = Duration::from_secs(60);

/// How often the database's floor follows what it holds (a file write only when
/// something changed): what a crash could make a start refuse is at most this old.
pub(super) const FLOOR_EVERY: Duration = Duration::from_secs(1);

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
pub(super) enum Ended {
    /// SIGINT or SIGTERM: the node stopped, as asked.
    Stopped,
    /// Raft's core quit on its own (the reason is logged).
    RaftQuit,
}

/// Runs the node until `stop`, starting it again whenever Raft quits on its own.
pub(super) async fn supervise(data_dir: &DataDir, fault_hook: bool, stop: &CancellationToken) -> Result<()> {
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
pub(super) struct SaidOnce(Option<String>);

impl SaidOnce {
    /// Whether `said` differs from the last thing said (and remembers it).
    pub(super) fn first(&mut self, said: &str) -> bool {
        if self.0.as_deref() == Some(said) {
            return false;
        }
        self.0 = Some(said.to_owned());
        true
    }

    /// Forget what was said; returns whether anything was.
    pub(super) fn forget(&mut self) -> bool {
        self.0.take().is_some()
    }
}

/// One run of the node: opens the store, starts Raft and every task, serves until `stop`
/// or until Raft quits on its own, then stops them all in order and lets go of the
/// database (every handle to it is gone when this returns, so it can be opened again).
pub(super) async fn serve(
    data_dir: &DataDir,
    fault_hook: bool,
    stop: &CancellationToken,
    quits: &mut SaidOnce,
) -> Result<Ended> {
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
    // Peers are named by the identity they prove, looked up in the Raft membership.
    let members = Arc::new(RaftMembers::default());
    let local_listener = bind_local(&data_dir.socket_path())?;
    let tcfg = Arc::new(TransportConfig {
        identity: Some(identity.clone()),
        members: members.clone(),
        allow,
        ..TransportConfig::new(keys.clone())
    });
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
    members.follow(&raft);

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
        vouches: Mutex::new(HashMap::new()),
        left_marker,
        left: AtomicBool::new(false),
        settings: Settings::new(data_dir.clone(), config.clone()),
    });
    // A rotation applied while the node was stopped (or the epoch of the key in use).
    node.adopt_rotation();
    let shutdown = CancellationToken::new();
    let rotations = tokio::spawn(node.clone().follow_rotations(shutdown.clone()));
    let local = tokio::spawn(transport::serve_local(
        local_listener,
        tcfg.clone(),
        Arc::new(NodeService(node.clone())),
        shutdown.clone(),
    ));
    let server = tokio::spawn(transport::serve(listener, tcfg, Arc::new(NodeService(node.clone())), shutdown.clone()));
    let prober = tokio::spawn(node.clone().probe_peers(shutdown.clone()));
    let fetcher = BlockFetcher::new(node.id, node.raft.clone(), node.pool.clone(), sync.clone());
    let applier = tokio::spawn(Applier::new(sync.clone(), fetcher).run(shutdown.clone()));
    let proposer = tokio::spawn(Proposer::new(sync.clone(), node.clone()).run(shutdown.clone()));
    let watcher = tokio::spawn(watch::feed_scanner(sync.clone(), shutdown.clone()));
    let tombstones = tokio::spawn(node.clone().forget_tombstones(shutdown.clone()));
    let beacon =
        tokio::spawn(crate::discovery::serve(node.raft.clone(), node.keys.clone(), config.clone(), shutdown.clone()));
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
    let _ = local.await;
    let _ = std::fs::remove_file(data_dir.socket_path());
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
pub(super) async fn raft_quit(node: &Node) -> String {
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
pub(super) async fn keep_floor(store: Store, shutdown: CancellationToken) {
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

/// The socket of this node's own command line, only its user may open (a socket left by
/// a node that did not stop cleanly is replaced: the database lock says none runs now).
pub(super) fn bind_local(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot replace the old socket {}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(path).with_context(|| {
        format!(
            "cannot make the command line's socket {} (a data dir path longer than about 100 bytes is too long for \
             a socket: use a shorter --data-dir)",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make the socket {} private", path.display()))?;
    Ok(listener)
}

pub(super) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // A restarted node must get its port back even while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| format!("cannot listen on {addr}: is another raftshare node using it?"))?;
    Ok(socket.listen(1024)?)
}

pub(super) fn raft_config(config: &Config, cluster_id: &str) -> Result<openraft::Config> {
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
pub(super) fn stop_signals() -> Result<[tokio::signal::unix::Signal; 2]> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind| signal(kind).context("cannot listen for SIGINT and SIGTERM");
    Ok([listen(SignalKind::interrupt())?, listen(SignalKind::terminate())?])
}

/// Cancels `stop` at the first of `signals`.
pub(super) async fn cancel_on_signal(signals: [tokio::signal::unix::Signal; 2], stop: CancellationToken) {
    let [mut interrupt, mut terminate] = signals;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    stop.cancel();
}
