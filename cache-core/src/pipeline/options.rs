//! The options of a get-or-compute: stampede protection, staleness, timeouts, early refresh
//! ([`ComputeOptions`]), and the policy the pipeline reads from them.

use std::marker::PhantomData;
use std::time::Duration;

use crate::base::error::Error;

/// Stampede protection of a get-or-compute: who computes when several callers miss one key.
///
/// ```
/// use cache_core::{ComputeOptions, compute::FillLock};
/// let options = ComputeOptions::new().lock(FillLock::Distributed);
/// # let _ = options;
/// assert_eq!(FillLock::default(), FillLock::Local);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FillLock {
    /// Every caller that misses computes.
    None,
    /// Single-flight in the process: one computation per key, the other callers wait for
    /// its result (the default).
    #[default]
    Local,
    /// Single-flight in the process, and a lease in Redis so that one process computes
    /// while the others wait for its value (bounded by the lock wait) or serve the stale
    /// one. A lock not had in time is computed anyway (availability over strictness).
    Distributed,
}

/// What a get-or-compute does beyond its TTL; built by [`ComputeOptions`] or the macro.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Policy {
    pub(crate) stale: Option<Duration>,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    /// XFetch's beta; 0: no early refresh.
    pub(crate) early_refresh_beta: f64,
    pub(crate) lock: FillLock,
    pub(crate) fail_safe_throttle: Duration,
    pub(crate) lock_wait: Duration,
    pub(crate) lock_lease: Duration,
}

impl Policy {
    pub(crate) const DEFAULT: Policy = Policy {
        stale: None,
        soft_timeout: None,
        hard_timeout: None,
        early_refresh_beta: 0.0,
        lock: FillLock::Local,
        fail_safe_throttle: Duration::from_secs(30),
        lock_wait: Duration::from_secs(5),
        lock_lease: Duration::from_secs(10),
    };

    /// True when a read needs nothing beyond "hit or miss" (the common case keeps the plain
    /// path of [`Handle::decode_hit`](crate::engine::Handle::decode_hit)).
    pub(super) fn reads_plainly(&self) -> bool {
        self.stale.is_none() && self.early_refresh_beta <= 0.0
    }
}

/// Marker of [`ComputeOptions`] without a hard timeout: usable with any return type.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHardTimeout;

/// Marker of [`ComputeOptions`] with a hard timeout: only for
/// [`try_get_or_set_with`](crate::Cache::try_get_or_set_with) whose error type is
/// `From<cache_core::Error>`, since a computation cut off must return something.
#[derive(Debug, Clone, Copy, Default)]
pub struct HardTimeout;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::NoHardTimeout {}
    impl Sealed for super::HardTimeout {}
}

/// What a hard timeout makes of an error type `E`: nothing without one, an `E` made from
/// [`Error::ComputeTimeout`] with one.
pub trait HardTimeoutFor<E>: sealed::Sealed + Send + Sync + 'static {
    #[doc(hidden)]
    const TIMES_OUT: bool;
    #[doc(hidden)]
    fn error(error: Error) -> Option<E>;
}

impl<E> HardTimeoutFor<E> for NoHardTimeout {
    const TIMES_OUT: bool = false;
    fn error(_: Error) -> Option<E> {
        None
    }
}

impl<E: From<Error>> HardTimeoutFor<E> for HardTimeout {
    const TIMES_OUT: bool = true;
    fn error(error: Error) -> Option<E> {
        Some(E::from(error))
    }
}

/// How [`get_or_set_with`](crate::Cache::get_or_set_with) and
/// [`try_get_or_set_with`](crate::Cache::try_get_or_set_with) compute: TTL, stale window, timeouts,
/// early refresh and stampede protection; the runtime twin of `#[cached]`'s attributes.
///
/// ```
/// use std::time::Duration;
/// use cache_core::{ComputeOptions, compute::FillLock};
/// let options = ComputeOptions::new()
///     .ttl(Duration::from_secs(60))           // fresh for a minute
///     .stale(Duration::from_secs(3600))       // then served stale for an hour if need be
///     .soft_timeout(Duration::from_millis(100))
///     .early_refresh()
///     .lock(FillLock::Local);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ComputeOptions<H = NoHardTimeout> {
    pub(super) ttl: Option<Duration>,
    pub(super) policy: Policy,
    pub(super) hard: PhantomData<H>,
}

impl Default for ComputeOptions {
    fn default() -> Self {
        ComputeOptions::new()
    }
}

impl ComputeOptions {
    /// The defaults: the handle's default TTL, no stale window, no timeouts, no early
    /// refresh, single-flight in the process.
    ///
    /// ```
    /// let options = cache_core::ComputeOptions::new();
    /// # let _ = options;
    /// ```
    pub fn new() -> Self {
        ComputeOptions {
            ttl: None,
            policy: Policy::DEFAULT,
            hard: PhantomData,
        }
    }
}

