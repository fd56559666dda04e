//! Distributed locks with fencing tokens: [`Cache::lock`](crate::Cache::lock) names one,
//! [`Lock`] takes it, [`LockGuard`] holds it. The guide's [locks](crate::guide::locks)
//! chapter has the whole story.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
//! use std::time::Duration;
//! let cache = cache_core::Cache::in_memory(); // or Redis: one lock for every process
//! let guard = cache.lock("invoice:42").ttl(Duration::from_secs(10)).acquire().await?;
//! assert!(cache.lock("invoice:42").try_acquire().await?.is_none()); // held
//! let token = guard.token(); // strictly increasing per lock name: fence writes with it
//! guard.release().await?;
//! # let _ = token; Ok(()) }
//! ```
//!
//! # How it works
//!
//! A lock is a key holding its owner's random 128-bit id for a lease (`SET NX PX`), beside a
//! fencing counter in the same hash slot; taking it is one script that also counts the counter
//! up and returns the new value as the holder's token. Release is compare-and-delete and
//! extend compare-and-pexpire, so a holder whose lease ran out can neither remove nor prolong
//! the next holder's lock. The memory backend keeps the same state in-process.
//!
//! Waiting is not a spin. In one process, the contenders for a lock queue behind one another
//! and only the first talks to the backend; it sleeps until the lock is released (an
//! in-process wake-up, or, from other processes, a pub/sub message on the lock's channel that
//! the release script publishes) or until the holder's lease runs out, with a bounded backoff
//! as the safety net for a lost message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::Script;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::base::error::{Error, Result};
use crate::base::key;
use crate::base::limits;
use crate::engine::Handle;
use crate::engine::lease::{Attempt, Jitter, Owner, locked};
use crate::store::Backend;
use crate::store::redis::RedisBackend;

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/lock_acquire.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/lock_release.lua")));
static EXTEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/lock_extend.lua")));

/// The lease of a lock whose builder was given none.
const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// How long a fencing counter outlives its lock's last acquisition; one that went restarts
/// above every token it gave (see `lock_acquire.lua`), so this only bounds the keys kept.
const FENCE_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// The waiting contender's first and longest sleep between attempts when nothing wakes it.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

impl Handle {
    pub(crate) fn lock(&self, name: &str) -> Lock {
        Lock {
            cache: self.clone(),
            name: name.to_owned(),
            ttl: DEFAULT_TTL,
            wait: None,
            watchdog: false,
        }
    }
}

/// A named lock and how to take it: made by [`Cache::lock`](crate::Cache::lock), configured with
/// [`ttl`](Lock::ttl), [`wait`](Lock::wait) and [`watchdog`](Lock::watchdog), taken with
/// [`acquire`](Lock::acquire) or [`try_acquire`](Lock::try_acquire) (as many times as wanted).
///
/// Redis unreachable, or the circuit breaker open: taking a lock fails with that error (fail
/// closed); nothing is ever granted without the backend's word.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// use std::time::Duration;
/// let cache = cache_core::Cache::in_memory();
/// let lock = cache.lock("report").ttl(Duration::from_secs(5)).wait(Duration::from_millis(50));
/// let held = lock.acquire().await?;
/// assert!(lock.try_acquire().await?.is_none()); // taken
/// assert!(lock.acquire().await.is_err());       // still taken after waiting 50 ms
/// drop(held);                                   // released
/// assert!(lock.try_acquire().await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Lock {
    cache: Handle,
    name: String,
    ttl: Duration,
    wait: Option<Duration>,
    watchdog: bool,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("name", &key::shorten_for_display(&self.name))
            .field("scope", &self.cache.key_prefix())
            .field("ttl", &self.ttl)
            .field("wait", &self.wait_for())
            .field("watchdog", &self.watchdog)
            .finish()
    }
}

