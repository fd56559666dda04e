//! The front door: the [`Cache`] handle users hold. Every method is a thin entry point into
//! the layer that does the work (ARCHITECTURE.md): plain operations into the engine,
//! get-or-compute into the pipeline, locks, limiters, sessions, patterns, warming, health and
//! key reports into their capability modules. Nothing below this module names `Cache`.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::base::crypto::EncryptionKey;
use crate::base::error::Result;
use crate::base::key::KeyPart;
use crate::base::observe::NamespaceStats;
use crate::base::source::{Lookup, Source};
use crate::base::stats::StatsSnapshot;
use crate::engine::Handle;
use crate::health::Health;
use crate::key_report::KeyReportBuilder;
use crate::lock::Lock;
use crate::pipeline::batch::{self, BatchOptions};
use crate::pipeline::glue::CacheRef;
use crate::pipeline::{ComputeOptions, HardTimeoutFor, Pipeline};
use crate::rate_limit::{MemoryLimits, RateLimit, RateLimiter};
use crate::session::{MemSessions, Sessions};
use crate::store::KeyTtl;
use crate::warm::WarmBuilder;

/// A handle on the cache: cheap to clone (a few `Arc`s), `Send + Sync`, usable from any task.
///
/// Values are any serde type (`Vec<u8>` and `bytes::Bytes` are stored as raw bytes). Every
/// key lives under the handle's namespace and tenant; scoped handles made with
/// [`namespace`](Cache::namespace) and [`tenant`](Cache::tenant) share the connection pool and
/// the counters of the handle they come from.
///
/// ```
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// let cache = cache_core::Cache::in_memory();
/// cache.set("greeting", &"hello", Duration::from_secs(60)).await?;
/// assert_eq!(cache.get::<String>("greeting").await?, Some("hello".to_owned()));
///
/// let acme = cache.tenant("acme");
/// assert_eq!(acme.get::<String>("greeting").await?, None); // tenants are isolated
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    pipeline: Pipeline,
    capabilities: Arc<Capabilities>,
}

/// What the capabilities keep per cache root beside the engine's state: their state on the
/// embedded backend.
#[derive(Debug, Default)]
struct Capabilities {
    limits: Arc<MemoryLimits>,
    sessions: Arc<MemSessions>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.handle().fmt(f)
    }
}

impl Cache {
    /// A new root over the engine's `handle`.
    pub(crate) fn from_handle(handle: Handle) -> Cache {
        Cache {
            pipeline: Pipeline::new(handle),
            capabilities: Arc::default(),
        }
    }

    /// Another scope of this root.
    fn with_handle(&self, handle: Handle) -> Cache {
        Cache {
            pipeline: self.pipeline.with_handle(handle),
            capabilities: self.capabilities.clone(),
        }
    }

    fn handle(&self) -> &Handle {
        self.pipeline.handle()
    }

    /// The embedded in-memory backend with default settings (namespace `cache`, default TTL
    /// one hour, 64 MiB). Each call makes a separate store; clones and scoped handles share it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::Cache;
    /// let cache = Cache::in_memory();
    /// cache.set("k", &"v", None).await?;
    /// assert!(cache.clone().exists("k").await?);
    /// assert!(!Cache::in_memory().exists("k").await?); // another store
    /// # Ok(()) }
    /// ```
    pub fn in_memory() -> Cache {
        Cache::from_handle(Handle::in_memory())
    }

    /// A handle whose keys live under `name` inside this handle's scope, with the same default
    /// TTL (change it with [`with_default_ttl`](Cache::with_default_ttl)). The name is escaped,
    /// so it cannot reach another scope.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let cache = cache_core::Cache::in_memory();
    /// let screening = cache.namespace("screening").with_default_ttl(Duration::from_secs(600));
    /// assert_eq!(screening.default_ttl(), Some(Duration::from_secs(600)));
    /// ```
    pub fn namespace(&self, name: &str) -> Cache {
        self.with_handle(self.handle().namespace(name))
    }

    /// A handle whose every key and tag lives under tenant `id`. Patterns and invalidations
    /// through it cannot reach outside the tenant.
    ///
    /// ```
    /// let cache = cache_core::Cache::in_memory();
    /// let t = cache.tenant(42u64);
    /// assert!(t.key_prefix().ends_with(":@42:"));
    /// ```
    pub fn tenant(&self, id: impl KeyPart) -> Cache {
        self.with_handle(self.handle().tenant(id))
    }

    /// The same scope (same keys, store and counters) with another default TTL.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::KeyTtl;
    /// let cache = cache_core::Cache::in_memory();
    /// let short = cache.with_default_ttl(Duration::from_secs(30));
    /// short.set("k", &1u8, None).await?; // no TTL given: the handle's
    /// assert!(matches!(cache.ttl("k").await?, KeyTtl::Expires(left) if left <= Duration::from_secs(30)));
    /// # Ok(()) }
    /// ```
    pub fn with_default_ttl(&self, ttl: Duration) -> Cache {
        self.with_handle(self.handle().with_default_ttl(ttl))
    }

    /// The prefix of every key of this handle (`namespace:` plus scopes), as stored in Redis.
    ///
    /// ```
    /// let cache = cache_core::Cache::in_memory();
    /// assert_eq!(cache.key_prefix(), "cache:");
    /// assert_eq!(cache.namespace("orders").tenant("acme").key_prefix(), "cache:orders:@acme:");
    /// ```
    pub fn key_prefix(&self) -> &str {
        self.handle().key_prefix()
    }

