//! What every operation reports besides its result: per-namespace counters and latency
//! histograms, a `debug` span, the slow-operation log, and (feature `metrics`) the `metrics`
//! facade.
//!
//! Statistics attach to *first-level namespaces*: a cache root counts under its own namespace
//! (`cache`), and a handle made with [`Cache::namespace`](crate::Cache::namespace) on the root, or on one of its
//! tenants, counts under `cache:<name>`; deeper namespaces and tenants count with the handle
//! they come from, so tenant ids never become a statistics scope (or a metric label). A root
//! keeps at most [`MAX_NAMESPACES`] of them, the last one `<root>:_other` shared by all later ones.
//!
//! The hot path pays two clock reads, a few relaxed atomic adds (a counter and one histogram
//! bucket) and a disabled-span check; see the guide's operations chapter ("Metrics") for the measured cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use histogram::AtomicHistogram;
use serde::Serialize;

/// How many first-level namespaces a cache root keeps statistics for besides its own, the
/// last of them being `<root>:_other`, where every later one counts.
pub const MAX_NAMESPACES: usize = 64;

/// Why a read found nothing usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MissReason {
    /// No value (or a tombstone left by an invalidation by key).
    Absent,
    /// A value kept past its logical expiry (to be served stale) and not served.
    Expired,
    /// A tag it records was invalidated since it was written.
    TagInvalidated,
    /// Not decodable as the type asked for.
    Undecodable,
}

impl MissReason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            MissReason::Absent => "absent",
            MissReason::Expired => "expired",
            MissReason::TagInvalidated => "tag_invalidated",
            MissReason::Undecodable => "undecodable",
        }
    }
}

/// The operations that report a span, a latency and an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Get,
    Mget,
    Exists,
    Ttl,
    Set,
    Mset,
    Delete,
    Expire,
    Incr,
    InvalidateTags,
    GetOrCompute,
}

/// Which histogram an operation's latency goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    /// Get-or-compute: its read, its computation and its write are recorded as they happen.
    Composite,
}

impl Operation {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Mget => "mget",
            Operation::Exists => "exists",
            Operation::Ttl => "ttl",
            Operation::Set => "set",
            Operation::Mset => "mset",
            Operation::Delete => "delete",
            Operation::Expire => "expire",
            Operation::Incr => "incr",
            Operation::InvalidateTags => "invalidate_tags",
            Operation::GetOrCompute => "get_or_compute",
        }
    }

    pub(crate) fn kind(self) -> Kind {
        match self {
            Operation::Get | Operation::Mget | Operation::Exists | Operation::Ttl => Kind::Read,
            Operation::GetOrCompute => Kind::Composite,
            _ => Kind::Write,
        }
    }
}

/// How an operation ended, as spans and metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Hit,
    Miss,
    Stale,
    Ok,
    Error,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        }
    }
}

/// Latencies in nanoseconds: 32 sub-buckets per power of two (relative error under 3.2%),
/// up to 2^36 ns (~69 s; longer ones count as that). 8 KiB of buckets.
struct Latency(AtomicHistogram);

const LATENCY_GROUPING_POWER: u8 = 5;
const LATENCY_MAX_POWER: u8 = 36;

impl Default for Latency {
    fn default() -> Self {
        match AtomicHistogram::new(LATENCY_GROUPING_POWER, LATENCY_MAX_POWER) {
            Ok(h) => Latency(h),
            // Constant parameters, checked by a unit test.
            Err(e) => unreachable!("latency histogram parameters: {e}"),
        }
    }
}

impl Latency {
    fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos())
            .unwrap_or(u64::MAX)
            .clamp(1, (1u64 << LATENCY_MAX_POWER) - 1);
        let _ = self.0.increment(ns);
    }

    fn summary(&self) -> LatencySummary {
        let h = self.0.load();
        let mut out: [Option<histogram::Bucket>; 4] = [None, None, None, None];
        let count: u64 = h.as_slice().iter().sum();
        if count == 0
            || h.quantile_buckets_into(&[0.5, 0.9, 0.99, 1.0], &mut out)
                .is_err()
        {
            return LatencySummary::default();
        }
        // A bucket's upper end: a percentile is never reported lower than it was.
        let us = |b: &Option<histogram::Bucket>| b.as_ref().map_or(0.0, |b| b.end() as f64 / 1e3);
        LatencySummary {
            count,
            p50_us: us(&out[0]),
            p90_us: us(&out[1]),
            p99_us: us(&out[2]),
            max_us: us(&out[3]),
        }
    }
}

