//! Rate limiters on the cache: sliding-window log, sliding-window counter and GCRA.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
//! use std::time::Duration;
//! use cache_core::{Cache, RateLimit};
//!
//! let cache = Cache::in_memory(); // or Cache::from_env()? for Redis
//! let limiter = cache.rate_limiter(RateLimit::sliding_log(100, Duration::from_secs(60)));
//! let d = limiter.check("client-7").await?;
//! assert!(d.allowed);
//! assert_eq!((d.limit, d.remaining), (100, 99));
//! # Ok(()) }
//! ```
//!
//! On Redis every decision is one atomic Lua script (one round trip, `EVALSHA`) that reads
//! the server's `TIME`, never the client's clock, so any number of application instances
//! share one limit. The keys of a limiter live under the handle's scope (namespace, tenant),
//! in the reserved `~rl:` part of the key space, with the caller's id in a Redis Cluster hash
//! tag, and always with an expiry. On the memory backend the same rules run in Rust, with
//! the limiter's [`Clock`] (the system clock unless one is injected).
//!
//! When Redis cannot be reached (connection refused, timeout, circuit breaker open), a
//! limiter answers as its [`OnUnavailable`] policy says: by default it lets the request
//! through (fail open), see [`RateLimit::fail_closed`] for the other choice.

mod gcra;
mod sliding_log;
mod sliding_window;
#[cfg(feature = "tower")]
pub mod tower;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;

use crate::base::error::{Error, Result};
use crate::base::key::{self, KeyBuf, KeyPart};
use crate::base::stats::WarnThrottle;
use crate::engine::Handle;
use crate::store::Backend;

static SLIDING_LOG: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/rate_limit_sliding_log.lua")));
static SLIDING_WINDOW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/rate_limit_sliding_window.lua")));
static GCRA: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/rate_limit_gcra.lua")));

/// The largest limit (and burst) a limiter accepts: the scripts count in Lua numbers
/// (doubles, exact to 2^53).
pub const MAX_LIMIT: u64 = 1 << 40;
/// The largest limit of a sliding-window log, which keeps one record per admitted unit.
pub const MAX_LOG_LIMIT: u64 = 1_000_000;
/// The algorithm of a limiter; see [`RateLimit`]'s constructors.
///
/// ```
/// use std::time::Duration;
/// use cache_core::{rate_limit::Algorithm, RateLimit};
/// assert_eq!(RateLimit::gcra(10, Duration::from_secs(1)).algorithm(), Algorithm::Gcra);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// Sliding-window log: exact, one record per admitted unit of cost.
    SlidingLog,
    /// Sliding-window counter: two fixed windows, the previous one weighted; constant memory.
    SlidingWindow,
    /// GCRA (a token bucket without a refill task): a steady rate with a burst allowance.
    Gcra,
}

impl Algorithm {
    fn tag(self) -> &'static str {
        match self {
            Algorithm::SlidingLog => "log",
            Algorithm::SlidingWindow => "win",
            Algorithm::Gcra => "gcra",
        }
    }
}

/// What a limiter answers when Redis cannot be reached (connection refused or lost, a
/// timeout, the circuit breaker open). Errors that are not outages (a bad configuration, a
/// cost above the limit, a script refused) are returned whatever the policy.
///
/// ```
/// use std::time::Duration;
/// use cache_core::{rate_limit::OnUnavailable, RateLimit};
/// let login = RateLimit::sliding_log(5, Duration::from_secs(60)).fail_closed();
/// assert_eq!(login.on_unavailable_policy(), OnUnavailable::Deny);
/// assert_eq!(RateLimit::gcra(10, Duration::from_secs(1)).on_unavailable_policy(), OnUnavailable::Allow);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnUnavailable {
    /// Fail open (the default): the request is allowed, with `remaining` = `limit`. A cache
    /// outage then does not become an outage of the service; the limit is not enforced
    /// while it lasts.
    #[default]
    Allow,
    /// Fail closed: the request is denied, with `retry_after` of one second. For limits that
    /// guard against abuse (login attempts, one-time codes, costly endpoints).
    Deny,
    /// The error is returned, for the caller to decide.
    Error,
}