impl<H> ComputeOptions<H> {
    /// How long a value is fresh (default: the handle's default TTL).
    ///
    /// ```
    /// let options = cache_core::ComputeOptions::new().ttl(std::time::Duration::from_secs(60));
    /// # let _ = options;
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Keeps a value this long past its TTL, to be served stale: at once while one refresh
    /// runs, and whenever the refresh fails (an `Err`, a panic, a timeout). Needs a TTL.
    ///
    /// ```
    /// let options = cache_core::ComputeOptions::new().stale(std::time::Duration::from_secs(3600));
    /// # let _ = options;
    /// ```
    pub fn stale(mut self, window: Duration) -> Self {
        self.policy.stale = Some(window).filter(|w| !w.is_zero());
        self
    }

    /// With a stale value, how long a caller waits for the refresh before it is served the
    /// stale value (default: not at all); the refresh goes on in the background and stores
    /// its result.
    ///
    /// ```
    /// let options = cache_core::ComputeOptions::new().soft_timeout(std::time::Duration::from_millis(100));
    /// # let _ = options;
    /// ```
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.policy.soft_timeout = Some(timeout);
        self
    }

    /// How long a caller waits for a computation at most, stale value or not: past it, the
    /// stale value if there is one, else an `Err` made from [`Error::ComputeTimeout`] (so
    /// only [`try_get_or_set_with`](crate::Cache::try_get_or_set_with) takes these options, with
    /// `E: From<cache_core::Error>`). The computation goes on in the background and stores
    /// its result.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use cache_core::{Cache, ComputeOptions, Error};
    /// let cache = Cache::in_memory();
    /// let options = ComputeOptions::new().hard_timeout(Duration::from_millis(10));
    /// let slow = cache.try_get_or_set_with("k", &options, || async {
    ///     tokio::time::sleep(Duration::from_secs(5)).await;
    ///     Ok::<u8, Error>(1)
    /// });
    /// assert!(matches!(slow.await, Err(Error::ComputeTimeout { .. })));
    /// # }
    /// ```
    pub fn hard_timeout(self, timeout: Duration) -> ComputeOptions<HardTimeout> {
        let mut policy = self.policy;
        policy.hard_timeout = Some(timeout);
        ComputeOptions {
            ttl: self.ttl,
            policy,
            hard: PhantomData,
        }
    }

    /// Probabilistic early refresh (XFetch, beta 1): a read near expiry may start one
    /// refresh, the more likely the nearer and the longer the last computation took.
    ///
    /// ```
    /// let options = cache_core::ComputeOptions::new().early_refresh();
    /// # let _ = options;
    /// ```
    pub fn early_refresh(self) -> Self {
        self.early_refresh_beta(1.0)
    }

    /// [`early_refresh`](Self::early_refresh) with XFetch's beta: above 1 refreshes
    /// earlier, below later; 0 (or less) turns it off.
    ///
    /// ```
    /// let options = cache_core::ComputeOptions::new().early_refresh_beta(2.0);
    /// # let _ = options;
    /// ```
    pub fn early_refresh_beta(mut self, beta: f64) -> Self {
        self.policy.early_refresh_beta = if beta.is_finite() { beta.max(0.0) } else { 0.0 };
        self
    }

    /// Stampede protection (default [`FillLock::Local`]).
    ///
    /// ```
    /// let options = cache_core::ComputeOptions::new().lock(cache_core::compute::FillLock::None);
    /// # let _ = options;
    /// ```
    pub fn lock(mut self, lock: FillLock) -> Self {
        self.policy.lock = lock;
        self
    }

    /// With [`FillLock::Distributed`], how long a process waits for another's value before
    /// computing anyway (default 5 s).
    ///
    /// ```
    /// let options = cache_core::ComputeOptions::new().lock_wait(std::time::Duration::from_secs(1));
    /// # let _ = options;
    /// ```
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.policy.lock_wait = wait;
        self
    }

    /// With [`FillLock::Distributed`], the lease of the lock: if its holder dies, another
    /// process computes after this long (default 10 s).
    ///
    /// ```
    /// let options = cache_core::ComputeOptions::new().lock_lease(std::time::Duration::from_secs(30));
    /// # let _ = options;
    /// ```
    pub fn lock_lease(mut self, lease: Duration) -> Self {
        self.policy.lock_lease = lease.max(Duration::from_millis(1));
        self
    }

    /// After a failed refresh, how long the stale value is served as if fresh, so a failing
    /// source is not called on every read (default 30 s).
    ///
    /// ```
    /// let options = cache_core::ComputeOptions::new().fail_safe_throttle(std::time::Duration::from_secs(5));
    /// # let _ = options;
    /// ```
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.policy.fail_safe_throttle = throttle.max(Duration::from_millis(1));
        self
    }
}
