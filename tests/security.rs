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
    // EOF (or a reset) after the node's 2 s deadline for a client's first message
    // (`hello_timeout`), not before and not never.
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert!(!hello.is_empty(), "the node's hello never came");
    assert!(waited >= Duration::from_millis(1500), "closed after {waited:?}, before the hello deadline");
    assert!(waited < Duration::from_secs(20), "closed only after {waited:?}");
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
