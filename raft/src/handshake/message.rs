//! The handshake's messages and their framing: one [`Message`] enum (so an out-of-turn
//! message still decodes and is named), length-delimited bincode frames of at most
//! [`MAX_HANDSHAKE_FRAME`] bytes, and read errors turned into [`HandshakeError`]s (a
//! hello of another protocol version is named as such, not "malformed").
//!
//! It does not decide what to send or check: the protocol (in `handshake`) does.

use std::io;

use bincode::Options;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::bytes::Bytes;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::{HandshakeError, MAGIC, PROTOCOL_VERSION};

/// The largest handshake frame either side reads: a hello is ~150 bytes, so anything
/// bigger is garbage and must not make us allocate.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;

/// Every handshake message; one enum so an out-of-turn message decodes and is named.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Message {
    ServerHello {
        magic: [u8; 4],
        version: u16,
        cluster_id: String,
        /// Cluster ids of keys this server's rotations replaced.
        replaced: Vec<String>,
        nonce_s: [u8; 32],
        /// The server seals AES-GCM in hardware.
        aes: bool,
    },
    Refused {
        reason: String,
    },
    ClientHello {
        magic: [u8; 4],
        version: u16,
        cluster_id: String,
        nonce_c: [u8; 32],
        proof_c: [u8; 32],
        /// The client seals AES-GCM in hardware.
        aes: bool,
        /// The client's (initiator's) first Noise message.
        noise: Vec<u8>,
    },
    Accept {
        proof_s: [u8; 32],
        /// The server's (responder's) Noise message: its identity, encrypted.
        noise: Vec<u8>,
    },
    Rejected {
        reason: String,
    },
    Finish {
        /// The client's last Noise message: its identity, and the pre-shared key mixed in.
        noise: Vec<u8>,
    },
}

impl Message {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Message::ServerHello { .. } => "ServerHello",
            Message::Refused { .. } => "Refused",
            Message::ClientHello { .. } => "ClientHello",
            Message::Accept { .. } => "Accept",
            Message::Rejected { .. } => "Rejected",
            Message::Finish { .. } => "Finish",
        }
    }
}

/// Wraps a fresh stream in the framing the handshake speaks.
///
/// After a successful handshake the caller raises the codec's maximum frame length
/// (`codec_mut().set_max_frame_length`) or takes the parts to frame requests.
pub fn framed<S: AsyncRead + AsyncWrite>(io: S) -> Framed<S, LengthDelimitedCodec> {
    Framed::new(io, LengthDelimitedCodec::builder().max_frame_length(MAX_HANDSHAKE_FRAME).new_codec())
}

pub(super) fn options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_HANDSHAKE_FRAME as u64)
}

pub(super) async fn send<S>(io: &mut Framed<S, LengthDelimitedCodec>, msg: &Message) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let bytes = options().serialize(msg).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    io.send(Bytes::from(bytes)).await.map_err(HandshakeError::Io)
}

/// Flushes and shuts our write side, so the peer reads everything we sent, then EOF.
pub(super) async fn close<S>(io: &mut Framed<S, LengthDelimitedCodec>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    SinkExt::<Bytes>::close(io).await
}

pub(super) async fn recv<S>(io: &mut Framed<S, LengthDelimitedCodec>) -> Result<Message, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match io.next().await {
        None => Err(HandshakeError::Closed),
        Some(Ok(frame)) => options().deserialize(&frame).map_err(|e| {
            // A hello of another version need not decode: say which version it is.
            match other_version(&frame) {
                Some(theirs) => HandshakeError::Version { ours: PROTOCOL_VERSION, theirs },
                None => HandshakeError::Malformed(e.to_string()),
            }
        }),
        // The codec says InvalidData for a length over the limit.
        Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => Err(HandshakeError::Malformed(e.to_string())),
        Some(Err(e)) => Err(match e.kind() {
            // A frame cut short by EOF surfaces as `Other("bytes remaining on stream")`.
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::Other => HandshakeError::Closed,
            _ => HandshakeError::Io(e),
        }),
    }
}

/// The version of a hello that did not decode, when it is a raftshare hello of another
/// version: every version's hellos start with the message tag, `magic` and `version`.
fn other_version(frame: &[u8]) -> Option<u16> {
    const SERVER_HELLO: u32 = 0;
    const CLIENT_HELLO: u32 = 2;
    let (tag, magic, version): (u32, [u8; 4], u16) = options().allow_trailing_bytes().deserialize(frame).ok()?;
    ((tag == SERVER_HELLO || tag == CLIENT_HELLO) && magic == MAGIC && version != PROTOCOL_VERSION).then_some(version)
}
