//! The one error type of the runtime.

use std::time::Duration;

/// Everything that can go wrong talking to the cache, as variants a caller can act on.
///
/// Errors are `Clone`-free on purpose: they carry their source. Generated code never surfaces
/// them from a `#[cached]` function (the value is computed instead); they reach callers only
/// through the explicit API (`Cache::get`, `Cache::set`, the `_invalidate` companions, ...).
///
/// ```
/// # async fn demo() {
/// let cache = cache_core::Cache::in_memory();
/// match cache.get::<String>("greeting").await {
///     Ok(Some(v)) => println!("hit: {v}"),
///     Ok(None) => println!("miss"),
///     Err(e) if e.is_unavailable() => println!("cache down, carry on without it: {e}"),
///     Err(e) => println!("other error: {e}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connection to Redis could be made or kept (refused, reset, DNS, TLS, auth at connect).
    #[error("cannot connect to redis: {message}")]
    Connection {
        /// What went wrong, from the driver.
        message: String,
        /// The driver's error, when there is one.
        #[source]
        source: Option<redis::RedisError>,
    },
    /// A Redis command did not answer within the configured timeout.
    #[error("redis did not answer `{operation}` within {after:?}")]
    Timeout {
        /// The command that timed out.
        operation: &'static str,
        /// The configured bound that was exceeded.
        after: Duration,
    },
    /// Redis answered with an error (wrong type, script error, OOM, ACL denial, ...).
    #[error("redis refused `{operation}`: {source}")]
    Command {
        /// The command that failed.
        operation: &'static str,
        /// The server's error.
        #[source]
        source: redis::RedisError,
    },
    /// A value could not be serialized (a `Serialize` impl failed, or a map with non-string keys).
    #[error("cannot encode value for key `{key}`: {source}")]
    Encode {
        /// The key being written.
        key: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A value stored under a key could not be decoded as the requested type.
    ///
    /// Reads through the high-level API turn this into a miss (and count it); it is returned
    /// only by APIs that promise to report it.
    #[error("cannot decode value under key `{key}`: {reason}")]
    Decode {
        /// The key read.
        key: String,
        /// Why decoding failed.
        reason: String,
    },
    /// A key (or tag, or namespace) that cannot be used as given.
    #[error("invalid key `{key}`: {reason}")]
    InvalidKey {
        /// The offending key, shortened if it is long.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A configuration value (builder or environment) that cannot be used.
    #[error("invalid configuration `{setting}`: {reason}")]
    Config {
        /// The setting (environment variable or builder method).
        setting: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A value stored under the key is not of the kind the operation needs
    /// (for example `incr` on a key holding a cached object).
    #[error("key `{key}` holds a value that `{operation}` cannot work on")]
    WrongKind {
        /// The operation attempted.
        operation: &'static str,
        /// The key.
        key: String,
    },
    /// A duration that cannot be used: zero, where the cache needs a lifetime (a TTL given
    /// to a write or to `expire`, a lock's TTL, a window). Durations above
    /// [`MAX_TTL`](crate::limits::MAX_TTL) are clamped, not refused; see [the guide](crate::guide::configuration#durations-and-sizes), "Durations and
    /// sizes".
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use cache_core::Error;
    /// let cache = cache_core::Cache::in_memory();
    /// let zero = cache.set("k", &1u8, Duration::ZERO).await;
    /// assert!(matches!(zero, Err(Error::InvalidDuration { name: "ttl", .. })));
    /// # }
    /// ```
    #[error("invalid duration `{name}` ({duration:?}): {reason}")]
    InvalidDuration {
        /// What the duration is for (`ttl`, ...).
        name: &'static str,
        /// The duration given.
        duration: Duration,
        /// What is accepted.
        reason: &'static str,
    },
    /// A value whose stored form (after compression and encryption) is larger than
    /// [`max_value_size`](crate::CacheBuilder::max_value_size): refused before it reaches the
    /// backend. `#[cached]` functions and `get_or_set` return the value without storing it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, Error};
    /// let cache = Cache::builder().max_value_size(1024).build()?;
    /// let big: Vec<String> = (0..1000).map(|i| i.to_string()).collect(); // ~4 kB of JSON
    /// assert!(matches!(cache.set("page", &big, None).await, Err(Error::TooLarge { limit: 1024, .. })));
    /// # Ok(()) }
    /// ```
    #[error("value for key `{key}` is {size} bytes stored, above the limit of {limit} bytes")]
    TooLarge {
        /// The key being written.
        key: String,
        /// The size of the value as it would be stored, in bytes.
        size: usize,
        /// The configured limit, in bytes.
        limit: usize,
    },
    /// A computation of get-or-compute ran past its hard timeout (`hard_timeout`), and no
    /// stale value could be served instead.
    #[error("computing the value of `{key}` took longer than its hard timeout of {after:?}")]
    ComputeTimeout {
        /// The key being computed.
        key: String,
        /// The hard timeout.
        after: Duration,
    },
    /// A rate-limited request costs more than the limiter's limit (GCRA: its burst), so it
    /// could never be admitted; see [`RateLimiter::check_n`](crate::RateLimiter::check_n).
    #[error(
        "a cost of {cost} is above the rate limit of {limit}: such a request is never admitted"
    )]
    CostAboveLimit {
        /// The cost asked.
        cost: u64,
        /// The most a request may cost.
        limit: u64,
    },
    /// A compare-and-set loop gave up: other writers changed the value on every attempt
    /// (for example [`Sessions::modify`](crate::Sessions::modify)).
    #[error(
        "`{operation}` gave up after {attempts} attempts: other writers kept changing the value"
    )]
    Contention {
        /// The operation.
        operation: &'static str,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A value could not be encrypted (the operating system's random number generator
    /// failed): not stored. Reads of values that do not decrypt are misses, not errors.
    #[error("cannot encrypt value: {reason}")]
    Encrypt {
        /// What failed.
        reason: &'static str,
    },
    /// [`Lock::acquire`](crate::Lock::acquire) waited as long as it was allowed to, and the
    /// lock was still held by another owner.
    #[error("lock `{name}` is still held by another owner after waiting {waited:?}")]
    LockBusy {
        /// The lock's name, shortened if it is long.
        name: String,
        /// How long the caller was willing to wait.
        waited: Duration,
    },
    /// The circuit breaker of this cache is open: the last operations could not reach Redis,
    /// so this one was not attempted (it returned at once, without touching the network).
    /// [`is_unavailable`](Error::is_unavailable) is true. The breaker probes Redis in the
    /// background and closes when it answers; see [the guide](crate::guide::resilience), "When Redis goes down".
    ///
    /// ```
    /// use cache_core::Error;
    /// let e = Error::CircuitOpen { operation: "GET" };
    /// assert!(e.is_unavailable());
    /// assert_eq!(e.to_string(), "redis is unavailable (circuit breaker open): `GET` not attempted");
    /// ```
    #[error("redis is unavailable (circuit breaker open): `{operation}` not attempted")]
    CircuitOpen {
        /// The command that was not sent.
        operation: &'static str,
    },
}