    /// The TTL of writes that do not give one; `None` when such writes never expire.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// assert_eq!(cache_core::Cache::in_memory().default_ttl(), Some(Duration::from_secs(3600)));
    /// let forever = cache_core::Cache::builder().no_default_ttl().build()?;
    /// assert_eq!(forever.default_ttl(), None);
    /// # Ok(()) }
    /// ```
    pub fn default_ttl(&self) -> Option<Duration> {
        self.handle().default_ttl()
    }

    /// Which backend this cache uses.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, Source};
    /// assert_eq!(Cache::builder().build()?.backend(), Source::Memory); // no URL
    /// let redis = Cache::builder().url("redis://127.0.0.1:6379").build()?;
    /// assert_eq!(redis.backend(), Source::Redis);
    /// # Ok(()) }
    /// ```
    pub fn backend(&self) -> Source {
        self.handle().backend()
    }

    /// The counters of this cache (shared by all its scoped handles).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("k", &1u8, None).await?;
    /// cache.namespace("other").get::<u8>("k").await?; // another scope: a miss
    /// let stats = cache.stats();
    /// assert_eq!((stats.writes, stats.hits, stats.misses), (1, 0, 1));
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> StatsSnapshot {
        self.handle().stats()
    }

    /// The full key stored in the backend for `key`. A key that is empty, holds whitespace or
    /// a control character, or starts with `~` (reserved) is [`Error::InvalidKey`](crate::Error::InvalidKey); one longer
    /// than [`MAX_KEY_LEN`](crate::key::MAX_KEY_LEN) is hashed.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::Error;
    /// let cache = cache_core::Cache::in_memory().tenant(7u32);
    /// assert_eq!(cache.full_key("user:42")?, "cache:@7:user:42");
    /// assert!(matches!(cache.full_key("user 42"), Err(Error::InvalidKey { .. })));
    /// # Ok(()) }
    /// ```
    pub fn full_key(&self, key: &str) -> Result<String> {
        self.handle().full_key(key)
    }