/// Counters and histograms of one namespace.
#[derive(Default)]
pub(crate) struct NsStats {
    pub(crate) name: Arc<str>,
    hits: AtomicU64,
    local_hits: AtomicU64,
    misses: [AtomicU64; 4],
    stale_serves: AtomicU64,
    computes: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
    read: Latency,
    write: Latency,
    compute: Latency,
}

impl std::fmt::Debug for NsStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NsStats").field("name", &self.name).finish()
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl NsStats {
    pub(crate) fn new(name: &str) -> Self {
        NsStats {
            name: name.into(),
            ..Default::default()
        }
    }

    pub(crate) fn hit(&self) {
        bump(&self.hits);
        crate::base::metrics::hit(&self.name);
    }

    /// A hit answered by the L1 near cache (counted by [`hit`](Self::hit) too).
    pub(crate) fn local_hit(&self) {
        bump(&self.local_hits);
    }

    pub(crate) fn miss(&self, reason: MissReason) {
        bump(&self.misses[reason as usize]);
        crate::base::metrics::miss(&self.name, reason.label());
    }

    /// A stale value served (the compute pipeline's fail-safe).
    pub(crate) fn stale_serve(&self) {
        bump(&self.stale_serves);
        crate::base::metrics::stale_serve(&self.name);
    }

    pub(crate) fn compute(&self) {
        bump(&self.computes);
        crate::base::metrics::compute(&self.name);
    }

    pub(crate) fn computed(&self, took: Duration) {
        self.compute.record(took);
        crate::base::metrics::compute_duration(&self.name, took);
    }

    pub(crate) fn write(&self, n: u64) {
        self.writes.fetch_add(n, Ordering::Relaxed);
        crate::base::metrics::writes(&self.name, n);
    }

    pub(crate) fn error(&self) {
        bump(&self.errors);
        crate::base::metrics::error(&self.name);
    }

    /// The latency of a read.
    pub(crate) fn read_took(&self, took: Duration) {
        self.read.record(took);
    }

    /// The latency of a write.
    pub(crate) fn write_took(&self, took: Duration) {
        self.write.record(took);
    }

    pub(crate) fn snapshot(&self) -> NamespaceStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let misses = MissCounts {
            absent: get(&self.misses[MissReason::Absent as usize]),
            expired: get(&self.misses[MissReason::Expired as usize]),
            tag_invalidated: get(&self.misses[MissReason::TagInvalidated as usize]),
            undecodable: get(&self.misses[MissReason::Undecodable as usize]),
        };
        let hits = get(&self.hits);
        let reads = hits + misses.total();
        NamespaceStats {
            namespace: self.name.to_string(),
            hits,
            local_hits: get(&self.local_hits),
            misses,
            stale_serves: get(&self.stale_serves),
            computes: get(&self.computes),
            writes: get(&self.writes),
            errors: get(&self.errors),
            hit_ratio: if reads == 0 {
                0.0
            } else {
                hits as f64 / reads as f64
            },
            read_latency: self.read.summary(),
            write_latency: self.write.summary(),
            compute_latency: self.compute.summary(),
        }
    }
}

/// The first-level namespaces of a cache root, the root's own first.
#[derive(Debug, Default)]
pub(crate) struct Namespaces {
    list: Mutex<Vec<Arc<NsStats>>>,
}

