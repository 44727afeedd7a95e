//! The five checks, as pure functions over what a run collected: the history, each
//! node's final view (folder, `ls`, `log`, `status`), the settle outcome and the node
//! logs. No I/O here: `runner` collects and saves the data, `RunData::load` reads a saved
//! run back, and the tests below feed made-up runs that each check must catch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::{self, Ack, Change, Op, Record, Sample};
use crate::model::{self, Effect, LogEntry, Replay};

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

/// Check 1: every node's folder is identical, and equal to the committed file table
/// (`ls`), which in turn equals a replay of the committed log.
pub fn check_folders(views: &[NodeView], settle: &Settle, reference: Option<&Reference>) -> CheckResult {
    let mut r = CheckResult::new(1, "folders converge");
    if views.is_empty() {
        r.violations.push("no node to check".into());
        r.summary = "no nodes".into();
        return r;
    }
    if !settle.converged {
        r.violations.push(format!(
            "the cluster did not settle within {:.0} s: {}",
            settle.waited_ms as f64 / 1000.0,
            settle.reason
        ));
    }
    let first_ls = views.iter().find_map(|v| v.ls_map().map(|m| (v.name.clone(), m)));
    for v in views {
        match v.ls_map() {
            None => r.violations.push(format!("{} did not answer `ls`: {}", v.name, v.errors.join("; "))),
            Some(ls) => {
                push_limited(
                    &mut r.violations,
                    diff(&format!("{}'s folder", v.name), &v.tree, &format!("{}'s ls", v.name), &ls),
                );
                if let Some((name, first)) = &first_ls {
                    if name != &v.name {
                        push_limited(
                            &mut r.violations,
                            diff(&format!("{name}'s ls"), first, &format!("{}'s ls", v.name), &ls),
                        );
                    }
                }
            }
        }
    }
    let files = first_ls.as_ref().map(|(_, m)| m.len()).unwrap_or(0);
    let mut replayed = String::new();
    match (reference, &first_ls) {
        (Some(reference), Some((name, ls))) if reference.complete() => {
            push_limited(
                &mut r.violations,
                diff(&format!("{name}'s ls"), ls, "the replay of the committed log", &reference.replay.live()),
            );
            replayed = format!(" = replay of {} committed entries", reference.committed);
        }
        (Some(reference), _) => r.notes.push(format!(
            "the log was compacted (first index {}): the table was not compared with a replay",
            reference.first
        )),
        (None, _) => r.violations.push("no node gave its log".into()),
    }
    r.summary = format!(
        "{} nodes, {files} files: folders = ls{replayed}, settled in {:.1} s",
        views.len(),
        settle.waited_ms as f64 / 1000.0
    );
    r
}

/// How the acknowledged changes fared.
#[derive(Debug, Default)]
struct AckTally {
    puts: usize,
    present: usize,
    copies: usize,
    superseded: usize,
    deletes: usize,
    gone: usize,
    recreated: usize,
    overruled: usize,
}

