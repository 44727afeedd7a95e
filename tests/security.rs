//! Hostile network input against real `raftshare` processes on 127.0.0.1: what an
//! eavesdropper records, a flood of connections and garbage, a handshake that stalls;
//! and a peer that holds the key but is not who it should be (not a member, or a member
//! speaking for another node, or administering a node that is not its own). After each,
//! the node must still serve its cluster (a new file still syncs) and nothing the
//! attacker asked for happened.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{hash_hex, wait_agree, wait_trees, Cluster, TestNode};

const SETTLE: Duration = Duration::from_secs(20);

/// A TCP proxy on 127.0.0.1 that forwards to `target` and records every byte, both ways.
struct RecordingProxy {
    addr: String,
    recorded: Arc<Mutex<Vec<u8>>>,
}

impl RecordingProxy {
    fn start(listener: TcpListener, target: String) -> RecordingProxy {
        let addr = listener.local_addr().unwrap().to_string();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let tape = recorded.clone();
        // Detached: the accept loop ends with the test process.
        thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                let Ok(outbound) = TcpStream::connect(&target) else { continue };
                for (mut from, mut to) in
                    [(inbound.try_clone().unwrap(), outbound.try_clone().unwrap()), (outbound, inbound)]
                {
                    let tape = tape.clone();
                    thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    tape.lock().unwrap().extend_from_slice(&buf[..n]);
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        RecordingProxy { addr, recorded }
    }

    fn recorded(&self) -> Vec<u8> {
        self.recorded.lock().unwrap().clone()
    }
}

/// Two ports free now, and distinct: both are held until both are picked (picked one
/// after the other, the kernel may hand out the one just let go again, and then the
/// second node answered at the first one's port).
fn two_free_ports() -> (u16, u16) {
    let (a, b) = (TcpListener::bind("127.0.0.1:0").unwrap(), TcpListener::bind("127.0.0.1:0").unwrap());
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

/// Makes `node` listen on a fixed port and tell peers to dial `proxy` instead.
fn behind(node: &TestNode, port: u16, proxy: &str) {
    node.set_config("listen", &format!("\"127.0.0.1:{port}\""));
    node.set_config("advertise", &format!("\"{proxy}\""));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn an_eavesdropper_between_two_nodes_sees_neither_file_content_nor_the_key() {
    // Both nodes advertise a recording proxy: every byte between them passes through one.
    let (listen_a, listen_b) = two_free_ports();
    let proxy_a = RecordingProxy::start(TcpListener::bind("127.0.0.1:0").unwrap(), format!("127.0.0.1:{listen_a}"));
    let proxy_b = RecordingProxy::start(TcpListener::bind("127.0.0.1:0").unwrap(), format!("127.0.0.1:{listen_b}"));

    let mut a = TestNode::init("a", &[]);
    behind(&a, listen_a, &proxy_a.addr);
    a.start_ready();
    a.cli_ok(&["bootstrap"]);
    let key = a.key();
    let mut b = TestNode::init("b", &["--key", &key]);
    behind(&b, listen_b, &proxy_b.addr);
    b.start_ready();
    b.cli_ok(&["join", &proxy_a.addr]);
    wait_agree(&[&a, &b], 2, SETTLE);

    // Distinctive content, large enough to take several blocks, one file from each side.
    let marker = b"TOP-SECRET-raftshare-plaintext-marker-0123456789";
    let content: Vec<u8> = marker.iter().copied().cycle().take(300_000).collect();
    a.write("secret-plans-from-a.txt", &content);
    b.write("secret-plans-from-b.txt", b"TOP-SECRET-small-file-from-b");
    let want = BTreeMap::from([
        ("secret-plans-from-a.txt".to_string(), hash_hex(&content)),
        ("secret-plans-from-b.txt".to_string(), hash_hex(b"TOP-SECRET-small-file-from-b")),
    ]);
    wait_trees(&[&a, &b], Some(&want), SETTLE, "both files on both nodes, through the proxies");

    let tape = [proxy_a.recorded(), proxy_b.recorded()].concat();
    // The content really crossed the proxies (sealed), so the checks below mean something.
    assert!(tape.len() > content.len(), "only {} bytes recorded", tape.len());
    let raw_key: Vec<u8> = (0..key.len()).step_by(2).map(|i| u8::from_str_radix(&key[i..i + 2], 16).unwrap()).collect();
    assert_eq!(raw_key.len(), 32);
    for (what, needle) in [
        ("the file content", &marker[..]),
        ("a piece of the content", &marker[..16]),
        ("the small file", b"TOP-SECRET-small-file-from-b"),
        ("a file name", b"secret-plans-from"),
        ("the cluster key in hex", key.as_bytes()),
        ("the cluster key in upper-case hex", key.to_uppercase().as_bytes()),
        ("the raw cluster key", &raw_key),
        ("half the raw cluster key", &raw_key[..16]),
    ] {
        assert!(!contains(&tape, needle), "{what} is readable on the wire");
    }
}

#[test]
fn a_flood_of_connections_and_garbage_leaves_the_cluster_serving() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let addr = a.addr();

    // 500 connections opened and dropped at once, from four threads.
    let flooders: Vec<_> = (0..4)
        .map(|t| {
            let addr = addr.clone();
            thread::spawn(move || {
                for i in 0..125u32 {
                    let Ok(mut stream) = TcpStream::connect(&addr) else { continue };
                    match i % 5 {
                        // Garbage, a gigantic length prefix, half a hello, HTTP.
                        0 => drop(stream.write_all(&[0xa5u8 ^ t as u8; 4096])),
                        1 => drop(stream.write_all(&u32::MAX.to_be_bytes())),
                        2 => drop(stream.write_all(&[0, 0, 0, 90, 1, 2, 3])),
                        3 => drop(stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")),
                        _ => {}
                    }
                }
            })
        })
        .collect();
    for flooder in flooders {
        flooder.join().unwrap();
    }
    // And 300 at once that stay silent (more than the node's 256 connection slots).
    let held: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(&addr).ok()).collect();
    assert!(held.len() > 256, "only {} connections opened", held.len());

    // Raft and block traffic between the members rides their existing connections.
    a.write("during-the-flood.txt", b"written while 300 connections hang");
    let mut want =
        BTreeMap::from([("during-the-flood.txt".to_string(), hash_hex(b"written while 300 connections hang"))]);
    wait_trees(&[a, b], Some(&want), SETTLE, "a file written during the flood to reach b");
    drop(held);

    // Afterwards: the node answers its CLI and syncs both ways.
    assert!(a.status().is_some(), "a answers status after the flood");
    b.write("after-the-flood.txt", b"after");
    want.insert("after-the-flood.txt".into(), hash_hex(b"after"));
    wait_trees(&[a, b], Some(&want), SETTLE, "a file written after the flood to reach a");
    cluster.wait_converged(SETTLE);
    assert!(a.is_running() && b.is_running());
}

#[test]
fn a_stalled_handshake_is_closed_after_the_timeout_while_the_node_keeps_serving() {
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];

    // Connect, read the node's hello, then say nothing. The read is bounded: a node that
    // never closes the connection fails the test instead of hanging it.
    let bound = Duration::from_secs(30);
    let started = Instant::now();
    let mut stalled = TcpStream::connect(a.addr()).unwrap();
    stalled.set_read_timeout(Some(bound)).unwrap();

    a.write("while-stalled.txt", b"the node serves while a handshake stalls");
    let want =
        BTreeMap::from([("while-stalled.txt".to_string(), hash_hex(b"the node serves while a handshake stalls"))]);
    wait_trees(&[a, b], Some(&want), SETTLE, "a file to sync while a handshake stalls");

    let mut hello = Vec::new();
    let read = stalled.read_to_end(&mut hello);
    let waited = started.elapsed();
    // EOF (or a reset) after the node's 2 s deadline for a client's first message
    // (`hello_timeout`), not before and not never.
    match read.as_ref().map_err(|e| e.kind()) {
        Ok(_) | Err(std::io::ErrorKind::ConnectionReset) => {}
        Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            panic!("the node did not close a stalled handshake within {bound:?} (its hello deadline is 2 s)")
        }
        Err(_) => panic!("reading from a stalled handshake: {read:?}"),
    }
    assert!(!hello.is_empty(), "the node's hello never came");
    assert!(waited >= Duration::from_millis(1500), "closed after {waited:?}, before the hello deadline");
    assert!(a.status().is_some());
}

