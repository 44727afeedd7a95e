//! What the machine is and what the nodes use of it, read from /proc: the facts on the
//! first line of `bench.jsonl`, each node's CPU time and its memory.

use std::collections::BTreeMap;
use std::fs;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::clock::{unix_ms, utc_rfc3339};
use super::{round1, round3, BenchOptions};
use crate::cluster::Node;

/// CPU seconds each node used so far (user + system).
pub(super) fn cpu_seconds(nodes: &[Arc<Node>]) -> BTreeMap<String, f64> {
    nodes
        .iter()
        .filter_map(|n| {
            let stat = fs::read_to_string(format!("/proc/{}/stat", n.pid()?)).ok()?;
            Some((n.name.clone(), cpu_ticks(&stat)? as f64 / clock_ticks()))
        })
        .collect()
}

pub(super) fn cpu_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Value {
    Value::Object(
        after.iter().map(|(n, t)| (n.clone(), json!(round3(t - before.get(n).copied().unwrap_or(0.0))))).collect(),
    )
}

/// Each node's CPU use (percent of one core) over a few seconds with nothing to do: a
/// healthy idle node uses next to none.
pub(super) fn idle_cpu(nodes: &[Arc<Node>]) -> (Value, f64) {
    const FOR: Duration = Duration::from_secs(3);
    thread::sleep(Duration::from_secs(1));
    let before = cpu_seconds(nodes);
    thread::sleep(FOR);
    let after = cpu_seconds(nodes);
    let pct: BTreeMap<String, f64> = after
        .iter()
        .map(|(n, t)| (n.clone(), round1(100.0 * (t - before.get(n).copied().unwrap_or(0.0)) / FOR.as_secs_f64())))
        .collect();
    let max = pct.values().copied().fold(0.0, f64::max);
    (json!(pct), max)
}

/// (VmRSS, VmHWM) in KiB of each running node.
pub(super) fn rss(nodes: &[Arc<Node>]) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    for node in nodes {
        let pid = node.pid().ok_or_else(|| anyhow!("{} is not running", node.name))?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status of {}", node.name))?;
        let (Some(rss), Some(hwm)) = (kib_field(&status, "VmRSS"), kib_field(&status, "VmHWM")) else {
            bail!("no VmRSS/VmHWM in /proc/{pid}/status of {}", node.name);
        };
        out.insert(node.name.clone(), (rss, hwm));
    }
    Ok(out)
}

pub(super) fn machine_info(opts: &BenchOptions) -> Value {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    let loadavg = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loadavg = loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    json!({
        "workload": "machine",
        "date": utc_rfc3339(unix_ms() / 1000),
        "nproc": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_total_kib": kib_field(&meminfo, "MemTotal"),
        "cpu": cpu,
        "loadavg": loadavg,
        "raftshare": opts.bin.display().to_string(),
        "workloads": opts.benchmarks.iter().map(|b| b.name()).collect::<Vec<_>>(),
    })
}

/// A `Name:   1234 kB` field of /proc/meminfo or /proc/<pid>/status, in KiB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// utime + stime (clock ticks) from a /proc/<pid>/stat line; the command name may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on every usual Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_parse() {
        let status = "Name:\traftshare\nVmHWM:\t   51234 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(kib_field(status, "VmHWM"), Some(51234));
        assert_eq!(kib_field(status, "VmRSS"), Some(40960));
        assert_eq!(kib_field(status, "VmSwap"), None);
        assert_eq!(kib_field("MemTotal:       24683656 kB\nMemFree: 1 kB\n", "MemTotal"), Some(24683656));
        let stat = "1234 (rafts (hare) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 42";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
    }
}