/// A limiter's configuration: algorithm, limit, window, name, burst and outage policy.
/// Give it to [`Cache::rate_limiter`](crate::Cache::rate_limiter).
///
/// ```
/// use std::time::Duration;
/// use cache_core::RateLimit;
/// let api = RateLimit::sliding_window(1_000, Duration::from_secs(60)).name("api");
/// let uploads = RateLimit::gcra(10, Duration::from_secs(1)).burst(20).name("uploads");
/// let login = RateLimit::sliding_log(5, Duration::from_secs(300)).name("login").fail_closed();
/// # let _ = (api, uploads, login);
/// ```
#[derive(Clone)]
pub struct RateLimit {
    algorithm: Algorithm,
    limit: u64,
    window: Duration,
    burst: Option<u64>,
    name: String,
    on_unavailable: OnUnavailable,
    clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("algorithm", &self.algorithm)
            .field("name", &self.name)
            .field("limit", &self.limit)
            .field("window", &self.window)
            .field("burst", &self.burst)
            .field("on_unavailable", &self.on_unavailable)
            .finish()
    }
}

impl RateLimit {
    fn new(algorithm: Algorithm, limit: u64, window: Duration) -> Self {
        RateLimit {
            algorithm,
            limit,
            window,
            burst: None,
            name: "default".to_owned(),
            on_unavailable: OnUnavailable::default(),
            clock: None,
        }
    }

    /// At most `limit` requests (units of cost) in any window of length `window`, exactly:
    /// each admitted unit is recorded (a sorted set on Redis), so memory grows with the
    /// limit (at most [`MAX_LOG_LIMIT`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, RateLimit};
    /// let limiter = Cache::in_memory().rate_limiter(RateLimit::sliding_log(2, Duration::from_secs(60)));
    /// assert!(limiter.check("ann").await?.allowed);
    /// assert!(limiter.check("ann").await?.allowed);
    /// let third = limiter.check("ann").await?;
    /// assert!(!third.allowed && third.retry_after.is_some());
    /// # Ok(()) }
    /// ```
    pub fn sliding_log(limit: u64, window: Duration) -> Self {
        Self::new(Algorithm::SlidingLog, limit, window)
    }

    /// About `limit` requests per sliding `window`, estimated from two fixed windows (the
    /// previous one weighted by how much of it the sliding window still covers): constant
    /// memory (two counters per id), exact when requests are spread evenly.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, RateLimit};
    /// let limiter = Cache::in_memory().rate_limiter(RateLimit::sliding_window(10, Duration::from_secs(1)));
    /// assert_eq!(limiter.check_n("ann", 4).await?.remaining, 6);
    /// # Ok(()) }
    /// ```
    pub fn sliding_window(limit: u64, window: Duration) -> Self {
        Self::new(Algorithm::SlidingWindow, limit, window)
    }

    /// GCRA: a steady rate of `limit` per `period` (one request every `period / limit`,
    /// rounded up to a microsecond), with [`burst`](RateLimit::burst) requests admitted at
    /// once from idle (default: `limit`). One timestamp per id.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, RateLimit};
    /// let limiter = Cache::in_memory().rate_limiter(RateLimit::gcra(10, Duration::from_secs(1)).burst(2));
    /// assert!(limiter.check("ann").await?.allowed);
    /// assert!(limiter.check("ann").await?.allowed);
    /// let d = limiter.check("ann").await?;
    /// assert!(!d.allowed);
    /// assert!(d.retry_after.unwrap() <= Duration::from_millis(100)); // one every 100 ms
    /// # Ok(()) }
    /// ```
    pub fn gcra(limit: u64, period: Duration) -> Self {
        Self::new(Algorithm::Gcra, limit, period)
    }

    /// GCRA only: how many requests pass at once from idle (the bucket's capacity); default
    /// the limit. It is the `limit` of the decisions. Ignored by the other algorithms.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::RateLimit;
    /// let r = RateLimit::gcra(100, Duration::from_secs(60)).burst(10);
    /// assert_eq!(r.capacity(), 10);
    /// ```
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The limiter's name (default `default`): part of its keys, so limiters of one name and
    /// algorithm share their state (and a new limiter built with the name of an old one
    /// carries on where it left), and the policy name of the HTTP `RateLimit` fields. 1 to
    /// 64 characters from `A-Z a-z 0-9 - _ .`; anything else is an [`Error::Config`] at the
    /// first check.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::RateLimit;
    /// let r = RateLimit::sliding_log(5, Duration::from_secs(60)).name("login");
    /// assert_eq!(r.name_str(), "login");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Fail open when Redis cannot be reached (the default): requests are allowed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{rate_limit::OnUnavailable, RateLimit};
    /// let r = RateLimit::sliding_window(100, Duration::from_secs(1)).fail_open();
    /// assert_eq!(r.on_unavailable_policy(), OnUnavailable::Allow);
    /// ```
    pub fn fail_open(self) -> Self {
        self.on_unavailable(OnUnavailable::Allow)
    }