/// Reads one length-delimited handshake frame (4-byte big-endian length, then the bytes).
fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut frame)?;
    Ok(frame)
}

fn write_frame(stream: &mut TcpStream, frame: &[u8]) {
    stream.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
    stream.write_all(frame).unwrap();
}

/// The node's resident memory in KiB (VmRSS), from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn outsiders_wrong_keys_replayed_handshakes_and_bad_sealed_frames_are_refused_while_the_node_serves() {
    use raftshare_raft::handshake;
    use raftshare_raft::key::{ClusterKey, Identity, Keyring};
    use tokio::io::AsyncWriteExt;

    // a lets in only 127.0.0.1 (its peer b is there); the test also knocks from 127.0.0.3.
    let cluster = Cluster::start_with(2, |n| n.set_config("allow", "[\"127.0.0.1/32\"]"));
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let addr = a.addr();
    let key = Keyring::from(ClusterKey::from_hex(&a.key()).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // 1. Outside the allowed subnets: told why, before the node reads a byte; logged once.
    for _ in 0..5 {
        let refused: String = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
            let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
            let mut io = handshake::framed(stream);
            let err = handshake::connect(&mut io, &key, &Identity::generate(), None, Duration::from_secs(5))
                .await
                .unwrap_err();
            err.to_string()
        });
        assert!(refused.contains("127.0.0.3") && refused.contains("allow"), "{refused}");
    }
    common::wait_until(SETTLE, "a to log the outsider", || {
        a.log_text().lines().any(|l| l.contains("WARN") && l.contains("127.0.0.3")).then_some(())
    });
    let warned = a.log_text().lines().filter(|l| l.contains("WARN") && l.contains("127.0.0.3")).count();
    assert_eq!(warned, 1, "an outsider is logged once, not per attempt");

    // 2. Another key: refused as another cluster, on both sides.
    let other = Keyring::from(ClusterKey::generate());
    let err = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut io = handshake::framed(stream);
        handshake::connect(&mut io, &other, &Identity::generate(), None, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string()
    });
    assert!(err.contains("another cluster"), "{err}");

    // 3. A replayed handshake: a key holder's ClientHello, recorded, sent again on a new
    //    connection (with the node's new nonce) is refused as a wrong key.
    let recorded = {
        let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_addr = proxy.local_addr().unwrap().to_string();
        let target = addr.clone();
        let recorder = thread::spawn(move || {
            let (mut client, _) = proxy.accept().unwrap();
            let mut server = TcpStream::connect(target).unwrap();
            let hello = read_frame(&mut server).unwrap();
            write_frame(&mut client, &hello);
            let client_hello = read_frame(&mut client).unwrap();
            write_frame(&mut server, &client_hello);
            client_hello
        });
        let _ = rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(&proxy_addr).await.unwrap();
            let mut io = handshake::framed(stream);
            handshake::connect(&mut io, &key, &Identity::generate(), None, Duration::from_secs(2)).await
        });
        recorder.join().unwrap()
    };
    let mut replay = TcpStream::connect(&addr).unwrap();
    replay.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    read_frame(&mut replay).unwrap();
    write_frame(&mut replay, &recorded);
    let answer = read_frame(&mut replay).unwrap();
    assert!(contains(&answer, b"wrong cluster key"), "{}", String::from_utf8_lossy(&answer));

    // 4. After a genuine handshake: garbage, a length prefix of gigabytes, a whole chunk
    //    that is not sealed, and a chunk cut short by the end of the stream each close
    //    that connection, and nothing large is allocated.
    let pid = a.pid();
    let before = rss_kib(pid);
    let unsealed = [&20u32.to_be_bytes()[..], &[7u8; 20]].concat();
    let truncated = [&100u32.to_be_bytes()[..], &[7u8; 30]].concat();
    let attacks = [
        (vec![0xa5u8; 70_000], false),
        ([u32::MAX.to_be_bytes(), [0; 4]].concat(), false),
        (unsealed, false),
        (truncated, true),
    ];
    for (attack, then_eof) in attacks {
        let closed = rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut io = handshake::framed(stream);
            handshake::connect(&mut io, &key, &Identity::generate(), None, Duration::from_secs(5)).await.unwrap();
            let mut stream = io.into_inner();
            stream.write_all(&attack).await.unwrap();
            if then_eof {
                stream.shutdown().await.unwrap();
            }
            let mut rest = Vec::new();
            let read = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest),
            );
            read.await.is_ok()
        });
        assert!(closed, "the node closes a connection that sends {} bad bytes", attack.len());
    }
    let after = rss_kib(pid);
    assert!(after < before + 64 * 1024, "a's memory grew from {before} KiB to {after} KiB");

    // Through all of it, a serves its cluster and its CLI.
    a.write("after-the-knocks.txt", b"still syncing");
    let want = BTreeMap::from([("after-the-knocks.txt".to_string(), hash_hex(b"still syncing"))]);
    wait_trees(&[a, b], Some(&want), SETTLE, "a file written after the attacks to reach b");
    assert!(a.status().is_some());
}

