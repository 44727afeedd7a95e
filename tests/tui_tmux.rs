//! The TUI in a real terminal: tmux runs `raftshare tui` against a 3-node cluster, and
//! the test reads the screen with `capture-pane` and types with `send-keys`, as a person
//! would. Needs tmux, so the tests are ignored unless asked for (`cargo test --test tui_tmux --
//! --ignored`; `.ci/run` installs tmux and runs them).

mod common;
mod terminal;

use std::fs;
use std::time::Duration;

use common::{wait_until, Cluster};
use terminal::Tmux;

#[test]
#[ignore = "needs tmux (`.ci/run` installs it)"]
fn the_tui_shows_files_nodes_and_renames_this_node_through_config() {
    let mut cluster = Cluster::start(3);
    let a_dir = cluster.nodes[0].data_dir.clone();
    let tui_a = Tmux::start("a", &format!("env RAFTSHARE_DATA_DIR={} {} tui", a_dir.display(), common::BIN));
    tui_a.wait_for(Duration::from_secs(20), "the cluster, all online", |s| s.contains("3/3 online"));

    // A file added on b shows up, modified by b.
    cluster.nodes[1].write("notes/from-b.txt", b"written on b");
    tui_a.wait_for(Duration::from_secs(20), "from-b.txt, modified by b, synced", |s| {
        s.lines().any(|l| l.contains("notes/from-b.txt") && has_word(l, "b") && l.contains("synced"))
    });

    // c is killed: the Nodes view says it is offline, the others online.
    cluster.nodes[2].kill9();
    tui_a.keys(&["2"]);
    let screen = tui_a.wait_for(Duration::from_secs(20), "c offline in the Nodes view", |s| {
        s.lines().any(|l| l.starts_with("│c ") && l.contains("offline"))
    });
    assert!(screen.lines().any(|l| l.starts_with("│a *") && l.contains("online")), "{screen}");
    assert!(screen.lines().any(|l| l.starts_with("│b ") && l.contains("online")), "{screen}");

    // Rename a in the Config view with keystrokes.
    tui_a.keys(&["4"]);
    tui_a.wait_for(Duration::from_secs(10), "the Config view", |s| s.contains("▶ name"));
    tui_a.keys(&["Enter", "C-u"]);
    tui_a.text("alpha-renamed");
    tui_a.keys(&["Enter"]);
    tui_a.wait_for(Duration::from_secs(20), "the rename confirmed", |s| s.contains("name is now \"alpha-renamed\""));
    let config = fs::read_to_string(a_dir.join("config.toml")).unwrap();
    assert!(config.contains("name = \"alpha-renamed\""), "{config}");

    // b's own TUI shows the new name in its Nodes view.
    let b = &cluster.nodes[1];
    let tui_b = Tmux::start("b", &format!("env RAFTSHARE_DATA_DIR={} {} tui", b.data_dir.display(), common::BIN));
    tui_b.wait_for(Duration::from_secs(20), "b's TUI", |s| s.contains("online"));
    tui_b.keys(&["2"]);
    tui_b.wait_for(Duration::from_secs(20), "alpha-renamed in b's Nodes view", |s| {
        s.lines().any(|l| l.starts_with("│alpha-renamed") && l.contains("online"))
    });

    // q quits, cleanly.
    tui_a.keys(&["q"]);
    tui_a.wait_for(Duration::from_secs(10), "the TUI to exit", |s| s.contains("EXITED 0"));
    wait_until(Duration::from_secs(20), "a still answers after the TUI quit", || cluster.nodes[0].status());
}

fn has_word(line: &str, word: &str) -> bool {
    line.split(|c: char| c.is_whitespace() || c == '│').any(|w| w == word)
}

#[test]
#[ignore = "needs tmux (`.ci/run` installs it)"]
fn run_on_a_terminal_shows_the_tui_over_its_node_and_q_stops_the_node() {
    let node = common::TestNode::init("solo", &[]);
    let tui = Tmux::start("run", &format!("env RAFTSHARE_DATA_DIR={} {} run", node.data_dir.display(), common::BIN));
    tui.wait_for(Duration::from_secs(30), "the TUI over an uninitialized node", |s| s.contains("solo uninitialized"));
    node.cli_ok(&["bootstrap"]);
    tui.wait_for(Duration::from_secs(20), "the node leading", |s| {
        s.contains("solo leader") && s.contains("1/1 online")
    });
    node.write("here.txt", b"local");
    tui.wait_for(Duration::from_secs(20), "here.txt, by solo", |s| {
        s.lines().any(|l| l.contains("here.txt") && has_word(l, "solo") && l.contains("synced"))
    });
    // The node's logs went to its data dir, not over the screen.
    let log = fs::read_to_string(node.data_dir.join("node.log")).unwrap();
    assert!(log.contains("raftshare node started"), "{log}");
    tui.keys(&["q"]);
    tui.wait_for(Duration::from_secs(30), "run to exit", |s| s.contains("EXITED 0"));
    assert!(node.status().is_none(), "the node stopped with its TUI");
    assert!(fs::read_to_string(node.data_dir.join("node.log")).unwrap().contains("stopped"));
}
