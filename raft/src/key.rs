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

/// The Noise pattern that seals a new cluster key to one member: a one-way message to the
/// member's static X25519 key (like a sealed box), readable only with its private key.
const SEAL_PARAMS: &str = "Noise_N_25519_ChaChaPoly_BLAKE2s";

/// A node's own X25519 key pair: made once at `init`, kept in its data dir, its private
/// half never sent. Its public half is in the membership: every handshake proves it (so
/// a peer is known by its identity, not by the node id it might claim), and a new
/// cluster key can be sealed to each member (see [`ClusterKey::seal_for`]) and opened by
/// that member alone.
#[derive(Clone)]
pub struct Identity {
    private: [u8; 32],
    public: [u8; 32],
}

impl Identity {
    /// A new key pair from the operating system's generator.
    pub fn generate() -> Identity {
        let pair = snow::Builder::new(SEAL_PARAMS.parse().expect("SEAL_PARAMS is a valid Noise name"))
            .generate_keypair()
            .expect("the default resolver makes X25519 key pairs");
        let mut identity = Identity { private: [0; 32], public: [0; 32] };
        identity.private.copy_from_slice(&pair.private);
        identity.public.copy_from_slice(&pair.public);
        identity
    }

    /// The public half: what peers see in the handshake and the membership lists.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The private half, for the handshake's Diffie-Hellman; never leaves this crate.
    pub(crate) fn private_key(&self) -> &[u8; 32] {
        &self.private
    }

    /// The public half, as 64 hex characters (what the membership shows).
    pub fn public_hex(&self) -> String {
        hex::encode(self.public)
    }

    /// Both halves as one line of text, for the identity file.
    pub fn to_text(&self) -> String {
        format!("{} {}", hex::encode(self.private), hex::encode(self.public))
    }

    /// Reads `to_text`'s form back.
    pub fn from_text(text: &str) -> Option<Identity> {
        let mut parts = text.split_whitespace();
        let (private, public) = (parts.next()?, parts.next()?);
        let mut identity = Identity { private: [0; 32], public: [0; 32] };
        hex::decode_to_slice(private, &mut identity.private).ok()?;
        hex::decode_to_slice(public, &mut identity.public).ok()?;
        parts.next().is_none().then_some(identity)
    }

    /// Opens a key sealed to this identity for rotation `epoch`; `None` if it was sealed to
    /// another identity or epoch, or altered.
    pub fn open(&self, epoch: u64, sealed: &[u8]) -> Option<ClusterKey> {
        let prologue = seal_prologue(epoch);
        let mut noise = snow::Builder::new(SEAL_PARAMS.parse().ok()?)
            .prologue(&prologue)
            .local_private_key(&self.private)
            .build_responder()
            .ok()?;
        let mut out = [0u8; 128];
        let len = noise.read_message(sealed, &mut out).ok()?;
        let bytes: [u8; 32] = out[..len].try_into().ok()?;
        Some(ClusterKey(bytes))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity(public {})", self.public_hex())
    }
}

fn seal_prologue(epoch: u64) -> Vec<u8> {
    let mut prologue = b"raftshare key rotation v1 epoch ".to_vec();
    prologue.extend_from_slice(&epoch.to_le_bytes());
    prologue
}

impl ClusterKey {
    /// This key sealed to the member whose identity's public half is `public_hex`, for
    /// rotation `epoch`: only that member can open it (`Identity::open`), and only as the
    /// key of that epoch. `None` if `public_hex` is not a public key.
    pub fn seal_for(&self, public_hex: &str, epoch: u64) -> Option<Vec<u8>> {
        let mut public = [0u8; 32];
        hex::decode_to_slice(public_hex, &mut public).ok()?;
        let prologue = seal_prologue(epoch);
        let mut noise = snow::Builder::new(SEAL_PARAMS.parse().ok()?)
            .prologue(&prologue)
            .remote_public_key(&public)
            .build_initiator()
            .ok()?;
        let mut out = [0u8; 128];
        let len = noise.write_message(&self.0, &mut out).ok()?;
        Some(out[..len].to_vec())
    }
}

/// The keys a node holds: the cluster key it uses, the rotation epoch it came from, and
/// the keys it replaced. Shared (clones see the same keys) so a rotation takes effect for
/// the server and every new connection at once.
///
/// A peer that proves only a replaced key is served nothing but its sealed new key (see
/// the transport), so a member that was away when the key changed can catch up, while a
/// removed computer, which has no sealed copy of its own, learns nothing.
#[derive(Clone, Debug)]
pub struct Keyring(std::sync::Arc<std::sync::RwLock<KeyringState>>);