/// A raw protocol client on 127.0.0.1 holding the cluster key, as the review's attacker
/// did: with a fresh identity of its own (a computer that is no member: removed, or
/// never joined), or with a member's identity key copied from its disk (a member gone
/// bad).
struct Impostor {
    rt: tokio::runtime::Runtime,
    client: raftshare_raft::transport::Client,
}

impl Impostor {
    fn connect(node: &TestNode, holding: Option<&TestNode>) -> Impostor {
        use raftshare_raft::key::{ClusterKey, Identity};
        use raftshare_raft::transport::{Client, TransportConfig};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut cfg = TransportConfig::new(ClusterKey::from_hex(&node.key()).unwrap());
        cfg.identity = Some(match holding {
            Some(member) => {
                let text = std::fs::read_to_string(member.data_dir.join("identity.key")).unwrap();
                Identity::from_text(&text).unwrap()
            }
            None => Identity::generate(),
        });
        let addr = node.addr();
        let client = rt
            .block_on(Client::connect(&addr, &cfg))
            .unwrap_or_else(|e| panic!("the impostor cannot connect to {}: {e}", node.name));
        Impostor { rt, client }
    }

    fn ask(&self, req: raftshare_raft::proto::Request) -> raftshare_raft::proto::Response {
        self.rt.block_on(self.client.call(req, Duration::from_secs(10))).expect("an answer")
    }

