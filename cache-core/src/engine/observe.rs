//! How the engine reports each operation (ARCHITECTURE.md): the per-namespace statistics a
//! handle counts under, the operation guard [`Op`] (span, latency, outcome, slow log).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::base::error::Result;
use crate::base::observe::{
    Kind, MAX_NAMESPACES, MissReason, NamespaceStats, NsStats, Operation, Outcome,
};
use crate::base::source::{Lookup, Source};
use crate::engine::Handle;

/// Registers a root's own statistics (called once, when the root is built).
pub(crate) fn register_root(cache: &Handle) {
    let namespaces = &cache.shared.namespaces;
    let mut list = namespaces.lock();
    if list.is_empty() {
        list.push(cache.scope.stats.clone());
    }
}

/// The statistics a handle for namespace `escaped` made from `parent` counts under: its own
/// first-level entry if `parent` counts under the root, else the parent's.
pub(crate) fn namespace_stats(parent: &Handle, escaped: &str) -> Arc<NsStats> {
    let namespaces = &parent.shared.namespaces;
    let mut list = namespaces.lock();
    let Some(root) = list.first().cloned() else {
        return parent.scope.stats.clone();
    };
    if !Arc::ptr_eq(&root, &parent.scope.stats) {
        return parent.scope.stats.clone();
    }
    let mut name = String::with_capacity(root.name.len() + 1 + escaped.len());
    name.push_str(&root.name);
    name.push(':');
    name.push_str(escaped);
    if let Some(found) = list.iter().find(|s| *s.name == *name) {
        return found.clone();
    }
    if list.len() > MAX_NAMESPACES {
        // The root, MAX_NAMESPACES namespaces, and `_other` last.
        return list[list.len() - 1].clone();
    }
    if list.len() == MAX_NAMESPACES {
        name.truncate(root.name.len());
        name.push_str(":_other");
    }
    let stats = Arc::new(NsStats::new(&name));
    list.push(stats.clone());
    stats
}

impl Handle {
    pub(crate) fn namespace_stats(&self) -> Vec<NamespaceStats> {
        let namespaces = &self.shared.namespaces;
        let list = namespaces.lock().clone();
        list.iter().map(|s| s.snapshot()).collect()
    }

    pub(crate) fn scope_stats(&self) -> NamespaceStats {
        self.scope.stats.snapshot()
    }

    /// Starts reporting an operation: its span, timer and outcome.
    pub(crate) fn op(&self, operation: Operation) -> Op<'_> {
        // No subscriber was ever set: no span. Where some crate turns on `tracing`'s `log`
        // feature (the bench's hitbox does), a disabled span still records its fields for the
        // `log` crate: ~150 instructions, 5% of an L1 hit. Events still reach `log`.
        let span = if !tracing::dispatcher::has_been_set() {
            tracing::Span::none()
        } else {
            self.span_of(operation)
        };
        // A get-or-compute's own duration is read by the `metrics` facade only (see the drop);
        // its read is timed from `read_begins`.
        let timed = operation.kind() != Kind::Composite || cfg!(feature = "metrics");
        Op {
            cache: self,
            operation,
            started: timed.then(Instant::now),
            read_started: None,
            span,
            outcome: Outcome::Error,
            source: None,
        }
    }

    fn span_of(&self, operation: Operation) -> tracing::Span {
        match operation {
            Operation::GetOrCompute => tracing::debug_span!(
                "cached",
                operation = operation.name(),
                namespace = &*self.scope.stats.name,
                outcome = tracing::field::Empty,
                source = tracing::field::Empty,
            ),
            _ => tracing::debug_span!(
                "cache",
                operation = operation.name(),
                namespace = &*self.scope.stats.name,
                outcome = tracing::field::Empty,
                source = tracing::field::Empty,
            ),
        }
    }

    /// A read found nothing usable.
    pub(crate) fn count_miss(&self, reason: MissReason) {
        self.scope.stats.miss(reason);
    }
}

