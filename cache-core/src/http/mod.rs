//! HTTP response caching as a tower [`Layer`](tower::Layer) (feature `http`): a router's
//! responses kept in the cache with the rules of a shared cache (RFC 9111), revalidated by
//! `ETag`, tagged for invalidation, and filled once per key however many requests miss
//! together.
//!
//! ```
//! use std::time::Duration;
//! use cache_core::Cache;
//! use cache_core::http::ResponseCacheLayer;
//!
//! let cache = Cache::in_memory();
//! let layer = ResponseCacheLayer::new(cache.clone())
//!     .ttl(Duration::from_secs(60)) // when the response says nothing
//!     .tags(|parts: &http::request::Parts| {
//!         vec![format!("user:{}", parts.uri.path().trim_start_matches("/users/"))]
//!     });
//! // axum: Router::new().route("/users/{id}", get(user)).layer(layer)
//! // later: cache.invalidate_tag("user:7").await? drops every response tagged so
//! # let _ = layer;
//! ```
//!
//! The rules, the headers it adds and how it meets the rest of the cache are in
//! [the guide](crate::guide::http).
//!
//! It sits on top of a [`Cache`]: the layer takes the handle and runs every lookup through
//! the same get-or-compute pipeline as `#[cached]` (single-flight, the fill lock, stale
//! serving, the breaker's fallback), with a stored type of its own (stored.rs) whose TTL
//! the response decides (ARCHITECTURE.md §3).

mod body;
mod cache_control;
mod key;
mod service;
mod stored;

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;

use crate::Cache;
use crate::pipeline::FillLock;

pub use body::{BoxError, ResponseBody};
pub use service::ResponseCacheService;

/// The default largest body stored: 1 MiB.
///
/// ```
/// assert_eq!(cache_core::http::DEFAULT_MAX_BODY_SIZE, 1024 * 1024);
/// ```
pub const DEFAULT_MAX_BODY_SIZE: usize = 1 << 20;

/// The default cap on any TTL the layer stores with: one day.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(cache_core::http::DEFAULT_MAX_TTL, Duration::from_secs(24 * 3600));
/// ```
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(86_400);

type TagFn = Arc<dyn Fn(&Parts) -> Vec<String> + Send + Sync>;

/// Caches the responses of the service it wraps (an axum `Router`, a tower service). See the
/// [module](self) and [the guide](crate::guide::http).
///
/// ```
/// use std::time::Duration;
/// use cache_core::{Cache, compute::FillLock};
/// use cache_core::http::ResponseCacheLayer;
///
/// let layer = ResponseCacheLayer::new(Cache::in_memory())
///     .ttl(Duration::from_secs(30))
///     .max_ttl(Duration::from_secs(600))
///     .stale_while_revalidate(Duration::from_secs(60))
///     .stale_if_error(Duration::from_secs(300))
///     .max_body_size(256 * 1024)
///     .lock(FillLock::Distributed)
///     .name("edge");
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct ResponseCacheLayer {
    config: Config,
}

#[derive(Clone)]
pub(crate) struct Config {
    cache: Cache,
    defaults: cache_control::Defaults,
    max_body_size: usize,
    lock: FillLock,
    tags: Option<TagFn>,
    name: String,
    /// `name` as `Cache-Status` writes it, made once rather than per request.
    status_name: String,
}

impl std::fmt::Debug for ResponseCacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCacheLayer")
            .field("defaults", &self.config.defaults)
            .field("max_body_size", &self.config.max_body_size)
            .field("lock", &self.config.lock)
            .field("tags", &self.config.tags.is_some())
            .field("name", &self.config.name)
            .finish()
    }
}

impl ResponseCacheLayer {
    /// A layer storing responses in `cache` (under its scope: a namespace or tenant handle
    /// keeps its responses apart). Only responses that say how long they are fresh
    /// (`s-maxage`, `max-age`) are stored until [`ttl`](Self::ttl) is set.
    ///
    /// ```
    /// let layer = cache_core::http::ResponseCacheLayer::new(cache_core::Cache::in_memory());
    /// # let _ = layer;
    /// ```
    pub fn new(cache: Cache) -> ResponseCacheLayer {
        ResponseCacheLayer {
            config: Config {
                cache,
                defaults: cache_control::Defaults {
                    ttl: None,
                    max_ttl: DEFAULT_MAX_TTL,
                    stale_while_revalidate: None,
                    stale_if_error: None,
                },
                max_body_size: DEFAULT_MAX_BODY_SIZE,
                lock: FillLock::Local,
                tags: None,
                name: "cache-rs".to_owned(),
                status_name: "cache-rs".to_owned(),
            },
        }
    }

