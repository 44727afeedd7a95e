//! LAN discovery between real nodes on 127.0.0.1 (beacons on 127.255.255.255, the only
//! discovery address tests use): a fresh node runs `join` with no address, finds the
//! running cluster by its beacon and joins it; a node with another key is told clearly
//! that no cluster it heard is its own.

mod common;
mod terminal;

use std::time::Duration;

use common::{wait_until, Cluster, TestNode};
use serde_json::Value;
use terminal::Tmux;

#[test]
fn join_without_an_address_finds_the_cluster_by_its_beacon() {
    let cluster = Cluster::start(2);
    let cluster_id = cluster.nodes[0].status().unwrap()["cluster_id"].as_str().unwrap().to_string();

    // `discover` lists what answers: this cluster, both members.
    let heard: Value = serde_json::from_str(&cluster.nodes[0].cli_ok(&["discover", "--json"])).unwrap();
    let ours: Vec<&Value> = heard.as_array().unwrap().iter().filter(|b| b["cluster_id"] == cluster_id).collect();
    assert_eq!(ours.len(), 2, "{heard}");
    assert!(ours.iter().all(|b| b["addr"].as_str().unwrap().starts_with("127.0.0.1:")), "{heard}");
    assert!(!heard.to_string().contains(&cluster.nodes[0].key()), "a beacon never carries the key");

    // A fresh node with the cluster's key joins with no address (no terminal: it picks
    // the only cluster with its own cluster id).
    let mut fresh = TestNode::init("fresh", &["--key", &cluster.nodes[0].key()]);
    fresh.start_ready();
    let out = fresh.cli(&["join"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "join failed:\n{stderr}");
    assert!(stderr.contains("127.255.255.255") && stderr.contains(&cluster_id), "{stderr}");
    let fresh_id = fresh.node_id();
    wait_until(Duration::from_secs(20), "the fresh node to be an online voter everywhere", || {
        cluster
            .nodes
            .iter()
            .chain([&fresh])
            .all(|n| {
                n.status().is_some_and(|s| {
                    s["members"].as_array().is_some_and(|m| {
                        m.len() == 3
                            && m.iter().any(|m| m["id"] == fresh_id && m["voter"] == true && m["online"] == true)
                    })
                })
            })
            .then_some(())
    });

    // A node with another key hears the cluster but is told it is not its own.
    let mut stranger = TestNode::init("stranger", &[]);
    stranger.start_ready();
    let err = stranger.cli_err(&["join"]);
    assert!(err.contains("none of the clusters heard has this node's cluster id"), "{err}");
    assert!(err.contains(&cluster_id) && err.contains("raftshare invite"), "{err}");
    assert_eq!(stranger.status().unwrap()["role"], "uninitialized");
}

#[test]
#[ignore = "needs tmux (`.ci/run` installs it)"]
fn on_a_terminal_join_lists_the_clusters_heard_and_asks_which() {
    let cluster = Cluster::start(1);
    let cluster_id = cluster.nodes[0].status().unwrap()["cluster_id"].as_str().unwrap().to_string();
    let mut fresh = TestNode::init("asked", &["--key", &cluster.nodes[0].key()]);
    fresh.start_ready();
    let tty = Tmux::start("join", &format!("env RAFTSHARE_DATA_DIR={} {} join", fresh.data_dir.display(), common::BIN));
    let screen =
        tty.wait_for(Duration::from_secs(20), "the list and the question", |s| s.contains("join which cluster?"));
    let ours = screen.lines().find(|l| l.contains(&cluster_id)).unwrap_or_else(|| panic!("{screen}"));
    assert!(ours.contains("(this node's key)") && ours.contains("a at 127.0.0.1:"), "{screen}");
    // A wrong answer is asked again; Enter takes the cluster with this node's key.
    tty.text("99");
    tty.keys(&["Enter"]);
    tty.wait_for(Duration::from_secs(20), "the question again", |s| s.contains("type a number from 1 to"));
    tty.keys(&["Enter"]);
    let screen = tty.wait_for(Duration::from_secs(60), "the join to finish", |s| s.contains("EXITED"));
    assert!(screen.contains("EXITED 0") && screen.contains("joined the cluster"), "{screen}");
    let status = fresh.status().unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 2, "{status}");
}
