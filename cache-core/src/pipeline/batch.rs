//! Batch get-or-compute: many ids in, a map out, and one call of the caller's `load` with
//! exactly the ids the cache could not answer (ARCHITECTURE.md §3, per element).
//!
//! The steps, each the single-key pipeline's for every element:
//! 1. **L1**: ids the near cache holds are answered without I/O;
//! 2. **read**: one round trip for every remaining key and the versions of all their tags
//!    (`MGET`; on a cluster, one per hash slot, sent together); while the circuit breaker is
//!    open, the fallback store answers instead;
//! 3. **single-flight**: each missing key joins its flight in this process, the map the
//!    single-key path uses, so a key another call is computing (a batch or a `#[cached]`
//!    call) is awaited, not loaded again. Flights are joined in the order of their full keys
//!    and waited for as they are joined: a batch waits for a key only while it leads keys
//!    that sort before it, so two overlapping batches never wait for each other in a circle;
//! 4. **fill lock** (`FillLock::Distributed`): the same across processes, in the same order;
//! 5. **load** once, with the ids still missing, deduplicated, in input order; the tag
//!    versions recorded are those read before it ran;
//! 6. **write**: what it returned, in one pipelined round trip, each entry only if its key
//!    still holds what the read found (an invalidation that landed meanwhile wins, §4); ids it
//!    did not return are absent (and cached as absent only with `cache_absent`). The flights
//!    land with the encoded values, so their waiters decode them.
//!
//! A load that fails returns its error and stores nothing (or, with a stale window, serves
//! the stale values of its ids when every id it was asked for has one: fail-safe); a load that
//! panics lands its flights as failed, so their waiters take over, then the panic goes on.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::fill::{Caught, Fill};
use super::fill_lock;
use super::flight::{Joined, Leader, Seen, Waited, decode_shared, landings, wait};
use super::{FillLock, Found, Pipeline, Policy};
use crate::base::codec;
use crate::base::observe::Operation;
use crate::base::source::Lookup;
use crate::engine::tags;
use crate::pipeline::glue::Plain;
use crate::store::ConditionalWrite;
use crate::store::memory::MemoryBackend;

/// Options of a batch get-or-compute beyond its TTL: a stale window (fail-safe), the fill
/// lock, and negative caching of the ids `load` does not return.
///
/// ```
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use cache_core::compute::BatchOptions;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cache = cache_core::Cache::in_memory();
/// let options = BatchOptions::new()
///     .ttl(Duration::from_secs(300))
///     .cache_absent(Duration::from_secs(30)); // id 3 does not exist: remembered for 30 s
/// let found: HashMap<u64, String> = cache
///     .get_or_set_many_with(vec![1, 3], |id: &u64| format!("user:{id}"), &options, |missing: Vec<u64>| async move {
///         missing.into_iter().filter(|id| *id != 3).map(|id| (id, format!("user {id}"))).collect()
///     })
///     .await;
/// assert_eq!(found.len(), 1);
/// let again: HashMap<u64, String> = cache
///     .get_or_set_many_with(vec![1, 3], |id: &u64| format!("user:{id}"), &options, |_: Vec<u64>| async move {
///         unreachable!("1 is cached, 3 is known to be absent")
///     })
///     .await;
/// assert_eq!(again, found);
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) policy: Policy,
    pub(crate) absent_ttl: Option<Duration>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            ttl: None,
            policy: Policy::DEFAULT,
            absent_ttl: None,
        }
    }
}

impl BatchOptions {
    /// The defaults: the handle's default TTL, single-flight in the process, nothing cached
    /// for absent ids.
    ///
    /// ```
    /// let options = cache_core::compute::BatchOptions::new();
    /// # let _ = options;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The TTL of the values loaded.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = cache_core::compute::BatchOptions::new().ttl(Duration::from_secs(60));
    /// # let _ = options;
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Keeps values this long past their TTL: while an id is loaded by another call, its
    /// stale value is served at once, and a load that fails serves the stale values of its
    /// ids (when every id asked for has one) and keeps them fresh for the fail-safe throttle.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = cache_core::compute::BatchOptions::new().stale(Duration::from_secs(3600));
    /// # let _ = options;
    /// ```
    pub fn stale(mut self, window: Duration) -> Self {
        self.policy.stale = Some(window);
        self
    }

