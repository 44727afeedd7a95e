//! The file-table rules, as the README states them, replayed over a committed log: what
//! each committed op did (written, kept as a conflict copy, dropped, ...) and the table
//! that results. Pure, and independent of raftshare's code: the checker compares this
//! model with what the nodes report and hold.
//!
//! The rules: a put on an absent or deleted path, or whose `base` is the current version,
//! is written; a put with another base is `unchanged` if the content is the same, else it
//! is kept as `<stem>.conflict-<node>-<index>[-n].<ext>` (the first such name no live file
//! holds); a delete whose base is the current version deletes; with another base it is
//! dropped (an edit beats a delete); a delete of an absent or deleted path changes nothing.
//! Ops this model does not know (e.g. forgetting old tombstones) change no live file.
//!
//! A proposal sent again (its answer was lost, or the node restarted before it noted the
//! answer) carries the same outbox seq, and the node skips such a duplicate. `log --json`
//! does not show the seqs, so for a put that repeats content its origin already put at
//! that path (which jepsen-lite's workload never does by itself, the empty file aside)
//! the model asks the node's own data: the put took effect only if some record was ever
//! at the version it would have made — a later op names it as its `base`, or the final
//! table holds it. A skipped duplicate never leaves such a trace; a repeat that did take
//! effect (a scanner that queued the same content twice) always does.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

/// One leaf op of a committed change, as `log --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOp {
    /// `put`, `delete`, or another kind the model ignores.
    pub op: String,
    pub path: String,
    pub hash: Option<String>,
    pub size: Option<u64>,
    pub base: Option<u64>,
}

/// One entry of `log --json`, the fields the model and the checker use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    /// `blank`, `membership` or `change`.
    pub kind: String,
    pub origin: Option<u64>,
    pub origin_name: Option<String>,
    pub ops: Vec<LogOp>,
}

impl LogEntry {
    /// Parse one entry of `log --json`; None if it lacks an index or a term.
    pub fn from_json(v: &Value) -> Option<LogEntry> {
        let ops = v["ops"]
            .as_array()
            .map(|ops| {
                ops.iter()
                    .map(|op| LogOp {
                        op: op["op"].as_str().unwrap_or_default().to_string(),
                        path: op["path"].as_str().unwrap_or_default().to_string(),
                        hash: op["hash"].as_str().map(str::to_string),
                        size: op["size"].as_u64(),
                        base: op["base"].as_u64(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(LogEntry {
            index: v["index"].as_u64()?,
            term: v["term"].as_u64()?,
            kind: v["kind"].as_str().unwrap_or_default().to_string(),
            origin: v["origin"].as_u64(),
            origin_name: v["origin_name"].as_str().map(str::to_string),
            ops,
        })
    }
}

/// BLAKE3 of no bytes.
pub const EMPTY_HASH: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

/// A record of the modelled table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRecord {
    pub hash: String,
    pub version: u64,
    pub deleted: bool,
}

/// What a committed op did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The path now holds the op's content.
    Written,
    /// The content was kept under another name; the path kept its content.
    Conflict { kept_as: String },
    /// Nothing changed (same content already there; delete of a deleted file).
    Unchanged,
    /// The path is now deleted.
    Deleted,
    /// A delete with a stale base: the file stays.
    DeleteDropped,
    /// A retry of the origin's earlier op at (index, op_no): skipped.
    Duplicate { of: (u64, usize) },
    /// An op the model does not know, or an invalid path.
    Ignored,
}

/// One committed leaf op and its effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub index: u64,
    /// Position among the entry's leaf ops.
    pub op_no: usize,
    pub origin: Option<u64>,
    pub op: LogOp,
    pub effect: Effect,
}

impl Applied {
    /// The path whose content this op changed, if it changed one.
    pub fn changed_path(&self) -> Option<&str> {
        match &self.effect {
            Effect::Written | Effect::Deleted => Some(&self.op.path),
            Effect::Conflict { kept_as } => Some(kept_as),
            _ => None,
        }
    }
}

/// The result of replaying a log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replay {
    pub table: BTreeMap<String, TableRecord>,
    /// Every leaf op of every change entry, in log order.
    pub applied: Vec<Applied>,
}

impl Replay {
    /// The live files: path → hash.
    pub fn live(&self) -> BTreeMap<String, String> {
        self.table.iter().filter(|(_, r)| !r.deleted).map(|(p, r)| (p.clone(), r.hash.clone())).collect()
    }

