//! Frames after the handshake: [`FrameCodec`] seals each frame into Noise messages and
//! opens them again (or, on the local socket, frames them alike unsealed), and bincode
//! turns frames into `Envelope`s with the same limit on both ends ([`encode`], [`decode`]).
//!
//! It owns bytes only: which connection, which request and what an answer means are the
//! server's and the client's business.

use std::io;
use std::marker::PhantomData;

use bincode::Options;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_serde::formats::Bincode;
use tokio_util::bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::codec::{Framed, FramedParts, FramedWrite};

use super::Envelope;
use crate::handshake::Cipher;

type WireOptions = bincode::config::WithOtherLimit<bincode::DefaultOptions, bincode::config::Bounded>;

/// The bincode options of every frame after the handshake. The limit makes an answer
/// too large for a frame fail in the encoder, before anything is written. Decoding needs
/// no limit: bincode reads frames from a slice and checks every length prefix against
/// the bytes actually there, so a frame never makes it allocate more than a frame's worth.
fn wire_options(max_frame: usize) -> WireOptions {
    bincode::DefaultOptions::new().with_limit(max_frame as u64)
}

/// Encodes a value exactly as the transport puts it in a frame (for tests and tools).
pub fn encode<T: Serialize>(value: &T, max_frame: usize) -> Result<Vec<u8>, bincode::Error> {
    wire_options(max_frame).serialize(value)
}

/// Decodes a frame's bytes exactly as the transport does (for tests and tools).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_frame: usize) -> Result<T, bincode::Error> {
    wire_options(max_frame).deserialize(bytes)
}

/// Seals frames into Noise messages and opens them again: the only codec after the handshake.
///
/// On the wire, a frame is one or more chunks, each a 4-byte big-endian length and one
/// sealed Noise message (at most 65535 bytes, so the chunk reader never buffers more).
/// Opened, the chunks of a frame hold the frame's length (4 bytes, big-endian) and then
/// its bytes; a frame always starts a new chunk. Noise numbers the chunks of each
/// direction, so a dropped, replayed, reordered or altered chunk does not open, and the
/// connection is closed.
///
/// `max_frame` is checked against the length in a frame's first chunk, and the frame's
/// buffer grows with the chunks that really arrive: a peer that announces a large frame
/// and sends little costs little.
#[derive(Debug)]
pub struct FrameCodec {
    /// `None` on the local socket: chunks are framed alike but not sealed.
    cipher: Option<Cipher>,
    /// The number of the next chunk in our direction (writing) or the peer's (reading).
    nonce: u64,
    max_frame: usize,
    /// The frame being read: its announced length and the bytes so far.
    partial: Option<(usize, BytesMut)>,
    /// One chunk's plaintext, reused.
    scratch: Vec<u8>,
}

/// The bytes of a frame's length, in front of its first chunk's plaintext.
const FRAME_HEADER: usize = 4;

impl FrameCodec {
    /// A codec for one direction of a connection keyed by `cipher`; use one for reading
    /// and another for writing.
    pub fn new(cipher: Cipher, max_frame: usize) -> Self {
        Self::with(Some(cipher), max_frame)
    }

    /// A codec that frames alike but seals nothing: for the local socket only, where the
    /// bytes never leave this machine and the socket file's permissions admit the peer.
    pub fn plain(max_frame: usize) -> Self {
        Self::with(None, max_frame)
    }

    fn with(cipher: Option<Cipher>, max_frame: usize) -> Self {
        FrameCodec { cipher, nonce: 0, max_frame: max_frame.min(u32::MAX as usize), partial: None, scratch: Vec::new() }
    }

    fn open_chunk(&mut self, sealed: &[u8]) -> io::Result<()> {
        let len = match &self.cipher {
            Some(cipher) => {
                self.scratch.resize(sealed.len().saturating_sub(Cipher::TAG_LEN), 0);
                cipher.open(self.nonce, sealed, &mut self.scratch).map_err(|e| invalid_data(e.to_string()))?
            }
            None => {
                self.scratch.clear();
                self.scratch.extend_from_slice(sealed);
                sealed.len()
            }
        };
        self.nonce += 1;
        let mut plain = &self.scratch[..len];
        let (want, buf) = match &mut self.partial {
            Some(partial) => partial,
            None => {
                let Some((header, rest)) = plain.split_first_chunk::<FRAME_HEADER>() else {
                    return Err(invalid_data("a frame's first chunk is shorter than its length".into()));
                };
                let want = u32::from_be_bytes(*header) as usize;
                if want > self.max_frame {
                    return Err(invalid_data(format!(
                        "a frame of {want} bytes is over this node's limit of {} bytes",
                        self.max_frame
                    )));
                }
                plain = rest;
                self.partial.insert((want, BytesMut::with_capacity(want.min(Cipher::MAX_PLAINTEXT))))
            }
        };
        if plain.len() > *want - buf.len() {
            return Err(invalid_data("a chunk runs past the end of its frame".into()));
        }
        buf.extend_from_slice(plain);
        Ok(())
    }
}

/// The next whole sealed chunk at the front of `src`, once it has all arrived. Nothing is
/// taken from `src` before then, so a stream that ends inside a chunk, even right after
/// its length, ends with bytes left over: an error, not a clean close (tokio's
/// `LengthDelimitedCodec` kept a length it had read to itself, and a stream cut just
/// after one looked cleanly closed).
fn next_chunk(src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
    let Some(head) = src.first_chunk::<4>() else { return Ok(None) };
    let len = u32::from_be_bytes(*head) as usize;
    if len > Cipher::MAX_SEALED {
        return Err(invalid_data(format!("a chunk of {len} bytes is over the limit of {} bytes", Cipher::MAX_SEALED)));
    }
    let whole = 4 + len;
    if src.len() < whole {
        src.reserve(whole - src.len());
        return Ok(None);
    }
    let mut chunk = src.split_to(whole);
    Ok(Some(chunk.split_off(4)))
}