impl Namespaces {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<NsStats>>> {
        match self.list.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Counts of misses, by reason.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// let cache = cache_core::Cache::in_memory();
/// cache.get::<u8>("absent").await?;
/// let misses = cache.scope_stats().misses;
/// assert_eq!((misses.absent, misses.total()), (1, 1));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MissCounts {
    /// Nothing under the key (or the tombstone of an invalidation by key).
    pub absent: u64,
    /// A value kept past its expiry to be served stale, read where stale is not served.
    pub expired: u64,
    /// A value whose tag was invalidated since it was written.
    pub tag_invalidated: u64,
    /// A value not decodable as the type asked for.
    pub undecodable: u64,
}

impl MissCounts {
    /// All misses.
    ///
    /// ```
    /// let m = cache_core::stats::MissCounts::default();
    /// assert_eq!(m.total(), 0);
    /// ```
    pub fn total(&self) -> u64 {
        self.absent + self.expired + self.tag_invalidated + self.undecodable
    }
}

/// Percentiles of a latency histogram, in microseconds (each the upper end of its bucket,
/// within 3.2% of the true value). All zero before the first operation.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// let cache = cache_core::Cache::in_memory();
/// cache.set("k", &1u8, None).await?;
/// let write = cache.scope_stats().write_latency;
/// assert_eq!(write.count, 1);
/// assert!(write.p50_us > 0.0 && write.p50_us <= write.max_us);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Operations recorded.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Slowest.
    pub max_us: f64,
}

/// Statistics of one first-level namespace (see [`Cache::namespace_stats`](crate::Cache::namespace_stats)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// let cache = cache_core::Cache::in_memory();
/// let users = cache.namespace("users");
/// users.set("1", &"ann", None).await?;
/// users.get::<String>("1").await?;
/// let s = users.scope_stats();
/// assert_eq!((s.namespace.as_str(), s.hits, s.writes), ("cache:users", 1, 1));
/// assert_eq!(s.read_latency.count, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct NamespaceStats {
    /// `root` or `root:name` (the key prefix, without its last `:`).
    pub namespace: String,
    /// Reads that found a usable value.
    pub hits: u64,
    /// Of which answered by the L1 near cache of this process.
    pub local_hits: u64,
    /// Reads that found nothing usable, by reason.
    pub misses: MissCounts,
    /// Stale values served instead of a failed or slow computation.
    pub stale_serves: u64,
    /// Values computed by get-or-compute.
    pub computes: u64,
    /// Values written.
    pub writes: u64,
    /// Operations that failed (backend errors, values that could not be encoded).
    pub errors: u64,
    /// `hits / (hits + misses)`, 0 before any read.
    pub hit_ratio: f64,
    /// Reads: `get`, `lookup`, `mget`, `exists`, `ttl`, and the read of get-or-compute.
    pub read_latency: LatencySummary,
    /// Writes: `set`, `mset`, `delete`, `expire`, `incr`, `invalidate_tags`, and the store of
    /// a computed value.
    pub write_latency: LatencySummary,
    /// Computations of get-or-compute (the function's body).
    pub compute_latency: LatencySummary,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cache;

    #[test]
    fn latency_histogram_parameters_are_valid_and_percentiles_bracket_values() {
        let l = Latency::default();
        assert_eq!(l.summary(), LatencySummary::default());
        for us in 1..=100u64 {
            l.record(Duration::from_micros(us));
        }
        l.record(Duration::from_secs(10_000)); // clamped, not lost
        let s = l.summary();
        assert_eq!(s.count, 101);
        assert!((50.0..=52.0).contains(&s.p50_us), "{s:?}");
        assert!((90.0..=93.0).contains(&s.p90_us), "{s:?}");
        assert!(s.max_us > 60e6, "{s:?}");
    }

    #[test]
    fn namespaces_are_bounded() {
        let cache = Cache::in_memory();
        for i in 0..(MAX_NAMESPACES + 10) {
            let _ = cache.namespace(&format!("n{i}"));
        }
        let all = cache.namespace_stats();
        assert_eq!(all.len(), MAX_NAMESPACES + 1);
        assert_eq!(all[0].namespace, "cache");
        assert_eq!(all[MAX_NAMESPACES].namespace, "cache:_other");
        // deeper namespaces and tenants count with their first-level namespace
        let deep = cache.namespace("n1").namespace("x").tenant(3u8);
        assert_eq!(deep.scope_stats().namespace, "cache:n1");
        assert_eq!(
            cache.tenant(3u8).namespace("n2").scope_stats().namespace,
            "cache:n2"
        );
    }
}
