//! The stored format: a versioned envelope around a serde_json (or raw bytes) payload.
//!
//! ```text
//! offset  size  field
//! 0       1     magic 0xC7 (not a valid first byte of UTF-8 text, so JSON or a counter
//!               written by someone else is never mistaken for an envelope)
//! 1       1     format version (1)
//! 2       1     flags: 1 = payload LZ4-compressed, 2 = encrypted (see `crypto.rs`: the
//!               payload is then key id, nonce, ciphertext and tag; everything before it
//!               is authenticated), 4 = raw bytes, 8 = tombstone (see [`tombstone`]; alone,
//!               with no tags and no payload)
//! 3       1     number of tags
//! 4       8     schema fingerprint of the Rust type (FNV-1a of its type name)
//! 12      8     created at, unix ms
//! 20      8     logical expiry, unix ms (0: none)
//! 28      8     stale until, unix ms (0: none)
//! 36      4     compute time, microseconds (for early refresh)
//! 40      4     payload length in bytes (a truncated value is detected, not misread)
//! 44      ...   per tag: u16 length, tag version key, u64 version; then, in the same
//!               form, the generation keys of the writer's scopes (see `engine/clear.rs`)
//! ...     ...   payload
//! ```
//! All integers little-endian. A value that fails any check here is a miss, never a panic.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) const MAGIC: u8 = 0xC7;
pub(crate) const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 44;
/// LZ4 cannot expand data by more than this factor; a larger declared size is corruption.
const LZ4_MAX_RATIO: usize = 255;

const FLAG_COMPRESSED: u8 = 1;
pub(crate) const FLAG_ENCRYPTED: u8 = 2;
const FLAG_RAW: u8 = 4;
const FLAG_TOMBSTONE: u8 = 8;

/// The first bytes of every tombstone, and of nothing else: magic, version, and the
/// tombstone flag alone, which [`encode`] never writes.
const TOMBSTONE_PREFIX: [u8; 3] = [MAGIC, FORMAT_VERSION, FLAG_TOMBSTONE];
/// A tombstone is a bare header.
const TOMBSTONE_LEN: usize = HEADER_LEN;

/// What the envelope records besides the value.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta<'a> {
    pub(crate) created_at_ms: u64,
    pub(crate) expires_at_ms: u64,
    pub(crate) stale_until_ms: u64,
    pub(crate) compute_us: u32,
    /// Schema fingerprint of the stored type; 0 when the writer does not pin one.
    pub(crate) fingerprint: u64,
    /// Tag version keys, and the versions read before the value was computed (same order).
    pub(crate) tag_keys: &'a [String],
    /// The versions of `tag_keys`, then those of `generation_keys`.
    pub(crate) tag_versions: &'a [u64],
    /// The generation keys of the writer's scopes (engine/clear.rs), recorded in the tag list
    /// after the tags, with the versions that follow the tags' in `tag_versions` (those at 0,
    /// never cleared, are not recorded).
    pub(crate) generation_keys: &'a [String],
}

/// A parsed envelope, borrowing the stored bytes.
#[derive(Debug)]
pub(crate) struct Envelope<'a> {
    flags: u8,
    pub(crate) fingerprint: u64,
    pub(crate) created_at_ms: u64,
    pub(crate) expires_at_ms: u64,
    #[allow(dead_code)] // read by stale serving, which lands with the stampede issue
    pub(crate) stale_until_ms: u64,
    #[allow(dead_code)]
    pub(crate) compute_us: u32,
    /// The tag list, checked by [`parse`]; read with [`Envelope::tags`]. Kept as bytes so a
    /// read allocates nothing for it: on the hot path, every allocation that outlives an
    /// `.await` may be freed on another worker thread, and glibc's malloc serialises those
    /// frees on a lock (measured: the tagged hit at 64 concurrent requests lost ~15% to it).
    tag_list: &'a [u8],
    payload: &'a [u8],
}

/// The tags an envelope records: (tag version key, version), in the order written.
#[derive(Debug, Clone)]
pub(crate) struct Tags<'a> {
    rest: &'a [u8],
}

