//! Cache warming: load a list of keys ahead of traffic, with bounded concurrency, progress,
//! cancellation and a summary. Started by [`Cache::warm`](crate::Cache::warm), which has an
//! example; the guide's [operations](crate::guide::operations) chapter has more.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;

use crate::engine::Handle;

/// Where a warming run is, given to the progress callback after each key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmProgress {
    /// Keys finished (stored or failed).
    pub done: u64,
    /// Keys to warm.
    pub total: u64,
    /// Of `done`, those whose loader or write failed.
    pub errors: u64,
}

/// What a warming run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WarmSummary {
    /// Keys given.
    pub total: u64,
    /// Keys loaded and stored.
    pub loaded: u64,
    /// Keys whose loader failed or whose value could not be stored.
    pub errors: u64,
    /// Keys never started because the run was cancelled.
    pub skipped: u64,
    /// True if the run was cancelled before every key was started.
    pub cancelled: bool,
    /// Wall time of the run.
    #[serde(serialize_with = "as_millis")]
    pub elapsed: Duration,
    /// The first few failures, `key: error`.
    pub first_errors: Vec<String>,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// How many failures a [`WarmSummary`] keeps the message of.
const KEPT_ERRORS: usize = 10;

/// Cancels a warming run: loads already running finish, no new one starts. Cheap to clone;
/// keep a clone to cancel from another task.
///
/// ```
/// let cancel = cache_core::warm::WarmCancel::new();
/// assert!(!cancel.is_cancelled());
/// cancel.clone().cancel();
/// assert!(cancel.is_cancelled());
/// ```
#[derive(Debug, Clone, Default)]
pub struct WarmCancel(Arc<AtomicBool>);

impl WarmCancel {
    /// A token not yet cancelled.
    ///
    /// ```
    /// assert!(!cache_core::warm::WarmCancel::new().is_cancelled());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the runs given this token from starting new loads.
    ///
    /// ```
    /// let c = cache_core::warm::WarmCancel::new();
    /// c.cancel();
    /// assert!(c.is_cancelled());
    /// ```
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// True once [`cancel`](Self::cancel) was called.
    ///
    /// ```
    /// assert!(!cache_core::warm::WarmCancel::default().is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A warming run being set up: see [`Cache::warm`](crate::Cache::warm).
#[must_use = "a warming run does nothing until `.run().await`"]
pub struct WarmBuilder<'a, F> {
    cache: &'a Handle,
    keys: Vec<String>,
    loader: F,
    concurrency: usize,
    ttl: Option<Duration>,
    progress: Option<Box<dyn FnMut(WarmProgress) + Send + 'a>>,
    cancel: WarmCancel,
}

impl<F> std::fmt::Debug for WarmBuilder<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmBuilder")
            .field("keys", &self.keys.len())
            .field("concurrency", &self.concurrency)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Handle {
    pub(crate) fn warm<K, F, Fut, T, E>(
        &self,
        keys: impl IntoIterator<Item = K>,
        loader: F,
    ) -> WarmBuilder<'_, F>
    where
        K: Into<String>,
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + 'static,
        E: Display,
    {
        WarmBuilder {
            cache: self,
            keys: keys.into_iter().map(Into::into).collect(),
            loader,
            concurrency: 16,
            ttl: None,
            progress: None,
            cancel: WarmCancel::new(),
        }
    }
}

