//! Where bytes live: Redis, or the embedded in-memory store. Both speak the same small
//! vocabulary with the same semantics; everything above (envelope, tags, scopes) is shared.
//!
//! An enum rather than a trait object: the hot path stays monomorphic (no boxed futures),
//! and the circuit breaker can later wrap the enum in one place.

pub(crate) mod breaker;
pub(crate) mod cluster;
pub(crate) mod memory;
pub(crate) mod redis;

use std::time::Duration;

use bytes::Bytes;

use crate::base::error::Result;

/// Remaining lifetime of a key, as `PTTL` reports it; see [`Cache::ttl`](crate::Cache::ttl).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// use std::time::Duration;
/// use cache_core::KeyTtl;
/// let cache = cache_core::Cache::in_memory();
/// cache.set("session", &"ann", Duration::from_secs(60)).await?;
/// assert!(matches!(cache.ttl("session").await?, KeyTtl::Expires(left) if left <= Duration::from_secs(60)));
/// cache.incr("visits", 1).await?; // counters are created without a TTL
/// assert_eq!(cache.ttl("visits").await?, KeyTtl::Persistent);
/// assert_eq!(cache.ttl("absent").await?, KeyTtl::Missing);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTtl {
    /// No such key.
    Missing,
    /// The key exists and never expires.
    Persistent,
    /// The key expires after this long.
    Expires(Duration),
}

/// A tag version key: `&str` or `String`, so callers pass what they hold without collecting.
pub(crate) trait TagKey: AsRef<str> + ::redis::ToRedisArgs + Sync {}

impl<T: AsRef<str> + ::redis::ToRedisArgs + Sync> TagKey for T {}

/// One write of a batch: key, encoded value, TTL.
pub(crate) type Write = (String, Vec<u8>, Option<Duration>);

/// The values of some keys and the versions of some tag keys, read in one round trip.
pub(crate) type ValuesAndVersions = (Vec<Option<Bytes>>, Vec<Option<u64>>);

/// A write that lands only if the key still holds what a read found (the last field; `None`:
/// nothing): a batch's computed values.
pub(crate) type ConditionalWrite = (String, Vec<u8>, Option<Duration>, Option<Bytes>);

// One per cache root, behind an `Arc`: its size does not matter, the missing indirection does.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Backend {
    Redis(std::sync::Arc<redis::RedisBackend>),
    Memory(memory::MemoryBackend),
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Backend::Redis(b) => b.$method($($arg),*).await,
            Backend::Memory(b) => b.$method($($arg),*),
        }
    };
}

impl Backend {
    pub(crate) fn kind(&self) -> crate::base::source::Source {
        match self {
            Backend::Redis(_) => crate::base::source::Source::Redis,
            Backend::Memory(_) => crate::base::source::Source::Memory,
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        dispatch!(self.get(key))
    }

    /// The value, the current versions of `tag_keys` and then those of `generation_keys` (a
    /// scope's clears, engine/clear.rs; a missing one is `None`: never cleared), in one round
    /// trip.
    pub(crate) async fn get_with_scope<K: TagKey, G: TagKey>(
        &self,
        key: &str,
        tag_keys: &[K],
        generation_keys: &[G],
    ) -> Result<(Option<Bytes>, Vec<Option<u64>>)> {
        dispatch!(self.get_with_scope(key, tag_keys, generation_keys))
    }

    /// Moves a scope's generation key past every value it held; returns the new generation.
    pub(crate) async fn clear_generation(&self, key: &str) -> Result<u64> {
        dispatch!(self.clear_generation(key))
    }

    pub(crate) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        dispatch!(self.get_many(keys))
    }

    /// The values of `keys` and the current versions of `tag_keys`, in one round trip.
    pub(crate) async fn get_many_with_versions<K: AsRef<str>>(
        &self,
        keys: &[K],
        tag_keys: &[String],
    ) -> Result<ValuesAndVersions> {
        dispatch!(self.get_many_with_versions(keys, tag_keys))
    }

    /// Each write only if its key still holds what a read found, in one round trip; true for
    /// each that landed.
    pub(crate) async fn set_many_if_unchanged(
        &self,
        writes: &[ConditionalWrite],
    ) -> Result<Vec<bool>> {
        dispatch!(self.set_many_if_unchanged(writes))
    }

    pub(crate) async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<()> {
        dispatch!(self.set(key, value, ttl))
    }

    /// A write of `keys` that failed with `e` before its command was sent (reading the
    /// versions to record): Redis keeps what it held, which the caller meant to replace; if
    /// Redis was out of reach, the keys are invalidated when it is back, as for a failed
    /// `SET` (store/breaker.rs).
    pub(crate) async fn write_failed(&self, keys: &[String], e: &crate::base::error::Error) {
        if let Backend::Redis(redis) = self {
            let hold = redis.breaker().hold();
            redis.not_reached(e, |b| b.queue_keys(keys, hold)).await;
        }
    }

    /// Writes `value` only if `key` still holds what a read found (`seen`; `None`: nothing);
    /// true if it wrote. What keeps a computation from storing over an invalidation that
    /// landed while it ran.
    pub(crate) async fn set_if_unchanged(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        seen: Option<&[u8]>,
    ) -> Result<bool> {
        dispatch!(self.set_if_unchanged(key, value, ttl, seen))
    }

    pub(crate) async fn set_many(&self, writes: Vec<Write>) -> Result<()> {
        dispatch!(self.set_many(writes))
    }

    /// Replaces each key's value with `tombstone` for `hold` (reads see nothing); returns how
    /// many held a value.
    pub(crate) async fn delete(
        &self,
        keys: &[String],
        tombstone: &[u8],
        hold: Duration,
    ) -> Result<u64> {
        dispatch!(self.delete(keys, tombstone, hold))
    }

    pub(crate) async fn exists(&self, key: &str) -> Result<bool> {
        dispatch!(self.exists(key))
    }

    pub(crate) async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        dispatch!(self.expire(key, ttl))
    }

    pub(crate) async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        dispatch!(self.ttl(key))
    }

    pub(crate) async fn incr(&self, key: &str, by: i64) -> Result<i64> {
        dispatch!(self.incr(key, by))
    }

    /// Current versions of tags; a missing version key is `None` (and counts as changed).
    pub(crate) async fn versions<K: TagKey>(&self, tag_keys: &[K]) -> Result<Vec<Option<u64>>> {
        dispatch!(self.versions(tag_keys))
    }

    /// Creates missing tag version keys at `initial` (existing ones are kept) and returns
    /// the versions now stored.
    pub(crate) async fn create_versions<K: TagKey>(
        &self,
        tag_keys: &[K],
        initial: u64,
    ) -> Result<Vec<Option<u64>>> {
        dispatch!(self.create_versions(tag_keys, initial))
    }

    /// Bumps each tag's version (creating it if missing) and returns the new versions.
    pub(crate) async fn bump<K: TagKey>(&self, tag_keys: &[K]) -> Result<Vec<u64>> {
        dispatch!(self.bump(tag_keys))
    }
}
