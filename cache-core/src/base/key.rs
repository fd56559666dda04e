//! Key building: the `KeyPart` trait, escaping, digests of long parts, scopes.
//!
//! A full key is `namespace:[scope:...][@tenant:]rendered`. Argument values become key parts
//! through [`KeyPart`], which escapes them so that:
//! - no two different argument tuples give the same key (the rendering is injective);
//! - no part can add a `:` level, a glob character (`* ? [ ] \`), a brace (Redis Cluster
//!   hash tag), whitespace or a control byte.
//!
//! Every byte of a part outside `[A-Za-z0-9-_./=+]` and outside non-ASCII letters is written
//! as `%XX`. The characters escaped that way (`~ ! @ # , ( )` among them) are then free to
//! mark structure: `~` for `None`, `@` for a tenant, `#` for a digest, `,` and `(...)` for
//! tuples and sequences.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::base::error::{Error, Result};
// Errors show keys through it (error.rs owns it, so that error does not import key).
pub(crate) use crate::base::error::shorten_for_display;

/// Parts longer than this (after escaping) are replaced by `#` and a 128-bit digest (32 hex
/// digits), so one long argument cannot make a long key.
///
/// ```
/// use cache_core::{key, key::MAX_PART_LEN};
/// let fits = "x".repeat(MAX_PART_LEN);
/// assert_eq!(key!("search", fits), format!("search:{fits}"));
/// let long = key!("search", "x".repeat(MAX_PART_LEN + 1));
/// assert!(long.starts_with("search:#"));
/// assert_eq!(long.len(), "search:#".len() + 32);
/// ```
pub const MAX_PART_LEN: usize = 128;
/// Keys whose user part is longer than this are replaced by a SHA-256 digest, keeping the
/// namespace, scopes and tenant, and the Redis Cluster hash tag (`{...}`) so the key stays in
/// its slot.
///
/// ```
/// # fn main() -> Result<(), cache_core::Error> {
/// use cache_core::{Cache, key::MAX_KEY_LEN};
/// let cache = Cache::in_memory();
/// assert_eq!(cache.full_key("user:42")?, "cache:user:42");
/// let long = format!("{{org:7}}:{}", "y".repeat(MAX_KEY_LEN));
/// let stored = cache.full_key(&long)?;
/// assert!(stored.starts_with("cache:~h:{org:7}#"));
/// assert_eq!(stored.len(), "cache:~h:{org:7}#".len() + 64);
/// # Ok(()) }
/// ```
pub const MAX_KEY_LEN: usize = 512;

/// A value that can be part of a cache key.
///
/// Implemented for integers, `bool`, `char`, strings (`str`, `String`, `Cow<str>`, ...),
/// `Option<T>`, slices and `Vec<T>`, tuples up to four, references and smart pointers, and
/// `uuid::Uuid` with the `uuid` feature. Implement it for your own types by writing their
/// fields through the [`KeyWriter`]:
///
/// ```
/// use cache_core::{KeyPart, key::KeyWriter};
///
/// struct OrgId(u64);
///
/// impl KeyPart for OrgId {
///     fn write_key_part(&self, out: &mut KeyWriter<'_>) {
///         out.write(&self.0);
///     }
/// }
///
/// assert_eq!(cache_core::key!("org", OrgId(7)), "org:7");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of a cache key",
    label = "used in a cache key here",
    note = "implement `cache_core::KeyPart` for `{Self}` (write its identifying fields), key on one of its fields with `<param.field>`, or leave it out of the key with `skip = [...]`"
)]
pub trait KeyPart {
    /// Writes this value's rendering. Strings must go through [`KeyWriter::write_str`]
    /// (which escapes); composite values write each component with [`KeyWriter::write`]
    /// and separate them with [`KeyWriter::separator`].
    ///
    /// ```
    /// use cache_core::{key, KeyPart, key::KeyWriter};
    ///
    /// enum Sort { Newest, Oldest }
    ///
    /// impl KeyPart for Sort {
    ///     fn write_key_part(&self, out: &mut KeyWriter<'_>) {
    ///         out.write_str(match self { Sort::Newest => "newest", Sort::Oldest => "oldest" });
    ///     }
    /// }
    ///
    /// assert_eq!(key!("feed", Sort::Oldest), "feed:oldest");
    /// ```
    fn write_key_part(&self, out: &mut KeyWriter<'_>);
}

/// Receives the rendering of a [`KeyPart`]: handed to
/// [`write_key_part`](KeyPart::write_key_part), never built by hand.
///
/// ```
/// use cache_core::{key, KeyPart, key::KeyWriter};
/// struct Tile { x: i32, y: i32 }
/// impl KeyPart for Tile {
///     fn write_key_part(&self, out: &mut KeyWriter<'_>) {
///         out.write(&self.x);
///         out.separator();
///         out.write(&self.y);
///     }
/// }
/// assert_eq!(key!("tile", Tile { x: 3, y: -4 }), "tile:3,-4");
/// ```
#[derive(Debug)]
pub struct KeyWriter<'a> {
    buf: &'a mut String,
}

