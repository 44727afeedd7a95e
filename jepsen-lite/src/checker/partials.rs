//! Check 4: no temp or partial file was ever seen in a shared folder, judged from the
//! samples the sampler took during the run.

use std::collections::{BTreeSet, HashSet};

use super::{secs, short, CheckResult, Reference};
use crate::history::{Change, Op, Record, Sample};
use crate::model::Effect;

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

#[cfg(test)]
mod tests {
    use crate::checker::test_runs::{failures, good_run, run, view, N1, N2};
    use crate::history::{Record, Sample};

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
}
