//! The replicated folder: files dropped, changed and deleted on any node reach every
//! node through the log, with real processes on 127.0.0.1.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use common::{big_content, hash_hex, tree_of, wait_trees, wait_until, Cluster, TestNode};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(20);

fn nodes(cluster: &Cluster) -> Vec<&TestNode> {
    cluster.nodes.iter().collect()
}

fn ls(node: &TestNode) -> Vec<Value> {
    let out = node.cli_ok(&["ls", "--json"]);
    serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().clone()
}

#[test]
fn adds_modifies_deletes_and_nested_folders_reach_every_node() {
    let cluster = Cluster::start(3);
    let all = nodes(&cluster);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];

    a.write("hello.txt", b"hello from a");
    let mut want = BTreeMap::from([("hello.txt".to_string(), hash_hex(b"hello from a"))]);
    wait_trees(&all, Some(&want), SETTLE, "an add on a to reach b and c");

    c.write("hello.txt", b"changed on c");
    want.insert("hello.txt".into(), hash_hex(b"changed on c"));
    wait_trees(&all, Some(&want), SETTLE, "a modify on c to reach a and b");

    b.write("docs/2026/notes/plan.md", b"nested");
    want.insert("docs/2026/notes/plan.md".into(), hash_hex(b"nested"));
    wait_trees(&all, Some(&want), SETTLE, "a nested file to reach every node");

    fs::remove_file(a.shared_dir.join("hello.txt")).unwrap();
    want.remove("hello.txt");
    wait_trees(&all, Some(&want), SETTLE, "a delete on a to reach b and c");

    fs::remove_file(b.shared_dir.join("docs/2026/notes/plan.md")).unwrap();
    want.clear();
    wait_trees(&all, Some(&want), SETTLE, "a nested delete to reach every node");
    wait_until(SETTLE, "folders emptied by a remote delete to be removed", || {
        (!a.shared_dir.join("docs").exists() && !c.shared_dir.join("docs").exists()).then_some(())
    });
    // What a remote delete moved to the trash is gone once the node is idle (2 s after
    // its last pass).
    wait_until(Duration::from_secs(10), "the trash of the nodes that applied the deletes to be emptied", || {
        let empty = |n: &TestNode| fs::read_dir(n.shared_dir.join(".raftshare/trash")).unwrap().next().is_none();
        (empty(a) && empty(c)).then_some(())
    });

    // `ls --json` agrees everywhere, and says who made each change.
    a.write("x/by-a.txt", b"a");
    b.write("by-b.txt", b"b");
    wait_trees(&all, None, SETTLE, "the two new files everywhere");
    wait_until(SETTLE, "ls to list both files on every node", || {
        let lists: Vec<Vec<Value>> = all.iter().map(|n| ls(n)).collect();
        (lists.iter().all(|l| *l == lists[0]) && lists[0].len() == 2).then(|| lists[0].clone())
    });
    let list = ls(c);
    let by = |path: &str| list.iter().find(|f| f["path"] == path).unwrap().clone();
    assert_eq!(by("x/by-a.txt")["modified_by"], "a");
    assert_eq!(by("by-b.txt")["modified_by"], "b");
    assert_eq!(by("by-b.txt")["hash"], hash_hex(b"b"));
    for f in &list {
        for field in ["path", "size", "hash", "modified_at", "modified_by", "version"] {
            assert!(!f[field].is_null(), "ls --json has {field}: {f}");
        }
    }
}

#[test]
fn a_burst_of_500_files_reaches_every_node() {
    let cluster = Cluster::start(3);
    let b = &cluster.nodes[1];
    let mut want = BTreeMap::new();
    for i in 0..500 {
        let body = big_content(4096, i);
        b.write(&format!("burst/{:03}/file-{i}.bin", i % 17), &body);
        want.insert(format!("burst/{:03}/file-{i}.bin", i % 17), hash_hex(&body));
    }
    wait_trees(&nodes(&cluster), Some(&want), Duration::from_secs(60), "500 files on every node");
    let entries = cluster.nodes[0].log();
    let changes = entries.iter().filter(|e| e["kind"] == "change").count();
    assert!(changes < 100, "a burst is batched into few entries, got {changes}");
}

