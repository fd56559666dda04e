//! The guide: how the cache works and how to use it, one chapter per topic.
//!
//! Every example in these chapters is compiled and run as a doctest. The chapters' sources
//! are `cache-core/docs/*.md`; the repository's README has the benchmark table of record.
//!
//! **Caching**
//! - [`keys_and_values`]: the direct API of a [`Cache`](crate::Cache), how keys are built,
//!   how values are stored, the errors.
//! - [`macros`]: `#[cached]`, `#[cache_evict]`, `#[cache_put]`, their attributes and the
//!   compile errors that catch a wrong key template.
//! - [`invalidation`]: by key, by tag, by pattern, each winning over computations already
//!   running.
//! - [`stampedes_and_staleness`]: single-flight, the distributed fill lock,
//!   stale-while-revalidate, timeouts, early refresh.
//! - [`near_cache`]: the L1 near cache in the process, kept coherent by Redis's client
//!   tracking whoever writes.
//!
//! **Deployment**
//! - [`resilience`]: when Redis goes down: the circuit breaker, the fallback store, the replay
//!   of invalidations.
//! - [`cluster_and_sentinel`]: Redis Cluster and Sentinel.
//! - [`configuration`]: every setting, encryption at rest, durations and sizes.
//! - [`operations`]: health, statistics, metrics, tracing, warming.
//! - [`performance`]: how the Redis path stays fast, and the benchmarks.
//!
//! **Capabilities on the same cache**
//! - [`locks`]: distributed locks with fencing tokens.
//! - [`rate_limiting`]: rate limiters shared by every instance, and a tower layer.
//! - [`sessions`]: a session store, and a tower-sessions store.
//! - [`http`]: HTTP response caching as a tower layer (RFC 9111 rules, `ETag`, tags).

#[doc = include_str!("../docs/keys-and-values.md")]
pub mod keys_and_values {}

// Its examples use the macros: without that (default) feature, a line saying so.
#[cfg_attr(feature = "macros", doc = include_str!("../docs/macros.md"))]
#[cfg_attr(not(feature = "macros"), doc = "Needs the `macros` feature.")]
pub mod macros {}

#[doc = include_str!("../docs/invalidation.md")]
pub mod invalidation {}

// Its examples use the macros: without that (default) feature, a line saying so.
#[cfg_attr(feature = "macros", doc = include_str!("../docs/stampedes-and-staleness.md"))]
#[cfg_attr(not(feature = "macros"), doc = "Needs the `macros` feature.")]
pub mod stampedes_and_staleness {}

#[doc = include_str!("../docs/near-cache.md")]
pub mod near_cache {}

#[doc = include_str!("../docs/resilience.md")]
pub mod resilience {}

#[doc = include_str!("../docs/cluster-and-sentinel.md")]
pub mod cluster_and_sentinel {}

#[doc = include_str!("../docs/configuration.md")]
pub mod configuration {}

#[doc = include_str!("../docs/operations.md")]
pub mod operations {}

#[doc = include_str!("../docs/performance.md")]
pub mod performance {}

#[doc = include_str!("../docs/locks.md")]
pub mod locks {}

#[doc = include_str!("../docs/rate-limiting.md")]
pub mod rate_limiting {}

#[doc = include_str!("../docs/sessions.md")]
pub mod sessions {}

// Its examples use the layer: without the `http` feature, a line saying so.
#[cfg_attr(feature = "http", doc = include_str!("../docs/http.md"))]
#[cfg_attr(not(feature = "http"), doc = "Needs the `http` feature.")]
pub mod http {}
