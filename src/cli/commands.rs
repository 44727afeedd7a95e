//! What each `raftshare` command does: talk to the node through `client::NodeClient`
//! (or run one), and print what it answers through `render`.

use anyhow::{bail, Result};
use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::NodeId;
use serde_json::json;

use crate::client::NodeClient;
use crate::config::{DataDir, InitOptions};
use crate::node;

use crate::cli::args::{Cli, Command};
use crate::cli::render::{
    event_json, print_json, render_event, render_files, render_log, render_status, FileView, LogEntryView,
};
/// Run one command to completion.
pub async fn execute(cli: Cli) -> Result<()> {
    let data_dir = DataDir::resolve(cli.data_dir)?;
    match cli.command {
        Command::Init { shared_dir, listen, name, key, key_file, allow } => {
            let key = given_key(key, key_file)?;
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
        Command::Remove { member } => {
            let id = member_id(&data_dir, &member).await?;
            change(&data_dir, AdminRequest::RemoveMember { id, hops: 0 }).await
        }
        Command::Promote { member } => {
            let id = member_id(&data_dir, &member).await?;
            change(&data_dir, AdminRequest::Promote { id, hops: 0 }).await
        }
        Command::Invite { key_only } => invite(&data_dir, key_only),
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

/// The id of the member `given` names: an id as it is, else the one member of that name.
async fn member_id(data_dir: &DataDir, given: &str) -> Result<NodeId> {
    if let Ok(id) = given.parse::<NodeId>() {
        return Ok(id);
    }
    let client = NodeClient::connect(data_dir).await?;
    let AdminResponse::Status(status) = client.query(AdminRequest::Status).await? else {
        bail!("the node answered `status` with something else");
    };
    let named: Vec<NodeId> = status.members.iter().filter(|m| m.name == given).map(|m| m.id).collect();
    match named.as_slice() {
        [id] => Ok(*id),
        [] => bail!(
            "no member is called {given:?}: `raftshare status` lists the members ({})",
            status.members.iter().map(|m| format!("{} = {}", m.name, m.id)).collect::<Vec<_>>().join(", ")
        ),
        ids => bail!("{} members are called {given:?} ({ids:?}): give the id instead", ids.len()),
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

/// The key `init` was given: as text, from stdin (`--key -`) or from a file; a key on the
/// command line shows in the process list and the shell history, the other two do not.
fn given_key(key: Option<String>, key_file: Option<std::path::PathBuf>) -> Result<Option<String>> {
    use anyhow::Context;
    match (key, key_file) {
        (Some(dash), None) if dash == "-" => {
            let mut text = String::new();
            std::io::stdin().read_line(&mut text).context("cannot read the cluster key from stdin")?;
            if text.trim().is_empty() {
                bail!("no cluster key on stdin: pipe it in (`raftshare invite --key-only` on a member prints it)");
            }
            Ok(Some(text))
        }
        (key, None) => Ok(key),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read the cluster key file {} (`raftshare invite --key-only > FILE` on a member makes one)",
                    path.display()
                )
            })?;
            Ok(Some(text))
        }
        (Some(_), Some(_)) => bail!("give the cluster key once: --key or --key-file, not both"),
    }
}

fn invite(data_dir: &DataDir, key_only: bool) -> Result<()> {
    let (config, key) = data_dir.load()?;
    if key_only {
        println!("{}", key.to_hex());
        return Ok(());
    }
    if config.advertise.port() == 0 {
        bail!("start this node first (`raftshare run`), so its address is known");
    }
    println!("On the other computer, run (the key is read from stdin, so it stays out of the shell history):\n");
    println!("  raftshare init --shared-dir ~/Shared --key -     # then paste the key below and press Enter");
    println!("  raftshare run --headless &");
    println!("  raftshare join {}\n", config.advertise);
    println!("or pipe it over: raftshare invite --key-only | ssh OTHER raftshare init --shared-dir ~/Shared --key -\n");
    println!(
        "The cluster key (keep it secret: whoever has it can join the cluster; if it leaks, `raftshare rotate-key`):\n"
    );
    println!("{}", key.to_hex());
    Ok(())
}
