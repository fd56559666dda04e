//! The front door's builder: [`CacheBuilder`], from code and from the environment.

use std::time::Duration;

use crate::base::crypto::Keyring;
use crate::base::error::{Error, Result};
use crate::base::settings::{
    Config, RedisTarget, Target, Topology, parse_bool, parse_duration, parse_int, redact_url,
};
use crate::cache::Cache;
use crate::engine::Handle;

/// Builds a [`Cache`]: from code, from the environment, or both.
///
/// ```
/// use std::time::Duration;
/// # fn main() -> Result<(), cache_core::Error> {
/// let cache = cache_core::Cache::builder()
///     .namespace("billing")
///     .default_ttl(Duration::from_secs(300))
///     .in_memory()
///     .build()?;
/// # let _ = cache;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct CacheBuilder {
    pub(crate) config: Config,
    tls: Option<bool>,
    credentials: Credentials,
    /// `encryption_key` and `old_encryption_keys`, made a keyring by `build`.
    encryption: (
        Option<crate::base::crypto::EncryptionKey>,
        Vec<crate::base::crypto::EncryptionKey>,
    ),
}

/// What `username`, `password` and `tls_ca_pem` set, kept apart from the URL and applied to it
/// in `build`, so the order of the builder calls does not matter.
#[derive(Clone, Default)]
struct Credentials {
    username: Option<String>,
    password: Option<String>,
    tls_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca.as_ref().map(|pem| pem.len()))
            .finish()
    }
}