fn invalid_data(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        loop {
            if let Some((want, buf)) = &self.partial {
                if buf.len() == *want {
                    return Ok(self.partial.take().map(|(_, buf)| buf));
                }
            }
            let Some(sealed) = next_chunk(src)? else { return Ok(None) };
            self.open_chunk(&sealed)?;
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if !src.is_empty() => Err(invalid_data("the stream ended inside a chunk (bytes remaining)".into())),
            None if self.partial.is_some() => Err(invalid_data("the stream ended inside a frame".into())),
            None => Ok(None),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        if frame.len() > self.max_frame {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a frame of {} bytes is over the limit of {} bytes", frame.len(), self.max_frame),
            ));
        }
        let mut rest = &frame[..];
        let mut header = Some((frame.len() as u32).to_be_bytes());
        // A frame always has a first chunk, even when empty: it carries the length.
        while header.is_some() || !rest.is_empty() {
            self.scratch.clear();
            if let Some(header) = header.take() {
                self.scratch.extend_from_slice(&header);
            }
            let take = rest.len().min(Cipher::MAX_PLAINTEXT - self.scratch.len());
            self.scratch.extend_from_slice(&rest[..take]);
            rest = &rest[take..];

            let Some(cipher) = &self.cipher else {
                dst.reserve(4 + self.scratch.len());
                dst.put_u32(self.scratch.len() as u32);
                dst.extend_from_slice(&self.scratch);
                continue;
            };
            let sealed_len = self.scratch.len() + Cipher::TAG_LEN;
            dst.reserve(4 + sealed_len);
            dst.put_u32(sealed_len as u32);
            let start = dst.len();
            dst.resize(start + sealed_len, 0);
            cipher
                .seal(self.nonce, &self.scratch, &mut dst[start..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            self.nonce += 1;
        }
        Ok(())
    }
}

/// A connection's read half, whatever the socket (TCP or Unix).
pub(super) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// A connection's write half.
pub(super) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Reads frames and decodes them into `Envelope<T>`s; a frame that does not decode is
/// reported with its id when the id can be read, since the stream is still in step (the
/// codec, not bincode, knows where frames end).
pub(super) struct FrameReader<T> {
    frames: Framed<ReadHalf, FrameCodec>,
    max_frame: usize,
    kind: PhantomData<fn() -> T>,
}

/// One frame read: an envelope, or a frame whose body did not decode.
pub(super) enum Incoming<T> {
    Envelope(Envelope<T>),
    /// The frame's id (if even that did not decode) and why its body did not.
    Undecodable {
        id: Option<u64>,
        error: bincode::Error,
    },
}

impl<T: DeserializeOwned> FrameReader<T> {
    /// The next frame; `None` once the peer closed cleanly. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<io::Result<Incoming<T>>> {
        let frame = match self.frames.next().await? {
            Ok(frame) => frame,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(match decode::<Envelope<T>>(&frame, self.max_frame) {
            Ok(envelope) => Incoming::Envelope(envelope),
            Err(error) => {
                let id = wire_options(self.max_frame).allow_trailing_bytes().deserialize::<u64>(&frame).ok();
                Incoming::Undecodable { id, error }
            }
        }))
    }
}

pub(super) type FrameWriter<T> =
    tokio_serde::Framed<FramedWrite<WriteHalf, FrameCodec>, (), Envelope<T>, Bincode<(), Envelope<T>, WireOptions>>;

/// Turns a connection's halves (and the bytes already read behind the handshake) into
/// typed frame halves, so reading and writing never wait on each other. `cipher` seals
/// them; `None` only on the local socket.
pub(super) fn frames<In, Out>(
    read: ReadHalf,
    write: WriteHalf,
    read_buf: BytesMut,
    cipher: Option<Cipher>,
    max_frame: usize,
) -> (FrameReader<In>, FrameWriter<Out>)
where
    In: DeserializeOwned,
    Out: Serialize,
{
    // Bytes that arrived behind the last handshake frame belong to the first request: the
    // client sends it right behind `Finish`. Handed over as parts, they are decoded
    // before the socket is read again (a plain `FramedRead` would wait for more bytes).
    let mut parts = FramedParts::new::<Bytes>(read, FrameCodec::with(cipher.clone(), max_frame));
    parts.read_buf = read_buf;
    let reader = FrameReader { frames: Framed::from_parts(parts), max_frame, kind: PhantomData };
    let write = FramedWrite::new(write, FrameCodec::with(cipher, max_frame));
    (reader, tokio_serde::Framed::new(write, Bincode::from(wire_options(max_frame))))
}

/// The halves of a handshaken TCP connection, with the bytes read behind the handshake.
pub(super) fn tcp_halves(
    framed: Framed<tokio::net::TcpStream, tokio_util::codec::LengthDelimitedCodec>,
) -> (ReadHalf, WriteHalf, BytesMut) {
    let parts = framed.into_parts();
    let (read, write) = parts.io.into_split();
    (Box::new(read), Box::new(write), parts.read_buf)
}

/// A value that could not be framed (too large, unencodable) fails in the codec before
/// anything is written, so the connection is still good: tell it from a socket error.
/// (The codec's own length check never fires first: bincode's limit is the frame limit.)
pub(super) fn is_encode_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<bincode::Error>())
}