    /// The ops of entry `index` on `path`.
    pub fn at<'a>(&'a self, index: u64, path: &'a str) -> impl Iterator<Item = &'a Applied> + 'a {
        self.applied.iter().filter(move |a| a.index == index && a.op.path == path)
    }

    /// The first op after `index` that changed `path` (wrote it, deleted it, or put a
    /// conflict copy there).
    pub fn changed_after(&self, path: &str, index: u64) -> Option<&Applied> {
        self.changed_after_by(path, index, |_| true)
    }

    /// `changed_after`, among the ops `keep` accepts.
    pub fn changed_after_by(&self, path: &str, index: u64, keep: impl Fn(&Applied) -> bool) -> Option<&Applied> {
        self.applied.iter().find(|a| a.index > index && a.changed_path() == Some(path) && keep(a))
    }
}

/// Replay `entries` (in index order, from an empty table) under the rules above.
/// `evidence` holds (path, version) pairs known to have existed in the node's table (see
/// `evidence`), to tell skipped duplicates from repeats that took effect.
pub fn replay(entries: &[LogEntry], evidence: &HashSet<(String, u64)>) -> Replay {
    let mut out = Replay::default();
    // Where each origin first put each content at each path.
    let mut first_put: HashMap<(Option<u64>, String, String), (u64, usize)> = HashMap::new();
    for entry in entries.iter().filter(|e| e.kind == "change") {
        let node = entry.origin_name.clone().unwrap_or_default();
        for (op_no, op) in entry.ops.iter().enumerate() {
            let repeat_of = match (op.op.as_str(), &op.hash) {
                ("put", Some(hash)) if hash != EMPTY_HASH => {
                    let key = (entry.origin, op.path.clone(), hash.clone());
                    let first = *first_put.entry(key).or_insert((entry.index, op_no));
                    (first != (entry.index, op_no)).then_some(first)
                }
                _ => None,
            };
            let effect = match repeat_of {
                None => apply(&mut out.table, &node, op, entry.index),
                Some(of) => {
                    let mut table = out.table.clone();
                    let effect = apply(&mut table, &node, op, entry.index);
                    let traced = match &effect {
                        Effect::Written => evidence.contains(&(op.path.clone(), entry.index)),
                        Effect::Conflict { kept_as } => evidence.contains(&(kept_as.clone(), entry.index)),
                        _ => true,
                    };
                    if traced {
                        out.table = table;
                        effect
                    } else {
                        Effect::Duplicate { of }
                    }
                }
            };
            out.applied.push(Applied { index: entry.index, op_no, origin: entry.origin, op: op.clone(), effect });
        }
    }
    out
}

/// The (path, version) pairs that a log and a final table show existed: every op's
/// `base`, and every final record.
pub fn evidence<'a>(
    entries: &[LogEntry],
    final_table: impl IntoIterator<Item = (&'a str, u64)>,
) -> HashSet<(String, u64)> {
    let mut out: HashSet<(String, u64)> =
        entries.iter().flat_map(|e| e.ops.iter().filter_map(|op| Some((op.path.clone(), op.base?)))).collect();
    out.extend(final_table.into_iter().map(|(p, v)| (p.to_string(), v)));
    out
}

impl Replay {
    /// The op itself, or for a duplicate, the op it repeats.
    pub fn original<'a>(&'a self, applied: &'a Applied) -> &'a Applied {
        match applied.effect {
            Effect::Duplicate { of } => self.applied.iter().find(|a| (a.index, a.op_no) == of).unwrap_or(applied),
            _ => applied,
        }
    }
}