/// Check 2: every acknowledged put is present, or superseded by a later committed change
/// of that path, or kept as a conflict copy; no acknowledged delete came back; every ack
/// names a change that is really in the committed log; and every committed change that
/// took effect was made by the workload (no change nobody made).
pub fn check_acknowledged(
    ops: &[&Op],
    acks: &[&Ack],
    views: &[NodeView],
    reference: Option<&Reference>,
) -> CheckResult {
    let mut r = CheckResult::new(2, "acknowledged writes kept");
    let Some(reference) = reference else {
        r.violations.push("no node gave its log: nothing to check the acknowledgements against".into());
        return r;
    };
    let Some(table) = views.iter().find(|v| v.name == reference.node).and_then(|v| v.ls_map()) else {
        r.violations.push(format!("{} gave its log but not `ls`", reference.node));
        return r;
    };
    let phantoms = attribute(ops, acks, reference, &mut r);
    // A change that supersedes an acknowledged one must be a real one.
    let real = |a: &model::Applied| !phantoms.contains(&(a.index, a.op_no));
    let mut t = AckTally::default();
    let mut seen: HashSet<(u64, usize)> = HashSet::new();
    for ack in acks {
        for path in &ack.paths {
            let who =
                format!("{} reported {path:?} committed at index {} ({:.1} s)", ack.node, ack.index, secs(ack.t_ms));
            let Some(entry) = reference.entries.get(&ack.index) else {
                if ack.index > reference.committed {
                    r.violations.push(format!("{who}, beyond the cluster's commit index {}", reference.committed));
                } else {
                    r.notes.push(format!("{who}: entry not in the kept log (compacted)"));
                }
                continue;
            };
            if entry.kind != "change" || entry.origin != Some(ack.node_id) {
                r.violations.push(format!(
                    "{who}, but committed entry {} is a {} entry by {}",
                    entry.index,
                    entry.kind,
                    entry.origin_name.as_deref().unwrap_or("nobody")
                ));
                continue;
            }
            let Some(applied) = reference.replay.at(ack.index, path).last() else {
                r.violations.push(format!("{who}, but committed entry {} has no change of that path", entry.index));
                continue;
            };
            // A retried proposal was skipped: what counts is the op it repeats.
            let applied = reference.replay.original(applied);
            if !seen.insert((applied.index, applied.op_no)) {
                continue; // the same change acknowledged again (a retried proposal)
            }
            let made = if applied.op.op == "put" {
                ops.iter()
                    .filter(|o| o.change == Change::Put && o.path == *path && o.hash == applied.op.hash)
                    .min_by_key(|o| (o.node_id != ack.node_id, o.t_ms))
            } else {
                ops.iter()
                    .filter(|o| {
                        o.change == Change::Delete && o.path == *path && o.node_id == ack.node_id && o.t_ms <= ack.t_ms
                    })
                    .max_by_key(|o| o.t_ms)
            };
            let what = match made {
                Some(op) => format!("op #{} ({} on {} at {:.1} s)", op.id, op.cause, op.node, secs(op.t_ms)),
                None => "a change the workload did not make".to_string(),
            };
            match (applied.op.op.as_str(), &applied.effect) {
                ("put", effect) => {
                    t.puts += 1;
                    let hash = applied.op.hash.clone().unwrap_or_default();
                    let at = match effect {
                        Effect::Conflict { kept_as } => kept_as.clone(),
                        _ => path.clone(),
                    };
                    if table.get(&at) == Some(&hash) {
                        if at == *path {
                            t.present += 1;
                        } else {
                            t.copies += 1;
                        }
                    } else if reference.replay.changed_after_by(&at, applied.index, real).is_some() {
                        t.superseded += 1;
                    } else {
                        let now = table.get(&at).map(|h| format!("holds {}", short(h))).unwrap_or("is absent".into());
                        r.violations.push(format!(
                            "LOST WRITE: {what}: {path:?} = {} acknowledged at index {} ({} there), but {at:?} {now} \
                             and no later committed change touched it",
                            short(&hash),
                            applied.index,
                            if at == *path { "written".to_string() } else { "kept as a conflict copy".to_string() }
                        ));
                    }
                }
                ("delete", Effect::DeleteDropped) => {
                    t.deletes += 1;
                    t.overruled += 1;
                }
                ("delete", _) => {
                    t.deletes += 1;
                    match table.get(path) {
                        None => t.gone += 1,
                        Some(hash) => match reference.replay.changed_after_by(path, applied.index, real) {
                            Some(_) => t.recreated += 1,
                            None => r.violations.push(format!(
                                "DELETE CAME BACK: {what}: {path:?} deleted at index {}, acknowledged, but present \
                                 again ({}) with no later committed put that someone made",
                                applied.index,
                                short(hash)
                            )),
                        },
                    }
                }
                _ => {}
            }
        }
    }
    r.summary = format!(
        "{} ops; {} puts acked: {} present, {} conflict copies, {} superseded; {} deletes acked: {} gone, \
         {} re-created later, {} overruled by an edit",
        ops.len(),
        t.puts,
        t.present,
        t.copies,
        t.superseded,
        t.deletes,
        t.gone,
        t.recreated,
        t.overruled
    );
    r
}

