//! `raftshare demo`: real node processes on 127.0.0.1 in temporary folders. Headless, a
//! file copied into one printed folder appears in the others, and Ctrl-C leaves no node
//! running and no folder behind; with the TUI (in tmux), it shows three online nodes and
//! `q` stops everything.

mod common;
mod terminal;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{wait_until, BIN};
use serde_json::Value;
use terminal::Tmux;

/// The pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

fn status_of(data_dir: &Path) -> Option<Value> {
    let out = Command::new(BIN).arg("--data-dir").arg(data_dir).args(["status", "--json"]).output().ok()?;
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// `demo --headless --nodes N`, once it says every node is online, and what it printed.
fn start_headless_demo(nodes: usize) -> (std::process::Child, Vec<String>) {
    let mut demo = Command::new(BIN)
        .args(["demo", "--headless", "--nodes", &nodes.to_string()])
        .env_remove("RAFTSHARE_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let online = format!("All {nodes} nodes are online");
    let mut printed: Vec<String> = vec![];
    while !printed.iter().any(|l| l.contains(&online)) {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(line) => printed.push(line),
            Err(e) => {
                let _ = demo.kill();
                panic!("the demo did not come up ({e}); it printed:\n{}", printed.join("\n"));
            }
        }
    }
    (demo, printed)
}

#[test]
fn a_headless_demo_syncs_its_printed_folders_and_ctrl_c_stops_every_node() {
    let (mut demo, printed) = start_headless_demo(3);
    // "  node-1  127.0.0.1:PORT  folder /tmp/raftshare-demo-X/node-1/shared"
    let folders: Vec<PathBuf> = printed
        .iter()
        .filter(|l| l.trim_start().starts_with("node-"))
        .map(|l| PathBuf::from(l.split("folder ").nth(1).expect("a folder on the line")))
        .collect();
    assert_eq!(folders.len(), 3, "{printed:?}");
    let root = folders[0].parent().unwrap().parent().unwrap().to_path_buf();
    assert!(printed[0].contains(&root.display().to_string()), "{printed:?}");

    // Three online nodes, as every node sees them.
    for folder in &folders {
        let data_dir = folder.parent().unwrap().join("data");
        wait_until(Duration::from_secs(20), "every demo node to see three online members", || {
            let s = status_of(&data_dir)?;
            let members = s["members"].as_array()?.clone();
            (members.len() == 3 && members.iter().all(|m| m["online"] == true)).then_some(())
        });
    }

    // A file copied into one folder appears in the other two.
    std::fs::write(folders[0].join("hello.txt"), b"hello from the demo").unwrap();
    for folder in &folders[1..] {
        wait_until(Duration::from_secs(30), &format!("hello.txt in {}", folder.display()), || {
            (std::fs::read(folder.join("hello.txt")).ok()? == b"hello from the demo").then_some(())
        });
    }
    let nodes = processes_mentioning(&root.display().to_string());
    assert_eq!(nodes.len(), 3, "three node processes run: {nodes:?}");

    // Ctrl-C: every node stops, the folder goes.
    let _ = Command::new("kill").args(["-INT", &demo.id().to_string()]).status();
    let exit = wait_until(Duration::from_secs(30), "the demo to exit", || demo.try_wait().unwrap());
    assert!(exit.success(), "{exit}");
    wait_until(Duration::from_secs(10), "no demo node process left", || {
        processes_mentioning(&root.display().to_string()).is_empty().then_some(())
    });
    assert!(!root.exists(), "{} is removed", root.display());
}

#[test]
#[ignore = "needs tmux (`.ci/run` installs it)"]
fn the_demo_shows_three_online_nodes_in_its_tui_and_q_stops_it() {
    let tui = Tmux::start_sized("demo", &format!("env -u RAFTSHARE_DATA_DIR {BIN} demo"), 100, 30);
    let screen = tui.wait_for(Duration::from_secs(90), "the demo's TUI with every node online", |s| {
        s.contains("3/3 online") && s.contains("drop files into")
    });
    let hint = screen.lines().find(|l| l.contains("drop files into")).unwrap();
    let root = hint.split("drop files into ").nth(1).unwrap().split("/node-").next().unwrap().trim().to_string();
    assert!(Path::new(&root).join("node-2/shared").is_dir(), "{hint}");

    tui.keys(&["2"]);
    tui.wait_for(Duration::from_secs(20), "three online nodes", |s| {
        ["node-1", "node-2", "node-3"]
            .iter()
            .all(|n| s.lines().any(|l| l.starts_with(&format!("│{n}")) && l.contains("online")))
    });

    // A file dropped into node-2's folder shows in node-1's Files view, by node-2.
    std::fs::write(Path::new(&root).join("node-2/shared/dropped.txt"), b"watch me travel").unwrap();
    tui.keys(&["1"]);
    tui.wait_for(Duration::from_secs(30), "dropped.txt by node-2", |s| {
        s.lines().any(|l| l.contains("dropped.txt") && l.contains("node-2") && l.contains("synced"))
    });

    tui.keys(&["q"]);
    let screen = tui.wait_for(Duration::from_secs(30), "the demo to stop", |s| s.contains("EXITED"));
    assert!(screen.contains("EXITED 0") && screen.contains("demo stopped"), "{screen}");
    wait_until(Duration::from_secs(10), "no demo node process left", || {
        processes_mentioning(&root).is_empty().then_some(())
    });
    assert!(!Path::new(&root).exists());
}

/// The terminal a demo runs in closes (SIGHUP: an SSH session ends, a window shuts): the
/// demo stops its nodes and removes its folder, as for Ctrl-C.
#[test]
fn a_demo_whose_terminal_closes_stops_every_node_and_removes_its_folder() {
    let (mut demo, printed) = start_headless_demo(2);
    let folder =
        printed.iter().find_map(|l| l.split("folder ").nth(1)).map(PathBuf::from).expect("a node's folder is printed");
    let root = folder.parent().unwrap().parent().unwrap().to_path_buf();
    let _ = Command::new("kill").args(["-HUP", &demo.id().to_string()]).status();
    let exit = wait_until(Duration::from_secs(30), "the demo to exit", || demo.try_wait().unwrap());
    assert!(exit.success(), "{exit}");
    wait_until(Duration::from_secs(10), "no demo node process left", || {
        processes_mentioning(&root.display().to_string()).is_empty().then_some(())
    });
    assert!(!root.exists(), "{} is removed", root.display());
}
