//! The sealed frame codec against hostile input: arbitrary, truncated, replayed and
//! reordered bytes, and frames that announce gigabytes. Each case must end in a clean
//! error (or a wait for more bytes), never a panic, and never an allocation much larger
//! than what really arrived. Property tests, bounded so they run in `cargo test`.
//!
//! A counting allocator records the largest single allocation of the test's own thread,
//! so "no large allocation" is measured, not assumed.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use common::{config, nested_batch_request, until_closed, Scripted, TestServer, WAIT};
use proptest::prelude::*;
use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::handshake::{self, Cipher};
use raftshare_raft::key::{ClusterKey, Identity};
use raftshare_raft::proto::{Request, Response};
use raftshare_raft::transport::{decode, encode, Client, Envelope, FrameCodec};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only reads and writes a thread-local `Cell`
// with a const initialiser, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The largest allocation `work` made on this thread.
fn largest_allocation<T>(work: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = work();
    (out, LARGEST.with(Cell::get))
}

const MAX_FRAME: usize = 1 << 20;

/// A client's and a server's cipher from a real handshake over an in-memory pipe.
fn ciphers() -> (Cipher, Cipher) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let key = raftshare_raft::key::Keyring::from(ClusterKey::from_bytes([1; 32]));
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (mut s, mut c) = (handshake::framed(a), handshake::framed(b));
        let t = Duration::from_secs(5);
        let (server_id, client_id) = (Identity::generate(), Identity::generate());
        let (server, client) = tokio::join!(
            handshake::accept(&mut s, &key, &server_id, handshake::Deadlines::within(t)),
            handshake::connect(&mut c, &key, &client_id, None, t)
        );
        (client.unwrap().cipher, server.unwrap().cipher)
    })
}

/// One sealed chunk with chosen plaintext, as a hostile peer holding the key could send.
fn chunk(cipher: &Cipher, nonce: u64, plaintext: &[u8]) -> Vec<u8> {
    let mut sealed = vec![0u8; plaintext.len() + Cipher::TAG_LEN];
    let len = cipher.seal(nonce, plaintext, &mut sealed).unwrap();
    let mut out = (len as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&sealed[..len]);
    out
}

fn seal_all(cipher: &Cipher, frames: &[Vec<u8>]) -> BytesMut {
    let mut codec = FrameCodec::new(cipher.clone(), MAX_FRAME);
    let mut wire = BytesMut::new();
    for frame in frames {
        codec.encode(Bytes::from(frame.clone()), &mut wire).unwrap();
    }
    wire
}

/// Feeds `wire` to a fresh decoder in pieces cut at `cuts`, then EOF; returns the frames
/// decoded and whether the stream ended in an error.
fn open_all(cipher: &Cipher, wire: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, Option<std::io::Error>) {
    let mut codec = FrameCodec::new(cipher.clone(), MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    let mut at = 0;
    for point in points {
        buf.extend_from_slice(&wire[at..point]);
        at = point;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame.to_vec()),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(Some(frame)) => frames.push(frame.to_vec()),
        Ok(None) => {}
        Err(e) => return (frames, Some(e)),
    }
    (frames, None)
}

#[test]
fn frames_of_every_size_survive_sealing_in_order() {
    let (client, server) = ciphers();
    let sizes = [0, 1, Cipher::MAX_PLAINTEXT - 4, Cipher::MAX_PLAINTEXT - 3, Cipher::MAX_PLAINTEXT, 200_000, MAX_FRAME];
    let frames: Vec<Vec<u8>> = sizes.iter().map(|&n| (0..n).map(|i| (i % 251) as u8).collect()).collect();
    let wire = seal_all(&client, &frames);
    // The chunking is the protocol's: no sealed message over Noise's limit.
    let (opened, err) = open_all(&server, &wire, &[]);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(opened, frames);
    // The plaintext is nowhere in the sealed bytes.
    let needle = &frames[5][1000..1032];
    assert!(!wire.windows(needle.len()).any(|w| w == needle));
    // The reverse direction has its own keys: our own frames do not open as the peer's.
    let (opened, err) = open_all(&client, &wire, &[]);
    assert!(opened.is_empty() && err.is_some());
}