#[derive(Debug)]
struct KeyringState {
    current: ClusterKey,
    epoch: u64,
    replaced: Vec<ClusterKey>,
}

impl Keyring {
    /// A keyring holding `current` (of rotation `epoch`, 0 for the key made at bootstrap)
    /// and the keys it replaced, oldest first.
    pub fn new(current: ClusterKey, epoch: u64, replaced: Vec<ClusterKey>) -> Keyring {
        Keyring(std::sync::Arc::new(std::sync::RwLock::new(KeyringState { current, epoch, replaced })))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyringState> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The key in use.
    pub fn current(&self) -> ClusterKey {
        self.read().current.clone()
    }

    /// The rotation the key in use came from.
    pub fn epoch(&self) -> u64 {
        self.read().epoch
    }

    /// The public cluster id of the key in use.
    pub fn cluster_id(&self) -> String {
        self.read().current.cluster_id()
    }

    /// The keys replaced by rotations, oldest first.
    pub fn replaced(&self) -> Vec<ClusterKey> {
        self.read().replaced.clone()
    }

    /// A replaced key whose cluster id is `cluster_id`.
    pub fn replaced_with_id(&self, cluster_id: &str) -> Option<ClusterKey> {
        self.read().replaced.iter().find(|k| k.cluster_id() == cluster_id).cloned()
    }

    /// Use `key`, of rotation `epoch`, from now on; the key in use joins the replaced
    /// ones. Returns whether the key changed: not for an older rotation, nor for the key
    /// in use (whose epoch is then just recorded).
    pub fn install(&self, key: ClusterKey, epoch: u64) -> bool {
        let mut state = self.0.write().unwrap_or_else(|p| p.into_inner());
        if epoch < state.epoch {
            return false;
        }
        if state.current == key {
            state.epoch = epoch;
            return false;
        }
        let old = std::mem::replace(&mut state.current, key);
        if !state.replaced.contains(&old) {
            state.replaced.push(old);
        }
        let current = state.current.clone();
        state.replaced.retain(|k| *k != current);
        state.epoch = epoch;
        true
    }
}

impl From<ClusterKey> for Keyring {
    fn from(key: ClusterKey) -> Keyring {
        Keyring::new(key, 0, vec![])
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
    fn a_sealed_key_opens_only_for_its_member_and_epoch() {
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let key = ClusterKey::generate();
        let sealed = key.seal_for(&alice.public_hex(), 3).unwrap();
        assert_eq!(alice.open(3, &sealed), Some(key.clone()));
        assert_eq!(bob.open(3, &sealed), None, "another member cannot open it");
        assert_eq!(alice.open(4, &sealed), None, "nor can it pass for another rotation");
        let mut altered = sealed.clone();
        altered[40] ^= 1;
        assert_eq!(alice.open(3, &altered), None);
        assert!(!contains(&sealed, key.to_hex().as_bytes()) && !contains(&sealed, &key.0));
        assert_eq!(key.seal_for("not hex", 3), None);
        // Two seals of one key differ (fresh ephemeral keys).
        assert_ne!(key.seal_for(&alice.public_hex(), 3).unwrap(), sealed);
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn identities_roundtrip_as_text_and_hide_the_private_half() {
        let id = Identity::generate();
        let back = Identity::from_text(&id.to_text()).unwrap();
        assert_eq!(back.public_hex(), id.public_hex());
        assert!(!format!("{id:?}").contains(&hex::encode(id.private)));
        assert!(Identity::from_text("abc").is_none());
        assert!(Identity::from_text(&format!("{} extra", id.to_text())).is_none());
    }

    #[test]
    fn a_keyring_installs_newer_keys_and_remembers_the_replaced_ones() {
        let (k0, k1, k2) = (ClusterKey::generate(), ClusterKey::generate(), ClusterKey::generate());
        let ring = Keyring::from(k0.clone());
        let clone = ring.clone();
        assert!(ring.install(k1.clone(), 1));
        assert_eq!((clone.current(), clone.epoch()), (k1.clone(), 1), "clones share the keys");
        assert!(!ring.install(k1.clone(), 1), "the same key again changes nothing");
        assert!(!ring.install(k2.clone(), 0), "an older rotation changes nothing");
        assert!(ring.install(k2.clone(), 2));
        assert_eq!(ring.replaced(), vec![k0.clone(), k1.clone()]);
        assert_eq!(ring.replaced_with_id(&k0.cluster_id()), Some(k0));
        assert_eq!(ring.replaced_with_id(&k2.cluster_id()), None);
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
