//! A stored response in the bytes the cache keeps (the pipeline stores `Bytes` raw, without
//! JSON): what a hit is rebuilt from, and the marker that a resource varies.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

const RESPONSE: u8 = 1;
const VARIANTS: u8 = 2;

/// What a key holds.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Entry {
    Response(StoredResponse),
    /// The resource varies on these request headers (lower case, sorted): its responses are
    /// under the variant keys (key.rs).
    Variants(Vec<String>),
}

/// A response as stored, hop-by-hop headers and `Set-Cookie` already removed.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StoredResponse {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// When it was stored (ms since the epoch), for `Age`.
    pub(super) stored_at_ms: u64,
    /// The `Age` it arrived with (seconds), added to its time in the cache.
    pub(super) initial_age: u32,
    /// How long it is fresh (ms), for the `ttl` of `Cache-Status` and telling stale from
    /// fresh.
    pub(super) fresh_ms: u64,
    /// `public` or `s-maxage`: may answer a request with `Authorization`.
    pub(super) shareable: bool,
}

impl StoredResponse {
    /// Seconds since it was stored at `now_ms`, plus the age it arrived with.
    pub(super) fn age(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_at_ms) / 1000 + u64::from(self.initial_age)
    }

    /// Seconds of freshness left at `now_ms`; negative once stale.
    pub(super) fn ttl_left(&self, now_ms: u64) -> i64 {
        let until = self.stored_at_ms.saturating_add(self.fresh_ms) as i128;
        let left_ms = until - now_ms as i128;
        // Stale from the millisecond the lifetime is used up (`is_stale`; RFC 9111 §4.2.1:
        // fresh while the lifetime exceeds the age): at that millisecond, rounding down alone
        // gave `ttl=0` on a stale response.
        let secs = if left_ms > 0 {
            left_ms / 1000
        } else {
            (left_ms - 1).div_euclid(1000)
        };
        secs as i64
    }

    pub(super) fn is_stale(&self, now_ms: u64) -> bool {
        now_ms >= self.stored_at_ms.saturating_add(self.fresh_ms)
    }
}

impl Entry {
    pub(super) fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Entry::Variants(names) => {
                out.put_u8(VARIANTS);
                out.put_u16(names.len() as u16);
                for name in names {
                    put_str(&mut out, name.as_bytes());
                }
            }
            Entry::Response(r) => {
                out.reserve(64 + r.body.len());
                out.put_u8(RESPONSE);
                out.put_u8(u8::from(r.shareable));
                out.put_u16(r.status.as_u16());
                out.put_u64(r.stored_at_ms);
                out.put_u32(r.initial_age);
                out.put_u64(r.fresh_ms);
                out.put_u16(r.headers.len().min(u16::MAX as usize) as u16);
                for (name, value) in r.headers.iter().take(u16::MAX as usize) {
                    put_str(&mut out, name.as_str().as_bytes());
                    put_str(&mut out, value.as_bytes());
                }
                out.put_slice(&r.body);
            }
        }
        out.freeze()
    }

    /// `None` for bytes this module did not write (read as a miss).
    pub(super) fn decode(bytes: &Bytes) -> Option<Entry> {
        let mut r = Reader { bytes, at: 0 };
        match r.u8()? {
            VARIANTS => {
                let n = r.u16()?;
                let mut names = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    names.push(String::from_utf8(r.slice()?.to_vec()).ok()?);
                }
                Some(Entry::Variants(names))
            }
            RESPONSE => {
                let shareable = r.u8()? == 1;
                let status = StatusCode::from_u16(r.u16()?).ok()?;
                let stored_at_ms = r.u64()?;
                let initial_age = r.u32()?;
                let fresh_ms = r.u64()?;
                let n = r.u16()?;
                // Room for the two fields a hit adds (`Age`, `Cache-Status`), so that adding
                // them does not grow the map.
                let mut headers = HeaderMap::with_capacity(usize::from(n) + 2);
                for _ in 0..n {
                    let name = HeaderName::from_bytes(r.slice()?).ok()?;
                    // A slice of the stored bytes, not a copy: a hit answers without
                    // allocating a buffer per field.
                    let value = HeaderValue::from_maybe_shared(r.shared()?).ok()?;
                    headers.append(name, value);
                }
                let body = bytes.slice(r.at..);
                Some(Entry::Response(StoredResponse {
                    status,
                    headers,
                    body,
                    stored_at_ms,
                    initial_age,
                    fresh_ms,
                    shareable,
                }))
            }
            _ => None,
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    let len = s.len().min(u32::MAX as usize);
    out.put_u32(len as u32);
    out.put_slice(&s[..len]);
}

struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn slice(&mut self) -> Option<&[u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// [`slice`](Self::slice) as a view of the same buffer.
    fn shared(&mut self) -> Option<Bytes> {
        let n = self.u32()? as usize;
        let start = self.at;
        self.take(n)?;
        Some(self.bytes.slice(start..self.at))
    }
}

/// A strong validator from the body: `"` + 128 bits of its SHA-256 in hex + `"`.
pub(super) fn etag_of(body: &[u8]) -> HeaderValue {
    use sha2::Digest;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = sha2::Sha256::digest(body);
    let mut text = [b'"'; 34];
    for (i, b) in digest[..16].iter().enumerate() {
        text[1 + 2 * i] = HEX[usize::from(b >> 4)];
        text[2 + 2 * i] = HEX[usize::from(b & 0xf)];
    }
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Whether `If-None-Match` matches `etag` (weak comparison, RFC 9110 §13.1.2).
pub(super) fn none_match(if_none_match: &HeaderMap, etag: Option<&HeaderValue>) -> bool {
    let Some(etag) = etag.and_then(|e| e.to_str().ok()) else {
        return false;
    };
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let ours = opaque(etag);
    if_none_match
        .get_all(http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == "*" || opaque(tag) == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_left_is_negative_exactly_when_stale() {
        let stored = StoredResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            stored_at_ms: 10_000,
            initial_age: 0,
            fresh_ms: 1_000,
            shareable: true,
        };
        for (now, ttl) in [
            (10_000, 1),
            (10_001, 0),
            (10_999, 0),
            (11_000, -1),
            (11_999, -1),
            (12_000, -2),
        ] {
            assert_eq!(stored.ttl_left(now), ttl, "at {now}");
            assert_eq!(stored.is_stale(now), ttl < 0, "at {now}");
        }
    }

    #[test]
    fn entries_round_trip_and_garbage_is_none() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let entry = Entry::Response(StoredResponse {
            status: StatusCode::NOT_FOUND,
            headers,
            body: Bytes::from_static(b"body"),
            stored_at_ms: 7,
            initial_age: 3,
            fresh_ms: 1000,
            shareable: true,
        });
        assert_eq!(Entry::decode(&entry.encode()), Some(entry));
        let vary = Entry::Variants(vec!["accept".into(), "x-tenant".into()]);
        assert_eq!(Entry::decode(&vary.encode()), Some(vary));
        assert_eq!(Entry::decode(&Bytes::from_static(b"\x01\x00")), None);
        assert_eq!(Entry::decode(&Bytes::new()), None);
    }

    #[test]
    fn the_etag_is_the_first_128_bits_of_the_sha256_in_hex() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(
            etag_of(b"abc"),
            HeaderValue::from_static("\"ba7816bf8f01cfea414140de5dae2223\"")
        );
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(none_match(&h, Some(&HeaderValue::from_static("\"abc\""))));
        assert!(!none_match(&h, Some(&HeaderValue::from_static("\"abd\""))));
        assert!(!none_match(&h, None));
    }
}