#[test]
fn a_frame_over_the_limit_is_refused_when_sending_and_when_receiving() {
    let (client, server) = ciphers();
    let mut codec = FrameCodec::new(client.clone(), MAX_FRAME);
    let err = codec.encode(Bytes::from(vec![0u8; MAX_FRAME + 1]), &mut BytesMut::new()).unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");

    // A peer with a larger limit sends one anyway: refused from its first chunk, which
    // is all the receiver buffered.
    let wire = {
        let mut big = FrameCodec::new(client, 4 * MAX_FRAME);
        let mut wire = BytesMut::new();
        big.encode(Bytes::from(vec![7u8; MAX_FRAME + 1]), &mut wire).unwrap();
        wire
    };
    let ((frames, err), largest) = largest_allocation(|| open_all(&server, &wire[..Cipher::MAX_SEALED + 4], &[]));
    assert!(frames.is_empty());
    let err = err.expect("refused");
    assert!(err.to_string().contains("over this node's limit"), "{err}");
    assert!(largest < 2 * Cipher::MAX_SEALED, "allocated {largest} bytes");
}

#[test]
fn an_announced_gigantic_frame_costs_only_what_arrives() {
    let (client, server) = ciphers();
    // The first chunk announces the limit itself, then the peer sends three chunks and stops.
    let mut first = (MAX_FRAME as u32).to_be_bytes().to_vec();
    first.extend_from_slice(&[1u8; 1000]);
    let mut wire = chunk(&client, 0, &first);
    for nonce in 1..4 {
        wire.extend(chunk(&client, nonce, &[2u8; 1000]));
    }
    let ((frames, err), largest) = largest_allocation(|| open_all(&server, &wire, &[]));
    assert!(frames.is_empty());
    assert!(err.expect("cut short").to_string().contains("ended inside a frame"));
    assert!(largest < 2 * Cipher::MAX_SEALED, "allocated {largest} bytes for 4 KB received");

    // Announcing more than the limit (u32::MAX) is refused at once.
    let wire = chunk(&client, 0, &u32::MAX.to_be_bytes());
    let (_, err) = open_all(&server, &wire, &[]);
    assert!(err.unwrap().to_string().contains("over this node's limit"));
}

#[test]
fn chunks_replayed_reordered_or_running_past_their_frame_close_the_stream() {
    let (client, server) = ciphers();
    let frame = |n: u8| {
        let mut p = 3u32.to_be_bytes().to_vec();
        p.extend_from_slice(&[n; 3]);
        p
    };
    let (a, b) = (chunk(&client, 0, &frame(1)), chunk(&client, 1, &frame(2)));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("replayed", [a.clone(), a.clone()].concat()),
        ("reordered", [b.clone(), a.clone()].concat()),
        ("dropped", b.clone()),
        ("a chunk past its frame's end", chunk(&client, 0, &[0, 0, 0, 1, 9, 9])),
        ("no room for the length", chunk(&client, 0, &[0, 0])),
        ("an empty chunk", chunk(&client, 0, &[])),
        ("a tag but no body", {
            let mut w = 16u32.to_be_bytes().to_vec();
            w.extend_from_slice(&[0; 16]);
            w
        }),
        ("shorter than a tag", vec![0, 0, 0, 3, 1, 2, 3]),
        ("over Noise's limit", (Cipher::MAX_SEALED as u32 + 1).to_be_bytes().to_vec()),
        ("gigabytes", u32::MAX.to_be_bytes().to_vec()),
    ];
    for (name, wire) in cases {
        let ((frames, err), largest) = largest_allocation(|| open_all(&server, &wire, &[]));
        assert!(err.is_some(), "{name}: accepted, got {frames:?}");
        assert!(largest < 2 * Cipher::MAX_SEALED, "{name}: allocated {largest} bytes");
    }
    // The genuine order opens.
    let (frames, err) = open_all(&server, &[a, b].concat(), &[]);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(frames, vec![vec![1; 3], vec![2; 3]]);
}