    /// Asks, and returns the refusal (panics if the request was served).
    fn refused(&self, req: raftshare_raft::proto::Request) -> String {
        let what = format!("{req:?}");
        match self.ask(req) {
            raftshare_raft::proto::Response::Error(why) => why,
            other => panic!("served {}: {other:?}", &what[..what.len().min(200)]),
        }
    }
}

/// A node id no member has.
const MADE_UP: u64 = 4242;

fn append_entries(term: u64, leader: u64) -> raftshare_raft::proto::Request {
    raftshare_raft::proto::Request::AppendEntries(openraft::raft::AppendEntriesRequest {
        vote: openraft::Vote::new_committed(term, leader),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    })
}

fn vote(term: u64, candidate: u64) -> raftshare_raft::proto::Request {
    raftshare_raft::proto::Request::Vote(openraft::raft::VoteRequest::new(openraft::Vote::new(term, candidate), None))
}

fn change(origin: u64, op: raftshare_raft::FileOp) -> raftshare_raft::proto::Request {
    let change = raftshare_raft::Change { origin, origin_name: "forged".into(), at_ms: 0, op, seqs: vec![] };
    raftshare_raft::proto::Request::Admin(raftshare_raft::admin::AdminRequest::Propose { change, hops: 0 })
}

fn forged_file(path: &str) -> raftshare_raft::FileOp {
    raftshare_raft::FileOp::Put {
        path: path.into(),
        size: 6,
        hash: raftshare_raft::Digest::of(b"forged"),
        blocks: vec![raftshare_raft::Digest::of(b"forged")],
        mtime: 0,
        base: None,
    }
}

