//! The get-or-compute pipeline while the circuit breaker is open (ARCHITECTURE.md): the Redis
//! backend's fallback store serves and keeps computed values, and writes it refused become
//! invalidations queued for its recovery.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::base::codec::{self, Meta};
use crate::base::error::Error;
use crate::pipeline::Pipeline;
use crate::pipeline::glue::Mode;
use crate::store::Backend;
use crate::store::breaker::{BreakerState, Invalidation};
use crate::store::memory::MemoryBackend;

impl Pipeline {
    /// The fallback store, if `e` is the breaker turning a read of the get-or-compute
    /// pipeline away.
    pub(crate) fn fallback_for(&self, e: &Error) -> Option<Arc<MemoryBackend>> {
        match (e, self.backend_ref()) {
            (Error::CircuitOpen { .. }, Backend::Redis(redis)) => redis.breaker().fallback(),
            _ => None,
        }
    }

    /// The fallback store, if the breaker is open or half-open.
    pub(crate) fn open_fallback(&self) -> Option<Arc<MemoryBackend>> {
        match self.backend_ref() {
            Backend::Redis(redis) if redis.breaker().state() != BreakerState::Closed => {
                redis.breaker().fallback()
            }
            _ => None,
        }
    }

    /// The get-or-compute pipeline while the breaker is open: the fallback store's value, or
    /// `compute`'s, kept there (with the bytes kept, for the flight to land with). `tag_keys`
    /// are the version keys of the entry's tags.
    pub(crate) async fn compute_in_fallback<O, M: Mode<O>, F: Future<Output = O>>(
        &self,
        store: Arc<MemoryBackend>,
        full: &str,
        tag_keys: &[String],
        ttl: Option<Duration>,
        mode: M,
        compute: F,
    ) -> (O, Option<bytes::Bytes>) {
        let seen = match self.fallback_lookup::<M::Stored>(&store, full, tag_keys) {
            Ok(value) => return (mode.restore(value), None),
            Err(seen) => seen,
        };
        self.root_stats().miss();
        self.fill_fallback(&store, full, tag_keys, ttl, Some(seen), mode, compute)
            .await
    }

