//! The circuit breaker of a Redis cache root, its fallback store and its recovery queue.
//!
//! # States
//!
//! - **Closed**: every command goes to Redis. The cost on the hit path is one atomic load
//!   before the command ([`Breaker::admit`]) and one after ([`Breaker::record`]).
//! - **Open**: after `breaker_failures` consecutive commands that could not reach Redis
//!   (connection refused or lost, command timeouts: [`Error::is_unavailable`]; an error Redis
//!   answers with, such as `WRONGTYPE`, proves it reachable and resets the count). Commands
//!   return [`Error::CircuitOpen`] at once, without touching the network. A background task
//!   (one per root, never more) sleeps `breaker_open_for`, then probes.
//! - **Half-open**: the task's probe (`PING` on a pooled connection: bb8 makes at most one
//!   connection attempt for it) is the only command in flight; everyone else is still turned
//!   away. If Redis answers, the recovery queue is replayed, then the breaker closes; if the
//!   probe or the replay fails, it opens again for `breaker_open_for`.
//!
//! All commands pass [`RedisBackend::run`], `run_pipe` and `run_script`, which call
//! [`Breaker::admit`] and [`Breaker::record`]: a capability that sends its commands through
//! them (locks, limiters, sessions, pattern invalidation) is covered without doing anything.
//!
//! # Fallback store
//!
//! From the moment the breaker opens until it closes, a bounded [`MemoryBackend`] (capacity
//! `memory_capacity`) serves the get-or-compute pipeline (`get_or_set`, `try_get_or_set`,
//! `#[cached]`): a key is computed once per process during an outage, then read from it. It is
//! dropped when the breaker closes, never written into Redis (another instance may have
//! written newer values there). Invalidations issued while it exists apply to it too. The
//! direct API (`get`, `set`, ...) does not use it: it returns [`Error::CircuitOpen`].
//!
//! # Recovery queue
//!
//! Invalidations that fail because Redis is unreachable or did not answer in time (deletes by
//! key, tag bumps, pattern invalidations, clears, and writes, which are replayed as deletes of
//! their keys: Redis may hold an older value) are kept in a bounded queue ([`QUEUE_CAPACITY`]
//! entries, newest per key, tag or pattern) and replayed when the breaker closes, before it
//! closes: no read is served from Redis before the replay finished.
//!
//! None is lost. One that does not fit escalates to a clear of the root (engine/clear.rs):
//! one more entry, whatever the number that did not fit, which moves the root's generation
//! when replayed, so that every value written before the replay reads as a miss. The root,
//! not a smaller scope: a full key does not tell which handle wrote it (the root's key
//! `ns:a:k` and namespace `ns:a`'s key `k` are the same bytes), and only the root's
//! generation is checked by every reader of it. Escalations are counted
//! (`StatsSnapshot::invalidations_escalated`). Only an entry Redis refuses when replayed (an
//! ACL denial) is dropped and counted (`invalidations_dropped`).
//!
//! Entries queued while the breaker is closed (a command that timed out with its outcome
//! unknown, the failures before the breaker opened) are replayed by a retry task, with
//! backoff, as long as the breaker stays closed (replaying one late removes at worst a value
//! written after it: a miss, never a stale read); once it opens, the recovery replays them.
//! An invalidation turned away just before the breaker closed, and queued just after the
//! replay, is replayed by its caller at once ([`RedisBackend::not_reached`]).
//!
//! # Hooks for other modules
//!
//! - [`Handle::breaker`](crate::engine::Handle::breaker): the breaker of a Redis cache (`None`
//!   on the memory backend).
//! - [`Breaker::state`] and [`Breaker::since_change`]: for `health()`.
//! - [`Breaker::opens`] (a counter bumped each time it opens, cheap to poll) and
//!   [`Breaker::subscribe`] (a `tokio::sync::watch` of [`BreakerStatus`]): for an L1 that
//!   must flush when Redis was out of reach (its invalidation feed had a gap).
//! - [`RedisBackend::not_reached`] with [`Breaker::queue_pattern`]: a pattern invalidation
//!   that failed, as the `SCAN MATCH` glob (full key prefix included); replayed as
//!   `SCAN MATCH` on every primary + the delete script:
//!   `redis.not_reached(&err, |b| b.queue_pattern(&glob)).await`.
//! - The fallback store of get-or-compute (`pipeline/fallback.rs`:
//!   [`Pipeline::fallback_for`](crate::pipeline::Pipeline::fallback_for),
//!   [`open_fallback`](crate::pipeline::Pipeline::open_fallback),
//!   [`compute_in_fallback`](crate::pipeline::Pipeline::compute_in_fallback) and
//!   [`put_in_fallback`](crate::pipeline::Pipeline::put_in_fallback)), called from a few marked
//!   lines of `pipeline/mod.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::base::codec;
use crate::base::error::{Error, Result};
use crate::base::settings::Config;
use crate::base::stats::StatsSnapshot;
use crate::store::memory::MemoryBackend;
use crate::store::redis::RedisBackend;

