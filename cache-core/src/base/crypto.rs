//! Authenticated encryption of values at rest: XChaCha20-Poly1305 (RustCrypto), keyed per
//! cache root or per scope, with key ids in the envelope so keys can rotate.
//!
//! An encrypted entry is the usual envelope (see `codec.rs`) with the encrypted flag set and
//! this payload:
//!
//! ```text
//! 4     key id: the first bytes of SHA-256("cache-rs key id" || key); picks the key to try
//! 24    nonce, random from the OS generator for every write
//! ...   ciphertext of the (possibly compressed) JSON or raw payload
//! 16    Poly1305 tag
//! ```
//!
//! The associated data is the full Redis key followed by everything of the envelope before the
//! payload (header and tag list), so the metadata that stays readable (timestamps, schema
//! fingerprint, tag versions) cannot be changed, and a ciphertext copied under another key
//! does not open. Anything that does not open (another key, a flipped byte, a cut) is a miss.
//!
//! Why XChaCha20-Poly1305 rather than AES-GCM: nonces here are random (a cache has no
//! counter shared by all its writers), and 96-bit random nonces must stay well below 2^32
//! messages per key, a number a busy cache reaches over a key's lifetime; 192-bit nonces
//! have no such bound. It is also constant-time in software on every platform, where AES-GCM
//! is only with AES instructions.

use std::sync::Arc;

