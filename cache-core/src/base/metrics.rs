//! The cache's figures through the `metrics` facade (feature `metrics`); without the feature
//! every function here is empty and compiles away.
//!
//! Labels are low-cardinality: `namespace` (a first-level namespace, bounded per root; see
//! `observe.rs`), `operation`, `outcome`, `reason`. Never keys, tenants or ids. Durations are
//! in seconds. The names are listed in the guide's metric table (operations chapter) and described to the
//! installed recorder by [`describe_metrics`].

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::Arc;
    use std::time::Duration;

    use metrics::{Unit, counter, gauge, histogram};

    /// Every metric the cache records: name, unit, help.
    pub(crate) const TABLE: &[(&str, Unit, &str)] = &[
        (
            "cache_hits_total",
            Unit::Count,
            "reads that found a usable value",
        ),
        (
            "cache_misses_total",
            Unit::Count,
            "reads that found nothing usable, by reason",
        ),
        (
            "cache_stale_serves_total",
            Unit::Count,
            "stale values served instead of a failed or slow computation",
        ),
        (
            "cache_computes_total",
            Unit::Count,
            "values computed by get-or-compute",
        ),
        ("cache_writes_total", Unit::Count, "values written"),
        (
            "cache_errors_total",
            Unit::Count,
            "operations that failed (backend errors, values that could not be encoded)",
        ),
        (
            "cache_operation_duration_seconds",
            Unit::Seconds,
            "time of each cache operation, by operation and outcome",
        ),
        (
            "cache_compute_duration_seconds",
            Unit::Seconds,
            "time of the computations of get-or-compute",
        ),
        (
            "cache_up",
            Unit::Count,
            "1 if the last health check found the cache usable (ok or degraded), 0 if down",
        ),
        (
            "cache_ping_seconds",
            Unit::Seconds,
            "round trip of the last health check's PING",
        ),
        (
            "cache_redis_used_memory_bytes",
            Unit::Bytes,
            "Redis used_memory at the last health check",
        ),
        (
            "cache_redis_maxmemory_bytes",
            Unit::Bytes,
            "Redis maxmemory at the last health check (0: no limit)",
        ),
        (
            "cache_redis_connected_clients",
            Unit::Count,
            "Redis connected_clients at the last health check",
        ),
        (
            "cache_pool_connections",
            Unit::Count,
            "connections of the pool at the last health check",
        ),
        (
            "cache_pool_idle_connections",
            Unit::Count,
            "idle connections of the pool at the last health check",
        ),
        (
            "cache_breaker_open",
            Unit::Count,
            "1 while the circuit breaker is open (at the last health check)",
        ),
    ];

    fn ns(name: &Arc<str>) -> metrics::SharedString {
        metrics::SharedString::from(name.clone())
    }

    pub(crate) fn hit(name: &Arc<str>) {
        counter!("cache_hits_total", "namespace" => ns(name)).increment(1);
    }
    pub(crate) fn miss(name: &Arc<str>, reason: &'static str) {
        counter!("cache_misses_total", "namespace" => ns(name), "reason" => reason).increment(1);
    }
    pub(crate) fn stale_serve(name: &Arc<str>) {
        counter!("cache_stale_serves_total", "namespace" => ns(name)).increment(1);
    }
    pub(crate) fn compute(name: &Arc<str>) {
        counter!("cache_computes_total", "namespace" => ns(name)).increment(1);
    }
    pub(crate) fn compute_duration(name: &Arc<str>, took: Duration) {
        histogram!("cache_compute_duration_seconds", "namespace" => ns(name))
            .record(took.as_secs_f64());
    }
    pub(crate) fn writes(name: &Arc<str>, n: u64) {
        counter!("cache_writes_total", "namespace" => ns(name)).increment(n);
    }
    pub(crate) fn error(name: &Arc<str>) {
        counter!("cache_errors_total", "namespace" => ns(name)).increment(1);
    }
    pub(crate) fn operation(
        name: &Arc<str>,
        operation: &'static str,
        outcome: &'static str,
        took: Duration,
    ) {
        histogram!(
            "cache_operation_duration_seconds",
            "namespace" => ns(name),
            "operation" => operation,
            "outcome" => outcome
        )
        .record(took.as_secs_f64());
    }
    pub(crate) fn gauge_set(metric: &'static str, root: &str, value: f64) {
        gauge!(metric, "namespace" => root.to_owned()).set(value);
    }

    pub(crate) fn describe() {
        for (name, unit, help) in TABLE {
            if name.ends_with("_total") {
                metrics::describe_counter!(*name, *unit, *help);
            } else if name.ends_with("_duration_seconds") {
                metrics::describe_histogram!(*name, *unit, *help);
            } else {
                metrics::describe_gauge!(*name, *unit, *help);
            }
        }
    }
}

#[cfg(feature = "metrics")]
pub(crate) use imp::*;

#[cfg(not(feature = "metrics"))]
mod off {
    use std::sync::Arc;
    use std::time::Duration;

    #[inline(always)]
    pub(crate) fn hit(_: &Arc<str>) {}
    #[inline(always)]
    pub(crate) fn miss(_: &Arc<str>, _: &'static str) {}
    #[inline(always)]
    pub(crate) fn stale_serve(_: &Arc<str>) {}
    #[inline(always)]
    pub(crate) fn compute(_: &Arc<str>) {}
    #[inline(always)]
    pub(crate) fn compute_duration(_: &Arc<str>, _: Duration) {}
    #[inline(always)]
    pub(crate) fn writes(_: &Arc<str>, _: u64) {}
    #[inline(always)]
    pub(crate) fn error(_: &Arc<str>) {}
    #[inline(always)]
    pub(crate) fn operation(_: &Arc<str>, _: &'static str, _: &'static str, _: Duration) {}
    #[inline(always)]
    pub(crate) fn gauge_set(_: &'static str, _: &str, _: f64) {}
    pub(crate) fn describe() {}
}

#[cfg(not(feature = "metrics"))]
pub(crate) use off::*;

/// Describes every metric of [the guide's table](crate::guide::operations#metrics) (unit and help text) to the installed
/// `metrics` recorder, so that exporters such as Prometheus print `# HELP` lines. Call it
/// after installing the recorder; without the `metrics` feature it does nothing.
///
/// ```
/// cache_core::stats::describe_metrics(); // a no-op without a recorder (or without the feature)
/// ```
pub fn describe_metrics() {
    describe();
}