/// An operation being reported; on drop it records its latency (in the histogram of its
/// kind and the `metrics` facade), closes its span with the outcome, and logs itself if
/// slower than `CACHE_SLOW_OP`. Dropped without an outcome (an early `?`), it is an error.
pub(crate) struct Op<'a> {
    cache: &'a Handle,
    operation: Operation,
    /// `None` for a get-or-compute without the `metrics` facade: nothing reads its duration.
    started: Option<Instant>,
    /// When a get-or-compute's read began (its L1 missed), for `read_done`.
    read_started: Option<Instant>,
    span: tracing::Span,
    outcome: Outcome,
    source: Option<&'static str>,
}

impl Op<'_> {
    /// The span, to instrument what runs inside the operation.
    pub(crate) fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    pub(crate) fn outcome(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }

    /// A result: `Ok` is `ok`, `Err` an error.
    pub(crate) fn result<T>(&mut self, r: &Result<T>) {
        self.outcome = if r.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
        };
    }

    /// A lookup's result: hit (from `source`), miss or error.
    pub(crate) fn lookup<T>(&mut self, r: &Result<Lookup<T>>) {
        self.outcome = match r {
            Ok(Lookup::Hit { source, .. }) => {
                self.source = Some(source_label(*source));
                Outcome::Hit
            }
            Ok(Lookup::Miss) => Outcome::Miss,
            Err(_) => Outcome::Error,
        };
    }

    /// A get-or-compute served from `source`.
    pub(crate) fn hit(&mut self, source: Source) {
        self.outcome = Outcome::Hit;
        self.source = Some(source_label(source));
    }

    /// A get-or-compute that computes its value.
    pub(crate) fn miss(&mut self) {
        self.outcome = Outcome::Miss;
        self.source = Some("compute");
    }

    /// The read of a get-or-compute begins: the L1 (if any) missed, and the backend is next.
    pub(crate) fn read_begins(&mut self) {
        self.read_started = Some(Instant::now());
    }

    /// The read of a get-or-compute is over: its latency (from
    /// [`read_begins`](Self::read_begins)) goes to the read histogram.
    pub(crate) fn read_done(&self) {
        let Some(took) = self.read_started.map(|t| t.elapsed()) else {
            return;
        };
        self.cache.scope.stats.read_took(took);
        slow_check(self.cache, "get_or_compute (read)", took);
    }
}

fn source_label(source: Source) -> &'static str {
    match source {
        Source::Redis => "redis",
        Source::Memory => "memory",
        Source::Local => "local",
        #[allow(unreachable_patterns)] // sources added later
        _ => "other",
    }
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        if !self.span.is_disabled() {
            self.span.record("outcome", self.outcome.label());
            if let Some(source) = self.source {
                self.span.record("source", source);
            }
        }
        // A get-or-compute has no histogram of its own (its read has, `read_done`) and no
        // slow log: without the `metrics` facade nothing reads its duration, and the two
        // clock reads were a few percent of an L1 hit each.
        let Some(took) = self.started.map(|t| t.elapsed()) else {
            return;
        };
        let kind = self.operation.kind();
        let stats = &self.cache.scope.stats;
        match kind {
            Kind::Read => stats.read_took(took),
            Kind::Write => stats.write_took(took),
            Kind::Composite => {}
        }
        crate::base::metrics::operation(
            &stats.name,
            self.operation.name(),
            self.outcome.label(),
            took,
        );
        if kind != Kind::Composite {
            slow_check(self.cache, self.operation.name(), took);
        }
    }
}

fn slow_check(cache: &Handle, operation: &'static str, took: Duration) {
    let Some(threshold) = cache.shared.config.slow_op else {
        return;
    };
    if took < threshold {
        return;
    }
    if let Some(held) = cache.shared.slow_log.admit(crate::base::codec::now_ms()) {
        tracing::warn!(
            namespace = &*cache.scope.stats.name,
            operation,
            elapsed_ms = took.as_secs_f64() * 1e3,
            threshold_ms = threshold.as_secs_f64() * 1e3,
            held_back = held,
            "slow cache operation"
        );
    }
}
