//! Cluster key rotation on a running node.
//!
//! `rotate-key` (on the leader) makes a new key, seals it to the identity of every
//! member in the membership and commits the sealed copies as one log entry. Each member
//! that applies the entry opens its copy and switches: the key file is replaced, the
//! replaced key is kept, and the transport serves and dials with the new key from then
//! on. A member that was away still holds a replaced key: its peers let it in with that
//! key for one request only, `FetchKey`, answered with its sealed copy of the latest
//! key, which only its identity opens; it uses a copy once two members hand over the
//! same one (a removed computer, which still holds the replaced key, could hand over a
//! key of its own making). A removed computer is not in the membership the rotation was
//! made for, so there is no copy for it: it cannot get in again.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::key::ClusterKey;
use raftshare_raft::proto::{Request, Response};
use raftshare_raft::transport::Peer;
use raftshare_raft::{Change, FileOp, KeyRotation, OpOutcome};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::leader::Routed;
use super::state::Node;
use crate::clock::now_ms;

/// How long `rotate-key` waits for the committed rotation to be applied here.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long fetching a sealed key from a peer may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How many members must hand over the same sealed copy before this node uses it.
const FETCH_AGREEING: usize = 2;

impl Node {
    /// `RotateKey`: on the leader, seal a new key to every member and commit it. Answers
    /// once this node uses the new key too, so the key file and `invite` show it.
    pub(super) async fn rotate_key(&self, hops: u8) -> Result<AdminResponse> {
        let before = self.sm.key_rotation().map_or(0, |r| r.epoch);
        let done = self.make_rotation(hops).await?;
        let mut applied = self.sm.subscribe();
        let switched = tokio::time::timeout(APPLY_TIMEOUT, async {
            while self.sm.key_rotation().is_none_or(|r| r.epoch <= before) {
                if applied.changed().await.is_err() {
                    break;
                }
            }
        });
        if switched.await.is_err() {
            warn!("the rotation committed but has not reached this node yet: it switches keys when it does");
        }
        self.adopt_rotation();
        Ok(done)
    }

    async fn make_rotation(&self, hops: u8) -> Result<AdminResponse> {
        if let Routed::There(resp) = self.to_leader(AdminRequest::RotateKey { hops }).await? {
            return Ok(resp);
        }
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        let last = self.sm.key_rotation().map_or(0, |r| r.epoch);
        let Some(epoch) = last.checked_add(1) else {
            bail!("the key was not rotated: rotation {last} is the last one there can be");
        };
        let key = ClusterKey::generate();
        let mut sealed = std::collections::BTreeMap::new();
        let mut unknown = Vec::new();
        for (id, node) in membership.nodes() {
            match key.seal_for(&node.identity, epoch) {
                Some(copy) => {
                    sealed.insert(*id, serde_bytes::ByteBuf::from(copy));
                }
                None => unknown.push(format!("{} ({id})", node.name)),
            }
        }
        if !unknown.is_empty() {
            bail!(
                "the key was not rotated: {} did not publish an identity key, so the new key cannot be sealed to \
                 them; remove them (`raftshare remove ID`) or upgrade and restart them first",
                unknown.join(", ")
            );
        }
        let members = sealed.len();
        let change = Change {
            origin: self.id,
            origin_name: self.info.name.clone(),
            at_ms: now_ms(),
            op: FileOp::RotateKey(KeyRotation { epoch, sealed }),
            seqs: vec![],
        };
        // Written here, as the leader: the state machine takes a rotation only from the
        // leader that writes it, and `propose` refuses rotations from anyone.
        let AdminResponse::Committed { index, result } = self.write_here(change).await? else {
            bail!("the rotation was answered with something else");
        };
        match result.outcomes.first() {
            Some(OpOutcome::KeyRotated { epoch }) => Ok(AdminResponse::Done(format!(
                "the cluster key was rotated (rotation {epoch}, log entry {index}): sealed to {members} members; \
                 members online switch now, members that are offline get it when they come back; a removed \
                 computer cannot connect any more. `raftshare invite` shows the new key"
            ))),
            other => bail!("the rotation was not applied: {other:?}"),
        }
    }

    /// `FetchKey` from `peer`: its sealed copy of the latest key.
    pub(super) fn sealed_key_for(&self, peer: Peer) -> Response {
        let Some(id) = peer.node_id else {
            return Response::Error(
                "only a member can fetch its rotated key: run `raftshare invite` on a member".into(),
            );
        };
        match self.sm.key_rotation() {
            Some(rotation) => match rotation.sealed.get(&id) {
                Some(sealed) => Response::SealedKey { epoch: rotation.epoch, sealed: sealed.clone() },
                None => Response::Error(format!(
                    "no key of rotation {} is sealed to node {id}: it was not a member when the key was rotated; \
                     ask for `raftshare invite` and join again",
                    rotation.epoch
                )),
            },
            None => Response::Error("the cluster key was never rotated".into()),
        }
    }

