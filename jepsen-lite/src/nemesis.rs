//! The nemesis: strikes the plan's faults at their times and heals each before the next
//! (one fault at a time). Every action goes to the history as it happens.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::cluster::{retry, Cluster, Node, LISTING, QUICK};
use crate::history::History;
use crate::plan::{partition_cuts, Fault, PlannedFault, Target};
use crate::tree;

/// Longest wait for a node to be replaced to hand its files over.
const HANDOVER: Duration = Duration::from_secs(30);
/// One `join`, `promote`, `leave` or `remove` attempt (a few are made).
const CHANGE: Duration = Duration::from_secs(30);

/// A fault in force, and what healing it takes.
enum Active {
    Nothing,
    Killed(Arc<Node>),
    Paused(Arc<Node>),
    Partitioned(Vec<Arc<Node>>),
}

/// Strikes faults on a cluster.
pub struct Nemesis<'a> {
    pub cluster: &'a Cluster,
    pub history: &'a History,
}

impl Nemesis<'_> {
    /// Strike each fault at its time after `start`, heal it after its duration; stop
    /// early (healing what is in force) when `stop` is set.
    pub fn run(&self, faults: &[PlannedFault], start: Instant, stop: &AtomicBool) {
        for planned in faults {
            if !sleep_until(start + Duration::from_millis(planned.at_ms), stop) {
                return;
            }
            let active = match self.strike(&planned.fault, stop) {
                Ok(active) => active,
                Err(e) => {
                    self.history.nemesis("failed", &[], format!("{:?}: {e:#}", planned.fault));
                    Active::Nothing
                }
            };
            sleep_until(Instant::now() + Duration::from_millis(planned.duration_ms), stop);
            self.heal(active);
        }
    }

    /// The node a target names now, and how to say which it was.
    fn target(&self, target: Target) -> Result<(Arc<Node>, String)> {
        match target {
            Target::Leader => {
                let leader = self.cluster.leader(Duration::from_secs(5)).ok_or_else(|| anyhow!("no leader known"))?;
                Ok((leader, "(the leader)".into()))
            }
            Target::Slot(k) => {
                let node = self.cluster.slot(k).ok_or_else(|| anyhow!("no members"))?;
                let leads = self.cluster.leader(Duration::ZERO).is_some_and(|l| l.id == node.id);
                Ok((node, format!("(slot {k}{})", if leads { ", the leader" } else { "" })))
            }
        }
    }

    fn strike(&self, fault: &Fault, stop: &AtomicBool) -> Result<Active> {
        match fault {
            Fault::Kill { target } => {
                let (node, role) = self.target(*target)?;
                node.kill9();
                self.history.nemesis("kill", &[&node.name], format!("kill -9 {role}"));
                Ok(Active::Killed(node))
            }
            Fault::Pause { target } => {
                let (node, role) = self.target(*target)?;
                node.pause()?;
                self.history.nemesis("pause", &[&node.name], format!("SIGSTOP {role}"));
                Ok(Active::Paused(node))
            }
            Fault::Partition { shape, order } => {
                let members = self.cluster.slots();
                let leader = self.cluster.leader(Duration::from_secs(5));
                let leader_at = leader.and_then(|l| members.iter().position(|m| m.id == l.id));
                let cuts = partition_cuts(*shape, members.len(), order, leader_at);
                let mut detail = Vec::new();
                for (i, node) in members.iter().enumerate() {
                    let ids: Vec<String> = cuts[i].iter().map(|j| members[*j].id.to_string()).collect();
                    let mut args = vec!["partition"];
                    args.extend(ids.iter().map(String::as_str));
                    if let Err(e) = retry(2, || node.cli(&args, QUICK)) {
                        self.history.nemesis("failed", &[&node.name], format!("partition: {e:#}"));
                    }
                    let names: Vec<&str> = cuts[i].iter().map(|j| members[*j].name.as_str()).collect();
                    if !names.is_empty() {
                        detail.push(format!("{}-x-{}", node.name, names.join(",")));
                    }
                }
                let leader_name = leader_at.map(|l| members[l].name.clone()).unwrap_or("none known".into());
                self.history.nemesis(
                    "partition",
                    &members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
                    format!("{shape:?} (leader {leader_name}): {}", detail.join(" ")),
                );
                Ok(Active::Partitioned(members))
            }
            Fault::Replace { target, via_leave } => {
                let (old, role) = self.target(*target)?;
                self.replace(&old, &role, *via_leave, stop)?;
                Ok(Active::Nothing)
            }
        }
    }

    /// Join a new node as a learner, promote it, then take `old` out and retire it.
    fn replace(&self, old: &Arc<Node>, role: &str, via_leave: bool, stop: &AtomicBool) -> Result<()> {
        let new = self.cluster.new_node()?;
        self.history.nemesis(
            "membership",
            &[&new.name],
            format!("new node {} started to replace {}", new.id, old.name),
        );
        let contact =
            self.cluster.slots().iter().find_map(|n| n.addr()).ok_or_else(|| anyhow!("no member tells its address"))?;
        // Right after a fault there may be no leader for a few seconds: try again, as a user would.
        if let Err(e) = retry(5, || new.cli(&["join", &contact, "--learner"], CHANGE)) {
            let member = self.cluster.members(Duration::from_secs(5)).is_some_and(|m| m.contains(&new.id));
            if !member {
                self.cluster.retire(&new);
                return Err(e.context(format!("{} could not join", new.name)));
            }
        }
        self.history.nemesis("membership", &[&new.name], "joined as a learner");
        let id = new.id.to_string();
        retry(3, || new.cli(&["promote", &id], CHANGE))?;
        self.history.nemesis("membership", &[&new.name], "promoted to voter");
        self.cluster.replace_slot(old, new.clone());
        // A computer is taken out the careful way: once the others hold every file it
        // made (raftshare fetches content from its origin after the commit, so removing a
        // node sooner can lose content that only it had).
        let start = Instant::now();
        let handover = loop {
            match self.handed_over(old) {
                Ok(()) => break Ok(()),
                Err(why) if start.elapsed() > HANDOVER || stop.load(Ordering::SeqCst) => break Err(why),
                Err(_) => thread::sleep(Duration::from_millis(500)),
            }
        };
        match handover {
            Ok(()) => self.history.nemesis("membership", &[&old.name], "the others hold every file it made"),
            Err(why) => self.history.nemesis(
                "membership",
                &[&old.name],
                format!("HANDOVER INCOMPLETE after {:.0} s, removed anyway: {why}", start.elapsed().as_secs_f64()),
            ),
        }
        let old_id = old.id.to_string();
        let removed = if via_leave {
            retry(3, || old.cli(&["leave"], CHANGE))
        } else {
            let other =
                self.cluster.slots().into_iter().find(|n| n.id != old.id).ok_or_else(|| anyhow!("no member"))?;
            retry(3, || other.cli(&["remove", &old_id], CHANGE))
        };
        removed?;
        let how = if via_leave { "`leave`" } else { "`remove`" };
        self.history.nemesis("membership", &[&old.name], format!("{role} removed by {how}"));
        // Retire it once the cluster no longer lists it (its last entries may still be
        // on their way to it).
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if self.cluster.members(Duration::from_secs(2)).is_some_and(|m| !m.contains(&old.id)) {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        self.cluster.retire(old);
        self.history.nemesis("membership", &[&old.name], "retired (stopped)");
        Ok(())
    }

    /// Ok once `old` has nothing left to propose and every live file it made that it
    /// still holds is, with the same content, in the folder of another member; else what
    /// is missing. (A file it made that is on no disk at all, its own included, cannot be
    /// handed over: check 1 reports it.)
    fn handed_over(&self, old: &Node) -> Result<(), String> {
        let status = old.status().ok_or_else(|| format!("{} does not answer", old.name))?;
        if status["pending_outbox"].as_u64() != Some(0) {
            return Err(format!("{} still has {} local changes to commit", old.name, status["pending_outbox"]));
        }
        let ls = old.cli_json(&["ls", "--json"], LISTING).map_err(|e| format!("{e:#}"))?;
        let own = tree::hashes_of(&old.shared_dir);
        let others: Vec<BTreeMap<String, String>> =
            self.cluster.slots().iter().filter(|n| n.id != old.id).map(|n| tree::hashes_of(&n.shared_dir)).collect();
        for file in ls.as_array().into_iter().flatten() {
            if file["modified_by_id"].as_u64() != Some(old.id) || file["deleted"] == true {
                continue;
            }
            let (Some(path), Some(hash)) = (file["path"].as_str(), file["hash"].as_str()) else { continue };
            let holds = |t: &BTreeMap<String, String>| t.get(path).map(String::as_str) == Some(hash);
            if holds(&own) && !others.iter().any(holds) {
                return Err(format!("{path} ({}) is only on {}", &hash[..hash.len().min(12)], old.name));
            }
        }
        Ok(())
    }

    fn heal(&self, active: Active) {
        match active {
            Active::Nothing => {}
            Active::Killed(node) => {
                let result = node.start_ready();
                self.history.nemesis("restart", &[&node.name], outcome(&result));
            }
            Active::Paused(node) => {
                let result = node.resume();
                self.history.nemesis("resume", &[&node.name], outcome(&result));
            }
            Active::Partitioned(nodes) => {
                for node in &nodes {
                    if let Err(e) = retry(3, || node.cli(&["partition"], QUICK)) {
                        self.history.nemesis("failed", &[&node.name], format!("heal: {e:#}"));
                    }
                }
                let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                self.history.nemesis("heal", &names, "partition healed");
            }
        }
    }
}

fn outcome(result: &Result<()>) -> String {
    match result {
        Ok(()) => "ok".into(),
        Err(e) => format!("FAILED: {e:#}"),
    }
}

/// Sleep until `at`; false if `stop` was set first.
pub fn sleep_until(at: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= at {
            return true;
        }
        thread::sleep((at - now).min(Duration::from_millis(50)));
    }
}
