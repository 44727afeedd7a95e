//! Everyday UX: shell completions, `config` (the Config view's requests from the CLI,
//! with `--json`), and errors that say what to do.

mod common;

use common::{TestNode, BIN};
use serde_json::Value;

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(BIN).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains("raftshare") && script.contains("demo") && script.contains("tui"), "{shell}");
    }
    let out = std::process::Command::new(BIN).args(["completions", "tcsh"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"), "clap lists the shells");
}

#[test]
fn config_shows_checks_saves_and_says_what_needs_a_restart() {
    let mut node = TestNode::init("cfg", &[]);
    node.start_ready();
    node.cli_ok(&["bootstrap"]);
    let show: Value = serde_json::from_str(&node.cli_ok(&["config", "--json"])).unwrap();
    assert_eq!(show["name"], "cfg");
    assert_eq!(show["restart_needed"], serde_json::json!([]));
    assert!(show["config_path"].as_str().unwrap().ends_with("config.toml"));

    // A rename is live: the membership (status) shows it at once, and it is saved.
    let out: Value = serde_json::from_str(&node.cli_ok(&["config", "--name", "renamed", "--json"])).unwrap();
    assert!(out["message"].as_str().unwrap().contains("on every node"), "{out}");
    let status = node.status().unwrap();
    assert_eq!(status["members"][0]["name"], "renamed");
    let toml = std::fs::read_to_string(node.data_dir.join("config.toml")).unwrap();
    assert!(toml.contains("name = \"renamed\""), "{toml}");

    // Ignore patterns are written to the shared folder's .raftshareignore, and apply at once.
    let out = node.cli_ok(&["config", "--ignore", "*.tmp", "--ignore", "build/"]);
    assert!(out.contains("ignore patterns applied"), "{out}");
    let ignore = std::fs::read_to_string(node.shared_dir.join(".raftshareignore")).unwrap();
    assert_eq!(ignore, "*.tmp\nbuild/\n");
    node.write("scratch.tmp", b"not synced");
    node.write("kept.txt", b"synced");
    common::wait_until(std::time::Duration::from_secs(20), "kept.txt committed", || {
        let ls: Value = serde_json::from_str(&node.cli_ok(&["ls", "--json"])).unwrap();
        let paths: Vec<String> = ls.as_array()?.iter().map(|f| f["path"].as_str().unwrap().to_string()).collect();
        assert!(!paths.contains(&"scratch.tmp".to_string()), "{paths:?}");
        paths.contains(&"kept.txt".to_string()).then_some(())
    });

    // Allowed subnets: saved, and a restart is needed.
    let out: Value =
        serde_json::from_str(&node.cli_ok(&["config", "--allow", "127.0.0.0/8", "--allow", "10.9.0.0/16", "--json"]))
            .unwrap();
    assert_eq!(out["restart_needed"], serde_json::json!(["allow"]), "{out}");
    assert!(out["message"].as_str().unwrap().contains("restart the node"), "{out}");
    assert!(node.cli_ok(&["config"]).contains("restart needed   for allow"));

    // Refused values say why and what to give; nothing is saved.
    let before = std::fs::read_to_string(node.data_dir.join("config.toml")).unwrap();
    for (args, says) in [
        (vec!["config", "--name", ""], "give 1 to 64 printable characters"),
        (vec!["config", "--listen", "nowhere"], "give ip:port"),
        (vec!["config", "--listen", "127.0.0.1:0"], "fixed port"),
        (vec!["config", "--listen", "127.0.0.2:7070"], "`raftshare leave`"),
        (vec!["config", "--allow", "10.0.0.0/8"], "must contain 127.0.0.1"),
        (vec!["config", "--allow", "ten"], "write it as CIDR"),
        (vec!["config", "--shared-dir", "relative/dir"], "not an absolute path"),
        (vec!["config", "--ignore", "a/**b\\"], "not valid"),
    ] {
        let err = node.cli_err(&args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(before, std::fs::read_to_string(node.data_dir.join("config.toml")).unwrap());
}

#[test]
fn errors_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .env("RAFTSHARE_DATA_DIR", tmp.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["tui"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a terminal") && err.contains("status --json"), "{err}");
    let out = run(&["join"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("raftshare init"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("Os {"), "{err}");
    let out = run(&["demo", "--nodes", "0", "--headless"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("a demo has 1 to 7 nodes"));
}

/// A node's log written to a file (or a pipe) is plain text: colour codes are for a
/// person at a terminal, and make a log file hard to read and to search.
#[test]
fn a_log_written_to_a_file_has_no_colour_codes() {
    let mut node = TestNode::init("plain", &[]);
    node.start_ready();
    node.cli_ok(&["bootstrap"]);
    node.stop();
    let log = node.log_text();
    assert!(log.contains("raftshare node started"), "the node logged its start:\n{log}");
    assert!(!log.contains('\u{1b}'), "the log file holds terminal escape codes:\n{log}");
}

/// A setting `config.toml` does not know (a typo) and a timing of zero are refused, with
/// the key named, before anything runs.
#[test]
fn an_unknown_key_or_a_zero_timing_in_config_toml_is_refused_by_name() {
    let node = TestNode::init("cfgcheck", &[]);
    let path = node.data_dir.join("config.toml");
    let good = std::fs::read_to_string(&path).unwrap();

    std::fs::write(&path, format!("{good}colour = \"blue\"\n")).unwrap();
    let err = node.cli_err(&["config"]);
    assert!(err.contains("colour"), "the unknown key is named: {err}");

    std::fs::write(&path, &good).unwrap();
    node.set_config("heartbeat_ms", "0");
    let err = node.cli_err(&["config"]);
    assert!(err.contains("heartbeat_ms = 0") && err.contains("default"), "{err}");
    let err = node.cli_err(&["run", "--headless"]);
    assert!(err.contains("heartbeat_ms"), "run refuses it too: {err}");
}
