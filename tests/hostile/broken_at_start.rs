//! A missing or damaged config or database at start, and a shared folder that is a file
//! or unreadable.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{big_content, hash_hex, wait_until, TestNode, Unreadable, BIN};
use crate::{assert_no_panic, copy_dir, ls_all, tail, SETTLE};

/// How long a node with a broken data dir may take to give up.
const GIVE_UP: Duration = Duration::from_secs(15);

/// A child process, killed (and reaped) when dropped, even by a panic.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `raftshare ARGS` with `RAFTSHARE_DATA_DIR=data_dir`, bounded by `GIVE_UP`: whether it
/// exited in time and succeeded, what it wrote to stderr, and how long it took. A process
/// still running at `GIVE_UP` (or that says it started a node) is killed.
fn run_bounded(data_dir: &Path, args: &[&str]) -> (Option<bool>, String, Duration) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let mut child = Reaped(
        Command::new(BIN)
            .args(args)
            .env("RAFTSHARE_DATA_DIR", data_dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out.reopen().unwrap())
            .spawn()
            .expect("spawn raftshare"),
    );
    let mut exit = None;
    let mut serving = false;
    while started.elapsed() < GIVE_UP {
        exit = child.0.try_wait().expect("wait");
        // A node that says it started is not refusing: no need to wait any longer.
        serving = fs::read_to_string(out.path()).unwrap_or_default().contains("raftshare node started");
        if exit.is_some() || serving {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let mut said = String::new();
    if exit.is_none() && serving {
        // What state it started from, for the report.
        let ask = |args: &[&str]| {
            let out = Command::new(BIN).args(args).env("RAFTSHARE_DATA_DIR", data_dir).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let status = wait_until(SETTLE, "the node to answer status", || {
            serde_json::from_str::<Value>(&ask(&["status", "--json"])).ok()
        });
        said = format!(
            "\nit started as {} with applied index {}; ls: {}",
            status["role"],
            status["applied_index"],
            ask(&["ls", "--json"]).replace('\n', "")
        );
    }
    let took = started.elapsed();
    drop(child);
    (exit.map(|e| e.success()), fs::read_to_string(out.path()).unwrap() + &said, took)
}

/// `run --headless` and `status` fail at once, saying every one of `words` (`run`'s
/// message) and of `status_words` (`status`'s), without a panic; else what went wrong.
fn refused(data_dir: &Path, case: &str, words: &[&str], status_words: &[&str]) -> Result<(), String> {
    for (args, words) in [(&["run", "--headless"][..], words), (&["status"][..], status_words)] {
        let (exit, stderr, took) = run_bounded(data_dir, args);
        let cmd = format!("{case}: `raftshare {}`", args.join(" "));
        let tail = tail(&stderr, 3);
        match exit {
            None => return Err(format!("{cmd} was still running after {took:?}:\n{}", tail.trim_start())),
            Some(true) => return Err(format!("{cmd} succeeded:\n{tail}")),
            Some(false) => {}
        }
        if stderr.contains("panicked") {
            return Err(format!("{cmd} panicked:\n{tail}"));
        }
        let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        if error.len() != 1 {
            return Err(format!("{cmd} must end with one `error:` line:\n{tail}"));
        }
        if let Some(word) = words.iter().find(|w| !error[0].contains(**w)) {
            return Err(format!("{cmd}: the error does not say {word:?}: {}", error[0]));
        }
    }
    Ok(())
}

fn assert_refused(data_dir: &Path, case: &str, words: &[&str], status_words: &[&str]) {
    if let Err(e) = refused(data_dir, case, words, status_words) {
        panic!("{e}");
    }
}

/// A node that ran, made a cluster and synced a file, stopped cleanly; a copy of its data
/// dir to restore between cases; and its `ls --all --json` before it stopped.
fn stopped_node() -> (TestNode, tempfile::TempDir, Vec<Value>) {
    let mut node = TestNode::init("a", &[]);
    node.start_ready();
    node.cli_ok(&["bootstrap"]);
    node.write("kept.txt", b"a file in the table");
    wait_until(SETTLE, "kept.txt in the table", || node.cli_ok(&["ls"]).contains("kept.txt").then_some(()));
    let ls = ls_all(&node);
    node.stop();
    let backup = tempfile::tempdir().unwrap();
    copy_dir(&node.data_dir, &backup.path().join("data"));
    (node, backup, ls)
}

fn restore(node: &TestNode, backup: &tempfile::TempDir) {
    let _ = fs::remove_dir_all(&node.data_dir);
    let _ = fs::remove_file(&node.data_dir);
    copy_dir(&backup.path().join("data"), &node.data_dir);
}

/// After the cases, the restored node starts and serves again (nothing was half-repaired).
fn assert_restored_node_runs(node: &mut TestNode, backup: &tempfile::TempDir) {
    restore(node, backup);
    node.start_ready();
    wait_until(SETTLE, "the restored node to lead and list kept.txt", || {
        (node.status()?["role"] == "leader" && node.cli_ok(&["ls"]).contains("kept.txt")).then_some(())
    });
    node.stop();
}

#[test]
fn a_missing_or_broken_config_stops_the_node_at_start_with_a_clear_message() {
    let (mut node, backup, _) = stopped_node();
    let config = node.data_dir.join("config.toml");
    let key = node.data_dir.join("cluster.key");
    let text = fs::read_to_string(&config).unwrap();
    let data = node.data_dir.display().to_string();
    let not_valid = ["config.toml is not a valid raftshare config"];
    let set = |line: &str, value: &str| {
        let prefix = format!("{line} = ");
        let lines: Vec<String> =
            text.lines().map(|l| if l.starts_with(&prefix) { format!("{prefix}{value}") } else { l.into() }).collect();
        lines.join("\n")
    };
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "config.toml deleted",
            Box::new(|| fs::remove_file(&config).unwrap()),
            vec!["no raftshare node is set up in", &data, "raftshare init"],
        ),
        ("config.toml empty", Box::new(|| fs::write(&config, "").unwrap()), not_valid.to_vec()),
        (
            "config.toml garbage text",
            Box::new(|| fs::write(&config, "}}} not toml {{{\n").unwrap()),
            not_valid.to_vec(),
        ),
        (
            "config.toml cut in half",
            Box::new(|| fs::write(&config, &text[..text.len() / 2]).unwrap()),
            not_valid.to_vec(),
        ),
        (
            "config.toml random bytes",
            Box::new(|| fs::write(&config, big_content(4096, 3)).unwrap()),
            vec!["config.toml"],
        ),
        (
            "config.toml wrong type",
            Box::new(|| fs::write(&config, set("node_id", "\"x\"")).unwrap()),
            not_valid.to_vec(),
        ),
        (
            "config.toml bad address",
            Box::new(|| fs::write(&config, set("listen", "\"nowhere\"")).unwrap()),
            not_valid.to_vec(),
        ),
        (
            "config.toml unusable raft timing",
            Box::new(|| fs::write(&config, set("election_min_ms", "5000")).unwrap()),
            vec!["[raft] settings in config.toml"],
        ),
        (
            "cluster.key deleted",
            Box::new(|| fs::remove_file(&key).unwrap()),
            vec!["cannot read the cluster key", "cluster.key"],
        ),
        (
            "cluster.key garbage",
            Box::new(|| fs::write(&key, "not a key at all").unwrap()),
            vec!["cluster.key does not hold a valid cluster key", "64 hex characters"],
        ),
    ];
    for (case, break_it, words) in cases {
        restore(&node, &backup);
        break_it();
        // `status` reads the same files first, and must say the same.
        assert_refused(&node.data_dir, case, &words, &words);
    }
    assert_restored_node_runs(&mut node, &backup);
}