impl CacheBuilder {
    /// Starts from defaults (embedded backend, namespace `cache`, default TTL one hour),
    /// ignoring the environment.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{CacheBuilder, Source};
    /// let cache = CacheBuilder::new().build()?;
    /// assert_eq!(cache.backend(), Source::Memory);
    /// assert_eq!(cache.key_prefix(), "cache:");
    /// assert_eq!(cache.default_ttl(), Some(Duration::from_secs(3600)));
    /// # Ok(()) }
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from the environment: `REDIS_URL` (or `REDIS_HOST`, `REDIS_PORT`, `REDIS_DB`,
    /// `REDIS_USERNAME`, `REDIS_PASSWORD`, `REDIS_TLS`) and the `CACHE_*` variables of the
    /// configuration table of [the guide](crate::guide::configuration). Without `REDIS_URL` or `REDIS_HOST` the embedded
    /// backend is used. Builder methods called afterwards override the environment.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::CacheBuilder;
    /// let cache = CacheBuilder::from_env()?.namespace("billing").build()?;
    /// assert_eq!(cache.key_prefix(), "billing:"); // wins over `CACHE_NAMESPACE`
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `lookup` (for tests and for
    /// applications with their own configuration source).
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use std::{collections::HashMap, time::Duration};
    /// use cache_core::{CacheBuilder, Source};
    /// let vars = HashMap::from([("REDIS_HOST", "127.0.0.1"), ("CACHE_DEFAULT_TTL", "5m")]);
    /// let cache = CacheBuilder::from_lookup(|name| vars.get(name).map(|v| v.to_string()))?.build()?;
    /// assert_eq!(cache.backend(), Source::Redis); // built, not connected
    /// assert_eq!(cache.default_ttl(), Some(Duration::from_secs(300)));
    /// # Ok(()) }
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut b = CacheBuilder::new();
        if let Some(v) = get("REDIS_TLS") {
            b.tls = Some(parse_bool("REDIS_TLS", &v)?);
        }
        let url = match (get("REDIS_URL"), get("REDIS_HOST")) {
            (Some(url), _) => Some(url),
            (None, Some(host)) => {
                let port = match get("REDIS_PORT") {
                    Some(p) => p.trim().parse::<u16>().map_err(|_| Error::Config {
                        setting: "REDIS_PORT",
                        reason: format!("`{p}` is not a port number (1-65535)"),
                    })?,
                    None => 6379,
                };
                let db = match get("REDIS_DB") {
                    Some(d) => d.trim().parse::<u32>().map_err(|_| Error::Config {
                        setting: "REDIS_DB",
                        reason: format!("`{d}` is not a database number"),
                    })?,
                    None => 0,
                };
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host
                };
                Some(format!("redis://{host}:{port}/{db}"))
            }
            (None, None) => None,
        };
        if let Some(url) = url {
            b = b.url(url);
        }
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        if let Some(nodes) = get("REDIS_CLUSTER_NODES") {
            b = b.cluster_nodes(list(nodes));
        }
        if let Some(sentinels) = get("REDIS_SENTINEL_URLS") {
            let master = get("REDIS_SENTINEL_MASTER").ok_or_else(|| Error::Config {
                setting: "REDIS_SENTINEL_MASTER",
                reason: "REDIS_SENTINEL_URLS is set: name the primary the sentinels monitor".into(),
            })?;
            b = b.sentinel(list(sentinels), master.trim());
        }
        if let Some(u) = get("REDIS_USERNAME") {
            b = b.username(u);
        }
        if let Some(p) = lookup("REDIS_PASSWORD").filter(|p| !p.is_empty()) {
            b = b.password(p);
        }
        if let Some(path) = get("REDIS_TLS_CA") {
            let pem = std::fs::read(path.trim()).map_err(|e| Error::Config {
                setting: "REDIS_TLS_CA",
                reason: format!("cannot read the CA certificate file `{}`: {e}", path.trim()),
            })?;
            b = b.tls_ca_pem(pem);
        }
        if let Some(v) = get("CACHE_NAMESPACE") {
            b = b.namespace(v);
        }
        if let Some(v) = get("CACHE_DEFAULT_TTL") {
            b.config.default_ttl = match v.trim() {
                "none" | "0" => None,
                _ => Some(parse_duration("CACHE_DEFAULT_TTL", &v)?),
            };
        }
        if let Some(v) = get("CACHE_POOL_SIZE") {
            b = b.pool_size(parse_int("CACHE_POOL_SIZE", &v)?);
        }
        if let Some(v) = get("CACHE_POOL_MIN_IDLE") {
            b = b.min_idle(parse_int("CACHE_POOL_MIN_IDLE", &v)?);
        }
        if let Some(v) = get("CACHE_CONNECT_TIMEOUT") {
            b = b.connect_timeout(parse_duration("CACHE_CONNECT_TIMEOUT", &v)?);
        }
        if let Some(v) = get("CACHE_COMMAND_TIMEOUT") {
            b = b.command_timeout(parse_duration("CACHE_COMMAND_TIMEOUT", &v)?);
        }
        if let Some(v) = get("CACHE_COMPRESSION_THRESHOLD") {
            b = b.compression_threshold(parse_int("CACHE_COMPRESSION_THRESHOLD", &v)? as usize);
        }
        if let Some(v) = get("CACHE_INVALIDATION_HOLD") {
            b = b.invalidation_hold(parse_duration("CACHE_INVALIDATION_HOLD", &v)?);
        }
        if let Some(v) = get("CACHE_BREAKER_FAILURES") {
            b.config.breaker_failures = parse_int("CACHE_BREAKER_FAILURES", &v)?;
        }
        if let Some(v) = get("CACHE_BREAKER_OPEN_FOR") {
            b.config.breaker_open_for = parse_duration("CACHE_BREAKER_OPEN_FOR", &v)?;
        }
        if let Some(v) = get("CACHE_LOCAL_CAPACITY") {
            b = b.local_cache(parse_int("CACHE_LOCAL_CAPACITY", &v)?.into());
        }
        if let Some(v) = get("CACHE_LOCAL_MAX_BYTES") {
            b = b.local_cache_max_bytes(parse_int("CACHE_LOCAL_MAX_BYTES", &v)?.into());
        }
        if let Some(v) = get("CACHE_LOCAL_TTL") {
            b = b.local_ttl(parse_duration("CACHE_LOCAL_TTL", &v)?);
        }
        if let Some(v) = get("CACHE_MEMORY_CAPACITY") {
            b = b.memory_capacity(parse_int("CACHE_MEMORY_CAPACITY", &v)?.into());
        }
        if let Some(v) = lookup("CACHE_ENCRYPTION_KEY").filter(|v| !v.trim().is_empty()) {
            b = b.encryption_key(crate::base::crypto::EncryptionKey::parse(
                "CACHE_ENCRYPTION_KEY",
                &v,
            )?);
        }
        if let Some(v) = lookup("CACHE_ENCRYPTION_OLD_KEYS").filter(|v| !v.trim().is_empty()) {
            let old = v
                .split(',')
                .filter(|k| !k.trim().is_empty())
                .map(|k| crate::base::crypto::EncryptionKey::parse("CACHE_ENCRYPTION_OLD_KEYS", k))
                .collect::<Result<Vec<_>>>()?;
            b = b.old_encryption_keys(old);
        }
        if let Some(v) = get("CACHE_MAX_VALUE_SIZE") {
            b = b.max_value_size(parse_int("CACHE_MAX_VALUE_SIZE", &v)? as usize);
        }
        observe_from_env(&mut b, &get)?;
        Ok(b)
    }

    /// Uses the Redis server at `url` (`redis://[user[:password]@]host[:port][/db]`, or
    /// `rediss://` for TLS, which needs the `tls` feature). The URL is checked by
    /// [`build`](Self::build), which does not connect.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, Error, Source};
    /// let cache = Cache::builder().url("redis://127.0.0.1:6379/2").build()?;
    /// assert_eq!(cache.backend(), Source::Redis);
    /// let http = Cache::builder().url("http://127.0.0.1:6379").build();
    /// assert!(matches!(http, Err(Error::Config { setting: "REDIS_URL", .. })));
    /// # Ok(()) }
    /// ```
    pub fn url(mut self, url: impl Into<String>) -> Self {
        let target = match self.config.target {
            Target::Redis(t) => RedisTarget {
                url: url.into(),
                topology: Topology::Single,
                ..t
            },
            Target::Memory => RedisTarget {
                url: url.into(),
                topology: Topology::Single,
                username: None,
                password: None,
                tls_ca: None,
            },
        };
        self.config.target = Target::Redis(target);
        self
    }

