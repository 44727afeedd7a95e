//! The schedule of a run, generated from the seed alone: what the workload does to which
//! node's folder and when, and which fault strikes when. Pure: no clock, no I/O, so the
//! same seed always gives the same plan (`jepsen-lite plan` prints it).
//!
//! Targets are logical: a `slot` is "the k-th member" (a node replaced by the membership
//! nemesis hands its slot to its successor), and `Target::Leader` is resolved when the
//! fault strikes.

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Folders the workload writes into, nested ones included.
const DIRS: [&str; 7] = ["", "docs/", "docs/notes/", "photos/2024/trip/", "a/b/c/d/e/", "music/live/", "a/b/"];

/// A kind of fault, as `--nemesis` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NemesisKind {
    /// `kill -9` a node (often the leader) and restart it later.
    Kill,
    /// SIGSTOP a node (often the leader), SIGCONT it later.
    Pause,
    /// Cut the network: an isolated leader, a majority and a minority, or a bridge.
    Partition,
    /// Replace a member (often the leader) while the load runs: join a new node as a
    /// learner, promote it, remove the old one.
    Membership,
}

impl NemesisKind {
    /// Every kind, what `all` means.
    pub const ALL: [NemesisKind; 4] =
        [NemesisKind::Kill, NemesisKind::Pause, NemesisKind::Partition, NemesisKind::Membership];

    /// Parse `all`, `none`, or a comma-separated list of kinds.
    pub fn parse_list(text: &str) -> Result<Vec<NemesisKind>, String> {
        let mut out = BTreeSet::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "all" => out.extend(NemesisKind::ALL),
                "none" => {}
                "kill" => _ = out.insert(NemesisKind::Kill),
                "pause" => _ = out.insert(NemesisKind::Pause),
                "partition" => _ = out.insert(NemesisKind::Partition),
                "membership" => _ = out.insert(NemesisKind::Membership),
                other => {
                    return Err(format!(
                        "unknown nemesis {other:?}: use all, none, or a list of kill, pause, partition, membership"
                    ))
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The name `--nemesis` takes.
    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Partition => "partition",
            NemesisKind::Membership => "membership",
        }
    }
}

/// Everything a plan is generated from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanConfig {
    pub seed: u64,
    /// Members (slots) of the cluster.
    pub nodes: usize,
    /// How long the load and the faults run.
    pub time_ms: u64,
    /// Workload operations per second, on average.
    pub rate: f64,
    pub nemeses: Vec<NemesisKind>,
}

/// The whole schedule of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub config: PlanConfig,
    pub ops: Vec<PlannedOp>,
    pub faults: Vec<PlannedFault>,
}

/// One workload operation and when it starts (ms after the load starts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedOp {
    pub id: u64,
    pub at_ms: u64,
    #[serde(flatten)]
    pub op: WorkOp,
}

/// What the workload does to a folder, as a user (or a user's editor) would.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WorkOp {
    /// Write `len` bytes to `path` (`new`: an add, else a modify): by a rename from outside
    /// the folder (atomic, how most editors save), or `in_place` (truncate and write).
    Write { slot: usize, path: String, len: usize, in_place: bool, new: bool },
    /// Remove the file (if this node has it).
    Delete { slot: usize, path: String },
    /// Rename a file (if this node has it), possibly into another folder.
    Rename { slot: usize, from: String, to: String },
    /// Remove a folder and everything this node has in it.
    RemoveDir { slot: usize, dir: String },
    /// The same path written on two nodes at once, with different contents.
    Concurrent { slots: [usize; 2], path: String, len: usize },
}

/// One fault, when it strikes and how long it lasts (ms after the load starts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedFault {
    pub at_ms: u64,
    pub duration_ms: u64,
    #[serde(flatten)]
    pub fault: Fault,
}

/// A fault, with its target still logical.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    Kill {
        target: Target,
    },
    Pause {
        target: Target,
    },
    /// `order` is a shuffle of the slots, from which the sides are taken.
    Partition {
        shape: Shape,
        order: Vec<usize>,
    },
    /// Replace the target with a new node; the old one goes by `leave` or by `remove ID`.
    Replace {
        target: Target,
        via_leave: bool,
    },
}

