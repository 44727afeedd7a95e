//! Hostile network input against real `raftshare` processes on 127.0.0.1: what an
//! eavesdropper records, a flood of connections and garbage, a handshake that stalls.
//! After each, the node must still serve its cluster (a new file still syncs).

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
    let (listen_a, listen_b) = (free_port(), free_port());
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

    // Connect, read the node's hello, then say nothing.
    let started = Instant::now();
    let mut stalled = TcpStream::connect(a.addr()).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(30))).unwrap();

    a.write("while-stalled.txt", b"the node serves while a handshake stalls");
    let want =
        BTreeMap::from([("while-stalled.txt".to_string(), hash_hex(b"the node serves while a handshake stalls"))]);
    wait_trees(&[a, b], Some(&want), SETTLE, "a file to sync while a handshake stalls");

    let mut hello = Vec::new();
    let read = stalled.read_to_end(&mut hello);
    let waited = started.elapsed();
    // EOF (or a reset) after the node's 5 s handshake timeout, not before and not never.
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert!(!hello.is_empty(), "the node's hello never came");
    assert!(waited >= Duration::from_secs(4), "closed after {waited:?}, before the timeout");
    assert!(waited < Duration::from_secs(20), "closed only after {waited:?}");
    assert!(a.status().is_some());
}