fn ls_paths(node: &TestNode) -> Vec<String> {
    let listed: serde_json::Value = serde_json::from_str(&node.cli_ok(&["ls", "--all", "--json"])).unwrap();
    listed.as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_key_holder_cannot_stop_a_node_with_raft_messages_of_absurd_terms_or_for_another_node() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    let (leader_id, follower_id) = (cluster.nodes[leader].node_id(), cluster.nodes[follower].node_id());
    let target = &cluster.nodes[follower];

    // A made-up node claiming to lead at the last term there is: the review's one message.
    let outsider = Impostor::connect(target, None);
    let why = outsider.refused(append_entries(u64::MAX, MADE_UP));
    assert!(why.contains("not a member"), "{why}");
    let why = outsider.refused(vote(u64::MAX, MADE_UP));
    assert!(why.contains("not a member"), "{why}");
    // A member's id, speaking for a made-up leader, or at an absurd term of its own.
    let member = Impostor::connect(target, Some(&cluster.nodes[leader]));
    let why = member.refused(append_entries(u64::MAX, MADE_UP));
    assert!(why.contains("speaks for itself"), "{why}");
    let why = member.refused(append_entries(u64::MAX, leader_id));
    assert!(why.contains("beyond any election"), "{why}");
    let why = member.refused(vote(u64::MAX - 1, leader_id));
    assert!(why.contains("beyond any election"), "{why}");
    drop((outsider, member));

    // Elections go on: the leader is stopped, the two others elect one of them, and the
    // attacked node still takes part (a wrapped term would panic its Raft at once).
    cluster.nodes[leader].stop();
    let running: Vec<&TestNode> = cluster.nodes.iter().filter(|n| n.is_running()).collect();
    common::wait_until(SETTLE, "the two nodes left to elect a leader", || {
        let statuses: Vec<serde_json::Value> = running.iter().map(|n| n.status()).collect::<Option<_>>()?;
        let first = statuses[0]["leader_id"].as_u64()?;
        (first != leader_id && statuses.iter().all(|s| s["leader_id"].as_u64() == Some(first))).then_some(())
    });
    let target = &cluster.nodes[follower];
    let term = target.stat("term");
    assert!(term < 1000, "node {follower_id} is at term {term}");
    target.write("after-the-attack.txt", b"the attacked node still commits");
    let want = BTreeMap::from([("after-the-attack.txt".to_string(), hash_hex(b"the attacked node still commits"))]);
    wait_trees(&running, Some(&want), SETTLE, "a file from the attacked node on both running nodes");
    assert!(!target.log_text().contains("panicked"), "the attacked node panicked:\n{}", target.log_text());
}

#[test]
fn a_forged_rotation_is_refused_and_rotate_key_still_works() {
    use raftshare_raft::{FileOp, KeyRotation};
    let cluster = Cluster::start(2);
    let leader = cluster.leader();
    let [a, b] = [&cluster.nodes[leader], &cluster.nodes[1 - leader]];
    let attacker_key = raftshare_raft::key::ClusterKey::generate();
    let identity = |n: &TestNode| {
        let text = std::fs::read_to_string(n.data_dir.join("identity.key")).unwrap();
        raftshare_raft::key::Identity::from_text(&text).unwrap().public_hex()
    };
    let rotation = |epoch: u64| {
        let sealed = [a, b]
            .iter()
            .map(|n| (n.node_id(), serde_bytes::ByteBuf::from(attacker_key.seal_for(&identity(n), epoch).unwrap())))
            .collect();
        FileOp::RotateKey(KeyRotation { epoch, sealed })
    };

    // From a member's id, to the leader and to the follower, alone and in a batch, at the
    // next epoch and at the last one there is (the review's rotation to pin the key).
    for (to, from) in [(a, b), (b, a)] {
        let impostor = Impostor::connect(to, Some(from));
        for op in [rotation(1), rotation(u64::MAX), FileOp::Batch(vec![forged_file("x"), rotation(1)])] {
            let why = impostor.refused(change(from.node_id(), op));
            assert!(why.contains("not taken as a proposal"), "{why}");
        }
    }
    let log = a.cli_ok(&["log", "--json"]);
    assert!(!log.contains("rotate_key"), "a forged rotation reached the log: {log}");
    assert_eq!(a.key(), b.key());

    // The leader's own rotation is the first one, and every node uses it.
    let out = a.cli_ok(&["rotate-key"]);
    assert!(out.contains("rotation 1"), "{out}");
    let new_key = a.key();
    assert_ne!(new_key, attacker_key.to_hex());
    common::wait_until(SETTLE, "b to switch to the new key", || (b.key() == new_key).then_some(()));
}