    /// Stampede protection ([`FillLock`]): per id, as for a single
    /// key.
    ///
    /// ```
    /// use cache_core::compute::{BatchOptions, FillLock};
    /// let options = BatchOptions::new().lock(FillLock::Distributed);
    /// # let _ = options;
    /// ```
    pub fn lock(mut self, lock: FillLock) -> Self {
        self.policy.lock = lock;
        self
    }

    /// How long a fill lock held by another process is waited for (default 5 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = cache_core::compute::BatchOptions::new().lock_wait(Duration::from_secs(1));
    /// # let _ = options;
    /// ```
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.policy.lock_wait = wait;
        self
    }

    /// How long a stale value a failed load leaves is served as fresh (default 30 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = cache_core::compute::BatchOptions::new().fail_safe_throttle(Duration::from_secs(5));
    /// # let _ = options;
    /// ```
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.policy.fail_safe_throttle = throttle;
        self
    }

    /// Negative caching: ids `load` does not return are remembered as absent for `ttl`, and
    /// not asked for again meanwhile (by default they are asked for on every call).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = cache_core::compute::BatchOptions::new().cache_absent(Duration::from_secs(30));
    /// # let _ = options;
    /// ```
    pub fn cache_absent(mut self, ttl: Duration) -> Self {
        self.absent_ttl = Some(ttl);
        self
    }
}

/// What an id `load` did not return is stored as, with negative caching; shared with the
/// flight's waiters either way. A type of its own, so its fingerprint tells it from a value.
#[derive(Serialize, Deserialize)]
struct Absent;

fn absent_fingerprint() -> u64 {
    codec::fingerprint::<Absent>()
}

fn is_absent_marker(bytes: &[u8]) -> bool {
    codec::parse(bytes).is_ok_and(|env| env.fingerprint == absent_fingerprint())
}

/// One id of a batch, with its key; `full` is `Err` for a key the cache cannot use (the id is
/// loaded, never stored).
pub(crate) struct Element<K> {
    pub(crate) id: K,
    pub(crate) full: crate::base::error::Result<String>,
    /// The version keys of its tags.
    pub(crate) tag_keys: Vec<String>,
}

/// An id the cache did not answer, on its way to `load`.
struct Missing<K, T> {
    /// Its place in the input: `load` gets ids in input order.
    pos: usize,
    id: K,
    /// `None`: a key the cache cannot use.
    full: Option<String>,
    tag_keys: Vec<String>,
    seen: Seen,
    /// A value past its TTL but inside its stale window, and its bytes.
    stale: Option<(T, Option<Bytes>)>,
    leader: Option<Leader>,
    fill_lock: Option<fill_lock::Guard>,
    /// Answered while joining flights (`Some(None)`: known to be absent).
    answer: Option<Option<T>>,
}

/// Where the batch's values come from and go to.
enum Store {
    /// The backend; `versions`: those of the batch's tag keys read with the values (`None`:
    /// the read failed, and nothing is stored).
    Backend { versions: Option<Vec<Option<u64>>> },
    /// The breaker's fallback store, while it is open.
    Fallback(Arc<MemoryBackend>),
}