impl Lock {
    /// The lease: how long the lock stays held if its holder neither releases nor extends it
    /// (it crashed, say); default 30 s. Durations follow the cache's rule ([the guide](crate::guide::configuration#durations-and-sizes), "Durations
    /// and sizes"): whole milliseconds, rounded up; longer than [`MAX_TTL`](crate::limits::MAX_TTL)
    /// clamped; zero is [`Error::InvalidDuration`] when the lock is taken.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::Error;
    /// let cache = cache_core::Cache::in_memory();
    /// let zero = cache.lock("job").ttl(Duration::ZERO);
    /// assert!(matches!(zero.try_acquire().await, Err(Error::InvalidDuration { .. })));
    /// # Ok(()) }
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long [`acquire`](Lock::acquire) waits for the lock before it gives up with
    /// [`Error::LockBusy`]. Default: the lease ([`ttl`](Lock::ttl)), time enough for a crashed
    /// holder's lock to expire. `Duration::ZERO` tries once; `Duration::MAX` waits for good.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::Error;
    /// let cache = cache_core::Cache::in_memory();
    /// let _held = cache.lock("job").acquire().await?;
    /// let busy = cache.lock("job").wait(Duration::from_millis(20)).acquire().await;
    /// assert!(matches!(busy, Err(Error::LockBusy { .. })));
    /// # Ok(()) }
    /// ```
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Keeps the lock while its guard lives: a task extends the lease back to the full
    /// [`ttl`](Lock::ttl) every third of it, and stops when the guard is released or dropped.
    /// If an extension is refused (the lease ran out and another owner took the lock), or
    /// keeps failing until the lease must have run out, the guard is marked
    /// [lost](LockGuard::is_lost). A crashed holder's lock still expires within one lease.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// let cache = cache_core::Cache::in_memory();
    /// let guard = cache.lock("job").ttl(Duration::from_secs(1)).watchdog(true).acquire().await?;
    /// tokio::time::sleep(Duration::from_secs(2)).await; // past the lease: the watchdog extended it
    /// assert!(!guard.is_lost());
    /// assert!(cache.lock("job").try_acquire().await?.is_none());
    /// # Ok(()) }
    /// ```
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    /// The lock's name, as given to [`Cache::lock`](crate::Cache::lock).
    ///
    /// ```
    /// let cache = cache_core::Cache::in_memory();
    /// assert_eq!(cache.lock("invoice:42").name(), "invoice:42");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    fn wait_for(&self) -> Duration {
        self.wait.unwrap_or(self.ttl)
    }

    /// Takes the lock, waiting for it up to [`wait`](Lock::wait): woken when its holder
    /// releases it or its lease runs out, not by polling in a loop. Gives up with
    /// [`Error::LockBusy`]; a backend error ends the wait at once (fail closed).
    ///
    /// Cancel-safe: dropping the future (a `select!`, a timeout) leaves no lock behind, even
    /// if it was granted while the answer was on its way.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// let cache = cache_core::Cache::in_memory();
    /// let lock = cache.lock("invoice:42").wait(Duration::from_secs(5));
    /// let first = lock.acquire().await?;
    /// let (second, _) = tokio::join!(lock.acquire(), async { drop(first) });
    /// let second = second?; // woken by the release
    /// assert!(second.token() > 0);
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self) -> Result<LockGuard> {
        let (key, ttl) = self.checked()?;
        let started = Instant::now();
        // `None`: no deadline (a wait too long to add to the clock).
        let deadline = started.checked_add(self.wait_for());
        let owner = Owner::random()?;
        let mut left = match self.attempt(&key, owner, ttl).await? {
            Attempt::Taken(token) => return Ok(self.guard(key, owner, token, ttl, started)),
            Attempt::Held(left) => left,
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(self.busy());
        }
        // Contenders of this process queue here; only the first talks to the backend.
        let waiting = self.cache.leases().waiting();
        let place = waiting.join(&key);
        let queue = place.queue();
        let _turn = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), queue.turn.lock())
                .await
                .map_err(|_| self.busy())?,
            None => queue.turn.lock().await,
        };
        let _subscription = match self.cache.backend_ref() {
            Backend::Redis(redis) => waiting.subscribe(redis, &key).await,
            Backend::Memory(_) => None,
        };
        let mut backoff = FIRST_BACKOFF;
        let mut jitter = Jitter(owner.0 as u64 | 1);
        loop {
            // Made before the attempt, so a release between the attempt and the sleep wakes it.
            let released = queue.released.notified();
            let tried_at = Instant::now();
            match self.attempt(&key, owner, ttl).await? {
                Attempt::Taken(token) => return Ok(self.guard(key, owner, token, ttl, tried_at)),
                Attempt::Held(l) => left = l.or(left),
            }
            let now = Instant::now();
            let mut nap = jitter.around(backoff);
            // A lease that runs out wakes nobody: be there when it does.
            if let Some(left) = left.take() {
                nap = nap.min(left + Duration::from_millis(1));
            }
            if let Some(d) = deadline {
                if now >= d {
                    return Err(self.busy());
                }
                nap = nap.min(d - now);
            }
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep(nap) => backoff = (backoff * 2).min(MAX_BACKOFF),
            }
        }
    }

    /// Takes the lock if it is free, once, without waiting: `None` if another owner holds it.
    /// Cancel-safe like [`acquire`](Lock::acquire).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// let cache = cache_core::Cache::in_memory();
    /// let lock = cache.lock("invoice:42").ttl(Duration::from_secs(10));
    /// let guard = lock.try_acquire().await?.expect("free");
    /// assert!(lock.try_acquire().await?.is_none());
    /// guard.release().await?;
    /// assert!(lock.try_acquire().await?.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire(&self) -> Result<Option<LockGuard>> {
        let (key, ttl) = self.checked()?;
        let started = Instant::now();
        let owner = Owner::random()?;
        Ok(match self.attempt(&key, owner, ttl).await? {
            Attempt::Taken(token) => Some(self.guard(key, owner, token, ttl, started)),
            Attempt::Held(_) => None,
        })
    }

    /// The lock's key under the handle's scope and its lease, once both are checked.
    fn checked(&self) -> Result<(String, Duration)> {
        let ttl = limits::duration("lock ttl", self.ttl)?;
        key::validate_user_key(&self.name).map_err(|e| match e {
            Error::InvalidKey { key, reason } => Error::InvalidKey {
                key: format!("lock {key}"),
                reason,
            },
            other => other,
        })?;
        let prefix = &self.cache.key_prefix();
        let mut k = String::with_capacity(prefix.len() + self.name.len() + 16);
        k.push_str(prefix);
        k.push_str("~lock:{");
        // Braces in the name could move the hash tag off the name (the counter would land in
        // another cluster slot); `~` starts no name, so a digest collides with none.
        if self.name.len() > key::MAX_KEY_LEN || self.name.contains(['{', '}']) {
            k.push('~');
            k.push_str(&key::lower_hex(&Sha256::digest(self.name.as_bytes())));
        } else {
            k.push_str(&self.name);
        }
        k.push('}');
        Ok((k, ttl))
    }

    /// One try at the lock.
    async fn attempt(&self, key: &str, owner: Owner, ttl: Duration) -> Result<Attempt> {
        match self.cache.backend_ref() {
            Backend::Memory(_) => Ok(self.cache.leases().memory().take(key, owner, ttl)),
            Backend::Redis(_) => {
                // In a task of its own, so that a caller who stops waiting (a cancelled
                // acquire) still has the outcome looked at: a lock granted with nobody left to
                // hold it is released at once, instead of staying taken for its lease. The
                // answer can be dropped unread at two points (the caller gone before the send,
                // or after it with the answer still in the channel); `Answer`'s drop covers both.
                let cache = self.cache.clone();
                let key = key.to_owned();
                let (answer, answered) = oneshot::channel();
                tokio::spawn(async move {
                    let Backend::Redis(redis) = cache.backend_ref() else {
                        return;
                    };
                    let outcome = redis_take(redis, &key, owner, ttl).await;
                    let unclaimed = matches!(outcome, Ok(Attempt::Taken(_)))
                        .then(|| (cache.clone(), key, owner));
                    let _ = answer.send(Answer { outcome, unclaimed });
                });
                match answered.await {
                    Ok(answer) => answer.claim(),
                    Err(_) => Err(Error::Connection {
                        message:
                            "the lock request ended without an answer (runtime shutting down?)"
                                .to_owned(),
                        source: None,
                    }),
                }
            }
        }
    }

    fn guard(
        &self,
        key: String,
        owner: Owner,
        token: u64,
        ttl: Duration,
        tried_at: Instant,
    ) -> LockGuard {
        let held = Arc::new(Held {
            cache: self.cache.clone(),
            name: self.name.clone(),
            key,
            owner,
            token,
            ttl,
            // From before the request: the lease began no earlier, so this errs short.
            lease_until: Mutex::new(limits::deadline(tried_at, ttl)),
            lost: AtomicBool::new(false),
        });
        let watchdog = self.watchdog.then(|| tokio::spawn(watch(held.clone())));
        LockGuard {
            held,
            watchdog,
            runtime: tokio::runtime::Handle::try_current().ok(),
            done: false,
        }
    }

    fn busy(&self) -> Error {
        Error::LockBusy {
            name: key::shorten_for_display(&self.name),
            waited: self.wait_for(),
        }
    }
}