    /// The value under `key`, if there is one usable as a `T`. A value that does not decode as
    /// `T` (written as another type, or garbage) is a miss, counted in
    /// [`StatsSnapshot::decode_errors`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// assert_eq!(cache.get::<u32>("n").await?, None);
    /// cache.set("n", &7u32, None).await?;
    /// assert_eq!(cache.get::<u32>("n").await?, Some(7));
    /// assert_eq!(cache.get::<String>("n").await?, None); // not a `String`: a miss
    /// assert_eq!(cache.stats().decode_errors, 1);
    /// # Ok(()) }
    /// ```
    pub async fn get<T: DeserializeOwned + 'static>(&self, key: &str) -> Result<Option<T>> {
        self.handle().get(key).await
    }

    /// As [`get`](Cache::get), saying where a hit came from and how old it is.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Lookup, Source};
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("n", &1u8, None).await?;
    /// assert!(matches!(cache.lookup::<u8>("n").await?, Lookup::Hit { value: 1, source: Source::Memory, .. }));
    /// # Ok(()) }
    /// ```
    pub async fn lookup<T: DeserializeOwned + 'static>(&self, key: &str) -> Result<Lookup<T>> {
        self.handle().lookup(key).await
    }

    /// Values of several keys in one round trip, in order; misses (and undecodable values)
    /// are `None`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.mset(&[("a", 1u32), ("b", 2)], None).await?;
    /// let found = cache.mget::<u32>(&["a", "absent", "b"]).await?;
    /// assert_eq!(found, vec![Some(1), None, Some(2)]);
    /// # Ok(()) }
    /// ```
    pub async fn mget<T: DeserializeOwned + 'static>(
        &self,
        keys: &[&str],
    ) -> Result<Vec<Option<T>>> {
        self.handle().mget(keys).await
    }

    /// True if `key` holds a value (of any type: the value is not decoded, nor its tags
    /// checked).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("k", &"v", None).await?;
    /// assert!(cache.exists("k").await?);
    /// assert!(!cache.exists("absent").await?);
    /// # Ok(()) }
    /// ```
    pub async fn exists(&self, key: &str) -> Result<bool> {
        self.handle().exists(key).await
    }

    /// The remaining lifetime of `key`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::KeyTtl;
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("k", &1u8, Duration::from_secs(60)).await?;
    /// assert!(matches!(cache.ttl("k").await?, KeyTtl::Expires(left) if left <= Duration::from_secs(60)));
    /// assert_eq!(cache.ttl("absent").await?, KeyTtl::Missing);
    /// # Ok(()) }
    /// ```
    pub async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        self.handle().ttl(key).await
    }

    /// Stores `value` under `key` for `ttl` (`None`: the handle's default TTL).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("session:1", &vec!["read", "write"], Duration::from_secs(900)).await?;
    /// let rights = cache.get::<Vec<String>>("session:1").await?;
    /// assert_eq!(rights, Some(vec!["read".to_owned(), "write".to_owned()]));
    /// # Ok(()) }
    /// ```
    pub async fn set<T: Serialize + 'static>(
        &self,
        key: &str,
        value: &T,
        ttl: impl Into<Option<Duration>>,
    ) -> Result<()> {
        self.handle().set(key, value, ttl).await
    }

    /// Stores `value` under `key`, attached to `tags`: [`invalidate_tag`](Cache::invalidate_tag)
    /// of any of them makes it a miss.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set_tagged("user:1", &"ann", None, &["org:7"]).await?;
    /// cache.invalidate_tag("org:7").await?;
    /// assert_eq!(cache.get::<String>("user:1").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn set_tagged<T: Serialize + 'static>(
        &self,
        key: &str,
        value: &T,
        ttl: impl Into<Option<Duration>>,
        tags: &[&str],
    ) -> Result<()> {
        self.handle().set_tagged(key, value, ttl, tags).await
    }

    /// Stores several values in one round trip, all with `ttl` (`None`: the default TTL).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// let cache = cache_core::Cache::in_memory();
    /// cache.mset(&[("a", 1u32), ("b", 2)], Duration::from_secs(60)).await?;
    /// assert_eq!(cache.get::<u32>("b").await?, Some(2));
    /// assert_eq!(cache.stats().writes, 2);
    /// # Ok(()) }
    /// ```
    pub async fn mset<T: Serialize + 'static>(
        &self,
        items: &[(&str, T)],
        ttl: impl Into<Option<Duration>>,
    ) -> Result<()> {
        self.handle().mset(items, ttl).await
    }

    /// Removes `key`; true if it existed.
    ///
    /// A computation of the key already running when this lands (in
    /// [`get_or_set`](Cache::get_or_set) or a `#[cached]` function, in any process) returns its
    /// value to its caller but does not store it: the key keeps a tombstone, which reads as
    /// absent, for [`invalidation_hold`](crate::CacheBuilder::invalidation_hold).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("k", &1u8, None).await?;
    /// assert!(cache.delete("k").await?);
    /// assert!(!cache.delete("k").await?); // already gone
    /// assert_eq!(cache.get::<u8>("k").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: &str) -> Result<bool> {
        self.handle().delete(key).await
    }

    /// Removes several keys in one round trip; returns how many existed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.mset(&[("a", 1u8), ("b", 2)], None).await?;
    /// assert_eq!(cache.delete_many(&["a", "b", "absent"]).await?, 2);
    /// assert!(!cache.exists("a").await?);
    /// # Ok(()) }
    /// ```
    pub async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        self.handle().delete_many(keys).await
    }

    /// Sets `key` to expire after `ttl`; false if there is no such key.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::KeyTtl;
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("k", &1u8, None).await?; // default TTL: one hour
    /// assert!(cache.expire("k", Duration::from_secs(5)).await?);
    /// assert!(matches!(cache.ttl("k").await?, KeyTtl::Expires(left) if left <= Duration::from_secs(5)));
    /// assert!(!cache.expire("absent", Duration::from_secs(5)).await?);
    /// # Ok(()) }
    /// ```
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.handle().expire(key, ttl).await
    }

    /// Restarts `key`'s lifetime at the handle's default TTL; false if there is no such key
    /// (or the handle has no default TTL).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::KeyTtl;
    /// let cache = cache_core::Cache::in_memory().with_default_ttl(Duration::from_secs(600));
    /// cache.set("session", &"ann", Duration::from_secs(5)).await?;
    /// assert!(cache.touch("session").await?); // back to ten minutes
    /// assert!(matches!(cache.ttl("session").await?, KeyTtl::Expires(left) if left > Duration::from_secs(5)));
    /// # Ok(()) }
    /// ```
    pub async fn touch(&self, key: &str) -> Result<bool> {
        self.handle().touch(key).await
    }

    /// Adds `by` to the integer counter under `key`, keeping its TTL, as Redis `INCRBY`. A
    /// missing counter starts at 0 with no TTL (the default TTL does not apply: give it one
    /// with [`expire`](Cache::expire)). A key holding a cached value, or a sum that overflows
    /// `i64`, is [`Error::WrongKind`](crate::Error::WrongKind). Read a counter back with `get::<i64>`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Error, KeyTtl};
    /// let cache = cache_core::Cache::in_memory();
    /// assert_eq!(cache.incr("visits", 1).await?, 1);
    /// assert_eq!(cache.incr("visits", 10).await?, 11);
    /// assert_eq!(cache.get::<i64>("visits").await?, Some(11));
    /// assert_eq!(cache.ttl("visits").await?, KeyTtl::Persistent);
    /// cache.set("user", &"ann", None).await?;
    /// assert!(matches!(cache.incr("user", 1).await, Err(Error::WrongKind { .. })));
    /// # Ok(()) }
    /// ```
    pub async fn incr(&self, key: &str, by: i64) -> Result<i64> {
        self.handle().incr(key, by).await
    }

    /// Invalidates every entry attached to `tag`, in O(1): one counter bump, whatever the
    /// number of entries.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set_tagged("user:1", &"ann", None, &["org:7"]).await?;
    /// cache.set_tagged("user:2", &"bob", None, &["org:8"]).await?;
    /// cache.invalidate_tag("org:7").await?;
    /// assert_eq!(cache.get::<String>("user:1").await?, None);
    /// assert_eq!(cache.get::<String>("user:2").await?.as_deref(), Some("bob"));
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        self.handle().invalidate_tag(tag).await
    }

    /// Clears this handle's scope (the whole root, a namespace, a tenant) in O(1): one
    /// command whatever the number of keys, which moves the scope's generation. Afterwards no
    /// read through this handle or a handle made from it returns a value written before: on
    /// this instance from the moment it returns, on the others once Redis's tracking push
    /// reached them (under a millisecond on loopback; at once for every read with
    /// [`strict_clear`](crate::CacheBuilder::strict_clear)). The old entries are not
    /// deleted: they expire with their TTL, or are evicted. See
    /// [the guide](crate::guide::invalidation).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// let users = cache.namespace("users");
    /// users.set("1", &"ann", None).await?;
    /// cache.set("config", &"on", None).await?;
    /// users.clear().await?;
    /// assert_eq!(users.get::<String>("1").await?, None);
    /// assert_eq!(cache.get::<String>("config").await?.as_deref(), Some("on"));
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self) -> Result<()> {
        self.handle().clear().await
    }

    /// Invalidates every entry attached to any of `tags`, in one round trip.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set_tagged("a", &1u8, None, &["x"]).await?;
    /// cache.set_tagged("b", &2u8, None, &["y"]).await?;
    /// cache.set("c", &3u8, None).await?;
    /// cache.invalidate_tags(&["x", "y"]).await?;
    /// assert_eq!(cache.mget::<u8>(&["a", "b", "c"]).await?, vec![None, None, Some(3)]);
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tags(&self, tags: &[&str]) -> Result<()> {
        self.handle().invalidate_tags(tags).await
    }

    /// A handle on the same scope that encrypts the values it writes with `key` and reads only
    /// values encrypted with it (or with the old keys of
    /// [`with_old_encryption_keys`](Cache::with_old_encryption_keys)); anything else under
    /// its keys is a miss. Handles made from it ([`namespace`](Cache::namespace),
    /// [`tenant`](Cache::tenant)) encrypt too. See [the guide](crate::guide::configuration#encryption).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, EncryptionKey};
    /// let cache = Cache::in_memory();
    /// let pii = cache.namespace("pii").with_encryption(EncryptionKey::generate()?);
    /// pii.set("user:1:email", &"ann@example.com", None).await?;
    /// assert_eq!(pii.get::<String>("user:1:email").await?.as_deref(), Some("ann@example.com"));
    /// assert!(pii.is_encrypted() && !cache.is_encrypted());
    /// # Ok(()) }
    /// ```
    pub fn with_encryption(&self, key: EncryptionKey) -> Cache {
        self.with_handle(self.handle().with_encryption(key))
    }

    /// A handle on the same scope that also reads values encrypted with `old` keys (writing
    /// with its own key): what a key rotation needs. Without an encryption key on the handle,
    /// it is the same handle.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, EncryptionKey};
    /// let (old, new) = (EncryptionKey::generate()?, EncryptionKey::generate()?);
    /// let cache = Cache::in_memory();
    /// cache.with_encryption(old.clone()).set("k", &1u8, None).await?;
    /// let rotated = cache.with_encryption(new).with_old_encryption_keys([old]);
    /// assert_eq!(rotated.get::<u8>("k").await?, Some(1));
    /// # Ok(()) }
    /// ```
    pub fn with_old_encryption_keys(&self, old: impl IntoIterator<Item = EncryptionKey>) -> Cache {
        self.with_handle(self.handle().with_old_encryption_keys(old))
    }

    /// A handle on the same scope that neither encrypts nor reads encrypted values (for data
    /// that needs no encryption under an encrypted root, say).
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, EncryptionKey};
    /// let cache = Cache::builder().encryption_key(EncryptionKey::generate()?).build()?;
    /// assert!(cache.is_encrypted());
    /// assert!(!cache.namespace("public").without_encryption().is_encrypted());
    /// # Ok(()) }
    /// ```
    pub fn without_encryption(&self) -> Cache {
        self.with_handle(self.handle().without_encryption())
    }

    /// Whether this handle encrypts the values it writes.
    ///
    /// ```
    /// assert!(!cache_core::Cache::in_memory().is_encrypted());
    /// ```
    pub fn is_encrypted(&self) -> bool {
        self.handle().is_encrypted()
    }

    /// Statistics of every first-level namespace of this cache root (the root's own first,
    /// then in order of first use). Each operation counts in exactly one of them, so they add
    /// up to [`stats`](Cache::stats).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.namespace("a").get::<u8>("k").await?;
    /// cache.namespace("b").tenant(7u32).get::<u8>("k").await?; // tenants count with their namespace
    /// let names: Vec<_> = cache.namespace_stats().into_iter().map(|s| s.namespace).collect();
    /// assert_eq!(names, ["cache", "cache:a", "cache:b"]);
    /// # Ok(()) }
    /// ```
    pub fn namespace_stats(&self) -> Vec<NamespaceStats> {
        self.handle().namespace_stats()
    }

    /// Statistics of the namespace this handle counts under.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// let orders = cache.namespace("orders");
    /// orders.get::<u8>("absent").await?;
    /// assert_eq!(orders.scope_stats().misses.absent, 1);
    /// assert_eq!(cache.scope_stats().misses.absent, 0); // the root's own
    /// # Ok(()) }
    /// ```
    pub fn scope_stats(&self) -> NamespaceStats {
        self.handle().scope_stats()
    }

    /// A handle on the same scope whose reads skip the L1 near cache (writes through it
    /// still invalidate it everywhere). For namespaces whose values must always be read
    /// fresh from Redis; `#[cached(local = false)]` does the same for one function.
    ///
    /// ```
    /// let cache = cache_core::Cache::in_memory();
    /// let prices = cache.namespace("prices").without_local_cache();
    /// assert_eq!(prices.key_prefix(), "cache:prices:");
    /// ```
    pub fn without_local_cache(&self) -> Cache {
        self.with_handle(self.handle().without_local_cache())
    }

    /// True when reads through this handle may be answered by the L1: it is configured, this
    /// handle did not opt out, and its invalidation feed is subscribed.
    ///
    /// ```
    /// assert!(!cache_core::Cache::in_memory().local_cache_serving());
    /// ```
    pub fn local_cache_serving(&self) -> bool {
        self.handle().local_cache_serving()
    }

    /// Waits until every change that Redis made before this call has reached what this
    /// instance keeps in memory (its L1 near cache, and the scopes' generations that
    /// [`clear`](Cache::clear) moves): afterwards, no read here returns a value older than a
    /// write or a clear that returned anywhere (any instance, any client) before the call.
    /// Both follow Redis within milliseconds on their own; this is for the rare reader that
    /// must not lag at all, told by another service that a key just changed. One round trip
    /// to each node tracked, after waiting (at most the connect timeout) for tracking to be
    /// on; at once on the memory backend.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.sync_local_cache().await; // no L1 on the memory backend: returns at once
    /// # }
    /// ```
    pub async fn sync_local_cache(&self) {
        self.handle().sync_local_cache().await
    }

    /// Makes the early-refresh decisions of this cache root reproducible (tests,
    /// simulations): XFetch draws its random numbers from a generator seeded with `seed`.
    ///
    /// ```
    /// let cache = cache_core::Cache::in_memory();
    /// cache.seed_early_refresh(42);
    /// ```
    pub fn seed_early_refresh(&self, seed: u64) {
        self.pipeline.seed_early_refresh(seed)
    }

    /// The value under `key`, or `compute()`'s, stored for `ttl` (`None`: default TTL).
    ///
    /// Never fails because of the cache: if the backend is down or the stored value does not
    /// decode, the value is computed and returned (and the problem logged and counted).
    /// Concurrent calls of one key in this process run `compute` once (single-flight).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_core::Cache::in_memory();
    /// let v: u64 = cache.get_or_set("answer", None, || async { 42 }).await;
    /// assert_eq!(v, 42);
    /// let again: u64 = cache.get_or_set("answer", None, || async { unreachable!() }).await;
    /// assert_eq!(again, 42);
    /// # }
    /// ```
    pub async fn get_or_set<T, F, Fut>(
        &self,
        key: &str,
        ttl: impl Into<Option<Duration>>,
        compute: F,
    ) -> T
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        self.pipeline.get_or_set(key, ttl, compute).await
    }

    /// As [`get_or_set`](Cache::get_or_set) for a fallible computation: `Ok` values are
    /// stored, errors are returned and not stored.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_core::Cache::in_memory();
    /// let down = cache.try_get_or_set("rate", None, || async { Err::<u32, _>("upstream down") }).await;
    /// assert_eq!(down, Err("upstream down"));
    /// let rate = cache.try_get_or_set("rate", None, || async { Ok::<u32, &str>(42) }).await;
    /// assert_eq!(rate, Ok(42)); // computed: the error was not stored
    /// let again = cache.try_get_or_set("rate", None, || async { Err::<u32, _>("not called") }).await;
    /// assert_eq!(again, Ok(42));
    /// # }
    /// ```
    pub async fn try_get_or_set<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: impl Into<Option<Duration>>,
        compute: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.pipeline.try_get_or_set(key, ttl, compute).await
    }

    /// Batch get-or-compute: the value of every id, reading all their keys in one round trip
    /// and calling `load` once, with exactly the ids not cached (deduplicated, in input
    /// order); what it returns is written in one round trip. Ids it does not return are
    /// absent from the map (and not cached: see
    /// [`BatchOptions::cache_absent`](crate::compute::BatchOptions::cache_absent)). An id
    /// another call in this process is computing (a batch, or a single key) is waited for,
    /// not loaded again. An error of `load` is returned and nothing is stored. See
    /// [the guide](crate::guide::stampedes_and_staleness#many-keys-in-one-call).
    ///
    /// ```
    /// use std::collections::HashMap;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_core::Cache::in_memory();
    /// let ttl = std::time::Duration::from_secs(300);
    /// let first: Result<HashMap<u64, String>, String> = cache
    ///     .try_get_or_set_many(vec![1, 2], |id: &u64| format!("user:{id}"), ttl, |missing: Vec<u64>| async move {
    ///         assert_eq!(missing, vec![1, 2]);
    ///         Ok(missing.into_iter().map(|id| (id, format!("user {id}"))).collect())
    ///     })
    ///     .await;
    /// let users: Result<HashMap<u64, String>, String> = cache
    ///     .try_get_or_set_many(vec![2, 3, 1], |id: &u64| format!("user:{id}"), ttl, |missing: Vec<u64>| async move {
    ///         assert_eq!(missing, vec![3]); // 1 and 2 are cached
    ///         Ok(missing.into_iter().map(|id| (id, format!("user {id}"))).collect())
    ///     })
    ///     .await;
    /// assert_eq!(users.unwrap().len(), 3);
    /// # let _ = first;
    /// # }
    /// ```
    pub async fn try_get_or_set_many<I, K, S, T, E, KF, L, Fut>(
        &self,
        ids: I,
        key: KF,
        ttl: impl Into<Option<Duration>>,
        load: L,
    ) -> std::result::Result<HashMap<K, T>, E>
    where
        I: IntoIterator<Item = K>,
        K: Eq + Hash + Clone,
        KF: FnMut(&K) -> S,
        S: AsRef<str>,
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        L: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = std::result::Result<HashMap<K, T>, E>>,
    {
        self.pipeline
            .try_get_or_set_many_with(ids, key, &batch::with_ttl(ttl.into()), load)
            .await
    }

    /// [`try_get_or_set_many`](Cache::try_get_or_set_many) for a `load` that cannot fail.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_core::Cache::in_memory();
    /// let squares: HashMap<u64, u64> = cache
    ///     .get_or_set_many([3, 4, 3], |n: &u64| format!("square:{n}"), None, |missing: Vec<u64>| async move {
    ///         assert_eq!(missing, vec![3, 4]); // deduplicated
    ///         missing.into_iter().map(|n| (n, n * n)).collect()
    ///     })
    ///     .await;
    /// assert_eq!(squares[&4], 16);
    /// # }
    /// ```
    pub async fn get_or_set_many<I, K, S, T, KF, L, Fut>(
        &self,
        ids: I,
        key: KF,
        ttl: impl Into<Option<Duration>>,
        load: L,
    ) -> HashMap<K, T>
    where
        I: IntoIterator<Item = K>,
        K: Eq + Hash + Clone,
        KF: FnMut(&K) -> S,
        S: AsRef<str>,
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        L: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = HashMap<K, T>>,
    {
        self.pipeline
            .get_or_set_many_with(ids, key, &batch::with_ttl(ttl.into()), load)
            .await
    }

    /// [`try_get_or_set_many`](Cache::try_get_or_set_many) with [`BatchOptions`]: a stale
    /// window (fail-safe), the distributed fill lock, negative caching.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use cache_core::compute::{BatchOptions, FillLock};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_core::Cache::in_memory();
    /// let options = BatchOptions::new().lock(FillLock::Distributed);
    /// let found: Result<HashMap<u64, u64>, std::io::Error> = cache
    ///     .try_get_or_set_many_with([1, 2], |n: &u64| format!("n:{n}"), &options, |missing: Vec<u64>| async move {
    ///         Ok(missing.into_iter().map(|n| (n, n)).collect())
    ///     })
    ///     .await;
    /// assert_eq!(found.unwrap().len(), 2);
    /// # }
    /// ```
    pub async fn try_get_or_set_many_with<I, K, S, T, E, KF, L, Fut>(
        &self,
        ids: I,
        key: KF,
        options: &BatchOptions,
        load: L,
    ) -> std::result::Result<HashMap<K, T>, E>
    where
        I: IntoIterator<Item = K>,
        K: Eq + Hash + Clone,
        KF: FnMut(&K) -> S,
        S: AsRef<str>,
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        L: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = std::result::Result<HashMap<K, T>, E>>,
    {
        self.pipeline
            .try_get_or_set_many_with(ids, key, options, load)
            .await
    }

    /// [`get_or_set_many`](Cache::get_or_set_many) with [`BatchOptions`] (see
    /// [`try_get_or_set_many_with`](Cache::try_get_or_set_many_with)).
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use std::time::Duration;
    /// use cache_core::compute::BatchOptions;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_core::Cache::in_memory();
    /// let options = BatchOptions::new().ttl(Duration::from_secs(60));
    /// let found: HashMap<u64, u64> = cache
    ///     .get_or_set_many_with([1, 2], |n: &u64| format!("n:{n}"), &options, |missing: Vec<u64>| async move {
    ///         missing.into_iter().map(|n| (n, n)).collect()
    ///     })
    ///     .await;
    /// assert_eq!(found.len(), 2);
    /// # }
    /// ```
    pub async fn get_or_set_many_with<I, K, S, T, KF, L, Fut>(
        &self,
        ids: I,
        key: KF,
        options: &BatchOptions,
        load: L,
    ) -> HashMap<K, T>
    where
        I: IntoIterator<Item = K>,
        K: Eq + Hash + Clone,
        KF: FnMut(&K) -> S,
        S: AsRef<str>,
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        L: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = HashMap<K, T>>,
    {
        self.pipeline
            .get_or_set_many_with(ids, key, options, load)
            .await
    }

    /// [`get_or_set`](Cache::get_or_set) with [`ComputeOptions`]: stale-while-revalidate and
    /// fail-safe, a soft timeout, early refresh, the distributed fill lock.
    ///
    /// The computation must be `Send + 'static` (clone into it what it needs, as for
    /// `tokio::spawn`): a refresh behind a stale value, or past the soft timeout, finishes in
    /// a task of its own and stores its result. A hard timeout needs an error to return, so
    /// it is [`try_get_or_set_with`](Cache::try_get_or_set_with)'s only (a compile error
    /// here).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use cache_core::{Cache, ComputeOptions};
    /// let cache = Cache::in_memory();
    /// let options = ComputeOptions::new().ttl(Duration::from_secs(60)).stale(Duration::from_secs(3600));
    /// let price: u32 = cache.get_or_set_with("price:7", &options, || async { 42 }).await;
    /// assert_eq!(price, 42);
    /// # }
    /// ```
    pub async fn get_or_set_with<T, F, Fut>(
        &self,
        key: &str,
        options: &ComputeOptions,
        compute: F,
    ) -> T
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        self.pipeline.get_or_set_with(key, options, compute).await
    }

    /// [`try_get_or_set`](Cache::try_get_or_set) with [`ComputeOptions`]; the failure of a
    /// refresh behind a stale value serves the stale value (fail-safe) instead of the `Err`.
    /// With a [`hard_timeout`](ComputeOptions::hard_timeout), a computation that takes
    /// longer returns `Err(E::from(Error::ComputeTimeout { .. }))` when there is no stale
    /// value to serve.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use cache_core::{Cache, ComputeOptions};
    /// let cache = Cache::in_memory();
    /// let options = ComputeOptions::new().ttl(Duration::from_secs(60)).stale(Duration::from_secs(3600));
    /// let rate = cache.try_get_or_set_with("rate", &options, || async { Ok::<u32, String>(42) }).await;
    /// assert_eq!(rate, Ok(42));
    /// # }
    /// ```
    pub async fn try_get_or_set_with<T, E, F, Fut, H>(
        &self,
        key: &str,
        options: &ComputeOptions<H>,
        compute: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        E: Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        H: HardTimeoutFor<E>,
    {
        self.pipeline
            .try_get_or_set_with(key, options, compute)
            .await
    }

    // ---- capabilities ---------------------------------------------------------------------

    /// Removes every key of this handle's scope matching `pattern` (a Redis glob: `*`, `?`,
    /// `[...]`, `\` escapes), and returns how many held a value.
    ///
    /// The pattern is relative to the handle's scope: on a tenant handle, `"*"` removes that
    /// tenant's keys and nothing else; on the root handle it reaches the keys of every
    /// namespace and tenant below it. The cache's own bookkeeping (tag versions, locks) is
    /// never removed. Like [`delete`](Cache::delete), each removed key keeps a tombstone for
    /// the [`invalidation_hold`](crate::CacheBuilder::invalidation_hold), so a computation
    /// already running does not store its result after this returned.
    ///
    /// On a Redis Cluster every primary is scanned, and a failover during the scan is
    /// survived: the failed primary's replacement is scanned from the start once promoted
    /// (waiting up to 20 s for it). The count may then fall short of the keys removed (a
    /// delete whose answer the failover held past the command timeout is not counted).
    ///
    /// Redis unreachable: the error is returned (`Error::CircuitOpen` at once while the
    /// circuit breaker is open, `Connection`/`Timeout` otherwise), and the invalidation is not
    /// lost: it is queued on the breaker's recovery queue and replayed, as a new scan, when
    /// Redis answers again, before any read is served from it (see [the guide](crate::guide::resilience), "When Redis
    /// goes down").
    ///
    /// Cost: a full `SCAN` of the server's keyspace (every key is visited, whatever the
    /// pattern), in steps of a few thousand keys that never block the server for long. For
    /// invalidations on a hot path, attach tags instead ([`invalidate_tag`](Cache::invalidate_tag)
    /// is one command whatever the number of entries).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::key;
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set(&key!("user", 1, "profile"), &"ann", None).await?;
    /// cache.set(&key!("user", 2, "profile"), &"bob", None).await?;
    /// cache.set(&key!("order", 1), &"book", None).await?;
    /// assert_eq!(cache.invalidate_pattern("user:*").await?, 2);
    /// assert_eq!(cache.get::<String>("user:1:profile").await?, None);
    /// assert!(cache.exists("order:1").await?);
    ///
    /// let acme = cache.tenant("acme");
    /// acme.set("user:1", &"carol", None).await?;
    /// assert_eq!(acme.invalidate_pattern("*").await?, 1); // the tenant only
    /// assert!(cache.exists("order:1").await?);
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        self.handle().invalidate_pattern(pattern).await
    }

    /// A health report, within the connect timeout plus the command timeout (see
    /// [`health_within`](Cache::health_within)). Never fails: a Redis that does not answer is
    /// a [`HealthStatus::Down`](crate::HealthStatus::Down) report.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let health = cache_core::Cache::in_memory().health().await;
    /// let json = serde_json::to_value(&health).unwrap();
    /// assert_eq!(json["status"], "ok");
    /// assert_eq!(json["mode"], "memory");
    /// # }
    /// ```
    pub async fn health(&self) -> Health {
        self.handle().health().await
    }

    /// A health report within `bound` (`PING` and `INFO` together).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::HealthStatus;
    /// // nothing listens on port 1
    /// let cache = cache_core::Cache::builder().url("redis://127.0.0.1:1").build()?;
    /// let h = cache.health_within(Duration::from_millis(500)).await;
    /// assert_eq!(h.status, HealthStatus::Down);
    /// assert!(h.error.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn health_within(&self, bound: Duration) -> Health {
        self.handle().health_within(bound).await
    }

    /// Counts this handle's keys by group and estimates their memory: `SCAN MATCH prefix*`
    /// in pages of 1,000 (never `KEYS`), stopping after [`max_keys`](KeyReportBuilder::max_keys)
    /// (default 100,000), with `MEMORY USAGE` on the first 16 keys of each group and every
    /// 100th key after. Needs `+scan +memory` in an ACL user's commands. On a Redis Cluster
    /// every primary is scanned.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.mset(&[("user:1", 1u8), ("user:2", 2), ("order:1", 3)], None).await?;
    /// let report = cache.key_report().on_progress(|scanned| println!("{scanned} keys")).run().await?;
    /// assert_eq!(report.scanned, 3);
    /// let users = report.groups.iter().find(|g| g.name == "user").unwrap();
    /// assert_eq!(users.keys, 2);
    /// assert!(users.estimated_bytes > 0);
    /// # Ok(()) }
    /// ```
    pub fn key_report(&self) -> KeyReportBuilder<'_> {
        self.handle().key_report()
    }

    /// Loads `keys` with `loader` and stores each value (for the default TTL unless
    /// [`ttl`](WarmBuilder::ttl) says otherwise), 16 at a time unless
    /// [`concurrency`](WarmBuilder::concurrency) says otherwise. A failing loader or write is
    /// counted and the run goes on; [`on_progress`](WarmBuilder::on_progress) hears after each
    /// key, and a [`WarmCancel`](crate::warm::WarmCancel) stops new loads.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// let ids: Vec<String> = (0..100).map(|i| format!("user:{i}")).collect();
    /// let summary = cache
    ///     .warm(ids, |key: String| async move {
    ///         if key == "user:13" { Err("unlucky") } else { Ok(key.len()) } // a database call
    ///     })
    ///     .concurrency(8)
    ///     .on_progress(|p| if p.done == p.total { println!("{} errors", p.errors) })
    ///     .run()
    ///     .await;
    /// assert_eq!((summary.loaded, summary.errors), (99, 1));
    /// assert_eq!(cache.get::<usize>("user:42").await?, Some(7));
    /// # Ok(()) }
    /// ```
    pub fn warm<K, F, Fut, T, E>(
        &self,
        keys: impl IntoIterator<Item = K>,
        loader: F,
    ) -> WarmBuilder<'_, F>
    where
        K: Into<String>,
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + 'static,
        E: Display,
    {
        self.handle().warm(keys, loader)
    }

    /// A distributed lock named `name`, in this handle's scope (a tenant's locks are its own).
    /// Configure it, then [`acquire`](Lock::acquire) (waiting) or
    /// [`try_acquire`](Lock::try_acquire) (once); the [`LockGuard`](crate::LockGuard) releases it.
    ///
    /// Names follow the rules of keys: not empty, no whitespace or control characters, not
    /// starting with `~`. On Redis, the lock is the key `<prefix>~lock:{<name>}` and its
    /// fencing counter `<prefix>~lock:{<name>}:fence` (one hash slot); names longer than
    /// [`MAX_KEY_LEN`](crate::key::MAX_KEY_LEN) or holding braces are stored by digest.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// let cache = cache_core::Cache::in_memory();
    /// let guard = cache.lock("invoice:42").ttl(Duration::from_secs(10)).acquire().await?;
    /// // ... work on invoice 42, passing guard.token() to the store it writes to ...
    /// assert!(guard.release().await?);
    /// # Ok(()) }
    /// ```
    pub fn lock(&self, name: &str) -> Lock {
        self.handle().lock(name)
    }

    /// The session store of this handle's scope (namespace and tenant); see [`Sessions`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// let id = cache.sessions().create(None, &"cart").await?;
    /// assert!(cache.sessions().exists(&id).await?);
    /// assert!(!cache.tenant("acme").sessions().exists(&id).await?); // another scope
    /// # Ok(()) }
    /// ```
    pub fn sessions(&self) -> Sessions {
        Sessions::new(self.handle(), self.capabilities.sessions.clone())
    }

    /// A rate limiter whose state lives in this cache, under this handle's scope (namespace,
    /// tenant). Limiters of the same name and algorithm in the same scope share their state,
    /// so every instance of a service enforces one limit. A configuration out of range (limit,
    /// window, burst, name) is an [`Error::Config`](crate::Error::Config) at the first check.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, RateLimit};
    /// let cache = Cache::in_memory();
    /// let limiter = cache.rate_limiter(RateLimit::sliding_log(100, Duration::from_secs(60)));
    /// assert!(limiter.check("client-7").await?.allowed);
    /// let acme = cache.tenant("acme").rate_limiter(RateLimit::sliding_log(100, Duration::from_secs(60)));
    /// assert_eq!(acme.check("client-7").await?.remaining, 99); // another tenant, another count
    /// # Ok(()) }
    /// ```
    pub fn rate_limiter(&self, config: RateLimit) -> RateLimiter {
        RateLimiter::new(self.handle(), self.capabilities.limits.clone(), config)
    }
}