impl Pipeline {
    /// The batch get-or-compute of the direct API and of `#[cached_many]`.
    pub(crate) async fn compute_many<K, T, E, L, Fut>(
        &self,
        function: &'static str,
        elements: Vec<Element<K>>,
        options: &BatchOptions,
        load: L,
    ) -> Result<HashMap<K, T>, E>
    where
        K: Eq + Hash + Clone,
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        L: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, T>, E>>,
    {
        let mut op = self.op(Operation::GetOrCompute); // ops: one for the batch
        op.read_begins(); // ops: the batch's read, its L1 lookups included
        let policy = &options.policy;
        let mut out: HashMap<K, T> = HashMap::with_capacity(elements.len());
        let mut missing: Vec<Missing<K, T>> = Vec::new();

        // Deduplicated by id, first occurrence kept; the L1 answers first.
        let mut ids = HashSet::with_capacity(elements.len());
        let mut read = Vec::with_capacity(elements.len());
        for (pos, element) in elements.into_iter().enumerate() {
            if !ids.insert(element.id.clone()) {
                continue;
            }
            match element.full {
                Ok(full) => match self.local_begin::<T, Plain>(&full, &Plain) {
                    Ok(value) => {
                        out.insert(element.id, value);
                    }
                    Err((local, mark)) => {
                        let mark = match (local, mark) {
                            (Some(local), Some(mark)) => Some(local.settle(&full, mark).await),
                            (_, mark) => mark,
                        };
                        read.push((pos, element.id, full, element.tag_keys, mark))
                    }
                },
                Err(e) => {
                    tracing::warn!(function, error = %e, "unusable key, loading without the cache");
                    missing.push(Missing::new(
                        pos,
                        element.id,
                        None,
                        Vec::new(),
                        Seen::Unread,
                    ));
                }
            }
        }
        drop(ids);

        // One round trip for every value and the versions of all their tags.
        let mut tag_keys: Vec<String> = read.iter().flat_map(|r| r.3.iter().cloned()).collect();
        tag_keys.sort_unstable();
        tag_keys.dedup();
        let epoch = landings();
        let mut store = Store::Backend { versions: None };
        if !read.is_empty() {
            let keys: Vec<&str> = read.iter().map(|r| r.2.as_str()).collect();
            // The scopes' generations too, while this process does not know them
            // (engine/clear.rs): after the tags' versions, where the checks look for them.
            let (generation_keys, heard) = self.generations_to_read();
            let asked: std::borrow::Cow<'_, [String]> = if generation_keys.is_empty() {
                std::borrow::Cow::Borrowed(&tag_keys)
            } else {
                tag_keys.iter().chain(generation_keys).cloned().collect()
            };
            let found = self
                .backend_ref()
                .get_many_with_versions(&keys, &asked)
                .await
                .map_err(|e| {
                    let fallback = self.fallback_for(&e);
                    if fallback.is_none() {
                        self.compute_err(function, "get", keys[0], &e);
                    }
                    fallback
                });
            op.read_done(); // ops: read latency
            match found {
                Ok((values, versions)) => {
                    self.learn_generations(heard, versions.get(tag_keys.len()..).unwrap_or(&[]));
                    for ((pos, id, full, tags, mark), bytes) in read.into_iter().zip(values) {
                        let known = (tag_keys.as_slice(), versions.as_slice());
                        match self
                            .decode_element::<T>(&full, bytes.as_ref(), known, policy)
                            .await
                        {
                            Decoded::Hit(value) => {
                                self.local_fill_from(
                                    self.local(),
                                    mark,
                                    &full,
                                    bytes.as_ref(),
                                    &Plain,
                                    &value,
                                );
                                out.insert(id, value);
                            }
                            Decoded::Absent => {}
                            Decoded::Miss(stale) => {
                                let mut m = Missing::new(
                                    pos,
                                    id,
                                    Some(full),
                                    tags,
                                    Seen::Read(bytes.clone()),
                                );
                                m.stale = stale.map(|v| (v, bytes));
                                missing.push(m);
                            }
                        }
                    }
                    store = Store::Backend {
                        versions: Some(versions),
                    };
                }
                // breaker.rs: while the circuit breaker is open, the fallback store answers.
                Err(Some(fallback)) => {
                    for (pos, id, full, tags, _) in read {
                        match self.fallback_lookup::<T>(&fallback, &full, &tags) {
                            Ok(value) => {
                                out.insert(id, value);
                            }
                            Err(Some(bytes))
                                if is_absent_marker(&bytes)
                                    && self
                                        .fallback_lookup::<Absent>(&fallback, &full, &tags)
                                        .is_ok() => {}
                            Err(_) => {
                                self.root_stats().miss();
                                missing.push(Missing::new(pos, id, Some(full), tags, Seen::Unread));
                            }
                        }
                    }
                    store = Store::Fallback(fallback);
                }
                Err(None) => {
                    for (pos, id, full, tags, _) in read {
                        missing.push(Missing::new(pos, id, Some(full), tags, Seen::Unread));
                    }
                }
            }
        }
        if missing.is_empty() {
            op.hit(self.backend_ref().kind()); // ops
            return Ok(out);
        }
        op.miss(); // ops: something is loaded (or waited for)

