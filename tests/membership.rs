//! Snapshots, log compaction and the membership lifecycle, with real processes.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use common::{hash_hex, wait_agree, wait_trees, wait_until, Cluster, TestNode};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(60);

fn small_snapshots(node: &mut TestNode) {
    node.set_config("snapshot_every", "100");
}

/// `n` changes (adds, modifies, deletes) on `node`, in groups of four that each wait
/// for their commit, so they become many log entries rather than a few large batches.
fn make_changes(node: &TestNode, n: usize, tag: &str) {
    let mut before = node.stat("last_log_index");
    for i in 0..n {
        let path = format!("work/{tag}/f{}.txt", i % 50);
        if i % 7 == 6 {
            let _ = fs::remove_file(node.shared_dir.join(&path));
        } else {
            node.write(&path, format!("{tag} change {i}").as_bytes());
        }
        if i % 4 == 3 {
            before = wait_until(SETTLE, "a group of changes to commit", || {
                let s = node.status()?;
                let last = s["last_log_index"].as_u64()?;
                (s["pending_outbox"] == 0 && last > before).then_some(last)
            });
        }
    }
}

fn ls(node: &TestNode) -> Vec<Value> {
    serde_json::from_str::<Value>(&node.cli_ok(&["ls", "--json", "--all"])).unwrap().as_array().unwrap().clone()
}