impl Error {
    /// True when the cache itself is unreachable or too slow (connection, timeout, or the
    /// circuit breaker open), so the caller should carry on without it rather than treat the
    /// request as failed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use cache_core::Error;
    /// let slow = Error::Timeout { operation: "GET", after: Duration::from_secs(1) };
    /// assert!(slow.is_unavailable()); // carry on without the cache
    /// let cache = cache_core::Cache::in_memory();
    /// let Err(bad) = cache.get::<u8>("has space").await else { panic!("keys cannot hold spaces") };
    /// assert!(!bad.is_unavailable()); // a bug in the caller, not an outage
    /// # }
    /// ```
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Connection { .. } | Error::Timeout { .. } | Error::CircuitOpen { .. }
        )
    }

    /// True for errors in what the caller handed over (a value that cannot be encoded or is
    /// too large, a duration that cannot be used), not in the backend: not counted as backend
    /// errors.
    pub(crate) fn is_caller_side(&self) -> bool {
        matches!(
            self,
            Error::Encode { .. }
                | Error::TooLarge { .. }
                | Error::InvalidDuration { .. }
                | Error::Encrypt { .. }
        )
    }

    pub(crate) fn invalid_key(key: &str, reason: &'static str) -> Self {
        Error::InvalidKey {
            key: shorten_for_display(key),
            reason,
        }
    }

    /// Classifies a driver error for `operation`.
    pub(crate) fn from_redis(
        operation: &'static str,
        err: redis::RedisError,
        timeout: Duration,
    ) -> Self {
        if err.is_timeout() {
            Error::Timeout {
                operation,
                after: timeout,
            }
        } else if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_unrecoverable_error()
        {
            Error::Connection {
                message: err.to_string(),
                source: Some(err),
            }
        } else {
            Error::Command {
                operation,
                source: err,
            }
        }
    }
}

/// `Result` with this crate's [`Error`].
///
/// ```
/// use cache_core::{Cache, Result};
///
/// async fn greeting(cache: &Cache) -> Result<String> {
///     Ok(cache.get::<String>("greeting").await?.unwrap_or_else(|| "hello".to_owned()))
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
/// assert_eq!(greeting(&Cache::in_memory()).await?, "hello");
/// # Ok(()) }
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A key cut down for error messages, so a megabyte key does not become a megabyte log line.
pub(crate) fn shorten_for_display(key: &str) -> String {
    const SHOW: usize = 80;
    if key.len() <= SHOW {
        return key.escape_debug().to_string();
    }
    let mut end = SHOW;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", key[..end].escape_debug(), key.len())
}
