//! Made-up runs for the checks' tests: a run of two nodes where everything went right,
//! and the pieces to build the runs that each check must catch.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{check_all, NodeView, RunData, Settle};
use crate::history::{Ack, Change, Op, Record};
use crate::model::tests::{change, delete, put};
use crate::model::{LogEntry, LogOp};

pub(super) const N1: u64 = 101;
pub(super) const N2: u64 = 102;

pub(super) fn op(
    id: u64,
    node: &str,
    node_id: u64,
    change: Change,
    path: &str,
    hash: Option<&str>,
    t_ms: u64,
) -> Record {
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

pub(super) fn ack(node: &str, node_id: u64, index: u64, paths: &[&str], t_ms: u64) -> Record {
    Record::Ack(Ack {
        t_ms,
        node: node.into(),
        node_id,
        index,
        paths: paths.iter().map(|p| p.to_string()).collect(),
        at: String::new(),
    })
}

pub(super) fn entry_json(e: &LogEntry) -> Value {
    let ops: Vec<Value> = e
        .ops
        .iter()
        .map(|o: &LogOp| json!({"op": o.op, "path": o.path, "hash": o.hash, "size": o.size, "base": o.base}))
        .collect();
    json!({"index": e.index, "term": e.term, "leader_id": 1, "kind": e.kind, "origin": e.origin,
           "origin_name": e.origin_name, "ops": ops})
}

pub(super) fn view(name: &str, id: u64, log: &[LogEntry], files: &[(&str, &str)]) -> NodeView {
    let committed = log.last().map(|e| e.index);
    let map: BTreeMap<String, String> = files.iter().map(|(p, h)| (p.to_string(), h.to_string())).collect();
    NodeView {
        name: name.into(),
        id,
        status: Some(json!({"committed_index": committed, "applied_index": committed})),
        ls: Some(files.iter().map(|(p, h)| json!({"path": p, "hash": h, "deleted": false, "version": 0})).collect()),
        log: Some(log.iter().map(entry_json).collect()),
        tree: map,
        errors: vec![],
    }
}

/// n1 adds a.txt (index 1) and b.txt (2), n2 changes a.txt (3) and deletes b.txt (4):
/// a run where everything went right.
pub(super) fn good_run() -> (Vec<Record>, Vec<LogEntry>) {
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

pub(super) fn run(history: Vec<Record>, views: Vec<NodeView>) -> RunData {
    let active = views.iter().map(|v| v.name.clone()).collect();
    RunData {
        history,
        views,
        settle: Settle { converged: true, waited_ms: 1000, reason: String::new(), active },
        node_logs: vec![("n1".into(), "INFO started\n".into()), ("n2".into(), "INFO started\n".into())],
    }
}

pub(super) fn failures(data: &RunData) -> Vec<(u8, Vec<String>)> {
    check_all(data).into_iter().filter(|c| !c.passed()).map(|c| (c.number, c.violations)).collect()
}
