//! Who may ask this node what. Holding the cluster key only lets a computer connect:
//! what it may then ask depends on who it is to this node.
//!
//! - this node's own command line (`Caller::Local`) asks anything but Raft's own RPCs;
//! - a member (`Caller::Member`) sends Raft RPCs (as itself only, with believable terms),
//!   forwards requests only the leader carries out, proposes changes of its own, fetches
//!   blocks and reads the cluster's state;
//! - anyone else (`Caller::Outsider`: removed, not joined yet, or not saying who it is)
//!   may only ping, ask to join as itself, and fetch its sealed rotated key.
//!
//! Requests that change this node itself (its settings, leaving, bootstrapping, joining,
//! the fault hook) and its own views (events, transfers, settings, pending) are taken
//! from its own command line only: no other computer administers it.
//!
//! The rules are pure: the caller is classified from the connection and the membership,
//! then [`may_ask`] decides from the request alone.

use raftshare_raft::admin::AdminRequest;
use raftshare_raft::proto::Request;
use raftshare_raft::{LogId, NodeId, Vote};

/// Highest Raft term taken from a peer. Terms grow by one per election: no cluster gets
/// near this, and openraft adds one to a term without checking (a term near `u64::MAX`
/// taken once makes every later election panic, restart after restart).
pub(super) const MAX_TERM: u64 = 1 << 62;

/// How far above this node's own term a peer's term may be. A node that was away while
/// its cluster held elections sees a few more terms, never a million.
pub(super) const MAX_TERM_JUMP: u64 = 1 << 20;

/// Who sent a request, as far as this node can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Caller {
    /// This node's own command line.
    Local,
    /// A member of the cluster (voter or learner), by the id its connection carries.
    Member(NodeId),
    /// Anyone else with the key: not a member (removed, or not joined yet), or a remote
    /// connection that does not say which node it is.
    Outsider(Option<NodeId>),
}

impl Caller {
    /// Classifies a connection: `local` when it came over this node's own socket (whose
    /// file permissions are the credential), else the member its proven identity names
    /// (`node_id`, from the membership: never what the peer claims). A peer proving this
    /// node's own identity holds the secret key in this node's private data dir, as its
    /// own command line does: it is taken as that.
    pub(super) fn of(local: bool, node_id: Option<NodeId>, this: NodeId, is_member: impl Fn(NodeId) -> bool) -> Caller {
        match node_id {
            _ if local => Caller::Local,
            Some(id) if id == this => Caller::Local,
            Some(id) if is_member(id) => Caller::Member(id),
            other => Caller::Outsider(other),
        }
    }
}

/// What this node knows that the rules need: its current term, and whether it is in a
/// cluster yet (a node that is joining has no membership: its first leader is not a
/// member it knows).
#[derive(Debug, Clone, Copy)]
pub(super) struct View {
    pub(super) this: NodeId,
    pub(super) current_term: u64,
    pub(super) in_a_cluster: bool,
}

/// Whether `caller` may make `req`: `Err` says why not, worded for the one who asked.
pub(super) fn may_ask(caller: Caller, view: View, req: &Request) -> Result<(), String> {
    match req {
        Request::AppendEntries(rpc) => {
            let entries = rpc.entries.iter().map(|e| e.log_id);
            let log_ids = rpc.prev_log_id.into_iter().chain(entries.clone()).chain(rpc.leader_commit);
            raft_rpc(caller, view, "AppendEntries", &rpc.vote, log_ids)?;
            consecutive(rpc.prev_log_id, entries)
        }
        Request::Vote(rpc) => raft_rpc(caller, view, "Vote", &rpc.vote, rpc.last_log_id),
        Request::InstallSnapshot(rpc) => {
            let log_ids = rpc.meta.last_log_id.into_iter().chain(*rpc.meta.last_membership.log_id());
            raft_rpc(caller, view, "InstallSnapshot", &rpc.vote, log_ids)
        }
        Request::FetchKey => Ok(()),
        Request::Block(_) | Request::Blocks(_) => member_or_local(caller, "a block"),
        Request::Admin(req) => admin(caller, view.this, req),
    }
}