        // Single-flight, in the order of the full keys (see the module's comment).
        if policy.lock != FillLock::None {
            let mut order: Vec<usize> = (0..missing.len())
                .filter(|&i| missing[i].full.is_some())
                .collect();
            order.sort_by(|&a, &b| missing[a].full.cmp(&missing[b].full));
            let flights = self.flights();
            let mut previous: Option<String> = None;
            for i in order {
                let m = &mut missing[i];
                let full = m.full.clone().unwrap_or_default();
                // Two ids with one key (a key function that ignores part of the id): the
                // second must not wait for the flight this batch leads.
                if previous.as_ref() == Some(&full) {
                    continue;
                }
                previous = Some(full.clone());
                loop {
                    match flights.join(&full, &m.seen, epoch) {
                        Joined::Lead(leader) => m.leader = Some(leader),
                        Joined::Landed(bytes) => m.answer = self.shared_answer(&full, &bytes),
                        Joined::Wait(rx) => {
                            if let Some((value, _)) = m.stale.take() {
                                self.root_stats().stale_served();
                                self.ns_stats().stale_serve(); // ops
                                m.answer = Some(Some(value));
                                break;
                            }
                            self.root_stats().flight_wait();
                            match wait(rx, None).await {
                                Waited::Value(bytes) => {
                                    m.answer = self.shared_answer(&full, &bytes);
                                }
                                // Its computation failed, panicked or was cancelled: take
                                // over (lead the next flight, or wait for a waiter who does).
                                Waited::Failed => continue,
                                Waited::TimedOut => {}
                            }
                        }
                    }
                    break;
                }
            }
        }

        // Across processes, in the same order.
        if policy.lock == FillLock::Distributed
            && matches!(store, Store::Backend { versions: Some(_) })
        {
            let mut order: Vec<usize> = (0..missing.len())
                .filter(|&i| missing[i].answer.is_none() && missing[i].full.is_some())
                .collect();
            order.sort_by(|&a, &b| missing[a].full.cmp(&missing[b].full));
            for i in order {
                let m = &mut missing[i];
                let full = m.full.clone().unwrap_or_default();
                let seen = match &m.seen {
                    Seen::Read(bytes) => bytes.clone(),
                    Seen::Unread => None,
                };
                match fill_lock::acquire(self, &full, seen.as_deref(), policy, m.stale.is_some())
                    .await
                {
                    fill_lock::Acquired::Held(guard) => m.fill_lock = Some(guard),
                    fill_lock::Acquired::Stale => {
                        if let Some((value, _)) = m.stale.take() {
                            self.root_stats().stale_served();
                            self.ns_stats().stale_serve(); // ops
                            m.answer = Some(Some(value));
                        }
                    }
                    fill_lock::Acquired::Arrived => {
                        // Another process stored it: read it as a waiter would.
                        if let Ok(Some(bytes)) = self.backend_ref().get(&full).await {
                            let arrived = if is_absent_marker(&bytes) {
                                Some(None)
                            } else {
                                match self
                                    .decode_hit::<T>(
                                        &full,
                                        Some(&bytes),
                                        None,
                                        codec::fingerprint::<T>(),
                                    )
                                    .await
                                {
                                    Ok(Lookup::Hit { value, .. }) => Some(Some(value)),
                                    _ => None,
                                }
                            };
                            if arrived.is_some() {
                                self.root_stats().flight_wait();
                                if let Some(leader) = m.leader.take() {
                                    leader.land(Some(bytes));
                                }
                                m.answer = arrived;
                            }
                        }
                    }
                    fill_lock::Acquired::TimedOut => self.root_stats().lock_timeout(),
                }
            }
        }

        // Answered while joining: out of the way of the load.
        let mut to_load = Vec::with_capacity(missing.len());
        for mut m in missing {
            match m.answer.take() {
                Some(Some(value)) => {
                    out.insert(m.id, value);
                }
                Some(None) => {}
                None => to_load.push(m),
            }
        }
        if to_load.is_empty() {
            return Ok(out);
        }
        to_load.sort_by_key(|m| m.pos);