#[test]
fn a_data_dir_that_is_missing_or_a_file_stops_the_node_at_start_with_a_clear_message() {
    let (mut node, backup, _) = stopped_node();
    let data = node.data_dir.display().to_string();

    fs::remove_dir_all(&node.data_dir).unwrap();
    assert_refused(
        &node.data_dir,
        "no data dir",
        &["no raftshare node is set up in", &data, "raftshare init"],
        &["no raftshare node is set up in"],
    );
    fs::write(&node.data_dir, b"a file where the data dir should be").unwrap();
    assert_refused(&node.data_dir, "data dir is a file", &[&data, "config.toml"], &[&data]);
    assert_restored_node_runs(&mut node, &backup);
}

/// Ways to damage the sled database of a stopped node: (what, how).
type Damage = (&'static str, Box<dyn Fn(&Path)>);

/// sled's main file in the database folder `db`.
fn sled_file(db: &Path) -> PathBuf {
    let main = db.join("db");
    assert!(main.is_file(), "sled's db file is {}", main.display());
    main
}

/// Write `n` bytes of garbage into `path` at `at`.
fn scribble(path: &Path, at: u64, n: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&big_content(n, at + 1)).unwrap();
}

/// Damage each way, run the node on it, and collect what did not fail cleanly.
fn refused_after_damage(node: &TestNode, backup: &tempfile::TempDir, cases: Vec<Damage>) -> Vec<String> {
    let db = node.data_dir.join("db");
    let path = db.display().to_string();
    let mut wrong = Vec::new();
    for (case, damage) in cases {
        restore(node, backup);
        damage(&db);
        if let Err(e) = refused(&node.data_dir, case, &["database", &path], &["cannot talk to"]) {
            wrong.push(e);
        }
    }
    wrong
}

