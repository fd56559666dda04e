//! Distributed locks with fencing tokens (DESIGN.md sections 7 and 12).
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use redis::Script;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::base::error::{Error, Result};
use crate::base::key;
use crate::base::limits;
use crate::engine::Handle;
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
/// After the pub/sub connection could not be made, waiters poll for this long before one
/// tries again.
const FEED_RETRY: Duration = Duration::from_secs(1);

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

/// A named lock and how to take it: made by [`Cache::lock`], configured with
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
            .field("scope", &self.cache.scope.prefix)
            .field("ttl", &self.ttl)
            .field("wait", &self.wait_for())
            .field("watchdog", &self.watchdog)
            .finish()
    }
}

/// What one try at a lock found.
enum Attempt {
    /// Taken, with this fencing token.
    Taken(u64),
    /// Held by another owner, whose lease has this long left (`None`: unknown).
    Held(Option<Duration>),
}

impl Lock {
    /// The lease: how long the lock stays held if its holder neither releases nor extends it
    /// (it crashed, say); default 30 s. Durations follow the cache's rule (README, "Durations
    /// and sizes"): whole milliseconds, rounded up; longer than [`MAX_TTL`](crate::MAX_TTL)
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

    /// The lock's name, as given to [`Cache::lock`].
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
        let waiting = self.cache.root_state::<Waiting>();
        let place = waiting.join(&key);
        let queue = place.queue();
        let _turn = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), queue.turn.lock())
                .await
                .map_err(|_| self.busy())?,
            None => queue.turn.lock().await,
        };
        let _subscription = match &self.cache.shared.backend {
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
        let prefix = &self.cache.scope.prefix;
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
        match &self.cache.shared.backend {
            Backend::Memory(_) => Ok(self.cache.root_state::<MemoryLocks>().take(key, owner, ttl)),
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
                    let Backend::Redis(redis) = &cache.shared.backend else {
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
/// refuse a token lower than one it has seen (see the README, "Locks").
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
    /// [`MAX_TTL`](crate::MAX_TTL); zero is [`Error::InvalidDuration`].
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
        match &self.held.cache.shared.backend {
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
        let extended = match &self.cache.shared.backend {
            Backend::Memory(_) => Ok(self
                .cache
                .root_state::<MemoryLocks>()
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
        let released = match &self.cache.shared.backend {
            Backend::Memory(_) => return Ok(self.release_in_memory()),
            Backend::Redis(redis) => redis_release(redis, &self.key, self.owner).await?,
        };
        if released {
            self.cache.root_state::<Waiting>().wake(&self.key);
        }
        Ok(released)
    }

    fn release_in_memory(&self) -> bool {
        let released = self
            .cache
            .root_state::<MemoryLocks>()
            .release(&self.key, self.owner);
        if released {
            self.cache.root_state::<Waiting>().wake(&self.key);
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
                let Backend::Redis(redis) = &cache.shared.backend else {
                    return;
                };
                if let Ok(true) = redis_release(redis, &key, owner).await {
                    cache.root_state::<Waiting>().wake(&key);
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

// ---- owners and jitter ---------------------------------------------------------------------

/// A lock owner: 128 bits from the OS's random source, one per acquire.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Owner(u128);

impl Owner {
    fn random() -> Result<Owner> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| Error::Config {
            setting: "OS random source",
            reason: format!("no random bytes for a lock owner: {e}"),
        })?;
        Ok(Owner(u128::from_le_bytes(bytes)))
    }

    fn hex(self) -> String {
        key::lower_hex(&self.0.to_be_bytes())
    }
}

/// Spreads waiters' sleeps (xorshift; not for secrets), so that processes woken together do
/// not retry in step.
struct Jitter(u64);

impl Jitter {
    /// `d`, give or take a quarter.
    fn around(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let quarter = (d.as_micros() / 4).max(1) as u64;
        d - Duration::from_micros(quarter) + Duration::from_micros(self.0 % (2 * quarter))
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

// ---- the memory backend ----------------------------------------------------------------------

/// The locks of an in-memory cache root: owner and lease end per lock key.
struct MemoryLocks {
    held: Mutex<HashMap<String, (Owner, Instant)>>,
    /// One counter for every lock of the root: strictly increasing per name as well.
    last_token: AtomicU64,
}

impl Default for MemoryLocks {
    fn default() -> Self {
        MemoryLocks {
            held: Mutex::default(),
            // As on Redis: tokens start at the clock in microseconds.
            last_token: AtomicU64::new(crate::base::codec::now_us()),
        }
    }
}

impl MemoryLocks {
    fn take(&self, key: &str, owner: Owner, ttl: Duration) -> Attempt {
        let now = Instant::now();
        let mut held = locked(&self.held);
        if let Some((_, until)) = held.get(key)
            && *until > now
        {
            return Attempt::Held(Some(*until - now));
        }
        // Leases that ran out unreleased (their guards dropped outside a runtime, or leaked)
        // are swept now and then, so the map stays the size of the locks in use.
        if held.len() >= 1024 && held.len().is_power_of_two() {
            held.retain(|_, (_, until)| *until > now);
        }
        held.insert(key.to_owned(), (owner, limits::deadline(now, ttl)));
        Attempt::Taken(self.last_token.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn release(&self, key: &str, owner: Owner) -> bool {
        let mut held = locked(&self.held);
        match held.get(key) {
            Some((o, until)) if *o == owner => {
                let live = *until > Instant::now();
                held.remove(key);
                live
            }
            _ => false,
        }
    }

    fn extend(&self, key: &str, owner: Owner, ttl: Duration) -> bool {
        let now = Instant::now();
        match locked(&self.held).get_mut(key) {
            Some((o, until)) if *o == owner && *until > now => {
                *until = limits::deadline(now, ttl);
                true
            }
            _ => false,
        }
    }
}

// ---- waiting ---------------------------------------------------------------------------------

/// Wake-ups on the release of one Redis key used as a lock by any process: for the fill lock
/// of get-or-compute (`compute/fill_lock.rs`), whose release script publishes on the key's
/// channel as [`Lock`]'s does. Waiting this way is not a poll: the caller still sleeps with a
/// bounded backoff, as a safety net for a missed message.
pub(crate) struct ReleaseWatch {
    queue: Arc<Queue>,
    // Field order is drop order: the subscription goes before the place in the queue.
    _subscription: Option<Subscription>,
    _place: Place,
}

impl ReleaseWatch {
    /// Subscribes to `key`'s release messages; returns once the subscription is live (or
    /// there is no feed, and then only the backoff wakes the caller).
    pub(crate) async fn new(cache: &Handle, redis: &RedisBackend, key: &str) -> ReleaseWatch {
        let waiting = cache.root_state::<Waiting>();
        let place = waiting.join(key);
        let queue = place.queue();
        let subscription = waiting.subscribe(redis, key).await;
        ReleaseWatch {
            queue,
            _subscription: subscription,
            _place: place,
        }
    }

    /// Resolves at the next release; make it before looking at the key, so that a release
    /// between the look and the wait still wakes.
    pub(crate) fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.queue.released.notified()
    }
}

/// The waiters of a cache root, per lock key, and the pub/sub feed that wakes them when
/// another process releases a lock.
#[derive(Default)]
struct Waiting {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    feed: Mutex<Feed>,
}

#[derive(Default)]
struct Feed {
    commands: Option<mpsc::UnboundedSender<FeedCommand>>,
    failed_at: Option<Instant>,
}

/// The contenders of this process for one lock.
#[derive(Default)]
struct Queue {
    /// Held by the contender whose turn it is to try (tokio's mutex is fair: first come,
    /// first served).
    turn: tokio::sync::Mutex<()>,
    /// Woken when the lock is released.
    released: Notify,
}

/// A contender's place in its lock's queue; the queue goes when its last contender leaves.
struct Place {
    waiting: Arc<Waiting>,
    key: String,
    queue: Option<Arc<Queue>>,
}

impl Place {
    fn queue(&self) -> Arc<Queue> {
        self.queue.clone().unwrap_or_default()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut queues = locked(&self.waiting.queues);
        // Clones are made in `join` (under this mutex) and by `Place::queue`, whose clone is
        // dropped before its `Place`; so when the count is the map's and this place's, no
        // other contender is left.
        if let Some(queue) = self.queue.take()
            && Arc::strong_count(&queue) == 2
        {
            queues.remove(&self.key);
        }
    }
}

enum FeedCommand {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

/// Interest in one lock's release messages, given up on drop.
struct Subscription {
    commands: mpsc::UnboundedSender<FeedCommand>,
    channel: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let channel = std::mem::take(&mut self.channel);
        let _ = self.commands.send(FeedCommand::Unsubscribe(channel));
    }
}

impl Waiting {
    fn join(self: &Arc<Self>, key: &str) -> Place {
        let queue = locked(&self.queues)
            .entry(key.to_owned())
            .or_default()
            .clone();
        Place {
            waiting: self.clone(),
            key: key.to_owned(),
            queue: Some(queue),
        }
    }

    /// Wakes this process's contenders for the lock `key`.
    fn wake(&self, key: &str) {
        if let Some(queue) = locked(&self.queues).get(key) {
            queue.released.notify_waiters();
        }
    }

    /// Subscribes to the release messages of lock `key` (its channel has the key's name);
    /// returns once the subscription is live, or `None` when there is no feed (waiters then
    /// poll with their backoff).
    async fn subscribe(self: &Arc<Self>, redis: &RedisBackend, key: &str) -> Option<Subscription> {
        let commands = self.feed(redis).await?;
        let (ack, acked) = oneshot::channel();
        commands
            .send(FeedCommand::Subscribe(key.to_owned(), ack))
            .ok()?;
        let subscription = Subscription {
            commands,
            channel: key.to_owned(),
        };
        // A feed that does not answer in time is not waited for: its wake-ups may come late.
        let _ = tokio::time::timeout(redis.command_timeout(), acked).await;
        Some(subscription)
    }

    /// The running feed's command queue, starting the feed if there is none.
    async fn feed(
        self: &Arc<Self>,
        redis: &RedisBackend,
    ) -> Option<mpsc::UnboundedSender<FeedCommand>> {
        {
            let feed = locked(&self.feed);
            if let Some(commands) = feed.commands.as_ref().filter(|c| !c.is_closed()) {
                return Some(commands.clone());
            }
            if feed.failed_at.is_some_and(|at| at.elapsed() < FEED_RETRY) {
                return None;
            }
        }
        let pubsub = redis.pubsub().await;
        let mut feed = locked(&self.feed);
        if let Some(commands) = feed.commands.as_ref().filter(|c| !c.is_closed()) {
            return Some(commands.clone()); // another waiter started one meanwhile
        }
        match pubsub {
            Ok(pubsub) => {
                let (commands, received) = mpsc::unbounded_channel();
                tokio::spawn(run_feed(
                    Arc::downgrade(self),
                    pubsub,
                    received,
                    redis.command_timeout(),
                ));
                feed.commands = Some(commands.clone());
                feed.failed_at = None;
                Some(commands)
            }
            Err(error) => {
                tracing::debug!(%error, "no pub/sub connection for lock wake-ups; waiters poll");
                feed.failed_at = Some(Instant::now());
                None
            }
        }
    }
}

/// The feed: one pub/sub connection per cache root, subscribed to the channels of the locks
/// that this process's contenders wait for. Ends when its connection does (the next waiter
/// starts another) or when the cache root is gone.
async fn run_feed(
    waiting: Weak<Waiting>,
    pubsub: redis::aio::PubSub,
    mut commands: mpsc::UnboundedReceiver<FeedCommand>,
    timeout: Duration,
) {
    use futures_util::StreamExt;
    let (mut sink, mut messages) = pubsub.split();
    let mut interest: HashMap<String, usize> = HashMap::new();
    loop {
        let next_message = messages.next();
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(FeedCommand::Subscribe(channel, ack)) => {
                    let count = interest.entry(channel.clone()).or_insert(0);
                    *count += 1;
                    if *count == 1 && !answered(timeout, sink.subscribe(&channel)).await {
                        // Refused (an ACL without the channel) or no answer: waiters poll,
                        // and the next feed is not tried for a while.
                        if let Some(waiting) = waiting.upgrade() {
                            locked(&waiting.feed).failed_at = Some(Instant::now());
                        }
                        return;
                    }
                    let _ = ack.send(());
                }
                Some(FeedCommand::Unsubscribe(channel)) => {
                    if let Some(count) = interest.get_mut(&channel) {
                        *count -= 1;
                        if *count == 0 {
                            interest.remove(&channel);
                            if !answered(timeout, sink.unsubscribe(&channel)).await {
                                return;
                            }
                        }
                    }
                }
            },
            message = next_message => match message {
                None => return,
                Some(message) => match waiting.upgrade() {
                    Some(waiting) => waiting.wake(message.get_channel_name()),
                    None => return,
                },
            },
        }
    }
}

/// True if `request` succeeded within `timeout`; a feed whose connection does not answer
/// ends, and the next waiter starts another.
async fn answered(
    timeout: Duration,
    request: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> bool {
    matches!(tokio::time::timeout(timeout, request).await, Ok(Ok(())))
}