impl KeyWriter<'_> {
    /// Writes `s`, escaped: a `:`, glob character, brace, whitespace or `%` in it cannot change
    /// the key's structure.
    ///
    /// ```
    /// use cache_core::{key, KeyPart, key::KeyWriter};
    ///
    /// struct Email(String);
    ///
    /// impl KeyPart for Email {
    ///     fn write_key_part(&self, out: &mut KeyWriter<'_>) {
    ///         out.write_str(&self.0.to_lowercase()); // one key per mailbox, whatever the case
    ///     }
    /// }
    ///
    /// assert_eq!(key!("user", Email("Ann@Example.com".into())), "user:ann%40example.com");
    /// ```
    pub fn write_str(&mut self, s: &str) {
        escape_into(self.buf, s);
    }

    /// Writes a nested part (a field of a composite value), rendered and escaped by its own
    /// [`KeyPart`] impl.
    ///
    /// ```
    /// use cache_core::{key, KeyPart, key::KeyWriter};
    /// struct Filter { org: u64, region: Option<String> }
    /// impl KeyPart for Filter {
    ///     fn write_key_part(&self, out: &mut KeyWriter<'_>) {
    ///         out.write(&self.org);
    ///         out.separator();
    ///         out.write(&self.region);
    ///     }
    /// }
    /// assert_eq!(key!("users", Filter { org: 7, region: None }), "users:7,~");
    /// assert_eq!(key!("users", Filter { org: 7, region: Some("eu west".into()) }), "users:7,eu%20west");
    /// ```
    pub fn write<P: KeyPart + ?Sized>(&mut self, part: &P) {
        part.write_key_part(self);
    }

    /// Writes the separator between components of a composite value. It is `,`, which
    /// [`write_str`](KeyWriter::write_str) escapes, so components cannot run into each other.
    ///
    /// ```
    /// use cache_core::{key, KeyPart, key::KeyWriter};
    /// struct Route<'a> { from: &'a str, to: &'a str }
    /// impl KeyPart for Route<'_> {
    ///     fn write_key_part(&self, out: &mut KeyWriter<'_>) {
    ///         out.write_str(self.from);
    ///         out.separator();
    ///         out.write_str(self.to);
    ///     }
    /// }
    /// let (a, b) = (Route { from: "a,b", to: "c" }, Route { from: "a", to: "b,c" });
    /// assert_eq!(key!("fare", a), "fare:a%2Cb,c");
    /// assert_ne!(key!("fare", a), key!("fare", b));
    /// ```
    pub fn separator(&mut self) {
        self.buf.push(',');
    }

    fn raw(&mut self, s: &str) {
        self.buf.push_str(s);
    }
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b'=' | b'+')
}

/// Appends `s` to `out`, escaping every byte that could change the key's structure.
fn escape_into(out: &mut String, s: &str) {
    let mut rest = s;
    while !rest.is_empty() {
        let plain = rest.bytes().take_while(|&b| is_plain(b)).count();
        out.push_str(&rest[..plain]);
        rest = &rest[plain..];
        let Some(c) = rest.chars().next() else { break };
        let len = c.len_utf8();
        if len > 1 && !c.is_whitespace() && !c.is_control() {
            out.push(c);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            }
        }
        rest = &rest[len..];
    }
}

/// Escapes `s` as a key part on its own (used for scope names).
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

fn digest_hex(bytes: &[u8], hex_len: usize) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = lower_hex(&digest[..hex_len.div_ceil(2).min(digest.len())]);
    out.truncate(hex_len);
    out
}

