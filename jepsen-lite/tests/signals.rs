//! The harness, stopped by a signal, ends every node it started: a `kill` of a benchmark
//! must not leave three nodes running on the machine.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Kills what it holds when dropped, so a failing test leaves nothing running.
struct Reap {
    harness: Child,
    nodes: Vec<u32>,
}

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.harness.kill();
        let _ = self.harness.wait();
        for pid in &self.nodes {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

/// A process's parent and state, from /proc/PID/stat (None: gone).
fn stat(pid: u32) -> Option<(u32, char)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces, so read after its last ')'.
    let mut rest = text[text.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Alive and not a zombie (a reparented child may wait for a reaper that never comes).
fn running(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, state)| state != 'Z')
}

/// The running raftshare nodes whose parent is `parent`.
fn nodes_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|(ppid, state)| ppid == parent && state != 'Z'))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("run"))
        })
        .collect()
}

#[test]
fn a_harness_stopped_by_sigterm_ends_the_nodes_it_started() {
    let out = tempfile::tempdir().unwrap();
    let harness = Command::new(env!("CARGO_BIN_EXE_jepsen-lite"))
        .args(["bench", "--workloads", "latency", "--samples", "1000000", "--out"])
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start jepsen-lite");
    let mut reap = Reap { harness, nodes: Vec::new() };
    let pid = reap.harness.id();

    // Its three nodes (the first run may build raftshare first).
    let deadline = Instant::now() + Duration::from_secs(600);
    while reap.nodes.len() < 3 {
        assert!(Instant::now() < deadline, "the harness did not start 3 nodes in 600 s: {:?}", reap.nodes);
        assert!(reap.harness.try_wait().unwrap().is_none(), "the harness ended before its nodes ran");
        thread::sleep(Duration::from_millis(50));
        reap.nodes = nodes_of(pid);
    }

    let sent = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(sent.success());
    let status = reap.harness.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "exit status after SIGTERM: {status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reap.nodes.iter().any(|n| running(*n)) {
        assert!(Instant::now() < deadline, "nodes still running 10 s after the harness stopped: {:?}", reap.nodes);
        thread::sleep(Duration::from_millis(20));
    }
}