    /// How long a response of a heuristically cacheable status (200, 203, 204, 300, 301,
    /// 404, 405, 410, 414, 501) is fresh when its `Cache-Control` gives no `s-maxage` or
    /// `max-age`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let layer = cache_core::http::ResponseCacheLayer::new(cache_core::Cache::in_memory())
    ///     .ttl(Duration::from_secs(60));
    /// # let _ = layer;
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.defaults.ttl = Some(ttl);
        self
    }

    /// The longest a response is kept fresh (and stale), whatever it says (default
    /// [`DEFAULT_MAX_TTL`]).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let layer = cache_core::http::ResponseCacheLayer::new(cache_core::Cache::in_memory())
    ///     .max_ttl(Duration::from_secs(300));
    /// # let _ = layer;
    /// ```
    pub fn max_ttl(mut self, max: Duration) -> Self {
        self.config.defaults.max_ttl = max;
        self
    }

    /// How long past its freshness a response is served while one request refreshes it in
    /// the background, when the response gives no `stale-while-revalidate` or
    /// `stale-if-error` (RFC 5861) of its own.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let layer = cache_core::http::ResponseCacheLayer::new(cache_core::Cache::in_memory())
    ///     .stale_while_revalidate(Duration::from_secs(30));
    /// # let _ = layer;
    /// ```
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.config.defaults.stale_while_revalidate = Some(window);
        self
    }

    /// How long past its freshness a response is served when the handler answers 500, 502,
    /// 503 or 504, when the response gives no `stale-while-revalidate` or `stale-if-error`
    /// of its own. The stale window of an entry is the larger of the two.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let layer = cache_core::http::ResponseCacheLayer::new(cache_core::Cache::in_memory())
    ///     .stale_if_error(Duration::from_secs(600));
    /// # let _ = layer;
    /// ```
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.config.defaults.stale_if_error = Some(window);
        self
    }

    /// The largest body buffered and stored (default [`DEFAULT_MAX_BODY_SIZE`], 1 MiB). A
    /// larger body, or one whose length is not known in advance (a stream), passes through
    /// unstored, and `Cache-Status` says so.
    ///
    /// ```
    /// let layer = cache_core::http::ResponseCacheLayer::new(cache_core::Cache::in_memory())
    ///     .max_body_size(64 * 1024);
    /// # let _ = layer;
    /// ```
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.config.max_body_size = bytes;
        self
    }

    /// Who runs the handler when several requests miss one key together: one per process
    /// ([`FillLock::Local`], the default), one across processes ([`FillLock::Distributed`],
    /// the fill lock in Redis), or every request ([`FillLock::None`]).
    ///
    /// ```
    /// use cache_core::compute::FillLock;
    /// let layer = cache_core::http::ResponseCacheLayer::new(cache_core::Cache::in_memory())
    ///     .lock(FillLock::Distributed);
    /// # let _ = layer;
    /// ```
    pub fn lock(mut self, lock: FillLock) -> Self {
        self.config.lock = lock;
        self
    }

    /// The tags of a request's stored response, from the request's parts;
    /// `cache.invalidate_tag(tag)` drops every response stored with `tag`.
    ///
    /// ```
    /// let layer = cache_core::http::ResponseCacheLayer::new(cache_core::Cache::in_memory())
    ///     .tags(|parts: &http::request::Parts| vec![format!("path:{}", parts.uri.path())]);
    /// # let _ = layer;
    /// ```
    pub fn tags<F>(mut self, tags: F) -> Self
    where
        F: Fn(&Parts) -> Vec<String> + Send + Sync + 'static,
    {
        self.config.tags = Some(Arc::new(tags));
        self
    }

    /// The cache's name in `Cache-Status` (default `cache-rs`).
    ///
    /// ```
    /// let layer = cache_core::http::ResponseCacheLayer::new(cache_core::Cache::in_memory())
    ///     .name("api-cache");
    /// # let _ = layer;
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self.config.status_name = service::cache_status_name(&self.config.name);
        self
    }
}

impl<S> tower::Layer<S> for ResponseCacheLayer {
    type Service = ResponseCacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCacheService::new(inner, Arc::new(self.config.clone()))
    }
}