#[test]
fn a_stream_cut_right_after_a_chunk_length_is_no_clean_close() {
    let (client, server) = ciphers();
    let frames = vec![vec![1u8; 10], vec![2u8; 10]];
    let one = seal_all(&client, &frames[..1]).len();
    let wire = seal_all(&client, &frames);
    // Cut after the first chunk's length, then after the second's (found by the fuzzing of
    // `a_truncated_stream_yields_its_whole_frames_then_an_error`).
    for (cut, whole) in [(4, 0), (one + 4, 1)] {
        let (opened, err) = open_all(&server, &wire[..cut], &[]);
        assert_eq!(opened, frames[..whole]);
        let err = err.unwrap_or_else(|| panic!("a stream cut at {cut} ended cleanly"));
        assert!(err.to_string().contains("ended inside a chunk"), "{err}");
    }
}

/// Cases per property: 64 in the test suite; `.ci/run` fuzzes with many more through
/// `RAFTSHARE_FUZZ_CASES`.
fn fuzz_cases() -> u32 {
    std::env::var("RAFTSHARE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    /// What a key holder can put in a frame: any bytes, or a real admin request with
    /// bytes changed, inserted or cut, and batches nested at any depth. Decoding ends in
    /// a value or an error, never a panic or an overflowed stack.
    #[test]
    fn hostile_requests_decode_to_a_value_or_an_error(
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
        depth in 0usize..20_000,
    ) {
        let _ = decode::<Envelope<Request>>(&bytes, MAX_FRAME);
        let mut request = nested_batch_request(1, depth, MAX_FRAME);
        let nested = decode::<Envelope<Request>>(&request, MAX_FRAME);
        prop_assert_eq!(nested.is_ok(), depth <= 1, "depth {}", depth);
        for (at, byte) in edits {
            let at = at % request.len();
            request[at] = byte;
            let _ = decode::<Envelope<Request>>(&request, MAX_FRAME);
        }
        request.truncate(cut % (request.len() + 1));
        let _ = decode::<Envelope<Request>>(&request, MAX_FRAME);
        let _ = decode::<AdminRequest>(&request, MAX_FRAME);
    }

    #[test]
    fn sealed_frames_survive_any_split_of_the_byte_stream(
        sizes in proptest::collection::vec(0usize..150_000, 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let (client, server) = ciphers();
        let frames: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![i as u8; n]).collect();
        let wire = seal_all(&client, &frames);
        let (opened, err) = open_all(&server, &wire, &cuts);
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert_eq!(opened, frames);
    }

    #[test]
    fn a_truncated_stream_yields_its_whole_frames_then_an_error(
        sizes in proptest::collection::vec(0usize..100_000, 1..4),
        cut in any::<usize>(),
    ) {
        let (client, server) = ciphers();
        let frames: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![i as u8; n]).collect();
        let wire = seal_all(&client, &frames);
        let cut = cut % (wire.len() + 1);
        let (opened, err) = open_all(&server, &wire[..cut], &[]);
        prop_assert!(opened.len() <= frames.len());
        prop_assert_eq!(&opened[..], &frames[..opened.len()]);
        // Only a cut exactly between frames is a clean end.
        prop_assert_eq!(err.is_none(), seal_all(&client, &frames[..opened.len()]).len() == cut);
    }

    #[test]
    fn arbitrary_bytes_never_open_and_never_allocate_much(
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let (_, server) = ciphers();
        let ((frames, _), largest) = largest_allocation(|| open_all(&server, &bytes, &cuts));
        prop_assert!(frames.is_empty());
        prop_assert!(largest < 2 * Cipher::MAX_SEALED, "allocated {} bytes", largest);
    }

    #[test]
    fn flipping_any_bit_of_a_sealed_stream_is_caught(
        size in 0usize..100_000,
        at in any::<usize>(),
        bit in 0u8..8,
    ) {
        let (client, server) = ciphers();
        let frame = vec![5u8; size];
        let mut wire = seal_all(&client, std::slice::from_ref(&frame)).to_vec();
        let at = at % wire.len();
        wire[at] ^= 1 << bit;
        let (opened, err) = open_all(&server, &wire, &[]);
        prop_assert!(opened.is_empty(), "a flipped bit at {} went through", at);
        prop_assert!(err.is_some());
    }

    #[test]
    fn hostile_chunk_plaintexts_from_a_key_holder_fail_cleanly(
        plaintexts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..6),
        gigantic in any::<bool>(),
    ) {
        let (client, server) = ciphers();
        let mut wire = Vec::new();
        for (nonce, plain) in plaintexts.iter().enumerate() {
            let mut plain = plain.clone();
            if gigantic && nonce == 0 && plain.len() >= 4 {
                plain[..4].copy_from_slice(&(MAX_FRAME as u32 - 1).to_be_bytes());
            }
            wire.extend(chunk(&client, nonce as u64, &plain));
        }
        let ((frames, _), largest) = largest_allocation(|| open_all(&server, &wire, &[]));
        prop_assert!(frames.iter().all(|f| f.len() <= MAX_FRAME));
        prop_assert!(largest < 2 * Cipher::MAX_SEALED, "allocated {} bytes", largest);
    }
}

