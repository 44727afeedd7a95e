//! The five checks, as pure functions over what a run collected: the history, each
//! node's final view (folder, `ls`, `log`, `status`), the settle outcome and the node
//! logs. No I/O here: `runner` collects and saves the data, `RunData::load` reads a saved
//! run back, and each check's tests feed made-up runs that it must catch.
//!
//! This module owns what the checks share: the collected data, a check's result, the
//! committed log they reason from (`Reference`) and running them all. Layout:
//! - `folders` — check 1, the folders converge on the committed table.
//! - `acknowledged` — check 2, every acknowledged write is kept.
//! - `phantoms` — check 2's other half: every committed change was made by someone.
//! - `logs` — check 3, the logs agree.
//! - `partials` — check 4, no partial or stray file was seen.
//! - `crashes` — check 5, no crash or panic.

mod acknowledged;
mod crashes;
mod folders;
mod logs;
mod partials;
mod phantoms;
#[cfg(test)]
mod test_runs;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use self::acknowledged::check_acknowledged;
pub use self::crashes::check_crashes;
pub use self::folders::check_folders;
pub use self::logs::check_logs;
pub use self::partials::check_partials;
use crate::history::{self, Ack, Op, Record, Sample};
use crate::model::{self, LogEntry, Replay};

/// Violations listed per check before "... and N more".
const SHOW: usize = 25;

/// What one node looked like at the end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub id: u64,
    /// `status --json`, if it answered.
    pub status: Option<Value>,
    /// `ls --json`, if it answered.
    pub ls: Option<Vec<Value>>,
    /// `log --json` (all pages), if it answered.
    pub log: Option<Vec<Value>>,
    /// The folder on disk: path → BLAKE3 hex.
    pub tree: BTreeMap<String, String>,
    /// What could not be collected.
    pub errors: Vec<String>,
}

impl NodeView {
    fn committed(&self) -> Option<u64> {
        self.status.as_ref().and_then(|s| s["committed_index"].as_u64())
    }

    /// The live files of `ls`: path → hash.
    pub fn ls_map(&self) -> Option<BTreeMap<String, String>> {
        self.ls.as_ref().map(|files| {
            files
                .iter()
                .filter(|f| f["deleted"] != true)
                .filter_map(|f| Some((f["path"].as_str()?.to_string(), f["hash"].as_str()?.to_string())))
                .collect()
        })
    }
}

/// How the wait for the cluster to settle ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settle {
    pub converged: bool,
    pub waited_ms: u64,
    /// Why it was not converged at the last look (empty when it converged).
    pub reason: String,
    /// The nodes that were members at the end (checked by 1 and 3).
    pub active: Vec<String>,
}

/// Everything the checks look at.
#[derive(Debug, Clone, Default)]
pub struct RunData {
    pub history: Vec<Record>,
    pub views: Vec<NodeView>,
    pub settle: Settle,
    /// (node name, its log text), every node that ever ran.
    pub node_logs: Vec<(String, String)>,
}

impl RunData {
    /// Read a saved run: `history.jsonl`, `final/*.json`, `nodes/*/node.log`.
    pub fn load(out: &Path) -> Result<RunData> {
        let history = history::load(&out.join("history.jsonl"))?;
        let settle: Settle = read_json(&out.join("final/settle.json"))?;
        let mut views = Vec::new();
        for name in &settle.active {
            views.push(read_json(&out.join("final").join(format!("{name}.json")))?);
        }
        let mut node_logs = Vec::new();
        if let Ok(dirs) = fs::read_dir(out.join("nodes")) {
            let mut dirs: Vec<_> = dirs.flatten().map(|d| d.path()).collect();
            dirs.sort();
            for dir in dirs {
                let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                let text = fs::read(dir.join("node.log")).map(|b| String::from_utf8_lossy(&b).to_string());
                node_logs.push((name, text.unwrap_or_default()));
            }
        }
        Ok(RunData { history, views, settle, node_logs })
    }

    fn ops(&self) -> Vec<&Op> {
        self.history.iter().filter_map(|r| if let Record::Op(op) = r { Some(op) } else { None }).collect()
    }

    fn acks(&self) -> Vec<&Ack> {
        self.history.iter().filter_map(|r| if let Record::Ack(a) = r { Some(a) } else { None }).collect()
    }

