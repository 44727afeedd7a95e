//! The foundation: a Raft cluster of real `raftshare` processes on 127.0.0.1 that is
//! bootstrapped, joined, broken and inspected from the CLI.

mod common;

use std::time::Duration;

use common::{wait_until, Cluster, TestNode};
use serde_json::Value;

fn voters(status: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["voter"] == true)
        .map(|m| m["id"].as_u64().expect("id"))
        .collect();
    ids.sort();
    ids
}

/// Every node's `log --json` holds the same entries (index, term, content), once they caught up.
fn wait_logs_agree(nodes: &[&TestNode]) -> Vec<Value> {
    wait_until(Duration::from_secs(10), "every node's log to agree entry by entry", || {
        let logs: Vec<Vec<Value>> = nodes.iter().map(|n| n.log()).collect();
        logs.iter().all(|l| *l == logs[0] && !l.is_empty()).then(|| logs[0].clone())
    })
}

#[test]
fn three_nodes_bootstrap_join_and_agree() {
    let cluster = Cluster::start(3);
    let statuses = cluster.wait_converged(Duration::from_secs(10));
    let ids: Vec<u64> = {
        let mut ids: Vec<u64> = cluster.nodes.iter().map(|n| n.node_id()).collect();
        ids.sort();
        ids
    };
    for s in &statuses {
        assert_eq!(voters(s), ids, "every node lists the three voters: {s}");
        let role = s["role"].as_str().unwrap();
        assert!(role == "leader" || role == "follower", "role {role}");
        for field in ["node_id", "name", "addr", "term", "last_log_index", "applied_index", "leader_addr"] {
            assert!(!s[field].is_null(), "status --json has {field}: {s}");
        }
    }
    assert_eq!(statuses.iter().filter(|s| s["role"] == "leader").count(), 1, "exactly one leader");

    // The human views name the same things.
    let text = cluster.nodes[1].cli_ok(&["status"]);
    for node in &cluster.nodes {
        assert!(text.contains(&node.name) && text.contains(&node.node_id().to_string()), "{text}");
    }
    let log = cluster.nodes[2].cli_ok(&["log"]);
    assert!(log.contains("membership"), "{log}");
}

#[test]
fn leader_killed_new_leader_elected_and_old_one_rejoins() {
    let mut cluster = Cluster::start(3);
    let old = cluster.leader();
    let old_id = cluster.nodes[old].node_id();
    let old_term = cluster.nodes[old].status().unwrap()["term"].as_u64().unwrap();
    cluster.nodes[old].kill9();

    let survivors: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new_leader = wait_until(Duration::from_secs(20), "the two survivors to elect a new leader", || {
        let statuses: Vec<Value> = survivors.iter().map(|i| cluster.nodes[*i].status()).collect::<Option<_>>()?;
        let leader = statuses[0]["leader_id"].as_u64()?;
        (leader != old_id && statuses.iter().all(|s| s["leader_id"].as_u64() == Some(leader))).then_some(leader)
    });
    wait_until(Duration::from_secs(20), "the survivors to show the dead node offline", || {
        survivors
            .iter()
            .all(|i| {
                let s = cluster.nodes[*i].status().unwrap_or_default();
                s["members"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["id"].as_u64() == Some(old_id) && m["online"] == false))
            })
            .then_some(())
    });

    cluster.nodes[old].start_ready();
    let statuses = cluster.wait_converged(Duration::from_secs(15));
    let back = statuses.iter().find(|s| s["node_id"].as_u64() == Some(old_id)).unwrap();
    assert_eq!(back["role"], "follower", "the old leader rejoins as a follower: {back}");
    assert_eq!(back["leader_id"].as_u64(), Some(new_leader));
    assert!(back["term"].as_u64().unwrap() > old_term);

    let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
    let log = wait_logs_agree(&nodes);
    assert!(log.iter().any(|e| e["term"].as_u64().unwrap() > old_term), "the new term's entry is in the log");
    for pair in log.windows(2) {
        assert_eq!(pair[1]["index"].as_u64(), Some(pair[0]["index"].as_u64().unwrap() + 1), "no holes in the log");
    }
}

#[test]
fn full_restart_keeps_membership_term_and_log() {
    let mut cluster = Cluster::start(3);
    let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
    let log_before = wait_logs_agree(&nodes);
    let before = cluster.wait_converged(Duration::from_secs(10));
    let term_before = before[0]["term"].as_u64().unwrap();
    let voters_before = voters(&before[0]);

    cluster.restart_all();
    let after = cluster.wait_converged(Duration::from_secs(15));
    for s in &after {
        assert_eq!(voters(s), voters_before, "membership survives a restart: {s}");
        // The term is durable: it never goes back (a leader whose vote survived may keep its term).
        assert!(s["term"].as_u64().unwrap() >= term_before, "the term survives: {s}");
    }
    let nodes: Vec<&TestNode> = cluster.nodes.iter().collect();
    let log_after = wait_logs_agree(&nodes);
    assert_eq!(&log_after[..log_before.len()], &log_before[..], "the old log is kept as it was");
}