impl<'a> Tags<'a> {
    /// The first tag of `list` and what follows it; `None` at the end or on corruption
    /// (which [`parse`] has ruled out for lists it returns).
    fn split_first(list: &'a [u8]) -> Option<((&'a str, u64), &'a [u8])> {
        let len = u16::from_le_bytes([*list.first()?, *list.get(1)?]) as usize;
        let key = std::str::from_utf8(list.get(2..2 + len)?).ok()?;
        let version = list.get(2 + len..2 + len + 8)?;
        Some(((key, le_u64(version, 0)), &list[2 + len + 8..]))
    }
}

impl<'a> Iterator for Tags<'a> {
    type Item = (&'a str, u64);

    fn next(&mut self) -> Option<Self::Item> {
        let (tag, rest) = Tags::split_first(self.rest)?;
        self.rest = rest;
        Some(tag)
    }
}

/// The milliseconds since the unix epoch, by the local clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The microseconds since the unix epoch, by the local clock.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A stable 64-bit fingerprint of `T`'s name: a deploy that changes the type stored under a
/// key turns old entries into misses instead of decode errors.
pub(crate) fn fingerprint<T: ?Sized + 'static>() -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    std::any::type_name::<T>()
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

fn raw_bytes_of<T: 'static>(value: &T) -> Option<&[u8]> {
    let any = value as &dyn Any;
    if let Some(v) = any.downcast_ref::<Vec<u8>>() {
        return Some(v);
    }
    any.downcast_ref::<bytes::Bytes>().map(|b| b.as_ref())
}

fn is_raw<T: 'static>() -> bool {
    let id = TypeId::of::<T>();
    id == TypeId::of::<Vec<u8>>() || id == TypeId::of::<bytes::Bytes>()
}

/// Encodes `value` with `meta`, compressing payloads above `compress_above` bytes.
pub(crate) fn encode<T: Serialize + 'static>(
    value: &T,
    meta: &Meta<'_>,
    compress_above: usize,
) -> Result<Vec<u8>, serde_json::Error> {
    // Tags, then the generations that are not 0 (a scope never cleared costs no bytes).
    let (tag_versions, generation_versions) = meta
        .tag_versions
        .split_at(meta.tag_keys.len().min(meta.tag_versions.len()));
    let recorded = meta.tag_keys.iter().zip(tag_versions).chain(
        meta.generation_keys
            .iter()
            .zip(generation_versions)
            .filter(|(_, v)| **v != 0),
    );
    let tag_count = recorded.clone().count().min(255);
    let tags_len: usize = recorded
        .clone()
        .take(tag_count)
        .map(|(k, _)| 10 + k.len())
        .sum();
    let mut out = Vec::with_capacity(HEADER_LEN + tags_len + 128);
    out.extend_from_slice(&[MAGIC, FORMAT_VERSION, 0, tag_count as u8]);
    out.extend_from_slice(&meta.fingerprint.to_le_bytes());
    out.extend_from_slice(&meta.created_at_ms.to_le_bytes());
    out.extend_from_slice(&meta.expires_at_ms.to_le_bytes());
    out.extend_from_slice(&meta.stale_until_ms.to_le_bytes());
    out.extend_from_slice(&meta.compute_us.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // payload length, set below
    for (key, version) in recorded.take(tag_count) {
        let len = key.len().min(u16::MAX as usize);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&key.as_bytes()[..len]);
        out.extend_from_slice(&version.to_le_bytes());
    }
    let payload_start = out.len();
    let mut flags = 0;
    match raw_bytes_of(value) {
        Some(raw) => {
            out.extend_from_slice(raw);
            flags |= FLAG_RAW;
        }
        None => serde_json::to_writer(&mut out, value)?,
    }
    if out.len() - payload_start > compress_above {
        let compressed = lz4_flex::compress_prepend_size(&out[payload_start..]);
        if compressed.len() < out.len() - payload_start {
            // A buffer of the compressed size, not the one that held the payload
            // uncompressed: whoever keeps the entry (the embedded store, a landed flight, the
            // L1) must not hold the uncompressed size in spare capacity.
            let mut exact = Vec::with_capacity(payload_start + compressed.len());
            exact.extend_from_slice(&out[..payload_start]);
            exact.extend_from_slice(&compressed);
            out = exact;
            flags |= FLAG_COMPRESSED;
        }
    }
    // A vector grown by doubling may hold twice its length; shrinking gives the spare back
    // (in place) before anyone keeps it.
    if out.capacity() - out.len() > out.len() / 8 {
        out.shrink_to_fit();
    }
    out[2] = flags;
    let payload_len = u32::try_from(out.len() - payload_start).unwrap_or(u32::MAX);
    out[40..44].copy_from_slice(&payload_len.to_le_bytes());
    Ok(out)
}