    /// Fail closed when Redis cannot be reached: requests are denied (retry after a second).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{rate_limit::OnUnavailable, RateLimit};
    /// let r = RateLimit::sliding_log(5, Duration::from_secs(60)).fail_closed();
    /// assert_eq!(r.on_unavailable_policy(), OnUnavailable::Deny);
    /// ```
    pub fn fail_closed(self) -> Self {
        self.on_unavailable(OnUnavailable::Deny)
    }

    /// What to answer when Redis cannot be reached; see [`OnUnavailable`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{rate_limit::OnUnavailable, RateLimit};
    /// let r = RateLimit::gcra(5, Duration::from_secs(1)).on_unavailable(OnUnavailable::Error);
    /// assert_eq!(r.on_unavailable_policy(), OnUnavailable::Error);
    /// ```
    pub fn on_unavailable(mut self, policy: OnUnavailable) -> Self {
        self.on_unavailable = policy;
        self
    }

    /// The clock of the memory backend's limiter (default: the system clock); Redis always
    /// uses its own `TIME`. For tests that move time by hand, see [`ManualClock`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{rate_limit::ManualClock, RateLimit};
    /// let clock = ManualClock::new();
    /// let r = RateLimit::gcra(5, Duration::from_secs(1)).clock(clock.clone());
    /// # let _ = r;
    /// ```
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The algorithm.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{rate_limit::Algorithm, RateLimit};
    /// assert_eq!(RateLimit::sliding_log(5, Duration::from_secs(1)).algorithm(), Algorithm::SlidingLog);
    /// ```
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The limit: requests (units of cost) per window, or per period for GCRA.
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(cache_core::RateLimit::sliding_log(5, Duration::from_secs(1)).limit(), 5);
    /// ```
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window (GCRA: the period).
    ///
    /// ```
    /// use std::time::Duration;
    /// let r = cache_core::RateLimit::sliding_window(5, Duration::from_secs(9));
    /// assert_eq!(r.window(), Duration::from_secs(9));
    /// ```
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The most a single request may cost, and the `limit` of decisions: the limit, or the
    /// burst for GCRA.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::RateLimit;
    /// assert_eq!(RateLimit::sliding_log(5, Duration::from_secs(1)).capacity(), 5);
    /// assert_eq!(RateLimit::gcra(5, Duration::from_secs(1)).burst(2).capacity(), 2);
    /// ```
    pub fn capacity(&self) -> u64 {
        match self.algorithm {
            Algorithm::Gcra => self.burst.unwrap_or(self.limit),
            _ => self.limit,
        }
    }

    /// The name.
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(cache_core::RateLimit::gcra(5, Duration::from_secs(1)).name_str(), "default");
    /// ```
    pub fn name_str(&self) -> &str {
        &self.name
    }

    /// The policy when Redis cannot be reached.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{rate_limit::OnUnavailable, RateLimit};
    /// assert_eq!(RateLimit::gcra(5, Duration::from_secs(1)).on_unavailable_policy(), OnUnavailable::Allow);
    /// ```
    pub fn on_unavailable_policy(&self) -> OnUnavailable {
        self.on_unavailable
    }

