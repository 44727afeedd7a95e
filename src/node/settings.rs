//! The node's side of the Config view: its settings as saved (`GetConfig`), changes to
//! them (`SetConfig`: validated, saved, applied live where possible), what this node
//! does not have yet (`Pending`), and renaming a member in the cluster's membership.
//!
//! A child of `node` so it can use the node's Raft handle and pool without widening them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use openraft::ChangeMembers;
use raftshare_raft::admin::{AdminRequest, AdminResponse, ConfigChange, ConfigReport, PendingChange, PendingReport};
use raftshare_raft::{FileOp, NodeId, NodeInfo};
use tracing::info;

use super::leader::{write_error, Routed};
use super::state::Node;
use crate::sync::disk::IGNORE_FILE;
use crate::sync::folder::Folder;

/// Most entries of each list a `Pending` answer carries.
const MAX_PENDING: usize = 10_000;

impl Node {
    /// `GetConfig`: the saved settings, and which of them wait for a restart.
    pub(super) fn config_report(&self) -> Result<AdminResponse> {
        Ok(AdminResponse::Config(Box::new(self.report()?)))
    }

    fn report(&self) -> Result<ConfigReport> {
        let (saved, _) = self.settings.data_dir.load()?;
        let started = &self.settings.started;
        let mut restart_needed = vec![];
        if saved.shared_dir != started.shared_dir {
            restart_needed.push("shared_dir".to_string());
        }
        if saved.listen != started.listen {
            restart_needed.push("listen".to_string());
        }
        if saved.allow != started.allow {
            restart_needed.push("allow".to_string());
        }
        Ok(ConfigReport {
            node_id: saved.node_id,
            name: saved.name,
            shared_dir: saved.shared_dir.display().to_string(),
            listen: saved.listen.to_string(),
            advertise: saved.advertise.to_string(),
            allow: saved.allow.iter().map(ToString::to_string).collect(),
            ignore: read_ignore(self.sync.folder.root()),
            config_path: self.settings.data_dir.root().join("config.toml").display().to_string(),
            restart_needed,
        })
    }

    /// `SetConfig`: check every new value, then rename in the cluster (live), save
    /// `config.toml`, write `.raftshareignore` (live: the scanner reloads it), and say
    /// what waits for a restart. Nothing is saved if a value is refused.
    pub(super) async fn set_config(&self, change: ConfigChange) -> Result<AdminResponse> {
        let data_dir = &self.settings.data_dir;
        let (saved, _) = data_dir.load()?;
        let next = saved.with_change(&change, data_dir)?;
        let ignore = change.ignore.as_ref().map(|lines| clean_lines(lines));
        if let Some(lines) = &ignore {
            check_ignore(self.sync.folder.root(), lines)?;
        }
        let mut done = vec![];
        let known_as = self.raft.metrics().borrow().membership_config.membership().get_node(&self.id).cloned();
        if let Some(member) = &known_as {
            if next.advertise != saved.advertise && next.advertise.to_string() != member.addr {
                bail!(
                    "the cluster knows this node at {}; peers could not find it at {} after the restart. To move it: \
                     `raftshare leave`, change the listen address, restart, and `raftshare join` again",
                    member.addr,
                    next.advertise
                );
            }
        }
        if next.name != saved.name {
            if known_as.is_some() {
                let node = NodeInfo { name: next.name.clone(), ..self.info.clone() };
                self.set_member_info(self.id, node, 0).await.context("the name was not changed (nothing was saved)")?;
                done.push(format!(
                    "name is now {:?} on every node (changes made here carry it after a restart)",
                    next.name
                ));
            } else {
                done.push(format!("name {:?} saved (this node is not in a cluster yet)", next.name));
            }
        }
        if next != saved {
            data_dir.save(&next)?;
            info!(path = %data_dir.root().display(), "config.toml saved");
        }
        if let Some(lines) = ignore {
            if lines != read_ignore(self.sync.folder.root()) {
                write_ignore(&self.sync.folder, &lines)?;
                self.sync.reload_rules();
                done.push(format!("ignore patterns applied ({} lines, synced to every node)", lines.len()));
            }
        }
        let report = self.report()?;
        let started = &self.settings.started;
        let mut restart = vec![];
        if next.shared_dir != saved.shared_dir || next.listen != saved.listen || next.allow != saved.allow {
            restart = report.restart_needed.clone();
        }
        if next.shared_dir != saved.shared_dir && next.shared_dir != started.shared_dir {
            done.push(format!(
                "shared folder saved: move the folder's content (with its .raftshare marker) to {} before the restart",
                next.shared_dir.display()
            ));
        }
        let mut message =
            if done.is_empty() && restart.is_empty() { "nothing changed".to_string() } else { done.join("; ") };
        if !restart.is_empty() {
            if !message.is_empty() {
                message += "; ";
            }
            message += &format!("restart the node for {} to take effect", restart.join(", "));
        }
        Ok(AdminResponse::ConfigSaved { report: Box::new(report), message })
    }