    /// The fallback store's value of `full` (counted as a hit), or what the store holds
    /// there instead (an entry of another type, or invalidated by a tag; `None`: nothing).
    pub(crate) fn fallback_lookup<S: serde::de::DeserializeOwned + 'static>(
        &self,
        store: &MemoryBackend,
        full: &str,
        tag_keys: &[String],
    ) -> std::result::Result<S, Option<bytes::Bytes>> {
        match store.get_with_versions(full, tag_keys) {
            Ok((Some(bytes), versions)) => match fallback_value::<S>(&bytes, tag_keys, &versions) {
                Some(value) => {
                    self.ns_stats().hit(); // per namespace too
                    self.root_stats().hit();
                    if let Backend::Redis(redis) = self.backend_ref() {
                        redis.breaker().fallback_hit();
                    }
                    Ok(value)
                }
                None => Err(Some(bytes)),
            },
            _ => Err(None),
        }
    }

    /// `_refresh` and `#[cache_put]` while the breaker is open: the value goes to the
    /// fallback store, and the key's entry in Redis, older than this value, is invalidated
    /// when Redis is back.
    pub(crate) async fn put_in_fallback<O, M: Mode<O>, F: Future<Output = O>>(
        &self,
        store: Arc<MemoryBackend>,
        full: &str,
        tag_keys: &[String],
        ttl: Option<Duration>,
        mode: M,
        compute: F,
    ) -> O {
        if let Backend::Redis(redis) = self.backend_ref() {
            let _ = redis.breaker().enqueue(
                std::iter::once(Invalidation::Key(full.to_owned())),
                self.config().invalidation_hold,
            );
        }
        self.fill_fallback(&store, full, tag_keys, ttl, None, mode, compute)
            .await
            .0
    }

    /// Keeps `value` in the fallback store for `ttl`, for a write to Redis the open breaker
    /// refused: the stale value a failed refresh extends (fail-safe) stays servable during
    /// the outage, instead of the failing source being called on every read.
    pub(crate) fn keep_in_fallback<T: Serialize + 'static>(
        &self,
        store: &MemoryBackend,
        full: &str,
        value: &T,
        tag_keys: &[String],
        ttl: Duration,
        compute_us: u32,
    ) {
        let versions = fallback_versions(store, tag_keys);
        if let Some(bytes) = encode_for_fallback(
            value,
            Some(ttl),
            tag_keys,
            &versions,
            compute_us,
            self.config().compression_threshold,
        ) {
            let _ = store.set(full, bytes, Some(ttl));
        }
    }

    /// Computes and keeps the value in `store`: if `seen` is given, only if the key still
    /// holds what the read found (an invalidation during the computation wins, as on Redis).
    /// Returns the bytes kept, when it wrote.
    #[allow(clippy::too_many_arguments)]
    async fn fill_fallback<O, M: Mode<O>, F: Future<Output = O>>(
        &self,
        store: &MemoryBackend,
        full: &str,
        tag_keys: &[String],
        ttl: Option<Duration>,
        seen: Option<Option<bytes::Bytes>>,
        mode: M,
        compute: F,
    ) -> (O, Option<bytes::Bytes>) {
        // Versions read before computing, as on Redis: an invalidation during the
        // computation wins.
        let versions = fallback_versions(store, tag_keys);
        self.root_stats().compute();
        let started = Instant::now();
        let out = compute.await;
        if let Some(value) = mode.stored(&out) {
            let compute_us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
            let ttl = match mode.lifetime(&out) {
                Some((ttl, _)) => Some(ttl),
                None => self.ttl_or_default(ttl),
            };
            if let Some(bytes) = encode_for_fallback(
                value,
                ttl,
                tag_keys,
                &versions,
                compute_us,
                self.config().compression_threshold,
            ) {
                let kept = match seen {
                    Some(seen) => store.keep_if_unchanged(full, bytes, ttl, seen.as_deref()),
                    None => {
                        let _ = store.set(full, bytes, ttl);
                        None
                    }
                };
                return (out, kept);
            }
        }
        (out, None)
    }
}

/// The fallback store's current versions of `tag_keys` (created where missing).
fn fallback_versions(store: &MemoryBackend, tag_keys: &[String]) -> Vec<u64> {
    store
        .create_versions(tag_keys, codec::now_us())
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.unwrap_or(0))
        .collect()
}

/// The value of a fallback entry whose tags all still have their recorded versions.
pub(crate) fn fallback_value<T: serde::de::DeserializeOwned + 'static>(
    bytes: &[u8],
    tag_keys: &[String],
    versions: &[Option<u64>],
) -> Option<T> {
    if codec::is_tombstone(bytes) {
        return None;
    }
    let env = codec::parse(bytes).ok()?;
    for (key, recorded) in env.tags() {
        let i = tag_keys.iter().position(|k| k == key)?;
        if versions.get(i).copied().flatten() != Some(recorded) {
            return None;
        }
    }
    env.value::<T>(codec::fingerprint::<T>()).ok()
}

pub(crate) fn encode_for_fallback<T: Serialize + 'static>(
    value: &T,
    ttl: Option<Duration>,
    tag_keys: &[String],
    tag_versions: &[u64],
    compute_us: u32,
    compression_threshold: usize,
) -> Option<Vec<u8>> {
    let now = codec::now_ms();
    let meta = Meta {
        created_at_ms: now,
        expires_at_ms: ttl.map_or(0, |t| crate::base::limits::expires_at_ms(now, t)),
        compute_us,
        fingerprint: codec::fingerprint::<T>(),
        tag_keys,
        tag_versions,
        ..Default::default()
    };
    codec::encode(value, &meta, compression_threshold).ok()
}