    /// The checked numbers the scripts run on, or why they cannot be used.
    fn compile(&self) -> Result<Policy> {
        let bad = |setting: &'static str, reason: String| Error::Config { setting, reason };
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(bad(
                "rate limit name",
                format!(
                    "`{}` is not a limiter name; use 1 to 64 characters from `A-Z a-z 0-9 - _ .`",
                    key::shorten_for_display(&self.name)
                ),
            ));
        }
        let max_limit = match self.algorithm {
            Algorithm::SlidingLog => MAX_LOG_LIMIT,
            _ => MAX_LIMIT,
        };
        if self.limit == 0 || self.limit > max_limit {
            return Err(bad(
                "rate limit",
                format!(
                    "a limit of {} is out of range; use 1 to {max_limit}",
                    self.limit
                ),
            ));
        }
        // The cache's one rule for durations: whole milliseconds (rounded up), at most
        // MAX_TTL (clamped), zero refused.
        let window =
            crate::base::limits::setting("rate limit window", self.window)?.as_micros() as u64;
        let capacity = self.capacity();
        let interval = window.div_ceil(self.limit);
        if self.algorithm == Algorithm::Gcra {
            // The TAT runs at most burst * interval ahead of now; keep it far below 2^53.
            if capacity == 0 || capacity > MAX_LIMIT || capacity.saturating_mul(interval) > 1 << 51
            {
                return Err(bad(
                    "rate limit burst",
                    format!(
                        "a burst of {capacity} is out of range for one request every {interval} us; use 1 to {}",
                        ((1u64 << 51) / interval).min(MAX_LIMIT)
                    ),
                ));
            }
        }
        Ok(Policy {
            algorithm: self.algorithm,
            limit: self.limit,
            window,
            capacity,
            interval,
        })
    }
}

/// What the scripts and the Rust rules run on, checked.
#[derive(Debug, Clone, Copy)]
struct Policy {
    algorithm: Algorithm,
    limit: u64,
    /// Microseconds.
    window: u64,
    /// The largest cost, and the `limit` of decisions.
    capacity: u64,
    /// GCRA's emission interval, microseconds.
    interval: u64,
}

/// A source of time for limiters on the memory backend: time since the Unix epoch.
///
/// ```
/// use std::time::Duration;
/// use cache_core::rate_limit::Clock;
///
/// #[derive(Debug)]
/// struct Frozen;
/// impl Clock for Frozen {
///     fn now(&self) -> Duration { Duration::from_secs(1_700_000_000) }
/// }
/// assert_eq!(Frozen.now().as_secs(), 1_700_000_000);
/// ```
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// Time since the Unix epoch.
    fn now(&self) -> Duration;
}

/// The system's wall clock (as Redis's `TIME` is the server's).
#[derive(Debug, Clone, Copy, Default)]
struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A clock moved by hand, for tests of code that rate-limits (memory backend); clones share
/// the time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// use std::time::Duration;
/// use cache_core::{rate_limit::ManualClock, Cache, RateLimit};
/// let clock = ManualClock::new();
/// let limiter = Cache::in_memory()
///     .rate_limiter(RateLimit::sliding_log(1, Duration::from_secs(60)).clock(clock.clone()));
/// assert!(limiter.check("ann").await?.allowed);
/// let denied = limiter.check("ann").await?;
/// assert_eq!(denied.retry_after, Some(Duration::from_secs(60)));
/// clock.advance(Duration::from_secs(60));
/// assert!(limiter.check("ann").await?.allowed);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock at the current system time, rounded down to the second.
    ///
    /// ```
    /// use cache_core::rate_limit::{Clock, ManualClock};
    /// let clock = ManualClock::new();
    /// assert_eq!(clock.now().subsec_micros(), 0);
    /// ```
    pub fn new() -> Self {
        let secs = SystemClock.now().as_secs();
        ManualClock(Arc::new(AtomicU64::new(secs * 1_000_000)))
    }

    /// Moves the clock forward by `by` (microsecond resolution).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::rate_limit::{Clock, ManualClock};
    /// let clock = ManualClock::new();
    /// let before = clock.now();
    /// clock.advance(Duration::from_micros(1));
    /// assert_eq!(clock.now() - before, Duration::from_micros(1));
    /// ```
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }

    /// Sets the clock to `since_epoch` (microsecond resolution).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::rate_limit::{Clock, ManualClock};
    /// let clock = ManualClock::new();
    /// clock.set(Duration::from_secs(5));
    /// assert_eq!(clock.now(), Duration::from_secs(5));
    /// ```
    pub fn set(&self, since_epoch: Duration) {
        self.0
            .store(since_epoch.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::SeqCst))
    }
}