fn apply(table: &mut BTreeMap<String, TableRecord>, node: &str, op: &LogOp, index: u64) -> Effect {
    if !valid_path(&op.path) {
        return Effect::Ignored;
    }
    let current = table.get(&op.path).filter(|r| !r.deleted).cloned();
    match (op.op.as_str(), current) {
        ("put", current) => {
            let hash = op.hash.clone().unwrap_or_default();
            match current {
                Some(cur) if op.base != Some(cur.version) => {
                    if cur.hash == hash {
                        return Effect::Unchanged;
                    }
                    let mut n = 1;
                    let kept_as = loop {
                        let name = conflict_name(&op.path, node, index, n);
                        if table.get(&name).is_none_or(|r| r.deleted) {
                            break name;
                        }
                        n += 1;
                    };
                    table.insert(kept_as.clone(), TableRecord { hash, version: index, deleted: false });
                    Effect::Conflict { kept_as }
                }
                _ => {
                    table.insert(op.path.clone(), TableRecord { hash, version: index, deleted: false });
                    Effect::Written
                }
            }
        }
        ("delete", None) => Effect::Unchanged,
        ("delete", Some(cur)) if op.base == Some(cur.version) => {
            table.insert(op.path.clone(), TableRecord { version: index, deleted: true, ..cur });
            Effect::Deleted
        }
        ("delete", Some(_)) => Effect::DeleteDropped,
        _ => Effect::Ignored,
    }
}

/// The paths the rules accept (the short, ordinary paths of this workload always pass).
fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && !path.contains('\\')
        && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && path.split('/').next() != Some(".raftshare")
}