/// Where the payload of an envelope that [`encode`] wrote starts.
pub(crate) fn payload_offset(bytes: &[u8]) -> Result<usize, &'static str> {
    parse(bytes).map(|env| bytes.len() - env.payload.len())
}

/// Sets the encrypted flag and the payload length of the header and tag list `head` (an
/// encoded envelope cut at [`payload_offset`]), before the sealed payload is appended.
pub(crate) fn mark_encrypted(head: &mut [u8], sealed_len: usize) {
    if head.len() >= HEADER_LEN {
        head[2] |= FLAG_ENCRYPTED;
        let len = u32::try_from(sealed_len).unwrap_or(u32::MAX);
        head[40..44].copy_from_slice(&len.to_le_bytes());
    }
}

/// What an invalidation by key leaves under the key for a while instead of nothing: a
/// computation that read the key before the invalidation writes its result only if the key
/// still holds what it read, and a tombstone is not what it read. Each one is unique (its
/// fingerprint field holds a nonce), so a second invalidation also defeats a computation that
/// started after the first. Reads treat it as absent.
pub(crate) fn tombstone() -> Vec<u8> {
    let mut out = Vec::with_capacity(TOMBSTONE_LEN);
    out.extend_from_slice(&TOMBSTONE_PREFIX);
    out.push(0); // no tags
    out.extend_from_slice(&nonce().to_le_bytes());
    out.extend_from_slice(&now_ms().to_le_bytes());
    out.resize(TOMBSTONE_LEN, 0); // no expiry, no stale window, no compute time, no payload
    out
}

/// True if `bytes` is a [`tombstone`]: the first bytes say so (no value has the tombstone
/// flag alone), as the Redis scripts check.
pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
    bytes.starts_with(&TOMBSTONE_PREFIX)
}

/// 64 bits that no other call, in this process or (but for a 2^-64 chance) another, returns:
/// a counter hashed with the process's random `RandomState` keys.
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = SEED.get_or_init(Default::default).build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parses the envelope of `bytes`; `Err` says why it is not one this version can read.
pub(crate) fn parse(bytes: &[u8]) -> Result<Envelope<'_>, &'static str> {
    if bytes.len() < HEADER_LEN || bytes[0] != MAGIC {
        return Err("not a value written by this cache");
    }
    if bytes[1] != FORMAT_VERSION {
        return Err("written by an incompatible version of this cache");
    }
    let flags = bytes[2];
    let tag_count = bytes[3] as usize;
    let mut rest = &bytes[HEADER_LEN..];
    for _ in 0..tag_count {
        (_, rest) = Tags::split_first(rest).ok_or("truncated or corrupt tag list")?;
    }
    let at = bytes.len() - rest.len();
    let payload = &bytes[at..];
    let declared = u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]) as usize;
    if payload.len() != declared {
        return Err("truncated or padded payload");
    }
    Ok(Envelope {
        flags,
        fingerprint: le_u64(bytes, 4),
        created_at_ms: le_u64(bytes, 12),
        expires_at_ms: le_u64(bytes, 20),
        stale_until_ms: le_u64(bytes, 28),
        compute_us: u32::from_le_bytes([bytes[36], bytes[37], bytes[38], bytes[39]]),
        tag_list: &bytes[HEADER_LEN..at],
        payload,
    })
}