/// The answer of a limiter (the shape of redis-cell's reply).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// use std::time::Duration;
/// use cache_core::{Cache, Decision, RateLimit};
/// let limiter = Cache::in_memory().rate_limiter(RateLimit::sliding_log(3, Duration::from_secs(10)));
/// let d: Decision = limiter.check_n("ann", 3).await?;
/// assert!(d.allowed);
/// assert_eq!((d.limit, d.remaining, d.retry_after), (3, 0, None));
/// assert_eq!(d.reset_after, Duration::from_secs(10)); // all three leave the window then
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// True if the request is admitted (and, for `check`, counted).
    pub allowed: bool,
    /// The limit of the policy (GCRA: the burst).
    pub limit: u64,
    /// How much more cost would be admitted right now.
    pub remaining: u64,
    /// When denied: how long until the same request would be admitted (a request at
    /// `now + retry_after` is); `None` when admitted.
    pub retry_after: Option<Duration>,
    /// How long until the limiter is back to its full limit for this id (all counted
    /// requests have left the window, or the bucket is full again).
    pub reset_after: Duration,
    /// The time of the decision by the limiter's clock (Redis: the server's `TIME`).
    at: Duration,
}

impl Decision {
    /// The time the decision was made, by the limiter's clock: Redis's `TIME` on the Redis
    /// backend (not this machine's clock), the limiter's [`Clock`] on the memory backend.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use cache_core::{Cache, RateLimit};
    /// let d = Cache::in_memory().rate_limiter(RateLimit::gcra(5, Duration::from_secs(1))).check("a").await?;
    /// assert!(d.decided_at() > UNIX_EPOCH);
    /// # Ok(()) }
    /// ```
    pub fn decided_at(&self) -> SystemTime {
        UNIX_EPOCH + self.at
    }

    fn unavailable(policy: &Policy, allowed: bool) -> Self {
        Decision {
            allowed,
            limit: policy.capacity,
            remaining: if allowed { policy.capacity } else { 0 },
            retry_after: (!allowed).then_some(Duration::from_secs(1)),
            reset_after: Duration::ZERO,
            at: SystemClock.now(),
        }
    }
}

/// The outcome of one algorithm's rules, in microseconds; `ttl`: how long the state now
/// lives (set when it was written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) allowed: bool,
    pub(crate) remaining: u64,
    pub(crate) retry_after: Option<u64>,
    pub(crate) reset_after: u64,
    pub(crate) now: u64,
    pub(crate) ttl: Option<u64>,
}

impl Outcome {
    fn decision(self, policy: &Policy) -> Decision {
        Decision {
            allowed: self.allowed,
            limit: policy.capacity,
            remaining: self.remaining,
            retry_after: self.retry_after.map(Duration::from_micros),
            reset_after: Duration::from_micros(self.reset_after),
            at: Duration::from_micros(self.now),
        }
    }
}

/// The state of one id on the memory backend.
#[derive(Debug)]
enum MemState {
    Log(VecDeque<u64>),
    Window(Option<sliding_window::Counts>),
    Gcra(Option<u64>),
}

/// The limiters' state of a memory cache root (the front door keeps one per root), by full key, each
/// with its expiry (microseconds of the writer's clock).
#[derive(Debug, Default)]
pub(crate) struct MemoryLimits {
    states: Mutex<HashMap<String, (MemState, u64)>>,
    /// Size of the map after the last sweep of expired entries.
    swept_at_len: AtomicU64,
}

impl MemoryLimits {
    fn decide(
        &self,
        key: &str,
        policy: &Policy,
        clock: &dyn Clock,
        cost: u64,
        consume: bool,
    ) -> Outcome {
        let mut states = match self.states.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Read under the lock, so decisions are made in the order of their times.
        let now = clock.now().as_micros() as u64;
        // Expired entries go when the map has doubled since the last sweep, so memory is
        // bounded by twice the live ids, at an amortised O(1) a call.
        if states.len() as u64 > 2 * self.swept_at_len.load(Ordering::Relaxed).max(512) {
            states.retain(|_, (_, expires)| *expires > now);
            self.swept_at_len
                .store(states.len() as u64, Ordering::Relaxed);
        }
        let (mut state, kept_expiry) = match states.remove(key) {
            Some((state, expires)) if expires > now => (state, Some(expires)),
            _ => (
                match policy.algorithm {
                    Algorithm::SlidingLog => MemState::Log(VecDeque::new()),
                    Algorithm::SlidingWindow => MemState::Window(None),
                    Algorithm::Gcra => MemState::Gcra(None),
                },
                None,
            ),
        };
        let outcome = match &mut state {
            MemState::Log(log) => {
                sliding_log::decide(log, policy.limit, policy.window, now, cost, consume)
            }
            MemState::Window(counts) => {
                sliding_window::decide(counts, policy.limit, policy.window, now, cost, consume)
            }
            MemState::Gcra(tat) => {
                gcra::decide(tat, policy.interval, policy.capacity, now, cost, consume)
            }
        };
        // As on Redis: a write sets the expiry, a read keeps it, and nothing is stored for an
        // id that was only read.
        if let Some(expires) = outcome.ttl.map(|ttl| now + ttl).or(kept_expiry) {
            states.insert(key.to_owned(), (state, expires));
        }
        outcome
    }

