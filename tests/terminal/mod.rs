//! A terminal for tests: a detached tmux session on its own server socket, read with
//! `capture-pane` and typed into with `send-keys`; the server is killed on drop.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One program running in a tmux pane (120×40 unless said otherwise).
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Run `command` (a shell command line) in a new 120×40 pane.
    pub fn start(label: &str, command: &str) -> Tmux {
        Tmux::start_sized(label, command, 120, 40)
    }

    /// Run `command` in a new pane of `width`×`height`. When it ends, the pane shows
    /// `EXITED <code>` and stays, so a test can read how it ended.
    pub fn start_sized(label: &str, command: &str, width: u16, height: u16) -> Tmux {
        let socket = format!("raftshare-test-{}-{}-{label}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let wrapped = format!("{command}; echo EXITED $?; sleep 600");
        let status = Command::new("tmux")
            .args(["-L", &socket, "-f", "/dev/null", "new-session", "-d", "-s", "t"])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(wrapped)
            .env("TERM", "xterm-256color")
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run tmux ({e}): this test needs tmux (`apt-get install tmux`; `.ci/run` installs it)")
            });
        assert!(status.success(), "tmux new-session failed");
        Tmux { socket }
    }

    /// The screen as text.
    pub fn screen(&self) -> String {
        let out =
            Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p", "-t", "t"]).output().expect("tmux");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Press keys (tmux names: `Enter`, `C-u`, `Down`, or single characters).
    pub fn keys(&self, keys: &[&str]) {
        let status =
            Command::new("tmux").args(["-L", &self.socket, "send-keys", "-t", "t"]).args(keys).status().unwrap();
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(150));
    }

    /// Type text literally.
    pub fn text(&self, text: &str) {
        let status =
            Command::new("tmux").args(["-L", &self.socket, "send-keys", "-t", "t", "-l", text]).status().unwrap();
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(150));
    }

    /// Wait until the screen satisfies `ok`; the screen then. Panics with the screen after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}; the screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}