#[test]
fn many_files_of_one_content_arrive_each_as_its_own_file() {
    let cluster = Cluster::start(3);
    let [a, c] = [&cluster.nodes[0], &cluster.nodes[2]];
    let mut want = BTreeMap::new();
    for i in 0..40 {
        a.write(&format!("empty/{i}.txt"), b"");
        a.write(&format!("same/{i}.txt"), b"one content under forty names");
        want.insert(format!("empty/{i}.txt"), hash_hex(b""));
        want.insert(format!("same/{i}.txt"), hash_hex(b"one content under forty names"));
    }
    wait_trees(&nodes(&cluster), Some(&want), Duration::from_secs(60), "80 files of two contents on every node");

    // Each is a file of its own (not a link to one copy): an edit of one changes only it.
    c.write("same/7.txt", b"edited on c");
    want.insert("same/7.txt".to_string(), hash_hex(b"edited on c"));
    wait_trees(&nodes(&cluster), Some(&want), Duration::from_secs(60), "only same/7.txt edited");
}

#[test]
fn a_large_file_replicates_intact_and_a_rename_moves_no_bytes() {
    let cluster = Cluster::start(3);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let body = big_content(256 << 20, 7);
    let hash = hash_hex(&body);
    // Written under a temporary name and renamed in, as a careful program would.
    let tmp = a.shared_dir.join(".big.bin.part");
    fs::write(&tmp, &body).unwrap();
    fs::rename(&tmp, a.shared_dir.join("big.bin")).unwrap();

    // While it travels, no node may ever show a partial file.
    let want = BTreeMap::from([("big.bin".to_string(), hash.clone())]);
    wait_until(Duration::from_secs(120), "the 256 MiB file on b and c", || {
        for node in [b, c] {
            let path = node.shared_dir.join("big.bin");
            if let Ok(meta) = fs::metadata(&path) {
                assert_eq!(meta.len(), body.len() as u64, "a partial big.bin was visible on {}", node.name);
            }
        }
        [b, c].iter().all(|n| n.tree() == want).then_some(())
    });
    for node in [b, c] {
        let visible: Vec<String> = tree_of(&node.shared_dir).into_keys().collect();
        assert_eq!(visible, ["big.bin"], "no temp file in the shared folder of {}", node.name);
    }

    let received: Vec<u64> = [b, c].iter().map(|n| n.stat("bytes_received")).collect();
    assert!(received.iter().sum::<u64>() >= body.len() as u64, "the content was fetched: {received:?}");
    fs::rename(b.shared_dir.join("big.bin"), b.shared_dir.join("renamed/big.bin")).unwrap_or_else(|_| {
        fs::create_dir(b.shared_dir.join("renamed")).unwrap();
        fs::rename(b.shared_dir.join("big.bin"), b.shared_dir.join("renamed/big.bin")).unwrap();
    });
    let want = BTreeMap::from([("renamed/big.bin".to_string(), hash)]);
    wait_trees(&nodes(&cluster), Some(&want), Duration::from_secs(60), "the rename on every node");
    let received_after: Vec<u64> = [a, c].iter().map(|n| n.stat("bytes_received")).collect();
    assert_eq!(received_after[1], received[1], "c renamed its copy without fetching blocks");
    assert_eq!(received_after[0], 0, "a never fetched anything: it had every block");
}

#[test]
fn a_transfer_whose_server_dies_finishes_from_another_peer() {
    let mut cluster = Cluster::start(3);
    cluster.nodes[2].stop();
    let body = big_content(192 << 20, 11);
    let want = BTreeMap::from([("video.bin".to_string(), hash_hex(&body))]);
    cluster.nodes[0].write("video.bin", &body);
    wait_trees(&[&cluster.nodes[0], &cluster.nodes[1]], Some(&want), Duration::from_secs(120), "a and b to have it");

    // c comes back and fetches from a (the origin) first; a dies as soon as bytes flow.
    cluster.nodes[2].start_ready();
    wait_until(Duration::from_secs(60), "c to start receiving", || {
        (cluster.nodes[2].stat("bytes_received") > 0).then_some(())
    });
    cluster.nodes[0].kill9();
    let received = cluster.nodes[2].stat("bytes_received");
    wait_trees(&[&cluster.nodes[2]], Some(&want), Duration::from_secs(120), "c to finish from b");
    assert!(received < body.len() as u64, "a was killed before c had it all ({received} bytes)");
    assert!(cluster.nodes[1].stat("bytes_sent") > 0, "b served the rest");
}