static GLOBAL: OnceLock<Cache> = OnceLock::new();

/// Installs the cache that `#[cached]` functions without `cache = ...` use. Call it once at
/// start; a second call returns the cache it was given back.
///
/// ```
/// # fn main() -> Result<(), cache_core::Error> {
/// let cache = cache_core::Cache::from_env()?;
/// let _ = cache_core::install(cache);
/// assert!(cache_core::installed().is_some());
/// # Ok(()) }
/// ```
pub fn install(cache: Cache) -> std::result::Result<(), Cache> {
    GLOBAL.set(cache)
}

/// The installed global cache, if any.
///
/// ```
/// use cache_core::{Cache, Source};
/// assert!(cache_core::installed().is_none()); // nothing installed yet in this program
/// assert!(cache_core::install(Cache::in_memory()).is_ok());
/// assert!(matches!(cache_core::installed(), Some(c) if c.backend() == Source::Memory));
/// ```
pub fn installed() -> Option<&'static Cache> {
    GLOBAL.get()
}

/// `cache = expr` in generated code.
#[doc(hidden)]
pub fn explicit(cache: &Cache) -> CacheRef<'_> {
    Some(&cache.pipeline)
}

/// The cache installed with [`install`], in generated code; before installation, functions
/// compute directly, and this says so once.
#[doc(hidden)]
pub fn global() -> CacheRef<'static> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    let cache = installed();
    if cache.is_none() && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "a #[cached] function ran before cache_core::install(..): computing without a cache until one is installed"
        );
    }
    cache.map(|c| &c.pipeline)
}