    /// Uses a Redis Cluster, discovered from these seed nodes (`redis://host:port`, or
    /// `rediss://` for TLS; one reachable seed is enough). Credentials and TLS settings apply to
    /// every node. Env: `REDIS_CLUSTER_NODES`, comma-separated.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, Source};
    /// let cache = Cache::builder()
    ///     .cluster_nodes(["redis://10.0.0.1:7000", "redis://10.0.0.2:7001"])
    ///     .build()?; // does not connect
    /// assert_eq!(cache.backend(), Source::Redis);
    /// # Ok(()) }
    /// ```
    pub fn cluster_nodes<S: Into<String>>(self, nodes: impl IntoIterator<Item = S>) -> Self {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let first = nodes.first().cloned().unwrap_or_default();
        let mut b = self.url(first);
        if let Target::Redis(t) = &mut b.config.target {
            t.topology = Topology::Cluster(nodes);
        }
        b
    }

    /// Uses the primary that these Sentinels (`redis://host:26379`) report for `master`. The
    /// primary is resolved on every new connection, so after a failover the cache follows it
    /// (a connection to a demoted primary is dropped on its first `READONLY` answer).
    /// Credentials and TLS settings apply to the data nodes; a Sentinel's own password goes in
    /// its URL. Env: `REDIS_SENTINEL_URLS` (comma-separated) and `REDIS_SENTINEL_MASTER`.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, Source};
    /// let cache = Cache::builder()
    ///     .sentinel(["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"], "mymaster")
    ///     .build()?; // does not connect
    /// assert_eq!(cache.backend(), Source::Redis);
    /// # Ok(()) }
    /// ```
    pub fn sentinel<S: Into<String>>(
        self,
        sentinels: impl IntoIterator<Item = S>,
        master: impl Into<String>,
    ) -> Self {
        let sentinels: Vec<String> = sentinels.into_iter().map(Into::into).collect();
        let first = sentinels.first().cloned().unwrap_or_default();
        let mut b = self.url(first);
        if let Target::Redis(t) = &mut b.config.target {
            t.topology = Topology::Sentinel {
                sentinels,
                master: master.into(),
            };
        }
        b
    }