/// Invalidations kept while Redis is unreachable (distinct keys, tags and patterns).
pub(crate) const QUEUE_CAPACITY: usize = 10_000;

/// Keys per delete script, tags per pipeline, when replaying.
const REPLAY_CHUNK: usize = 100;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    /// Commands go to Redis.
    Closed,
    /// Commands are turned away; a probe comes after `open_for`.
    Open,
    /// The probe (and then the replay of the recovery queue) is running; commands are still
    /// turned away.
    HalfOpen,
}

impl BreakerState {
    const fn code(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// `closed`, `open` or `half_open`, for reports.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

const CLOSED: u8 = BreakerState::Closed.code();
const OPEN: u8 = BreakerState::Open.code();
const HALF_OPEN: u8 = BreakerState::HalfOpen.code();

/// What [`Breaker::subscribe`] publishes at each change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BreakerStatus {
    /// The state entered.
    pub(crate) state: BreakerState,
    /// How many times the breaker has opened so far (see [`Breaker::opens`]).
    pub(crate) opens: u64,
}

/// One invalidation waiting for Redis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Invalidation {
    /// Tombstone this full key (for the hold of the entry).
    Key(String),
    /// Bump this tag version key.
    Tag(String),
    /// Tombstone every key `SCAN MATCH` finds for this glob.
    Pattern(String),
    /// Move this generation key of a scope (engine/clear.rs): a clear, or the escalation of
    /// invalidations the queue could not hold.
    Clear(String),
}

/// What follows the root's prefix in a scope's generation key (engine/clear.rs). Known here
/// because the recovery queue escalates to a clear of the root.
pub(crate) const GENERATION_MARK: &str = "~clear:";

/// What the queue escalates to when it is full: a clear of the root, one move of its
/// generation.
fn escalation(config: &Config) -> Invalidation {
    let root = config.root_prefix();
    Invalidation::Clear(generation_key(&root, &root))
}

/// Where every generation key of the root `root` (`<namespace>:`) starts: what the
/// generations' tracking covers (engine/clear.rs).
pub(crate) fn generation_prefix(root: &str) -> String {
    let mut k = String::with_capacity(root.len() + GENERATION_MARK.len());
    k.push_str(root);
    k.push_str(GENERATION_MARK);
    k
}

/// The generation key of the scope `prefix` (`root:`, `root:ns:`, `root:@t:`, ...) of the
/// root `root`: `root:~clear:` then what the scope adds (`ns:`, `@t:`). `~` starts no user
/// key, so it never collides with a value; all of a root's share one prefix, which tracking
/// covers without covering values.
pub(crate) fn generation_key(root: &str, prefix: &str) -> String {
    let rest = prefix.strip_prefix(root).unwrap_or(prefix);
    let mut k = generation_prefix(root);
    k.push_str(rest);
    k
}

#[derive(Debug)]
struct Queued {
    seq: u64,
    hold: Duration,
}

/// Newest per key, tag or pattern; bounded.
#[derive(Debug, Default)]
struct Queue {
    items: HashMap<Invalidation, Queued>,
    next_seq: u64,
}

