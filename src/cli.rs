//! The command line: what each `raftshare` command does and how it prints.
//!
//! Queries print a human table by default and the DESIGN.md `--json` contract with
//! `--json`. Every command that talks to the node goes through `client::NodeClient`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use ipnet::IpNet;
use openraft::EntryPayload;
use raftshare_raft::admin::{AdminRequest, AdminResponse, Event, EventKind, StatusReport};
use raftshare_raft::{Entry, FileOp, FileRecord, NodeId};
use serde::Serialize;
use serde_json::json;

use crate::client::NodeClient;
use crate::config::{DataDir, InitOptions};
use crate::node;

/// Share one folder across the computers of a LAN, every change ordered through a Raft log.
#[derive(Debug, Parser)]
#[command(name = "raftshare", version, about)]
pub struct Cli {
    /// The node's data folder (config, cluster key, database).
    #[arg(long, global = true, env = "RAFTSHARE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of DESIGN.md's CLI contract.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up a node: its shared folder, address, name and cluster key.
    Init {
        /// The folder to keep identical on every computer.
        #[arg(long)]
        shared_dir: PathBuf,
        /// Address to listen on (port 0: pick a free port at the first `run`).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Name shown to people (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// The cluster key, from `raftshare invite` on a member (default: a new cluster's key).
        #[arg(long)]
        key: Option<String>,
        /// Subnets allowed to connect (repeatable; default: this machine's subnets and loopback).
        #[arg(long)]
        allow: Vec<IpNet>,
    },
    /// Run the node (with the TUI over it when on a terminal; logs go to DATA_DIR/node.log then).
    Run {
        /// Run as a service, logging to stderr, without the TUI.
        #[arg(long)]
        headless: bool,
        /// Accept fault injection (`Partition`) for tests; never use it on real data.
        #[arg(long, hide = true)]
        fault_hook: bool,
    },
    /// Start a new cluster with this node as its only member.
    Bootstrap,
    /// Join the cluster of a member at PEER_ADDR (ip:port); without it, find one on the LAN.
    Join {
        peer_addr: Option<String>,
        /// Join as a learner: receives every change, does not vote.
        #[arg(long)]
        learner: bool,
    },
    /// Take this node out of its cluster (its folder is left as it is).
    Leave,
    /// Take another node out of the cluster (for a computer that is gone).
    Remove { id: NodeId },
    /// Make a learner a voter.
    Promote { id: NodeId },
    /// Print the commands that add another computer to this cluster.
    Invite,
    /// Give the cluster a new key (after `remove`, or if the key leaked): every member gets
    /// it sealed to its own identity; a removed computer can no longer connect.
    RotateKey,
    /// Leader, term, indexes, members online and offline.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The shared files: size, when modified, by which node.
    Ls {
        /// Also list deleted files (tombstones).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Test-only fault injection (node started with `run --fault-hook`): drop all
    /// traffic between this node and the given member ids; no ids heals.
    #[command(hide = true)]
    Partition { isolate: Vec<NodeId> },
    /// What happened on this node: files sent, received, deleted, conflicts, peers.
    Events {
        /// Keep printing new events as they happen (Ctrl-C stops).
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// A terminal view of the running node: files, nodes, activity, config.
    Tui,
    /// A local cluster on 127.0.0.1 in temporary folders, with the TUI attached.
    Demo {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// No TUI: print the folders and wait for Ctrl-C.
        #[arg(long)]
        headless: bool,
    },
    /// The raftshare clusters that answer on this node's subnet (what `join` without an address sees).
    Discover {
        #[arg(long)]
        json: bool,
    },
    /// This node's settings; with options, change them (checked, saved, applied at once
    /// where possible; the answer says what needs a restart).
    Config {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        shared_dir: Option<String>,
        /// ip:port.
        #[arg(long)]
        listen: Option<String>,
        /// An allowed subnet, CIDR (repeatable); `--allow default`: this machine's subnets.
        #[arg(long)]
        allow: Vec<String>,
        /// A line of `.raftshareignore` (repeatable); `--ignore none`: no pattern.
        #[arg(long)]
        ignore: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: `raftshare completions bash > /etc/bash_completion.d/raftshare`.
    Completions { shell: clap_complete::Shell },
    /// The Raft log, readable.
    Log {
        /// First index to show (default: the oldest kept).
        #[arg(long)]
        from: Option<u64>,
        /// At most this many entries (default and maximum: 10000).
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

/// Where logs go when a TUI owns the terminal: `Some(Some(file))` for a node run with
/// the TUI (DATA_DIR/node.log), `Some(None)` for nowhere (a TUI client); `None`: stderr.
pub fn log_file(cli: &Cli) -> Option<Option<PathBuf>> {
    match &cli.command {
        Command::Run { headless: false, .. } if crate::tui::on_terminal() => {
            let data_dir = DataDir::resolve(cli.data_dir.clone()).ok()?;
            data_dir.is_initialized().then(|| Some(data_dir.root().join("node.log")))
        }
        Command::Tui => Some(None),
        Command::Demo { headless: false, .. } if crate::tui::on_terminal() => Some(None),
        _ => None,
    }
}

/// Run one command to completion.
pub async fn execute(cli: Cli) -> Result<()> {
    let data_dir = DataDir::resolve(cli.data_dir)?;
    match cli.command {
        Command::Init { shared_dir, listen, name, key, allow } => {
            let (config, _) = data_dir.init(InitOptions { shared_dir, listen, name, key, allow })?;
            println!(
                "node {} ({}) set up in {}, sharing {}\nnext: `raftshare run`, then `raftshare bootstrap` for a new cluster or `raftshare join ADDR` to join one",
                config.name,
                config.node_id,
                data_dir.root().display(),
                config.shared_dir.display()
            );
            Ok(())
        }
        Command::Run { headless, fault_hook } => {
            if !headless && crate::tui::on_terminal() {
                crate::tui::run_node_with_tui(data_dir, fault_hook).await
            } else {
                node::run(data_dir, fault_hook).await
            }
        }
        Command::Tui => crate::tui::attach(&data_dir, None).await,
        Command::Demo { nodes, headless } => crate::demo::run(nodes, headless).await,
        Command::Discover { json } => {
            let (config, _) = data_dir.load()?;
            let heard = crate::discovery::discover(config.listen, crate::discovery::LISTEN_FOR).await?;
            if json {
                print_json(&heard)
            } else {
                for (id, members) in crate::discovery::by_cluster(&heard) {
                    println!("cluster {id}");
                    for m in members {
                        println!("  {:<16} {:<20} {:<22}", m.name, m.node_id, m.addr);
                    }
                }
                Ok(())
            }
        }
        Command::Config { name, shared_dir, listen, allow, ignore, json } => {
            let list = |v: Vec<String>, none: &str| match v.as_slice() {
                [] => None,
                [only] if only == none => Some(vec![]),
                _ => Some(v),
            };
            let change = raftshare_raft::admin::ConfigChange {
                name,
                shared_dir,
                listen,
                allow: list(allow, "default"),
                ignore: list(ignore, "none"),
            };
            let client = NodeClient::connect(&data_dir).await?;
            let (report, message) = if change == Default::default() {
                match client.query(AdminRequest::GetConfig).await? {
                    AdminResponse::Config(report) => (report, None),
                    _ => bail!("the node answered `config` with something else"),
                }
            } else {
                match client.change(AdminRequest::SetConfig(change)).await? {
                    AdminResponse::ConfigSaved { report, message } => (report, Some(message)),
                    _ => bail!("the node answered `config` with something else"),
                }
            };
            if json {
                let mut value = serde_json::to_value(&report)?;
                value["message"] = json!(message);
                print_json(&value)
            } else {
                println!("name             {}", report.name);
                println!("shared folder    {}", report.shared_dir);
                println!("listen address   {} (peers dial {})", report.listen, report.advertise);
                println!(
                    "allowed subnets  {}",
                    if report.allow.is_empty() {
                        "this machine's subnets and loopback".to_string()
                    } else {
                        report.allow.join(", ")
                    }
                );
                println!(
                    "ignore patterns  {}",
                    if report.ignore.is_empty() { "none".to_string() } else { report.ignore.join(", ") }
                );
                println!("saved in         {}", report.config_path);
                if !report.restart_needed.is_empty() {
                    println!("restart needed   for {}", report.restart_needed.join(", "));
                }
                if let Some(message) = message {
                    println!("\n{message}");
                }
                Ok(())
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "raftshare", &mut std::io::stdout());
            Ok(())
        }
        Command::Bootstrap => change(&data_dir, AdminRequest::Bootstrap).await,
        Command::Join { peer_addr, learner } => crate::discovery::join(&data_dir, peer_addr, learner).await,
        Command::Leave => change(&data_dir, AdminRequest::Leave).await,
        Command::Remove { id } => change(&data_dir, AdminRequest::RemoveMember { id, hops: 0 }).await,
        Command::Promote { id } => change(&data_dir, AdminRequest::Promote { id, hops: 0 }).await,
        Command::Invite => invite(&data_dir),
        Command::RotateKey => change(&data_dir, AdminRequest::RotateKey { hops: 0 }).await,
        Command::Partition { isolate } => change(&data_dir, AdminRequest::Partition { isolate }).await,
        Command::Status { json } => {
            let client = NodeClient::connect(&data_dir).await?;
            let AdminResponse::Status(status) = client.query(AdminRequest::Status).await? else {
                bail!("the node answered `status` with something else");
            };
            if json {
                print_json(&status)
            } else {
                print!("{}", render_status(&status));
                Ok(())
            }
        }
        Command::Ls { all, json } => {
            let client = NodeClient::connect(&data_dir).await?;
            let AdminResponse::Files(files) = client.query(AdminRequest::Ls).await? else {
                bail!("the node answered `ls` with something else");
            };
            let views: Vec<FileView> = files.iter().filter(|f| all || !f.deleted).map(FileView::from).collect();
            if json {
                print_json(&views)
            } else {
                print!("{}", render_files(&views));
                Ok(())
            }
        }
        Command::Events { follow, json } => {
            let client = NodeClient::connect(&data_dir).await?;
            let mut after = None;
            loop {
                let wait_ms = if follow && after.is_some() { 25_000 } else { 0 };
                let AdminResponse::Events(events) = client.query_long(AdminRequest::Events { after, wait_ms }).await?
                else {
                    bail!("the node answered `events` with something else");
                };
                for event in &events {
                    if json {
                        println!("{}", serde_json::to_string(&event_json(event))?);
                    } else {
                        println!("{}", render_event(event));
                    }
                }
                after = events.last().map(|e| e.seq).or(after).or(Some(0));
                if !follow {
                    return Ok(());
                }
            }
        }
        Command::Log { from, limit, json } => {
            let client = NodeClient::connect(&data_dir).await?;
            let AdminResponse::Log(entries) = client.query(AdminRequest::Log { from, limit }).await? else {
                bail!("the node answered `log` with something else");
            };
            let views: Vec<LogEntryView> = entries.iter().map(LogEntryView::from).collect();
            if json {
                print_json(&views)
            } else {
                print!("{}", render_log(&views));
                Ok(())
            }
        }
    }
}

async fn change(data_dir: &DataDir, req: AdminRequest) -> Result<()> {
    let client = NodeClient::connect(data_dir).await?;
    match client.change(req).await? {
        AdminResponse::Done(msg) => {
            println!("{msg}");
            Ok(())
        }
        other => bail!("the node gave an unexpected answer: {other:?}"),
    }
}

fn invite(data_dir: &DataDir) -> Result<()> {
    let (config, key) = data_dir.load()?;
    if config.advertise.port() == 0 {
        bail!("start this node first (`raftshare run`), so its address is known");
    }
    println!("On the other computer, run:\n");
    println!("  raftshare init --shared-dir ~/Shared --key {}", key.to_hex());
    println!("  raftshare run --headless &");
    println!("  raftshare join {}\n", config.advertise);
    println!("Keep the key secret: whoever has it can join the cluster (if it leaks, `raftshare rotate-key`).");
    Ok(())
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// `status` for people.
pub fn render_status(s: &StatusReport) -> String {
    let mut out = String::new();
    let leader = match (&s.leader_id, &s.leader_addr) {
        (Some(id), Some(addr)) => format!("{id} ({addr})"),
        (Some(id), None) => id.to_string(),
        _ => "none".into(),
    };
    out += &format!("node      {} ({}) at {}\n", s.name, s.node_id, s.addr);
    out += &format!("cluster   {}\nrole      {}\nleader    {leader}\nterm      {}\n", s.cluster_id, s.role, s.term);
    out += &format!(
        "log       last {}, committed {}, applied {}, first kept {}, snapshot {}\n",
        opt(s.last_log_index),
        opt(s.committed_index),
        opt(s.applied_index),
        opt(s.first_log_index),
        opt(s.snapshot_index)
    );
    out += &format!("database  {:.1} MiB\n\n", s.db_size_bytes as f64 / (1 << 20) as f64);
    out += &format!("{:<20} {:<16} {:<22} {:<8} {:<8} {}\n", "ID", "NAME", "ADDRESS", "ROLE", "STATE", "MATCHED");
    for m in &s.members {
        out += &format!(
            "{:<20} {:<16} {:<22} {:<8} {:<8} {}\n",
            m.id,
            m.name,
            m.addr,
            if m.voter { "voter" } else { "learner" },
            if m.online { "online" } else { "offline" },
            opt(m.matched_index)
        );
    }
    out
}

/// An event as `events --json` prints it: `{seq, at, type, ...fields}`.
pub fn event_json(event: &Event) -> serde_json::Value {
    let mut out = json!({"seq": event.seq, "at": rfc3339_ms(event.at_ms)});
    if let Ok(serde_json::Value::Object(tagged)) = serde_json::to_value(&event.kind) {
        for (kind, fields) in tagged {
            out["type"] = json!(snake(&kind));
            if let serde_json::Value::Object(fields) = fields {
                for (k, v) in fields {
                    out[k] = v;
                }
            }
        }
    }
    out
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Bytes for people: 512 B, 12.0 KiB, 3.4 MiB, 1.2 GiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// An event for people, one line.
pub fn render_event(event: &Event) -> String {
    let when = rfc3339_ms(event.at_ms);
    let when = when.get(11..19).unwrap_or(&when);
    let what = match &event.kind {
        EventKind::LocalChange { path, deleted: false } => format!("changed here: {path}"),
        EventKind::LocalChange { path, deleted: true } => format!("deleted here: {path}"),
        EventKind::Sent { index, paths } => {
            format!("sent {} change(s) as entry {index}: {}", paths.len(), paths.join(", "))
        }
        EventKind::Received { path, from, size, fetched } => {
            format!("received {path} from {from} ({}, {} over the network)", human_bytes(*size), human_bytes(*fetched))
        }
        EventKind::Deleted { path, by } => format!("deleted {path} (by {by})"),
        EventKind::Conflict { path, kept_as, by } if path == kept_as => format!("conflict copy {path} (by {by})"),
        EventKind::Conflict { path, kept_as, by } => format!("conflict on {path}: {by}'s version kept as {kept_as}"),
        EventKind::NodeOnline { id, name } => format!("{name} ({id}) is online"),
        EventKind::NodeOffline { id, name } => format!("{name} ({id}) is offline"),
        EventKind::Folder { problem: Some(why) } => format!("folder not synced: {why}"),
        EventKind::Folder { problem: None } => "folder synced again".to_string(),
        EventKind::Scanned { files, changes, took_ms } => {
            format!("looked at the whole folder: {files} files, {changes} changes, in {took_ms} ms")
        }
    };
    format!("{when}  {what}")
}

/// One file as `ls --json` shows it.
#[derive(Debug, Serialize)]
pub struct FileView {
    pub path: String,
    pub size: u64,
    /// BLAKE3 of the content, hex (for a deleted file: of the content deleted).
    pub hash: String,
    /// When the change was made (the origin's clock), RFC 3339.
    pub modified_at: String,
    /// The name of the node that made it, and its id.
    pub modified_by: String,
    pub modified_by_id: NodeId,
    /// The log index of that change.
    pub version: u64,
    pub deleted: bool,
}

impl From<&FileRecord> for FileView {
    fn from(f: &FileRecord) -> Self {
        FileView {
            path: f.path.clone(),
            size: f.size,
            hash: f.hash.to_hex(),
            modified_at: rfc3339_ms(f.modified_at_ms),
            modified_by: f.origin_name.clone(),
            modified_by_id: f.origin,
            version: f.version,
            deleted: f.deleted,
        }
    }
}

/// `ls` for people.
pub fn render_files(files: &[FileView]) -> String {
    let mut out = format!("{:>12}  {:<20}  {:<16}  {}\n", "SIZE", "MODIFIED", "BY", "PATH");
    for f in files {
        let when = f.modified_at.get(..19).unwrap_or(&f.modified_at).replace('T', " ");
        let path = if f.deleted { format!("{} (deleted)", f.path) } else { f.path.clone() };
        out += &format!("{:>12}  {:<20}  {:<16}  {}\n", f.size, when, f.modified_by, path);
    }
    out
}

/// One log entry as `log --json` shows it.
#[derive(Debug, Serialize)]
pub struct LogEntryView {
    pub index: u64,
    pub term: u64,
    pub leader_id: NodeId,
    /// `blank`, `membership` or `change`.
    pub kind: &'static str,
    /// For a change: the node that made it and when (RFC 3339).
    pub origin: Option<NodeId>,
    pub origin_name: Option<String>,
    pub at: Option<String>,
    /// For a change: its ops, batches flattened.
    pub ops: Vec<serde_json::Value>,
    /// For a membership entry: voter ids and learner ids.
    pub voters: Option<Vec<NodeId>>,
    pub learners: Option<Vec<NodeId>>,
}

impl From<&Entry> for LogEntryView {
    fn from(entry: &Entry) -> Self {
        let mut view = LogEntryView {
            index: entry.log_id.index,
            term: entry.log_id.leader_id.term,
            leader_id: entry.log_id.leader_id.node_id,
            kind: node::entry_kind(entry),
            origin: None,
            origin_name: None,
            at: None,
            ops: vec![],
            voters: None,
            learners: None,
        };
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(change) => {
                view.origin = Some(change.origin);
                view.origin_name = Some(change.origin_name.clone());
                view.at = Some(rfc3339_ms(change.at_ms));
                view.ops = change.op.leaves().into_iter().map(op_json).collect();
            }
            EntryPayload::Membership(m) => {
                view.voters = Some(m.voter_ids().collect());
                view.learners = Some(m.learner_ids().collect());
            }
        }
        view
    }
}

fn op_json(op: &FileOp) -> serde_json::Value {
    match op {
        FileOp::Put { path, size, hash, blocks, mtime: _, base } => {
            json!({"op": "put", "path": path, "size": size, "hash": hash.to_hex(), "blocks": blocks.len(), "base": base})
        }
        FileOp::Delete { path, base } => json!({"op": "delete", "path": path, "base": base}),
        FileOp::Batch(_) => json!({"op": "batch"}),
        FileOp::ForgetDeleted { upto } => json!({"op": "forget_deleted", "upto": upto}),
        // Which members got a sealed copy; never the copies themselves.
        FileOp::RotateKey(r) => {
            json!({"op": "rotate_key", "epoch": r.epoch, "members": r.sealed.keys().collect::<Vec<_>>()})
        }
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// `log` for people.
pub fn render_log(entries: &[LogEntryView]) -> String {
    let mut out = format!("{:>8} {:>5}  {:<11} {}\n", "INDEX", "TERM", "KIND", "DETAIL");
    for e in entries {
        let detail = match e.kind {
            "membership" => format!(
                "voters {:?} learners {:?}",
                e.voters.clone().unwrap_or_default(),
                e.learners.clone().unwrap_or_default()
            ),
            "change" => format!(
                "{} ops by {} at {}",
                e.ops.len(),
                e.origin_name.clone().unwrap_or_default(),
                e.at.clone().unwrap_or_default()
            ),
            _ => format!("leader {} took office", e.leader_id),
        };
        out += &format!("{:>8} {:>5}  {:<11} {detail}\n", e.index, e.term, e.kind);
    }
    out
}
