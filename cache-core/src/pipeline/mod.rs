//! The get-or-compute pipeline: read, compute on a miss, store unless an invalidation landed
//! meanwhile. `get_or_set`, `try_get_or_set`, `get_or_set_with` and the code `#[cached]`
//! generates all come here.
//!
//! The steps, in order (each a function below, so other capabilities hook in at one place):
//! 1. **read**: one round trip for the value and its tags' versions; a fresh hit returns
//!    here and pays for nothing else below (no lock, no map lookup);
//! 2. **early refresh** (`refresh = "early"`): a fresh hit near its expiry may start one
//!    refresh (XFetch) and still returns the value it read;
//! 3. **stale** (`stale = ..`): a value past its TTL but inside its stale window is served
//!    while one refresh runs (waiting for it up to `soft_timeout`);
//! 4. **single-flight** (`lock = "local"`, the default): concurrent misses of one key in this
//!    process join one computation; the others wait for its encoded result;
//! 5. **fill lock** (`lock = "distributed"`): across processes, see [`fill_lock`];
//! 6. **compute** with `hard_timeout`, catching panics, and **record**: store what the mode
//!    keeps (conditionally, so an invalidation that landed meanwhile wins), hand the encoded
//!    value to the waiters, or on failure serve the stale value and extend its life by the
//!    fail-safe throttle.
//!
//! Futures of generated code may borrow their arguments (`&self`, `&str`): they are always
//! driven by their own caller, in its task. Only when the future is `Send + 'static`
//! ([`Spawn`]) can a computation outlive its caller (a refresh behind a stale value, a
//! computation past its soft or hard timeout); otherwise ([`Inline`]) the caller that runs
//! it waits for it (bounded by the hard timeout) while every other caller is served the
//! stale value at once.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::base::codec;
use crate::base::error::Error;
use crate::base::observe::{MissReason, Operation, Outcome}; // ops
use crate::engine::tags;
use crate::engine::{Handle, Lookup, WriteIf};
use crate::pipeline::glue::Mode;
use tracing::Instrument; // ops

pub(crate) mod batch;
pub(crate) mod fallback;
mod fill;
pub(crate) mod fill_lock;
mod flight;
pub(crate) mod glue;
mod local;
mod options;

pub use batch::BatchOptions;
pub(crate) use fill::Fill;
use fill::{Caught, within};
pub use fill::{Detach, Inline, Job, Spawn};
use flight::{Flights, Joined, Seen, Waited, decode_shared, landings, wait};
pub(crate) use options::Policy;
pub use options::{ComputeOptions, FillLock, HardTimeout, HardTimeoutFor, NoHardTimeout};

// ---- early refresh ----------------------------------------------------------------------------

/// The random numbers of XFetch, per cache root; seeded from the OS unless a test seeds it.
struct XRng(AtomicU64);

impl Default for XRng {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(codec::now_us());
        XRng(AtomicU64::new(h.finish()))
    }
}

impl XRng {
    /// Uniform in (0, 1] (SplitMix64).
    fn next(&self) -> f64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// -ln of the smallest number [`XRng::next`] returns: past `delta * beta` times this before
/// expiry, XFetch never fires, and no random number is drawn.
const MAX_NEG_LN: f64 = 36.8;

/// What a read found, for callers with a stale window or early refresh.
enum Found<S> {
    Fresh { value: S, refresh: bool },
    Stale(S),
    Miss,
}

/// What one get-or-compute call is about, fixed for its whole life: who calls (for logs), the
/// entry's full key, its tags' version keys, its TTL (`None`: the default) and the policy.
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) function: &'static str,
    pub(crate) full: &'a str,
    pub(crate) tag_keys: &'a [String],
    pub(crate) ttl: Option<Duration>,
    pub(crate) policy: &'a Policy,
}

/// What the read of a get-or-compute found when it had no fresh value: the tag versions and
/// bytes it read (`None` if the read failed), a stale value to serve, and the flights' epoch
/// when it began.
struct AfterRead<S> {
    known: Option<(Vec<Option<u64>>, Option<Bytes>)>,
    stale: Option<S>,
    epoch: u64,
}

