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

mod advisor;
mod backend;
mod breaker;
mod cache;
mod codec;
mod compute;
mod config;
mod crypto;
mod error;
pub mod guide;
mod health;
mod key;
mod key_report;
mod limits;
mod local;
mod lock;
mod metrics;
mod observe;
mod pattern;
pub mod rate_limit;
mod session;
mod stats;
mod tags;
mod warm;

mod private;

/// Helpers for generated code only.
#[doc(hidden)]
pub mod __private {
    pub use crate::crypto::{bench_open, bench_seal};
    pub use crate::private::*;
}

pub use backend::KeyTtl;
pub use cache::{Cache, Lookup, Source, install, installed};
pub use compute::{ComputeOptions, FillLock, HardTimeout, HardTimeoutFor, NoHardTimeout};
pub use config::CacheBuilder;
pub use crypto::EncryptionKey;
pub use error::{Error, Result};
pub use health::{
    BreakerHealth, Health, HealthMode, HealthStatus, MemoryHealth, PoolHealth, RedisHealth,
};
pub use health::{HealthTopology, NodeHealth, NodeRole, SentinelHealth, SentinelNodeHealth};
pub use key::{KeyBuf, KeyPart, KeyWriter, MAX_KEY_LEN, MAX_PART_LEN};
pub use key_report::{KeyGroup, KeyReport, KeyReportBuilder};
pub use limits::{DEFAULT_MAX_VALUE_SIZE, MAX_TTL, MAX_VALUE_SIZE_LIMIT};
pub use lock::{Lock, LockGuard};
pub use metrics::describe_metrics;
pub use observe::{LatencySummary, MAX_NAMESPACES, MissCounts, NamespaceStats};
pub use rate_limit::{Decision, RateLimit, RateLimiter};
#[cfg(feature = "tower-sessions")]
pub use session::TowerSessionStore;
pub use session::{AsSessionId, SessionId, Sessions};
pub use stats::StatsSnapshot;
pub use warm::{WarmBuilder, WarmCancel, WarmProgress, WarmSummary};

#[cfg(feature = "macros")]
pub use cache_macros::{cache_evict, cache_put, cached};

/// The README's examples, compiled and run as doctests.
#[cfg(all(doctest, feature = "macros"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