/// Every committed change must come from the workload of its origin: a put of content
/// that node wrote to that path (or a half-written state of an in-place write it made
/// there), a delete that node made. A change without such a maker that took effect is a
/// violation (e.g. a node that re-proposes content it received brings back a deleted
/// file); one the rules dropped or that changed nothing is a note.
fn attribute(ops: &[&Op], acks: &[&Ack], reference: &Reference, r: &mut CheckResult) -> HashSet<(u64, usize)> {
    let mut phantoms = HashSet::new();
    let mut puts: HashMap<(&str, &str), Vec<&Op>> = HashMap::new();
    let mut deletes: HashSet<(u64, &str)> = HashSet::new();
    let mut in_place: HashMap<(u64, &str), u64> = HashMap::new();
    let mut names: HashMap<u64, &str> = HashMap::new();
    for op in ops {
        names.insert(op.node_id, &op.node);
        match op.change {
            Change::Put => {
                puts.entry((op.path.as_str(), op.hash.as_deref().unwrap_or(""))).or_default().push(op);
                if op.in_place {
                    let max = in_place.entry((op.node_id, op.path.as_str())).or_default();
                    *max = (*max).max(op.size.unwrap_or(0));
                }
            }
            Change::Delete => {
                deletes.insert((op.node_id, op.path.as_str()));
            }
        }
    }
    for ack in acks {
        names.insert(ack.node_id, &ack.node);
    }
    let name = |id: u64| names.get(&id).map(|n| n.to_string()).unwrap_or_else(|| format!("node {id}"));
    let mut half_written = 0;
    for a in &reference.replay.applied {
        let origin = a.origin.unwrap_or(0);
        let path = a.op.path.as_str();
        let effective =
            !matches!(a.effect, Effect::Unchanged | Effect::DeleteDropped | Effect::Ignored | Effect::Duplicate { .. });
        let problem =
            match a.op.op.as_str() {
                "put" => {
                    let hash = a.op.hash.as_deref().unwrap_or("");
                    let makers = puts.get(&(path, hash));
                    if makers.is_some_and(|m| m.iter().any(|o| o.node_id == origin)) {
                        None
                    } else if in_place.get(&(origin, path)).is_some_and(|max| a.op.size.unwrap_or(0) <= *max) {
                        half_written += 1;
                        None
                    } else if let Some(makers) = makers {
                        let op = makers[0];
                        Some(format!(
                            "{} put {path:?} = {}, content that {} wrote there (op #{} at {:.1} s), not {}",
                            name(origin),
                            short(hash),
                            op.node,
                            op.id,
                            secs(op.t_ms),
                            name(origin)
                        ))
                    } else if let Some(before) = reference.replay.applied.iter().find(|b| {
                        b.index < a.index && b.changed_path() == Some(path) && b.op.hash.as_deref() == Some(hash)
                    }) {
                        Some(format!(
                            "{} put {path:?} = {}, content it received (entry {} by {} put it there), not one it wrote",
                            name(origin),
                            short(hash),
                            before.index,
                            name(before.origin.unwrap_or(0))
                        ))
                    } else {
                        Some(format!("{} put {path:?} = {}, content nobody wrote there", name(origin), short(hash)))
                    }
                }
                "delete" if !deletes.contains(&(origin, path)) && !withdrawn(ops, &reference.replay, a) => {
                    Some(format!("{} deleted {path:?}, which its workload never deleted", name(origin)))
                }
                _ => None,
            };
        if let Some(mut problem) = problem {
            let previous =
                reference.replay.applied.iter().rev().find(|b| b.index < a.index && b.changed_path() == Some(path));
            if let (Effect::Written, Some(deleted)) = (&a.effect, previous.filter(|b| b.effect == Effect::Deleted)) {
                problem += &format!(": it brings back the file deleted at entry {}", deleted.index);
            }
            let line = format!("entry {}: {problem} (effect: {:?})", a.index, a.effect);
            if effective {
                phantoms.insert((a.index, a.op_no));
                r.violations.push(format!("PHANTOM CHANGE: {line}"));
            } else {
                r.notes.push(format!("a change nobody made there, without effect: {line}"));
            }
        }
    }
    if half_written > 0 {
        r.notes.push(format!("{half_written} committed puts are half-written states of in-place writes"));
    }
    phantoms
}