    /// The ACL user name (overrides one in the URL or the environment), whether the URL is
    /// given before or after. Without a Redis URL (the in-memory backend) it is unused.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::builder()
    ///     .url("redis://127.0.0.1:6379")
    ///     .username("billing-app")
    ///     .build()?;
    /// assert_eq!(cache.backend(), cache_core::Source::Redis);
    /// # Ok(()) }
    /// ```
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.credentials.username = Some(username.into());
        self
    }

    /// The password (overrides one in the URL or the environment), whether the URL is given
    /// before or after. It never appears in `Debug` output or logs.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::builder()
    ///     .url("redis://app:old-secret@127.0.0.1:6379")
    ///     .password("new-secret")
    ///     .build()?;
    /// assert!(!format!("{cache:?}").contains("secret"));
    /// # Ok(()) }
    /// ```
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.credentials.password = Some(password.into());
        self
    }

    /// Trusts these PEM certificates (a private CA) for `rediss://` instead of the platform's
    /// certificate store. Needs the `tls` feature (without it, [`build`](Self::build) fails with
    /// [`Error::Config`]). Like [`username`](Self::username), it applies to the URL given
    /// before or after.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis/ca.pem")?;
    /// let cache = cache_core::Cache::builder()
    ///     .url("rediss://cache.internal:6380")
    ///     .tls_ca_pem(ca)
    ///     .build()?;
    /// assert_eq!(cache.backend(), cache_core::Source::Redis);
    /// # Ok(()) }
    /// ```
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.credentials.tls_ca = Some(pem.into());
        self
    }

    /// Forces TLS on (`rediss://`) or off (`redis://`), whatever the URL's scheme says. On
    /// needs the `tls` feature: without it, [`build`](Self::build) fails with [`Error::Config`].
    ///
    /// ```
    /// use cache_core::{Cache, Error, Source};
    /// let built = Cache::builder().url("redis://127.0.0.1:6380").tls(true).build();
    /// match built {
    ///     Ok(cache) => assert_eq!(cache.backend(), Source::Redis), // the `tls` feature is on
    ///     Err(e) => assert!(matches!(e, Error::Config { setting: "REDIS_URL", .. })),
    /// }
    /// ```
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Uses the embedded in-memory backend, dropping a URL given before, by
    /// [`url`](Self::url) or the environment.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{CacheBuilder, Source};
    /// let cache = CacheBuilder::from_env()?.in_memory().build()?; // in tests, say
    /// assert_eq!(cache.backend(), Source::Memory);
    /// # Ok(()) }
    /// ```
    pub fn in_memory(mut self) -> Self {
        self.config.target = Target::Memory;
        self
    }

    /// The first segment of every key, so several applications can share one Redis: 1 to 64
    /// characters from `A-Z a-z 0-9 - _ .`, checked by [`build`](Self::build). Default `cache`.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::Cache;
    /// let cache = Cache::builder().namespace("billing").build()?;
    /// assert_eq!(cache.key_prefix(), "billing:");
    /// assert!(Cache::builder().namespace("billing:v2").build().is_err()); // checked, not escaped
    /// # Ok(()) }
    /// ```
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = namespace.into();
        self
    }

    /// The TTL of writes that do not give one: at least one millisecond (see
    /// [`no_default_ttl`](Self::no_default_ttl) for none). Default one hour.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::Cache;
    /// let cache = Cache::builder().default_ttl(Duration::from_secs(300)).build()?;
    /// assert_eq!(cache.default_ttl(), Some(Duration::from_secs(300)));
    /// assert!(Cache::builder().default_ttl(Duration::ZERO).build().is_err());
    /// # Ok(()) }
    /// ```
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = Some(ttl);
        self
    }

    /// Writes without a TTL never expire (they live until evicted or deleted).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, KeyTtl};
    /// let cache = Cache::builder().no_default_ttl().build()?;
    /// cache.set("settings", &"v1", None).await?;
    /// assert_eq!(cache.ttl("settings").await?, KeyTtl::Persistent);
    /// # Ok(()) }
    /// ```
    pub fn no_default_ttl(mut self) -> Self {
        self.config.default_ttl = None;
        self
    }

    /// Number of multiplexed Redis connections requests are spread over. Each carries any
    /// number of concurrent requests, pipelined: this is not a bound on concurrency, and
    /// fewer connections batch better. Raise it when one connection's I/O task becomes the
    /// bottleneck (many cores, large values). At least 1; default 1.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::Cache;
    /// let cache = Cache::builder().url("redis://127.0.0.1:6379").pool_size(4).build()?;
    /// assert_eq!(cache.backend(), cache_core::Source::Redis);
    /// assert!(Cache::builder().pool_size(0).build().is_err());
    /// # Ok(()) }
    /// ```
    pub fn pool_size(mut self, size: u32) -> Self {
        self.config.pool_size = size;
        self
    }

    /// Connections kept open even when idle, from the first operation on. Capped at
    /// [`pool_size`](Self::pool_size); default 1.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::builder()
    ///     .url("redis://127.0.0.1:6379")
    ///     .pool_size(4)
    ///     .min_idle(2)
    ///     .build()?;
    /// assert_eq!(cache.backend(), cache_core::Source::Redis);
    /// # Ok(()) }
    /// ```
    pub fn min_idle(mut self, min_idle: u32) -> Self {
        self.config.min_idle = min_idle;
        self
    }

    /// Bound on establishing a connection, and so on any operation while Redis is
    /// unreachable. Must be greater than zero; default 2 s.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, Error};
    /// let cache = Cache::builder()
    ///     .url("redis://127.0.0.1:6379")
    ///     .connect_timeout(Duration::from_millis(500))
    ///     .build()?;
    /// assert_eq!(cache.backend(), cache_core::Source::Redis);
    /// let zero = Cache::builder().connect_timeout(Duration::ZERO).build();
    /// assert!(matches!(zero, Err(Error::Config { setting: "connect_timeout", .. })));
    /// # Ok(()) }
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Bound on each Redis command's answer; past it the operation fails with
    /// [`Error::Timeout`]. Must be greater than zero; default 1 s.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, Error};
    /// let cache = Cache::builder()
    ///     .url("redis://127.0.0.1:6379")
    ///     .command_timeout(Duration::from_millis(250))
    ///     .build()?;
    /// assert_eq!(cache.backend(), cache_core::Source::Redis);
    /// let zero = Cache::builder().command_timeout(Duration::ZERO).build();
    /// assert!(matches!(zero, Err(Error::Config { setting: "command_timeout", .. })));
    /// # Ok(()) }
    /// ```
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.config.command_timeout = timeout;
        self
    }

    /// Payloads larger than this many bytes are compressed (LZ4), on either backend;
    /// decompression on read is transparent. Default 4096.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::builder().compression_threshold(1024).build()?;
    /// let page = "<p>hello</p>".repeat(1000); // 12 kB: stored compressed
    /// cache.set("page", &page, None).await?;
    /// assert_eq!(cache.get::<String>("page").await?, Some(page));
    /// # Ok(()) }
    /// ```
    pub fn compression_threshold(mut self, bytes: usize) -> Self {
        self.config.compression_threshold = bytes;
        self
    }

    /// Bound, in bytes of keys and values (plus a small overhead per entry), of the embedded
    /// backend: entries are evicted beyond it. With Redis, the bound of the fallback store
    /// that serves `get_or_set` and `#[cached]` while the circuit breaker is open (see
    /// [`breaker`](Self::breaker)). Default 64 MiB.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::builder().memory_capacity(1024 * 1024).build()?;
    /// cache.set("k", &"small", None).await?;
    /// assert_eq!(cache.get::<String>("k").await?.as_deref(), Some("small"));
    /// # Ok(()) }
    /// ```
    pub fn memory_capacity(mut self, bytes: u64) -> Self {
        self.config.memory_capacity = bytes;
        self
    }

    /// How long an invalidation by key ([`Cache::delete`](crate::Cache::delete), the
    /// `_invalidate` companions, `#[cache_evict]`) keeps winning over computations that were
    /// already running when it landed. The key holds a small tombstone for this long: a
    /// computation that read the key before the invalidation does not store its result over
    /// it, so the value it computed from older data is returned to its caller but never
    /// served afterwards. A computation that outlasts the hold may store its result. Must be
    /// greater than zero; default 60 s.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, Error};
    /// let cache = Cache::builder().invalidation_hold(Duration::from_secs(300)).build()?;
    /// assert_eq!(cache.backend(), cache_core::Source::Memory);
    /// let zero = Cache::builder().invalidation_hold(Duration::ZERO).build();
    /// assert!(matches!(zero, Err(Error::Config { setting: "invalidation_hold", .. })));
    /// # Ok(()) }
    /// ```
    pub fn invalidation_hold(mut self, hold: Duration) -> Self {
        self.config.invalidation_hold = hold;
        self
    }

    /// The largest value stored, in bytes, as stored (after compression and encryption): a
    /// larger one is [`Error::TooLarge`] from `set` and friends, refused before it reaches the
    /// backend, on both backends; `#[cached]` functions and `get_or_set` return it without
    /// storing it (counted in [`encode_errors`](crate::StatsSnapshot::encode_errors), logged).
    /// 1 byte to [`MAX_VALUE_SIZE_LIMIT`](crate::limits::MAX_VALUE_SIZE_LIMIT) (512 MiB, Redis's
    /// largest string); default [`DEFAULT_MAX_VALUE_SIZE`](crate::limits::DEFAULT_MAX_VALUE_SIZE)
    /// (16 MiB). Environment: `CACHE_MAX_VALUE_SIZE`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, Error};
    /// let cache = Cache::builder().max_value_size(64 * 1024).build()?;
    /// cache.set("small", &"fits", None).await?;
    /// assert!(matches!(Cache::builder().max_value_size(0).build(), Err(Error::Config { setting: "max_value_size", .. })));
    /// # Ok(()) }
    /// ```
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.config.max_value_size = bytes;
        self
    }

    /// Encrypts every value written through this cache with `key` (XChaCha20-Poly1305), and
    /// reads only values encrypted with it or with an [old key](Self::old_encryption_keys).
    /// Environment: `CACHE_ENCRYPTION_KEY`, the base64 of 32 bytes. For one namespace only,
    /// see [`Cache::with_encryption`](crate::Cache::with_encryption); what is encrypted and
    /// what it costs: [the guide](crate::guide::configuration#encryption).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, EncryptionKey};
    /// let key = EncryptionKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")?;
    /// let cache = Cache::builder().encryption_key(key).build()?;
    /// cache.set("session:1", &"ann", None).await?;
    /// assert_eq!(cache.get::<String>("session:1").await?.as_deref(), Some("ann"));
    /// assert!(!format!("{cache:?}").contains("AAECAwQF"));
    /// # Ok(()) }
    /// ```
    pub fn encryption_key(mut self, key: crate::base::crypto::EncryptionKey) -> Self {
        self.encryption.0 = Some(key);
        self
    }

    /// Keys still accepted for reading values they encrypted, after a rotation: values
    /// are written with [`encryption_key`](Self::encryption_key) only. Environment:
    /// `CACHE_ENCRYPTION_OLD_KEYS`, comma-separated base64 keys. Without an encryption key
    /// they are unused.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, EncryptionKey};
    /// let (old, new) = (EncryptionKey::generate()?, EncryptionKey::generate()?);
    /// let before = Cache::builder().encryption_key(old.clone()).build()?;
    /// # let _ = before;
    /// let after = Cache::builder().encryption_key(new).old_encryption_keys([old]).build()?;
    /// # let _ = after;
    /// # Ok(()) }
    /// ```
    pub fn old_encryption_keys(
        mut self,
        keys: impl IntoIterator<Item = crate::base::crypto::EncryptionKey>,
    ) -> Self {
        self.encryption.1 = keys.into_iter().collect();
        self
    }

    /// The circuit breaker of a Redis cache: it opens after `failures` consecutive operations
    /// that could not reach Redis (connection refused or lost, timeouts; not errors Redis
    /// answers with), and then turns operations away at once with [`Error::CircuitOpen`]
    /// instead of letting each wait for a timeout; `get_or_set` and `#[cached]` functions
    /// compute, and keep what they compute in an in-process fallback store (bounded by
    /// [`memory_capacity`](Self::memory_capacity)). After `open_for`, one probe checks
    /// Redis in the background: if it answers, the invalidations issued meanwhile are
    /// replayed and the breaker closes. `failures` 0 turns the breaker off; `open_for` must be
    /// greater than zero. Default 5 failures, 1 s. Not used by the in-memory backend.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, Error};
    /// let cache = Cache::builder()
    ///     .url("redis://127.0.0.1:6379")
    ///     .breaker(3, Duration::from_millis(500))
    ///     .build()?;
    /// assert_eq!(cache.backend(), cache_core::Source::Redis);
    /// let zero = Cache::builder().breaker(5, Duration::ZERO).build();
    /// assert!(matches!(zero, Err(Error::Config { setting: "breaker", .. })));
    /// # Ok(()) }
    /// ```
    pub fn breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.config.breaker_failures = failures;
        self.config.breaker_open_for = open_for;
        self
    }

    /// Checks the settings and builds the cache. Does not connect, and needs no tokio
    /// runtime: an unreachable Redis shows up as [`Error::Connection`] from operations, never
    /// here. A setting that cannot be used is [`Error::Config`].
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, Error, Source};
    /// // No runtime here, and nothing listens on port 1: building still succeeds.
    /// let cache = Cache::builder().url("redis://127.0.0.1:1").build()?;
    /// assert_eq!(cache.backend(), Source::Redis);
    /// let bad = Cache::builder().namespace("has space").build();
    /// assert!(matches!(bad, Err(Error::Config { setting: "namespace", .. })));
    /// # Ok(()) }
    /// ```
    pub fn build(self) -> Result<Cache> {
        let (config, keyring) = self.validated()?;
        Handle::from_config(config, keyring).map(Cache::from_handle)
    }

    /// The settings, checked, and the keyring the root encrypts with.
    pub(crate) fn validated(mut self) -> Result<(Config, Option<Keyring>)> {
        crate::base::key::validate_namespace(&self.config.namespace)?;
        if self.config.pool_size == 0 {
            return Err(Error::Config {
                setting: "pool_size",
                reason: "must be at least 1".into(),
            });
        }
        if self.config.pool_size > crate::base::limits::MAX_POOL_SIZE {
            return Err(Error::Config {
                setting: "pool_size",
                reason: format!("must be at most {}", crate::base::limits::MAX_POOL_SIZE),
            });
        }
        if self.config.min_idle > self.config.pool_size {
            self.config.min_idle = self.config.pool_size;
        }
        // Durations: rounded up to whole milliseconds, clamped to MAX_TTL, zero refused.
        let c = &mut self.config;
        c.connect_timeout = crate::base::limits::setting("connect_timeout", c.connect_timeout)?;
        c.command_timeout = crate::base::limits::setting("command_timeout", c.command_timeout)?;
        c.invalidation_hold =
            crate::base::limits::setting("invalidation_hold", c.invalidation_hold)?;
        c.breaker_open_for = crate::base::limits::setting("breaker", c.breaker_open_for)?;
        c.local_ttl = crate::base::limits::setting("local_ttl", c.local_ttl)?;
        if c.local_capacity > 0 && c.local_max_bytes == 0 {
            return Err(Error::Config {
                setting: "local_cache_max_bytes",
                reason: "an L1 of 0 bytes holds nothing; turn the L1 off with `local_cache(0)`"
                    .to_owned(),
            });
        }
        if self.config.default_ttl.is_some_and(|d| d.is_zero()) {
            return Err(Error::Config {
                setting: "default_ttl",
                reason: "must be at least one millisecond; use `no_default_ttl` for none".into(),
            });
        }
        if let Some(ttl) = self.config.default_ttl {
            self.config.default_ttl = Some(crate::base::limits::setting("default_ttl", ttl)?);
        }
        if self.config.memory_capacity == 0 {
            return Err(Error::Config {
                setting: "memory_capacity",
                reason: "must be at least one byte".into(),
            });
        }
        crate::base::limits::value_size_setting(self.config.max_value_size)?;
        let keyring = match std::mem::take(&mut self.encryption) {
            (Some(key), old) => Some(Keyring::new(key, old)),
            (None, _) => None,
        };
        if let (Target::Redis(t), Some(tls)) = (&mut self.config.target, self.tls) {
            t.url = set_tls_scheme(&t.url, tls);
        }
        if let Target::Redis(t) = &mut self.config.target {
            let given = std::mem::take(&mut self.credentials);
            t.username = given.username.or(t.username.take());
            t.password = given.password.or(t.password.take());
            t.tls_ca = given.tls_ca.or(t.tls_ca.take());
        }
        if let Target::Redis(t) = &mut self.config.target {
            let tls = self.tls;
            let retls = |urls: &mut Vec<String>| {
                if let Some(tls) = tls {
                    for u in urls.iter_mut() {
                        *u = set_tls_scheme(u, tls);
                    }
                }
            };
            let (setting, urls) = match &mut t.topology {
                Topology::Single => ("REDIS_URL", None),
                Topology::Cluster(nodes) => ("REDIS_CLUSTER_NODES", Some(nodes)),
                Topology::Sentinel { sentinels, master } => {
                    if master.trim().is_empty() {
                        return Err(Error::Config {
                            setting: "REDIS_SENTINEL_MASTER",
                            reason: "the primary's name is empty".into(),
                        });
                    }
                    ("REDIS_SENTINEL_URLS", Some(sentinels))
                }
            };
            if let Some(urls) = urls {
                retls(urls);
                if urls.is_empty() {
                    return Err(Error::Config {
                        setting,
                        reason: "no node given".into(),
                    });
                }
                for u in urls.iter() {
                    if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                        return Err(Error::Config {
                            setting,
                            reason: format!(
                                "`{}` is not a redis URL; expected `redis://host:port` or `rediss://host:port`",
                                redact_url(u)
                            ),
                        });
                    }
                }
            }
        }
        if let Target::Redis(t) = &self.config.target
            && !(t.url.starts_with("redis://")
                || t.url.starts_with("rediss://")
                || t.url.starts_with("redis+unix://")
                || t.url.starts_with("unix://"))
        {
            return Err(Error::Config {
                setting: "REDIS_URL",
                reason: format!(
                    "`{}` is not a redis URL; expected `redis://host:port/db`, `rediss://...` (TLS) or `unix:///path`",
                    redact_url(&t.url)
                ),
            });
        }
        Ok((self.config, keyring))
    }
}

