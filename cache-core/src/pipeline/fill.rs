//! Recording a computation's result (store it unless an invalidation landed meanwhile, hand
//! it to the waiters, or serve the stale value on failure), and how a computation outlives
//! its caller ([`Spawn`]) or does not ([`Inline`]).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Policy;
use super::fill_lock;
use super::flight::Leader;
use crate::base::codec;
use crate::base::error::Error;
use crate::engine::WriteIf;
use crate::pipeline::Pipeline;
use crate::pipeline::glue::Mode;

// ---- how work outlives its caller -------------------------------------------------------------

/// A computation already started, with what storing its result needs.
pub struct Job<F, M> {
    pub(super) fut: Caught<F>,
    pub(super) fill: Fill,
    pub(super) mode: M,
}

impl<F, M> std::fmt::Debug for Job<F, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("key", &self.fill.full).finish()
    }
}

/// Whether a computation can go on without its caller: [`Spawn`] (its future is
/// `Send + 'static`) or [`Inline`] (it borrows from its caller).
pub trait Detach<F: Future>: Copy + Send + Sync + 'static {
    /// Whether [`detach`](Detach::detach) can succeed.
    fn can_detach(&self) -> bool;
    /// Finishes `job` in a task of its own, or gives it back.
    fn detach<M: Mode<F::Output>>(self, job: Job<F, M>) -> Option<Job<F, M>>;
}

/// Computations that can outlive their caller: spawned on the tokio runtime to finish.
#[derive(Debug, Clone, Copy)]
pub struct Spawn;

/// Computations that borrow from their caller: always driven by it.
#[derive(Debug, Clone, Copy)]
pub struct Inline;

impl<F> Detach<F> for Spawn
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn can_detach(&self) -> bool {
        tokio::runtime::Handle::try_current().is_ok()
    }

    fn detach<M: Mode<F::Output>>(self, job: Job<F, M>) -> Option<Job<F, M>> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Some(job);
        };
        runtime.spawn(async move {
            let Job { fut, fill, mode } = job;
            let out = fut.await;
            fill.settle_detached(mode, out).await;
        });
        None
    }
}

impl<F: Future> Detach<F> for Inline {
    fn can_detach(&self) -> bool {
        false
    }

    fn detach<M: Mode<F::Output>>(self, job: Job<F, M>) -> Option<Job<F, M>> {
        Some(job)
    }
}

pub(super) type Panic = Box<dyn Any + Send>;

/// A boxed future whose panic is an `Err` (the box lets it move to another task mid-way).
pub(super) struct Caught<F>(pub(super) Pin<Box<F>>);

impl<F: Future> Future for Caught<F> {
    type Output = Result<F::Output, Panic>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// `fut`'s output, unless `bound` passes first (`None`: no bound).
pub(super) async fn within<F: Future + Unpin>(
    bound: Option<Duration>,
    fut: &mut F,
) -> Option<F::Output> {
    match bound {
        None => Some(fut.await),
        Some(bound) => tokio::time::timeout(bound, fut).await.ok(),
    }
}

// ---- recording a result ------------------------------------------------------------------------

/// Everything needed to store a computed value, owned, so that it can move to a task of its
/// own with the computation.
pub(crate) struct Fill {
    pub(super) cache: Pipeline,
    pub(super) function: &'static str,
    pub(super) full: String,
    pub(super) tag_keys: Vec<String>,
    /// The tag versions read before computing; `None` (the backend failed): nothing is
    /// stored.
    pub(super) versions: Option<Vec<u64>>,
    pub(super) condition: WriteIf,
    pub(super) ttl: Option<Duration>,
    pub(super) policy: Policy,
    pub(super) started: Instant,
    pub(super) leader: Option<Leader>,
    pub(super) fill_lock: Option<fill_lock::Guard>,
    /// The stale entry a refresh replaces, whose life a failure extends.
    pub(super) stale_seen: Option<Bytes>,
}

impl Fill {
    pub(super) fn new(
        cache: &Pipeline,
        function: &'static str,
        full: &str,
        tag_keys: &[String],
        ttl: Option<Duration>,
        policy: &Policy,
    ) -> Fill {
        Fill {
            cache: cache.clone(),
            function,
            full: full.to_owned(),
            tag_keys: tag_keys.to_vec(),
            versions: None,
            condition: WriteIf::Always,
            ttl: cache.ttl_or_default(ttl),
            policy: *policy,
            started: Instant::now(),
            leader: None,
            fill_lock: None,
            stale_seen: None,
        }
    }

    pub(super) fn timeout_error(&self) -> Error {
        Error::ComputeTimeout {
            key: crate::base::key::shorten_for_display(&self.full),
            after: self.policy.hard_timeout.unwrap_or_default(),
        }
    }

    /// The caller's output: `out`, or `fallback` (the stale value) if it failed.
    pub(super) async fn settle<O, M: Mode<O>>(
        mut self,
        mode: M,
        out: Result<O, Panic>,
        fallback: Option<M::Stored>,
    ) -> O {
        match out {
            Ok(out) if mode.shared(&out).is_some() => {
                self.record(&mode, &out).await;
                out
            }
            failed => {
                if fallback.is_some() && self.stale_seen.is_some() {
                    self.cache.root_stats().stale_served();
                    self.cache.ns_stats().stale_serve(); // ops
                }
                // Releases the fill lock, extends the stale value's life if there is one,
                // and lands the flight as failed, so that a waiter takes over.
                self.fail::<M::Stored>().await;
                match (failed, fallback) {
                    (_, Some(value)) => mode.restore(value),
                    (Ok(out), None) => out,
                    (Err(panic), None) => std::panic::resume_unwind(panic),
                }
            }
        }
    }

