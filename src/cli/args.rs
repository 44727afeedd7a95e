//! The command line's arguments: every `raftshare` command and its flags (clap), and
//! where a command's logs go.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ipnet::IpNet;
use raftshare_raft::NodeId;

use crate::config::DataDir;

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
        /// The cluster key, from `raftshare invite` on a member (default: a new cluster's
        /// key); `-` reads it from stdin, so it never shows in the process list or the
        /// shell history.
        #[arg(long, conflicts_with = "key_file")]
        key: Option<String>,
        /// Read the cluster key from this file (`raftshare invite --key-only > FILE` on a member).
        #[arg(long)]
        key_file: Option<PathBuf>,
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
    Remove {
        /// The member's id or its name (as `status` lists them).
        member: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's id or its name (as `status` lists them).
        member: String,
    },
    /// Print the commands that add another computer to this cluster, and the key for them.
    Invite {
        /// Print only the cluster key, to pipe into `raftshare init --key -` or save as a key file.
        #[arg(long)]
        key_only: bool,
    },
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