        // The tag versions recorded are those read before the load: a tag invalidated while
        // it runs makes its entries read as misses (ARCHITECTURE.md §4).
        let versions: Option<Vec<u64>> = match &store {
            Store::Backend {
                versions: Some(read),
            } => tags::current_versions(self, &tag_keys, Some(read.clone()))
                .await
                .inspect_err(|e| self.compute_err(function, "tag versions", "(batch)", e))
                .ok(),
            Store::Backend { versions: None } => None,
            Store::Fallback(fallback) => Some(
                fallback
                    .create_versions(&tag_keys, codec::now_us())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| v.unwrap_or(0))
                    .collect(),
            ),
        };
        let pattern_mark = self.pattern_mark(); // pattern.rs

        for _ in &to_load {
            self.root_stats().compute();
            self.ns_stats().compute(); // ops
        }
        let started = Instant::now();
        let ids: Vec<K> = to_load.iter().map(|m| m.id.clone()).collect();
        let loaded = Caught(Box::pin(load(ids))).await;
        let took = started.elapsed();
        self.ns_stats().computed(took); // ops: compute latency
        let compute_us = took.as_micros().min(u32::MAX as u128) as u32;

        let mut loaded = match loaded {
            Ok(Ok(map)) => map,
            Ok(Err(e)) => {
                let all_stale = to_load.iter().all(|m| m.stale.is_some());
                if !(all_stale && matches!(store, Store::Backend { .. })) {
                    for m in to_load {
                        if let Some(guard) = m.fill_lock {
                            guard.release(self).await;
                        }
                    }
                    return Err(e);
                }
                // Fail-safe: the stale values, kept fresh for the throttle.
                for m in to_load {
                    let Some((value, bytes)) = m.stale else {
                        continue;
                    };
                    let mut fill = Fill::new(
                        self,
                        function,
                        m.full.as_deref().unwrap_or_default(),
                        &m.tag_keys,
                        options.ttl,
                        policy,
                    );
                    fill.stale_seen = bytes;
                    fill.fill_lock = m.fill_lock;
                    fill.leader = m.leader;
                    self.root_stats().stale_served();
                    self.ns_stats().stale_serve(); // ops
                    fill.fail::<T>().await;
                    out.insert(m.id, value);
                }
                return Ok(out);
            }
            Err(panic) => {
                // The flights land as failed (their leaders drop), so their waiters take over.
                for m in to_load {
                    if let Some(guard) = m.fill_lock {
                        guard.release(self).await;
                    }
                }
                std::panic::resume_unwind(panic);
            }
        };

        // One pipelined write of what the load returned (and of the absent ids, if they are
        // cached); the flights land with the same bytes.
        let ttl = self.ttl_or_default(options.ttl);
        let stored_ttl = match (ttl, policy.stale) {
            (Some(ttl), Some(stale)) => Some(ttl.saturating_add(stale)),
            (ttl, _) => ttl,
        };
        let mut writes: Vec<ConditionalWrite> = Vec::new();
        let mut landings: Vec<(Leader, Option<Bytes>)> = Vec::new();
        let mut locks = Vec::new();
        for m in to_load {
            let value = loaded.remove(&m.id);
            if let Some(guard) = m.fill_lock {
                locks.push(guard);
            }
            let Some(full) = m.full else {
                if let Some(value) = value {
                    out.insert(m.id, value);
                }
                continue;
            };
            // Its tags' versions, then the scopes' generations (after every tag of the batch).
            let element_versions: Vec<u64> = versions
                .as_ref()
                .map(|all| {
                    m.tag_keys
                        .iter()
                        .map(|k| {
                            tag_keys
                                .binary_search(k)
                                .ok()
                                .and_then(|i| all.get(i))
                                .copied()
                                .unwrap_or(0)
                        })
                        .chain(all.get(tag_keys.len()..).unwrap_or(&[]).iter().copied())
                        .collect()
                })
                .unwrap_or_default();
            let tags = (m.tag_keys.as_slice(), element_versions.as_slice());
            let encoded = match (&value, &store) {
                (Some(value), Store::Backend { .. }) => self
                    .encode_entry(
                        &full,
                        value,
                        ttl,
                        policy.stale,
                        tags,
                        compute_us,
                        codec::fingerprint::<T>(),
                    )
                    .inspect_err(|e| self.compute_err(function, "set", &full, e))
                    .ok()
                    .map(|b| (b, stored_ttl)),
                (Some(value), Store::Fallback(_)) => self
                    .encode_entry(
                        &full,
                        value,
                        ttl,
                        None,
                        tags,
                        compute_us,
                        codec::fingerprint::<T>(),
                    )
                    .ok()
                    .map(|b| (b, ttl)),
                (None, _) => self
                    .encode_entry(
                        &full,
                        &Absent,
                        options.absent_ttl.or(ttl).or(Some(Duration::from_secs(1))),
                        None,
                        tags,
                        compute_us,
                        absent_fingerprint(),
                    )
                    .ok()
                    .map(|b| (b, options.absent_ttl)),
            };
            let Some((bytes, write_ttl)) = encoded else {
                if let Some(value) = value {
                    out.insert(m.id, value);
                }
                continue;
            };
            let bytes = Bytes::from(bytes);
            let cached = value.is_some() || options.absent_ttl.is_some();
            if cached && versions.is_some() {
                match &store {
                    Store::Backend { .. } => {
                        let seen = match m.seen {
                            Seen::Read(seen) => seen,
                            Seen::Unread => None,
                        };
                        if self.pattern_superseded(&full, pattern_mark) {
                            self.root_stats().superseded();
                        } else {
                            writes.push((full.clone(), bytes.to_vec(), write_ttl, seen));
                        }
                    }
                    Store::Fallback(fallback) => {
                        // What the fallback store keeps is unsealed, as `fill_fallback` keeps it.
                        let kept = match &value {
                            Some(value) => super::fallback::encode_for_fallback(
                                value,
                                ttl,
                                &m.tag_keys,
                                &element_versions,
                                compute_us,
                                self.config().compression_threshold,
                            ),
                            None => encode_absent_for_fallback(
                                write_ttl,
                                &m.tag_keys,
                                &element_versions,
                            ),
                        };
                        if let Some(kept) = kept {
                            let _ = fallback.set_if_unchanged(&full, kept, write_ttl, None);
                        }
                    }
                }
            }
            if let Some(leader) = m.leader {
                landings.push((leader, Some(bytes)));
            }
            if let Some(value) = value {
                out.insert(m.id, value);
            }
        }
        if !writes.is_empty() {
            match self.backend_ref().set_many_if_unchanged(&writes).await {
                Ok(landed) => {
                    let written: Vec<&str> = writes
                        .iter()
                        .zip(&landed)
                        .filter(|(_, landed)| **landed)
                        .map(|(w, _)| w.0.as_str())
                        .collect();
                    let superseded = landed.len() - written.len();
                    for _ in 0..superseded {
                        self.root_stats().superseded();
                    }
                    if !written.is_empty() {
                        self.root_stats().write(written.len() as u64);
                        self.ns_stats().write(written.len() as u64); // ops
                        crate::engine::local::after_keys(self, &written).await; // local.rs
                    }
                }
                Err(e) => self.compute_err(function, "set", &writes[0].0, &e),
            }
        }
        for guard in locks {
            guard.release(self).await;
        }
        for (leader, bytes) in landings {
            leader.land(bytes);
        }
        Ok(out)
    }

    /// What a read found for one element: a value, known absence, or a miss (with a stale
    /// value to fall back on).
    async fn decode_element<T: DeserializeOwned + 'static>(
        &self,
        full: &str,
        bytes: Option<&Bytes>,
        known: (&[String], &[Option<u64>]),
        policy: &Policy,
    ) -> Decoded<T> {
        if let Some(b) = bytes.filter(|b| is_absent_marker(b)) {
            return match self
                .decode_hit::<Absent>(full, Some(b), Some(known), absent_fingerprint())
                .await
            {
                Ok(Lookup::Hit { .. }) => Decoded::Absent,
                _ => Decoded::Miss(None),
            };
        }
        if policy.reads_plainly() {
            return match self
                .decode_hit::<T>(
                    full,
                    bytes.map(|b| &b[..]),
                    Some(known),
                    codec::fingerprint::<T>(),
                )
                .await
            {
                Ok(Lookup::Hit { value, .. }) => Decoded::Hit(value),
                Ok(Lookup::Miss) => Decoded::Miss(None),
                Err(e) => {
                    self.compute_err("batch", "get", full, &e);
                    Decoded::Miss(None)
                }
            };
        }
        // Early refresh is not drawn for batches: a fresh value is a hit.
        match self
            .read_entry::<T>(full, bytes.map(|b| &b[..]), known.0, known.1, policy)
            .await
        {
            Ok(Found::Fresh { value, .. }) => Decoded::Hit(value),
            Ok(Found::Stale(value)) => Decoded::Miss(Some(value)),
            Ok(Found::Miss) => Decoded::Miss(None),
            Err(e) => {
                self.compute_err("batch", "get", full, &e);
                Decoded::Miss(None)
            }
        }
    }

    /// A flight's value, handed over by the caller that computed it: a value, known absence,
    /// or `None` (it does not decode as this batch's type: the batch loads the id itself).
    fn shared_answer<T: DeserializeOwned + 'static>(
        &self,
        full: &str,
        bytes: &[u8],
    ) -> Option<Option<T>> {
        if is_absent_marker(bytes) {
            return Some(None);
        }
        decode_shared::<T>(self, full, bytes).map(Some)
    }
}