#[test]
fn a_key_holder_that_is_not_a_member_changes_nothing_and_reads_nothing() {
    use raftshare_raft::admin::AdminRequest;
    use raftshare_raft::proto::{BlockRequest, Request};
    let cluster = Cluster::start(3);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    a.write("private.txt", b"members only");
    wait_trees(&[a, b, c], None, SETTLE, "private.txt everywhere");
    let members = |n: &TestNode| -> Vec<(u64, bool)> {
        let status = n.status().unwrap();
        status["members"].as_array().unwrap().iter().map(|m| (m["id"].as_u64().unwrap(), m["voter"] == true)).collect()
    };
    let before = members(a);
    let c_id = c.node_id();

    let outsider = Impostor::connect(a, None);
    for req in [
        change(MADE_UP, forged_file("from-an-outsider.txt")),
        Request::Admin(AdminRequest::RemoveMember { id: c_id, hops: 0 }),
        Request::Admin(AdminRequest::Promote { id: MADE_UP, hops: 0 }),
        Request::Admin(AdminRequest::RotateKey { hops: 0 }),
        Request::Admin(AdminRequest::Log { from: None, limit: None }),
        Request::Admin(AdminRequest::Ls),
        Request::Admin(AdminRequest::Status),
        Request::Block(BlockRequest {
            path: "private.txt".into(),
            file_hash: raftshare_raft::Digest::of(b"members only"),
            index: 0,
            block: raftshare_raft::Digest::of(b"members only"),
        }),
    ] {
        let why = outsider.refused(req);
        assert!(why.contains("not a member"), "{why}");
    }
    // Joining as itself is the one change an outsider may ask for; adding others is not.
    let someone = raftshare_raft::NodeInfo { name: "x".into(), addr: "127.0.0.1:9".into(), identity: String::new() };
    let why =
        outsider.refused(Request::Admin(AdminRequest::AddMember { id: 77, node: someone, learner: true, hops: 0 }));
    assert!(why.contains("only ask to join as itself"), "{why}");
    assert!(matches!(outsider.ask(Request::Admin(AdminRequest::Ping)), raftshare_raft::proto::Response::Admin(_)));

    // A member may not speak for another: a change must come from its origin.
    let member = Impostor::connect(a, Some(b));
    let why = member.refused(change(c_id, forged_file("in-c's-name.txt")));
    assert!(why.contains("taken only from the node that made it"), "{why}");
    let renamed = raftshare_raft::NodeInfo { name: "renamed".into(), ..Default::default() };
    let why = member.refused(Request::Admin(AdminRequest::SetMemberInfo { id: c_id, node: renamed, hops: 0 }));
    assert!(why.contains("each node renames itself"), "{why}");

    // Nothing changed: the same members, no forged file; and the cluster still syncs.
    assert_eq!(members(a), before);
    let paths = ls_paths(a);
    assert!(!paths.iter().any(|p| p.contains("outsider") || p.contains("c's-name")), "{paths:?}");
    c.write("still-syncing.txt", b"after the outsider");
    wait_trees(&[a, b, c], None, SETTLE, "a file from c everywhere");
}

#[test]
fn no_other_computer_changes_a_nodes_settings_or_makes_it_leave() {
    use raftshare_raft::admin::{AdminRequest, ConfigChange};
    use raftshare_raft::proto::Request;
    let cluster = Cluster::start(2);
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let config_before = std::fs::read_to_string(b.data_dir.join("config.toml")).unwrap();
    let takeover = ConfigChange {
        shared_dir: Some("/tmp/raftshare-taken-over".into()),
        allow: Some(vec!["0.0.0.0/0".into()]),
        ..Default::default()
    };
    // As a member (a's id) and as an outsider: neither administers b.
    for holding in [Some(a), None] {
        let impostor = Impostor::connect(b, holding);
        for req in [
            AdminRequest::SetConfig(takeover.clone()),
            AdminRequest::Leave,
            AdminRequest::Bootstrap,
            AdminRequest::JoinCluster { peer: a.addr(), learner: false },
            AdminRequest::Partition { isolate: vec![a.node_id()] },
            AdminRequest::GetConfig,
        ] {
            let why = impostor.refused(Request::Admin(req));
            assert!(why.contains("own command line"), "{why}");
        }
    }
    assert_eq!(std::fs::read_to_string(b.data_dir.join("config.toml")).unwrap(), config_before);
    assert!(!b.data_dir.join("left").exists(), "b was made to leave");
    // b's own command line still administers it.
    let out = b.cli_ok(&["config", "--name", "b-renamed"]);
    assert!(out.contains("b-renamed"), "{out}");
    b.write("still-a-member.txt", b"b stays");
    wait_trees(&[a, b], None, SETTLE, "a file from b on a");
}

