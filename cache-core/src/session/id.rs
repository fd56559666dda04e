//! Session ids: 128 bits from the operating system's random number generator, written as 22
//! characters of URL-safe base64.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::{ID_BYTES, ID_LEN};
use crate::base::error::{Error, Result};

/// A session id: 128 bits from the operating system's random number generator, written as
/// 22 characters of URL-safe base64 (`A-Z a-z 0-9 - _`), safe in cookies, headers and URLs.
///
/// Parsing accepts exactly what `Display` writes; anything else (wrong length, another
/// character, a non-canonical last character) is [`Error::InvalidKey`]. The session
/// operations also take the text of an id directly (see [`AsSessionId`]), and treat a
/// malformed one as an unknown session, without a call to the backend.
///
/// ```
/// use cache_core::SessionId;
/// let id: SessionId = "AAECAwQFBgcICQoLDA0ODw".parse()?;
/// assert_eq!(id.to_string(), "AAECAwQFBgcICQoLDA0ODw");
/// assert_eq!(id.as_bytes(), &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
/// assert!("not an id".parse::<SessionId>().is_err());
/// # Ok::<(), cache_core::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; ID_BYTES]);

pub(super) const B64: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

pub(super) fn b64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

impl SessionId {
    /// A fresh id from the operating system's random number generator.
    pub(super) fn random() -> Result<SessionId> {
        let mut bytes = [0u8; ID_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| Error::Config {
            setting: "session id",
            reason: format!("the operating system's random number generator failed: {e}"),
        })?;
        Ok(SessionId(bytes))
    }

    /// An id of these 16 bytes (for ids made elsewhere, such as `tower-sessions`' own).
    ///
    /// ```
    /// let id = cache_core::SessionId::from_bytes([7; 16]);
    /// assert_eq!(id.as_bytes(), &[7; 16]);
    /// ```
    pub fn from_bytes(bytes: [u8; 16]) -> SessionId {
        SessionId(bytes)
    }

    /// The 16 bytes of the id.
    ///
    /// ```
    /// let id = cache_core::SessionId::from_bytes([1; 16]);
    /// assert_eq!(id.as_bytes().len(), 16);
    /// ```
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub(super) fn encode(&self) -> [u8; ID_LEN] {
        let mut out = [0u8; ID_LEN];
        let mut acc: u32 = 0;
        let mut bits = 0;
        let mut n = 0;
        for &b in &self.0 {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 6 {
                bits -= 6;
                out[n] = B64[((acc >> bits) & 63) as usize];
                n += 1;
            }
        }
        // 128 = 21 * 6 + 2: the last character holds two bits, then zeros.
        out[n] = B64[((acc << (6 - bits)) & 63) as usize];
        out
    }

    pub(super) fn decode(text: &str) -> Option<SessionId> {
        let text = text.as_bytes();
        if text.len() != ID_LEN {
            return None;
        }
        let mut out = [0u8; ID_BYTES];
        let mut acc: u32 = 0;
        let mut bits = 0;
        let mut n = 0;
        for &c in &text[..ID_LEN - 1] {
            acc = (acc << 6) | u32::from(b64_value(c)?);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out[n] = (acc >> bits) as u8;
                n += 1;
            }
        }
        let last = b64_value(text[ID_LEN - 1])?;
        // Two bits of data; the four others must be zero, so each id has one spelling.
        if last & 0x0f != 0 {
            return None;
        }
        out[n] = ((acc << 2) | u32::from(last >> 4)) as u8;
        Some(SessionId(out))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.encode();
        // The alphabet is ASCII.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// Shows only the first characters: a full id in a log line is a credential.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.encode();
        let head = std::str::from_utf8(&text[..4]).map_err(|_| fmt::Error)?;
        write!(f, "SessionId({head}…)")
    }
}

impl FromStr for SessionId {
    type Err = Error;

    fn from_str(s: &str) -> Result<SessionId> {
        SessionId::decode(s).ok_or_else(|| Error::invalid_key(s, "not a session id"))
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        SessionId::decode(&text).ok_or_else(|| serde::de::Error::custom("not a session id"))
    }
}

/// What the session operations take as an id: a [`SessionId`], or its text as it came in
/// (a cookie, a header), which is checked first: malformed text is an unknown session, with
/// no call to the backend.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// let sessions = cache_core::Cache::in_memory().sessions();
/// let id = sessions.create(None, &1u8).await?;
/// let cookie: String = id.to_string();
/// assert_eq!(sessions.get::<u8>(cookie.as_str()).await?, Some(1));
/// assert_eq!(sessions.get::<u8>("../../etc/passwd").await?, None);
/// # Ok(()) }
/// ```
pub trait AsSessionId {
    /// The id, or `None` if this is not one.
    fn session_id(&self) -> Option<SessionId>;
}

impl AsSessionId for SessionId {
    fn session_id(&self) -> Option<SessionId> {
        Some(*self)
    }
}

impl AsSessionId for str {
    fn session_id(&self) -> Option<SessionId> {
        SessionId::decode(self)
    }
}

impl AsSessionId for String {
    fn session_id(&self) -> Option<SessionId> {
        SessionId::decode(self)
    }
}

impl<T: AsSessionId + ?Sized> AsSessionId for &T {
    fn session_id(&self) -> Option<SessionId> {
        (**self).session_id()
    }
}