#[test]
fn a_node_away_catches_up_and_keeps_its_own_edits_as_conflict_copies() {
    let mut cluster = Cluster::start(3);
    let all_before = nodes(&cluster);
    for i in 0..5 {
        cluster.nodes[0].write(&format!("keep-{i}.txt"), format!("v1 {i}").as_bytes());
    }
    cluster.nodes[0].write("shared.txt", b"original");
    cluster.nodes[0].write("gone.txt", b"to be deleted");
    wait_trees(&all_before, None, SETTLE, "the first files everywhere");
    assert_eq!(cluster.nodes[2].tree().len(), 7);

    cluster.nodes[2].stop();
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    for i in 0..5 {
        a.write(&format!("keep-{i}.txt"), format!("v2 {i}").as_bytes());
        b.write(&format!("new-{i}.txt"), format!("new {i}").as_bytes());
    }
    for i in 0..3 {
        fs::remove_file(a.shared_dir.join(format!("keep-{i}.txt"))).unwrap_or(());
    }
    fs::remove_file(b.shared_dir.join("gone.txt")).unwrap();
    a.write("shared.txt", b"a's version");
    wait_trees(&[a, b], None, SETTLE, "a and b to agree");

    // Meanwhile, on c's disk:
    let c = &cluster.nodes[2];
    c.write("shared.txt", b"c's version");
    c.write("offline-new.txt", b"made while away");
    c.write("keep-4.txt", b"c edits keep-4 too");

    cluster.nodes[2].start_ready();
    let all = nodes(&cluster);
    wait_until(Duration::from_secs(30), "all three to converge with both versions of shared.txt", || {
        let tree = cluster.nodes[0].tree();
        (tree.values().filter(|h| **h == hash_hex(b"c's version")).count() == 1 && all.iter().all(|n| n.tree() == tree))
            .then_some(())
    });
    let tree = cluster.nodes[0].tree();
    assert_eq!(tree.get("shared.txt"), Some(&hash_hex(b"a's version")), "{tree:#?}");
    let copy = tree.iter().find(|(_, h)| **h == hash_hex(b"c's version")).map(|(p, _)| p.clone()).unwrap();
    assert!(
        copy.starts_with("shared.conflict-c-") && copy.ends_with(".txt"),
        "conflict copy named as DESIGN.md says: {copy}"
    );
    assert_eq!(tree.get("offline-new.txt"), Some(&hash_hex(b"made while away")));
    assert!(!tree.contains_key("gone.txt"), "a delete made while c was away is applied");
    for i in 0..3 {
        assert!(!tree.contains_key(&format!("keep-{i}.txt")), "keep-{i} stays deleted");
    }
    for i in 0..5 {
        assert_eq!(tree.get(&format!("new-{i}.txt")), Some(&hash_hex(format!("new {i}").as_bytes())));
    }
    let c_edit = tree.values().filter(|h| **h == hash_hex(b"c edits keep-4 too")).count();
    assert_eq!(c_edit, 1, "c's edit of keep-4 survives (as the file or a copy): {tree:#?}");
}

