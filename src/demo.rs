//! `raftshare demo`: a real local cluster to watch — N node processes (this binary's
//! `run --headless`) on 127.0.0.1 in a temporary folder, bootstrapped and joined, their
//! shared folders printed, the TUI attached to the first. Quitting (or Ctrl-C, SIGTERM,
//! or SIGHUP when its terminal closes) stops every node and removes the folder; the
//! nodes also die with the demo if it is killed (Linux's parent-death signal).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use raftshare_raft::admin::{AdminRequest, AdminResponse};

use crate::client::NodeClient;
use crate::config::{DataDir, InitOptions};

/// How many nodes a demo may have.
pub const MAX_NODES: usize = 7;
/// How long one node may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One demo node: where it lives and its process.
pub struct DemoNode {
    pub name: String,
    pub data_dir: PathBuf,
    pub shared_dir: PathBuf,
    pub log: PathBuf,
    pub addr: String,
    child: Option<Child>,
}

/// The running demo; dropping it stops every node (SIGTERM, then SIGKILL after a few
/// seconds) and removes the temporary folder.
pub struct Demo {
    pub root: PathBuf,
    pub nodes: Vec<DemoNode>,
    tmp: Option<tempfile::TempDir>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop();
        if let Some(tmp) = self.tmp.take() {
            let _ = tmp.close();
        }
    }
}

impl Demo {
    /// Set up, start and connect `n` nodes.
    pub async fn start(n: usize) -> Result<Demo> {
        if !(1..=MAX_NODES).contains(&n) {
            bail!("a demo has 1 to {MAX_NODES} nodes (--nodes {n} asked)");
        }
        let tmp = tempfile::Builder::new()
            .prefix("raftshare-demo-")
            .tempdir()
            .context("cannot create a temporary folder for the demo")?;
        let mut demo = Demo { root: tmp.path().to_path_buf(), nodes: vec![], tmp: Some(tmp) };
        let exe = std::env::current_exe().context("cannot find the raftshare binary to start the nodes")?;
        let mut key = None;
        for i in 1..=n {
            let name = format!("node-{i}");
            let home = demo.root.join(&name);
            let data_dir = home.join("data");
            let shared_dir = home.join("shared");
            let (_, cluster_key) = DataDir::new(&data_dir).init(InitOptions {
                shared_dir: shared_dir.clone(),
                listen: Some("127.0.0.1:0".parse().expect("a valid address")),
                name: Some(name.clone()),
                key: key.clone(),
                allow: vec![],
            })?;
            key.get_or_insert(cluster_key.to_hex());
            let log = home.join("node.log");
            let child = spawn_node(&exe, &data_dir, &log)?;
            demo.nodes.push(DemoNode { name, data_dir, shared_dir, log, addr: String::new(), child: Some(child) });
        }
        for i in 0..demo.nodes.len() {
            let addr = demo.wait_ready(i).await?;
            demo.nodes[i].addr = addr;
        }
        let first = DataDir::new(&demo.nodes[0].data_dir);
        expect_done(NodeClient::connect(&first).await?.change(AdminRequest::Bootstrap).await, "bootstrap")?;
        let leader = demo.nodes[0].addr.clone();
        for node in &demo.nodes[1..] {
            let client = NodeClient::connect(&DataDir::new(&node.data_dir)).await?;
            let join = AdminRequest::JoinCluster { peer: leader.clone(), learner: false };
            expect_done(client.change(join).await, &format!("{} joining", node.name))?;
        }
        Ok(demo)
    }