impl CacheBuilder {
    /// Turns the L1 near cache on, holding up to `entries` decoded values in this process
    /// (`0`: off, the default; env `CACHE_LOCAL_CAPACITY`), within
    /// [`local_cache_max_bytes`](Self::local_cache_max_bytes). Redis backend only (Redis 6 or
    /// newer: Redis tracks the keys for it, so a change by any client, expiry and eviction
    /// invalidate every L1); see [the guide](crate::guide::near_cache) for the guarantees.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// let cache = cache_core::Cache::builder()
    ///     .url("redis://127.0.0.1:6379")
    ///     .local_cache(10_000)
    ///     .local_ttl(Duration::from_secs(30))
    ///     .build()?;
    /// assert!(!cache.local_cache_serving()); // not before its feed is subscribed
    /// # Ok(()) }
    /// ```
    pub fn local_cache(mut self, entries: u64) -> Self {
        self.config.local_capacity = entries;
        self
    }

    /// The most memory the L1 holds, in bytes (default 64 MiB; env `CACHE_LOCAL_MAX_BYTES`).
    /// An entry weighs its stored bytes, its decoded copy (counted as the decompressed
    /// payload's length, whether or not a decoded copy is kept yet), its key and tags, and a
    /// fixed overhead of a few hundred bytes; the least recently and frequently used go first.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::builder()
    ///     .url("redis://127.0.0.1:6379")
    ///     .local_cache(100_000)
    ///     .local_cache_max_bytes(16 * 1024 * 1024)
    ///     .build()?;
    /// # let _ = cache;
    /// # Ok(()) }
    /// ```
    pub fn local_cache_max_bytes(mut self, bytes: u64) -> Self {
        self.config.local_max_bytes = bytes;
        self
    }

