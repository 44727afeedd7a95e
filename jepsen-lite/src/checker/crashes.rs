//! Check 5: no crash or panic — no node exited unless stopped, every SIGTERM stop was
//! clean, and no node log says "panicked".

use super::{secs, CheckResult};
use crate::history::Record;

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
    use crate::checker::test_runs::{failures, good_run, run, view, N1, N2};
    use crate::history::Record;

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