    /// `SetMemberInfo`: show member `id` under a new name. Only the name changes: its
    /// address and identity in the membership stay (peers dial it, rotated keys are sealed
    /// to it), so no node can be lost by it.
    pub(super) async fn set_member_info(&self, id: NodeId, node: NodeInfo, hops: u8) -> Result<AdminResponse> {
        if let Routed::There(resp) =
            self.to_leader(AdminRequest::SetMemberInfo { id, node: node.clone(), hops }).await?
        {
            return Ok(resp);
        }
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        let Some(current) = membership.get_node(&id) else {
            bail!("node {id} is not a member: `raftshare status` lists the members");
        };
        let renamed = NodeInfo { name: node.name.clone(), ..current.clone() };
        if *current != renamed {
            self.raft
                .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, renamed)])), false)
                .await
                .map_err(write_error)?;
        }
        Ok(AdminResponse::Done(format!("node {id} is now called {:?}", node.name)))
    }

    /// `Pending`: local changes not committed yet, committed files not on this disk yet.
    pub(super) fn pending_report(&self) -> PendingReport {
        let outbox = self
            .sync
            .outbox
            .pending(MAX_PENDING)
            .into_iter()
            .map(|p| PendingChange {
                path: p.path().to_string(),
                deleted: matches!(p.op, FileOp::Delete { .. }),
                queued_at_ms: p.queued_at_ms,
            })
            .collect();
        let missing = self
            .sm
            .files()
            .into_iter()
            .filter(|f| !f.deleted)
            .filter(|f| self.sync.local.get(&f.path).ok().flatten().is_none_or(|local| local.hash != f.hash))
            .map(|f| f.path)
            .take(MAX_PENDING)
            .collect();
        PendingReport { outbox, missing }
    }
}

/// The lines of `.raftshareignore` worth keeping: trimmed at the end, no blank ones.
fn clean_lines(lines: &[String]) -> Vec<String> {
    lines.iter().map(|l| l.trim_end().to_string()).filter(|l| !l.trim().is_empty()).collect()
}

/// The non-blank lines of the folder's `.raftshareignore` (none if there is no file).
pub fn read_ignore(root: &Path) -> Vec<String> {
    clean_lines(
        &fs::read_to_string(root.join(IGNORE_FILE)).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>(),
    )
}

/// Refuse a pattern the ignore rules could not use, naming it.
fn check_ignore(root: &Path, lines: &[String]) -> Result<()> {
    for line in lines {
        let mut builder = ignore::gitignore::GitignoreBuilder::new(root);
        let built =
            builder.add_line(None, line).map_err(|e| e.to_string()).and_then(|b| b.build().map_err(|e| e.to_string()));
        if let Err(e) = built {
            bail!("the ignore pattern {line:?} is not valid ({e}): use gitignore syntax, such as *.tmp or build/");
        }
    }
    Ok(())
}

/// Write `.raftshareignore` as a person's editor would (a temp file renamed over it): it
/// is a user's file, so the scanner proposes it like any other edit.
fn write_ignore(folder: &Folder, lines: &[String]) -> Result<()> {
    let path = folder.root().join(IGNORE_FILE);
    let tmp = folder.tmp_dir().join("raftshareignore.new");
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    {
        let mut file = folder.open_temp(&tmp, false).with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
