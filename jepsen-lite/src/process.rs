//! Child processes: every one the harness starts is killed when its guard drops, and all
//! of them when the harness panics; every command run to completion has a deadline.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

/// Pids of the children alive now, for the panic hook.
static LIVE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Make a panic anywhere in the harness kill every child first (the guards also kill them
/// as the stack unwinds; this covers threads that would otherwise keep them waiting).
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_all();
        default(info);
    }));
}

/// Make SIGINT, SIGTERM and SIGHUP kill every child before the harness exits (the
/// guards' drops do not run when a signal ends the process: a `kill` of the harness
/// left its three nodes running). Exits 128 + the signal's number, as the shell does.
pub fn kill_children_on_signals() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot listen for signals")?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                eprintln!("jepsen-lite: stopped by signal {signal}: ending every node it started");
                kill_all();
                std::process::exit(128 + signal);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// SIGKILL every child still alive.
pub fn kill_all() {
    let pids: Vec<String> = match LIVE.try_lock() {
        Ok(live) => live.iter().map(|p| p.to_string()).collect(),
        Err(_) => return,
    };
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Send a signal (`STOP`, `CONT`, `TERM`, ...) to a process with the `kill` command.
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run `kill`")?;
    if status.success() {
        Ok(())
    } else {
        Err(anyhow!("`kill -{signal} {pid}` failed ({status})"))
    }
}

/// A child that is SIGKILLed and reaped when this is dropped.
pub struct Guarded {
    child: Option<Child>,
    pid: u32,
}

impl Guarded {
    /// Spawn `cmd` under a guard.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Guarded> {
        let child = cmd.spawn()?;
        let pid = child.id();
        LIVE.lock().unwrap_or_else(|p| p.into_inner()).insert(pid);
        Ok(Guarded { child: Some(child), pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child, e.g. to take its pipes.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("a guarded child is present until dropped")
    }

    /// Its exit status if it has exited (it is then reaped).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child().try_wait().ok().flatten();
        if status.is_some() {
            forget(self.pid);
        }
        status
    }

    /// Wait at most `timeout` for it to exit.
    pub fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// SIGKILL it and reap it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = child.kill();
        let status = child.wait().ok();
        forget(self.pid);
        status
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
            forget(self.pid);
        }
    }
}

fn forget(pid: u32) {
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
}

/// Run `cmd` to completion, killing it after `timeout`; its output.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Guarded::spawn(&mut cmd).with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.child().stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.child().stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = child.wait_for(timeout);
    let status = match status {
        Some(status) => status,
        None => {
            child.kill();
            let _ = stdout.join();
            let _ = stderr.join();
            return Err(anyhow!("timed out after {:.1} s", timeout.as_secs_f64()));
        }
    };
    Ok(Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_deadline_is_killed() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let start = Instant::now();
        let err = run_bounded(cmd, Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let mut cmd = Command::new("echo");
        cmd.arg("hi");
        let out = run_bounded(cmd, Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout, b"hi\n");
    }

    #[test]
    fn a_dropped_guard_kills_its_child() {
        let guard = Guarded::spawn(Command::new("sleep").arg("30")).unwrap();
        let pid = guard.pid();
        assert!(LIVE.lock().unwrap().contains(&pid));
        drop(guard);
        assert!(!LIVE.lock().unwrap().contains(&pid));
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "reaped and gone");
    }
}