    /// Wait until node `i` answers `status`; its address.
    async fn wait_ready(&mut self, i: usize) -> Result<String> {
        let start = Instant::now();
        let data_dir = DataDir::new(&self.nodes[i].data_dir);
        loop {
            if let Some(child) = self.nodes[i].child.as_mut() {
                if let Ok(Some(exit)) = child.try_wait() {
                    bail!("{} exited at start ({exit}):\n{}", self.nodes[i].name, tail(&self.nodes[i].log));
                }
            }
            if let Ok(client) = NodeClient::connect(&data_dir).await {
                if let Ok(AdminResponse::Status(status)) = client.query(AdminRequest::Status).await {
                    return Ok(status.addr);
                }
            }
            if start.elapsed() > START_TIMEOUT {
                bail!("{} did not start within {START_TIMEOUT:?}:\n{}", self.nodes[i].name, tail(&self.nodes[i].log));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until the first node sees every node online (or `timeout`).
    pub async fn wait_all_online(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let data_dir = DataDir::new(&self.nodes[0].data_dir);
        loop {
            if let Ok(client) = NodeClient::connect(&data_dir).await {
                if let Ok(AdminResponse::Status(s)) = client.query(AdminRequest::Status).await {
                    if s.members.len() == self.nodes.len() && s.members.iter().all(|m| m.online) {
                        return Ok(());
                    }
                }
            }
            if start.elapsed() > timeout {
                bail!("not every demo node came online within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What a newcomer reads: where the folders are.
    pub fn describe(&self) -> String {
        let mut out = format!("raftshare demo: {} nodes on 127.0.0.1, in {}\n", self.nodes.len(), self.root.display());
        for node in &self.nodes {
            let _ = writeln!(out, "  {:<7} {:<16} folder {}", node.name, node.addr, node.shared_dir.display());
        }
        let _ = writeln!(out, "Drop a file into one folder and watch it appear in the others.");
        let _ = writeln!(
            out,
            "Each node's data dir is next to its folder: raftshare --data-dir {} status",
            self.nodes[0].data_dir.display()
        );
        out
    }

    /// One line for the TUI: where to drop files.
    pub fn hint(&self) -> String {
        let names: Vec<String> = (1..=self.nodes.len()).map(|i| i.to_string()).collect();
        format!("drop files into {}/node-{{{}}}/shared", self.root.display(), names.join(","))
    }

    /// Stop every node: SIGTERM, then SIGKILL whatever still runs after 10 s.
    pub fn stop(&mut self) {
        for node in &self.nodes {
            if let Some(child) = &node.child {
                // SAFETY: kill(2) has no memory effects; the pid is our own child, not yet reaped.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else { continue };
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

fn expect_done(answer: Result<AdminResponse>, what: &str) -> Result<()> {
    match answer.with_context(|| format!("demo: {what} failed"))? {
        AdminResponse::Done(_) => Ok(()),
        _ => bail!("demo: {what}: unexpected answer"),
    }
}

fn spawn_node(exe: &Path, data_dir: &Path, log: &Path) -> Result<Child> {
    let out = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["run", "--headless"])
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn,sled=warn".into()))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // The node dies with the demo even if the demo is killed outright.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    cmd.spawn().with_context(|| format!("cannot start {}", exe.display()))
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `raftshare demo [--nodes N] [--headless]`.
pub async fn run(nodes: usize, headless: bool) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handled from the start: a Ctrl-C while the nodes start still stops them (the
    // half-built demo is dropped) and removes the folder.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // The terminal closed (an SSH session ended, a window shut): clean up as for Ctrl-C.
    let mut hup = signal(SignalKind::hangup())?;
    let tui = !headless && crate::tui::on_terminal();
    eprintln!("starting {nodes} raftshare nodes on 127.0.0.1…");
    let demo = tokio::select! {
        demo = async {
            let demo = Demo::start(nodes).await?;
            demo.wait_all_online(Duration::from_secs(20)).await?;
            anyhow::Ok(demo)
        } => demo?,
        _ = term.recv() => bail!("stopped while the demo was starting"),
        _ = int.recv() => bail!("stopped while the demo was starting"),
        _ = hup.recv() => bail!("stopped while the demo was starting (the terminal closed)"),
    };
    print!("{}", demo.describe());
    if tui {
        let first = DataDir::new(&demo.nodes[0].data_dir);
        let result = tokio::select! {
            result = crate::tui::attach(&first, Some(demo.hint())) => result,
            _ = term.recv() => { ratatui::restore(); Ok(()) }
            _ = int.recv() => { ratatui::restore(); Ok(()) }
            _ = hup.recv() => { ratatui::restore(); Ok(()) }
        };
        print!("{}", demo.describe());
        result?;
    } else {
        println!("All {} nodes are online. Ctrl-C stops the demo.", demo.nodes.len());
        use std::io::Write;
        std::io::stdout().flush()?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {}
        }
    }
    eprintln!("stopping the demo nodes…");
    let root = demo.root.clone();
    drop(demo);
    println!("demo stopped; its folder {} is removed", root.display());
    Ok(())
}
