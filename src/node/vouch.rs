//! Members this node does not know yet. A member that was away while a computer joined
//! has no membership entry for it, and by the time it is back the new computer may lead
//! the cluster: refusing its Raft messages would leave the returning member behind for
//! good, since only the leader brings it the entry that names the newcomer. So such a
//! node asks the members it knows whether the sender is a member now; one that lists it
//! vouches for it (over a connection to a member this node knows), and the sender's Raft
//! messages are taken for a while, until the log has caught up and names it.

use std::time::{Duration, Instant};

use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::proto::{Request, Response};
use raftshare_raft::NodeId;
use tracing::info;

use super::state::Node;

/// How long a member's word for a sender holds before it is asked again.
const VOUCH_KEPT: Duration = Duration::from_secs(10);
/// How long a sender no member vouched for is refused before the members are asked again
/// (an outsider's messages must not make this node ask its members at their pace).
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(1);
/// How long one member may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

impl Node {
    /// The member that proved `identity`, if a member this node knows lists one with it
    /// (asked at most once per `ASK_AGAIN_AFTER`, believed for `VOUCH_KEPT`).
    pub(super) async fn vouched_for(&self, identity: [u8; 32]) -> Option<NodeId> {
        {
            let mut said = self.vouches.lock().unwrap_or_else(|p| p.into_inner());
            match said.get(&identity) {
                Some((at, Some(id))) if at.elapsed() < VOUCH_KEPT => return Some(*id),
                Some((at, None)) if at.elapsed() < ASK_AGAIN_AFTER => return None,
                _ => {}
            }
            // Asking now: the messages that arrive meanwhile are refused, not asked for again.
            said.insert(identity, (Instant::now(), None));
        }
        let hex = hex::encode(identity);
        let asks = self.other_members().into_iter().map(|(_, addr)| {
            let hex = hex.clone();
            async move {
                match self.pool.call(&addr, Request::Admin(AdminRequest::Status), ASK_TIMEOUT).await {
                    Ok(Response::Admin(AdminResponse::Status(status))) => {
                        status.members.iter().find(|m| m.identity == hex).map(|m| m.id)
                    }
                    _ => None,
                }
            }
        });
        let found = futures::future::join_all(asks).await.into_iter().flatten().next();
        let mut said = self.vouches.lock().unwrap_or_else(|p| p.into_inner());
        let before = said.insert(identity, (Instant::now(), found));
        if let Some(id) = found.filter(|_| before.is_none_or(|(_, f)| f.is_none())) {
            info!(
                id,
                "a member vouches for node {id}, which this node's log does not name yet: its Raft messages are taken"
            );
        }
        found
    }
}