enum Decoded<T> {
    Hit(T),
    Absent,
    Miss(Option<T>),
}

impl<K, T> Missing<K, T> {
    fn new(pos: usize, id: K, full: Option<String>, tag_keys: Vec<String>, seen: Seen) -> Self {
        Missing {
            pos,
            id,
            full,
            tag_keys,
            seen,
            stale: None,
            leader: None,
            fill_lock: None,
            answer: None,
        }
    }
}

/// The absence marker as the fallback store keeps it.
fn encode_absent_for_fallback(
    ttl: Option<Duration>,
    tag_keys: &[String],
    tag_versions: &[u64],
) -> Option<Vec<u8>> {
    let now = codec::now_ms();
    let meta = codec::Meta {
        created_at_ms: now,
        expires_at_ms: ttl.map_or(0, |t| crate::base::limits::expires_at_ms(now, t)),
        fingerprint: absent_fingerprint(),
        tag_keys,
        tag_versions,
        ..Default::default()
    };
    codec::encode(&Absent, &meta, usize::MAX).ok()
}

// ---- the direct API ---------------------------------------------------------------------------

impl Pipeline {
    /// `Cache::try_get_or_set_many_with` and the calls that default its options.
    pub(crate) async fn try_get_or_set_many_with<I, K, S, T, E, KF, L, Fut>(
        &self,
        ids: I,
        mut key: KF,
        options: &BatchOptions,
        load: L,
    ) -> Result<HashMap<K, T>, E>
    where
        I: IntoIterator<Item = K>,
        K: Eq + Hash + Clone,
        KF: FnMut(&K) -> S,
        S: AsRef<str>,
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        L: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, T>, E>>,
    {
        let elements = ids
            .into_iter()
            .map(|id| Element {
                full: self.full_key(key(&id).as_ref()),
                id,
                tag_keys: Vec::new(),
            })
            .collect();
        self.compute_many("Cache::try_get_or_set_many", elements, options, load)
            .await
    }

    /// `Cache::get_or_set_many_with`: an infallible load.
    pub(crate) async fn get_or_set_many_with<I, K, S, T, KF, L, Fut>(
        &self,
        ids: I,
        key: KF,
        options: &BatchOptions,
        load: L,
    ) -> HashMap<K, T>
    where
        I: IntoIterator<Item = K>,
        K: Eq + Hash + Clone,
        KF: FnMut(&K) -> S,
        S: AsRef<str>,
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        L: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = HashMap<K, T>>,
    {
        let load = |ids| async move { Ok::<_, std::convert::Infallible>(load(ids).await) };
        match self.try_get_or_set_many_with(ids, key, options, load).await {
            Ok(found) => found,
            Err(never) => match never {},
        }
    }
}

/// Options with only a TTL, for the calls that take one.
pub(crate) fn with_ttl(ttl: Option<Duration>) -> BatchOptions {
    BatchOptions {
        ttl,
        ..BatchOptions::default()
    }
}
