//! The running node's parts, shared by its tasks and requests: Raft, the store, the
//! pool of connections, the peers as last seen, the sync engine's state and the
//! settings; and the questions about the membership every part asks.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftshare_raft::admin::PeerProgress;
use raftshare_raft::key::{Identity, Keyring};
use raftshare_raft::transport::{ConnectionPool, Peer};
use raftshare_raft::{NodeId, NodeInfo, Raft};
use raftshare_storage::{LogStore, StateMachine, Store};

use super::authorize::{Caller, View};
use crate::config::{Config, DataDir};
use crate::sync::state::SyncState;

/// A member that has not answered for this long is shown offline.
pub(super) const OFFLINE_AFTER: Duration = Duration::from_secs(3);

/// One running raftshare node.
pub struct Node {
    pub(super) id: NodeId,
    pub(super) info: NodeInfo,
    /// The cluster key in use and the ones rotations replaced (shared with the transport).
    pub(super) keys: Keyring,
    /// This node's own key pair: rotated cluster keys are sealed to it.
    pub(super) identity: Identity,
    pub(super) raft: Raft,
    pub(super) store: Store,
    pub(super) log: LogStore,
    pub(super) sm: StateMachine,
    pub(super) pool: ConnectionPool,
    pub(super) peers: Mutex<HashMap<NodeId, PeerSeen>>,
    pub(super) sync: Arc<SyncState>,
    /// Whether `Partition` is allowed (`run --fault-hook`), and whom it cut off.
    pub(super) fault_hook: bool,
    pub(super) isolated: Mutex<HashSet<NodeId>>,
    /// What the members said of senders this node does not know yet (see `vouch`).
    pub(super) vouches: Mutex<HashMap<[u8; 32], Vouch>>,
    /// Written when this node leaves its cluster: it will not start again as a member.
    pub(super) left_marker: PathBuf,
    pub(super) left: AtomicBool,
    /// The data dir and the settings the node started with (the Config view's requests).
    pub(super) settings: Settings,
}

#[derive(Debug, Clone)]
pub(super) struct PeerSeen {
    pub(super) at: Instant,
    pub(super) progress: PeerProgress,
    /// Whether the last event about it said online (so each change is told once).
    pub(super) announced: bool,
}

impl PeerSeen {
    pub(super) fn online(&self) -> bool {
        self.at.elapsed() < OFFLINE_AFTER
    }
}

/// What a cluster-wide request on a node that never bootstrapped or joined is told.
pub(super) const NOT_IN_A_CLUSTER: &str = "this node is not in a cluster yet: `raftshare bootstrap` starts one here, \
     `raftshare join ADDRESS` joins one (the address of a computer already in it)";

/// What the members said of an identity this node's log does not name, and when: the
/// member holding it, or none.
pub(super) type Vouch = (Instant, Option<NodeId>);

impl Node {
    /// Who sent a request on a connection from `peer` (see `authorize`).
    /// Read on every request: the metrics are borrowed, not copied.
    pub(super) fn caller(&self, peer: &Peer) -> Caller {
        let metrics = self.raft.metrics();
        let membership = metrics.borrow().membership_config.clone();
        Caller::of(peer.local, peer.node_id, self.id, |id| membership.membership().get_node(&id).is_some())
    }

    /// What the request rules need to know of this node now.
    pub(super) fn view(&self) -> View {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let in_a_cluster = m.membership_config.membership().nodes().next().is_some();
        View { this: self.id, current_term: m.current_term, in_a_cluster }
    }

    pub(super) fn member_name(&self, id: NodeId) -> String {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config.membership().get_node(&id).map(|n| n.name.clone()).unwrap_or_else(|| id.to_string())
    }

    pub(super) fn progress(&self) -> PeerProgress {
        let m = self.raft.metrics().borrow().clone();
        PeerProgress {
            node_id: self.id,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            materialized_index: self.sync.local.materialized(),
        }
    }

    /// The other members (voters and learners), with the addresses peers dial.
    pub(super) fn other_members(&self) -> Vec<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }
}

/// Where the node's settings live, and the ones it started with (what is in effect).
pub(super) struct Settings {
    pub(super) data_dir: DataDir,
    pub(super) started: Config,
}

impl Settings {
    pub(super) fn new(data_dir: DataDir, started: Config) -> Settings {
        Settings { data_dir, started }
    }
}