fn admin(caller: Caller, this: NodeId, req: &AdminRequest) -> Result<(), String> {
    match req {
        AdminRequest::Ping => Ok(()),
        AdminRequest::AddMember { id, .. } => match caller {
            Caller::Local | Caller::Member(_) => Ok(()),
            Caller::Outsider(Some(sender)) if sender == *id => Ok(()),
            Caller::Outsider(sender) => Err(format!(
                "{} cannot add node {id}: a computer that is not a member may only ask to join as itself",
                who(sender)
            )),
        },
        AdminRequest::Propose { change, .. } => {
            let sender = match caller {
                Caller::Local => this,
                Caller::Member(id) => id,
                Caller::Outsider(sender) => return Err(not_a_member(sender, "its changes are not taken")),
            };
            if change.origin != sender {
                return Err(format!(
                    "node {sender} proposed a change made by node {}: a change is taken only from the node that \
                     made it (a forwarded change that missed the leader is retried by its origin)",
                    change.origin
                ));
            }
            Ok(())
        }
        AdminRequest::SetMemberInfo { id, .. } => {
            let sender = match caller {
                Caller::Local => this,
                Caller::Member(sender) => sender,
                Caller::Outsider(sender) => return Err(not_a_member(sender, "it cannot rename members")),
            };
            if *id != sender {
                return Err(format!(
                    "node {sender} cannot rename node {id}: each node renames itself (`raftshare config --name`)"
                ));
            }
            Ok(())
        }
        AdminRequest::Promote { .. }
        | AdminRequest::RemoveMember { .. }
        | AdminRequest::RotateKey { .. }
        | AdminRequest::Status
        | AdminRequest::Log { .. }
        | AdminRequest::Ls => member_or_local(caller, request_name(req)),
        AdminRequest::SetConfig(_)
        | AdminRequest::Leave
        | AdminRequest::Bootstrap
        | AdminRequest::JoinCluster { .. }
        | AdminRequest::Partition { .. }
        | AdminRequest::Events { .. }
        | AdminRequest::Transfers
        | AdminRequest::GetConfig
        | AdminRequest::Pending => match caller {
            Caller::Local => Ok(()),
            Caller::Member(sender) | Caller::Outsider(Some(sender)) => Err(format!(
                "node {sender} asked for {} of node {this}: that is taken only from node {this}'s own command \
                 line (run `raftshare` on that computer)",
                request_name(req)
            )),
            Caller::Outsider(None) => Err(format!(
                "{} of node {this} is taken only from its own command line (run `raftshare` on that computer)",
                request_name(req)
            )),
        },
    }
}

/// The checks every Raft RPC passes before openraft sees it: it comes from a member (or
/// from anyone, to a node not in a cluster yet), speaks for its sender only (the leader
/// or candidate its vote names), and carries terms a real cluster could have.
fn raft_rpc(
    caller: Caller,
    view: View,
    what: &str,
    vote: &Vote,
    log_ids: impl IntoIterator<Item = LogId>,
) -> Result<(), String> {
    let sender = match caller {
        Caller::Member(id) => id,
        Caller::Outsider(Some(id)) if !view.in_a_cluster => id,
        // A node joining has no membership to name its first leader by: the one the
        // message names is taken (its terms are still checked below).
        Caller::Outsider(None) if !view.in_a_cluster => vote.leader_id().node_id,
        Caller::Outsider(sender) => return Err(not_a_member(sender, "Raft's messages are taken from members only")),
        Caller::Local => return Err(format!("{what} is Raft's own message between members, not a command")),
    };
    let named = vote.leader_id().node_id;
    if named != sender {
        return Err(format!("node {sender} sent {what} for node {named}: a node speaks for itself only"));
    }
    let term = vote.leader_id().term;
    let highest = view.current_term.saturating_add(MAX_TERM_JUMP).min(MAX_TERM);
    if term > highest {
        return Err(format!(
            "node {sender} sent {what} at term {term}, beyond any election this cluster can have held (this node \
             is at term {}): refused",
            view.current_term
        ));
    }
    for log_id in log_ids {
        if log_id.leader_id.term > term {
            return Err(format!(
                "node {sender} sent {what} at term {term} carrying log entry {} of a later term {}: refused",
                log_id.index, log_id.leader_id.term
            ));
        }
        if log_id.index > MAX_TERM {
            return Err(format!(
                "node {sender} sent {what} naming log index {}, beyond any real log: refused",
                log_id.index
            ));
        }
    }
    Ok(())
}