/// A held lock: its fencing [`token`](LockGuard::token), [`extend`](LockGuard::extend),
/// [`release`](LockGuard::release). Dropping it releases the lock too, in a task of its own
/// (drop never blocks; outside a tokio runtime, the lease runs out instead).
///
/// Holding a guard does not prove the lock is still held: a lease can run out while the
/// process is paused (GC-like stalls, a swapped-out VM, a debugger) or be lost in a Redis
/// failover. Pass [`token`](LockGuard::token) to the resource the lock protects and have it
/// refuse a token lower than one it has seen (see [the guide](crate::guide::locks)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// use std::time::Duration;
/// let cache = cache_core::Cache::in_memory();
/// let first = cache.lock("invoice:42").ttl(Duration::from_secs(10)).acquire().await?;
/// let token = first.token();
/// assert!(first.extend(Duration::from_secs(10)).await?);
/// assert!(first.release().await?);
/// let second = cache.lock("invoice:42").acquire().await?;
/// assert!(second.token() > token); // fencing: strictly increasing per lock
/// # Ok(()) }
/// ```
pub struct LockGuard {
    held: Arc<Held>,
    watchdog: Option<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Handle>,
    /// Released (or known gone): nothing for `Drop` to do.
    done: bool,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The owner id stays out: it is what lets a caller release the lock.
        f.debug_struct("LockGuard")
            .field("name", &key::shorten_for_display(&self.held.name))
            .field("token", &self.held.token)
            .field("watchdog", &self.watchdog.is_some())
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// What a guard and its watchdog share.
struct Held {
    cache: Handle,
    name: String,
    key: String,
    owner: Owner,
    token: u64,
    ttl: Duration,
    /// When the lease runs out by this process's clock, at the latest.
    lease_until: Mutex<Instant>,
    lost: AtomicBool,
}

impl LockGuard {
    /// The fencing token: strictly greater than every token handed out before for this lock
    /// name (in this scope), on both backends. Not consecutive: a counter starts at the
    /// server's clock in microseconds, so one that was evicted or flushed never repeats a
    /// token.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// let a = cache.lock("k").acquire().await?.token(); // dropped at once: released
    /// let b = cache.lock("k").acquire().await?.token();
    /// assert!(b > a);
    /// # Ok(()) }
    /// ```
    pub fn token(&self) -> u64 {
        self.held.token
    }

