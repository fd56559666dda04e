//! Counters of what the cache did, cheap enough for the hot path (relaxed atomics).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    decode_errors: AtomicU64,
    backend_errors: AtomicU64,
    encode_errors: AtomicU64,
    computes: AtomicU64,
    superseded: AtomicU64,
    stale_served: AtomicU64,
    flight_waits: AtomicU64,
    background_refreshes: AtomicU64,
    lock_timeouts: AtomicU64,
    local_hits: AtomicU64,
    local_misses: AtomicU64,
    local_invalidations: AtomicU64,
    local_flushes: AtomicU64,
}

/// A snapshot of a cache's counters, shared by every handle cloned, scoped or tenanted from
/// the same root.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cache = cache_core::Cache::in_memory();
/// let _ = cache.get::<u32>("nothing-here").await;
/// assert_eq!(cache.stats().misses, 1);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Reads that found a usable value.
    pub hits: u64,
    /// Reads that found nothing usable (absent, expired, invalidated by a tag, undecodable).
    pub misses: u64,
    /// Values written.
    pub writes: u64,
    /// Values found but not decodable as the requested type (counted in `misses` too).
    pub decode_errors: u64,
    /// Operations that failed in the backend (connection, timeout, server error).
    pub backend_errors: u64,
    /// Values that could not be serialized and so were not stored.
    pub encode_errors: u64,
    /// Times a value was computed by `get_or_set` or a `#[cached]` function.
    pub computes: u64,
    /// Computed values returned to their caller but not stored, because the entry changed
    /// while they were computed: it was invalidated (then the value may be older than the
    /// invalidation), or another writer stored a value first.
    pub superseded: u64,
    /// Stale values served by get-or-compute (`stale` option): while a refresh ran, or
    /// because it failed, panicked, timed out, or the backend was unavailable.
    pub stale_served: u64,
    /// Calls that waited for the computation another call of the same key was running
    /// (single-flight in the process, or the distributed fill lock), instead of computing.
    pub flight_waits: u64,
    /// Refreshes started for a caller that did not wait for them: behind a stale value, past
    /// a soft timeout, or ahead of expiry (`refresh = "early"`).
    pub background_refreshes: u64,
    /// Distributed fill locks not had within their wait: the value was computed anyway.
    pub lock_timeouts: u64,
    /// Times the circuit breaker opened (Redis unreachable); see [the guide](crate::guide::resilience), "When Redis
    /// goes down".
    pub breaker_opened: u64,
    /// Operations the open circuit breaker answered at once, without Redis (the direct API
    /// gets [`Error::CircuitOpen`](crate::Error::CircuitOpen), `get_or_set` and `#[cached]`
    /// the fallback store).
    pub breaker_rejected: u64,
    /// Get-or-compute calls answered by the fallback store while the breaker was open
    /// (counted in `hits` too).
    pub fallback_hits: u64,
    /// Invalidations issued while Redis was unreachable and applied once it was back.
    pub invalidations_replayed: u64,
    /// Queued invalidations Redis refused when they were replayed (an ACL denial, a tag
    /// version key holding something else; also logged).
    pub invalidations_dropped: u64,
    /// Invalidations issued while Redis was unreachable that the recovery queue could not
    /// hold, and that escalated to a clear of the cache root replayed with the rest (see [the
    /// guide](crate::guide::resilience)): none is lost, every entry written before the
    /// replay misses once.
    pub invalidations_escalated: u64,
    /// Reads answered by the L1 near cache (counted in `hits` too).
    pub local_hits: u64,
    /// Reads the L1 near cache could not answer (absent there, expired, a tag changed), which
    /// went to the backend.
    pub local_misses: u64,
    /// Invalidations received from other instances through the L1 invalidation feed.
    pub local_invalidations: u64,
    /// Times the L1 was emptied after a gap in its invalidation feed.
    pub local_flushes: u64,
}

impl StatsSnapshot {
    /// `hits / (hits + misses)`, or 0 before any read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// assert_eq!(cache.stats().hit_ratio(), 0.0); // no reads yet
    /// cache.set("k", &1u8, None).await?;
    /// cache.get::<u8>("k").await?; // a hit
    /// cache.get::<u8>("absent").await?; // a miss
    /// assert_eq!(cache.stats().hit_ratio(), 0.5);
    /// # Ok(()) }
    /// ```
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub(crate) fn hit(&self) {
        bump(&self.hits);
    }
    pub(crate) fn miss(&self) {
        bump(&self.misses);
    }
    pub(crate) fn write(&self, n: u64) {
        self.writes.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn decode_error(&self) {
        bump(&self.decode_errors);
    }
    pub(crate) fn backend_error(&self) {
        bump(&self.backend_errors);
    }
    pub(crate) fn encode_error(&self) {
        bump(&self.encode_errors);
    }
    pub(crate) fn compute(&self) {
        bump(&self.computes);
    }
    pub(crate) fn superseded(&self) {
        bump(&self.superseded);
    }

    pub(crate) fn stale_served(&self) {
        bump(&self.stale_served);
    }
    pub(crate) fn flight_wait(&self) {
        bump(&self.flight_waits);
    }
    pub(crate) fn background_refresh(&self) {
        bump(&self.background_refreshes);
    }
    pub(crate) fn lock_timeout(&self) {
        bump(&self.lock_timeouts);
    }
    pub(crate) fn local_hit(&self) {
        bump(&self.local_hits);
    }
    pub(crate) fn local_miss(&self) {
        bump(&self.local_misses);
    }
    pub(crate) fn local_invalidation(&self) {
        bump(&self.local_invalidations);
    }
    pub(crate) fn local_flush(&self) {
        bump(&self.local_flushes);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            hits: get(&self.hits),
            misses: get(&self.misses),
            writes: get(&self.writes),
            decode_errors: get(&self.decode_errors),
            backend_errors: get(&self.backend_errors),
            encode_errors: get(&self.encode_errors),
            computes: get(&self.computes),
            superseded: get(&self.superseded),
            stale_served: get(&self.stale_served),
            flight_waits: get(&self.flight_waits),
            background_refreshes: get(&self.background_refreshes),
            lock_timeouts: get(&self.lock_timeouts),
            local_hits: get(&self.local_hits),
            local_misses: get(&self.local_misses),
            local_invalidations: get(&self.local_invalidations),
            local_flushes: get(&self.local_flushes),
            ..StatsSnapshot::default()
        }
    }
}

/// Lets one warning through per second and counts the others, so that an outage (every call
/// failing) logs a line a second saying how many were held back, not a line per call.
#[derive(Debug, Default)]
pub(crate) struct WarnThrottle {
    /// Milliseconds (Unix time) from which the next warning may be logged.
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl WarnThrottle {
    const INTERVAL_MS: u64 = 1_000;

    /// `Some(held)` if a warning at `now_ms` is to be logged, with the number held back since
    /// the last one logged; `None` if it is to be held back.
    pub(crate) fn admit(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + Self::INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            bump(&self.held);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WarnThrottle;

    #[test]
    fn one_warning_per_second_with_the_count_held_back() {
        let t = WarnThrottle::default();
        assert_eq!(t.admit(5_000), Some(0), "the first warning is logged");
        assert_eq!(t.admit(5_001), None);
        assert_eq!(t.admit(5_999), None);
        assert_eq!(
            t.admit(6_000),
            Some(2),
            "a second later, with the two held back"
        );
        assert_eq!(t.admit(6_500), None);
        assert_eq!(t.admit(60_000), Some(1));
        assert_eq!(
            t.admit(60_000),
            None,
            "one per interval, even at the same instant"
        );
    }
}