impl<'a> Envelope<'a> {
    /// The tags recorded, with the versions they had before the value was computed.
    pub(crate) fn tags(&self) -> Tags<'a> {
        Tags {
            rest: self.tag_list,
        }
    }

    /// Whether the payload is encrypted (see `crypto.rs`).
    pub(crate) fn is_encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }

    /// The payload as stored (for an encrypted entry: key id, nonce, ciphertext, tag).
    pub(crate) fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The payload's length once decompressed (its stored length when not compressed; the
    /// declared size of a compressed one, capped as a read caps it): what a decoded copy
    /// is weighed by in the L1's byte budget.
    pub(crate) fn plain_payload_len(&self) -> usize {
        match self.payload.get(..4) {
            Some(b) if self.flags & FLAG_COMPRESSED != 0 => {
                (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .min(self.payload.len().saturating_mul(LZ4_MAX_RATIO) + 64)
            }
            _ => self.payload.len(),
        }
    }

    /// The value, if it was stored as a `T`. Fingerprints are compared only when both the
    /// writer and the reader pin one (generated code does; the direct API, where `&str` is
    /// written and `String` read, does not).
    pub(crate) fn value<T: DeserializeOwned + 'static>(
        &self,
        expected_fingerprint: u64,
    ) -> Result<T, String> {
        if self.is_encrypted() {
            return Err("encrypted, and this handle has no key to decrypt it".to_owned());
        }
        self.decode_payload(Cow::Borrowed(self.payload), expected_fingerprint)
    }

    /// As [`value`](Self::value), from the decrypted payload of an encrypted entry.
    pub(crate) fn value_from<T: DeserializeOwned + 'static>(
        &self,
        plaintext: Vec<u8>,
        expected_fingerprint: u64,
    ) -> Result<T, String> {
        self.decode_payload(Cow::Owned(plaintext), expected_fingerprint)
    }

    fn decode_payload<T: DeserializeOwned + 'static>(
        &self,
        stored: Cow<'_, [u8]>,
        expected_fingerprint: u64,
    ) -> Result<T, String> {
        if self.fingerprint != 0
            && expected_fingerprint != 0
            && self.fingerprint != expected_fingerprint
        {
            return Err(format!(
                "stored as another type than `{}` (schema fingerprint differs)",
                std::any::type_name::<T>()
            ));
        }
        let payload: Cow<'_, [u8]> = if self.flags & FLAG_COMPRESSED != 0 {
            // The size prefix is read before allocating: a corrupt one must not make us
            // reserve gigabytes.
            let declared = stored
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or("compressed payload is truncated")?;
            if declared > stored.len().saturating_mul(LZ4_MAX_RATIO) + 64 {
                return Err("compressed payload declares an impossible size".to_owned());
            }
            Cow::Owned(
                lz4_flex::decompress_size_prepended(&stored)
                    .map_err(|e| format!("compressed payload is corrupt: {e}"))?,
            )
        } else {
            stored
        };
        if self.flags & FLAG_RAW != 0 {
            return raw_value::<T>(payload.into_owned())
                .ok_or_else(|| "raw bytes stored, another type asked".to_owned());
        }
        // One UTF-8 check of the whole payload, then a `str` parse: `from_slice` would
        // re-validate every string and field name on its own, which costs more than the
        // single pass on the small values a cache mostly holds (JSON is UTF-8 either way).
        let text = std::str::from_utf8(&payload).map_err(|e| {
            format!(
                "payload does not decode: not UTF-8 JSON (at byte {})",
                e.valid_up_to()
            )
        })?;
        serde_json::from_str(text).map_err(|e| {
            // serde_json's message quotes the offending value ("invalid type: string
            // \"...\""), and values (session data, say) must not reach logs: only where.
            format!(
                "payload does not decode as `{}`: {:?} error at line {} column {}",
                std::any::type_name::<T>(),
                e.classify(),
                e.line(),
                e.column()
            )
        })
    }
}