    /// The lock's name.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// assert_eq!(cache.lock("k").acquire().await?.name(), "k");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.held.name
    }

    /// True once the lock is known not to be held any more: an extension (by the watchdog or
    /// [`extend`](LockGuard::extend)) was refused, or the lease ran out by this process's
    /// clock without one. False does not prove the lock is held (see the type's docs).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// let cache = cache_core::Cache::in_memory();
    /// let guard = cache.lock("k").ttl(Duration::from_millis(20)).acquire().await?;
    /// assert!(!guard.is_lost());
    /// tokio::time::sleep(Duration::from_millis(40)).await; // no watchdog: the lease runs out
    /// assert!(guard.is_lost());
    /// assert!(!guard.extend(Duration::from_secs(1)).await?); // too late
    /// # Ok(()) }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.held.lost.load(Ordering::Relaxed) || Instant::now() >= *locked(&self.held.lease_until)
    }

    /// Sets the lease to `ttl` from now, if this guard still holds the lock: false if the
    /// lease already ran out (another owner may hold the lock now). `ttl` from 1 ms to
    /// [`MAX_TTL`](crate::limits::MAX_TTL); zero is [`Error::InvalidDuration`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::KeyTtl;
    /// let cache = cache_core::Cache::in_memory();
    /// let guard = cache.lock("k").ttl(Duration::from_secs(1)).acquire().await?;
    /// assert!(guard.extend(Duration::from_secs(60)).await?);
    /// assert!(guard.extend(Duration::ZERO).await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn extend(&self, ttl: Duration) -> Result<bool> {
        let ttl = limits::duration("lock ttl", ttl)?;
        self.held.extend(ttl).await
    }

    /// Releases the lock: true if this guard still held it, false if its lease had run out.
    /// The next waiter is woken. On an error (Redis unreachable) the lock stays until its
    /// lease runs out, and one more release is tried in the background.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// let guard = cache.lock("k").acquire().await?;
    /// assert!(guard.release().await?);
    /// assert!(cache.lock("k").try_acquire().await?.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn release(mut self) -> Result<bool> {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
        let released = self.held.release().await;
        self.done = released.is_ok();
        released
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
        if self.done {
            return;
        }
        match &self.held.cache.backend_ref() {
            Backend::Memory(_) => {
                self.held.release_in_memory();
            }
            Backend::Redis(_) => match &self.runtime {
                Some(runtime) => {
                    let held = self.held.clone();
                    runtime.spawn(async move {
                        if let Err(error) = held.release().await {
                            tracing::debug!(lock = %key::shorten_for_display(&held.name), %error, "lock not released on drop; its lease will run out");
                        }
                    });
                }
                None => {
                    tracing::debug!(lock = %key::shorten_for_display(&self.held.name), "lock guard dropped outside a tokio runtime; its lease will run out");
                }
            },
        }
    }
}