use base64::Engine as _;
use chacha20poly1305::aead::{AeadInOut, Generate, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::base::codec::{self, Envelope};
use crate::base::error::{Error, Result};

const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes an encrypted payload adds to the plaintext.
pub(crate) const OVERHEAD: usize = KEY_ID_LEN + NONCE_LEN + TAG_LEN;

/// A 256-bit key for encrypting values at rest (XChaCha20-Poly1305). Its `Debug` shows only
/// its id (a few bytes of a hash of the key), never the key; the key's bytes are wiped from
/// memory when the last clone is dropped.
///
/// ```
/// use cache_core::EncryptionKey;
/// let key = EncryptionKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")?;
/// assert_eq!(key, EncryptionKey::from_bytes(std::array::from_fn(|i| i as u8)));
/// assert!(!format!("{key:?}").contains("AAECAwQF"));
/// assert!(EncryptionKey::from_base64("too short").is_err());
/// # Ok::<(), cache_core::Error>(())
/// ```
#[derive(Clone)]
pub struct EncryptionKey(Arc<KeyInner>);

struct KeyInner {
    id: [u8; KEY_ID_LEN],
    cipher: XChaCha20Poly1305,
}

impl EncryptionKey {
    /// A key from its 32 bytes.
    ///
    /// ```
    /// let key = cache_core::EncryptionKey::from_bytes([7u8; 32]);
    /// # let _ = key;
    /// ```
    pub fn from_bytes(bytes: [u8; 32]) -> EncryptionKey {
        let id_hash = Sha256::new()
            .chain_update(b"cache-rs key id")
            .chain_update(bytes)
            .finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&id_hash[..KEY_ID_LEN]);
        let cipher = XChaCha20Poly1305::new(&bytes.into());
        EncryptionKey(Arc::new(KeyInner { id, cipher }))
    }

    /// A key from the base64 of its 32 bytes (standard or URL-safe alphabet, padded or not),
    /// as `CACHE_ENCRYPTION_KEY` holds it; make one with `openssl rand -base64 32`. Anything
    /// else is [`Error::Config`] (whose message never repeats what was given).
    ///
    /// ```
    /// use cache_core::{EncryptionKey, Error};
    /// assert!(EncryptionKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").is_ok());
    /// assert!(matches!(EncryptionKey::from_base64("c2hvcnQ="), Err(Error::Config { .. })));
    /// ```
    pub fn from_base64(encoded: &str) -> Result<EncryptionKey> {
        Self::parse("encryption_key", encoded)
    }

    pub(crate) fn parse(setting: &'static str, encoded: &str) -> Result<EncryptionKey> {
        use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
        let encoded = encoded.trim();
        let decoded = STANDARD_PAD_INDIFFERENT
            .decode(encoded)
            .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(encoded))
            .map_err(|_| Error::Config {
                setting,
                reason: "not base64 (expected the base64 of 32 random bytes, such as `openssl rand -base64 32` prints)".into(),
            })?;
        let bytes: [u8; 32] = decoded.try_into().map_err(|d: Vec<u8>| Error::Config {
            setting,
            reason: format!(
                "decodes to {} bytes; a key is 32 bytes (`openssl rand -base64 32`)",
                d.len()
            ),
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// A new random key from the operating system's generator.
    ///
    /// ```
    /// use cache_core::EncryptionKey;
    /// assert_ne!(EncryptionKey::generate()?, EncryptionKey::generate()?);
    /// # Ok::<(), cache_core::Error>(())
    /// ```
    pub fn generate() -> Result<EncryptionKey> {
        let bytes = <[u8; 32]>::try_generate().map_err(|_| Error::Encrypt {
            reason: "the operating system's random number generator failed",
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key's id as stored in each entry it encrypts (hex): tells which key wrote an
    /// entry, and which configuration lists it, without showing the key.
    ///
    /// ```
    /// let key = cache_core::EncryptionKey::from_bytes([7u8; 32]);
    /// assert_eq!(key.id().len(), 8);
    /// ```
    pub fn id(&self) -> String {
        crate::base::key::lower_hex(&self.0.id)
    }
}

impl PartialEq for EncryptionKey {
    /// Keys with the same id (the same bytes, but for a 2^-32 chance).
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for EncryptionKey {}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptionKey({})", self.id())
    }
}

/// The key a scope writes with and the keys it reads with (that one first, then old ones).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Keyring {
    current: EncryptionKey,
    old: Vec<EncryptionKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("old", &self.old)
            .finish()
    }
}

impl Keyring {
    pub(crate) fn new(current: EncryptionKey, old: Vec<EncryptionKey>) -> Keyring {
        Keyring { current, old }
    }

    /// The keys this keyring reads with besides its current one.
    pub(crate) fn old_keys(&self) -> &[EncryptionKey] {
        &self.old
    }

    /// This keyring, also reading with `more` old keys.
    pub(crate) fn with_old_keys(
        mut self,
        more: impl IntoIterator<Item = EncryptionKey>,
    ) -> Keyring {
        self.old.extend(more);
        self
    }

    /// Encrypts the payload of `envelope` (as `codec::encode` wrote it) stored under `full`.
    pub(crate) fn seal(&self, full: &str, mut envelope: Vec<u8>) -> Result<Vec<u8>> {
        let at = codec::payload_offset(&envelope).map_err(|reason| Error::Encrypt { reason })?;
        let mut buffer = envelope.split_off(at);
        codec::mark_encrypted(&mut envelope, buffer.len() + OVERHEAD);
        let nonce = XNonce::try_generate().map_err(|_| Error::Encrypt {
            reason: "the operating system's random number generator failed",
        })?;
        let aad = associated_data(full, &envelope);
        self.current
            .0
            .cipher
            .encrypt_in_place(&nonce, &aad, &mut buffer)
            .map_err(|_| Error::Encrypt {
                reason: "the value is too large to encrypt",
            })?;
        envelope.reserve(KEY_ID_LEN + NONCE_LEN + buffer.len());
        envelope.extend_from_slice(&self.current.0.id);
        envelope.extend_from_slice(&nonce);
        envelope.extend_from_slice(&buffer);
        Ok(envelope)
    }

    /// The plaintext payload of the encrypted entry `bytes` (parsed as `env`) read from `full`.
    pub(crate) fn open(
        &self,
        full: &str,
        bytes: &[u8],
        env: &Envelope<'_>,
    ) -> std::result::Result<Vec<u8>, &'static str> {
        let payload = env.payload();
        if payload.len() < OVERHEAD {
            return Err("encrypted payload is truncated");
        }
        let (id, rest) = payload.split_at(KEY_ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| "encrypted payload is truncated")?;
        let aad = associated_data(full, &bytes[..bytes.len() - payload.len()]);
        let mut tried = false;
        for key in std::iter::once(&self.current).chain(&self.old) {
            if key.0.id[..] != *id {
                continue;
            }
            tried = true;
            let mut buffer = sealed.to_vec();
            if key
                .0
                .cipher
                .decrypt_in_place(&nonce, &aad, &mut buffer)
                .is_ok()
            {
                return Ok(buffer);
            }
        }
        Err(if tried {
            "encrypted value does not authenticate (tampered with, or moved from another key)"
        } else {
            "encrypted under a key this handle does not have (not its key nor an old one)"
        })
    }
}

fn associated_data(full: &str, head: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(full.len() + 1 + head.len());
    aad.extend_from_slice(full.as_bytes());
    aad.push(0); // keys hold no NUL: ends the key unambiguously
    aad.extend_from_slice(head);
    aad
}

/// Encrypts an encoded envelope stored under `full` with `key`: for the criterion
/// benchmarks only (not a public API).
#[doc(hidden)]
pub fn bench_seal(key: &EncryptionKey, full: &str, envelope: Vec<u8>) -> Option<Vec<u8>> {
    Keyring::new(key.clone(), Vec::new())
        .seal(full, envelope)
        .ok()
}

/// Decrypts what [`bench_seal`] wrote and decodes the value: for the criterion benchmarks only.
#[doc(hidden)]
pub fn bench_open<T: DeserializeOwned + 'static>(
    key: &EncryptionKey,
    full: &str,
    bytes: &[u8],
) -> Option<T> {
    let keyring = Keyring::new(key.clone(), Vec::new());
    let env = codec::parse(bytes).ok()?;
    let plaintext = keyring.open(full, bytes, &env).ok()?;
    env.value_from(plaintext, codec::fingerprint::<T>()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::codec::{Meta, encode, parse};

    fn sealed(keyring: &Keyring, full: &str, value: &str) -> Vec<u8> {
        let meta = Meta {
            created_at_ms: 1,
            expires_at_ms: 2,
            ..Meta::default()
        };
        let plain = encode(&value.to_owned(), &meta, 4096).expect("encodes");
        keyring.seal(full, plain).expect("seals")
    }

    fn opened(keyring: &Keyring, full: &str, bytes: &[u8]) -> std::result::Result<String, String> {
        let env = parse(bytes).map_err(str::to_owned)?;
        let plaintext = keyring.open(full, bytes, &env)?;
        env.value_from(plaintext, 0)
    }

    fn ring(n: u8) -> Keyring {
        Keyring::new(EncryptionKey::from_bytes([n; 32]), Vec::new())
    }

    #[test]
    fn round_trip_and_every_damage_is_an_error() {
        let k = ring(1);
        let bytes = sealed(&k, "ns:k", "secret value");
        assert!(parse(&bytes).expect("parses").is_encrypted());
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
        assert_eq!(opened(&k, "ns:k", &bytes).as_deref(), Ok("secret value"));
        // Another key, another Redis key, any flipped bit, any cut.
        assert!(opened(&ring(2), "ns:k", &bytes).is_err());
        assert!(opened(&k, "ns:other", &bytes).is_err());
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut damaged = bytes.clone();
                damaged[i] ^= bit;
                assert!(opened(&k, "ns:k", &damaged).is_err(), "byte {i} flipped");
            }
        }
        for n in 0..bytes.len() {
            assert!(opened(&k, "ns:k", &bytes[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn old_keys_open_and_nonces_differ() {
        let old = ring(1);
        let bytes = sealed(&old, "k", "v");
        let rotated = Keyring::new(
            EncryptionKey::from_bytes([2; 32]),
            vec![EncryptionKey::from_bytes([1; 32])],
        );
        assert_eq!(opened(&rotated, "k", &bytes).as_deref(), Ok("v"));
        assert_ne!(sealed(&old, "k", "v"), sealed(&old, "k", "v"));
    }

    #[test]
    fn keys_parse_from_base64_and_never_show() {
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let std_b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let url_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let a = EncryptionKey::from_base64(&std_b64).expect("standard");
        let b = EncryptionKey::from_base64(&url_b64).expect("url-safe");
        assert_eq!(a, b);
        assert_eq!(a, EncryptionKey::from_bytes(bytes));
        let shown = format!("{a:?} {:?}", Keyring::new(a.clone(), vec![b]));
        assert!(
            !shown.contains(&std_b64[..8]) && !shown.contains(&url_b64[..8]),
            "{shown}"
        );
        for bad in ["", "!!!!", &std_b64[..20], &format!("{std_b64}{std_b64}")] {
            let err = EncryptionKey::from_base64(bad).expect_err("refused");
            if bad.len() > 4 {
                assert!(!err.to_string().contains(bad), "{err}");
            }
        }
    }
}
