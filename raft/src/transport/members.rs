//! [`MemberDirectory`]: from an identity a peer proved in the handshake to the member
//! holding it, and from a member's address to the identity it must prove.
//!
//! The transport asks; it never decides membership. The node answers from its Raft
//! membership (`network::RaftMembers`); tests and tools use [`StaticMembers`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::types::NodeId;

/// Who holds which identity key, as the cluster's membership says.
pub trait MemberDirectory: Send + Sync + fmt::Debug + 'static {
    /// The member whose identity key is `identity`; `None` for anyone else (the CLI, a
    /// computer not yet a member, a removed node).
    fn node_of(&self, identity: &[u8; 32]) -> Option<NodeId>;

    /// The identity key of the member at `addr` (as dialled, `ip:port`); `None` when no
    /// member is listed there, and then any identity may answer.
    fn identity_at(&self, addr: &str) -> Option<[u8; 32]>;

    /// Whether a member is listed at `ip` (its connections may use the slots kept for
    /// members while strangers fill the rest).
    fn is_member_ip(&self, ip: IpAddr) -> bool;
}

/// A directory with no members: every peer is a stranger, every address may answer with
/// any identity (the CLI, a node before it has a cluster).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMembers;

impl MemberDirectory for NoMembers {
    fn node_of(&self, _: &[u8; 32]) -> Option<NodeId> {
        None
    }

    fn identity_at(&self, _: &str) -> Option<[u8; 32]> {
        None
    }

    fn is_member_ip(&self, _: IpAddr) -> bool {
        false
    }
}

/// One member as a directory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's node id.
    pub node_id: NodeId,
    /// Where peers dial it (`ip:port`).
    pub addr: String,
    /// The public half of its identity key.
    pub identity: [u8; 32],
}

/// A fixed list of members (for tests and tools; a node follows its Raft membership).
#[derive(Debug, Clone, Default)]
pub struct StaticMembers(pub Vec<Member>);

impl MemberDirectory for StaticMembers {
    fn node_of(&self, identity: &[u8; 32]) -> Option<NodeId> {
        node_of(self.0.iter().map(|m| (m.node_id, m.addr.as_str(), Some(m.identity))), identity)
    }

    fn identity_at(&self, addr: &str) -> Option<[u8; 32]> {
        identity_at(self.0.iter().map(|m| (m.node_id, m.addr.as_str(), Some(m.identity))), addr)
    }

    fn is_member_ip(&self, ip: IpAddr) -> bool {
        is_member_ip(self.0.iter().map(|m| (m.node_id, m.addr.as_str(), Some(m.identity))), ip)
    }
}

/// The lookups every directory does, over `(node id, address, identity)` of each member.
pub(crate) fn node_of<'a>(
    members: impl IntoIterator<Item = (NodeId, &'a str, Option<[u8; 32]>)>,
    identity: &[u8; 32],
) -> Option<NodeId> {
    members.into_iter().find(|(_, _, id)| id.as_ref() == Some(identity)).map(|(node_id, _, _)| node_id)
}

pub(crate) fn identity_at<'a>(
    members: impl IntoIterator<Item = (NodeId, &'a str, Option<[u8; 32]>)>,
    addr: &str,
) -> Option<[u8; 32]> {
    members.into_iter().find(|(_, at, _)| *at == addr).and_then(|(_, _, identity)| identity)
}

pub(crate) fn is_member_ip<'a>(
    members: impl IntoIterator<Item = (NodeId, &'a str, Option<[u8; 32]>)>,
    ip: IpAddr,
) -> bool {
    let ip = ip.to_canonical();
    members.into_iter().any(|(_, addr, _)| addr.parse::<SocketAddr>().is_ok_and(|a| a.ip().to_canonical() == ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_directory_names_members_by_identity_and_address() {
        let members = StaticMembers(vec![
            Member { node_id: 1, addr: "10.0.0.1:7070".into(), identity: [1; 32] },
            Member { node_id: 2, addr: "[fe80::2]:7070".into(), identity: [2; 32] },
        ]);
        assert_eq!(members.node_of(&[2; 32]), Some(2));
        assert_eq!(members.node_of(&[3; 32]), None, "a stranger is no member");
        assert_eq!(members.identity_at("10.0.0.1:7070"), Some([1; 32]));
        assert_eq!(members.identity_at("10.0.0.1:7071"), None, "another port is another address");
        assert!(members.is_member_ip("10.0.0.1".parse().unwrap()));
        assert!(members.is_member_ip("fe80::2".parse().unwrap()));
        assert!(members.is_member_ip("::ffff:10.0.0.1".parse().unwrap()), "an IPv4 peer on a dual-stack socket");
        assert!(!members.is_member_ip("10.0.0.3".parse().unwrap()));
        assert_eq!(NoMembers.node_of(&[1; 32]), None);
    }
}