impl Held {
    async fn extend(&self, ttl: Duration) -> Result<bool> {
        let started = Instant::now();
        let extended = match self.cache.backend_ref() {
            Backend::Memory(_) => Ok(self
                .cache
                .leases()
                .memory()
                .extend(&self.key, self.owner, ttl)),
            Backend::Redis(redis) => {
                let mut invocation = EXTEND.key(&self.key);
                invocation.arg(self.owner.hex()).arg(limits::millis(ttl));
                redis
                    .run_script::<u8>("lock extend", &invocation)
                    .await
                    .map(|n| n == 1)
            }
        };
        match extended {
            Ok(true) => *locked(&self.lease_until) = limits::deadline(started, ttl),
            Ok(false) => self.lost.store(true, Ordering::Relaxed),
            Err(_) => {}
        }
        extended
    }

    async fn release(&self) -> Result<bool> {
        let released = match self.cache.backend_ref() {
            Backend::Memory(_) => return Ok(self.release_in_memory()),
            Backend::Redis(redis) => redis_release(redis, &self.key, self.owner).await?,
        };
        if released {
            self.cache.leases().waiting().wake(&self.key);
        }
        Ok(released)
    }

    fn release_in_memory(&self) -> bool {
        let released = self.cache.leases().memory().release(&self.key, self.owner);
        if released {
            self.cache.leases().waiting().wake(&self.key);
        }
        released
    }

    fn lease_ran_out(&self) -> bool {
        Instant::now() >= *locked(&self.lease_until)
    }
}

/// The watchdog: extends the lease every third of it until aborted (by the guard's release or
/// drop) or until the lock is lost.
async fn watch(held: Arc<Held>) {
    let period = (held.ttl / 3).max(Duration::from_millis(1));
    let mut next = Instant::now() + period;
    loop {
        tokio::time::sleep_until(next.into()).await;
        let tried_at = Instant::now();
        match held.extend(held.ttl).await {
            Ok(true) => next = tried_at + period,
            Ok(false) => {
                tracing::warn!(lock = %key::shorten_for_display(&held.name), token = held.token, "lock lost: its lease ran out before the watchdog extended it");
                return;
            }
            Err(error) => {
                if held.lease_ran_out() {
                    held.lost.store(true, Ordering::Relaxed);
                    tracing::warn!(lock = %key::shorten_for_display(&held.name), token = held.token, %error, "lock lost: the watchdog could not extend it before its lease ran out");
                    return;
                }
                // Try again soon, while the lease lasts.
                next = Instant::now() + (period / 4).max(Duration::from_millis(1));
            }
        }
    }
}

// ---- Redis -------------------------------------------------------------------------------

async fn redis_take(
    redis: &RedisBackend,
    key: &str,
    owner: Owner,
    ttl: Duration,
) -> Result<Attempt> {
    let mut invocation = ACQUIRE.key(key);
    invocation
        .key(format!("{key}:fence"))
        .arg(owner.hex())
        .arg(limits::millis(ttl))
        .arg(limits::millis(FENCE_LIFETIME));
    let (token, left): (u64, i64) = redis.run_script("lock acquire", &invocation).await?;
    Ok(if token > 0 {
        Attempt::Taken(token)
    } else {
        Attempt::Held(u64::try_from(left).ok().map(Duration::from_millis))
    })
}

/// The outcome of one try at a Redis lock, on its way to the caller. A grant dropped unread
/// (its caller stopped waiting) releases the lock in a task of its own.
struct Answer {
    outcome: Result<Attempt>,
    unclaimed: Option<(Handle, String, Owner)>,
}

impl Answer {
    fn claim(mut self) -> Result<Attempt> {
        self.unclaimed = None;
        std::mem::replace(&mut self.outcome, Ok(Attempt::Held(None)))
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        let Some((cache, key, owner)) = self.unclaimed.take() else {
            return;
        };
        // Outside a runtime (it is shutting down) the lease runs out instead.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let Backend::Redis(redis) = cache.backend_ref() else {
                    return;
                };
                if let Ok(true) = redis_release(redis, &key, owner).await {
                    cache.leases().waiting().wake(&key);
                }
            });
        }
    }
}

async fn redis_release(redis: &RedisBackend, key: &str, owner: Owner) -> Result<bool> {
    let mut invocation = RELEASE.key(key);
    invocation.arg(owner.hex());
    let released: u8 = redis.run_script("lock release", &invocation).await?;
    Ok(released == 1)
}