/// Entries of an `AppendEntries` must follow `prev` one index at a time.
fn consecutive(prev: Option<LogId>, entries: impl Iterator<Item = LogId>) -> Result<(), String> {
    let mut next = prev.map_or(0, |p| p.index.saturating_add(1));
    for log_id in entries {
        if log_id.index != next {
            return Err(format!(
                "AppendEntries carries log entry {} where entry {next} belongs: entries follow each other",
                log_id.index
            ));
        }
        next = log_id.index.saturating_add(1);
    }
    Ok(())
}

fn member_or_local(caller: Caller, what: &str) -> Result<(), String> {
    match caller {
        Caller::Local | Caller::Member(_) => Ok(()),
        Caller::Outsider(sender) => Err(not_a_member(sender, &format!("{what} is served to members only"))),
    }
}

fn not_a_member(sender: Option<NodeId>, consequence: &str) -> String {
    match sender {
        Some(id) => format!(
            "node {id} is not a member of this cluster (it was removed, or has not joined: `raftshare join`): \
             {consequence}"
        ),
        None => format!(
            "this computer is not a member of this cluster (the identity it proved names no member: it was \
             removed, or has not joined: `raftshare join`): {consequence}"
        ),
    }
}

fn who(sender: Option<NodeId>) -> String {
    sender.map_or_else(|| "a computer that is not a member".to_string(), |id| format!("node {id}"))
}

/// A request as people name it (the command that sends it, where there is one).
fn request_name(req: &AdminRequest) -> &'static str {
    match req {
        AdminRequest::Ping => "a ping",
        AdminRequest::Status => "`status`",
        AdminRequest::Log { .. } => "`log`",
        AdminRequest::Bootstrap => "`bootstrap`",
        AdminRequest::JoinCluster { .. } => "`join`",
        AdminRequest::AddMember { .. } => "adding a member",
        AdminRequest::Promote { .. } => "`promote`",
        AdminRequest::RemoveMember { .. } => "`remove`",
        AdminRequest::Leave => "`leave`",
        AdminRequest::Propose { .. } => "a proposal",
        AdminRequest::Ls => "`ls`",
        AdminRequest::Events { .. } => "`events`",
        AdminRequest::Transfers => "the transfers",
        AdminRequest::Partition { .. } => "`partition`",
        AdminRequest::GetConfig => "`config`",
        AdminRequest::SetConfig(_) => "`config` with changes",
        AdminRequest::Pending => "the pending changes",
        AdminRequest::SetMemberInfo { .. } => "renaming a member",
        AdminRequest::RotateKey { .. } => "`rotate-key`",
    }
}

#[cfg(test)]
mod tests {
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use openraft::{CommittedLeaderId, EntryPayload};
    use raftshare_raft::admin::ConfigChange;
    use raftshare_raft::{Change, Entry, FileOp};

    use super::*;

    const THIS: NodeId = 1;
    const PEER: NodeId = 2;
    const OUTSIDER: NodeId = 9;

    fn view() -> View {
        View { this: THIS, current_term: 5, in_a_cluster: true }
    }