/// Whom a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Whoever leads when the fault strikes.
    Leader,
    /// The node in this slot.
    Slot(usize),
}

/// The form of a network partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// The leader alone on one side.
    IsolateLeader,
    /// A random minority and majority.
    Halves,
    /// A minority that holds the leader.
    LeaderInMinority,
    /// Two sides that cannot talk to each other, and one node that talks to both.
    Bridge,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Leader => write!(f, "the leader"),
            Target::Slot(k) => write!(f, "slot {k}"),
        }
    }
}

impl Plan {
    /// The plan of `config`; the workload and the faults come from independent streams
    /// of the seed, so changing `--nemesis` keeps the same workload.
    pub fn generate(config: PlanConfig) -> Plan {
        let ops = plan_ops(&config, &mut Rng::stream(config.seed, 1));
        let faults = plan_faults(&config, &mut Rng::stream(config.seed, 2));
        Plan { config, ops, faults }
    }

    /// One line for people: how many ops and faults of each kind.
    pub fn summary(&self) -> String {
        let mut kinds: Vec<(&str, usize)> = vec![];
        for f in &self.faults {
            let name = match f.fault {
                Fault::Kill { .. } => "kill",
                Fault::Pause { .. } => "pause",
                Fault::Partition { .. } => "partition",
                Fault::Replace { .. } => "membership",
            };
            match kinds.iter_mut().find(|(k, _)| *k == name) {
                Some((_, n)) => *n += 1,
                None => kinds.push((name, 1)),
            }
        }
        let faults: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        format!(
            "{} ops, {} faults{}",
            self.ops.len(),
            self.faults.len(),
            if faults.is_empty() { String::new() } else { format!(" ({})", faults.join(", ")) }
        )
    }
}

fn plan_ops(config: &PlanConfig, rng: &mut Rng) -> Vec<PlannedOp> {
    let n = config.nodes.max(1) as u64;
    let gap = (1000.0 / config.rate.max(0.01)) as u64;
    let large_cap = 1 + config.time_ms / 15_000;
    let mut large = 0;
    // The paths that exist as the workload intends it (replication lag aside).
    let mut live: BTreeSet<String> = BTreeSet::new();
    let mut ops = Vec::new();
    let mut at = 300;
    let mut id = 0;
    while at < config.time_ms {
        id += 1;
        let slot = rng.below(n) as usize;
        let roll = rng.below(100);
        let small = |rng: &mut Rng| rng.range(64, 8192) as usize;
        let op = if live.is_empty() || roll < 28 {
            let path = format!("{}f{id}.txt", rng.pick(&DIRS));
            live.insert(path.clone());
            let len = small(rng);
            WorkOp::Write { slot, path, len, in_place: rng.percent(30), new: true }
        } else if roll < 53 {
            let path = pick_live(rng, &live);
            let len = small(rng);
            WorkOp::Write { slot, path, len, in_place: rng.percent(30), new: false }
        } else if roll < 65 {
            let path = pick_live(rng, &live);
            live.remove(&path);
            WorkOp::Delete { slot, path }
        } else if roll < 73 {
            let from = pick_live(rng, &live);
            let ext = if from.ends_with(".bin") { "bin" } else { "txt" };
            let to = format!("{}r{id}.{ext}", rng.pick(&DIRS));
            live.remove(&from);
            live.insert(to.clone());
            WorkOp::Rename { slot, from, to }
        } else if roll < 83 && n > 1 {
            let other = ((slot as u64 + 1 + rng.below(n - 1)) % n) as usize;
            let path = if rng.percent(50) { pick_live(rng, &live) } else { format!("{}c{id}.txt", rng.pick(&DIRS)) };
            live.insert(path.clone());
            WorkOp::Concurrent { slots: [slot, other], path, len: small(rng) }
        } else if roll < 86 {
            let dirs: Vec<String> =
                live.iter().flat_map(|p| dir_prefixes(p)).collect::<BTreeSet<_>>().into_iter().collect();
            if dirs.is_empty() {
                let path = pick_live(rng, &live);
                live.remove(&path);
                WorkOp::Delete { slot, path }
            } else {
                let dir = rng.pick(&dirs).clone();
                live.retain(|p| !p.starts_with(&dir));
                WorkOp::RemoveDir { slot, dir }
            }
        } else if large < large_cap && roll >= 96 {
            large += 1;
            let len = rng.range(1_200_000, 4_500_000) as usize;
            let path = format!("{}big{id}.bin", rng.pick(&DIRS));
            live.insert(path.clone());
            WorkOp::Write { slot, path, len, in_place: false, new: true }
        } else {
            let path = format!("{}f{id}.txt", rng.pick(&DIRS));
            live.insert(path.clone());
            WorkOp::Write { slot, path, len: small(rng), in_place: rng.percent(30), new: true }
        };
        ops.push(PlannedOp { id, at_ms: at, op });
        at += rng.range(gap / 5, gap * 9 / 5 + 1);
    }
    ops
}