#[test]
fn snapshots_bound_the_log_and_a_new_node_joins_from_one() {
    let cluster = Cluster::start_with(3, small_snapshots);
    make_changes(&cluster.nodes[0], 1000, "a");
    let all: Vec<&TestNode> = cluster.nodes.iter().collect();
    let tree = wait_trees(&all, None, SETTLE, "the 1000 changes everywhere");
    assert!(!tree.is_empty());
    let statuses = wait_until(SETTLE, "every node to have snapshotted and purged its log", || {
        let s: Vec<Value> = all.iter().map(|n| n.status()).collect::<Option<_>>()?;
        s.iter().all(|s| s["first_log_index"].as_u64().is_some_and(|f| f > 0)).then_some(s)
    });
    for s in &statuses {
        let (first, last) = (s["first_log_index"].as_u64().unwrap(), s["last_log_index"].as_u64().unwrap());
        assert!(last > 250, "1000 changes made hundreds of entries: {s}");
        let kept = (last + 1).checked_sub(first).unwrap_or_else(|| panic!("first_log_index passes the end: {s}"));
        assert!(kept < 150, "the log is bounded by the snapshots ({first}..={last}): {s}");
        assert!(s["log_size_bytes"].as_u64().unwrap() < 1 << 20, "the kept log is small on disk: {s}");
        assert!(!s["snapshot_index"].is_null());
    }

    let mut d = TestNode::init("d", &["--key", &cluster.nodes[0].key()]);
    small_snapshots(&mut d);
    d.start_ready();
    d.cli_ok(&["join", &cluster.nodes[0].addr()]);
    let first_kept = statuses.iter().map(|s| s["first_log_index"].as_u64().unwrap()).min().unwrap();
    wait_trees(&[&cluster.nodes[0], &d], Some(&tree), SETTLE, "d to fetch the whole folder");
    let log = d.log();
    assert!(
        log.iter().all(|e| e["index"].as_u64().unwrap() >= first_kept),
        "d got a snapshot, not the early log (first entry {})",
        log.first().map(|e| e["index"].to_string()).unwrap_or_default()
    );
    assert!(!d.status().unwrap()["snapshot_index"].is_null(), "d installed a snapshot");
    // The table, tombstones included: the leader may have just committed the forgetting
    // of tombstones that b applied and d is about to.
    let b = &cluster.nodes[1];
    let same = (|| {
        let deadline = std::time::Instant::now() + SETTLE;
        while std::time::Instant::now() < deadline {
            if ls(&d) == ls(b) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })();
    if !same {
        assert_eq!(ls(&d), ls(b), "d's file table is the others'");
    }
}

#[test]
fn a_node_stopped_across_snapshots_catches_up_and_deletes_stay_deleted() {
    let mut cluster = Cluster::start_with(3, small_snapshots);
    for i in 0..20 {
        cluster.nodes[0].write(&format!("old/{i}.txt"), format!("old {i}").as_bytes());
    }
    wait_trees(&cluster.nodes.iter().collect::<Vec<_>>(), None, SETTLE, "the old files everywhere");
    let c_last = cluster.nodes[2].stat("last_log_index");
    cluster.nodes[2].stop();

    for i in 0..10 {
        fs::remove_file(cluster.nodes[1].shared_dir.join(format!("old/{i}.txt"))).unwrap();
    }
    make_changes(&cluster.nodes[0], 600, "while-away");
    let tree = wait_trees(&[&cluster.nodes[0], &cluster.nodes[1]], None, SETTLE, "a and b to agree");
    wait_until(SETTLE, "a's log to be purged past what c has", || {
        (cluster.nodes[0].status()?["first_log_index"].as_u64()? > c_last + 1).then_some(())
    });

    cluster.nodes[2].start_ready();
    let all: Vec<&TestNode> = cluster.nodes.iter().collect();
    wait_trees(&all, Some(&tree), SETTLE, "c to catch up by snapshot");
    for i in 0..10 {
        assert!(!tree.contains_key(&format!("old/{i}.txt")));
    }
    // Nothing deleted comes back once c has settled.
    wait_until(SETTLE, "c's outbox and downloads to drain", || {
        let s = cluster.nodes[2].status()?;
        (s["pending_outbox"] == 0 && s["pending_downloads"] == 0).then_some(())
    });
    wait_trees(&all, Some(&tree), Duration::from_secs(5), "the trees to stay as they are");
    let live: Vec<String> = ls(&cluster.nodes[2])
        .iter()
        .filter(|f| f["deleted"] == false)
        .map(|f| f["path"].as_str().unwrap().into())
        .collect();
    for i in 0..10 {
        assert!(!live.contains(&format!("old/{i}.txt")), "old/{i}.txt came back");
    }
}

#[test]
fn removing_a_dead_voter_keeps_quorum_and_a_wiped_computer_joins_again() {
    let mut cluster = Cluster::start(3);
    cluster.nodes[0].write("before.txt", b"before");
    wait_trees(&cluster.nodes.iter().collect::<Vec<_>>(), None, SETTLE, "before.txt everywhere");
    let c_id = cluster.nodes[2].node_id();
    cluster.nodes[2].kill9();
    let out = cluster.nodes[0].cli_ok(&["remove", &c_id.to_string()]);
    assert!(out.contains("removed"), "{out}");
    let pair = [&cluster.nodes[0], &cluster.nodes[1]];
    let statuses = wait_agree(&pair, 2, Duration::from_secs(10));
    assert!(statuses.iter().all(|s| s["members"].as_array().unwrap().iter().all(|m| m["id"] != c_id)));

    // Two out of two commit.
    cluster.nodes[1].write("with-two.txt", b"quorum of two");
    let want = BTreeMap::from([
        ("before.txt".to_string(), hash_hex(b"before")),
        ("with-two.txt".to_string(), hash_hex(b"quorum of two")),
    ]);
    wait_trees(&pair, Some(&want), SETTLE, "a write to commit on the two remaining voters");

    // The computer is wiped and set up again (new id, same shared folder), and joins.
    let key = cluster.nodes[0].key();
    cluster.nodes[2].reinit(&["--key", &key]);
    assert_ne!(cluster.nodes[2].node_id(), c_id);
    cluster.nodes[2].start_ready();
    cluster.nodes[2].cli_ok(&["join", &cluster.nodes[1].addr()]);
    cluster.wait_converged(Duration::from_secs(20));
    wait_trees(&cluster.nodes.iter().collect::<Vec<_>>(), Some(&want), SETTLE, "the re-added node to sync");
}

#[test]
fn a_learner_gets_every_change_but_does_not_count_for_quorum() {
    let mut cluster = Cluster::start(2);
    let mut c = TestNode::init("c", &["--key", &cluster.nodes[0].key()]);
    c.start_ready();
    c.cli_ok(&["join", &cluster.nodes[0].addr(), "--learner"]);
    let c_id = c.node_id();
    wait_until(Duration::from_secs(10), "c to be listed as a learner", || {
        let s = cluster.nodes[0].status()?;
        s["members"].as_array()?.iter().any(|m| m["id"] == c_id && m["voter"] == false).then_some(())
    });
    assert_eq!(c.status().unwrap()["role"], "learner");
    cluster.nodes[0].write("one.txt", b"1");
    wait_trees(&[&cluster.nodes[0], &cluster.nodes[1], &c], None, SETTLE, "the learner to receive the change");
    assert_eq!(c.tree().len(), 1);

    // One of two voters down: no quorum, even though the learner is up.
    let leader = cluster.leader();
    let other = 1 - leader;
    cluster.nodes[other].kill9();
    let committed = cluster.nodes[leader].stat("committed_index");
    cluster.nodes[leader].write("two.txt", b"2");
    wait_until(Duration::from_secs(10), "the write to wait in the outbox", || {
        (cluster.nodes[leader].stat("pending_outbox") == 1).then_some(())
    });
    // Several heartbeat rounds later it still has not committed, and the learner has not got it.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(cluster.nodes[leader].stat("committed_index"), committed, "committed without a quorum");
        assert!(!c.shared_dir.join("two.txt").exists());
    }

    cluster.nodes[other].start_ready();
    wait_trees(&[&cluster.nodes[0], &cluster.nodes[1], &c], None, SETTLE, "the write to commit once the voter is back");
    assert_eq!(c.tree().len(), 2);
    let out = cluster.nodes[0].cli_ok(&["promote", &c_id.to_string()]);
    assert!(out.contains("voter"), "{out}");
    let mut nodes = std::mem::take(&mut cluster.nodes);
    nodes.push(c);
    let cluster = Cluster { nodes };
    cluster.wait_converged(Duration::from_secs(20));
}

