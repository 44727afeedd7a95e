//! The Noise side of the handshake: the two suites (AES-256-GCM when both sides have AES
//! in hardware, else ChaCha20-Poly1305), building the Noise handshake state from the
//! pre-shared key, and [`Cipher`], the keys it leaves each connection with.
//!
//! It never sees a message or a proof: the protocol (in `handshake`) carries the Noise
//! messages inside its own and derives the pre-shared key.

use std::fmt;
use std::sync::Arc;

use super::HandshakeError;

/// The Noise protocol that keys a connection between two nodes with AES in hardware:
/// `XX` (both sides send their static X25519 key, their identity, encrypted, and prove it
/// by Diffie-Hellman), ephemeral keys for forward secrecy, AES-256-GCM, BLAKE2s, and a
/// pre-shared key derived from the cluster key mixed in at the end (`psk3`).
pub const NOISE_AES: &str = "Noise_XXpsk3_25519_AESGCM_BLAKE2s";

/// The same with ChaCha20-Poly1305, for a connection where a side lacks AES instructions.
pub const NOISE_CHACHA: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";

/// Room for any of the handshake's Noise messages (the largest, `e, ee, s, es`, is 96 bytes).
pub(super) const NOISE_BUF: usize = 256;

/// The cipher that seals a connection's frames, chosen in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// AES-256-GCM: both sides have AES instructions.
    Aes,
    /// ChaCha20-Poly1305: a side lacks them.
    ChaCha,
}

impl Suite {
    /// The one both sides use: AES only when both have it in hardware.
    pub(super) fn agreed(server_aes: bool, client_aes: bool) -> Self {
        if server_aes && client_aes {
            Suite::Aes
        } else {
            Suite::ChaCha
        }
    }

    fn noise_params(self) -> &'static str {
        match self {
            Suite::Aes => NOISE_AES,
            Suite::ChaCha => NOISE_CHACHA,
        }
    }
}

/// Whether this machine seals AES-GCM in hardware (AES and carry-less multiply
/// instructions); without them ChaCha20-Poly1305 is several times faster.
pub fn hardware_aes() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Binds the Noise handshake to this protocol, so its keys can be used for nothing else.
const NOISE_PROLOGUE: &[u8] = b"raftshare noise v3";

/// One connection's transport keys, from its Noise handshake. Clones share the keys; the
/// caller counts nonces (one counter per direction), so a reader and a writer can each
/// hold a clone without locking.
#[derive(Clone)]
pub struct Cipher {
    state: Arc<snow::StatelessTransportState>,
    suite: Suite,
}

/// A sealed message that does not open (altered, replayed, out of order, or too large).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a sealed message failed to open or seal (altered, replayed, out of order or too large)")]
pub struct CipherError;

impl Cipher {
    /// Bytes a sealed message adds to its plaintext (the GCM or Poly1305 tag).
    pub const TAG_LEN: usize = 16;
    /// The largest sealed message Noise allows.
    pub const MAX_SEALED: usize = 65535;
    /// The largest plaintext one sealed message holds.
    pub const MAX_PLAINTEXT: usize = Self::MAX_SEALED - Self::TAG_LEN;

    /// Seals `plaintext` (at most `MAX_PLAINTEXT` bytes) as message number `nonce` of our
    /// direction into `out` (at least `plaintext.len() + TAG_LEN` bytes); returns the sealed length.
    pub fn seal(&self, nonce: u64, plaintext: &[u8], out: &mut [u8]) -> Result<usize, CipherError> {
        self.state.write_message(nonce, plaintext, out).map_err(|_| CipherError)
    }

    /// Opens message number `nonce` of the peer's direction into `out` (at least
    /// `sealed.len() - TAG_LEN` bytes); returns the plaintext length.
    pub fn open(&self, nonce: u64, sealed: &[u8], out: &mut [u8]) -> Result<usize, CipherError> {
        if sealed.len() < Self::TAG_LEN || sealed.len() > Self::MAX_SEALED || out.len() < sealed.len() - Self::TAG_LEN {
            return Err(CipherError);
        }
        self.state.read_message(nonce, sealed, out).map_err(|_| CipherError)
    }

    /// The cipher the handshake chose.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    pub(super) fn new(noise: snow::HandshakeState, suite: Suite) -> Result<Self, HandshakeError> {
        Ok(Cipher { state: Arc::new(noise.into_stateless_transport_mode().map_err(noise_failed)?), suite })
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys.
        f.write_str("Cipher")
    }
}

pub(super) fn noise_builder(suite: Suite, psk: &[u8; 32]) -> snow::Builder<'_> {
    snow::Builder::new(suite.noise_params().parse().expect("the suites' Noise names are valid"))
        .prologue(NOISE_PROLOGUE)
        .psk(3, psk)
}

/// The proofs checked out, so a Noise failure means the messages were altered on the way.
pub(super) fn noise_failed(e: snow::Error) -> HandshakeError {
    HandshakeError::Malformed(format!("the encrypted channel could not be set up ({e}): were the messages altered?"))
}
