//! The half of check 2 that looks at the committed log from the other side: every change
//! that took effect was made by the workload of the node that proposed it. A change
//! nobody made is a phantom, and a phantom cannot supersede an acknowledged write.

use std::collections::{HashMap, HashSet};

use super::{secs, short, CheckResult, Reference};
use crate::history::{Ack, Change, Op};
use crate::model::{self, Effect};

/// Every committed change must come from the workload of its origin: a put of content
/// that node wrote to that path (or a half-written state of an in-place write it made
/// there), a delete that node made. A change without such a maker that took effect is a
/// violation (e.g. a node that re-proposes content it received brings back a deleted
/// file); one the rules dropped or that changed nothing is a note. Returns the phantoms
/// that took effect, as (index, op number).
pub(super) fn attribute(
    ops: &[&Op],
    acks: &[&Ack],
    reference: &Reference,
    r: &mut CheckResult,
) -> HashSet<(u64, usize)> {
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

#[cfg(test)]
mod tests {
    use crate::checker::test_runs::{ack, failures, good_run, op, run, view, N1, N2};
    use crate::history::Change;
    use crate::model::tests::{change, delete, put};

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
}
