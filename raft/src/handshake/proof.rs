//! What a handshake proves: the [`Transcript`] both proofs (and the Noise pre-shared key)
//! are a MAC of, under the cluster key, each with its own context.
//!
//! Pure: no I/O, no messages; the protocol (in `handshake`) decides who proves what when.

use super::PROTOCOL_VERSION;
use crate::key::ClusterKey;

// MAC contexts: distinct so a client's proof can never be replayed as a server's.
pub(super) const CLIENT_PROOF: &str = "handshake client proof";
pub(super) const SERVER_PROOF: &str = "handshake server proof";
pub(super) const NOISE_PSK: &str = "handshake noise psk";

/// What both proofs cover: both nonces (freshness), the cluster id, the version and both
/// AES flags, so a proof made on one connection is valid nowhere else. Identities are not
/// in it: the Noise handshake proves them, keyed by a MAC of this same transcript.
pub(super) struct Transcript<'a> {
    pub(super) cluster_id: &'a str,
    pub(super) nonce_s: &'a [u8; 32],
    pub(super) nonce_c: &'a [u8; 32],
    pub(super) server_aes: bool,
    pub(super) client_aes: bool,
}

impl Transcript<'_> {
    pub(super) fn mac(&self, key: &ClusterKey, context: &str) -> [u8; 32] {
        self.mac_parts(|parts| key.mac(context, parts))
    }

    pub(super) fn verify(&self, key: &ClusterKey, context: &str, tag: &[u8; 32]) -> bool {
        self.mac_parts(|parts| key.verify_mac(context, parts, tag))
    }

    fn mac_parts<T>(&self, with: impl FnOnce(&[&[u8]]) -> T) -> T {
        with(&[
            self.nonce_s,
            self.nonce_c,
            self.cluster_id.as_bytes(),
            &PROTOCOL_VERSION.to_le_bytes(),
            &[u8::from(self.server_aes), u8::from(self.client_aes)],
        ])
    }
}