fn raw_value<T: 'static>(bytes: Vec<u8>) -> Option<T> {
    if !is_raw::<T>() {
        return None;
    }
    let boxed: Box<dyn Any> = if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        Box::new(bytes)
    } else {
        Box::new(bytes::Bytes::from(bytes))
    };
    boxed.downcast::<T>().ok().map(|b| *b)
}

/// A tag version as `INCR` and `SET NX` write it: ASCII digits. Anything else (a value some
/// other writer put under a version key) is no version, which reads as changed.
pub(crate) fn decode_version(bytes: &[u8]) -> Option<u64> {
    // By hand rather than `str::parse`, which also validates UTF-8 and accepts a `+`: every
    // tagged read decodes one per tag, and the profile showed ~260 instructions for each.
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Decodes bytes that may not be an envelope: plain integers (as `incr` writes them) read as
/// numbers; anything else is an error saying why.
pub(crate) fn decode_plain<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let is_integer = !bytes.is_empty()
        && bytes.len() <= 20
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || (i == 0 && *b == b'-' && bytes.len() > 1));
    if !is_integer {
        return Err("not a value written by this cache".to_owned());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("counter value asked as another type: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct User {
        id: u64,
        name: String,
    }

    fn meta() -> Meta<'static> {
        Meta {
            created_at_ms: 1,
            expires_at_ms: 2,
            stale_until_ms: 3,
            compute_us: 4,
            fingerprint: 0,
            tag_keys: &[],
            tag_versions: &[],
            generation_keys: &[],
        }
    }

    #[test]
    fn round_trips_with_metadata() {
        let tag_keys = vec!["ns:~tag:org".to_owned()];
        let m = Meta {
            tag_keys: &tag_keys,
            tag_versions: &[9],
            fingerprint: fingerprint::<User>(),
            ..meta()
        };
        let u = User {
            id: 1,
            name: "a".into(),
        };
        let bytes = encode(&u, &m, 4096).expect("encodes");
        let env = parse(&bytes).expect("parses");
        assert_eq!(
            (
                env.created_at_ms,
                env.expires_at_ms,
                env.stale_until_ms,
                env.compute_us
            ),
            (1, 2, 3, 4)
        );
        assert_eq!(env.tags().collect::<Vec<_>>(), vec![("ns:~tag:org", 9)]);
        assert_eq!(env.value::<User>(fingerprint::<User>()), Ok(u));
        assert!(env.value::<User>(fingerprint::<String>()).is_err());
    }

    #[test]
    fn large_payloads_are_compressed_and_restored() {
        let big = "abc".repeat(10_000);
        let bytes = encode(&big, &meta(), 1024).expect("encodes");
        assert!(bytes.len() < 2000, "compressed to {}", bytes.len());
        assert_eq!(
            parse(&bytes).and_then(|e| e.value::<String>(0).map_err(|_| "x")),
            Ok(big)
        );
    }

    #[test]
    fn raw_bytes_are_stored_as_bytes() {
        let raw = vec![0u8, 159, 146, 150];
        let bytes = encode(&raw, &meta(), 4096).expect("encodes");
        assert_eq!(&bytes[bytes.len() - 4..], &raw[..]);
        let env = parse(&bytes).expect("parses");
        assert_eq!(env.value::<Vec<u8>>(0), Ok(raw.clone()));
        assert!(env.value::<String>(0).is_err());
        let b = encode(&bytes::Bytes::from(raw.clone()), &meta(), 4096).expect("encodes");
        assert_eq!(
            parse(&b).expect("parses").value::<bytes::Bytes>(0),
            Ok(bytes::Bytes::from(raw))
        );
    }

    #[test]
    fn other_types_and_garbage_are_errors_not_panics() {
        let bytes = encode(
            &User {
                id: 1,
                name: "a".into(),
            },
            &meta(),
            4096,
        )
        .expect("encodes");
        assert!(parse(&bytes).expect("parses").value::<String>(0).is_err());
        for garbage in [
            &b""[..],
            b"\xC7",
            b"\xC7\x01\x00\x05",
            b"hello",
            &[0xC7; 41],
        ] {
            let _ = parse(garbage).map(|e| e.value::<User>(0));
        }
        for n in 0..bytes.len() {
            let _ = parse(&bytes[..n]).map(|e| e.value::<User>(0));
        }
    }

    #[test]
    fn a_payload_that_is_not_utf8_is_an_error() {
        let mut bytes = encode(&"abc", &meta(), 4096).expect("encodes");
        let at = bytes.len() - 3; // the `b` of `"abc"`, the payload being last
        assert_eq!(bytes[at], b'b');
        assert_eq!(
            parse(&bytes).expect("parses").value::<String>(0).as_deref(),
            Ok("abc")
        );
        bytes[at] = 0xFF;
        let err = parse(&bytes)
            .expect("parses")
            .value::<String>(0)
            .expect_err("not UTF-8");
        assert!(err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn a_damaged_tag_list_is_an_error_not_a_shorter_list() {
        let tag_keys = vec!["ns:~tag:org".to_owned(), "ns:~tag:é".to_owned()];
        let m = Meta {
            tag_keys: &tag_keys,
            tag_versions: &[9, u64::MAX],
            ..meta()
        };
        let bytes = encode(&7u8, &m, 4096).expect("encodes");
        let env = parse(&bytes).expect("parses");
        assert_eq!(
            env.tags().collect::<Vec<_>>(),
            vec![("ns:~tag:org", 9), ("ns:~tag:é", u64::MAX)]
        );
        assert!(env.tags().next().is_some());
        // Every cut, whether inside the tag list or after it, is refused: the payload length
        // and the declared tag count both pin where the list ends.
        for n in 0..bytes.len() {
            assert!(parse(&bytes[..n]).is_err(), "cut at {n} parsed");
        }
        // A tag length pointing past the end, and a key that is not UTF-8.
        let mut long = bytes.clone();
        long[HEADER_LEN] = 0xFF;
        assert!(parse(&long).is_err());
        let mut not_utf8 = bytes.clone();
        let e_acute = not_utf8.len() - 1 - 8 - 1; // `é`'s last byte: before the version and payload
        not_utf8[e_acute] = 0xFF;
        assert!(parse(&not_utf8).is_err());
        let untagged = encode(&7u8, &meta(), 4096).expect("encodes");
        assert!(parse(&untagged).expect("parses").tags().next().is_none());
    }

    #[test]
    fn counters_decode_as_numbers_only() {
        assert_eq!(decode_plain::<i64>(b"-12"), Ok(-12));
        assert!(decode_plain::<i64>(b"12a").is_err());
        assert!(decode_plain::<String>(b"12").is_err());
        assert!(decode_plain::<i64>(b"-").is_err());
        assert_eq!(
            decode_version(b"1732000000000000"),
            Some(1_732_000_000_000_000)
        );
        assert_eq!(decode_version(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1 ",
            b"18446744073709551616",
            b"\xc7",
        ] {
            assert_eq!(decode_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_scripts_recognise_the_tombstones_written_here() {
        let literal: String = TOMBSTONE_PREFIX.iter().map(|b| format!("\\{b}")).collect();
        assert!(
            include_str!("../scripts/tombstone.lua")
                .contains(&format!("local TOMBSTONE = '{literal}'\n")),
            "scripts/tombstone.lua must spell TOMBSTONE_PREFIX as {literal}"
        );
    }

    #[test]
    fn tombstones_are_unique_and_never_mistaken_for_values() {
        let (a, b) = (tombstone(), tombstone());
        assert!(is_tombstone(&a) && is_tombstone(&b));
        assert_ne!(a, b, "two invalidations leave different tombstones");
        for value in [
            encode(&(), &meta(), 4096).expect("encodes"),
            encode(&Vec::<u8>::new(), &meta(), 4096).expect("encodes"),
            b"12".to_vec(),
            Vec::new(),
        ] {
            assert!(!is_tombstone(&value), "{value:?}");
        }
        let compressed = encode(&"x".repeat(100), &meta(), 10).expect("encodes");
        assert_eq!(
            compressed[2], FLAG_COMPRESSED,
            "the flags byte, where tombstones differ"
        );
        assert!(!is_tombstone(&compressed));
    }
}