    /// A computation that outlived its caller.
    pub(super) async fn settle_detached<O, M: Mode<O>>(mut self, mode: M, out: Result<O, Panic>) {
        let encoded = match &out {
            Ok(out) => self.encode(&mode, out),
            Err(_) => None,
        };
        match (out, encoded) {
            (_, Some((bytes, store))) => self.store(bytes, store).await,
            (Ok(_), None) => self.fail::<M::Stored>().await,
            (Err(_), None) => {
                tracing::error!(function = self.function, key = %crate::base::key::shorten_for_display(&self.full), "a background computation panicked");
                self.fail::<M::Stored>().await;
            }
        }
    }

    /// Stores what `mode` keeps of `out` and hands it to the waiters.
    pub(super) async fn record<O, M: Mode<O>>(&mut self, mode: &M, out: &O) {
        // Encoded before any `.await`, so that the future holds no reference to `out` (whose
        // type need not be `Sync`) when it moves to a task of its own.
        let Some((bytes, store)) = self.encode(mode, out) else {
            return;
        };
        self.store(bytes, store).await;
    }

    pub(super) fn encode<O, M: Mode<O>>(&mut self, mode: &M, out: &O) -> Option<(Bytes, bool)> {
        if let Some((ttl, stale)) = mode.lifetime(out) {
            (self.ttl, self.policy.stale) = (Some(ttl), stale);
        }
        let took = self.started.elapsed();
        self.cache.ns_stats().computed(took); // ops: compute latency
        let compute_us = took.as_micros().min(u32::MAX as u128) as u32;
        let value = mode.shared(out)?;
        let no_tags = Vec::new();
        let encoded = self.cache.encode_entry(
            &self.full,
            value,
            self.ttl,
            self.policy.stale,
            (&self.tag_keys, self.versions.as_ref().unwrap_or(&no_tags)),
            compute_us,
            codec::fingerprint::<M::Stored>(),
        );
        match encoded {
            Ok(bytes) => Some((Bytes::from(bytes), mode.stored(out).is_some())),
            Err(e) => {
                self.cache.compute_err(self.function, "set", &self.full, &e);
                None
            }
        }
    }

    pub(super) async fn store(&mut self, bytes: Bytes, store: bool) {
        let cache = &self.cache;
        if self.versions.is_some() && store {
            let ttl = match (self.ttl, self.policy.stale) {
                (Some(ttl), Some(stale)) => Some(ttl.saturating_add(stale)),
                (ttl, _) => ttl,
            };
            let condition = std::mem::replace(&mut self.condition, WriteIf::Always);
            let written = match crate::base::limits::ttl(ttl) {
                Ok(ttl) => {
                    cache
                        .write_encoded(&self.full, bytes.to_vec(), ttl, condition)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                cache.compute_err(self.function, "set", &self.full, &e);
            }
        }
        if let Some(guard) = self.fill_lock.take() {
            guard.release(cache).await;
        }
        if let Some(leader) = self.leader.take() {
            leader.land(Some(bytes));
        }
    }

    /// Fail-safe: the stale value a failed refresh leaves is served as fresh for the
    /// throttle, so that the failing source is not called on every read.
    pub(super) async fn fail<S: Serialize + DeserializeOwned + 'static>(mut self) {
        if let Some(guard) = self.fill_lock.take() {
            guard.release(&self.cache).await;
        }
        let Some(seen) = self.stale_seen.take() else {
            return;
        };
        let Ok(env) = codec::parse(&seen) else {
            return;
        };
        let Ok(value) = self
            .cache
            .open_value::<S>(&self.full, &seen, &env, env.fingerprint)
        else {
            return;
        };
        let now = codec::now_ms();
        let throttle = self.policy.fail_safe_throttle;
        let fresh_until = now.saturating_add(throttle.as_millis() as u64);
        let keep = Duration::from_millis(env.stale_until_ms.saturating_sub(fresh_until));
        let (keys, versions): (Vec<String>, Vec<u64>) =
            env.tags().map(|(k, v)| (k.to_owned(), v)).unzip();
        let cache = &self.cache;
        let Ok(bytes) = cache.encode_entry(
            &self.full,
            &value,
            Some(throttle),
            Some(keep.max(Duration::from_millis(1))),
            (&keys, &versions),
            env.compute_us,
            env.fingerprint,
        ) else {
            return;
        };
        let ttl = throttle.saturating_add(keep);
        let compute_us = env.compute_us;
        let written = cache
            .write_encoded(
                &self.full,
                bytes,
                Some(ttl),
                WriteIf::Unchanged(Some(seen), cache.pattern_mark()),
            )
            .await;
        if let Err(e) = written {
            match cache.fallback_for(&e) {
                // The breaker opened since the stale value was read: it is served from the
                // fallback store for the throttle, as it would have been from Redis.
                Some(store) => cache.keep_in_fallback(
                    &store,
                    &self.full,
                    &value,
                    &self.tag_keys,
                    throttle,
                    compute_us,
                ),
                None => cache.compute_err(self.function, "fail-safe", &self.full, &e),
            }
        }
    }
}
