//! The get-or-compute pipeline: read, compute on a miss, store unless an invalidation landed
//! meanwhile. `get_or_set`, `try_get_or_set` and the code `#[cached]` generates all come here.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::{Cache, Lookup, WriteIf};
use crate::codec;
use crate::private::Mode;
use crate::tags;

impl Cache {
    /// The value under `key`, or `compute()`'s, stored for `ttl` (`None`: default TTL).
    ///
    /// Never fails because of the cache: if the backend is down or the stored value does not
    /// decode, the value is computed and returned (and the problem logged and counted).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_core::Cache::in_memory();
    /// let v: u64 = cache.get_or_set("answer", None, || async { 42 }).await;
    /// assert_eq!(v, 42);
    /// let again: u64 = cache.get_or_set("answer", None, || async { unreachable!() }).await;
    /// assert_eq!(again, 42);
    /// # }
    /// ```
    pub async fn get_or_set<T, F, Fut>(
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
        self.compute_direct(
            "Cache::get_or_set",
            key,
            ttl.into(),
            crate::private::Plain,
            compute,
        )
        .await
    }

    /// As [`get_or_set`](Cache::get_or_set) for a fallible computation: `Ok` values are
    /// stored, errors are returned and not stored.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_core::Cache::in_memory();
    /// let down = cache.try_get_or_set("rate", None, || async { Err::<u32, _>("upstream down") }).await;
    /// assert_eq!(down, Err("upstream down"));
    /// let rate = cache.try_get_or_set("rate", None, || async { Ok::<u32, &str>(42) }).await;
    /// assert_eq!(rate, Ok(42)); // computed: the error was not stored
    /// let again = cache.try_get_or_set("rate", None, || async { Err::<u32, _>("not called") }).await;
    /// assert_eq!(again, Ok(42));
    /// # }
    /// ```
    pub async fn try_get_or_set<T, E, F, Fut>(
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
        self.compute_direct(
            "Cache::try_get_or_set",
            key,
            ttl.into(),
            crate::private::ResultMode,
            compute,
        )
        .await
    }

    /// `get_or_set` and `try_get_or_set`: a key the cache cannot use still gets a value.
    async fn compute_direct<O, M: Mode<O>, F: FnOnce() -> Fut, Fut: Future<Output = O>>(
        &self,
        function: &'static str,
        key: &str,
        ttl: Option<Duration>,
        mode: M,
        compute: F,
    ) -> O {
        match self.full_key(key) {
            Ok(full) => {
                self.compute_through(function, full, &mut [], ttl, mode, compute())
                    .await
            }
            Err(e) => {
                tracing::warn!(function, error = %e, "unusable key, computing without the cache");
                self.shared.stats.compute();
                compute().await
            }
        }
    }

    /// The one get-or-compute path, shared by `get_or_set` and generated code.
    pub(crate) async fn compute_through<O, M: Mode<O>, F: Future<Output = O>>(
        &self,
        function: &'static str,
        full: String,
        tags: &mut [String],
        ttl: Option<Duration>,
        mode: M,
        compute: F,
    ) -> O {
        let tag_keys = self.version_keys_in_place(tags);
        let mut known = None;
        match self.shared.backend.get_with_versions(&full, tag_keys).await {
            Ok((bytes, versions)) => {
                match self
                    .decode_hit::<M::Stored>(
                        &full,
                        bytes.as_deref(),
                        Some((tag_keys, &versions)),
                        codec::fingerprint::<M::Stored>(),
                    )
                    .await
                {
                    Ok(Lookup::Hit { value, .. }) => return mode.restore(value),
                    Ok(Lookup::Miss) => known = Some((versions, bytes)),
                    Err(e) => self.compute_err(function, "get", &full, &e),
                }
            }
            Err(e) => self.compute_err(function, "get", &full, &e),
        }
        // Invalidations that land while the value is computed win (DESIGN.md section 5). By
        // tag: the versions are read before computing, so the stored entry records an old
        // version and the next read misses. By key: the result is written only if the key
        // still holds what the read found, and an invalidation leaves a tombstone there.
        let (versions, condition) = match known {
            Some((v, seen)) => (
                tags::current_versions(self, tag_keys, Some(v))
                    .await
                    .inspect_err(|e| self.compute_err(function, "tag versions", &full, e))
                    .ok(),
                WriteIf::Unchanged(seen),
            ),
            None => (None, WriteIf::Always),
        };
        self.compute_and_record(
            function, &full, tag_keys, versions, condition, ttl, mode, compute,
        )
        .await
    }

    /// Rendered tags turned into their version keys, in their own buffers.
    fn version_keys_in_place<'t>(&self, tags: &'t mut [String]) -> &'t [String] {
        for tag in tags.iter_mut() {
            tags::into_version_key(&self.scope.prefix, tag);
        }
        tags
    }

    /// Runs `compute` and stores what `mode` keeps of its output, with the tag versions read
    /// before it ran, if `condition` holds; without versions (the backend failed) nothing is
    /// stored.
    #[allow(clippy::too_many_arguments)] // one private step, called from two places
    async fn compute_and_record<O, M: Mode<O>, F: Future<Output = O>>(
        &self,
        function: &'static str,
        full: &str,
        tag_keys: &[String],
        versions: Option<Vec<u64>>,
        condition: WriteIf,
        ttl: Option<Duration>,
        mode: M,
        compute: F,
    ) -> O {
        self.shared.stats.compute();
        let started = Instant::now();
        let out = compute.await;
        let compute_us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        if let (Some(versions), Some(value)) = (versions, mode.stored(&out)) {
            let written = self
                .write(
                    full,
                    value,
                    self.ttl_or_default(ttl),
                    (tag_keys, &versions),
                    compute_us,
                    codec::fingerprint::<M::Stored>(),
                    condition,
                )
                .await;
            if let Err(e) = written {
                self.compute_err(function, "set", full, &e);
            }
        }
        out
    }

    /// Computes and stores unconditionally (the `_refresh` companions and `#[cache_put]`).
    pub(crate) async fn compute_and_store<O, M: Mode<O>, F: Future<Output = O>>(
        &self,
        function: &'static str,
        full: String,
        tags: &mut [String],
        ttl: Option<Duration>,
        mode: M,
        compute: F,
    ) -> O {
        let tag_keys = self.version_keys_in_place(tags);
        let versions = tags::current_versions(self, tag_keys, None)
            .await
            .inspect_err(|e| self.compute_err(function, "tag versions", &full, e))
            .ok();
        self.compute_and_record(
            function,
            &full,
            tag_keys,
            versions,
            WriteIf::Always,
            ttl,
            mode,
            compute,
        )
        .await
    }
}