#[test]
fn join_with_the_wrong_key_fails_and_changes_nothing() {
    let cluster = Cluster::start(1);
    let a = &cluster.nodes[0];
    let before = a.status().unwrap();

    let mut stranger = TestNode::init("stranger", &[]);
    stranger.start_ready();
    let err = stranger.cli_err(&["join", &a.addr()]);
    assert!(err.contains("wrong cluster key") || err.contains("another cluster"), "clear message: {err}");

    let after = a.status().unwrap();
    assert_eq!(after["members"], before["members"], "the cluster's members did not change");
    assert_eq!(after["last_log_index"], before["last_log_index"], "nothing was written to the log");
    assert_eq!(stranger.status().unwrap()["role"], "uninitialized");
}

#[test]
fn allow_list_closes_connections_from_other_subnets() {
    let mut guarded = TestNode::init("guarded", &["--allow", "10.0.0.0/8"]);
    guarded.start();
    wait_until(Duration::from_secs(20), "the guarded node to start", || {
        guarded.log_text().contains("raftshare node started").then_some(())
    });
    // Its own command line gets in through the node's socket, whatever the subnets.
    let status = guarded.cli_ok(&["status"]);
    assert!(status.contains("guarded"), "{status}");

    // A peer from 127.0.0.1 trying to join through it is told why, and the node logs it.
    let mut peer = TestNode::init("peer", &["--key", &guarded.key()]);
    peer.start_ready();
    let addr = {
        let config = std::fs::read_to_string(guarded.data_path().join("config.toml")).unwrap();
        let line = config.lines().find(|l| l.starts_with("advertise")).unwrap().to_string();
        line.split('"').nth(1).unwrap().to_string()
    };
    let err = peer.cli_err(&["join", &addr]);
    assert!(err.contains("allowed subnets"), "{err}");
    wait_until(Duration::from_secs(20), "the node to log the refused address", || {
        let log = guarded.log_text();
        (log.contains("127.0.0.1") && log.contains("allowed")).then_some(())
    });
}

#[test]
fn clear_errors_for_bootstrap_twice_unreachable_join_and_no_node() {
    let mut cluster = Cluster::start(1);
    let err = cluster.nodes[0].cli_err(&["bootstrap"]);
    assert!(err.contains("already part of a cluster"), "{err}");

    let mut lone = TestNode::init("lone", &["--key", &cluster.nodes[0].key()]);
    lone.start_ready();
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = lone.cli_err(&["join", &format!("127.0.0.1:{closed_port}")]);
    assert!(err.contains("cannot reach"), "{err}");
    assert_eq!(lone.status().unwrap()["role"], "uninitialized", "a failed join changes nothing");
    // Its own address, and cluster-wide commands before it is in a cluster: said so.
    let err = lone.cli_err(&["join", &lone.addr()]);
    assert!(err.contains("is this node itself"), "{err}");
    for args in [&["remove", "12345"][..], &["rotate-key"], &["leave"]] {
        let err = lone.cli_err(args);
        assert!(err.contains("not in a cluster yet") && err.contains("raftshare join"), "{args:?}: {err}");
    }
    assert_eq!(lone.status().unwrap()["role"], "uninitialized", "and nothing changed");

    cluster.nodes[0].stop();
    let err = cluster.nodes[0].cli_err(&["status"]);
    assert!(err.contains("raftshare run"), "says to start the node: {err}");

    let never = TestNode::init("never", &[]);
    let err = never.cli_err(&["status"]);
    assert!(err.contains("raftshare run"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["status", "--data-dir", tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("raftshare init"));
}

#[test]
fn the_fault_hook_is_refused_unless_asked_for_and_then_partitions() {
    let cluster = Cluster::start(1);
    let err = cluster.nodes[0].cli_err(&["partition", "1"]);
    assert!(err.contains("fault injection is off"), "{err}");

    // A cluster whose nodes accept faults: isolating the leader makes the others elect another.
    let cluster = Cluster::start_faulty(3);
    let old = cluster.leader();
    let old_id = cluster.nodes[old].node_id();
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    cluster.isolate(old);
    wait_until(Duration::from_secs(10), "the majority side to elect a new leader", || {
        let s = cluster.nodes[others[0]].status()?;
        let leader = s["leader_id"].as_u64()?;
        (leader != old_id && cluster.nodes[others[1]].status()?["leader_id"].as_u64() == Some(leader)).then_some(())
    });
    cluster.heal();
    cluster.wait_converged(Duration::from_secs(15));
}
