//! Check 2: every acknowledged write is kept — present, superseded by a later committed
//! change, or kept as a conflict copy — and no acknowledged delete came back. Which
//! committed changes count as real is `phantoms`' part of the check.

use std::collections::HashSet;

use super::phantoms::attribute;
use super::{secs, short, CheckResult, NodeView, Reference};
use crate::history::{Ack, Change, Op};
use crate::model::{self, Effect};

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

#[cfg(test)]
mod tests {
    use crate::checker::check_all;
    use crate::checker::test_runs::{ack, failures, good_run, op, run, view, N1, N2};
    use crate::history::Change;
    use crate::model::tests::{change, put};

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
}