#[test]
fn restarting_every_node_after_snapshots_loses_nothing() {
    let mut cluster = Cluster::start_with(3, small_snapshots);
    make_changes(&cluster.nodes[1], 500, "b");
    let all: Vec<&TestNode> = cluster.nodes.iter().collect();
    let tree = wait_trees(&all, None, SETTLE, "the changes everywhere");
    wait_until(SETTLE, "snapshots and purges on every node", || {
        all.iter()
            .all(|n| n.status().is_some_and(|s| s["first_log_index"].as_u64().is_some_and(|f| f > 0)))
            .then_some(())
    });
    // The live records: tombstones may be forgotten at any time once every member has
    // applied them, before or after the restart (a CI run met one forgotten in between).
    let live = |n: &TestNode| -> Vec<Value> { ls(n).into_iter().filter(|r| r["deleted"] != true).collect() };
    let before: Vec<Vec<Value>> = all.iter().map(|n| live(n)).collect();
    assert!(before.iter().all(|l| *l == before[0]));

    cluster.restart_all();
    cluster.wait_converged(Duration::from_secs(20));
    let all: Vec<&TestNode> = cluster.nodes.iter().collect();
    wait_trees(&all, Some(&tree), SETTLE, "the same files after the restart");
    let after: Vec<Vec<Value>> = all.iter().map(|n| live(n)).collect();
    assert_eq!(after, before, "the file table survives a restart of every node");
}