/// What a hostile peer sends after a real handshake, made with its session's cipher.
type Hostile = Box<dyn Fn(&Cipher) -> Vec<u8>>;

#[tokio::test]
async fn a_real_server_closes_hostile_connections_and_keeps_serving() {
    let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;
    let good = Client::connect(&server.addr(), &config(1, None)).await.unwrap();
    let log = |i: u64| Request::Admin(AdminRequest::Log { from: Some(i), limit: None });

    let hostile: Vec<(&str, Hostile)> = vec![
        ("plaintext request", Box::new(|_| vec![0, 0, 0, 4, 1, 2, 3, 4])),
        ("garbage", Box::new(|_| (0..5000u32).map(|i| (i * 7 % 256) as u8).collect())),
        ("gigabytes announced", Box::new(|_| u32::MAX.to_be_bytes().to_vec())),
        ("a key holder's frame over the limit", Box::new(|c| chunk(c, 0, &u32::MAX.to_be_bytes()))),
        ("a key holder's unknown frame kind", Box::new(|c| chunk(c, 0, &[0, 0, 0, 2, 0xff, 0xff]))),
        (
            "a key holder's replayed chunk",
            Box::new(|c| [chunk(c, 0, &[0, 0, 0, 1]), chunk(c, 0, &[0, 0, 0, 1])].concat()),
        ),
    ];
    for (name, bytes) in hostile {
        let mut io = handshake::framed(TcpStream::connect(server.addr).await.unwrap());
        let session =
            handshake::connect(&mut io, &config(1, None).key, &Identity::generate(), None, WAIT).await.unwrap();
        let mut raw = io.into_inner();
        raw.write_all(&bytes(&session.cipher)).await.unwrap();
        until_closed(&mut raw).await;
        let answer = good.call(log(7), WAIT).await.unwrap_or_else(|e| panic!("after {name}: {e}"));
        assert!(matches!(answer, Response::Admin(AdminResponse::Done(ref t)) if t == "7"), "after {name}: {answer:?}");
    }
    let fresh = Client::connect(&server.addr(), &config(1, None)).await.unwrap();
    assert!(fresh.call(log(8), WAIT).await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn five_thousand_nested_batches_get_an_error_answer_and_the_connection_keeps_serving() {
    let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;
    let mut io = handshake::framed(TcpStream::connect(server.addr).await.unwrap());
    let session = handshake::connect(&mut io, &config(1, None).key, &Identity::generate(), None, WAIT).await.unwrap();
    let (read, mut write) = io.into_inner().into_split();
    let mut sealer = FrameCodec::new(session.cipher.clone(), MAX_FRAME);
    let mut wire = BytesMut::new();
    let hostile = nested_batch_request(7, 5_000, MAX_FRAME);
    assert!(hostile.len() < 12 << 10, "a frame of {} bytes", hostile.len());
    sealer.encode(Bytes::from(hostile), &mut wire).unwrap();
    let ping = encode(&Envelope { id: 8, body: Request::Admin(AdminRequest::Ping) }, MAX_FRAME).unwrap();
    sealer.encode(Bytes::from(ping), &mut wire).unwrap();
    write.write_all(&wire).await.unwrap();

    let mut answers = tokio_util::codec::FramedRead::new(read, FrameCodec::new(session.cipher, MAX_FRAME));
    async fn next<S: futures::Stream<Item = std::io::Result<BytesMut>> + Unpin>(answers: &mut S) -> Envelope<Response> {
        let frame = tokio::time::timeout(WAIT, futures::StreamExt::next(answers)).await;
        let frame = frame.expect("an answer in time").expect("an answer, not the end").expect("a good frame");
        decode::<Envelope<Response>>(&frame, MAX_FRAME).unwrap()
    }
    let first = next(&mut answers).await;
    assert_eq!(first.id, 7);
    let Response::Error(why) = first.body else { panic!("{:?}", first.body) };
    assert!(why.contains("a batch inside a batch") && why.contains("flat batch"), "{why}");
    let second = next(&mut answers).await;
    assert!(matches!((second.id, second.body), (8, Response::Admin(AdminResponse::Pong(_)))));
    server.stop().await;
}

/// The cost of sealing, measured: `cargo test -p raftshare-raft --release --test frames --
/// --ignored --nocapture`. Prints the codec's throughput with and without encryption, and a
/// real server's over 127.0.0.1.
#[test]
#[ignore = "a measurement, not a check"]
fn measure_the_cost_of_sealing() {
    let (client, server) = ciphers();
    let frame = Bytes::from(vec![0x5au8; 1 << 20]);
    let total = 256;

    let started = Instant::now();
    let (mut seal, mut open) = (FrameCodec::new(client, 1 << 21), FrameCodec::new(server, 1 << 21));
    let mut wire = BytesMut::new();
    for _ in 0..total {
        seal.encode(frame.clone(), &mut wire).unwrap();
        assert_eq!(open.decode(&mut wire).unwrap().unwrap().len(), frame.len());
    }
    let sealed = started.elapsed();

    let started = Instant::now();
    let mut plain = tokio_util::codec::LengthDelimitedCodec::builder().max_frame_length(1 << 21).new_codec();
    for _ in 0..total {
        plain.encode(frame.clone(), &mut wire).unwrap();
        assert_eq!(plain.decode(&mut wire).unwrap().unwrap().len(), frame.len());
    }
    let unsealed = started.elapsed();
    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    println!("codec, 1 MiB frames: sealed {:.0} MiB/s, plain {:.0} MiB/s", rate(sealed), rate(unsealed));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let server = TestServer::start(config(1, Some(1)), Scripted::default()).await;
        let started = Instant::now();
        let dials = 200;
        for _ in 0..dials {
            Client::connect(&server.addr(), &config(1, None)).await.unwrap();
        }
        println!("handshake over 127.0.0.1: {:?} per connection", started.elapsed() / dials);
        let client = Client::connect(&server.addr(), &config(1, None)).await.unwrap();
        let started = Instant::now();
        let big = Request::Admin(AdminRequest::Log { from: None, limit: Some(8 << 20) });
        for _ in 0..16 {
            client.call(big.clone(), WAIT).await.unwrap();
        }
        println!("8 MiB answers over 127.0.0.1: {:.0} MiB/s", 128.0 / started.elapsed().as_secs_f64());
        server.stop().await;
    });
}