/// The pipeline's own state of a cache root: the computations in flight and the random
/// numbers of early refresh. Owned by the front door's handle, shared by its scoped handles.
#[derive(Default)]
pub(crate) struct State {
    flights: Arc<Flights>,
    xrng: XRng,
}

/// A handle of the engine with the pipeline's state: what get-or-compute runs on. The front
/// door's `Cache` holds one; generated code reaches it through `__private`.
#[doc(hidden)]
#[derive(Clone)]
pub struct Pipeline {
    handle: Handle,
    state: Arc<State>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.handle.fmt(f)
    }
}

impl std::ops::Deref for Pipeline {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl Pipeline {
    /// A new root's pipeline over `handle`.
    pub(crate) fn new(handle: Handle) -> Pipeline {
        Pipeline {
            handle,
            state: Arc::default(),
        }
    }

    /// The same pipeline state over another scope of the root.
    pub(crate) fn with_handle(&self, handle: Handle) -> Pipeline {
        Pipeline {
            handle,
            state: self.state.clone(),
        }
    }

    /// The engine's handle.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    pub(crate) fn seed_early_refresh(&self, seed: u64) {
        self.state.xrng.0.store(seed, Ordering::Relaxed);
    }

    fn flights(&self) -> Arc<Flights> {
        self.state.flights.clone()
    }

    // ---- the public entry points ------------------------------------------------------------

