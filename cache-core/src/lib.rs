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

// Layers, bottom to top; each imports only from the ones above it in this list
// (ARCHITECTURE.md; tests/tests/layers.rs fails on an import circle).
mod base;
mod engine;
mod pipeline;
mod store;
// Capabilities.
pub mod guide;
mod health;
mod key_report;
mod lock;
mod pattern;
pub mod rate_limit;
mod session;
mod warm;

// The front door.
mod builder;
mod cache;

/// Helpers for generated code only.
#[doc(hidden)]
pub mod __private {
    pub use crate::base::crypto::{bench_open, bench_seal};
    pub use crate::cache::{explicit, global};
    pub use crate::pipeline::glue::*;
}

pub use base::crypto::EncryptionKey;
pub use base::error::{Error, Result};
pub use base::key::{KeyBuf, KeyPart, KeyWriter, MAX_KEY_LEN, MAX_PART_LEN};
pub use base::limits::{DEFAULT_MAX_VALUE_SIZE, MAX_TTL, MAX_VALUE_SIZE_LIMIT};
pub use base::metrics::describe_metrics;
pub use base::observe::{LatencySummary, MAX_NAMESPACES, MissCounts, NamespaceStats};
pub use base::source::{Lookup, Source};
pub use base::stats::StatsSnapshot;
pub use builder::CacheBuilder;
pub use cache::{Cache, install, installed};
pub use health::{
    BreakerHealth, Health, HealthMode, HealthStatus, MemoryHealth, PoolHealth, RedisHealth,
};
pub use health::{HealthTopology, NodeHealth, NodeRole, SentinelHealth, SentinelNodeHealth};
pub use key_report::{KeyGroup, KeyReport, KeyReportBuilder};
pub use lock::{Lock, LockGuard};
pub use pipeline::{ComputeOptions, FillLock, HardTimeout, HardTimeoutFor, NoHardTimeout};
pub use rate_limit::{Decision, RateLimit, RateLimiter};
#[cfg(feature = "tower-sessions")]
pub use session::TowerSessionStore;
pub use session::{AsSessionId, SessionId, Sessions};
pub use store::KeyTtl;
pub use warm::{WarmBuilder, WarmCancel, WarmProgress, WarmSummary};

#[cfg(feature = "macros")]
pub use cache_macros::{cache_evict, cache_put, cached};

/// The README's examples, compiled and run as doctests.
#[cfg(all(doctest, feature = "macros"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