    fn reset(&self, key: &str) -> bool {
        let mut states = match self.states.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        states.remove(key).is_some()
    }
}

/// A checked policy, or the setting and reason of an [`Error::Config`].
type Compiled = std::result::Result<Policy, (&'static str, String)>;

/// A rate limiter made by [`Cache::rate_limiter`](crate::Cache::rate_limiter): cheap to clone (clones share the policy,
/// so [`set_limit`](RateLimiter::set_limit) on one changes all).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// use std::time::Duration;
/// use cache_core::{Cache, RateLimit};
/// let cache = Cache::in_memory();
/// let limiter = cache.rate_limiter(RateLimit::sliding_window(100, Duration::from_secs(60)).name("api"));
/// let d = limiter.check("client-7").await?;
/// if !d.allowed {
///     // answer 429, Retry-After: d.retry_after
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    cache: Handle,
    /// The root's limiter state on the embedded backend.
    memory: Arc<MemoryLimits>,
    /// The configuration and its checked policy (or what is wrong with it).
    config: RwLock<(RateLimit, Compiled)>,
    clock: Arc<dyn Clock>,
    /// `prefix~rl:<algorithm>:<name>:`
    key_prefix: String,
    warnings: WarnThrottle,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config())
            .field("key_prefix", &self.inner.key_prefix)
            .finish()
    }
}

impl RateLimiter {
    /// A limiter of `config` on `cache`'s scope; `memory` is the root's state on the embedded
    /// backend.
    pub(crate) fn new(cache: &Handle, memory: Arc<MemoryLimits>, config: RateLimit) -> RateLimiter {
        let compiled = config.compile().map_err(|e| match e {
            Error::Config { setting, reason } => (setting, reason),
            other => ("rate limit", other.to_string()),
        });
        let key_prefix = format!(
            "{}~rl:{}:{}:",
            cache.key_prefix(),
            config.algorithm.tag(),
            key::escape(&config.name)
        );
        let clock = config
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(SystemClock));
        RateLimiter {
            inner: Arc::new(Inner {
                cache: cache.clone(),
                memory,
                config: RwLock::new((config, compiled)),
                clock,
                key_prefix,
                warnings: WarnThrottle::default(),
            }),
        }
    }
}

