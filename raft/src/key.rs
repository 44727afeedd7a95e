//! The cluster key: 32 random bytes that every member holds and that never cross the
//! wire. Everything else is derived from it: the public cluster id (shown to users,
//! sent in beacons and handshakes) and the MAC keys that prove possession of the key.
//!
//! This module owns no I/O; the handshake uses it to compute and check proofs.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;

/// The secret shared by the members of one cluster.
///
/// `Debug` prints the cluster id, never the key, so logging a config is safe.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

/// Why a text is not a cluster key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 64 characters long.
    #[error("a cluster key is 64 hex characters, this one has {0}: copy it whole from `raftshare invite`")]
    Length(usize),
    /// A character that is not a hex digit; the position is 1-based, the character is not
    /// echoed since it is part of a secret.
    #[error(
        "a cluster key is 64 hex characters (0-9, a-f), character {0} is not one: copy it whole from `raftshare invite`"
    )]
    NotHex(usize),
}

impl ClusterKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        ClusterKey(key)
    }

    /// A key from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ClusterKey(bytes)
    }

    /// Parses the 64 hex characters of `to_hex` (surrounding whitespace is ignored, so a
    /// key file's trailing newline does not matter).
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let len = text.chars().count();
        if len != 64 {
            return Err(KeyError::Length(len));
        }
        if let Some(pos) = text.chars().position(|c| !c.is_ascii_hexdigit()) {
            return Err(KeyError::NotHex(pos + 1));
        }
        let mut key = [0u8; 32];
        hex::decode_to_slice(text, &mut key).map_err(|_| KeyError::Length(len))?;
        Ok(ClusterKey(key))
    }

    /// The key as 64 lower-case hex characters, as written to the key file and printed by `invite`.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The public id of the cluster this key makes: 16 hex characters.
    ///
    /// Derived one way from the key, so it can be shown and broadcast without revealing it;
    /// two keys give two ids (but for a 2^-64 chance), which is how a node tells "another
    /// cluster" from "same cluster" before any proof is checked.
    pub fn cluster_id(&self) -> String {
        let derived = blake3::derive_key("raftshare cluster id v1", &self.0);
        hex::encode(&derived[..8])
    }

    /// A MAC over `parts` under a key derived from the cluster key for `context`.
    ///
    /// BLAKE3's keyed mode is a MAC, so no HMAC construction is needed; deriving one key per
    /// context means a proof made for one purpose ("client") is never valid for another
    /// ("server"). Each part is length-prefixed so `["ab", "c"]` and `["a", "bc"]` differ.
    pub fn mac(&self, context: &str, parts: &[&[u8]]) -> [u8; 32] {
        let mac_key = blake3::derive_key(&format!("raftshare mac v1 {context}"), &self.0);
        let mut hasher = blake3::Hasher::new_keyed(&mac_key);
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        *hasher.finalize().as_bytes()
    }

    /// Whether `tag` is `mac(context, parts)`, compared in constant time.
    pub fn verify_mac(&self, context: &str, parts: &[&[u8]], tag: &[u8; 32]) -> bool {
        // blake3::Hash's equality is constant-time: a timing side channel cannot reveal
        // how many bytes of a forged proof were right.
        blake3::Hash::from(self.mac(context, parts)) == blake3::Hash::from(*tag)
    }
}

impl PartialEq for ClusterKey {
    fn eq(&self, other: &Self) -> bool {
        blake3::Hash::from(self.0) == blake3::Hash::from(other.0)
    }
}

impl Eq for ClusterKey {}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(cluster {})", self.cluster_id())
    }
}

impl FromStr for ClusterKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        ClusterKey::from_hex(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrips_and_ignores_surrounding_whitespace() {
        let key = ClusterKey::generate();
        let hex = key.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(ClusterKey::from_hex(&hex).unwrap(), key);
        assert_eq!(ClusterKey::from_hex(&format!("  {hex}\n")).unwrap(), key);
        assert_eq!(ClusterKey::from_hex(&hex.to_uppercase()).unwrap(), key);
        assert_eq!(hex.parse::<ClusterKey>().unwrap(), key);
    }

    #[test]
    fn bad_keys_say_what_a_key_looks_like() {
        let cases = [
            ("", KeyError::Length(0)),
            ("abcd", KeyError::Length(4)),
            (&"a".repeat(65), KeyError::Length(65)),
            (&format!("{}g", "a".repeat(63)), KeyError::NotHex(64)),
            (&format!("é{}", "a".repeat(63)), KeyError::NotHex(1)),
        ];
        for (text, want) in cases {
            let err = ClusterKey::from_hex(text).unwrap_err();
            assert_eq!(err, want, "{text:?}");
            assert!(err.to_string().contains("64 hex characters"), "{err}");
        }
    }

    #[test]
    fn cluster_id_is_16_hex_chars_stable_and_differs_per_key() {
        let key = ClusterKey::from_bytes([7; 32]);
        let id = key.cluster_id();
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id, ClusterKey::from_bytes([7; 32]).cluster_id());
        assert_ne!(id, ClusterKey::from_bytes([8; 32]).cluster_id());
        // The id must not be a prefix of the key itself.
        assert!(!key.to_hex().contains(&id));
    }

    #[test]
    fn debug_never_prints_the_key() {
        let key = ClusterKey::generate();
        let shown = format!("{key:?} {:#?}", key);
        assert!(!shown.contains(&key.to_hex()[..16]), "{shown}");
        assert!(shown.contains(&key.cluster_id()));
    }

    #[test]
    fn mac_depends_on_key_context_and_part_boundaries() {
        let key = ClusterKey::from_bytes([1; 32]);
        let tag = key.mac("client", &[b"ab", b"c"]);
        assert!(key.verify_mac("client", &[b"ab", b"c"], &tag));
        assert!(!key.verify_mac("client", &[b"a", b"bc"], &tag));
        assert!(!key.verify_mac("server", &[b"ab", b"c"], &tag));
        assert!(!ClusterKey::from_bytes([2; 32]).verify_mac("client", &[b"ab", b"c"], &tag));
    }
}