impl<'a, F, Fut, T, E> WarmBuilder<'a, F>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Serialize + 'static,
    E: Display,
{
    /// How many keys load at once (at least 1; default 16).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_core::Cache::in_memory();
    /// let s = cache.warm(["a", "b"], |_| async { Ok::<_, String>(1u8) }).concurrency(1).run().await;
    /// assert_eq!(s.loaded, 2);
    /// # }
    /// ```
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The TTL of the stored values (default: the handle's default TTL).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::KeyTtl;
    /// let cache = cache_core::Cache::in_memory();
    /// cache.warm(["a"], |_| async { Ok::<_, String>(1u8) }).ttl(Duration::from_secs(5)).run().await;
    /// assert!(matches!(cache.ttl("a").await?, KeyTtl::Expires(d) if d <= Duration::from_secs(5)));
    /// # Ok(()) }
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Called after each key with where the run is.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_core::Cache::in_memory();
    /// let mut last = None;
    /// cache.warm(["a", "b"], |_| async { Ok::<_, String>(1u8) }).on_progress(|p| last = Some(p)).run().await;
    /// assert_eq!(last.map(|p| (p.done, p.total)), Some((2, 2)));
    /// # }
    /// ```
    pub fn on_progress(mut self, f: impl FnMut(WarmProgress) + Send + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Stops starting new loads once `cancel` is cancelled.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_core::Cache::in_memory();
    /// let cancel = cache_core::warm::WarmCancel::new();
    /// cancel.cancel();
    /// let s = cache.warm(["a", "b"], |_| async { Ok::<_, String>(1u8) }).cancel_on(cancel).run().await;
    /// assert!(s.cancelled && s.skipped == 2);
    /// # }
    /// ```
    pub fn cancel_on(mut self, cancel: WarmCancel) -> Self {
        self.cancel = cancel;
        self
    }

    /// Runs it; never fails (failures are counted in the summary).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = cache_core::Cache::in_memory();
    /// let s = cache.warm(["a"], |_| async { Err::<u8, _>("db down") }).run().await;
    /// assert_eq!(s.errors, 1);
    /// assert_eq!(s.first_errors, ["a: db down"]);
    /// # }
    /// ```
    pub async fn run(self) -> WarmSummary {
        let WarmBuilder {
            cache,
            keys,
            loader,
            concurrency,
            ttl,
            mut progress,
            cancel,
        } = self;
        let started = Instant::now();
        let total = keys.len() as u64;
        let mut summary = WarmSummary {
            total,
            loaded: 0,
            errors: 0,
            skipped: 0,
            cancelled: false,
            elapsed: Duration::ZERO,
            first_errors: Vec::new(),
        };
        let loader = &loader;
        let cancel = &cancel;
        // Checked again when the load first runs: one queued before the cancellation does
        // not start after it.
        let load = |key: String| async move {
            if cancel.is_cancelled() {
                return (key, None);
            }
            let outcome = match loader(key.clone()).await {
                Ok(value) => cache
                    .set(&key, &value, ttl)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            (key, Some(outcome))
        };
        let mut keys = keys.into_iter();
        let mut in_flight = FuturesUnordered::new();
        let mut done = 0u64;
        loop {
            while in_flight.len() < concurrency {
                if cancel.is_cancelled() {
                    summary.cancelled = keys.len() > 0;
                    break;
                }
                match keys.next() {
                    Some(key) => in_flight.push(load(key)),
                    None => break,
                }
            }
            let Some((key, outcome)) = in_flight.next().await else {
                break;
            };
            let Some(outcome) = outcome else {
                summary.cancelled = true;
                continue;
            };
            done += 1;
            match outcome {
                Ok(()) => summary.loaded += 1,
                Err(e) => {
                    summary.errors += 1;
                    if summary.first_errors.len() < KEPT_ERRORS {
                        summary.first_errors.push(format!(
                            "{}: {e}",
                            crate::base::key::shorten_for_display(&key)
                        ));
                    }
                }
            }
            if let Some(progress) = progress.as_mut() {
                progress(WarmProgress {
                    done,
                    total,
                    errors: summary.errors,
                });
            }
        }
        summary.skipped = total - done;
        summary.elapsed = started.elapsed();
        if summary.errors > 0 || summary.cancelled {
            tracing::info!(
                namespace = &*cache.ns_stats().name,
                total,
                loaded = summary.loaded,
                errors = summary.errors,
                skipped = summary.skipped,
                "cache warming finished"
            );
        }
        summary
    }
}