#[test]
fn links_planted_in_the_metadata_folder_do_nothing_outside_the_shared_folder() {
    let mut cluster = Cluster::start(2);
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"not ours").unwrap();
    std::fs::write(outside.path().join("kept"), b"not ours either").unwrap();

    // With b stopped: a link where b's next temp file goes, and b's trash a link to
    // the folder outside.
    cluster.nodes[1].stop();
    let content = b"content whose temp file name was guessed";
    let meta = cluster.nodes[1].shared_dir.join(".raftshare");
    let temp_name = format!("{}-{}.part", hash_hex(content), content.len());
    std::os::unix::fs::symlink(&victim, meta.join("tmp").join(&temp_name)).unwrap();
    std::fs::remove_dir_all(meta.join("trash")).unwrap();
    std::os::unix::fs::symlink(outside.path(), meta.join("trash")).unwrap();
    cluster.nodes[1].start_ready();
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];

    // b downloads the content (into a temp file of that name), then trashes it when a
    // deletes it, and empties its trash once idle.
    a.write("guessed.txt", content);
    let want = BTreeMap::from([("guessed.txt".to_string(), hash_hex(content))]);
    wait_trees(&[a, b], Some(&want), SETTLE, "guessed.txt on b");
    let installed = std::fs::symlink_metadata(b.shared_dir.join("guessed.txt")).unwrap();
    assert!(installed.is_file(), "b installed a link, not a file");
    std::fs::remove_file(a.shared_dir.join("guessed.txt")).unwrap();
    wait_trees(&[a, b], Some(&BTreeMap::new()), SETTLE, "guessed.txt deleted on b");
    let trash = meta.join("trash");
    common::wait_until(SETTLE, "b's trash to be a folder again, and emptied", || {
        let is_dir = std::fs::symlink_metadata(&trash).ok()?.is_dir();
        (is_dir && std::fs::read_dir(&trash).ok()?.next().is_none()).then_some(())
    });

    assert_eq!(std::fs::read(&victim).unwrap(), b"not ours", "the file the link pointed to was written");
    let mut left: Vec<String> =
        std::fs::read_dir(outside.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["kept", "victim"], "files appeared in or vanished from the folder outside");
}

#[test]
fn the_data_dir_is_private_and_the_key_never_goes_on_a_command_line() {
    use std::os::unix::fs::PermissionsExt;
    let mut a = TestNode::init("a", &[]);
    a.start_ready();
    a.cli_ok(&["bootstrap"]);
    for dir in [a.data_dir.clone(), a.data_dir.join("db")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}: others can read the keys and the database", dir.display());
    }
    let key = a.key();

    // `invite` shows the key on a line of its own, never inside a command to type.
    let invite = a.cli_ok(&["invite"]);
    assert!(invite.lines().any(|l| l.trim() == key), "{invite}");
    assert!(!invite.lines().any(|l| l.contains("--key ") && l.contains(&key)), "{invite}");
    assert!(invite.contains("--key -"), "{invite}");
    assert_eq!(a.cli_ok(&["invite", "--key-only"]), format!("{key}\n"));

    // `init --key -` reads the key from stdin.
    let piped = tempfile::tempdir().unwrap();
    let mut init = std::process::Command::new(common::BIN)
        .args(["init", "--listen", "127.0.0.1:0", "--name", "piped", "--key", "-", "--shared-dir"])
        .arg(piped.path().join("shared"))
        .env("RAFTSHARE_DATA_DIR", piped.path().join("data"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    init.stdin.take().unwrap().write_all(a.cli_ok(&["invite", "--key-only"]).as_bytes()).unwrap();
    let out = init.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(piped.path().join("data/cluster.key")).unwrap().trim(), key);

    // `init --key-file` takes it from a file, and that node joins.
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), a.cli_ok(&["invite", "--key-only"])).unwrap();
    let mut b = TestNode::init("b", &["--key-file", key_file.path().to_str().unwrap()]);
    b.start_ready();
    b.cli_ok(&["join", &a.addr()]);
    wait_agree(&[&a, &b], 2, SETTLE);
    let out = std::process::Command::new(common::BIN)
        .args(["init", "--key-file", "/nonexistent/raftshare.key", "--shared-dir"])
        .arg(piped.path().join("shared-c"))
        .env("RAFTSHARE_DATA_DIR", piped.path().join("data-c"))
        .output()
        .unwrap();
    let missing = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !piped.path().join("data-c").exists(), "{missing}");
    assert!(missing.contains("cannot read the cluster key file") && missing.contains("invite --key-only"), "{missing}");
}