    fn log_id(term: u64, leader: NodeId, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, leader), index)
    }

    fn append(term: u64, leader: NodeId, prev: Option<LogId>, indexes: &[(u64, u64)]) -> Request {
        let entries = indexes
            .iter()
            .map(|(t, i)| Entry { log_id: log_id(*t, leader, *i), payload: EntryPayload::Blank })
            .collect();
        Request::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(term, leader),
            prev_log_id: prev,
            entries,
            leader_commit: None,
        })
    }

    fn vote(term: u64, candidate: NodeId) -> Request {
        Request::Vote(VoteRequest::new(Vote::new(term, candidate), None))
    }

    fn propose(origin: NodeId) -> Request {
        let change = Change {
            origin,
            origin_name: "n".into(),
            at_ms: 0,
            op: FileOp::Delete { path: "a".into(), base: None },
            seqs: vec![],
        };
        Request::Admin(AdminRequest::Propose { change, hops: 0 })
    }

    #[test]
    fn the_caller_is_the_local_command_line_a_member_or_an_outsider() {
        let members = |id| id == PEER;
        assert_eq!(Caller::of(true, None, THIS, members), Caller::Local);
        assert_eq!(Caller::of(false, None, THIS, members), Caller::Outsider(None));
        assert_eq!(Caller::of(false, Some(PEER), THIS, members), Caller::Member(PEER));
        assert_eq!(Caller::of(false, Some(OUTSIDER), THIS, members), Caller::Outsider(Some(OUTSIDER)));
        // A connection proving this node's own identity holds its private data dir.
        assert_eq!(Caller::of(false, Some(THIS), THIS, |_| true), Caller::Local);
    }

    #[test]
    fn raft_messages_come_from_members_speaking_for_themselves_at_believable_terms() {
        let member = Caller::Member(PEER);
        let ok = |caller, req: Request| may_ask(caller, view(), &req);
        assert_eq!(ok(member, append(6, PEER, Some(log_id(5, PEER, 3)), &[(6, 4), (6, 5)])), Ok(()));
        assert_eq!(ok(member, vote(6, PEER)), Ok(()));
        // Not from members, or for another node.
        assert!(ok(Caller::Outsider(Some(OUTSIDER)), append(6, OUTSIDER, None, &[])).is_err());
        assert!(ok(Caller::Outsider(None), vote(6, PEER)).is_err());
        assert!(ok(Caller::Local, vote(6, THIS)).is_err());
        assert!(ok(member, append(6, 3, None, &[])).unwrap_err().contains("speaks for itself"));
        assert!(ok(member, vote(6, 3)).is_err());
        // Terms no cluster reaches.
        let absurd = ok(member, append(u64::MAX, PEER, None, &[])).unwrap_err();
        assert!(absurd.contains("beyond any election"), "{absurd}");
        assert!(ok(member, vote(5 + MAX_TERM_JUMP + 1, PEER)).is_err());
        assert_eq!(ok(member, vote(5 + MAX_TERM_JUMP, PEER)), Ok(()));
        assert!(may_ask(member, View { current_term: u64::MAX, ..view() }, &vote(MAX_TERM + 1, PEER)).is_err());
        // Entries of a later term than the leader's, or not following each other.
        assert!(ok(member, append(6, PEER, None, &[(7, 0)])).is_err());
        assert!(ok(member, append(6, PEER, Some(log_id(6, PEER, 3)), &[(6, 5)])).is_err());
        assert!(ok(member, append(6, PEER, Some(log_id(6, PEER, u64::MAX)), &[])).is_err());
        // A node that is joining takes its first leader before it knows the members.
        let joining = View { in_a_cluster: false, current_term: 0, ..view() };
        assert_eq!(may_ask(Caller::Outsider(Some(PEER)), joining, &append(3, PEER, None, &[(3, 0)])), Ok(()));
        assert!(may_ask(Caller::Outsider(Some(PEER)), joining, &append(3, 4, None, &[])).is_err());
        // Before it has a membership, its first leader proves no member's identity yet.
        assert_eq!(may_ask(Caller::Outsider(None), joining, &append(3, PEER, None, &[(3, 0)])), Ok(()));
        assert!(may_ask(Caller::Outsider(None), joining, &vote(MAX_TERM + 1, PEER)).is_err());
    }

    #[test]
    fn an_outsider_may_only_ping_join_as_itself_and_fetch_its_key() {
        let outsider = Caller::Outsider(Some(OUTSIDER));
        let info = raftshare_raft::NodeInfo::default();
        let add = |id| Request::Admin(AdminRequest::AddMember { id, node: info.clone(), learner: false, hops: 0 });
        assert_eq!(may_ask(outsider, view(), &Request::Admin(AdminRequest::Ping)), Ok(()));
        assert_eq!(may_ask(outsider, view(), &Request::FetchKey), Ok(()));
        assert_eq!(may_ask(outsider, view(), &add(OUTSIDER)), Ok(()));
        assert!(may_ask(outsider, view(), &add(PEER)).is_err());
        assert!(may_ask(Caller::Outsider(None), view(), &add(OUTSIDER)).is_err());
        for req in [
            propose(OUTSIDER),
            Request::Admin(AdminRequest::RemoveMember { id: PEER, hops: 0 }),
            Request::Admin(AdminRequest::Promote { id: OUTSIDER, hops: 0 }),
            Request::Admin(AdminRequest::RotateKey { hops: 0 }),
            Request::Admin(AdminRequest::Log { from: None, limit: None }),
            Request::Admin(AdminRequest::Ls),
            Request::Admin(AdminRequest::Status),
            Request::Blocks(vec![]),
        ] {
            let refused = may_ask(outsider, view(), &req).unwrap_err();
            assert!(refused.contains("not a member"), "{req:?}: {refused}");
        }
    }

    #[test]
    fn a_change_is_taken_from_its_origin_only() {
        assert_eq!(may_ask(Caller::Member(PEER), view(), &propose(PEER)), Ok(()));
        assert_eq!(may_ask(Caller::Local, view(), &propose(THIS)), Ok(()));
        assert!(may_ask(Caller::Member(PEER), view(), &propose(3)).is_err());
        assert!(may_ask(Caller::Local, view(), &propose(PEER)).is_err());
        let rename = |id| Request::Admin(AdminRequest::SetMemberInfo { id, node: Default::default(), hops: 0 });
        assert_eq!(may_ask(Caller::Member(PEER), view(), &rename(PEER)), Ok(()));
        assert!(may_ask(Caller::Member(PEER), view(), &rename(THIS)).is_err());
    }

    #[test]
    fn what_changes_a_node_is_taken_from_its_own_command_line_only() {
        let local_only = [
            AdminRequest::SetConfig(ConfigChange { allow: Some(vec!["0.0.0.0/0".into()]), ..Default::default() }),
            AdminRequest::Leave,
            AdminRequest::Bootstrap,
            AdminRequest::JoinCluster { peer: "10.0.0.1:7070".into(), learner: false },
            AdminRequest::Partition { isolate: vec![] },
            AdminRequest::GetConfig,
            AdminRequest::Events { after: None, wait_ms: 0 },
            AdminRequest::Transfers,
            AdminRequest::Pending,
        ];
        for req in local_only {
            let req = Request::Admin(req);
            assert_eq!(may_ask(Caller::Local, view(), &req), Ok(()));
            for caller in [Caller::Member(PEER), Caller::Outsider(Some(OUTSIDER)), Caller::Outsider(None)] {
                let refused = may_ask(caller, view(), &req).unwrap_err();
                assert!(refused.contains("own command line"), "{caller:?} {req:?}: {refused}");
            }
        }
    }
}
