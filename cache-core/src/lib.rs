//! A caching framework for Rust services, on Redis or in memory, driven by macros.
//!
//! ```
//! use cache_core::{cached, Cache};
//!
//! #[derive(serde::Serialize, serde::Deserialize, Clone)]
//! struct User { id: u64, name: String }
//!
//! #[cached(key = "user:<id>", ttl = "5m", cache = cache, skip = [cache])]
//! async fn get_user(cache: &Cache, id: u64) -> Result<User, std::io::Error> {
//!     Ok(User { id, name: "ann".into() }) // a database call, in real life
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), std::io::Error> {
//! let cache = Cache::in_memory(); // or Cache::from_env()? for Redis when REDIS_URL is set
//! let user = get_user(&cache, 7).await?;   // computed, then stored
//! let again = get_user(&cache, 7).await?;  // from the cache
//! assert_eq!(user.name, again.name);
//! # Ok(()) }
//! ```
//!
//! The [`guide`] has the tour, the configuration table and a chapter per capability.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Layers, bottom to top: each imports only from the layers before it in this list
// (ARCHITECTURE.md §2; tests/tests/layers fails on an import circle).
mod base;

mod store;

mod engine;

mod pipeline;

// Capabilities.
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod key_report;
pub mod lock;
mod pattern;
pub mod rate_limit;
pub mod session;
pub mod warm;
// The front door: the handle, its builder, and the re-exports below.
mod builder;
mod cache;

pub mod guide;

pub use base::error::{Error, Result};
pub use base::source::{Lookup, Source};
pub use builder::CacheBuilder;
pub use cache::{Cache, install, installed};
pub use store::KeyTtl;

pub use base::crypto::EncryptionKey;
pub use base::key::KeyPart;
pub use base::stats::StatsSnapshot;
pub use health::{Health, HealthStatus};
pub use lock::{Lock, LockGuard};
pub use pipeline::ComputeOptions;
pub use rate_limit::{Decision, RateLimit, RateLimiter};
pub use session::{SessionId, Sessions};

#[cfg(feature = "macros")]
pub use cache_macros::{cache_evict, cache_put, cached, cached_many};

/// Keys: how a value becomes part of a key ([`KeyPart`]), building keys by hand
/// ([`KeyBuf`](crate::key::KeyBuf), the [`key!`](crate::key!) macro), and the length limits. See
/// [the guide](crate::guide::keys_and_values).
pub mod key {
    pub use crate::base::key::{KeyBuf, KeyPart, KeyWriter, MAX_KEY_LEN, MAX_PART_LEN};
}

// Here rather than beside `KeyBuf` (base/key.rs): an exported macro names public paths,
// which lib.rs owns.
/// Builds a key from parts joined by `:`, each escaped through [`KeyPart`].
///
/// ```
/// let user_id = 42;
/// assert_eq!(cache_core::key!("user", user_id), "user:42");
/// assert_eq!(cache_core::key!("search", "a:b*"), "search:a%3Ab%2A");
/// ```
#[macro_export]
macro_rules! key {
    ($first:expr $(, $rest:expr)* $(,)?) => {{
        let mut buf = $crate::key::KeyBuf::new();
        buf.part(&$first);
        $( buf.literal(":"); buf.part(&$rest); )*
        buf.into_string()
    }};
}

/// Get-or-compute options beyond the defaults: stale serving, early refresh, timeouts and
/// the fill lock, for [`Cache::get_or_set_with`] and
/// [`Cache::try_get_or_set_with`]. See [the guide](crate::guide::stampedes_and_staleness).
pub mod compute {
    pub use crate::pipeline::{
        BatchOptions, ComputeOptions, FillLock, HardTimeout, HardTimeoutFor, NoHardTimeout,
    };
}

/// Statistics: the root's counters ([`Cache::stats`]), per namespace
/// ([`Cache::namespace_stats`]), and the metric names of the `metrics` feature. See
/// [the guide](crate::guide::operations).
pub mod stats {
    pub use crate::base::metrics::describe_metrics;
    pub use crate::base::observe::{LatencySummary, MAX_NAMESPACES, MissCounts, NamespaceStats};
    pub use crate::base::stats::StatsSnapshot;
}

/// The limits every value, TTL and setting is checked against. See
/// [the guide](crate::guide::configuration#durations-and-sizes).
pub mod limits {
    pub use crate::base::limits::{DEFAULT_MAX_VALUE_SIZE, MAX_TTL, MAX_VALUE_SIZE_LIMIT};
}

/// Helpers for generated code only: re-exports, no code of its own.
#[doc(hidden)]
pub mod __private {
    pub use crate::base::crypto::{bench_open, bench_seal};
    pub use crate::cache::{explicit, global};
    pub use crate::pipeline::glue::*;
}

/// The README's examples, compiled and run as doctests.
#[cfg(all(doctest, feature = "macros"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