    /// The longest an L1 entry lives (default 30 s; env `CACHE_LOCAL_TTL`); an entry whose
    /// Redis TTL ends sooner lives until then.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, Error};
    /// let zero = Cache::builder().local_cache(100).local_ttl(Duration::ZERO).build();
    /// assert!(matches!(zero, Err(Error::Config { setting: "local_ttl", .. })));
    /// # Ok(()) }
    /// ```
    pub fn local_ttl(mut self, ttl: Duration) -> Self {
        self.config.local_ttl = ttl;
        self
    }
}

impl CacheBuilder {
    /// Makes every read fetch its scopes' generations with its value, so that a
    /// [`Cache::clear`](crate::Cache::clear) made by another instance is seen by the very next
    /// read there, rather than once Redis's tracking push reached it (under a millisecond on
    /// loopback). It costs every hit: measured on a plain `#[cached]` hit, +20% client
    /// instructions and +57% Redis CPU (an `MGET` instead of a `GET`). Off by default: each
    /// process learns the generations once and tracks them (`CLIENT TRACKING` on the
    /// generation keys only), and reads check them in memory. Environment:
    /// `CACHE_STRICT_CLEAR` (`true`, `false`). See [the guide](crate::guide::invalidation).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::builder().strict_clear(true).build()?;
    /// cache.set("k", &1u8, None).await?;
    /// cache.clear().await?; // one command, whatever the number of keys
    /// assert_eq!(cache.get::<u8>("k").await?, None);
    /// # Ok(()) }
    /// ```
    pub fn strict_clear(mut self, on: bool) -> Self {
        self.config.strict_clear = on;
        self
    }