/// Whether the delete `a` is its origin withdrawing its own conflict copy, as raftshare
/// does when the content kept there no longer exists on that node: the copy's exact
/// version is deleted, and the origin's workload changed or deleted the original path
/// after writing that content (which is why the node no longer had it).
fn withdrawn(ops: &[&Op], replay: &model::Replay, a: &model::Applied) -> bool {
    let Some(kept) = replay.applied.iter().find(|k| {
        k.index < a.index
            && k.origin == a.origin
            && matches!(&k.effect, Effect::Conflict { kept_as } if *kept_as == a.op.path)
            && a.op.base == Some(k.index)
    }) else {
        return false;
    };
    let origin = a.origin.unwrap_or(0);
    let original = kept.op.path.as_str();
    let mine = |o: &&&Op| o.node_id == origin && o.path == original;
    let Some(written) = ops.iter().filter(mine).filter(|o| o.hash == kept.op.hash).map(|o| o.t_ms).min() else {
        return false;
    };
    ops.iter().filter(mine).any(|o| o.t_ms > written && o.hash != kept.op.hash)
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Check 3: the logs agree: for every node, each entry up to its commit index is the same
/// (same term, same content) as the reference log's.
pub fn check_logs(views: &[NodeView]) -> CheckResult {
    let mut r = CheckResult::new(3, "logs agree");
    let logs: Vec<(&NodeView, BTreeMap<u64, &Value>)> = views
        .iter()
        .filter_map(|v| {
            let log = v.log.as_ref()?;
            Some((v, log.iter().filter_map(|e| Some((e["index"].as_u64()?, e))).collect()))
        })
        .collect();
    for v in views.iter().filter(|v| v.log.is_none()) {
        r.violations.push(format!("{} did not give its log: {}", v.name, v.errors.join("; ")));
    }
    let Some((reference, ref_log)) = logs.iter().max_by_key(|(v, _)| v.committed().unwrap_or(0)) else {
        r.summary = "no logs".into();
        return r;
    };
    let terms: Vec<u64> = ref_log.values().filter_map(|e| e["term"].as_u64()).collect();
    if terms.windows(2).any(|w| w[0] > w[1]) {
        r.violations.push(format!("{}'s log has a term that goes down", reference.name));
    }
    let mut lowest = u64::MAX;
    let mut from = 0;
    for (v, log) in &logs {
        let Some(committed) = v.committed() else {
            r.violations.push(format!("{} reports no commit index", v.name));
            continue;
        };
        lowest = lowest.min(committed);
        let first = log.keys().next().copied().unwrap_or(1).max(ref_log.keys().next().copied().unwrap_or(1));
        from = from.max(first);
        let mut bad = 0;
        for index in first..=committed {
            let (mine, theirs) = (log.get(&index), ref_log.get(&index));
            let problem = match (mine, theirs) {
                (Some(a), Some(b)) if a == b => continue,
                (None, _) => format!("{} lacks committed entry {index}", v.name),
                (Some(_), None) => format!("{} has committed entry {index}, {} does not", v.name, reference.name),
                (Some(a), Some(b)) => format!(
                    "entry {index} differs: {} has term {} {} by {}, {} has term {} {} by {}",
                    v.name,
                    a["term"],
                    a["kind"],
                    a["origin_name"],
                    reference.name,
                    b["term"],
                    b["kind"],
                    b["origin_name"]
                ),
            };
            bad += 1;
            if bad <= SHOW {
                r.violations.push(problem);
            }
        }
        if bad > SHOW {
            r.violations.push(format!("... {} has {} differing entries in all", v.name, bad));
        }
    }
    let highest = reference.committed().unwrap_or(0);
    r.summary = if lowest == u64::MAX {
        "no commit index".into()
    } else {
        format!("{} logs, entries {from}..={lowest} checked (commit index {lowest} to {highest})", logs.len())
    };
    r
}

/// Check 4: no temp or partial file was ever seen in a shared folder. A sample is a file
/// read in a node's folder while no workload write to that folder was in progress; it is
/// a partial or stray file if its (path, content) is neither one the workload wrote to
/// that path nor one the committed log put there (conflict copies included).
pub fn check_partials(
    ops: &[&Op],
    samples: &[&Sample],
    history: &[Record],
    reference: Option<&Reference>,
) -> CheckResult {
    let mut r = CheckResult::new(4, "no partial files seen");
    let mut known: HashSet<(&str, &str)> = HashSet::new();
    for op in ops.iter().filter(|o| o.change == Change::Put) {
        known.insert((op.path.as_str(), op.hash.as_deref().unwrap_or("")));
    }
    if let Some(reference) = reference {
        for a in &reference.replay.applied {
            if let Some(hash) = a.op.hash.as_deref() {
                known.insert((a.op.path.as_str(), hash));
                if let Effect::Conflict { kept_as } = &a.effect {
                    known.insert((kept_as.as_str(), hash));
                }
            }
        }
    } else {
        r.notes.push("no committed log: only the workload's own writes explain what was seen".into());
    }
    let mut reported: BTreeSet<(&str, &str, &str)> = BTreeSet::new();
    for s in samples {
        if known.contains(&(s.path.as_str(), s.hash.as_str())) {
            continue;
        }
        if reported.insert((s.node.as_str(), s.path.as_str(), s.hash.as_str())) {
            r.violations.push(format!(
                "{} at {:.1} s: {:?} ({} bytes, {}) is neither a version the workload wrote there nor a committed one",
                s.node,
                secs(s.t_ms),
                s.path,
                s.size,
                short(&s.hash)
            ));
        }
    }
    let (folders, files) = history
        .iter()
        .find_map(|rec| match rec {
            Record::SampleStats { folders, files } => Some((*folders, *files)),
            _ => None,
        })
        .unwrap_or((0, 0));
    r.summary = format!(
        "{folders} folder samples, {files} files read, {} seen before the history knew them, {} unexplained",
        samples.len(),
        r.violations.len()
    );
    r
}

/// Check 5: no node exited unless the nemesis or the harness stopped it, every stop by
/// SIGTERM was clean, and no node log says "panicked".
pub fn check_crashes(history: &[Record], node_logs: &[(String, String)]) -> CheckResult {
    let mut r = CheckResult::new(5, "no crash or panic");
    let mut kills = 0;
    let mut stops = 0;
    for rec in history {
        match rec {
            Record::Exit { t_ms, node, status } => {
                r.violations.push(format!("{node} exited by itself at {:.1} s: {status}", secs(*t_ms)))
            }
            Record::Stopped { t_ms, node, clean, status } => {
                stops += 1;
                if !clean {
                    r.violations
                        .push(format!("{node} did not stop cleanly on SIGTERM at {:.1} s: {status}", secs(*t_ms)))
                }
            }
            Record::Nemesis { action, .. } if action == "kill" => kills += 1,
            _ => {}
        }
    }
    let mut panics = 0;
    for (node, text) in node_logs {
        for line in text.lines().filter(|l| l.contains("panicked")) {
            panics += 1;
            r.violations.push(format!("{node} log: {}", line.chars().take(300).collect::<String>()));
        }
    }
    r.summary = format!(
        "{} node logs scanned, {kills} kill -9 by the nemesis, {stops} SIGTERM stops, {panics} panics",
        node_logs.len()
    );
    r
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::tests::{change, delete, put};
    use crate::model::LogOp;

    const N1: u64 = 101;
    const N2: u64 = 102;

    fn op(id: u64, node: &str, node_id: u64, change: Change, path: &str, hash: Option<&str>, t_ms: u64) -> Record {
        Record::Op(Op {
            id,
            t_start_ms: t_ms,
            t_ms,
            node: node.into(),
            node_id,
            change,
            path: path.into(),
            hash: hash.map(str::to_string),
            size: hash.map(|_| 1),
            cause: if change == Change::Put { "add".into() } else { "delete".into() },
            in_place: false,
        })
    }

    fn ack(node: &str, node_id: u64, index: u64, paths: &[&str], t_ms: u64) -> Record {
        Record::Ack(Ack {
            t_ms,
            node: node.into(),
            node_id,
            index,
            paths: paths.iter().map(|p| p.to_string()).collect(),
            at: String::new(),
        })
    }

    fn entry_json(e: &LogEntry) -> Value {
        let ops: Vec<Value> = e
            .ops
            .iter()
            .map(|o: &LogOp| json!({"op": o.op, "path": o.path, "hash": o.hash, "size": o.size, "base": o.base}))
            .collect();
        json!({"index": e.index, "term": e.term, "leader_id": 1, "kind": e.kind, "origin": e.origin,
               "origin_name": e.origin_name, "ops": ops})
    }

    fn view(name: &str, id: u64, log: &[LogEntry], files: &[(&str, &str)]) -> NodeView {
        let committed = log.last().map(|e| e.index);
        let map: BTreeMap<String, String> = files.iter().map(|(p, h)| (p.to_string(), h.to_string())).collect();
        NodeView {
            name: name.into(),
            id,
            status: Some(json!({"committed_index": committed, "applied_index": committed})),
            ls: Some(
                files.iter().map(|(p, h)| json!({"path": p, "hash": h, "deleted": false, "version": 0})).collect(),
            ),
            log: Some(log.iter().map(entry_json).collect()),
            tree: map,
            errors: vec![],
        }
    }

    /// n1 adds a.txt (index 1) and b.txt (2), n2 changes a.txt (3) and deletes b.txt (4):
    /// a run where everything went right.
    fn good_run() -> (Vec<Record>, Vec<LogEntry>) {
        let history = vec![
            op(1, "n1", N1, Change::Put, "a.txt", Some("ha1"), 10),
            op(2, "n1", N1, Change::Put, "b.txt", Some("hb1"), 20),
            ack("n1", N1, 1, &["a.txt"], 30),
            ack("n1", N1, 2, &["b.txt"], 40),
            op(3, "n2", N2, Change::Put, "a.txt", Some("ha2"), 50),
            ack("n2", N2, 3, &["a.txt"], 60),
            op(4, "n2", N2, Change::Delete, "b.txt", None, 70),
            ack("n2", N2, 4, &["b.txt"], 80),
            Record::SampleStats { folders: 10, files: 20 },
        ];
        let log = vec![
            change(1, N1, "n1", vec![put("a.txt", "ha1", None)]),
            change(2, N1, "n1", vec![put("b.txt", "hb1", None)]),
            change(3, N2, "n2", vec![put("a.txt", "ha2", Some(1))]),
            change(4, N2, "n2", vec![delete("b.txt", Some(2))]),
        ];
        (history, log)
    }

    fn run(history: Vec<Record>, views: Vec<NodeView>) -> RunData {
        let active = views.iter().map(|v| v.name.clone()).collect();
        RunData {
            history,
            views,
            settle: Settle { converged: true, waited_ms: 1000, reason: String::new(), active },
            node_logs: vec![("n1".into(), "INFO started\n".into()), ("n2".into(), "INFO started\n".into())],
        }
    }

    fn failures(data: &RunData) -> Vec<(u8, Vec<String>)> {
        check_all(data).into_iter().filter(|c| !c.passed()).map(|c| (c.number, c.violations)).collect()
    }

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

    #[test]
    fn a_lost_write_is_caught() {
        // a.txt's second version was acknowledged, but both nodes went back to the first
        // (and their ls agrees with their folders, so only the ack can tell).
        let (history, log) = good_run();
        let files = [("a.txt", "ha1")];
        let data = run(history, vec![view("n1", N1, &log, &files), view("n2", N2, &log, &files)]);
        let failed = failures(&data);
        let check2 = &failed.iter().find(|(n, _)| *n == 2).expect("check 2 fails").1;
        assert!(check2.iter().any(|v| v.contains("LOST WRITE") && v.contains("op #3")), "{check2:?}");
        // The table also disagrees with the replay of the log.
        assert!(failed.iter().any(|(n, _)| *n == 1));
    }

    #[test]
    fn an_acknowledged_entry_missing_from_the_log_is_caught() {
        // n1 was told index 5 committed, but the cluster's log ends at 4 (a lost commit).
        let (mut history, log) = good_run();
        history.push(op(5, "n1", N1, Change::Put, "c.txt", Some("hc"), 90));
        history.push(ack("n1", N1, 5, &["c.txt"], 95));
        let files = [("a.txt", "ha2")];
        let data = run(history, vec![view("n1", N1, &log, &files), view("n2", N2, &log, &files)]);
        let failed = failures(&data);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].1[0].contains("beyond the cluster's commit index 4"), "{failed:?}");
    }

    #[test]
    fn a_resurrected_delete_is_caught() {
        // b.txt's delete was acknowledged, and b.txt is back on every node and in ls.
        let (history, log) = good_run();
        let files = [("a.txt", "ha2"), ("b.txt", "hb1")];
        let data = run(history, vec![view("n1", N1, &log, &files), view("n2", N2, &log, &files)]);
        let failed = failures(&data);
        let check2 = &failed.iter().find(|(n, _)| *n == 2).expect("check 2 fails").1;
        assert!(check2.iter().any(|v| v.contains("DELETE CAME BACK") && v.contains("b.txt")), "{check2:?}");
    }

    #[test]
    fn a_delete_that_a_later_put_undid_is_not_a_resurrection() {
        let (mut history, mut log) = good_run();
        history.push(op(5, "n1", N1, Change::Put, "b.txt", Some("hb2"), 90));
        log.push(change(5, N1, "n1", vec![put("b.txt", "hb2", None)]));
        let files = [("a.txt", "ha2"), ("b.txt", "hb2")];
        let data = run(history, vec![view("n1", N1, &log, &files), view("n2", N2, &log, &files)]);
        assert_eq!(failures(&data), vec![]);
    }

    #[test]
    fn a_conflict_copy_keeps_an_acknowledged_write() {
        let (mut history, mut log) = good_run();
        // n1 edits a.txt from the first version while n2's edit commits: kept as a copy.
        history.push(op(5, "n1", N1, Change::Put, "a.txt", Some("ha3"), 90));
        history.push(ack("n1", N1, 5, &["a.txt"], 95));
        log.push(change(5, N1, "n1", vec![put("a.txt", "ha3", Some(1))]));
        let files = [("a.txt", "ha2"), ("a.conflict-n1-5.txt", "ha3")];
        let data = run(history.clone(), vec![view("n1", N1, &log, &files), view("n2", N2, &log, &files)]);
        assert_eq!(failures(&data), vec![]);
        assert!(check_all(&data)[1].summary.contains("1 conflict copies"));
        // Without the copy, the write is lost.
        let files = [("a.txt", "ha2")];
        let data = run(history, vec![view("n1", N1, &log, &files), view("n2", N2, &log, &files)]);
        assert!(failures(&data).iter().any(|(n, v)| *n == 2 && v.iter().any(|v| v.contains("LOST WRITE"))));
    }

    #[test]
    fn a_conflict_copy_withdrawn_by_its_origin_after_a_later_edit_is_superseded_not_lost() {
        let (mut history, mut log) = good_run();
        // n1's edit ha3 is kept as a copy; n1 had already overwritten it with ha4, so it
        // withdraws the copy (a delete of exactly its version) and proposes ha4.
        history.push(op(5, "n1", N1, Change::Put, "a.txt", Some("ha3"), 90));
        history.push(op(6, "n1", N1, Change::Put, "a.txt", Some("ha4"), 92));
        history.push(ack("n1", N1, 5, &["a.txt"], 95));
        log.push(change(5, N1, "n1", vec![put("a.txt", "ha3", Some(1))]));
        log.push(change(6, N1, "n1", vec![delete("a.conflict-n1-5.txt", Some(5)), put("a.txt", "ha4", Some(1))]));
        let files = [("a.txt", "ha2"), ("a.conflict-n1-6.txt", "ha4")];
        let data = run(history.clone(), vec![view("n1", N1, &log, &files), view("n2", N2, &log, &files)]);
        assert_eq!(failures(&data), vec![]);
        // Without the later edit, the same delete is a change nobody made, and a lost write.
        let history: Vec<_> = history.into_iter().filter(|h| !format!("{h:?}").contains("ha4")).collect();
        log.pop();
        log.push(change(6, N1, "n1", vec![delete("a.conflict-n1-5.txt", Some(5))]));
        let files = [("a.txt", "ha2")];
        let data = run(history, vec![view("n1", N1, &log, &files), view("n2", N2, &log, &files)]);
        let failed = failures(&data);
        assert!(failed.iter().any(|(n, v)| *n == 2 && v.iter().any(|v| v.contains("PHANTOM CHANGE"))), "{failed:?}");
    }

    #[test]
    fn a_change_nobody_made_is_caught() {
        // n2 committed a delete of a.txt that the workload never made on n2.
        let (history, mut log) = good_run();
        log.push(change(5, N2, "n2", vec![delete("a.txt", Some(3))]));
        let data = run(history, vec![view("n1", N1, &log, &[]), view("n2", N2, &log, &[])]);
        let failed = failures(&data);
        assert!(failed.iter().any(|(n, v)| *n == 2 && v.iter().any(|v| v.contains("PHANTOM CHANGE"))), "{failed:?}");
    }

    #[test]
    fn a_delete_brought_back_by_a_node_that_re_proposed_what_it_received_is_caught() {
        // b.txt's acknowledged delete (4) is undone by n2 proposing n1's content again
        // (5): a later committed put, but one n2's workload never made.
        let (history, mut log) = good_run();
        log.push(change(5, N2, "n2", vec![put("b.txt", "hb1", None)]));
        let files = [("a.txt", "ha2"), ("b.txt", "hb1")];
        let data = run(history, vec![view("n1", N1, &log, &files), view("n2", N2, &log, &files)]);
        let failed = failures(&data);
        assert_eq!(failed.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![2], "{failed:?}");
        let v = &failed[0].1;
        assert!(v[0].contains("PHANTOM CHANGE: entry 5: n2 put \"b.txt\""), "{v:?}");
        assert!(v[0].contains("content that n1 wrote there"), "{v:?}");
        assert!(v.iter().any(|v| v.contains("DELETE CAME BACK") && v.contains("op #4")), "{v:?}");
    }

    #[test]
    fn a_divergent_log_is_caught() {
        let (history, log) = good_run();
        let mut other = log.clone();
        other[2].term = 2; // entry 3 committed in another term on n2
        let files = [("a.txt", "ha2")];
        let data = run(history, vec![view("n1", N1, &log, &files), view("n2", N2, &other, &files)]);
        let failed = failures(&data);
        assert_eq!(failed.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![3], "{failed:?}");
        assert!(failed[0].1.iter().any(|v| v.contains("entry 3 differs")), "{failed:?}");
        // A node that lags is fine: only entries up to its own commit index are compared.
        let data = run(good_run().0, vec![view("n1", N1, &log, &files), view("n2", N2, &log[..2], &files)]);
        assert!(check_logs(&data.views).passed());
    }

    #[test]
    fn a_partial_file_is_caught() {
        let (mut history, log) = good_run();
        // A conflict copy seen before the history knew it: explained by the log.
        history.push(Record::Sample(Sample {
            t_ms: 55,
            node: "n2".into(),
            path: "a.txt".into(),
            size: 1,
            hash: "ha2".into(),
        }));
        let files = [("a.txt", "ha2")];
        let views = vec![view("n1", N1, &log, &files), view("n2", N2, &log, &files)];
        assert_eq!(failures(&run(history.clone(), views.clone())), vec![]);
        // Half of a.txt's second version, seen on n1 while it was being installed.
        history.push(Record::Sample(Sample {
            t_ms: 56,
            node: "n1".into(),
            path: "a.txt".into(),
            size: 1,
            hash: "half-of-ha2".into(),
        }));
        // A temp file that leaked out of .raftshare/.
        history.push(Record::Sample(Sample {
            t_ms: 57,
            node: "n1".into(),
            path: "ab12.part".into(),
            size: 1,
            hash: "ha2".into(),
        }));
        let failed = failures(&run(history, views));
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].0, 4);
        assert_eq!(failed[0].1.len(), 2, "{failed:?}");
    }

    #[test]
    fn folders_that_differ_from_ls_or_each_other_are_caught() {
        let (history, log) = good_run();
        let files = [("a.txt", "ha2")];
        let mut n2 = view("n2", N2, &log, &files);
        n2.tree.insert("stray.tmp".into(), "x".into());
        let data = run(history.clone(), vec![view("n1", N1, &log, &files), n2]);
        let failed = failures(&data);
        assert_eq!(failed.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1]);
        assert!(failed[0].1[0].contains("stray.tmp"), "{failed:?}");
        let mut data = run(history, vec![view("n1", N1, &log, &files), view("n2", N2, &log, &files)]);
        data.settle.converged = false;
        data.settle.reason = "n2 has 3 pending downloads".into();
        assert!(failures(&data)[0].1[0].contains("pending downloads"));
    }

    #[test]
    fn panics_and_unexpected_exits_are_caught() {
        let (mut history, log) = good_run();
        history.push(Record::Exit { t_ms: 5, node: "n2".into(), status: "signal: 6 (SIGABRT)".into() });
        history.push(Record::Stopped { t_ms: 9, node: "n1".into(), clean: false, status: "exit status: 1".into() });
        let files = [("a.txt", "ha2")];
        let mut data = run(history, vec![view("n1", N1, &log, &files), view("n2", N2, &log, &files)]);
        data.node_logs[1].1 += "thread 'tokio-runtime-worker' panicked at src/applier.rs:10:5:\n";
        let failed = failures(&data);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 5);
        assert_eq!(failed[0].1.len(), 3, "{failed:?}");
    }
}
