//! How commands print: the human tables and the `--json` contract (DESIGN.md's). Pure
//! functions from the node's reports to text; nothing here talks to a node.

use anyhow::Result;
use openraft::EntryPayload;
use raftshare_raft::admin::{Event, EventKind, StatusReport};
use raftshare_raft::{Entry, FileOp, FileRecord, NodeId};
use serde::Serialize;
use serde_json::json;

pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn opt(v: Option<u64>) -> String {
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
    out += &format!("database  {:.1} MiB\n", s.db_size_bytes as f64 / (1 << 20) as f64);
    if let Some(problem) = &s.folder_problem {
        out += &format!("folder    NOT SYNCED: {problem}\n");
    }
    for path in &s.cannot_hold {
        out += &format!("not here  {path} (this disk cannot hold it; the other nodes have it)\n");
    }
    for path in &s.unreadable {
        out += &format!("unreadable {path} (nothing there is proposed or deleted until it can be read)\n");
    }
    if s.pending_outbox > 0 || s.pending_downloads > 0 {
        out += &format!(
            "pending   {} local changes to commit, {} files to download\n",
            s.pending_outbox, s.pending_downloads
        );
    }
    out += "\n";
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

/// `n` of `what`, with an `s` unless there is one: "1 op", "3 ops".
pub fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
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
        out += &format!("{:>12}  {:<20}  {:<16}  {}\n", human_bytes(f.size), when, f.modified_by, path);
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
            kind: entry_kind(entry),
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
                "{} by {} at {}",
                plural(e.ops.len(), "op"),
                e.origin_name.clone().unwrap_or_default(),
                e.at.clone().unwrap_or_default()
            ),
            _ => format!("leader {} took office", e.leader_id),
        };
        out += &format!("{:>8} {:>5}  {:<11} {detail}\n", e.index, e.term, e.kind);
    }
    out
}

/// Render a log entry's payload kind for people and scripts.
pub fn entry_kind(entry: &Entry) -> &'static str {
    match &entry.payload {
        EntryPayload::Blank => "blank",
        EntryPayload::Normal(_) => "change",
        EntryPayload::Membership(_) => "membership",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sizes_read_as_words() {
        assert_eq!(plural(1, "op"), "1 op");
        assert_eq!(plural(0, "op"), "0 ops");
        assert_eq!(plural(3, "op"), "3 ops");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(12 << 10), "12.0 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        let file = FileView {
            path: "a.txt".into(),
            size: 5 << 20,
            hash: String::new(),
            modified_at: "2026-12-04T16:00:00.000Z".into(),
            modified_by: "laptop".into(),
            modified_by_id: 1,
            version: 3,
            deleted: false,
        };
        assert!(render_files(&[file]).contains("5.0 MiB"), "ls shows human sizes");
    }
}