/// `<stem>.conflict-<node>-<index>[-n]<.ext>`, in the folder of `path`. (The node name is
/// reduced to ASCII letters, digits, `-`, `_`, `.`; the length limits of very long paths
/// are not modelled.)
pub fn conflict_name(path: &str, node: &str, index: u64, n: u64) -> String {
    let node: String = node
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    let node = if node.is_empty() { "node".to_string() } else { node };
    let tag = if n <= 1 { format!(".conflict-{node}-{index}") } else { format!(".conflict-{node}-{index}-{n}") };
    let (dir, file) = match path.rfind('/') {
        Some(i) => path.split_at(i + 1),
        None => ("", path),
    };
    let (stem, ext) = match file.rfind('.') {
        Some(i) if i > 0 && i + 1 < file.len() => file.split_at(i),
        _ => (file, ""),
    };
    format!("{dir}{stem}{tag}{ext}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn put(path: &str, hash: &str, base: Option<u64>) -> LogOp {
        LogOp { op: "put".into(), path: path.into(), hash: Some(hash.into()), size: Some(1), base }
    }

    pub fn delete(path: &str, base: Option<u64>) -> LogOp {
        LogOp { op: "delete".into(), path: path.into(), hash: None, size: None, base }
    }

    pub fn change(index: u64, origin: u64, name: &str, ops: Vec<LogOp>) -> LogEntry {
        LogEntry { index, term: 1, kind: "change".into(), origin: Some(origin), origin_name: Some(name.into()), ops }
    }

    #[test]
    fn conflict_names_follow_the_readme() {
        assert_eq!(conflict_name("report.txt", "laptop", 42, 1), "report.conflict-laptop-42.txt");
        assert_eq!(conflict_name("a/b/f.tar.gz", "n2", 7, 2), "a/b/f.tar.conflict-n2-7-2.gz");
        assert_eq!(conflict_name("docs/.bashrc", "my box", 3, 1), "docs/.bashrc.conflict-my_box-3");
        assert_eq!(conflict_name("notes.", "n1", 3, 1), "notes..conflict-n1-3");
    }

    #[test]
    fn replay_applies_the_conflict_rule() {
        let log = vec![
            change(2, 1, "n1", vec![put("a.txt", "h1", None)]),
            change(3, 2, "n2", vec![put("a.txt", "h2", Some(2))]),
            // Stale base: kept as a copy, the path keeps h2.
            change(4, 3, "n3", vec![put("a.txt", "h3", Some(2))]),
            // Stale base, same content: unchanged.
            change(5, 1, "n1", vec![put("a.txt", "h2", None)]),
            // Stale delete: dropped; then a delete of the current version.
            change(6, 1, "n1", vec![delete("a.txt", Some(2))]),
            change(7, 2, "n2", vec![delete("a.txt", Some(3)), delete("gone.txt", None)]),
            // An edit beats a delete: a put on a tombstone is written, whatever its base.
            change(8, 3, "n3", vec![put("a.txt", "h4", Some(3))]),
        ];
        let r = replay(&log, &evidence(&log, []));
        let effects: Vec<Effect> = r.applied.iter().map(|a| a.effect.clone()).collect();
        assert_eq!(
            effects,
            vec![
                Effect::Written,
                Effect::Written,
                Effect::Conflict { kept_as: "a.conflict-n3-4.txt".into() },
                Effect::Unchanged,
                Effect::DeleteDropped,
                Effect::Deleted,
                Effect::Unchanged,
                Effect::Written,
            ]
        );
        let live = r.live();
        assert_eq!(live["a.txt"], "h4");
        assert_eq!(live["a.conflict-n3-4.txt"], "h3");
        assert_eq!(r.changed_after("a.txt", 3).map(|a| a.index), Some(7));
        assert_eq!(r.changed_after("a.txt", 8), None);
    }

    #[test]
    fn a_repeated_put_takes_effect_only_if_the_node_shows_it_did() {
        let log = vec![
            change(1, 1, "n1", vec![put("a.txt", "h1", None)]),
            // n1's put sent again: nothing names version 2 of a.txt, so it was skipped ...
            change(2, 1, "n1", vec![put("a.txt", "h1", Some(1))]),
            // ... and this delete is of the current version.
            change(3, 2, "n2", vec![delete("a.txt", Some(1))]),
            // n2 makes the path again; n1's old put arriving once more is still a repeat
            // (not a stale edit to keep as a conflict copy).
            change(5, 2, "n2", vec![put("a.txt", "h2", None)]),
            change(6, 1, "n1", vec![put("a.txt", "h1", Some(1))]),
            // b.txt: the repeat took effect (the scanner queued it twice): a later delete
            // names version 8 as its base.
            change(7, 1, "n1", vec![put("b.txt", "hb", None)]),
            change(8, 1, "n1", vec![put("b.txt", "hb", Some(7))]),
            change(9, 2, "n2", vec![delete("b.txt", Some(8))]),
            // Empty contents can really be put twice (truncated in-place writes).
            change(10, 1, "n1", vec![put("e.txt", EMPTY_HASH, None)]),
            change(11, 1, "n1", vec![put("e.txt", EMPTY_HASH, Some(10))]),
        ];
        let r = replay(&log, &evidence(&log, []));
        let effects: Vec<Effect> = r.applied.iter().map(|a| a.effect.clone()).collect();
        assert_eq!(
            effects,
            vec![
                Effect::Written,
                Effect::Duplicate { of: (1, 0) },
                Effect::Deleted,
                Effect::Written,
                Effect::Duplicate { of: (1, 0) },
                Effect::Written,
                Effect::Written,
                Effect::Deleted,
                Effect::Written,
                Effect::Written,
            ]
        );
        assert_eq!(r.live().keys().collect::<Vec<_>>(), ["a.txt", "e.txt"]);
        assert_eq!(r.table["e.txt"].version, 11);
        assert_eq!(r.original(&r.applied[1]).index, 1);
        // The final table can be the evidence too.
        let short = &log[..2];
        assert_eq!(replay(short, &evidence(short, [("a.txt", 2)])).applied[1].effect, Effect::Written);
    }

    #[test]
    fn two_stale_puts_in_one_entry_get_numbered_copies() {
        let log = vec![
            change(1, 1, "n1", vec![put("x/a.txt", "h1", None)]),
            change(2, 2, "n2", vec![put("x/a.txt", "h2", None), put("x/a.txt", "h3", None)]),
        ];
        let live = replay(&log, &evidence(&log, [])).live();
        assert_eq!(live["x/a.conflict-n2-2.txt"], "h2");
        assert_eq!(live["x/a.conflict-n2-2-2.txt"], "h3");
    }

    #[test]
    fn log_json_entries_parse() {
        let v: Value = serde_json::json!({"index": 4, "term": 2, "leader_id": 9, "kind": "change", "origin": 7,
            "origin_name": "n1", "at": "t", "ops": [{"op": "put", "path": "a", "size": 3, "hash": "h", "blocks": 1,
            "base": null}, {"op": "delete", "path": "b", "base": 3}, {"op": "forget_deleted", "upto": 2}],
            "voters": null, "learners": null});
        let e = LogEntry::from_json(&v).unwrap();
        assert_eq!(e.index, 4);
        assert_eq!(e.ops[0], put("a", "h", None).clone_with_size(3));
        assert_eq!(e.ops[1], delete("b", Some(3)));
        assert_eq!(e.ops[2].op, "forget_deleted");
        let r = replay(&[e], &HashSet::new());
        assert_eq!(r.applied[2].effect, Effect::Ignored);
    }

    impl LogOp {
        fn clone_with_size(&self, size: u64) -> LogOp {
            LogOp { size: Some(size), ..self.clone() }
        }
    }
}
