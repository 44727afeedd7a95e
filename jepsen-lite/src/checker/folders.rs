//! Check 1: the folders converge — every node's folder equals its committed file table,
//! the tables agree, and they equal a replay of the committed log.

use super::{diff, push_limited, CheckResult, NodeView, Reference, Settle};

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

#[cfg(test)]
mod tests {
    use crate::checker::test_runs::{failures, good_run, run, view, N1, N2};

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
}