#[test]
fn a_damaged_database_stops_the_node_at_start_with_a_clear_message() {
    let (mut node, backup, before) = stopped_node();
    let cases: Vec<Damage> = vec![
        ("conf file garbage", Box::new(|db| scribble(&db.join("conf"), 0, 64))),
        (
            "db folder is a file",
            Box::new(|db| {
                fs::remove_dir_all(db).unwrap();
                fs::write(db, b"not a database").unwrap();
            }),
        ),
        (
            "blobs folder is a file",
            Box::new(|db| {
                fs::remove_dir_all(db.join("blobs")).unwrap();
                fs::write(db.join("blobs"), b"not a folder").unwrap();
            }),
        ),
    ];
    let wrong = refused_after_damage(&node, &backup, cases);
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));

    // sled rebuilds a deleted conf file: the node starts with everything it had.
    restore(&node, &backup);
    fs::remove_file(node.data_dir.join("db/conf")).unwrap();
    node.start_ready();
    wait_until(SETTLE, "the node to lead again", || (node.status()?["role"] == "leader").then_some(()));
    assert_eq!(ls_all(&node), before, "the table after sled rebuilt its conf file");
    node.stop();
    assert_restored_node_runs(&mut node, &backup);
}

#[test]
fn a_database_damaged_in_its_log_is_refused_not_started_from_an_older_state() {
    let (mut node, backup, _) = stopped_node();
    let cases: Vec<Damage> = vec![
        ("db file emptied", Box::new(|db| fs::write(sled_file(db), b"").unwrap())),
        (
            "db file cut in half",
            Box::new(|db| {
                let main = sled_file(db);
                let len = fs::metadata(&main).unwrap().len();
                fs::OpenOptions::new().write(true).open(&main).unwrap().set_len(len / 2).unwrap();
            }),
        ),
        (
            "db file overwritten with garbage",
            Box::new(|db| {
                let main = sled_file(db);
                scribble(&main, 0, fs::metadata(&main).unwrap().len() as usize);
            }),
        ),
        (
            "db file garbage in the middle",
            Box::new(|db| {
                let main = sled_file(db);
                let len = fs::metadata(&main).unwrap().len();
                scribble(&main, len / 3, (len / 3) as usize);
            }),
        ),
    ];
    let wrong = refused_after_damage(&node, &backup, cases);
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    assert_restored_node_runs(&mut node, &backup);
}

#[test]
fn a_damaged_sled_conf_file_is_called_damaged_with_a_way_out() {
    let (node, backup, _) = stopped_node();
    restore(&node, &backup);
    scribble(&node.data_dir.join("db/conf"), 0, 64);
    assert_refused(&node.data_dir, "conf file garbage", &["corrupt", "move it away"], &["cannot talk to"]);
}

/// Run `node`, make it a cluster of one with kept.txt in its table, and stop it.
fn ran_with_a_file(node: &mut TestNode) {
    node.start_ready();
    node.cli_ok(&["bootstrap"]);
    node.write("kept.txt", b"kept");
    wait_until(SETTLE, "kept.txt in the table", || node.cli_ok(&["ls"]).contains("kept.txt").then_some(()));
    node.stop();
}

/// Once the folder is back, the node syncs it again, with what it held.
fn assert_synced_again(node: &mut TestNode) {
    node.start_ready();
    wait_until(SETTLE, "the folder to be synced again", || node.status()?["folder_problem"].is_null().then_some(()));
    assert_eq!(node.tree().get("kept.txt"), Some(&hash_hex(b"kept")));
    assert_no_panic(&[&*node]);
}

#[test]
fn a_shared_folder_that_is_a_file_is_reported_by_status() {
    let mut node = TestNode::init("a", &[]);
    ran_with_a_file(&mut node);

    // A file where the folder was (say, a drive that did not mount): the node runs, syncs
    // nothing there, and says why.
    let aside = node.shared_dir.with_extension("aside");
    fs::rename(&node.shared_dir, &aside).unwrap();
    fs::write(&node.shared_dir, b"not a folder").unwrap();
    node.start_ready();
    let problem = wait_until(SETTLE, "status to name the folder problem", || {
        node.status()?["folder_problem"].as_str().map(str::to_string)
    });
    assert!(problem.contains(&node.shared_dir.display().to_string()), "{problem}");
    assert_eq!(fs::read(&node.shared_dir).unwrap(), b"not a folder", "the file in the way is left alone");
    node.stop();
    fs::remove_file(&node.shared_dir).unwrap();
    fs::rename(&aside, &node.shared_dir).unwrap();
    assert_synced_again(&mut node);
}

/// Run as root (as CI does), the node runs as `nobody`: root reads a folder of mode 000
/// all the same (see `TestNode::obey_file_modes`).
#[test]
fn an_unreadable_shared_folder_is_reported_by_status() {
    let mut node = TestNode::init("a", &[]);
    node.obey_file_modes();
    ran_with_a_file(&mut node);

    let unreadable = Unreadable::make(&node.shared_dir);
    node.start();
    let problem = wait_until(SETTLE, "status to name the unreadable folder", || {
        node.status()?["folder_problem"].as_str().map(str::to_string)
    });
    drop(unreadable);
    assert!(problem.contains(&node.shared_dir.display().to_string()), "{problem}");
    node.stop();
    assert_synced_again(&mut node);
}
