//! The `Cache` handle: typed operations over a backend, scoped by namespace and tenant.

pub(crate) mod crypto;
pub(crate) mod local;
pub(crate) mod observe;
pub(crate) mod tags;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::base::codec::{self, Meta};
use crate::base::error::{Error, Result};
pub use crate::base::source::{Lookup, Source};
use crate::base::key::{self, KeyBuf, KeyPart};
use crate::base::observe::{MissReason, Operation, Outcome};
use crate::base::crypto::Keyring;
use crate::base::settings::{Config, Target};
use crate::builder::CacheBuilder;
use crate::base::stats::{Stats, StatsSnapshot, WarnThrottle};
use crate::store::memory::MemoryBackend;
use crate::store::redis::RedisBackend;
use crate::store::{Backend, KeyTtl};

pub(crate) struct Shared {
    pub(crate) backend: Backend,
    pub(crate) config: Config,
    pub(crate) stats: Stats,
    /// Backend failures are logged at most once a second (with how many were held back).
    warnings: WarnThrottle,
    /// Per-root state of capabilities built on top of the backend (lock waiters, in-memory
    /// limiter windows, ...), one value per type; see [`Cache::root_state`].
    /// Patterns invalidated recently (pattern.rs).
    pub(crate) patterns: crate::pattern::PatternLog,
    /// The L1 near cache, when configured on a Redis backend (local.rs).
    pub(crate) local: Option<Arc<crate::engine::local::Local>>,
    extensions: std::sync::Mutex<
        std::collections::HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>,
    >,
}

/// Everything a handle adds to keys: `root:[namespace:...][@tenant:]`.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub(crate) prefix: String,
    pub(crate) default_ttl: Option<Duration>,
    /// The keys values are encrypted with (crypto.rs); inherited by scopes made from this one.
    pub(crate) encryption: Option<Arc<crate::base::crypto::Keyring>>,
    /// The statistics of the first-level namespace this handle counts under (observe.rs).
    pub(crate) stats: Arc<crate::base::observe::NsStats>,
    /// Whether reads through this scope use the L1 (local.rs; on unless opted out).
    pub(crate) local: bool,
}

/// A handle on the cache: cheap to clone (two `Arc`s), `Send + Sync`, usable from any task.
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
    pub(crate) shared: Arc<Shared>,
    pub(crate) scope: Arc<Scope>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.shared.backend)
            .field("prefix", &self.scope.prefix)
            .field("default_ttl", &self.scope.default_ttl)
            .field("encryption", &self.scope.encryption)
            .finish()
    }
}