fn pick_live(rng: &mut Rng, live: &BTreeSet<String>) -> String {
    live.iter().nth(rng.below(live.len() as u64) as usize).cloned().expect("a live path")
}

/// `a/b/c.txt` → `a/`, `a/b/`.
fn dir_prefixes(path: &str) -> Vec<String> {
    path.match_indices('/').map(|(i, _)| path[..=i].to_string()).collect()
}

fn plan_faults(config: &PlanConfig, rng: &mut Rng) -> Vec<PlannedFault> {
    let n = config.nodes.max(1);
    let kinds: Vec<NemesisKind> =
        config.nemeses.iter().copied().filter(|k| *k != NemesisKind::Partition || n > 1).collect();
    let mut faults = Vec::new();
    if kinds.is_empty() {
        return faults;
    }
    let target = |rng: &mut Rng, leader_percent| {
        if rng.percent(leader_percent) {
            Target::Leader
        } else {
            Target::Slot(rng.below(n as u64) as usize)
        }
    };
    // Let the cluster take a little load before the first fault.
    let mut at = 2_500;
    // Kinds are dealt from a shuffled deck, so a short run still sees each of them.
    let mut deck: Vec<NemesisKind> = vec![];
    while at + 2_000 < config.time_ms {
        if deck.is_empty() {
            deck = kinds.clone();
            rng.shuffle(&mut deck);
        }
        let (fault, duration) = match deck.pop().expect("a dealt kind") {
            NemesisKind::Kill => (Fault::Kill { target: target(rng, 50) }, rng.range(2_000, 6_000)),
            NemesisKind::Pause => (Fault::Pause { target: target(rng, 50) }, rng.range(1_500, 5_000)),
            NemesisKind::Partition => {
                let shapes: &[Shape] = if n >= 3 {
                    &[Shape::IsolateLeader, Shape::Halves, Shape::LeaderInMinority, Shape::Bridge]
                } else {
                    &[Shape::IsolateLeader, Shape::Halves]
                };
                let shape = *rng.pick(shapes);
                let mut order: Vec<usize> = (0..n).collect();
                rng.shuffle(&mut order);
                (Fault::Partition { shape, order }, rng.range(3_000, 8_000))
            }
            // A replacement takes as long as it takes; what follows waits for it.
            NemesisKind::Membership => (Fault::Replace { target: target(rng, 30), via_leave: rng.percent(50) }, 0),
        };
        let duration = duration.min(config.time_ms - at);
        faults.push(PlannedFault { at_ms: at, duration_ms: duration, fault });
        at += duration.max(4_000) + rng.range(1_500, 4_000);
    }
    faults
}

