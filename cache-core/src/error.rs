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
}

impl Error {
    /// True when the cache itself is unreachable or too slow (connection or timeout), so the
    /// caller should carry on without it rather than treat the request as failed.
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
        matches!(self, Error::Connection { .. } | Error::Timeout { .. })
    }

    pub(crate) fn invalid_key(key: &str, reason: &'static str) -> Self {
        Error::InvalidKey {
            key: crate::key::shorten_for_display(key),
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