/// `bytes` in lowercase hex, by table: `write!("{:02x}")` per byte costs ~100 instructions
/// a byte, which showed in profiles of the paths that send a digest.
pub(crate) fn lower_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

/// Builds the user part of a key: literal text and escaped [`KeyPart`]s.
///
/// Used by generated code, and by the [`key!`](crate::key!) macro.
///
/// ```
/// use cache_core::key::KeyBuf;
/// let mut k = KeyBuf::new();
/// k.literal("user:");
/// k.part("ann smith");
/// k.literal(":posts");
/// assert_eq!(k.into_string(), "user:ann%20smith:posts");
/// ```
#[derive(Debug, Default, Clone)]
pub struct KeyBuf {
    buf: String,
}

impl KeyBuf {
    /// An empty key.
    ///
    /// ```
    /// let mut k = cache_core::key::KeyBuf::new();
    /// assert_eq!(k.as_str(), "");
    /// k.part(&42u64);
    /// assert_eq!(k.as_str(), "42");
    /// ```
    pub fn new() -> Self {
        KeyBuf {
            buf: String::with_capacity(64),
        }
    }

    /// Appends literal text, unescaped (template text written by the programmer).
    ///
    /// ```
    /// let mut k = cache_core::key::KeyBuf::new();
    /// k.literal("search:"); // the `:` is structure: kept
    /// k.part("a:b"); // the `:` is data: escaped
    /// assert_eq!(k.as_str(), "search:a%3Ab");
    /// ```
    pub fn literal(&mut self, text: &str) {
        self.buf.push_str(text);
    }

    /// Appends a value, escaped; a part longer than [`MAX_PART_LEN`] becomes `#` and a
    /// 128-bit digest of its rendering.
    ///
    /// ```
    /// let mut k = cache_core::key::KeyBuf::new();
    /// k.part(&None::<u32>);
    /// k.literal(":");
    /// k.part(&vec!["a", "b c"]);
    /// assert_eq!(k.as_str(), "~:2(a,b%20c)");
    /// ```
    pub fn part<P: KeyPart + ?Sized>(&mut self, part: &P) {
        let start = self.buf.len();
        part.write_key_part(&mut KeyWriter { buf: &mut self.buf });
        if self.buf.len() - start > MAX_PART_LEN {
            let digest = digest_hex(&self.buf.as_bytes()[start..], 32);
            self.buf.truncate(start);
            self.buf.push('#');
            self.buf.push_str(&digest);
        }
    }

    /// The key text.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// let mut k = cache_core::key::KeyBuf::new();
    /// k.literal("user:");
    /// k.part(&42u64);
    /// let cache = cache_core::Cache::in_memory();
    /// assert_eq!(cache.full_key(k.as_str())?, "cache:user:42");
    /// # Ok(()) }
    /// ```
    pub fn as_str(&self) -> &str {
        &self.buf
    }

    /// The key text, owned.
    ///
    /// ```
    /// let mut k = cache_core::key::KeyBuf::new();
    /// k.literal("order:");
    /// k.part(&("eu", 17u32));
    /// let key: String = k.into_string();
    /// assert_eq!(key, "order:eu,17");
    /// ```
    pub fn into_string(self) -> String {
        self.buf
    }
}

/// Checks a key given to the direct API (`cache.get("user:42")`): `:` levels, braces and glob
/// characters are the caller's to use; whitespace, control bytes and a leading `~`
/// (reserved for the cache's own keys) are refused.
pub(crate) fn validate_user_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid_key(key, "a key cannot be empty"));
    }
    if key.starts_with('~') {
        return Err(Error::invalid_key(
            key,
            "keys starting with `~` are reserved for the cache's own bookkeeping",
        ));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid_key(
            key,
            "keys cannot contain whitespace or control characters; build keys from values with `key!` or `KeyBuf`, which escape them",
        ));
    }
    Ok(())
}

/// The root namespace comes from configuration and is checked rather than escaped, so that
/// it reads the same in Redis as in the settings.
pub(crate) fn validate_namespace(ns: &str) -> Result<()> {
    if ns.is_empty()
        || ns.len() > 64
        || !ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Error::Config {
            setting: "namespace",
            reason: format!(
                "`{}` is not a namespace; use 1 to 64 characters from `A-Z a-z 0-9 - _ .`",
                shorten_for_display(ns)
            ),
        });
    }
    Ok(())
}

