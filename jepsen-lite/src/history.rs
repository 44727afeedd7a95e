//! The history: one JSON object per line, written as things happen, so a run that dies
//! still leaves what it did. The checker reads it back (`load`).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One line of `history.jsonl`. Times are milliseconds since the run started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// The run's parameters (the first line).
    Start { seed: u64, nodes: usize, time_s: u64, nemesis: String, bin: String, started_unix_ms: u64 },
    /// An edit the workload made in a node's folder (done and closed at `t_ms`).
    Op(Op),
    /// A planned edit that did nothing (e.g. a delete of a file this node did not have).
    Skipped { t_ms: u64, id: u64, node: String, what: String },
    /// A node said (an `events` `sent` event) that its change of `paths` committed at `index`.
    Ack(Ack),
    /// What the nemesis (or the harness healing at the end) did.
    Nemesis { t_ms: u64, action: String, nodes: Vec<String>, detail: String },
    /// A node process exited although nobody stopped it.
    Exit { t_ms: u64, node: String, status: String },
    /// A node the harness stopped with SIGTERM: did it exit cleanly?
    Stopped { t_ms: u64, node: String, clean: bool, status: String },
    /// A file seen in a shared folder whose (path, content) was not yet known to have been
    /// written by the workload when it was seen; the checker decides if it is explained.
    Sample(Sample),
    /// How much the sampler looked at, in all.
    SampleStats { folders: u64, files: u64 },
}

/// What an edit did to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Put,
    Delete,
}

/// One change the workload made to one path of one node's folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// The planned op it comes from (a rename or a folder removal gives several).
    pub id: u64,
    pub t_start_ms: u64,
    pub t_ms: u64,
    pub node: String,
    pub node_id: u64,
    pub change: Change,
    pub path: String,
    /// For a put: BLAKE3 hex of what is now at `path`, and its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `add`, `modify`, `delete`, `rename`, `remove_dir` or `concurrent`.
    pub cause: String,
    /// Written in place (truncate, then write): the node may see it half written.
    #[serde(default)]
    pub in_place: bool,
}

/// A node's report that one of its changes committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub t_ms: u64,
    pub node: String,
    pub node_id: u64,
    pub index: u64,
    pub paths: Vec<String>,
    /// The node's own clock for the event (RFC 3339).
    pub at: String,
}

/// A file seen in a shared folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t_ms: u64,
    pub node: String,
    pub path: String,
    pub size: u64,
    pub hash: String,
}

/// The history file being written.
pub struct History {
    start: Instant,
    out: Mutex<File>,
    echo: bool,
}

impl History {
    /// Create `path`; `echo` prints nemesis lines and surprises to stdout as they happen.
    pub fn create(path: &Path, echo: bool) -> Result<History> {
        let out = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(History { start: Instant::now(), out: Mutex::new(out), echo })
    }

    /// Milliseconds since the run started.
    pub fn t_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Append one record (a failed write is reported, never fatal to the run).
    pub fn record(&self, record: &Record) {
        if self.echo {
            match record {
                Record::Nemesis { t_ms, action, nodes, detail } => {
                    println!("[{:>7.1}s] {action} {} {detail}", *t_ms as f64 / 1000.0, nodes.join(" "))
                }
                Record::Exit { t_ms, node, status } => {
                    println!("[{:>7.1}s] UNEXPECTED EXIT of {node}: {status}", *t_ms as f64 / 1000.0)
                }
                _ => {}
            }
        }
        let mut line = serde_json::to_string(record).expect("a record serializes");
        line.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = out.write_all(line.as_bytes()) {
            eprintln!("jepsen-lite: cannot write the history: {e}");
        }
    }

    /// Record a nemesis action now.
    pub fn nemesis(&self, action: &str, nodes: &[&str], detail: impl Into<String>) {
        self.record(&Record::Nemesis {
            t_ms: self.t_ms(),
            action: action.to_string(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            detail: detail.into(),
        });
    }
}

/// Read a history back; lines that do not parse are returned as errors with their number.
pub fn load(path: &Path) -> Result<Vec<Record>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line)
            .with_context(|| format!("{} line {} is not a history record", path.display(), i + 1))?;
        out.push(record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let history = History::create(&path, false).unwrap();
        let op = Record::Op(Op {
            id: 3,
            t_start_ms: 10,
            t_ms: 12,
            node: "n1".into(),
            node_id: 77,
            change: Change::Put,
            path: "a/f3.txt".into(),
            hash: Some("ab".into()),
            size: Some(5),
            cause: "add".into(),
            in_place: false,
        });
        let ack = Record::Ack(Ack {
            t_ms: 40,
            node: "n1".into(),
            node_id: 77,
            index: 9,
            paths: vec!["a/f3.txt".into()],
            at: "x".into(),
        });
        history.record(&op);
        history.record(&ack);
        history.nemesis("kill", &["n2"], "the leader");
        let back = load(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[0], op);
        assert_eq!(back[1], ack);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().next().unwrap().starts_with(r#"{"type":"op","id":3"#), "{text}");
    }
}
