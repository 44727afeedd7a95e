//! Check 3: the logs agree — each node's entries up to its commit index are the same as
//! the reference log's.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{CheckResult, NodeView, SHOW};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_runs::{failures, good_run, run, view, N1, N2};

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
}