/// Which members each member cannot reach under `shape`: `cut[i]` holds indexes into the
/// member list. `order` (a shuffle of the slots) picks the sides; `leader` is the leader's
/// index if one is known (else `order[0]` stands in for it).
pub fn partition_cuts(shape: Shape, members: usize, order: &[usize], leader: Option<usize>) -> Vec<BTreeSet<usize>> {
    let mut order: Vec<usize> = order.iter().copied().filter(|i| *i < members).collect();
    for i in 0..members {
        if !order.contains(&i) {
            order.push(i);
        }
    }
    let leader = leader.filter(|l| *l < members).unwrap_or(order[0]);
    let mut cut = vec![BTreeSet::new(); members];
    let mut split = |left: &[usize], right: &[usize]| {
        for &a in left {
            for &b in right {
                cut[a].insert(b);
                cut[b].insert(a);
            }
        }
    };
    match shape {
        Shape::IsolateLeader => {
            let rest: Vec<usize> = (0..members).filter(|i| *i != leader).collect();
            split(&[leader], &rest);
        }
        Shape::Halves => {
            let (minority, majority) = order.split_at(members / 2);
            split(minority, majority);
        }
        Shape::LeaderInMinority => {
            let others: Vec<usize> = order.iter().copied().filter(|i| *i != leader).collect();
            let mut minority = vec![leader];
            minority.extend(others.iter().take((members / 2).saturating_sub(1)));
            let majority: Vec<usize> = (0..members).filter(|i| !minority.contains(i)).collect();
            split(&minority, &majority);
        }
        Shape::Bridge => {
            let rest = &order[1..];
            let (left, right) = rest.split_at(rest.len() / 2);
            split(left, right);
        }
    }
    cut
}