#[test]
fn tombstones_are_forgotten_once_every_member_applied_the_delete() {
    let cluster = Cluster::start(3);
    for i in 0..5 {
        cluster.nodes[0].write(&format!("tmp/{i}.txt"), b"short-lived");
    }
    cluster.nodes[0].write("stays.txt", b"stays");
    let all: Vec<&TestNode> = cluster.nodes.iter().collect();
    wait_trees(&all, None, SETTLE, "the files everywhere");
    for i in 0..5 {
        fs::remove_file(cluster.nodes[1].shared_dir.join(format!("tmp/{i}.txt"))).unwrap();
    }
    let want = BTreeMap::from([("stays.txt".to_string(), hash_hex(b"stays"))]);
    wait_trees(&all, Some(&want), SETTLE, "the deletes everywhere");
    wait_until(SETTLE, "every node to drop the tombstones", || {
        all.iter().all(|n| ls(n).iter().all(|f| f["deleted"] == false)).then_some(())
    });
    let log = cluster.nodes[2].log();
    assert!(log
        .iter()
        .any(|e| e["ops"].as_array().is_some_and(|ops| ops.iter().any(|op| op["op"] == "forget_deleted"))));
    wait_trees(&all, Some(&want), Duration::from_secs(5), "nothing to come back");
}

