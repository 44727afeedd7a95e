//! Block requests for what a node must not serve: files outside the folder, the
//! metadata folder, unknown hashes, absurd indexes; each gets a clean error and the
//! connection keeps serving.

use std::fs;
use std::time::Duration;

use raftshare_raft::proto::{BlockRequest, Request, Response, MAX_BLOCKS_PER_REQUEST};
use raftshare_raft::transport::Client;
use raftshare_raft::{Digest, BLOCK_SIZE};
use serde_json::Value;

use crate::common::{big_content, hash_hex, wait_until, Cluster};
use crate::{assert_no_panic, still_syncs, Mallory, Outside, SETTLE};

#[test]
fn hostile_block_requests_get_a_clean_error_and_the_connection_keeps_serving() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let nodes = [a, b];
    let outside = Outside::guard(a);
    let served = big_content(BLOCK_SIZE as usize + 1000, 7);
    a.write("served.bin", &served);
    wait_until(SETTLE, "served.bin on b", || (b.tree().get("served.bin") == Some(&hash_hex(&served))).then_some(()));

    let mallory = Mallory::connect(a);
    let first = &served[..BLOCK_SIZE as usize];
    let req = |path: &str, index: u32, block: Digest| BlockRequest {
        path: path.into(),
        file_hash: Digest::of(&served),
        index,
        block,
    };
    // A genuine request is served: the checks below are not refused for another reason.
    assert_eq!(mallory.block(req("served.bin", 0, Digest::of(first))).unwrap(), first);

    let canary = fs::read(outside.canary.join("keep.txt")).unwrap();
    let canary_abs = outside.canary.join("keep.txt").display().to_string();
    let marker = fs::read(a.shared_dir.join(".raftshare/folder")).unwrap();
    let key = fs::read(a.data_dir.join("cluster.key")).unwrap();
    let mut hostile = vec![
        // Files outside the folder, with the hash of their real content.
        req("../canary/keep.txt", 0, Digest::of(&canary)),
        req(&canary_abs, 0, Digest::of(&canary)),
        req("../data/cluster.key", 0, Digest::of(&key)),
        req("a/../../data/cluster.key", 0, Digest::of(&key)),
        // The metadata folder.
        req(".raftshare/folder", 0, Digest::of(&marker)),
        // Unknown hashes, absurd indexes, paths no file can have.
        req("served.bin", 0, Digest([0x5a; 32])),
        req("served.bin", u32::MAX, Digest([1; 32])),
        req("no-such-file", 0, Digest([2; 32])),
        req("", 0, Digest([3; 32])),
        req("hostile\0nul", 0, Digest([4; 32])),
        req(&"x".repeat(5000), 0, Digest([5; 32])),
        req("..\\..\\data\\cluster.key", 0, Digest::of(&key)),
    ];
    // A file every Unix system has, outside the folder, asked for with its real hash.
    let passwd = fs::read("/etc/passwd").expect("/etc/passwd to ask the node for");
    let head = &passwd[..passwd.len().min(BLOCK_SIZE as usize)];
    hostile.push(req("/etc/passwd", 0, Digest::of(head)));
    hostile.push(req("../../../../../../../../etc/passwd", 0, Digest::of(head)));
    for r in hostile.clone() {
        let what = format!("{:?} block {}", r.path.chars().take(60).collect::<String>(), r.index);
        let err = match mallory.block(r) {
            Ok(bytes) => panic!("{what} was served ({} bytes)", bytes.len()),
            Err(err) => err,
        };
        assert!(err.contains("does not have block"), "{what}: unclear error: {err}");
    }
    // The same in one request for many blocks, the genuine one among them: only it is served.
    let genuine = req("served.bin", 0, Digest::of(first));
    let mut together = hostile.clone();
    together.insert(hostile.len() / 2, genuine.clone());
    let Response::Blocks(answers) = mallory.call(Request::Blocks(together.clone())) else { panic!("not Blocks") };
    assert_eq!(answers.len(), together.len(), "one answer per block asked for");
    for (r, answer) in together.iter().zip(answers) {
        let what = format!("{:?} block {} (together)", r.path.chars().take(60).collect::<String>(), r.index);
        match answer {
            Ok(bytes) => assert!(*r == genuine && bytes.as_slice() == first, "{what} was served"),
            Err(err) => assert!(*r != genuine && err.contains("does not have block"), "{what}: {err}"),
        }
    }
    // More than a request may ask for: refused in words, nothing read.
    let Response::Error(err) = mallory.call(Request::Blocks(vec![genuine; MAX_BLOCKS_PER_REQUEST + 1])) else {
        panic!("too many blocks were not refused")
    };
    assert!(err.contains(&format!("at most {MAX_BLOCKS_PER_REQUEST}")), "{err}");

    // Many at once, on the one connection.
    let many: Vec<Response> = mallory.rt.block_on(many_bad_block_requests(&mallory.client, 200));
    assert!(many.iter().all(|r| matches!(r, Response::Block(Err(_)))), "200 bad requests in flight");

    // The same connection and the node still serve.
    assert_eq!(mallory.block(req("served.bin", 1, Digest::of(&served[BLOCK_SIZE as usize..]))).unwrap().len(), 1000);
    assert_eq!(mallory.status()["folder_problem"], Value::Null);
    still_syncs(&nodes, a, "after-the-block-requests.txt");
    outside.assert_untouched("hostile");
    assert_no_panic(&nodes);
}

/// `n` requests for blocks nobody has, in flight at once on one connection.
async fn many_bad_block_requests(client: &Client, n: u32) -> Vec<Response> {
    let calls = (0..n).map(|i| {
        let req = BlockRequest {
            path: format!("../hostile-{i}"),
            file_hash: Digest([9; 32]),
            index: i,
            block: Digest([i as u8; 32]),
        };
        let client = client.clone();
        async move { client.call(Request::Block(req), Duration::from_secs(15)).await.expect("an answer") }
    });
    let mut out = Vec::new();
    for handle in calls.map(tokio::spawn).collect::<Vec<_>>() {
        out.push(handle.await.expect("a call task"));
    }
    out
}