impl Cache {
    /// A builder, starting from defaults (not from the environment: see
    /// [`CacheBuilder::from_env`]).
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::builder().namespace("billing").build()?;
    /// assert_eq!(cache.key_prefix(), "billing:");
    /// # Ok(()) }
    /// ```
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }

    /// A cache configured from the environment (see [`CacheBuilder::from_env`]): Redis when
    /// `REDIS_URL` (or `REDIS_HOST`) is set, the embedded backend otherwise, with a log line
    /// saying which. Does not connect, so an unreachable Redis is not an error here.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, Source};
    /// let cache = Cache::from_env()?;
    /// let given = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    /// let wants_redis = given("REDIS_URL") || given("REDIS_HOST");
    /// assert_eq!(cache.backend() == Source::Redis, wants_redis);
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Cache> {
        CacheBuilder::from_env()?.build()
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
        let config = Config::default();
        Cache::with_backend(
            Backend::Memory(MemoryBackend::new(config.memory_capacity)),
            config,
            None,
        )
    }

    pub(crate) fn from_config(config: Config, keyring: Option<Keyring>) -> Result<Cache> {
        let backend = match &config.target {
            Target::Memory => {
                tracing::info!(namespace = %config.namespace, "cache: no REDIS_URL, using the embedded in-memory backend");
                Backend::Memory(MemoryBackend::new(config.memory_capacity))
            }
            Target::Redis(target) => {
                let backend = RedisBackend::new(target, &config)?;
                tracing::info!(namespace = %config.namespace, backend = ?backend, "cache: using redis");
                Backend::Redis(backend)
            }
        };
        Ok(Cache::with_backend(backend, config, keyring))
    }

    fn with_backend(backend: Backend, config: Config, keyring: Option<Keyring>) -> Cache {
        let scope = Scope {
            prefix: format!("{}:", config.namespace),
            default_ttl: config.default_ttl,
            encryption: keyring.map(Arc::new),
            stats: Arc::new(crate::base::observe::NsStats::new(&config.namespace)),
            local: true,
        };
        let local = crate::engine::local::Local::for_backend(&backend, &config);
        let shared = Arc::new(Shared {
            backend,
            config,
            stats: Stats::default(),
            warnings: WarnThrottle::default(),
            patterns: Default::default(),
            local,
            extensions: Default::default(),
        });
        crate::store::breaker::attach(&shared);
        let cache = Cache {
            shared,
            scope: Arc::new(scope),
        };
        crate::engine::observe::register_root(&cache);
        cache
    }

    // ---- scopes -----------------------------------------------------------------------------

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
        let escaped = key::escape(name);
        let stats = crate::engine::observe::namespace_stats(self, &escaped);
        self.scoped_with(
            format!("{}{}:", self.scope.prefix, escaped),
            self.scope.default_ttl,
            stats,
        )
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
        let mut k = KeyBuf::new();
        k.part(&id);
        self.scoped(
            format!("{}@{}:", self.scope.prefix, k.as_str()),
            self.scope.default_ttl,
        )
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
        self.scoped(self.scope.prefix.clone(), Some(ttl))
    }

    fn scoped(&self, prefix: String, default_ttl: Option<Duration>) -> Cache {
        self.scoped_with(prefix, default_ttl, self.scope.stats.clone())
    }

    fn scoped_with(
        &self,
        prefix: String,
        default_ttl: Option<Duration>,
        stats: Arc<crate::base::observe::NsStats>,
    ) -> Cache {
        Cache {
            shared: self.shared.clone(),
            scope: Arc::new(Scope {
                prefix,
                default_ttl,
                encryption: self.scope.encryption.clone(),
                stats,
                local: self.scope.local,
            }),
        }
    }

    /// The prefix of every key of this handle (`namespace:` plus scopes), as stored in Redis.
    ///
    /// ```
    /// let cache = cache_core::Cache::in_memory();
    /// assert_eq!(cache.key_prefix(), "cache:");
    /// assert_eq!(cache.namespace("orders").tenant("acme").key_prefix(), "cache:orders:@acme:");
    /// ```
    pub fn key_prefix(&self) -> &str {
        &self.scope.prefix
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
        self.scope.default_ttl
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
        self.shared.backend.kind()
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
        let mut stats = self.shared.stats.snapshot();
        self.add_breaker_stats(&mut stats);
        stats
    }

    /// The full key stored in the backend for `key`. A key that is empty, holds whitespace or
    /// a control character, or starts with `~` (reserved) is [`Error::InvalidKey`]; one longer
    /// than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) is hashed.
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
        key::validate_user_key(key)?;
        Ok(key::full_key(&self.scope.prefix, key))
    }

    pub(crate) fn full_key_of(&self, key: KeyBuf) -> String {
        key::full_key_owned(&self.scope.prefix, key.into_string())
    }

    pub(crate) fn tag_key(&self, tag: &str) -> String {
        tags::version_key(&self.scope.prefix, tag)
    }

    pub(crate) fn ttl_or_default(&self, ttl: Option<Duration>) -> Option<Duration> {
        ttl.or(self.scope.default_ttl)
    }

    fn backend_err(&self, operation: &str, key: &str, e: &Error) {
        self.shared.stats.backend_error();
        self.scope.stats.error();
        if let Some(held) = self.shared.warnings.admit(codec::now_ms()) {
            tracing::warn!(operation, key = %key::shorten_for_display(key), error = %e, held_back = held, "cache backend error");
        }
    }

    /// A failure on the get-or-compute path, where the caller gets its computed value anyway:
    /// counted (encode errors are, where they happen) and logged with the function served, so
    /// a value that never gets cached (one serde_json cannot write, say) shows up in the logs.
    pub(crate) fn compute_err(
        &self,
        function: &'static str,
        operation: &str,
        key: &str,
        e: &Error,
    ) {
        if !e.is_caller_side() {
            self.shared.stats.backend_error();
            self.scope.stats.error();
        }
        if let Some(held) = self.shared.warnings.admit(codec::now_ms()) {
            tracing::warn!(function, operation, key = %key::shorten_for_display(key), error = %e, held_back = held, "cache failure; value computed without the cache");
        }
    }

    // ---- reads ------------------------------------------------------------------------------

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
        Ok(self.lookup(key).await?.into_value())
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
        let mut op = self.op(Operation::Get);
        let full = self.full_key(key)?;
        // local.rs: the L1 answers first, when on.
        let local = self.local();
        let mark = match local.map(|l| self.local_read::<T>(l, &full, 0, |_| None, |_| None)) {
            Some(Ok(hit)) => {
                op.hit(Source::Local); // ops: an L1 hit
                return Ok(hit);
            }
            Some(Err(mark)) => Some(mark),
            None => None,
        };
        let bytes = self
            .shared
            .backend
            .get(&full)
            .await
            .inspect_err(|e| self.backend_err("get", &full, e))?;
        let found = self.decode_hit(&full, bytes.as_deref(), None, 0).await;
        op.lookup(&found);
        if let (Some(local), Some(mark), Ok(true)) =
            (local, mark, found.as_ref().map(|f| f.is_hit()))
        {
            self.local_fill::<()>(local, &full, bytes.as_ref(), mark, None);
        }
        found
    }

    /// Decodes what a read found; `known_versions` are the current versions of tags the
    /// caller already fetched in the same round trip.
    pub(crate) async fn decode_hit<T: DeserializeOwned + 'static>(
        &self,
        full: &str,
        bytes: Option<&[u8]>,
        known_versions: Option<(&[String], &[Option<u64>])>,
        fingerprint: u64,
    ) -> Result<Lookup<T>> {
        let stats = &self.shared.stats;
        let Some(bytes) = bytes.filter(|b| !codec::is_tombstone(b)) else {
            self.count_miss(MissReason::Absent);
            stats.miss();
            return Ok(Lookup::Miss);
        };
        let now = codec::now_ms();
        let decoded = match codec::parse(bytes) {
            Ok(env) => {
                // The backend's TTL is authoritative (`expire` and `touch` change only it); the
                // logical expiry matters for entries kept past it to be served stale.
                if env.stale_until_ms > env.expires_at_ms && env.expires_at_ms <= now {
                    self.count_miss(MissReason::Expired);
                    stats.miss();
                    return Ok(Lookup::Miss);
                }
                if env.has_tags() && !tags::still_valid(self, env.tags(), known_versions).await? {
                    self.count_miss(MissReason::TagInvalidated);
                    stats.miss();
                    return Ok(Lookup::Miss);
                }
                self.open_value::<T>(full, bytes, &env, fingerprint)
                    .map(|v| {
                        (
                            v,
                            Duration::from_millis(now.saturating_sub(env.created_at_ms)),
                        )
                    })
            }
            Err(reason) => codec::decode_plain::<T>(bytes)
                .map(|v| (v, Duration::ZERO))
                .map_err(|_| reason.to_owned()),
        };
        match decoded {
            Ok((value, age)) => {
                self.scope.stats.hit();
                stats.hit();
                Ok(Lookup::Hit {
                    value,
                    source: self.shared.backend.kind(),
                    age,
                })
            }
            Err(reason) => {
                self.count_miss(MissReason::Undecodable);
                stats.decode_error();
                stats.miss();
                tracing::debug!(key = %key::shorten_for_display(full), %reason, "cache value not decodable, treated as a miss");
                Ok(Lookup::Miss)
            }
        }
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
        let mut op = self.op(Operation::Mget);
        let full: Vec<String> = keys
            .iter()
            .map(|k| self.full_key(k))
            .collect::<Result<_>>()?;
        let found = self
            .shared
            .backend
            .get_many(&full)
            .await
            .inspect_err(|e| self.backend_err("mget", &full.join(" "), e))?;
        // The versions of every tag the entries record, read together: one more round trip
        // in all, not one per tagged entry.
        let mut tag_keys: Vec<String> = found
            .iter()
            .flatten()
            .filter_map(|bytes| codec::parse(bytes).ok())
            .flat_map(|env| env.tags().map(|(k, _)| k.to_owned()))
            .collect();
        tag_keys.sort_unstable();
        tag_keys.dedup();
        let versions = if tag_keys.is_empty() {
            Vec::new()
        } else {
            self.shared
                .backend
                .versions(&tag_keys)
                .await
                .inspect_err(|e| self.backend_err("mget (tag versions)", &tag_keys[0], e))?
        };
        let mut out = Vec::with_capacity(found.len());
        for (k, bytes) in full.iter().zip(&found) {
            let known = Some((tag_keys.as_slice(), versions.as_slice()));
            out.push(
                self.decode_hit(k, bytes.as_deref(), known, 0)
                    .await?
                    .into_value(),
            );
        }
        op.outcome(Outcome::Ok);
        Ok(out)
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
        let mut op = self.op(Operation::Exists);
        let full = self.full_key(key)?;
        let r = self.shared.backend.exists(&full).await;
        op.result(&r);
        r.inspect_err(|e| self.backend_err("exists", &full, e))
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
        let mut op = self.op(Operation::Ttl);
        let full = self.full_key(key)?;
        let r = self.shared.backend.ttl(&full).await;
        op.result(&r);
        r.inspect_err(|e| self.backend_err("ttl", &full, e))
    }

    // ---- writes -----------------------------------------------------------------------------

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
        self.set_tagged(key, value, ttl, &[]).await
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
        let full = self.full_key(key)?;
        let ttl = crate::base::limits::ttl(self.ttl_or_default(ttl.into()))?;
        let tag_keys = tags
            .iter()
            .map(|t| tags::checked_tag(t).map(|t| self.tag_key(t)))
            .collect::<Result<Vec<_>>>()?;
        let versions = tags::current_versions(self, &tag_keys, None).await?;
        self.store(&full, value, ttl, (&tag_keys, &versions), 0, 0)
            .await
    }

    /// Writes an encoded value; `tags` are the tag version keys and the versions read before
    /// the value was computed.
    pub(crate) async fn store<T: Serialize + 'static>(
        &self,
        full: &str,
        value: &T,
        ttl: Option<Duration>,
        tags: (&[String], &[u64]),
        compute_us: u32,
        fingerprint: u64,
    ) -> Result<()> {
        self.write(
            full,
            value,
            ttl,
            tags,
            compute_us,
            fingerprint,
            WriteIf::Always,
        )
        .await
        .map(drop)
        .inspect_err(|e| {
            if !e.is_caller_side() {
                self.backend_err("set", full, e)
            }
        })
    }

    /// [`store`](Self::store) without logging: the get-or-compute path logs with its function.
    /// False if `condition` kept the value from being written.
    #[allow(clippy::too_many_arguments)] // one private step, called from two places
    pub(crate) async fn write<T: Serialize + 'static>(
        &self,
        full: &str,
        value: &T,
        ttl: Option<Duration>,
        tags: (&[String], &[u64]),
        compute_us: u32,
        fingerprint: u64,
        condition: WriteIf,
    ) -> Result<bool> {
        let encoded = crate::base::limits::ttl(ttl).and_then(|ttl| {
            let bytes = self.encode(full, value, ttl, tags, compute_us, fingerprint)?;
            Ok((ttl, bytes))
        });
        match encoded {
            Ok((ttl, bytes)) => self.write_encoded(full, bytes, ttl, condition).await,
            Err(e) => {
                drop(self.op(Operation::Set)); // reported as a failed `set`
                Err(e)
            }
        }
    }

    /// Writes what [`encode_entry`](Self::encode_entry) made, if `condition` holds (counted
    /// as a write, or as superseded).
    pub(crate) async fn write_encoded(
        &self,
        full: &str,
        bytes: Vec<u8>,
        ttl: Option<Duration>,
        condition: WriteIf,
    ) -> Result<bool> {
        let mut op = self.op(Operation::Set);
        let backend = &self.shared.backend;
        let written = match condition {
            WriteIf::Always => backend.set(full, bytes, ttl).await.map(|()| true)?,
            // pattern.rs: a pattern invalidated since the read matches the key.
            WriteIf::Unchanged(_, mark) if self.pattern_superseded(full, mark) => false,
            WriteIf::Unchanged(seen, _) => {
                backend
                    .set_if_unchanged(full, bytes, ttl, seen.as_deref())
                    .await?
            }
        };
        if written {
            self.scope.stats.write(1);
            self.shared.stats.write(1);
            crate::engine::local::after_keys(self, &[full]).await; // local.rs: the L1s drop the key
        } else {
            self.shared.stats.superseded();
        }
        op.outcome(Outcome::Ok);
        Ok(written)
    }

    fn encode<T: Serialize + 'static>(
        &self,
        full: &str,
        value: &T,
        ttl: Option<Duration>,
        tags: (&[String], &[u64]),
        compute_us: u32,
        fingerprint: u64,
    ) -> Result<Vec<u8>> {
        self.encode_entry(full, value, ttl, None, tags, compute_us, fingerprint)
    }

    /// [`encode`](Self::encode) with a stale window: the entry is logically expired after
    /// `ttl` and kept (to be served stale) for `stale` more (compute.rs).
    #[allow(clippy::too_many_arguments)] // one private step
    pub(crate) fn encode_entry<T: Serialize + 'static>(
        &self,
        full: &str,
        value: &T,
        ttl: Option<Duration>,
        stale: Option<Duration>,
        (tag_keys, tag_versions): (&[String], &[u64]),
        compute_us: u32,
        fingerprint: u64,
    ) -> Result<Vec<u8>> {
        // Zero is refused here too, for the paths that encode before they write (compute.rs);
        // the backends round and clamp the same way (limits::deadline, limits::millis).
        let ttl = crate::base::limits::ttl(ttl)?;
        let now = codec::now_ms();
        let expires_at_ms = ttl.map_or(0, |t| crate::base::limits::expires_at_ms(now, t));
        let meta = Meta {
            created_at_ms: now,
            expires_at_ms,
            stale_until_ms: match (ttl, stale) {
                (Some(_), Some(stale)) => crate::base::limits::expires_at_ms(expires_at_ms, stale),
                _ => 0,
            },
            compute_us,
            fingerprint,
            tag_keys,
            tag_versions,
        };
        let bytes = codec::encode(value, &meta, self.shared.config.compression_threshold)
            .map_err(|source| Error::Encode {
                key: key::shorten_for_display(full),
                source,
            })
            .and_then(|bytes| self.seal(full, bytes))
            .and_then(|bytes| {
                crate::base::limits::value_size(
                    full,
                    bytes.len(),
                    self.shared.config.max_value_size,
                )?;
                Ok(bytes)
            });
        if bytes.is_err() {
            self.scope.stats.error();
            self.shared.stats.encode_error();
        }
        bytes
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
        let mut op = self.op(Operation::Mset);
        let ttl = crate::base::limits::ttl(self.ttl_or_default(ttl.into()))?;
        let mut writes = Vec::with_capacity(items.len());
        for (k, v) in items {
            let full = self.full_key(k)?;
            let bytes = self.encode(&full, v, ttl, (&[], &[]), 0, 0)?;
            writes.push((full, bytes, ttl));
        }
        let n = writes.len() as u64;
        self.shared
            .backend
            .set_many(writes)
            .await
            .inspect_err(|e| self.backend_err("mset", "", e))?;
        self.scope.stats.write(n);
        self.shared.stats.write(n);
        op.outcome(Outcome::Ok);
        let keys: Vec<&str> = items.iter().map(|(k, _)| *k).collect();
        let full: Vec<String> = keys
            .iter()
            .map(|k| key::full_key(&self.scope.prefix, k))
            .collect();
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        crate::engine::local::after_keys(self, &full).await; // local.rs
        Ok(())
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
        let full = self.full_key(key)?;
        self.delete_full(vec![full]).await.map(|n| n > 0)
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
        let full = keys
            .iter()
            .map(|k| self.full_key(k))
            .collect::<Result<Vec<_>>>()?;
        self.delete_full(full).await
    }

    pub(crate) async fn delete_full(&self, full: Vec<String>) -> Result<u64> {
        let mut op = self.op(Operation::Delete);
        let hold = self.shared.config.invalidation_hold;
        let r = self
            .shared
            .backend
            .delete(&full, &codec::tombstone(), hold)
            .await
            .inspect_err(|e| {
                self.backend_err("delete", full.first().map_or("", |k| k.as_str()), e)
            });
        op.result(&r);
        let removed = r?;
        let keys: Vec<&str> = full.iter().map(String::as_str).collect();
        crate::engine::local::after_keys(self, &keys).await; // local.rs: the L1s drop the keys
        Ok(removed)
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
        let mut op = self.op(Operation::Expire);
        let full = self.full_key(key)?;
        let ttl = crate::base::limits::duration("ttl", ttl)?;
        let r = self.shared.backend.expire(&full, ttl).await;
        op.result(&r);
        if let Ok(true) = r {
            crate::engine::local::after_keys(self, &[&full]).await; // local.rs: lifetimes follow Redis
        }
        r.inspect_err(|e| self.backend_err("expire", &full, e))
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
        match self.scope.default_ttl {
            Some(ttl) => self.expire(key, ttl).await,
            None => Ok(false),
        }
    }

    /// Adds `by` to the integer counter under `key`, keeping its TTL, as Redis `INCRBY`. A
    /// missing counter starts at 0 with no TTL (the default TTL does not apply: give it one
    /// with [`expire`](Cache::expire)). A key holding a cached value, or a sum that overflows
    /// `i64`, is [`Error::WrongKind`]. Read a counter back with `get::<i64>`.
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
        let mut op = self.op(Operation::Incr);
        let full = self.full_key(key)?;
        let r = self.shared.backend.incr(&full, by).await;
        op.result(&r);
        r.inspect_err(|e| {
            if e.is_unavailable() || matches!(e, Error::Command { .. }) {
                self.backend_err("incr", &full, e)
            }
        })
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
        self.invalidate_tags(&[tag]).await
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
        let mut op = self.op(Operation::InvalidateTags);
        let keys = tags
            .iter()
            .map(|t| tags::checked_tag(t).map(|t| self.tag_key(t)))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let r = self.shared.backend.bump(&refs).await;
        op.result(&r);
        let versions = r.inspect_err(|e| {
            self.backend_err("invalidate tags", refs.first().copied().unwrap_or(""), e)
        })?;
        crate::engine::local::after_tags(self, &refs, &versions).await; // local.rs
        Ok(())
    }

    pub(crate) fn backend_ref(&self) -> &Backend {
        &self.shared.backend
    }

    /// The one `T` of this cache root (shared by clones and scoped handles), made on first
    /// use: where a capability keeps its per-root state without a field in [`Shared`].
    #[allow(dead_code)] // the capability modules of the next issues use it
    pub(crate) fn root_state<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut map = match self.shared.extensions.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        let entry = map
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()) as Arc<dyn std::any::Any + Send + Sync>)
            .clone();
        drop(map);
        match entry.downcast::<T>() {
            Ok(state) => state,
            // The map is keyed by the type id, so the downcast cannot fail.
            Err(_) => unreachable!("root_state entry of another type"),
        }
    }
}

/// When a computed value is written.
#[derive(Debug)]
pub(crate) enum WriteIf {
    /// Explicit writes (`set`, `_refresh`, `#[cache_put]`): the newest word on the key.
    Always,
    /// A value computed after a read that found this (`None`: nothing): written only if the
    /// key still holds it, so that nothing that changed the key meanwhile is overwritten;
    /// nor if a pattern invalidated after the read matches the key (the
    /// [`pattern_mark`](Cache::pattern_mark) taken before it).
    Unchanged(Option<Bytes>, u64),
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