#[test]
fn a_node_that_leaves_stops_syncing_and_says_so() {
    let mut cluster = Cluster::start(3);
    cluster.nodes[0].write("shared-before.txt", b"everyone has this");
    let all: Vec<&TestNode> = cluster.nodes.iter().collect();
    let tree = wait_trees(&all, None, SETTLE, "the file everywhere");
    let out = cluster.nodes[2].cli_ok(&["leave"]);
    assert!(out.contains("removed"), "{out}");
    assert_eq!(cluster.nodes[2].status().unwrap()["role"], "removed");
    wait_agree(&[&cluster.nodes[0], &cluster.nodes[1]], 2, Duration::from_secs(10));

    cluster.nodes[0].write("after-leave.txt", b"not for c");
    wait_trees(&[&cluster.nodes[0], &cluster.nodes[1]], None, SETTLE, "a and b to keep syncing");
    assert_eq!(cluster.nodes[1].tree().len(), 2);
    assert_eq!(cluster.nodes[2].tree(), tree, "the node that left keeps its folder as it was");

    cluster.nodes[2].stop();
    let out = cluster.nodes[2].cli(&["run", "--headless"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("left its cluster"));
}

#[test]
fn a_computer_removed_while_it_runs_cannot_commit_its_changes() {
    let cluster = Cluster::start(3);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    a.write("shared-before.txt", b"everyone has this");
    wait_trees(&[a, b, c], None, SETTLE, "the file everywhere");
    a.cli_ok(&["remove", &c.node_id().to_string()]);
    wait_agree(&[a, b], 2, Duration::from_secs(10));

    // c, still running with the key, has a change of its own to propose.
    c.write("from-the-removed-computer.txt", b"nobody could fetch this from it");
    let committed = |n: &TestNode| ls(n).iter().any(|f| f["path"] == "from-the-removed-computer.txt");
    wait_until(SETTLE, "c to be told it is not a member (or its change to commit)", || {
        (c.log_text().contains("is not a member of this cluster") || committed(a)).then_some(())
    });
    let listed = ls(a);
    assert!(
        listed.iter().all(|f| f["path"] != "from-the-removed-computer.txt"),
        "a removed computer's change was committed: {listed:?}"
    );
    a.write("after-remove.txt", b"a and b go on");
    wait_trees(&[a, b], None, SETTLE, "a and b to keep syncing");
    assert_eq!(a.status().unwrap()["pending_downloads"], 0);
}

#[test]
fn removing_a_voter_is_refused_while_too_few_of_the_others_are_online() {
    let mut cluster = Cluster::start(3);
    let c_id = cluster.nodes[2].node_id();
    cluster.nodes[2].stop();
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    wait_until(SETTLE, "a to see c offline", || {
        let status = a.status()?;
        let members = status["members"].as_array()?.clone();
        members.iter().any(|m| m["id"] == c_id && m["online"] == false).then_some(())
    });
    // {a, c} would be left, with c off: nothing could commit until c came back.
    let err = a.cli_err(&["remove", &b.node_id().to_string()]);
    assert!(err.contains("would stall the cluster") && err.contains(&c_id.to_string()), "{err}");
    for node in [a, b] {
        let members = node.status().unwrap()["members"].as_array().unwrap().len();
        assert_eq!(members, 3, "{} lists {members} members: nothing may change", node.name);
    }
    a.write("still-commits.txt", b"a and b go on");
    wait_trees(&[a, b], None, SETTLE, "a and b to keep syncing");
    // The offline one can go.
    assert!(a.cli_ok(&["remove", &c_id.to_string()]).contains("removed"));
}

/// A member that was away while a computer joined, and comes back when that computer
/// leads: its log does not name the leader, but the members it knows vouch for it, so it
/// takes the leader's messages and catches up (only the leader could bring it the entry
/// that names the newcomer).
#[test]
fn a_member_away_while_a_newcomer_joined_follows_the_newcomer_as_leader() {
    // The newcomer's elections start first, so it is the one that takes over.
    let slow = |node: &mut TestNode| {
        node.set_config("election_min_ms", "3000");
        node.set_config("election_max_ms", "4000");
    };
    let mut cluster = Cluster::start_with(3, slow);
    let key = cluster.nodes[0].key();
    cluster.nodes[2].stop();

    let mut d = TestNode::init("d", &["--key", &key]);
    d.set_config("election_min_ms", "500");
    d.set_config("election_max_ms", "700");
    d.start_ready();
    d.cli_ok(&["join", &cluster.nodes[0].addr()]);
    // The first computer leaves the voters: the newcomer leads the rest.
    let a_id = cluster.nodes[0].node_id();
    d.cli_ok(&["remove", &a_id.to_string()]);
    cluster.nodes[0].stop();
    let d_id = d.node_id();
    wait_until(SETTLE, "the newcomer to lead", || {
        let by_b = cluster.nodes[1].status()?["leader_id"].as_u64()?;
        let by_d = d.status()?["leader_id"].as_u64()?;
        (by_b == d_id && by_d == d_id).then_some(())
    });
    d.write("while-c-was-away.txt", b"made by the newcomer's cluster");

    // The member that was away comes back, knowing only A and B.
    let c = &mut cluster.nodes[2];
    c.start_ready();
    wait_until(SETTLE, "c to follow the newcomer and get its file", || {
        let follows = c.status()?["leader_id"].as_u64()? == d_id;
        (follows && c.shared_dir.join("while-c-was-away.txt").exists()).then_some(())
    });
}

/// `remove` and `promote` take a member's name as `status` shows it, as well as its id.
#[test]
fn members_are_removed_and_promoted_by_name() {
    let mut cluster = Cluster::start(3);
    let err = cluster.nodes[0].cli_err(&["remove", "nobody-here"]);
    assert!(err.contains("no member is called") && err.contains("c = "), "{err}");
    cluster.nodes[2].stop();
    let out = cluster.nodes[0].cli_ok(&["remove", "c"]);
    assert!(out.contains("removed"), "{out}");
    let pair = [&cluster.nodes[0], &cluster.nodes[1]];
    wait_agree(&pair, 2, SETTLE);

    let key = cluster.nodes[0].key();
    let mut learner = TestNode::init("late", &["--key", &key]);
    learner.start_ready();
    learner.cli_ok(&["join", "--learner", &cluster.nodes[0].addr()]);
    wait_until(SETTLE, "the learner to be listed", || {
        let s = cluster.nodes[0].status()?;
        s["members"].as_array()?.iter().any(|m| m["name"] == "late" && m["voter"] == false).then_some(())
    });
    cluster.nodes[1].cli_ok(&["promote", "late"]);
    wait_until(SETTLE, "the learner to be a voter", || {
        let s = cluster.nodes[0].status()?;
        s["members"].as_array()?.iter().any(|m| m["name"] == "late" && m["voter"] == true).then_some(())
    });
}