/// Joins a scope prefix (ending in `:`) and a user key, hashing the user key when it is
/// longer than [`MAX_KEY_LEN`]: `prefix~h:{tag}#digest`. The `~` marks the cache's own keys
/// (direct keys cannot start with it, templates cannot either), so a hashed key never
/// collides with one written as is; the Redis Cluster hash tag (`{...}`) is kept so the key
/// stays in its slot.
pub(crate) fn full_key(prefix: &str, user_key: &str) -> String {
    if user_key.len() <= MAX_KEY_LEN {
        let mut k = String::with_capacity(prefix.len() + user_key.len());
        k.push_str(prefix);
        k.push_str(user_key);
        return k;
    }
    let tag = hash_tag(user_key).unwrap_or("");
    let digest = digest_hex(user_key.as_bytes(), 64);
    format!("{prefix}~h:{tag}#{digest}")
}

/// As [`full_key`], reusing `user_key`'s buffer (the hot path of generated code).
pub(crate) fn full_key_owned(prefix: &str, mut user_key: String) -> String {
    if user_key.len() > MAX_KEY_LEN {
        return full_key(prefix, &user_key);
    }
    user_key.insert_str(0, prefix);
    user_key
}

/// The first `{...}` of a key, braces included, as Redis Cluster reads it.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')? + open + 1;
    (close > open + 1).then(|| &key[open..=close])
}

// ---- KeyPart impls -------------------------------------------------------------------------

macro_rules! int_key_part {
    ($($t:ty),*) => {$(
        impl KeyPart for $t {
            fn write_key_part(&self, out: &mut KeyWriter<'_>) {
                out.raw(itoa::Buffer::new().format(*self));
            }
        }
    )*};
}
int_key_part!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

macro_rules! nonzero_key_part {
    ($($t:ty),*) => {$(
        impl KeyPart for $t {
            fn write_key_part(&self, out: &mut KeyWriter<'_>) {
                self.get().write_key_part(out);
            }
        }
    )*};
}
nonzero_key_part!(
    std::num::NonZeroU8,
    std::num::NonZeroU16,
    std::num::NonZeroU32,
    std::num::NonZeroU64,
    std::num::NonZeroUsize,
    std::num::NonZeroI32,
    std::num::NonZeroI64
);

impl KeyPart for bool {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        out.raw(if *self { "true" } else { "false" });
    }
}

impl KeyPart for char {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        out.write_str(self.encode_utf8(&mut [0u8; 4]));
    }
}

impl KeyPart for str {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        out.write_str(self);
    }
}

impl KeyPart for String {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        out.write_str(self);
    }
}

impl KeyPart for Cow<'_, str> {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        out.write_str(self);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for &T {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key_part(out);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for &mut T {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key_part(out);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for Box<T> {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key_part(out);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for Arc<T> {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key_part(out);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for Rc<T> {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        (**self).write_key_part(out);
    }
}

/// `None` is `~`, which no escaped value can be; `Some(v)` is `v`'s rendering, with one more
/// `~` in front when that rendering itself starts with `~` (a nested option's `None`), so
/// `None`, `Some(None)` and `Some(Some(None))` are `~`, `~~` and `~~~`.
impl<T: KeyPart> KeyPart for Option<T> {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        match self {
            Some(v) => {
                let start = out.buf.len();
                v.write_key_part(out);
                if out.buf.as_bytes().get(start) == Some(&b'~') {
                    out.buf.insert(start, '~');
                }
            }
            None => out.raw("~"),
        }
    }
}

/// `len(a,b,...)`: the length keeps `[]` and `[""]` apart.
impl<T: KeyPart> KeyPart for [T] {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        out.raw(itoa::Buffer::new().format(self.len()));
        out.raw("(");
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                out.separator();
            }
            item.write_key_part(out);
        }
        out.raw(")");
    }
}

impl<T: KeyPart> KeyPart for Vec<T> {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        self.as_slice().write_key_part(out);
    }
}

impl<T: KeyPart, const N: usize> KeyPart for [T; N] {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        self.as_slice().write_key_part(out);
    }
}

