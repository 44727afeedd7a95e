//! Liveness of the other members: each is pinged every `PING_EVERY`; a member that
//! answers is online, with the progress it reported; a change either way is an event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raftshare_raft::admin::{AdminRequest, AdminResponse, EventKind};
use raftshare_raft::proto::{Request, Response};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::state::{Node, PeerSeen};

/// How often members are pinged for liveness.
pub(super) const PING_EVERY: Duration = Duration::from_millis(500);

/// Timeout of one ping.
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(1);

impl Node {
    /// Ping every other member, so `status` can say who is online and how far along.
    pub(super) async fn probe_peers(self: Arc<Self>, shutdown: CancellationToken) {
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