    /// Switch to the key of the latest rotation in the state machine if it is newer than
    /// ours and sealed to this node (at start, and each time an entry is applied).
    pub(super) fn adopt_rotation(&self) {
        let Some(rotation) = self.sm.key_rotation() else { return };
        if rotation.epoch <= self.keys.epoch() {
            return;
        }
        let Some(sealed) = rotation.sealed.get(&self.id) else {
            warn!(epoch = rotation.epoch, "the cluster key was rotated without a copy for this node");
            return;
        };
        self.install_sealed(rotation.epoch, sealed);
    }

    /// Open the key of rotation `epoch` sealed to this node, and use it from now on.
    fn install_sealed(&self, epoch: u64, sealed: &[u8]) -> bool {
        let Some(key) = self.identity.open(epoch, sealed) else {
            warn!(epoch, "a rotated cluster key sealed to this node does not open with its identity key");
            return false;
        };
        // One switch at a time (the rotation follower, `rotate-key` and a fetch may race).
        static SWITCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = SWITCHING.lock().unwrap_or_else(|p| p.into_inner());
        if epoch < self.keys.epoch() {
            return true;
        }
        let old = self.keys.current();
        if key != old {
            if let Err(e) = self.settings.data_dir.replace_key(&old, &key) {
                warn!("cannot save the rotated cluster key (still using it until the node stops): {e:#}");
            }
        }
        if self.keys.install(key, epoch) {
            info!(epoch, cluster_id = %self.keys.cluster_id(), "the cluster key was rotated: using the new key");
        }
        true
    }

    /// A peer said our key was rotated: fetch our sealed copy of the new one from the
    /// members we know, and use it once [`FETCH_AGREEING`] of them hand over the same one.
    ///
    /// A sealed copy says nothing of who sealed it, and anyone who held the replaced key
    /// (a computer removed since) can pose as a peer whose key replaced ours: one answer
    /// alone could hand this node a key of its making and cut it off from the cluster.
    /// A rotation committed while this node was away was applied by at least two other
    /// members (a majority, without this node, of at least three), and each holds the
    /// same copy for it.
    pub(super) async fn fetch_rotated_key(&self) -> Result<()> {
        static FETCHING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if FETCHING.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(()); // another member's answer started a fetch already
        }
        let fetched = self.fetch_agreed_key().await;
        FETCHING.store(false, std::sync::atomic::Ordering::SeqCst);
        fetched
    }

    async fn fetch_agreed_key(&self) -> Result<()> {
        let targets: Vec<String> = self.other_members().into_iter().map(|(_, addr)| addr).collect();
        let asks = targets
            .iter()
            .map(|addr| async move { (addr.as_str(), self.pool.call(addr, Request::FetchKey, FETCH_TIMEOUT).await) });
        // Each distinct copy newer than ours (epoch, sealed bytes), with the members that
        // handed it over.
        let mut copies: std::collections::BTreeMap<(u64, Vec<u8>), Vec<&str>> = Default::default();
        let mut problems = Vec::new();
        for (addr, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(Response::SealedKey { epoch, sealed }) if epoch > self.keys.epoch() => {
                    copies.entry((epoch, sealed.into_vec())).or_default().push(addr);
                }
                Ok(Response::SealedKey { .. }) => {}
                Ok(Response::Error(e)) => problems.push(format!("{addr}: {e}")),
                Ok(other) => problems.push(format!("{addr} answered a key fetch with {other:?}")),
                Err(e) => problems.push(format!("{addr}: {e}")),
            }
        }
        if let Some(((epoch, sealed), from)) = copies.iter().rev().find(|(_, from)| from.len() >= FETCH_AGREEING) {
            if self.install_sealed(*epoch, sealed) {
                return Ok(());
            }
            bail!("the rotated key from {} does not open with this node's identity", from.join(" and "));
        }
        let offered: Vec<String> =
            copies.iter().map(|((epoch, _), from)| format!("epoch {epoch} from {}", from.join(", "))).collect();
        bail!(
            "the cluster key was rotated while this node was away, but fewer than {FETCH_AGREEING} members handed over the same copy of it \
             (offered: {}; {}): waiting for more members to answer",
            if offered.is_empty() { "none".to_string() } else { offered.join("; ") },
            if problems.is_empty() { "no other answers".to_string() } else { problems.join("; ") }
        )
    }

    /// Adopt every rotation this node applies, until `shutdown`.
    pub(super) async fn follow_rotations(self: Arc<Self>, shutdown: CancellationToken) {
        let mut applied = self.sm.subscribe();
        loop {
            self.adopt_rotation();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = applied.changed() => if changed.is_err() { return },
            }
        }
    }
}