    /// Logs operations slower than `threshold` (a warning with the namespace, the operation
    /// and the time taken; at most one a second, saying how many were held back). Off by
    /// default; environment: `CACHE_SLOW_OP` (`50ms`, `off`).
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// let cache = cache_core::Cache::builder().slow_op_threshold(Duration::from_millis(50)).build()?;
    /// # let _ = cache;
    /// # Ok(()) }
    /// ```
    pub fn slow_op_threshold(mut self, threshold: Duration) -> Self {
        self.config.slow_op = Some(threshold);
        self
    }
}

/// The operations settings of the environment (`CACHE_SLOW_OP`, `CACHE_STRICT_CLEAR`).
fn observe_from_env(b: &mut CacheBuilder, get: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    if let Some(v) = get("CACHE_STRICT_CLEAR") {
        b.config.strict_clear = parse_bool("CACHE_STRICT_CLEAR", &v)?;
    }
    if let Some(v) = get("CACHE_SLOW_OP") {
        b.config.slow_op = match v.trim() {
            "off" | "none" | "0" => None,
            _ => Some(crate::base::settings::parse_duration("CACHE_SLOW_OP", &v)?),
        };
    }
    Ok(())
}

// The builder's entry points on the handle (here, so that the handle does not import its
// builder).
impl Cache {
    /// A builder, starting from defaults (not from the environment: see
    /// [`CacheBuilder::from_env`](crate::CacheBuilder::from_env)).
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

    /// A cache configured from the environment (see [`CacheBuilder::from_env`](crate::CacheBuilder::from_env)): Redis when
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
}