    fn samples(&self) -> Vec<&Sample> {
        self.history.iter().filter_map(|r| if let Record::Sample(s) = r { Some(s) } else { None }).collect()
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not what jepsen-lite wrote", path.display()))
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub number: u8,
    pub title: &'static str,
    /// One line: what was looked at and found.
    pub summary: String,
    pub violations: Vec<String>,
    /// Worth knowing, not a violation.
    pub notes: Vec<String>,
}

impl CheckResult {
    fn new(number: u8, title: &'static str) -> CheckResult {
        CheckResult { number, title, summary: String::new(), violations: vec![], notes: vec![] }
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// `check 1  folders converge  PASS  ...`
    pub fn line(&self) -> String {
        let verdict = if self.passed() { "PASS".to_string() } else { format!("FAIL ({})", self.violations.len()) };
        format!("check {}  {:<26} {:<9} {}", self.number, self.title, verdict, self.summary)
    }

    /// The line, then the violations (at most `limit`, 0 = all) and notes.
    pub fn details(&self, limit: usize) -> String {
        let mut out = self.line() + "\n";
        let limit = if limit == 0 { usize::MAX } else { limit };
        for v in self.violations.iter().take(limit) {
            let _ = writeln!(out, "    VIOLATION: {v}");
        }
        if self.violations.len() > limit {
            let _ = writeln!(out, "    ... and {} more (report.txt has them all)", self.violations.len() - limit);
        }
        for n in self.notes.iter().take(limit) {
            let _ = writeln!(out, "    note: {n}");
        }
        if self.notes.len() > limit {
            let _ = writeln!(out, "    ... and {} more notes", self.notes.len() - limit);
        }
        out
    }
}

/// The committed log the checks reason from: the log of the node with the highest commit
/// index, up to that index.
pub struct Reference {
    pub node: String,
    pub committed: u64,
    pub first: u64,
    pub entries: BTreeMap<u64, LogEntry>,
    pub replay: Replay,
}

impl Reference {
    /// None if no node gave a log.
    pub fn of(views: &[NodeView]) -> Option<Reference> {
        let view = views.iter().filter(|v| v.log.is_some()).max_by_key(|v| v.committed().unwrap_or(0))?;
        let committed = view.committed().unwrap_or(0);
        let entries: BTreeMap<u64, LogEntry> = view
            .log
            .iter()
            .flatten()
            .filter_map(LogEntry::from_json)
            .filter(|e| e.index <= committed)
            .map(|e| (e.index, e))
            .collect();
        let first = entries.keys().next().copied().unwrap_or(1);
        let list: Vec<LogEntry> = entries.values().cloned().collect();
        let versions: Vec<(&str, u64)> =
            view.ls.iter().flatten().filter_map(|f| Some((f["path"].as_str()?, f["version"].as_u64()?))).collect();
        let replay = model::replay(&list, &model::evidence(&list, versions));
        Some(Reference { node: view.name.clone(), committed, first, entries, replay })
    }

    /// Whether the log is whole from index 1 (not compacted), so the replay is the table.
    fn complete(&self) -> bool {
        self.first <= 1
    }
}

/// Run every check.
pub fn check_all(data: &RunData) -> Vec<CheckResult> {
    let reference = Reference::of(&data.views);
    vec![
        check_folders(&data.views, &data.settle, reference.as_ref()),
        check_acknowledged(&data.ops(), &data.acks(), &data.views, reference.as_ref()),
        check_logs(&data.views),
        check_partials(&data.ops(), &data.samples(), &data.history, reference.as_ref()),
        check_crashes(&data.history, &data.node_logs),
    ]
}

/// Add `diffs`, at most `SHOW` of them and a count of the rest.
fn push_limited(out: &mut Vec<String>, diffs: Vec<String>) {
    let n = diffs.len();
    out.extend(diffs.into_iter().take(SHOW));
    if n > SHOW {
        out.push(format!("... {} more differences like these", n - SHOW));
    }
}

/// Where two path → hash maps differ, in words.
fn diff(a_name: &str, a: &BTreeMap<String, String>, b_name: &str, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (path, hash) in a {
        match b.get(path) {
            None => out.push(format!("{path} is in {a_name} but not in {b_name}")),
            Some(other) if other != hash => {
                out.push(format!("{path} differs: {a_name} has {}, {b_name} has {}", short(hash), short(other)))
            }
            _ => {}
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push(format!("{path} is in {b_name} but not in {a_name}"));
    }
    out
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::test_runs::{failures, good_run, run, view, N1, N2};
    use super::*;

    #[test]
    fn a_run_where_everything_went_right_passes() {
        let (history, log) = good_run();
        let files = [("a.txt", "ha2")];
        let data = run(history, vec![view("n1", N1, &log, &files), view("n2", N2, &log, &files)]);
        assert_eq!(failures(&data), vec![]);
        let summary = check_all(&data)[1].summary.clone();
        assert!(summary.contains("3 puts acked: 1 present, 0 conflict copies, 2 superseded"), "{summary}");
        assert!(summary.contains("1 deletes acked: 1 gone"), "{summary}");
    }
}