impl RateLimiter {
    /// Checks and counts one request of `id`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, RateLimit};
    /// let limiter = Cache::in_memory().rate_limiter(RateLimit::sliding_log(1, Duration::from_secs(60)));
    /// assert!(limiter.check("ann").await?.allowed);
    /// assert!(!limiter.check("ann").await?.allowed);
    /// assert!(limiter.check("bob").await?.allowed); // each id has its own count
    /// # Ok(()) }
    /// ```
    pub fn check(&self, id: impl KeyPart) -> impl Future<Output = Result<Decision>> + Send + '_ {
        self.decide(self.key(&id), 1, true)
    }

    /// Checks and counts a request of `cost` units (a batch, a costly endpoint). A cost of 0
    /// counts nothing. A cost above the limit (GCRA: the burst) could never be admitted and
    /// is [`Error::CostAboveLimit`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, Error, RateLimit};
    /// let limiter = Cache::in_memory().rate_limiter(RateLimit::sliding_window(10, Duration::from_secs(1)));
    /// assert_eq!(limiter.check_n("ann", 7).await?.remaining, 3);
    /// assert!(!limiter.check_n("ann", 7).await?.allowed);
    /// assert!(matches!(limiter.check_n("ann", 11).await, Err(Error::CostAboveLimit { cost: 11, limit: 10 })));
    /// # Ok(()) }
    /// ```
    pub fn check_n(
        &self,
        id: impl KeyPart,
        cost: u64,
    ) -> impl Future<Output = Result<Decision>> + Send + '_ {
        self.decide(self.key(&id), cost, true)
    }

    /// What [`check`](RateLimiter::check) would answer now, without counting anything.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, RateLimit};
    /// let limiter = Cache::in_memory().rate_limiter(RateLimit::gcra(5, Duration::from_secs(1)));
    /// assert_eq!(limiter.peek("ann").await?.remaining, 5);
    /// assert_eq!(limiter.peek("ann").await?.remaining, 5);
    /// # Ok(()) }
    /// ```
    pub fn peek(&self, id: impl KeyPart) -> impl Future<Output = Result<Decision>> + Send + '_ {
        self.decide(self.key(&id), 1, false)
    }

    /// Forgets everything counted for `id`; true if there was something.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, RateLimit};
    /// let limiter = Cache::in_memory().rate_limiter(RateLimit::sliding_log(1, Duration::from_secs(60)));
    /// limiter.check("ann").await?;
    /// assert!(limiter.reset("ann").await?);
    /// assert!(limiter.check("ann").await?.allowed);
    /// # Ok(()) }
    /// ```
    pub fn reset(&self, id: impl KeyPart) -> impl Future<Output = Result<bool>> + Send + '_ {
        let key = self.key(&id);
        self.reset_key(key)
    }

    async fn reset_key(&self, key: String) -> Result<bool> {
        match &self.inner.cache.backend_ref() {
            Backend::Redis(redis) => {
                let mut cmd = redis::cmd("UNLINK");
                cmd.arg(&key);
                let removed: u64 = redis.run("rate limit reset", cmd).await?;
                Ok(removed > 0)
            }
            Backend::Memory(_) => Ok(self.memory().reset(&key)),
        }
    }

    /// Changes the limit at run time; what was counted is kept (a lower limit denies until
    /// enough has left the window). Every clone of this limiter sees the change; limiters
    /// built separately keep their own configuration (and share the counts).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, RateLimit};
    /// let limiter = Cache::in_memory().rate_limiter(RateLimit::sliding_log(5, Duration::from_secs(60)));
    /// limiter.check_n("ann", 3).await?;
    /// limiter.set_limit(4)?;
    /// assert_eq!(limiter.peek("ann").await?.remaining, 1);
    /// # Ok(()) }
    /// ```
    pub fn set_limit(&self, limit: u64) -> Result<()> {
        let mut config = self.config();
        let keep_burst = config.algorithm == Algorithm::Gcra && config.burst.is_none();
        config.limit = limit;
        if keep_burst {
            config.burst = None;
        }
        self.reconfigure(config)
    }

    /// Replaces the configuration (limit, window, burst, outage policy) at run time, keeping
    /// what was counted. The algorithm and name stay the limiter's own: a `config` with
    /// others is an [`Error::Config`], as is one out of range (then nothing changes).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, RateLimit};
    /// let limiter = Cache::in_memory().rate_limiter(RateLimit::gcra(10, Duration::from_secs(1)));
    /// limiter.reconfigure(RateLimit::gcra(20, Duration::from_secs(1)).burst(5))?;
    /// assert_eq!(limiter.peek("ann").await?.limit, 5);
    /// assert!(limiter.reconfigure(RateLimit::sliding_log(20, Duration::from_secs(1))).is_err());
    /// # Ok(()) }
    /// ```
    pub fn reconfigure(&self, config: RateLimit) -> Result<()> {
        let mut guard = match self.inner.config.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if config.algorithm != guard.0.algorithm || config.name != guard.0.name {
            return Err(Error::Config {
                setting: "rate limit",
                reason: format!(
                    "a limiter keeps its algorithm and name ({:?} `{}`); build another limiter for {:?} `{}`",
                    guard.0.algorithm, guard.0.name, config.algorithm, config.name
                ),
            });
        }
        let policy = config.compile()?;
        let clock = config.clock.clone();
        *guard = (config, Ok(policy));
        drop(guard);
        if clock.is_some() {
            tracing::debug!(
                "rate limiter: a clock given to reconfigure is ignored; the limiter keeps its own"
            );
        }
        Ok(())
    }

    /// The current configuration.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::{Cache, RateLimit};
    /// let limiter = Cache::in_memory().rate_limiter(RateLimit::sliding_log(5, Duration::from_secs(60)).name("login"));
    /// assert_eq!(limiter.config().name_str(), "login");
    /// ```
    pub fn config(&self) -> RateLimit {
        match self.inner.config.read() {
            Ok(g) => g.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    fn policy(&self) -> Result<(Policy, OnUnavailable)> {
        let guard = match self.inner.config.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        match &guard.1 {
            Ok(policy) => Ok((*policy, guard.0.on_unavailable)),
            Err((setting, reason)) => Err(Error::Config {
                setting,
                reason: reason.clone(),
            }),
        }
    }

    /// `prefix~rl:<algorithm>:<name>:{<id>}`: the id, escaped (no brace, no glob character,
    /// a digest if long), is the Redis Cluster hash tag, so all of one id's keys share a slot.
    fn key(&self, id: &impl KeyPart) -> String {
        let mut part = KeyBuf::new();
        part.part(id);
        let part = part.into_string();
        let mut k = String::with_capacity(self.inner.key_prefix.len() + part.len() + 2);
        k.push_str(&self.inner.key_prefix);
        k.push('{');
        k.push_str(&part);
        k.push('}');
        k
    }

    fn memory(&self) -> Arc<MemoryLimits> {
        self.inner.memory.clone()
    }

    async fn decide(&self, key: String, cost: u64, consume: bool) -> Result<Decision> {
        let (policy, on_unavailable) = self.policy()?;
        if cost > policy.capacity {
            return Err(Error::CostAboveLimit {
                cost,
                limit: policy.capacity,
            });
        }
        match &self.inner.cache.backend_ref() {
            Backend::Memory(_) => {
                let outcome =
                    self.memory()
                        .decide(&key, &policy, &*self.inner.clock, cost, consume);
                Ok(outcome.decision(&policy))
            }
            Backend::Redis(redis) => {
                let (script, first) = match policy.algorithm {
                    Algorithm::SlidingLog => (&*SLIDING_LOG, policy.limit),
                    Algorithm::SlidingWindow => (&*SLIDING_WINDOW, policy.limit),
                    Algorithm::Gcra => (&*GCRA, policy.interval),
                };
                let second = match policy.algorithm {
                    Algorithm::Gcra => policy.capacity,
                    _ => policy.window,
                };
                let mut invocation = script.key(&key);
                invocation
                    .arg(first)
                    .arg(second)
                    .arg(cost)
                    .arg(if consume { "1" } else { "0" });
                let reply: Result<Vec<i64>> = redis.run_script("rate limit", &invocation).await;
                match reply {
                    Ok(r) if r.len() == 5 => Ok(Outcome {
                        allowed: r[0] == 1,
                        remaining: r[1].max(0) as u64,
                        retry_after: (r[2] >= 0).then_some(r[2] as u64),
                        reset_after: r[3].max(0) as u64,
                        now: r[4].max(0) as u64,
                        ttl: None,
                    }
                    .decision(&policy)),
                    Ok(_) => Err(Error::Command {
                        operation: "rate limit",
                        source: redis::RedisError::from((
                            redis::ErrorKind::UnexpectedReturnType,
                            "the rate limit script answered something else than five integers",
                        )),
                    }),
                    Err(e) if e.is_unavailable() => self.unavailable(&policy, on_unavailable, e),
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn unavailable(
        &self,
        policy: &Policy,
        on_unavailable: OnUnavailable,
        e: Error,
    ) -> Result<Decision> {
        self.inner.cache.root_stats().backend_error();
        if let Some(held) = self.inner.warnings.admit(crate::base::codec::now_ms()) {
            tracing::warn!(limiter = %self.inner.key_prefix, policy = ?on_unavailable, error = %e, held_back = held, "rate limiter: redis unavailable");
        }
        match on_unavailable {
            OnUnavailable::Allow => Ok(Decision::unavailable(policy, true)),
            OnUnavailable::Deny => Ok(Decision::unavailable(policy, false)),
            OnUnavailable::Error => Err(e),
        }
    }
}