fn set_tls_scheme(url: &str, tls: bool) -> String {
    match (
        tls,
        url.strip_prefix("redis://"),
        url.strip_prefix("rediss://"),
    ) {
        (true, Some(rest), _) => format!("rediss://{rest}"),
        (false, _, Some(rest)) => format!("redis://{rest}"),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CacheBuilder::from_lookup(|k| map.get(k).cloned())?
            .validated()
            .map(|(config, _)| config)
    }

    #[test]
    fn credentials_apply_whatever_the_order_of_the_builder_calls() {
        let before = CacheBuilder::new()
            .username("app")
            .password("s3cret")
            .tls_ca_pem(b"pem".to_vec())
            .url("redis://old:pw@cache.internal:6379");
        let after = CacheBuilder::new()
            .url("redis://old:pw@cache.internal:6379")
            .username("app")
            .password("s3cret")
            .tls_ca_pem(b"pem".to_vec());
        assert!(!format!("{before:?}").contains("s3cret"), "{before:?}");
        for built in [before, after] {
            let Target::Redis(t) = built.validated().expect("valid").0.target else {
                panic!("expected redis")
            };
            assert_eq!(t.username.as_deref(), Some("app"));
            assert_eq!(t.password.as_deref(), Some("s3cret"));
            assert_eq!(t.tls_ca.as_deref(), Some(&b"pem"[..]));
        }
        // The environment's credentials stay unless the builder overrides them.
        let env: HashMap<String, String> = [
            ("REDIS_URL", "redis://cache.internal:6379"),
            ("REDIS_USERNAME", "env-user"),
            ("REDIS_PASSWORD", "env-pw"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let built = CacheBuilder::from_lookup(|k| env.get(k).cloned())
            .expect("valid")
            .password("override")
            .validated()
            .expect("valid");
        let Target::Redis(t) = built.0.target else {
            panic!("expected redis")
        };
        assert_eq!(t.username.as_deref(), Some("env-user"));
        assert_eq!(t.password.as_deref(), Some("override"));
    }

    #[test]
    fn no_url_means_memory() {
        assert_eq!(from(&[]).map(|c| c.target).ok(), Some(Target::Memory));
    }

    #[test]
    fn host_port_tls_and_credentials_compose_a_target() {
        let c = from(&[
            ("REDIS_HOST", "cache.internal"),
            ("REDIS_PORT", "6380"),
            ("REDIS_DB", "2"),
            ("REDIS_TLS", "true"),
            ("REDIS_USERNAME", "app"),
            ("REDIS_PASSWORD", "s3cret"),
        ])
        .expect("valid");
        let Target::Redis(t) = c.target else {
            panic!("expected redis")
        };
        assert_eq!(t.url, "rediss://cache.internal:6380/2");
        assert_eq!(t.username.as_deref(), Some("app"));
        assert_eq!(t.password.as_deref(), Some("s3cret"));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn durations_and_sizes_parse() {
        let c = from(&[
            ("CACHE_DEFAULT_TTL", "5m"),
            ("CACHE_COMMAND_TIMEOUT", "250ms"),
            ("CACHE_CONNECT_TIMEOUT", "3"),
            ("CACHE_POOL_SIZE", "8"),
            ("CACHE_NAMESPACE", "svc"),
            ("CACHE_INVALIDATION_HOLD", "2m"),
            ("CACHE_BREAKER_FAILURES", "3"),
            ("CACHE_BREAKER_OPEN_FOR", "250ms"),
        ])
        .expect("valid");
        assert_eq!(c.breaker_failures, 3);
        assert_eq!(c.breaker_open_for, Duration::from_millis(250));
        assert_eq!(c.default_ttl, Some(Duration::from_secs(300)));
        assert_eq!(c.invalidation_hold, Duration::from_secs(120));
        assert_eq!(c.command_timeout, Duration::from_millis(250));
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.pool_size, 8);
        assert_eq!(c.namespace, "svc");
    }

    #[test]
    fn bad_values_are_config_errors_naming_the_setting() {
        for (var, val) in [
            ("REDIS_PORT", "http"),
            ("CACHE_DEFAULT_TTL", "5 parsecs"),
            ("CACHE_POOL_SIZE", "-1"),
            ("CACHE_INVALIDATION_HOLD", "soon"),
            ("CACHE_BREAKER_FAILURES", "many"),
            ("CACHE_BREAKER_OPEN_FOR", "a while"),
            ("REDIS_TLS", "maybe"),
            ("REDIS_URL", "http://localhost"),
        ] {
            let vars: Vec<(&str, &str)> = if var == "REDIS_PORT" {
                vec![("REDIS_HOST", "h"), (var, val)]
            } else {
                vec![(var, val)]
            };
            match from(&vars) {
                Err(Error::Config { setting, .. }) => assert_eq!(setting, var),
                other => panic!("{var}={val}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://u:pw@h:1/0"),
            "redis://u:<redacted>@h:1/0"
        );
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=pw"),
            "redis+unix:///run/redis.sock?db=1&pass=<redacted>"
        );
        assert_eq!(
            redact_url("redis://u:p@w@h:1/0?password=pw"),
            "redis://u:<redacted>@h:1/0?password=<redacted>"
        );
    }
}