macro_rules! tuple_key_part {
    ($($name:ident . $idx:tt),+) => {
        impl<$($name: KeyPart),+> KeyPart for ($($name,)+) {
            fn write_key_part(&self, out: &mut KeyWriter<'_>) {
                let mut first = true;
                $(
                    if !std::mem::take(&mut first) { out.separator(); }
                    self.$idx.write_key_part(out);
                )+
            }
        }
    };
}
tuple_key_part!(A.0, B.1);
tuple_key_part!(A.0, B.1, C.2);
tuple_key_part!(A.0, B.1, C.2, D.3);

#[cfg(feature = "uuid")]
impl KeyPart for uuid::Uuid {
    fn write_key_part(&self, out: &mut KeyWriter<'_>) {
        out.raw(
            self.hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render<P: KeyPart + ?Sized>(p: &P) -> String {
        let mut k = KeyBuf::new();
        k.part(p);
        k.into_string()
    }

    #[test]
    fn digests_keep_their_format_so_stored_keys_survive_upgrades() {
        const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(
            digest_hex(b"abc", 64),
            ABC,
            "SHA-256 of `abc`, lowercase hex"
        );
        assert_eq!(digest_hex(b"abc", 32), &ABC[..32]);
        assert_eq!(lower_hex(&[0x00, 0x9f, 0xff]), "009fff");
    }

    #[test]
    fn structural_characters_are_escaped() {
        assert_eq!(render("a:b"), "a%3Ab");
        assert_eq!(render("*?[]\\{}"), "%2A%3F%5B%5D%5C%7B%7D");
        assert_eq!(render("x y\n"), "x%20y%0A");
        assert_eq!(render("100%"), "100%25");
        assert_eq!(render("émoji✓"), "émoji✓");
        assert_eq!(render("\u{a0}"), "%C2%A0");
        assert_eq!(render(""), "");
    }

    #[test]
    fn markers_cannot_be_forged_by_strings() {
        assert_ne!(render(&None::<&str>), render(&Some("~")));
        assert_ne!(render(&Vec::<String>::new()), render(&vec![String::new()]));
        assert_ne!(render(&("a,b", "c")), render(&("a", "b,c")));
    }

    #[test]
    fn nested_options_render_distinctly() {
        let renders = [
            render(&None::<Option<Option<u8>>>),
            render(&Some(None::<Option<u8>>)),
            render(&Some(Some(None::<u8>))),
            render(&Some(Some(Some(1u8)))),
        ];
        assert_eq!(renders, ["~", "~~", "~~~", "1"]);
        // The mark is per value, not per key: in a tuple, each element is marked alone.
        assert_ne!(
            render(&(Some(None::<u8>), 1)),
            render(&(None::<Option<u8>>, 1))
        );
        assert_eq!(render(&(Some(None::<u8>), None::<u8>)), "~~,~");
        // A user type that starts with a `None` field is marked like a nested option.
        struct Pair(Option<u8>, u8);
        impl KeyPart for Pair {
            fn write_key_part(&self, out: &mut KeyWriter<'_>) {
                out.write(&self.0);
                out.separator();
                out.write(&self.1);
            }
        }
        assert_ne!(render(&Some(Pair(None, 1))), render(&None::<Pair>));
        assert_eq!(render(&Some(Pair(None, 1))), "~~,1");
    }

    #[test]
    fn long_parts_become_digests() {
        let long = "x".repeat(1_000_000);
        let r = render(long.as_str());
        assert!(r.starts_with('#') && r.len() == 33, "{r}");
        assert_ne!(r, render(&"x".repeat(999_999)));
    }

    #[test]
    fn long_keys_keep_prefix_and_hash_tag() {
        let user = format!("{{t1}}:{}", "y".repeat(2000));
        let k = full_key("ns:", &user);
        assert!(k.starts_with("ns:~h:{t1}#"), "{k}");
        assert_eq!(k.len(), "ns:~h:{t1}#".len() + 64);
    }

    #[test]
    fn user_keys_are_checked() {
        assert!(validate_user_key("user:42:{x}*").is_ok());
        assert!(validate_user_key("").is_err());
        assert!(validate_user_key("a\nb").is_err());
        assert!(validate_user_key("~tag:x").is_err());
    }
}