#[derive(Debug, Default)]
struct Counters {
    rejected: AtomicU64,
    fallback_hits: AtomicU64,
    replayed: AtomicU64,
    dropped: AtomicU64,
    escalated: AtomicU64,
}

/// The circuit breaker of one cache root; lives in its [`RedisBackend`].
pub(crate) struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    threshold: u32,
    open_for: Duration,
    hold: Duration,
    fallback_capacity: u64,
    epoch: Instant,
    /// Microseconds from `epoch` to the last change of state.
    changed_at_us: AtomicU64,
    opens: AtomicU64,
    status: watch::Sender<BreakerStatus>,
    /// The recovery task runs (at most one).
    recovering: AtomicBool,
    /// Held while invalidations queued with the breaker closed are replayed, by the retry
    /// task or a read that came first (`settle_before_read`).
    settle: tokio::sync::Mutex<()>,
    /// A replay under `settle` is under way: the queue may look empty while what it held is
    /// not in Redis yet.
    settling: AtomicBool,
    /// The retry task runs (at most one): it replays what was queued while the breaker
    /// stayed closed.
    retrying: AtomicBool,
    /// What an invalidation the queue cannot hold escalates to: a clear of the root (its
    /// generation moved on).
    escalation: Invalidation,
    /// The backend that owns this breaker, for its recovery task (a `Weak`, so that the task
    /// ends when the backend is dropped).
    home: Weak<RedisBackend>,
    fallback: RwLock<Option<Arc<MemoryBackend>>>,
    queue: Mutex<Queue>,
    queued: AtomicUsize,
    counters: Counters,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("failures", &self.failures.load(Ordering::Relaxed))
            .field("threshold", &self.threshold)
            .field("open_for", &self.open_for)
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Breaker {
    pub(crate) fn new(config: &Config, home: Weak<RedisBackend>) -> Self {
        Breaker {
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            threshold: config.breaker_failures,
            open_for: config.breaker_open_for,
            hold: config.invalidation_hold,
            fallback_capacity: config.memory_capacity,
            epoch: Instant::now(),
            changed_at_us: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            status: watch::channel(BreakerStatus {
                state: BreakerState::Closed,
                opens: 0,
            })
            .0,
            recovering: AtomicBool::new(false),
            settle: tokio::sync::Mutex::new(()),
            settling: AtomicBool::new(false),
            retrying: AtomicBool::new(false),
            escalation: escalation(config),
            home,
            fallback: RwLock::new(None),
            queue: Mutex::new(Queue::default()),
            queued: AtomicUsize::new(0),
            counters: Counters::default(),
        }
    }

    // ---- the command path ------------------------------------------------------------------

    /// Whether a command may go to Redis: `Ok` when closed (one atomic load), otherwise
    /// [`Error::CircuitOpen`] at once.
    #[inline]
    pub(crate) fn admit(&self, operation: &'static str) -> Result<()> {
        if self.state.load(Ordering::Acquire) == CLOSED {
            Ok(())
        } else {
            Err(self.reject(operation))
        }
    }

    #[cold]
    fn reject(&self, operation: &'static str) -> Error {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        // The task that probes may have died with the runtime that ran it.
        if !self.recovering.load(Ordering::Relaxed) {
            self.ensure_recovery();
        }
        Error::CircuitOpen { operation }
    }

    /// Counts the outcome of an admitted command: an unavailability failure, or proof that
    /// Redis answers (a success, or an error Redis sent).
    #[inline]
    pub(crate) fn record<T>(&self, outcome: &Result<T>) {
        match outcome {
            Err(e) if e.is_unavailable() => self.failure(),
            _ => {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.streak_ended();
                }
            }
        }
    }

    #[cold]
    fn streak_ended(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    #[cold]
    fn failure(&self) {
        if self.threshold == 0 {
            return;
        }
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n < self.threshold || self.state.load(Ordering::Acquire) != CLOSED {
            return;
        }
        // Counted before the state says so: whoever sees the breaker open (a call it turns
        // away, `state()`) sees the open counted too. Counted after, a caller turned away
        // could read `breaker_opened == 0` while this thread built the fallback store. A
        // failure that loses the race to open takes its count back.
        let opens = self.opens.fetch_add(1, Ordering::Relaxed) + 1;
        if self
            .state
            .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.opened(n, opens);
        } else {
            self.opens.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn opened(&self, failures: u32, opens: u64) {
        if let Ok(mut fallback) = self.fallback.write()
            && fallback.is_none()
        {
            *fallback = Some(Arc::new(MemoryBackend::new(self.fallback_capacity)));
        }
        self.changed(BreakerState::Open, opens);
        tracing::warn!(
            failures,
            open_for = ?self.open_for,
            "redis unreachable: circuit breaker open, operations answer without redis until a probe succeeds"
        );
        self.ensure_recovery();
    }

    fn changed(&self, state: BreakerState, opens: u64) {
        self.changed_at_us
            .store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.status.send_replace(BreakerStatus { state, opens });
    }

    // ---- observation -----------------------------------------------------------------------

    /// The current state.
    pub(crate) fn state(&self) -> BreakerState {
        BreakerState::from_code(self.state.load(Ordering::Acquire))
    }

    /// Time since the last change of state (since the cache was built, if none).
    pub(crate) fn since_change(&self) -> Duration {
        let at = Duration::from_micros(self.changed_at_us.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(at)
    }

    /// How many times the breaker has opened: a reader that remembers it sees an outage
    /// (possibly already over) as a change of this number.
    #[allow(dead_code)]
    pub(crate) fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

    /// Every change of state from now on (the current one is marked seen).
    #[allow(dead_code)]
    pub(crate) fn subscribe(&self) -> watch::Receiver<BreakerStatus> {
        self.status.subscribe()
    }

    /// The tombstone hold of invalidations replayed for failed writes.
    pub(crate) fn hold(&self) -> Duration {
        self.hold
    }

    /// Invalidations waiting for Redis.
    #[allow(dead_code)]
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// The counters `Cache::stats` reports.
    pub(crate) fn add_stats(&self, s: &mut StatsSnapshot) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.breaker_opened = self.opens();
        s.breaker_rejected = get(&self.counters.rejected);
        s.fallback_hits = get(&self.counters.fallback_hits);
        s.invalidations_replayed = get(&self.counters.replayed);
        s.invalidations_dropped = get(&self.counters.dropped);
        s.invalidations_escalated = get(&self.counters.escalated);
    }

    // ---- recovery queue --------------------------------------------------------------------

    /// Invalidations of `keys` that could not reach Redis: applied to the fallback store,
    /// queued for Redis. True if the breaker was closed by then.
    pub(crate) fn queue_keys(&self, keys: &[String], hold: Duration) -> bool {
        if let Some(fallback) = self.fallback() {
            let _ = fallback.delete(keys, &codec::tombstone(), hold);
        }
        self.enqueue(keys.iter().map(|k| Invalidation::Key(k.clone())), hold)
    }

    /// Tag bumps that could not reach Redis: applied to the fallback store, queued. True if
    /// the breaker was closed by then.
    pub(crate) fn queue_tags<K: AsRef<str>>(&self, tag_keys: &[K]) -> bool {
        if let Some(fallback) = self.fallback() {
            let keys: Vec<&str> = tag_keys.iter().map(AsRef::as_ref).collect();
            let _ = fallback.bump(&keys);
        }
        self.enqueue(
            tag_keys
                .iter()
                .map(|k| Invalidation::Tag(k.as_ref().to_owned())),
            self.hold,
        )
    }

    /// A pattern invalidation that could not reach Redis, as the glob `SCAN MATCH` takes (the
    /// full key prefix included): the fallback store is emptied (it cannot match patterns)
    /// and the pattern queued, to be replayed as `SCAN MATCH` (on every primary of a
    /// cluster) + the delete script. True if the breaker was closed by then. Call it through
    /// [`RedisBackend::not_reached`].
    pub(crate) fn queue_pattern(&self, glob: &str) -> bool {
        if let Ok(mut fallback) = self.fallback.write()
            && fallback.is_some()
        {
            *fallback = Some(Arc::new(MemoryBackend::new(self.fallback_capacity)));
        }
        self.enqueue(
            std::iter::once(Invalidation::Pattern(glob.to_owned())),
            self.hold,
        )
    }

    /// A clear that could not reach Redis (`generation_key`, engine/clear.rs): the fallback
    /// store is emptied (its entries record no generation) and the clear queued. True if the
    /// breaker was closed by then.
    pub(crate) fn queue_clear(&self, generation_key: &str) -> bool {
        if let Ok(mut fallback) = self.fallback.write()
            && fallback.is_some()
        {
            *fallback = Some(Arc::new(MemoryBackend::new(self.fallback_capacity)));
        }
        self.enqueue(
            std::iter::once(Invalidation::Clear(generation_key.to_owned())),
            self.hold,
        )
    }

    /// Queues `items`; true if the breaker was closed by then (see
    /// [`RedisBackend::not_reached`] for what that means).
    pub(crate) fn enqueue(
        &self,
        items: impl Iterator<Item = Invalidation>,
        hold: Duration,
    ) -> bool {
        let mut escalated = 0u64;
        let closed = {
            let mut q = lock(&self.queue);
            for item in items {
                q.next_seq += 1;
                let seq = q.next_seq;
                let len = q.items.len();
                match q.items.get_mut(&item) {
                    Some(queued) => *queued = Queued { seq, hold },
                    // Clears are not counted against the capacity: there are as many as
                    // scopes cleared, and one is what the others escalate to.
                    None if len < QUEUE_CAPACITY
                        || matches!(item, Invalidation::Clear(_))
                        || item == self.escalation =>
                    {
                        q.items.insert(item, Queued { seq, hold });
                    }
                    None => {
                        // Does not fit: covered by a clear of the root, queued as the newest
                        // entry (it must come after what it covers).
                        escalated += 1;
                        q.items
                            .insert(self.escalation.clone(), Queued { seq, hold });
                    }
                }
            }
            self.queued.store(q.items.len(), Ordering::Relaxed);
            // Read under the lock: closing happens under it too, so an entry is either seen
            // by the replay before closing, or its caller learns that it came too late.
            self.state.load(Ordering::Acquire) == CLOSED
        };
        if escalated > 0 {
            let before = self
                .counters
                .escalated
                .fetch_add(escalated, Ordering::Relaxed);
            if before == 0 {
                tracing::warn!(
                    escalated,
                    capacity = QUEUE_CAPACITY,
                    "recovery queue full: further invalidations escalate to a clear of the whole cache root, replayed when redis answers (every entry written before then will miss once)"
                );
            }
        }
        closed
    }

    /// Everything queued, oldest first.
    fn take_all(&self) -> Vec<(Invalidation, Duration)> {
        let mut q = lock(&self.queue);
        let mut items: Vec<_> = q.items.drain().collect();
        self.queued.store(0, Ordering::Relaxed);
        drop(q);
        items.sort_unstable_by_key(|(_, queued)| queued.seq);
        items
            .into_iter()
            .map(|(item, queued)| (item, queued.hold))
            .collect()
    }

    /// Puts back what a replay could not apply, unless something newer came meanwhile.
    fn put_back(&self, items: impl IntoIterator<Item = (Invalidation, Duration)>) {
        let mut q = lock(&self.queue);
        for (item, hold) in items {
            q.items.entry(item).or_insert(Queued { seq: 0, hold });
        }
        self.queued.store(q.items.len(), Ordering::Relaxed);
    }

    /// Applies the queue through `redis`. What fails because Redis is unreachable is put
    /// back (and the error returned); an entry Redis refuses (an ACL denial, a tag version
    /// key holding something else) is dropped and counted, so that it cannot keep the
    /// breaker open.
    pub(crate) async fn replay(&self, redis: &RedisBackend, guarded: bool) -> Result<u64> {
        let items = self.take_all();
        let mut done = 0u64;
        let mut rest = items.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<_> = rest.by_ref().take(REPLAY_CHUNK).collect();
            let mut refused = 0u64;
            let outcome = match redis.replay(&chunk, guarded).await {
                Err(e) if !e.is_unavailable() => {
                    // Which entry? One at a time, then.
                    let mut outcome = Ok(());
                    for item in &chunk {
                        match redis.replay(std::slice::from_ref(item), guarded).await {
                            Err(e) if e.is_unavailable() => {
                                outcome = Err(e);
                                break;
                            }
                            Err(e) => {
                                refused += 1;
                                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(error = %e, "redis refused a queued invalidation; dropped");
                            }
                            Ok(()) => {}
                        }
                    }
                    outcome
                }
                outcome => outcome,
            };
            if let Err(e) = outcome {
                self.put_back(chunk.into_iter().chain(rest));
                self.counters.replayed.fetch_add(done, Ordering::Relaxed);
                return Err(e);
            }
            done += chunk.len() as u64 - refused;
        }
        self.counters.replayed.fetch_add(done, Ordering::Relaxed);
        Ok(done)
    }

    // ---- recovery --------------------------------------------------------------------------

    /// Starts the recovery task unless it runs.
    fn ensure_recovery(&self) {
        let home = self.home.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self
            .recovering
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        runtime.spawn(recover(home));
    }

    /// Before a read or a write with the breaker closed: invalidations queued in this process
    /// (a command that failed, its outcome unknown) are applied first, so that this process
    /// never reads a value it failed to invalidate, and a replayed invalidation never lands
    /// after (and removes) a newer write of the same key. One atomic load when nothing is
    /// queued; otherwise the command waits for the replay (its own, or the retry task's), and
    /// fails as the replay does. The replay's own commands do not come through here.
    #[inline]
    pub(crate) async fn settle_before_read(&self, redis: &RedisBackend) -> Result<()> {
        if self.queued.load(Ordering::Acquire) == 0 && !self.settling.load(Ordering::Acquire) {
            return Ok(());
        }
        // Boxed: the replay's state (~2.7 KB) would otherwise be part of the future of every
        // read, which is moved whole each time a caller builds and awaits it.
        Box::pin(self.settle_queued(redis)).await
    }

    /// Replays what is queued, under `settle`, if the breaker is closed (when it is not, the
    /// recovery replays it before closing, and reads are turned away meanwhile).
    async fn settle_queued(&self, redis: &RedisBackend) -> Result<()> {
        let _settling = self.settle.lock().await;
        if self.state() != BreakerState::Closed || self.queued.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        self.settling.store(true, Ordering::Release);
        let replayed = self.replay(redis, true).await;
        self.settling.store(false, Ordering::Release);
        replayed.map(drop)
    }

    /// Starts the retry task unless it runs: for what was queued while the breaker is closed
    /// (a command that timed out, its outcome unknown), which no recovery would replay.
    pub(crate) fn ensure_retry(&self) {
        let home = self.home.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self
            .retrying
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        runtime.spawn(retry(home));
    }

    /// Closes if nothing is queued (under the queue's lock, see `enqueue`); false otherwise.
    fn close_if_drained(&self) -> bool {
        let q = lock(&self.queue);
        if !q.items.is_empty() {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        self.state.store(CLOSED, Ordering::Release);
        drop(q);
        self.changed(BreakerState::Closed, self.opens());
        if let Ok(mut fallback) = self.fallback.write() {
            *fallback = None;
        }
        true
    }

    fn reopen(&self) {
        self.state.store(OPEN, Ordering::Release);
        self.changed(BreakerState::Open, self.opens());
    }

    /// The fallback store, while the breaker is not closed.
    pub(crate) fn fallback(&self) -> Option<Arc<MemoryBackend>> {
        self.fallback.read().ok().and_then(|f| f.clone())
    }

    /// A fallback hit.
    pub(crate) fn fallback_hit(&self) {
        self.counters.fallback_hits.fetch_add(1, Ordering::Relaxed);
    }
}

/// Clears one of the breaker's "task running" flags when the task ends, however it ends
/// (including dropped with its runtime).
struct Flag(Weak<RedisBackend>, fn(&Breaker) -> &AtomicBool);

impl Drop for Flag {
    fn drop(&mut self) {
        if let Some(redis) = self.0.upgrade() {
            (self.1)(redis.breaker()).store(false, Ordering::Release);
        }
    }
}

/// The first pause of the retry task, doubled after each failed replay up to `open_for`.
const RETRY_FIRST: Duration = Duration::from_millis(50);

/// The retry task: replays what was queued while the breaker stayed closed, with backoff,
/// until the queue is empty or the breaker opens (the recovery replays it then).
async fn retry(home: Weak<RedisBackend>) {
    let mut wait = RETRY_FIRST;
    loop {
        tokio::time::sleep(wait).await;
        let Some(redis) = home.upgrade() else { return };
        let b = redis.breaker();
        let done = b.state() != BreakerState::Closed
            || b.queued() == 0
            || (b.settle_queued(&redis).await.is_ok() && b.queued() == 0);
        if done {
            b.retrying.store(false, Ordering::Release);
            // Queued after the last look, while the flag still said "running": not left
            // behind.
            if b.state() == BreakerState::Closed && b.queued() > 0 {
                b.ensure_retry();
            }
            return;
        }
        wait = (wait * 2).min(b.open_for.max(RETRY_FIRST));
    }
}

/// The recovery task: after `open_for`, probe; on success replay the queue, then close; on
/// failure open again. Ends when the breaker closes or the cache is dropped.
async fn recover(home: Weak<RedisBackend>) {
    let _running = Flag(home.clone(), |b| &b.recovering);
    loop {
        let wait = {
            let Some(redis) = home.upgrade() else { return };
            let b = redis.breaker();
            if b.state() == BreakerState::Closed {
                return;
            }
            b.open_for.saturating_sub(b.since_change())
        };
        tokio::time::sleep(wait).await;
        let Some(redis) = home.upgrade() else { return };
        let b = redis.breaker();
        b.state.store(HALF_OPEN, Ordering::Release);
        b.changed(BreakerState::HalfOpen, b.opens());
        let outage = b.epoch.elapsed();
        let outcome = match redis.probe().await {
            Ok(()) => b.replay(&redis, false).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(mut replayed) => {
                // Entries queued during the replay are replayed before closing too.
                loop {
                    if b.close_if_drained() {
                        tracing::info!(
                            replayed,
                            probe_took = ?b.epoch.elapsed().saturating_sub(outage),
                            "redis answers again: circuit breaker closed"
                        );
                        return;
                    }
                    match b.replay(&redis, false).await {
                        Ok(n) => replayed += n,
                        Err(_) => break,
                    }
                }
                b.reopen();
            }
            Err(e) => {
                tracing::debug!(error = %e, "circuit breaker probe failed, open again");
                b.reopen();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::fallback::{encode_for_fallback, fallback_value};

    fn breaker(threshold: u32) -> Breaker {
        let config = Config {
            breaker_failures: threshold,
            ..Config::default()
        };
        Breaker::new(&config, Weak::new())
    }

    fn down() -> Result<()> {
        Err(Error::Timeout {
            operation: "GET",
            after: Duration::from_secs(1),
        })
    }

    #[test]
    fn opens_after_consecutive_unavailability_failures_only() {
        let b = breaker(3);
        b.record(&down());
        b.record(&down());
        b.record(&Ok(()));
        b.record(&down());
        b.record(&down());
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        let answered: Result<()> = Err(Error::WrongKind {
            operation: "incr",
            key: "k".into(),
        });
        b.record(&answered);
        b.record(&down());
        b.record(&down());
        assert_eq!(b.state(), BreakerState::Closed, "an answered error too");
        b.record(&down());
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.opens(), 1);
        assert!(matches!(
            b.admit("GET"),
            Err(Error::CircuitOpen { operation: "GET" })
        ));
        assert!(b.fallback().is_some(), "a fallback store while open");
        assert_eq!(b.counters.rejected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_call_turned_away_sees_the_open_counted() {
        // The opening thread builds the fallback store between flipping the state and
        // telling the watchers; a caller turned away meanwhile must still read the open in
        // the counter (stats, the L1's outage check). Raced on two threads, many times.
        for _ in 0..300 {
            let b = Arc::new(breaker(1));
            let caller = {
                let b = b.clone();
                std::thread::spawn(move || {
                    while b.admit("GET").is_ok() {
                        std::hint::spin_loop();
                    }
                    b.opens()
                })
            };
            b.record(&down());
            assert_eq!(caller.join().expect("the caller"), 1);
        }
    }

    #[test]
    fn zero_failures_never_opens() {
        let b = breaker(0);
        for _ in 0..100 {
            b.record(&down());
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit("GET").is_ok());
    }

    #[test]
    fn the_queue_keeps_the_newest_per_key_and_is_bounded() {
        let b = breaker(1);
        b.record(&down());
        b.queue_keys(&["a".into(), "b".into()], Duration::from_secs(1));
        b.queue_tags(&["t"]);
        b.queue_keys(&["a".into()], Duration::from_secs(2));
        b.queue_pattern("ns:user:*");
        assert_eq!(b.queued(), 4);
        let items = b.take_all();
        assert_eq!(
            items,
            vec![
                (Invalidation::Key("b".into()), Duration::from_secs(1)),
                (Invalidation::Tag("t".into()), b.hold),
                (Invalidation::Key("a".into()), Duration::from_secs(2)),
                (Invalidation::Pattern("ns:user:*".into()), b.hold),
            ],
            "oldest first, one per key"
        );
        let many: Vec<String> = (0..QUEUE_CAPACITY + 5).map(|i| format!("k{i}")).collect();
        b.queue_keys(&many, Duration::from_secs(1));
        assert_eq!(
            b.queued(),
            QUEUE_CAPACITY + 1,
            "full, and one clear of the root"
        );
        assert_eq!(b.counters.escalated.load(Ordering::Relaxed), 5);
        assert_eq!(b.counters.dropped.load(Ordering::Relaxed), 0);
        b.put_back(vec![(Invalidation::Key("k0".into()), Duration::ZERO)]);
        assert_eq!(b.queued(), QUEUE_CAPACITY + 1, "a newer entry is kept");
        let items = b.take_all();
        let root = Config::default().root_prefix();
        assert_eq!(
            items.last().map(|(item, _)| item),
            Some(&Invalidation::Clear(generation_key(&root, &root))),
            "the escalation, a clear of the root, comes after what it covers"
        );
        assert_eq!(generation_key(&root, &root), format!("{root}~clear:"));
        assert_eq!(
            generation_key(&root, &format!("{root}a:@t:")),
            format!("{root}~clear:a:@t:")
        );
    }

    #[test]
    fn the_fallback_store_follows_invalidations() {
        let b = breaker(1);
        b.record(&down());
        let store = b.fallback().expect("open");
        let tags = vec!["ns:~tag:t".to_owned()];
        let versions: Vec<u64> = store
            .create_versions(&tags, 7)
            .expect("versions")
            .into_iter()
            .map(|v| v.unwrap_or(0))
            .collect();
        let bytes = encode_for_fallback(&5u32, None, &tags, &versions, 0, 4096).expect("encodes");
        store.set("ns:k", bytes.clone(), None).expect("set");
        store.set("ns:j", bytes, None).expect("set");
        let read = |key: &str| {
            let (bytes, versions) = store.get_with_versions(key, &tags).expect("read");
            bytes.and_then(|b| fallback_value::<u32>(&b, &tags, &versions))
        };
        assert_eq!(read("ns:k"), Some(5));
        b.queue_keys(&["ns:k".into()], Duration::from_secs(1));
        assert_eq!(read("ns:k"), None, "deleted");
        assert_eq!(read("ns:j"), Some(5));
        b.queue_tags(&tags);
        assert_eq!(read("ns:j"), None, "its tag bumped");
    }
}