    pub(crate) async fn get_or_set<T, F, Fut>(
        &self,
        key: &str,
        ttl: impl Into<Option<Duration>>,
        compute: F,
    ) -> T
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let policy = Policy::DEFAULT;
        self.compute_direct(
            "Cache::get_or_set",
            key,
            ttl.into(),
            &policy,
            crate::pipeline::glue::Plain,
            Inline,
            compute,
        )
        .await
    }

    pub(crate) async fn try_get_or_set<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: impl Into<Option<Duration>>,
        compute: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let policy = Policy::DEFAULT;
        self.compute_direct(
            "Cache::try_get_or_set",
            key,
            ttl.into(),
            &policy,
            crate::pipeline::glue::ResultMode,
            Inline,
            compute,
        )
        .await
    }

    pub(crate) async fn get_or_set_with<T, F, Fut>(
        &self,
        key: &str,
        options: &ComputeOptions,
        compute: F,
    ) -> T
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        self.compute_direct(
            "Cache::get_or_set_with",
            key,
            options.ttl,
            &options.policy,
            crate::pipeline::glue::Plain,
            Spawn,
            compute,
        )
        .await
    }

    pub(crate) async fn try_get_or_set_with<T, E, F, Fut, H>(
        &self,
        key: &str,
        options: &ComputeOptions<H>,
        compute: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        E: Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        H: HardTimeoutFor<E>,
    {
        self.compute_direct(
            "Cache::try_get_or_set_with",
            key,
            options.ttl,
            &options.policy,
            TryMode::<H>(PhantomData),
            Spawn,
            compute,
        )
        .await
    }

    /// The direct API's calls: a key the cache cannot use still gets a value.
    #[allow(clippy::too_many_arguments)] // one private step
    async fn compute_direct<O, M, F, Fut, D>(
        &self,
        function: &'static str,
        key: &str,
        ttl: Option<Duration>,
        policy: &Policy,
        mode: M,
        detach: D,
        compute: F,
    ) -> O
    where
        M: Mode<O>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
        D: Detach<Fut>,
    {
        match self.full_key(key) {
            Ok(full) => {
                let call = Call {
                    function,
                    full: &full,
                    tag_keys: &[],
                    ttl,
                    policy,
                };
                self.compute_with(call, mode, detach, compute()).await
            }
            Err(e) => {
                tracing::warn!(function, error = %e, "unusable key, computing without the cache");
                self.root_stats().compute();
                self.ns_stats().compute(); // ops
                compute().await
            }
        }
    }

    // ---- the pipeline -----------------------------------------------------------------------

    /// The one get-or-compute path, shared by the direct API and generated code.
    pub(crate) async fn compute_with<O, M, F, D>(
        &self,
        call: Call<'_>,
        mode: M,
        detach: D,
        compute: F,
    ) -> O
    where
        M: Mode<O>,
        F: Future<Output = O>,
        D: Detach<F>,
    {
        let Call {
            function,
            full,
            tag_keys,
            ttl,
            policy,
        } = call;
        let mut op = self.op(Operation::GetOrCompute); // ops: span, timer, outcome
        // local.rs: the L1 answers first, when on (and not opted out).
        let (local, local_mark) = match self.local_begin(full, &mode) {
            Ok(hit) => {
                op.hit(crate::base::source::Source::Local); // ops: an L1 hit
                return mode.restore(hit);
            }
            Err(l1) => {
                op.read_begins(); // ops: the read's latency starts here
                match l1 {
                    (Some(local), Some(mark)) => {
                        (Some(local), Some(local.settle(full, mark).await))
                    }
                    l1 => l1,
                }
            }
        };
        // 1. read
        let epoch = landings();
        let mut known = None;
        let mut stale = None;
        let (generation_keys, heard) = self.generations_to_read(); // engine/clear.rs
        let read = (self.backend_ref())
            .get_with_scope(full, tag_keys, generation_keys)
            .await;
        op.read_done(); // ops: read latency
        if let Ok((_, versions)) = &read {
            self.learn_generations(heard, versions.get(tag_keys.len()..).unwrap_or(&[]));
        }
        match read {
            Ok((bytes, versions)) if policy.reads_plainly() => {
                match self
                    .decode_hit::<M::Stored>(
                        full,
                        bytes.as_deref(),
                        Some((tag_keys, &versions)),
                        codec::fingerprint::<M::Stored>(),
                    )
                    .await
                {
                    Ok(Lookup::Hit { value, source, .. }) => {
                        op.hit(source); // ops
                        self.local_fill_from(
                            local,
                            local_mark,
                            full,
                            bytes.as_ref(),
                            &mode,
                            &value,
                        );
                        return mode.restore(value);
                    }
                    Ok(Lookup::Miss) => known = Some((versions, bytes)),
                    Err(e) => self.compute_err(function, "get", full, &e),
                }
            }
            Ok((bytes, versions)) => {
                match self
                    .read_entry::<M::Stored>(full, bytes.as_deref(), tag_keys, &versions, policy)
                    .await
                {
                    Ok(Found::Fresh {
                        value,
                        refresh: false,
                    }) => {
                        op.hit(self.backend_ref().kind()); // ops
                        self.local_fill_from(
                            local,
                            local_mark,
                            full,
                            bytes.as_ref(),
                            &mode,
                            &value,
                        );
                        return mode.restore(value);
                    }
                    // 2. early refresh
                    Ok(Found::Fresh {
                        value,
                        refresh: true,
                    }) => {
                        op.hit(self.backend_ref().kind()); // ops
                        let fill = Fill::new(self, function, full, tag_keys, ttl, policy);
                        return Box::pin(self.refresh_early(
                            fill,
                            epoch,
                            (versions, bytes),
                            value,
                            mode,
                            detach,
                            compute,
                        ))
                        .await;
                    }
                    Ok(Found::Stale(value)) => {
                        stale = Some(value);
                        known = Some((versions, bytes));
                    }
                    Ok(Found::Miss) => known = Some((versions, bytes)),
                    Err(e) => self.compute_err(function, "get", full, &e),
                }
            }
            // breaker.rs: while the circuit breaker is open, the fallback store answers
            // (boxed, like the miss path, to keep the hit's future small).
            Err(e) => match self.fallback_for(&e) {
                Some(store) => {
                    return Box::pin(self.fallback_in_flight(store, call, epoch, mode, compute))
                        .await;
                }
                None => self.compute_err(function, "get", full, &e),
            },
        }
        // Boxed: the rest is the miss path's, and its state (flights, the fill, the
        // computation) stays out of the future every hit builds.
        if known.is_some() {
            op.miss(); // ops: computed, or (below) a stale value found
        }
        if stale.is_some() {
            op.outcome(Outcome::Stale); // ops
        }
        let span = op.span(); // ops: the computation and its write run in the span
        Box::pin(
            self.compute_cold(
                call,
                mode,
                detach,
                compute,
                AfterRead {
                    known,
                    stale,
                    epoch,
                },
            )
            .instrument(span),
        )
        .await
    }

    /// While the breaker is open: the fallback store's value or the computation's, with the
    /// same single-flight as on Redis (the callers of one key during an outage run its
    /// computation once; a failed one is taken over by a waiter).
    async fn fallback_in_flight<O, M, F>(
        &self,
        store: Arc<crate::store::memory::MemoryBackend>,
        call: Call<'_>,
        epoch: u64,
        mode: M,
        compute: F,
    ) -> O
    where
        M: Mode<O>,
        F: Future<Output = O>,
    {
        let Call {
            full,
            tag_keys,
            ttl,
            policy,
            ..
        } = call;
        // A hit in the fallback store pays no flight.
        if let Ok(value) = self.fallback_lookup::<M::Stored>(&store, full, tag_keys) {
            return mode.restore(value);
        }
        let mut leader = None;
        // `lock = "none"` opts out of single-flight, here as on Redis.
        let single_flight = policy.lock != FillLock::None;
        while single_flight && leader.is_none() {
            match self.flights().join(full, &Seen::Unread, epoch) {
                Joined::Lead(lead) => leader = Some(lead),
                Joined::Landed(bytes) => match decode_shared::<M::Stored>(self, full, &bytes) {
                    Some(value) => return mode.restore(value),
                    None => break,
                },
                Joined::Wait(rx) => {
                    self.root_stats().flight_wait();
                    match wait(rx, None).await {
                        Waited::Value(bytes) => {
                            match decode_shared::<M::Stored>(self, full, &bytes) {
                                Some(value) => return mode.restore(value),
                                None => break,
                            }
                        }
                        Waited::Failed => continue,
                        Waited::TimedOut => break,
                    }
                }
            }
        }
        let (out, kept) = self
            .compute_in_fallback(store, full, tag_keys, ttl, mode, compute)
            .await;
        if let Some(leader) = leader {
            // Handed over as the fallback store keeps it: the store's own bytes, shared, so
            // that a landing lingering for racing callers costs no memory beside the store's
            // budget. An encrypting handle's waiters open only sealed entries: for those, the
            // entry as `encode_entry` makes it. A value that was not kept (an invalidation
            // during the computation won) or does not encode lands as failed: a waiter
            // computes.
            let bytes = if self.is_encrypted() {
                mode.shared(&out).and_then(|value| {
                    let no_versions = vec![0; tag_keys.len()];
                    self.encode_entry(
                        full,
                        value,
                        self.ttl_or_default(ttl),
                        None,
                        (tag_keys, &no_versions),
                        0,
                        codec::fingerprint::<M::Stored>(),
                    )
                    .ok()
                    .map(Bytes::from)
                })
            } else {
                kept
            };
            leader.land(bytes);
        }
        out
    }

    /// Steps 3 to 6, after a read that found no fresh value (`known`: what it found, `None`
    /// if it failed; `stale`: a stale value to serve).
    async fn compute_cold<O, M, F, D>(
        &self,
        call: Call<'_>,
        mode: M,
        detach: D,
        compute: F,
        read: AfterRead<M::Stored>,
    ) -> O
    where
        M: Mode<O>,
        F: Future<Output = O>,
        D: Detach<F>,
    {
        let Call {
            function,
            full,
            tag_keys,
            ttl,
            policy,
        } = call;
        let AfterRead {
            known,
            stale,
            epoch,
        } = read;
        let seen = match &known {
            Some((_, bytes)) => Seen::Read(bytes.clone()),
            None => Seen::Unread,
        };
        let mut fill = Fill::new(self, function, full, tag_keys, ttl, policy);
        if stale.is_some() {
            fill.stale_seen = known.as_ref().and_then(|(_, b)| b.clone());
        }

        // 3. and 4.: one computation per key in the process; a stale value is served at
        // once to everyone but the caller that starts the refresh.
        if policy.lock != FillLock::None {
            loop {
                match self.flights().join(full, &seen, epoch) {
                    Joined::Lead(leader) => {
                        fill.leader = Some(leader);
                        break;
                    }
                    Joined::Landed(bytes) => {
                        if let Some(value) = decode_shared::<M::Stored>(self, full, &bytes) {
                            self.root_stats().flight_wait();
                            return mode.restore(value);
                        }
                        break;
                    }
                    Joined::Wait(rx) => {
                        if let Some(value) = stale {
                            self.root_stats().stale_served();
                            self.ns_stats().stale_serve(); // ops
                            return mode.restore(value);
                        }
                        self.root_stats().flight_wait();
                        let bound = policy.hard_timeout.filter(|_| M::TIMES_OUT);
                        match wait(rx, bound).await {
                            Waited::Value(bytes) => {
                                match decode_shared::<M::Stored>(self, full, &bytes) {
                                    Some(value) => return mode.restore(value),
                                    None => break,
                                }
                            }
                            // The computation failed, panicked or was cancelled: take over
                            // (one of the waiters leads the next flight).
                            Waited::Failed => continue,
                            Waited::TimedOut => {
                                if let Some(out) = mode.timed_out(fill.timeout_error()) {
                                    return out;
                                }
                            }
                        }
                    }
                }
            }
        }

        // 5. across processes
        if policy.lock == FillLock::Distributed && known.is_some() {
            let seen_bytes = known.as_ref().and_then(|(_, b)| b.as_deref());
            match fill_lock::acquire(self, full, seen_bytes, policy, stale.is_some()).await {
                fill_lock::Acquired::Held(guard) => fill.fill_lock = Some(guard),
                fill_lock::Acquired::Stale => {
                    if let Some(value) = stale {
                        self.root_stats().stale_served();
                        self.ns_stats().stale_serve(); // ops
                        return mode.restore(value);
                    }
                }
                fill_lock::Acquired::Arrived => {
                    // Another process stored the value: read it as a waiter would.
                    if let Ok(Some(bytes)) = self.backend_ref().get(full).await
                        && let Ok(Lookup::Hit { value, .. }) = self
                            .decode_hit::<M::Stored>(
                                full,
                                Some(&bytes),
                                None,
                                codec::fingerprint::<M::Stored>(),
                            )
                            .await
                    {
                        self.root_stats().flight_wait();
                        if let Some(leader) = fill.leader.take() {
                            leader.land(Some(bytes));
                        }
                        return mode.restore(value);
                    }
                }
                fill_lock::Acquired::TimedOut => self.root_stats().lock_timeout(),
            }
        }

        // Invalidations that land while the value is computed win (ARCHITECTURE.md §4). By
        // tag: the versions are read before computing, so the stored entry records an old
        // version and the next read misses. By key: the result is written only if the key
        // still holds what the read found, and an invalidation leaves a tombstone there.
        if let Some((versions, seen_bytes)) = known {
            fill.versions = tags::current_versions(self, tag_keys, Some(versions))
                .await
                .inspect_err(|e| self.compute_err(function, "tag versions", full, e))
                .ok();
            fill.condition = WriteIf::Unchanged(seen_bytes, self.pattern_mark());
            // pattern.rs
        }

        // 6. compute
        self.root_stats().compute();
        self.ns_stats().compute(); // ops
        let mut job = Job {
            fut: Caught(Box::pin(compute)),
            fill,
            mode,
        };
        match stale {
            Some(stale) => {
                // Wait for the refresh up to the soft timeout if it can go on without us,
                // else (it borrows from this caller) up to the hard one.
                let bound = if detach.can_detach() {
                    Some(policy.soft_timeout.unwrap_or(Duration::ZERO))
                } else {
                    policy.hard_timeout
                };
                let bound = match (bound, policy.hard_timeout) {
                    (Some(b), Some(h)) => Some(b.min(h)),
                    (b, _) => b,
                };
                match within(bound, &mut job.fut).await {
                    Some(out) => job.fill.settle(job.mode, out, Some(stale)).await,
                    None => {
                        self.root_stats().stale_served();
                        self.ns_stats().stale_serve(); // ops
                        match detach.detach(job) {
                            None => self.root_stats().background_refresh(),
                            Some(job) => {
                                let Job { fut, fill, .. } = job;
                                drop(fut);
                                fill.fail::<M::Stored>().await;
                            }
                        }
                        mode.restore(stale)
                    }
                }
            }
            None => {
                let bound = policy.hard_timeout.filter(|_| M::TIMES_OUT);
                match within(bound, &mut job.fut).await {
                    Some(out) => job.fill.settle(job.mode, out, None).await,
                    None => {
                        let error = job.fill.timeout_error();
                        if detach.detach(job).is_none() {
                            self.root_stats().background_refresh();
                        }
                        match mode.timed_out(error) {
                            Some(out) => out,
                            // `bound` is `None` for modes that cannot time out.
                            None => unreachable!("a computation without a bound timed out"),
                        }
                    }
                }
            }
        }
    }

    /// A fresh hit that XFetch picked for an early refresh: one refresh per key, in the
    /// background when it can be; the caller gets `value` (or, inline, the refreshed value).
    #[allow(clippy::too_many_arguments)] // one private step
    async fn refresh_early<O, M, F, D>(
        &self,
        mut fill: Fill,
        epoch: u64,
        (versions, bytes): (Vec<Option<u64>>, Option<Bytes>),
        value: M::Stored,
        mode: M,
        detach: D,
        compute: F,
    ) -> O
    where
        M: Mode<O>,
        F: Future<Output = O>,
        D: Detach<F>,
    {
        match self
            .flights()
            .join(&fill.full, &Seen::Read(bytes.clone()), epoch)
        {
            Joined::Lead(leader) => fill.leader = Some(leader),
            _ => return mode.restore(value),
        }
        fill.versions = tags::current_versions(self, &fill.tag_keys, Some(versions))
            .await
            .ok();
        fill.condition = WriteIf::Unchanged(bytes, self.pattern_mark()); // pattern.rs
        self.root_stats().compute();
        self.ns_stats().compute(); // ops
        self.root_stats().background_refresh();
        let job = Job {
            fut: Caught(Box::pin(compute)),
            fill,
            mode,
        };
        match detach.detach(job) {
            None => mode.restore(value),
            Some(mut job) => {
                let bound = fill_bound(&job.fill.policy);
                match within(bound, &mut job.fut).await {
                    Some(out) => job.fill.settle(mode, out, Some(value)).await,
                    None => mode.restore(value),
                }
            }
        }
    }

    /// Decodes what a read found, telling a fresh value from one past its TTL but inside its
    /// stale window, and deciding on an early refresh.
    async fn read_entry<S: DeserializeOwned + 'static>(
        &self,
        full: &str,
        bytes: Option<&[u8]>,
        tag_keys: &[String],
        versions: &[Option<u64>],
        policy: &Policy,
    ) -> crate::base::error::Result<Found<S>> {
        let stats = &self.root_stats();
        let Some(bytes) = bytes.filter(|b| !codec::is_tombstone(b)) else {
            self.count_miss(MissReason::Absent); // ops
            stats.miss();
            return Ok(Found::Miss);
        };
        let Ok(env) = codec::parse(bytes) else {
            // Not an envelope (a counter, garbage): the plain path knows what to do.
            return Ok(
                match self
                    .decode_hit::<S>(full, Some(bytes), Some((tag_keys, versions)), 0)
                    .await?
                {
                    Lookup::Hit { value, .. } => Found::Fresh {
                        value,
                        refresh: false,
                    },
                    Lookup::Miss => Found::Miss,
                },
            );
        };
        if !tags::still_valid(self, env.tags(), Some((tag_keys, versions))).await? {
            self.count_miss(MissReason::TagInvalidated); // ops
            stats.miss();
            return Ok(Found::Miss);
        }
        let now = codec::now_ms();
        let expired = env.expires_at_ms != 0 && env.expires_at_ms <= now;
        let in_stale_window = env.stale_until_ms > env.expires_at_ms;
        // Past the TTL without a stale window written, the backend's TTL is authoritative, as
        // on the plain path (`expire` and `touch` change only it); with one, the entry is
        // stale, and a miss for a caller that does not serve stale values.
        if expired && in_stale_window && policy.stale.is_none() {
            self.count_miss(MissReason::Expired); // ops
            stats.miss();
            return Ok(Found::Miss);
        }
        let value = match self.open_value::<S>(full, bytes, &env, codec::fingerprint::<S>()) {
            Ok(value) => value,
            Err(reason) => {
                self.count_miss(MissReason::Undecodable); // ops
                stats.decode_error();
                stats.miss();
                tracing::debug!(key = %crate::base::key::shorten_for_display(full), %reason, "cache value not decodable, treated as a miss");
                return Ok(Found::Miss);
            }
        };
        if expired && in_stale_window {
            self.count_miss(MissReason::Expired); // ops
            stats.miss();
            return Ok(Found::Stale(value));
        }
        self.ns_stats().hit(); // ops
        stats.hit();
        let beta = policy.early_refresh_beta;
        let refresh = beta > 0.0 && env.expires_at_ms != 0 && env.compute_us > 0 && {
            let delta_ms = f64::from(env.compute_us) / 1000.0 * beta;
            let left_ms = env.expires_at_ms.saturating_sub(now) as f64;
            left_ms < delta_ms * MAX_NEG_LN && delta_ms * -self.state.xrng.next().ln() >= left_ms
        };
        Ok(Found::Fresh { value, refresh })
    }

    /// Rendered tags turned into their version keys, in their own buffers.
    pub(crate) fn version_keys_in_place<'t>(&self, tags: &'t mut [String]) -> &'t [String] {
        for tag in tags.iter_mut() {
            tags::into_version_key(self.key_prefix(), tag);
        }
        tags
    }

    /// Computes and stores unconditionally (the `_refresh` companions and `#[cache_put]`).
    pub(crate) async fn compute_and_store<O, M: Mode<O>, F: Future<Output = O>>(
        &self,
        call: Call<'_>,
        mode: M,
        compute: F,
    ) -> O {
        let Call {
            function,
            full,
            tag_keys,
            ttl,
            policy,
        } = call;
        // breaker.rs: while the circuit breaker is open, the value goes to the fallback store.
        if let Some(store) = self.open_fallback() {
            return self
                .put_in_fallback(store, full, tag_keys, ttl, mode, compute)
                .await;
        }
        let mut fill = Fill::new(self, function, full, tag_keys, ttl, policy);
        fill.versions = tags::current_versions(self, tag_keys, None)
            .await
            .inspect_err(|e| self.compute_err(function, "tag versions", full, e))
            .ok();
        self.root_stats().compute();
        self.ns_stats().compute(); // ops
        let out = compute.await;
        fill.record(&mode, &out).await;
        out
    }
}

/// How long an inline caller waits for a refresh it runs.
fn fill_bound(policy: &Policy) -> Option<Duration> {
    policy.hard_timeout
}

/// `Result<T, E>` of the direct API, with or without a hard timeout.
struct TryMode<H>(PhantomData<fn() -> H>);

impl<H> Clone for TryMode<H> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<H> Copy for TryMode<H> {}

impl<T, E, H> Mode<Result<T, E>> for TryMode<H>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    H: HardTimeoutFor<E>,
{
    type Stored = T;
    const TIMES_OUT: bool = H::TIMES_OUT;
    fn stored<'a>(&self, out: &'a Result<T, E>) -> Option<&'a T> {
        out.as_ref().ok()
    }
    fn restore(&self, stored: T) -> Result<T, E> {
        Ok(stored)
    }
    fn succeeded(&self, out: &Result<T, E>) -> bool {
        out.is_ok()
    }
    fn timed_out(&self, error: Error) -> Option<Result<T, E>> {
        H::error(error).map(Err)
    }
}