/// Found by jepsen-lite (`--nemesis kill,partition --seed 1`): files made and removed on a
/// cut-off node before they could commit must not come back when it rejoins, nor leave a
/// record (the file or a conflict copy of it) whose content no node has.
#[test]
fn files_made_and_removed_while_cut_off_leave_no_trace() {
    let cluster = Cluster::start_faulty(3);
    let all = nodes(&cluster);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    a.write("kept.txt", b"before the cut");
    wait_trees(&all, None, SETTLE, "kept.txt everywhere");

    cluster.isolate(2);
    a.write("report.txt", b"a's report");
    wait_trees(&[a, b], None, SETTLE, "a and b to agree on report.txt");
    c.write("report.txt", b"c's report, never committed");
    c.write("notes.txt", b"c's notes, never committed");
    c.write("sub/inner.txt", b"in a folder removed whole");
    wait_until(SETTLE, "c to queue its three files", || (c.stat("pending_outbox") >= 3).then_some(()));
    fs::remove_file(c.shared_dir.join("report.txt")).unwrap();
    fs::remove_file(c.shared_dir.join("notes.txt")).unwrap();
    fs::remove_dir_all(c.shared_dir.join("sub")).unwrap();
    let deletes_queued = |node: &TestNode| {
        let out = node.cli_ok(&["events", "--json"]);
        let events: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        ["report.txt", "notes.txt", "sub/inner.txt"].iter().all(|path| {
            events.iter().any(|e| e["type"] == "local_change" && e["path"] == *path && e["deleted"] == true)
        })
    };
    wait_until(SETTLE, "c to queue the three deletes", || deletes_queued(c).then_some(()));

    cluster.heal();
    let want = BTreeMap::from([
        ("kept.txt".to_string(), hash_hex(b"before the cut")),
        ("report.txt".to_string(), hash_hex(b"a's report")),
    ]);
    wait_trees(&all, Some(&want), SETTLE, "every folder to hold only kept.txt and a's report.txt");
    wait_until(SETTLE, "c's outbox to empty", || (c.stat("pending_outbox") == 0).then_some(()));
    for node in &all {
        let listed: BTreeMap<String, String> = ls(node)
            .iter()
            .map(|r| (r["path"].as_str().unwrap().to_string(), r["hash"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(listed, want, "{}'s table lists exactly what the folders hold", node.name);
    }
    assert_eq!(c.tree(), want, "nothing came back on c either");
}

#[test]
fn a_write_without_quorum_waits_then_commits() {
    let mut cluster = Cluster::start(3);
    let survivor = cluster.leader();
    for i in 0..3 {
        if i != survivor {
            cluster.nodes[i].kill9();
        }
    }
    cluster.nodes[survivor].write("lonely.txt", b"written without quorum");
    wait_until(Duration::from_secs(10), "status to show the change pending", || {
        (cluster.nodes[survivor].stat("pending_outbox") >= 1).then_some(())
    });
    for i in 0..3 {
        if i != survivor {
            cluster.nodes[i].start_ready();
        }
    }
    let want = BTreeMap::from([("lonely.txt".to_string(), hash_hex(b"written without quorum"))]);
    wait_trees(&nodes(&cluster), Some(&want), Duration::from_secs(30), "the change to commit and reach everyone");
    wait_until(Duration::from_secs(10), "the outbox to empty", || {
        (cluster.nodes[survivor].stat("pending_outbox") == 0).then_some(())
    });
}

#[test]
fn a_folder_without_its_marker_is_never_synced_as_empty() {
    let mut cluster = Cluster::start(3);
    cluster.nodes[0].write("precious/data.txt", b"do not delete me");
    cluster.nodes[0].write("other.txt", b"me neither");
    let tree = wait_trees(&nodes(&cluster), None, SETTLE, "the files everywhere");
    assert_eq!(tree.len(), 2);

    cluster.nodes[2].stop();
    let shared = cluster.nodes[2].shared_dir.clone();
    let moved = shared.with_file_name("moved-away");
    fs::rename(&shared, &moved).unwrap();
    cluster.nodes[2].start_ready();
    let why = wait_until(Duration::from_secs(10), "status to say why the folder is not synced", || {
        cluster.nodes[2].status().and_then(|s| s["folder_problem"].as_str().map(String::from))
    });
    assert!(why.contains("marker"), "{why}");
    cluster.nodes[0].write("while-away.txt", b"new");
    let want = {
        let mut t = tree.clone();
        t.insert("while-away.txt".into(), hash_hex(b"new"));
        t
    };
    wait_trees(&[&cluster.nodes[0], &cluster.nodes[1]], Some(&want), SETTLE, "a and b keep syncing");
    assert!(!shared.exists() || tree_of(&shared).is_empty(), "nothing is written where the folder was");
    assert!(cluster.nodes[2].log_text().contains("lost its marker"), "the log says why");
    let entries = cluster.nodes[0].log();
    let deletes = entries
        .iter()
        .flat_map(|e| e["ops"].as_array().cloned().unwrap_or_default())
        .filter(|op| op["op"] == "delete")
        .count();
    assert_eq!(deletes, 0, "no delete was proposed");

    if shared.exists() {
        fs::remove_dir_all(&shared).unwrap();
    }
    fs::rename(&moved, &shared).unwrap();
    wait_trees(&nodes(&cluster), Some(&want), SETTLE, "c to sync again once its folder is back");
    wait_until(Duration::from_secs(10), "the problem to clear", || {
        cluster.nodes[2].status().is_some_and(|s| s["folder_problem"].is_null()).then_some(())
    });
}

#[test]
fn events_tell_what_happened_on_each_node() {
    let cluster = Cluster::start(3);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    a.write("report.txt", b"quarterly numbers");
    wait_trees(&nodes(&cluster), None, SETTLE, "report.txt everywhere");
    fs::remove_file(a.shared_dir.join("report.txt")).unwrap();
    wait_until(SETTLE, "b to have deleted report.txt", || (!b.shared_dir.join("report.txt").exists()).then_some(()));
    let events = |node: &TestNode| -> Vec<Value> {
        node.cli_ok(&["events", "--json"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let on_b = wait_until(SETTLE, "b's events to show the file received and deleted", || {
        let ev = events(b);
        let received = ev.iter().any(|e| e["type"] == "received" && e["path"] == "report.txt" && e["from"] == "a");
        let deleted = ev.iter().any(|e| e["type"] == "deleted" && e["path"] == "report.txt" && e["by"] == "a");
        (received && deleted).then_some(ev)
    });
    assert!(on_b.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()), "events are in order");
    let on_a = events(a);
    assert!(on_a.iter().any(|e| e["type"] == "local_change" && e["path"] == "report.txt"));
    assert!(on_a.iter().any(|e| e["type"] == "sent"));
    let text = b.cli_ok(&["events"]);
    assert!(text.contains("received report.txt from a"), "{text}");
}