/// The paths a plan ever writes, for tests: every write, rename target and concurrent path.
pub fn planned_paths(plan: &Plan) -> HashSet<String> {
    plan.ops
        .iter()
        .filter_map(|op| match &op.op {
            WorkOp::Write { path, .. } | WorkOp::Concurrent { path, .. } => Some(path.clone()),
            WorkOp::Rename { to, .. } => Some(to.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64, nemeses: Vec<NemesisKind>) -> PlanConfig {
        PlanConfig { seed, nodes: 5, time_ms: 60_000, rate: 4.0, nemeses }
    }

    #[test]
    fn a_seed_gives_the_same_plan_and_another_seed_another() {
        let a = Plan::generate(config(7, NemesisKind::ALL.to_vec()));
        assert_eq!(a, Plan::generate(config(7, NemesisKind::ALL.to_vec())));
        assert_ne!(a.ops, Plan::generate(config(8, NemesisKind::ALL.to_vec())).ops);
        assert!(a.ops.len() > 150, "about 4 ops a second: {}", a.ops.len());
        assert!(!a.faults.is_empty());
    }

    #[test]
    fn the_workload_does_not_depend_on_the_faults() {
        let all = Plan::generate(config(3, NemesisKind::ALL.to_vec()));
        let none = Plan::generate(config(3, vec![]));
        assert_eq!(all.ops, none.ops);
        assert!(none.faults.is_empty());
        let kills = Plan::generate(config(3, vec![NemesisKind::Kill]));
        assert!(kills.faults.iter().all(|f| matches!(f.fault, Fault::Kill { .. })));
    }

    #[test]
    fn the_workload_mixes_every_kind_of_edit() {
        let plan = Plan::generate(config(11, vec![]));
        let has = |f: &dyn Fn(&WorkOp) -> bool| plan.ops.iter().any(|o| f(&o.op));
        assert!(has(&|o| matches!(o, WorkOp::Write { new: true, .. })));
        assert!(has(&|o| matches!(o, WorkOp::Write { new: false, .. })));
        assert!(has(&|o| matches!(o, WorkOp::Write { in_place: true, .. })));
        assert!(has(&|o| matches!(o, WorkOp::Write { len, .. } if *len > 1_000_000)));
        assert!(has(&|o| matches!(o, WorkOp::Delete { .. })));
        assert!(has(&|o| matches!(o, WorkOp::Rename { .. })));
        assert!(has(&|o| matches!(o, WorkOp::RemoveDir { .. })));
        assert!(has(&|o| matches!(o, WorkOp::Concurrent { slots, .. } if slots[0] != slots[1])));
        assert!(planned_paths(&plan).iter().any(|p| p.matches('/').count() >= 3), "nested folders");
    }

    #[test]
    fn a_short_run_sees_every_kind_of_fault() {
        let kinds = |plan: &Plan| {
            plan.faults
                .iter()
                .map(|f| match f.fault {
                    Fault::Kill { .. } => NemesisKind::Kill,
                    Fault::Pause { .. } => NemesisKind::Pause,
                    Fault::Partition { .. } => NemesisKind::Partition,
                    Fault::Replace { .. } => NemesisKind::Membership,
                })
                .collect::<BTreeSet<_>>()
        };
        for seed in 0..20 {
            let two = vec![NemesisKind::Pause, NemesisKind::Membership];
            let plan = Plan::generate(PlanConfig { time_ms: 20_000, ..config(seed, two.clone()) });
            assert_eq!(kinds(&plan).into_iter().collect::<Vec<_>>(), two, "seed {seed}: {}", plan.summary());
            let plan = Plan::generate(PlanConfig { time_ms: 40_000, ..config(seed, NemesisKind::ALL.to_vec()) });
            assert_eq!(kinds(&plan).len(), 4, "seed {seed}: {}", plan.summary());
        }
    }

    #[test]
    fn faults_do_not_overlap_and_end_within_the_run() {
        let plan = Plan::generate(config(5, NemesisKind::ALL.to_vec()));
        for pair in plan.faults.windows(2) {
            assert!(pair[0].at_ms + pair[0].duration_ms < pair[1].at_ms, "{pair:?}");
        }
        assert!(plan.faults.iter().all(|f| f.at_ms + f.duration_ms <= 60_000));
    }

    #[test]
    fn nemesis_lists_parse() {
        assert_eq!(NemesisKind::parse_list("all").unwrap(), NemesisKind::ALL.to_vec());
        assert_eq!(NemesisKind::parse_list("none").unwrap(), vec![]);
        assert_eq!(NemesisKind::parse_list("partition,kill").unwrap(), vec![NemesisKind::Kill, NemesisKind::Partition]);
        assert!(NemesisKind::parse_list("kill,flood").unwrap_err().contains("flood"));
    }

    fn sides(cut: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
        cut.iter().map(|c| c.iter().copied().collect()).collect()
    }

    #[test]
    fn partitions_cut_the_right_pairs() {
        // The leader (index 1) alone.
        let cut = partition_cuts(Shape::IsolateLeader, 3, &[0, 1, 2], Some(1));
        assert_eq!(sides(&cut), vec![vec![1], vec![0, 2], vec![1]]);
        // Halves of 5: the first two of the order against the other three.
        let cut = partition_cuts(Shape::Halves, 5, &[4, 2, 0, 1, 3], None);
        assert_eq!(sides(&cut)[4], vec![0, 1, 3]);
        assert_eq!(sides(&cut)[0], vec![2, 4]);
        // The leader and one more in the minority of 5.
        let cut = partition_cuts(Shape::LeaderInMinority, 5, &[0, 1, 2, 3, 4], Some(3));
        assert_eq!(sides(&cut)[3], vec![1, 2, 4]);
        assert_eq!(sides(&cut)[0], vec![1, 2, 4]);
        // A bridge: order[0] reaches everyone, the two sides do not reach each other.
        let cut = partition_cuts(Shape::Bridge, 5, &[2, 0, 1, 3, 4], None);
        assert!(cut[2].is_empty());
        assert_eq!(sides(&cut)[0], vec![3, 4]);
        assert_eq!(sides(&cut)[4], vec![0, 1]);
        let cut = partition_cuts(Shape::Bridge, 3, &[1, 0, 2], None);
        assert_eq!(sides(&cut), vec![vec![2], vec![], vec![0]]);
        // A cut is symmetric.
        for shape in [Shape::IsolateLeader, Shape::Halves, Shape::LeaderInMinority, Shape::Bridge] {
            let cut = partition_cuts(shape, 5, &[3, 1, 4, 0, 2], Some(2));
            for (a, set) in cut.iter().enumerate() {
                for b in set {
                    assert!(cut[*b].contains(&a), "{shape:?}");
                }
            }
        }
    }
}
