//! The L1 near cache: decoded values kept in this process, in front of Redis, kept coherent by
//! Redis itself through server-assisted client tracking (ARCHITECTURE.md §4, "The L1 and
//! server-assisted tracking").
//!
//! - Off by default; on with [`CacheBuilder::local_cache`](crate::CacheBuilder::local_cache)
//!   (entries), [`CacheBuilder::local_cache_max_bytes`](crate::CacheBuilder::local_cache_max_bytes)
//!   and [`CacheBuilder::local_ttl`](crate::CacheBuilder::local_ttl), or `CACHE_LOCAL_CAPACITY`
//!   / `CACHE_LOCAL_MAX_BYTES` / `CACHE_LOCAL_TTL`. One L1 per cache root, on the Redis backend
//!   only (the memory backend is already in process).
//! - An entry holds the envelope as read from Redis and, once a reader that can clone the type
//!   asked for it (`#[cached]` functions whose value type is `Clone`), the decoded value,
//!   type-erased and checked by type: such a hit clones, without parsing JSON. Other readers
//!   (`get`, `lookup`, `get_or_set`) decode the envelope, still without a round trip.
//!   Encrypted entries keep no decoded value: each hit goes through the reading handle's
//!   keyring, as a Redis read does (a handle without the key gets a miss).
//! - Budget: bounded in bytes by [`Entry::charge`] (the stored bytes, a decoded copy weighed
//!   as the decompressed payload, the key, the tags and a fixed per-entry overhead), and in
//!   entries (each entry weighs at least `budget / entries`).
//! - Lifetime: the shorter of `local_ttl` and what is left of the Redis TTL (by the writer's
//!   clock, from the envelope).
//! - Tags: an entry records the versions of its tags; the L1 keeps the versions of the tags it
//!   has seen, so a tag check on an L1 hit costs no round trip. A change of a tag's version
//!   key (a bump, by anyone) forgets the tag: the entries that recorded it no longer serve.
//! - Feed: a RESP3 connection per node holding keys, with `CLIENT TRACKING on BCAST PREFIX
//!   <root prefix>`; every change of a key under the root by any client arrives as a push and
//!   drops it (a null one, `FLUSHDB`/`FLUSHALL`, drops everything). Writes publish nothing,
//!   except pattern invalidations, whose pattern other instances also record in their pattern
//!   log (a computation there must not store a key the pattern matches); those go on the
//!   channel `<namespace>:~l1`, which the tracking connections subscribe to. The instance
//!   that writes drops its own entries before its call returns, and asks for a `PING` on its
//!   tracking connections (a barrier: its own pushes are applied once it is answered) that
//!   its later reads of those keys wait for (see [`Barriers`]).
//! - Gaps: a lost tracking connection, an open breaker, a failover or a change of a cluster's
//!   primaries. The L1 serves nothing until tracking is on, and is emptied whenever it is
//!   lost and again when it is back, before it serves again. From the moment the breaker
//!   opens the L1 neither serves nor fills (checked on every read, so a reader never gets
//!   ahead of the feed task); it serves again only once the breaker closed (after the
//!   recovery queue's replay) and tracking is re-established.
//! - Reads that race an invalidation: an entry read from Redis is kept only if no invalidation
//!   of its key (or of a tag, pattern, or a flush) arrived between the read and the insert.
//!   The check and the insert are one step for invalidations (the fill gate): once an
//!   invalidation is applied, no read that began before it puts the old value back, not even
//!   for a moment.

use std::any::Any;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::sync::Cache as Moka;
use serde::de::DeserializeOwned;

use crate::base::codec;
use crate::base::settings::Config;
use crate::engine::feed::{Feed, Subscription};
use crate::engine::{Handle, Lookup, Shared, Source};
use crate::store::Backend;
use crate::store::breaker::{Breaker, BreakerState};

/// Invalidation stripes: an invalidation by key moves its stripe only, so reads of other
/// keys still fill the L1.
const STRIPES: usize = 256;

/// What one L1 entry holds.
pub(crate) struct Entry {
    bytes: Bytes,
    /// The decoded value, for readers that can clone it: `(fingerprint, value)`.
    decoded: OnceLock<(u64, Arc<dyn Any + Send + Sync>)>,
    tags: Box<[(String, u64)]>,
    created_at_ms: u64,
    expires_at: Instant,
    /// The stored bytes are encrypted: each hit decrypts them with the reader's keyring,
    /// and no decoded value is kept.
    encrypted: bool,
    /// What the entry weighs in the byte budget (see [`Entry::charge`]).
    charge: u32,
}

/// What an entry costs beyond its bytes: the `Entry` and its `Arc`, the key's `String`,
/// moka's node, its place in the access and write orders and in the timer wheel (moka keeps
/// the key twice, as an `Arc`). Measured with the L1 byte budget test (tests/tests/l1_budget):
/// a few hundred bytes an entry; counted generously.
const ENTRY_OVERHEAD: usize = 320;

impl Entry {
    /// The bytes the entry holds, counted honestly rather than exactly (a decoded value's
    /// heap size cannot be known): the stored bytes, the key (twice: moka keeps an `Arc` of
    /// it in its orders too), the tags, and, for an entry that may keep a decoded copy (not
    /// encrypted), the payload's decompressed length, charged from the insert whether or not
    /// a reader ever decodes it. Serialized JSON is about as long as the heap a decoded value
    /// takes (strings and byte arrays exactly; numbers and small structs less).
    fn charge(key: &str, bytes: &Bytes, env: &codec::Envelope<'_>, tags: &[(String, u64)]) -> u32 {
        let decoded = if env.is_encrypted() {
            0
        } else {
            env.plain_payload_len()
        };
        let tags: usize = tags.iter().map(|(t, _)| t.len() + 32).sum();
        let total = ENTRY_OVERHEAD + 2 * key.len() + bytes.len() + decoded + tags;
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// A value the L1 answered with. Its age is worked out only for a caller that asks for it
/// ([`into_lookup`](Self::into_lookup)): a `#[cached]` hit does not, and a clock read is a
/// few percent of an L1 hit.
pub(crate) struct LocalHit<T> {
    pub(crate) value: T,
    created_at_ms: u64,
}

impl<T> LocalHit<T> {
    pub(crate) fn into_lookup(self) -> Lookup<T> {
        Lookup::Hit {
            value: self.value,
            source: Source::Local,
            age: Duration::from_millis(codec::now_ms().saturating_sub(self.created_at_ms)),
        }
    }
}

/// What a reader noted before its backend read, to tell whether an invalidation arrived
/// before it inserts what it read.
#[derive(Clone, Copy)]
pub(crate) struct Mark {
    epoch: u64,
    stripe: u64,
    /// The barrier (see [`Barriers`]) that must be answered before a read of this key may
    /// fill: this process wrote a key of the stripe and its own push may still be on its way.
    /// 0: none.
    waits_for: u64,
}

/// The barriers that follow this process's writes: a `PING` on the tracking connections,
/// answered once Redis's pushes about every write that returned before it was sent have been
/// applied (ARCHITECTURE.md §4). A write does not wait for its own: it asks for one and
/// returns, and a later read of a key in a stripe it wrote waits for it before taking its
/// mark (`Local::settle`), so the write's own push, arriving late, does not drop what that
/// read fills. Requests coalesce: one `PING` at a time answers every write that returned
/// before it was sent.
struct Barriers {
    /// The last barrier asked for.
    requested: AtomicU64,
    /// The last barrier answered (or given up on: see `run_barriers`).
    answered: tokio::sync::watch::Sender<u64>,
    /// For each stripe, the barrier a read must wait for (answered once `answered` reaches it).
    owed: Box<[AtomicU64]>,
    /// A `run_barriers` task is on its way.
    running: AtomicBool,
}

pub(crate) struct Local {
    entries: Moka<String, Arc<Entry>>,
    /// Current version of each tag seen here.
    tags: Moka<String, Arc<AtomicU64>>,
    /// Moved by invalidations of more than one key: tags, patterns, flushes.
    epoch: AtomicU64,
    stripes: Box<[AtomicU64]>,
    /// Fills hold it shared from their check of the mark to their insert; invalidations hold
    /// it exclusively while they move the epoch or a stripe. So a fill either inserted before
    /// the move (and the invalidation's removal that follows drops its entry) or sees the
    /// move and keeps nothing. Without it, an entry inserted just after an invalidation
    /// was visible until the fill's second look (a reader preempted between the two served
    /// the old value to others meanwhile). Hits never take it.
    fill_gate: std::sync::RwLock<()>,
    barriers: Barriers,
    /// How long a read waits for a barrier (the command timeout).
    barrier_wait: Duration,
    hasher: std::collections::hash_map::RandomState,
    /// True while the feed is subscribed and the circuit breaker is closed: only then does
    /// the L1 serve and fill.
    healthy: AtomicBool,
    /// The breaker's open count when the L1 last became healthy: an outage since (even one
    /// already over, that the feed task did not see yet) stops the L1 from serving.
    opens_seen: AtomicU64,
    feed_started: AtomicBool,
    /// The tracking connections while tracking is on, for writers' barriers.
    tracking: std::sync::RwLock<Option<Arc<crate::store::redis::Tracking>>>,
    /// `tracking` holds connections: what every write asks (a load, where the lock's read
    /// side is two atomic writes to a line all writers share).
    tracking_on: AtomicBool,
    ttl: Duration,
    /// The root's prefix (`<namespace>:`): what tracking covers, values and tag versions.
    prefix: String,
    /// Tells this instance's pattern messages from others'.
    instance: u64,
    channel: String,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Local {
    /// The L1 of a new cache root, if configured (and the backend is Redis).
    pub(crate) fn for_backend(backend: &Backend, config: &Config) -> Option<Arc<Local>> {
        if config.local_capacity == 0 || !matches!(backend, Backend::Redis(_)) {
            return None;
        }
        let hasher = std::collections::hash_map::RandomState::new();
        let budget = config.local_max_bytes.max(1);
        // Each entry weighs at least its share of the budget for the entry bound to hold too.
        let least = u32::try_from(budget / config.local_capacity).unwrap_or(u32::MAX);
        Some(Arc::new(Local {
            entries: Moka::builder()
                .max_capacity(budget)
                .weigher(move |_key: &String, entry: &Arc<Entry>| entry.charge.max(least))
                .time_to_live(config.local_ttl)
                .build(),
            tags: Moka::builder()
                .max_capacity(config.local_capacity.saturating_mul(2).max(1024))
                .build(),
            epoch: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            fill_gate: std::sync::RwLock::new(()),
            barriers: Barriers {
                requested: AtomicU64::new(0),
                answered: tokio::sync::watch::Sender::new(0),
                owed: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
                running: AtomicBool::new(false),
            },
            barrier_wait: config.command_timeout,
            instance: hasher.hash_one(codec::now_us()) | 1,
            hasher,
            healthy: AtomicBool::new(false),
            opens_seen: AtomicU64::new(0),
            feed_started: AtomicBool::new(false),
            tracking: std::sync::RwLock::new(None),
            tracking_on: AtomicBool::new(false),
            ttl: config.local_ttl,
            prefix: config.root_prefix(),
            channel: format!("{}:~l1", config.namespace),
        }))
    }

    fn stripe_index(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % STRIPES
    }

    fn mark(&self, key: &str) -> Mark {
        let index = self.stripe_index(key);
        let epoch = self.epoch.load(Ordering::SeqCst);
        let stripe = self.stripes[index].load(Ordering::SeqCst);
        let owed = self.barriers.owed[index].load(Ordering::SeqCst);
        let waits_for = if owed != 0 && owed > *self.barriers.answered.borrow() {
            owed
        } else {
            0
        };
        Mark {
            epoch,
            stripe,
            waits_for,
        }
    }

    /// The mark to read `key` with: `mark` itself, or, when this process wrote a key of its
    /// stripe and the barrier after that write is not answered yet, a new one taken once it
    /// is (bounded by the command timeout; a wait given up on costs at most a dropped fill,
    /// never an old value).
    pub(crate) async fn settle(&self, key: &str, mark: Mark) -> Mark {
        if mark.waits_for == 0 {
            return mark;
        }
        // Boxed: the wait (a timer, a receiver) would otherwise be part of the state of every
        // read's future, hits included, which is moved and initialized on every call.
        Box::pin(self.barrier_answered(mark.waits_for)).await;
        self.mark(key)
    }

    /// Waits until barrier `seq` is answered, for at most the command timeout.
    async fn barrier_answered(&self, seq: u64) {
        let mut answered = self.barriers.answered.subscribe();
        let _ = tokio::time::timeout(self.barrier_wait, answered.wait_for(|a| *a >= seq)).await;
    }

    /// Drops keys this process wrote, each stripe owing a barrier first (see [`Barriers`]):
    /// a read that misses them from now on waits for it. True when a `run_barriers` task
    /// must be started.
    fn drop_written<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> bool {
        let seq = self.barriers.requested.fetch_add(1, Ordering::SeqCst) + 1;
        for key in keys {
            let index = self.stripe_index(key);
            self.barriers.owed[index].fetch_max(seq, Ordering::SeqCst);
            self.drop_key(key, index);
        }
        !self.barriers.running.swap(true, Ordering::SeqCst)
    }

    /// Moves the epoch: every fill whose mark predates this call keeps nothing, from the
    /// moment it returns (see `fill_gate`).
    fn bump_epoch(&self) {
        let _exclusive = self.fill_gate.write().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Drops `key` (whose stripe is `index`): as [`bump_epoch`](Self::bump_epoch) for the
    /// fills of its stripe only, then the entry.
    fn drop_key(&self, key: &str, index: usize) {
        {
            let _exclusive = self.fill_gate.write().unwrap_or_else(|p| p.into_inner());
            self.stripes[index].fetch_add(1, Ordering::SeqCst);
        }
        self.entries.invalidate(key);
    }

    fn unchanged(&self, key: &str, mark: Mark) -> bool {
        self.epoch.load(Ordering::SeqCst) == mark.epoch
            && self.stripes[self.stripe_index(key)].load(Ordering::SeqCst) == mark.stripe
    }

    /// True when the L1 may serve and fill: its feed is subscribed, and the circuit breaker
    /// (`None`: no breaker) is closed and has not opened since the L1 last became healthy
    /// (the feed task flushes on an outage, but a reader must not get ahead of it).
    fn serving(&self, breaker: Option<&Breaker>) -> bool {
        self.healthy.load(Ordering::Acquire)
            && breaker.is_none_or(|b| {
                b.state() == BreakerState::Closed
                    && b.opens() == self.opens_seen.load(Ordering::Acquire)
            })
    }

    /// A live entry whose tags still have the versions it recorded.
    fn get(&self, key: &str, breaker: Option<&Breaker>) -> Option<Arc<Entry>> {
        if !self.serving(breaker) {
            return None;
        }
        let entry = self.entries.get(key)?;
        if entry.expires_at <= Instant::now() {
            return None;
        }
        for (tag, version) in entry.tags.iter() {
            match self.tags.get(tag) {
                Some(current) if current.load(Ordering::SeqCst) == *version => {}
                _ => return None,
            }
        }
        Some(entry)
    }

    /// Keeps what a read found, unless an invalidation arrived since `mark`.
    fn fill(
        &self,
        key: &str,
        bytes: &Bytes,
        mark: Mark,
        decoded: Option<(u64, Arc<dyn Any + Send + Sync>)>,
        breaker: Option<&Breaker>,
    ) {
        if !self.serving(breaker) {
            return;
        }
        let Ok(env) = codec::parse(bytes) else {
            return; // tombstones, counters, values written by others: not kept
        };
        let now_ms = codec::now_ms();
        let left = match env.expires_at_ms {
            0 => self.ttl,
            at if at <= now_ms => return,
            at => self.ttl.min(Duration::from_millis(at - now_ms)),
        };
        let tags: Box<[(String, u64)]> = env.tags().map(|(k, v)| (k.to_owned(), v)).collect();
        let entry = Entry {
            charge: Entry::charge(key, bytes, &env, &tags),
            bytes: bytes.clone(),
            decoded: OnceLock::new(),
            tags,
            created_at_ms: env.created_at_ms,
            expires_at: Instant::now() + left,
            encrypted: env.is_encrypted(),
        };
        if let Some(d) = decoded.filter(|_| !entry.encrypted) {
            let _ = entry.decoded.set(d);
        }
        // From the check to the insert, no invalidation moves the marks (see `fill_gate`).
        let _shared = self.fill_gate.read().unwrap_or_else(|p| p.into_inner());
        if !self.unchanged(key, mark) {
            return;
        }
        for (tag, version) in entry.tags.iter() {
            let current = self
                .tags
                .get_with_by_ref(tag.as_str(), || Arc::new(AtomicU64::new(0)));
            current.fetch_max(*version, Ordering::SeqCst);
        }
        self.entries.insert(key.to_owned(), Arc::new(entry));
    }

    /// Drops keys (this instance's writes while tracking is off, and the feed's messages).
    fn invalidate_keys<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        for key in keys {
            self.drop_key(key, self.stripe_index(key));
        }
    }

    /// Moves tags to (at least) the versions given.
    fn invalidate_tags<'k>(&self, tags: impl IntoIterator<Item = (&'k str, u64)>) {
        self.bump_epoch();
        for (tag, version) in tags {
            let current = self
                .tags
                .get_with_by_ref(tag, || Arc::new(AtomicU64::new(0)));
            current.fetch_max(version, Ordering::SeqCst);
        }
    }

    /// Drops every entry under `prefix` that `glob` matches.
    fn invalidate_glob(&self, glob: &str) {
        self.bump_epoch();
        let doomed: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(k, _)| crate::base::glob::glob_match(glob.as_bytes(), k.as_bytes()))
            .map(|(k, _)| k)
            .collect();
        for key in doomed {
            self.entries.invalidate(key.as_str());
        }
    }

    /// A key that tracking reported changed (by anyone): a value's key is dropped; a tag's
    /// version key forgets the tag, so the entries that recorded a version of it no longer
    /// serve (the new version is not in the message), and moves the epoch, so a read that
    /// raced the bump does not fill with the version it saw.
    fn invalidate_tracked(&self, key: &str) {
        // Possibly a tag's version key (a user key may contain the mark too: both are done).
        if crate::engine::tags::may_be_version_key(key) {
            self.bump_epoch();
            self.tags.invalidate(key);
        }
        self.invalidate_keys([key]);
    }

    fn flush(&self) {
        self.bump_epoch();
        self.entries.invalidate_all();
        self.tags.invalidate_all();
    }
}

impl Handle {
    pub(crate) fn without_local_cache(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
            scope: Arc::new(crate::engine::Scope {
                prefix: self.scope.prefix.clone(),
                default_ttl: self.scope.default_ttl,
                encryption: self.scope.encryption.clone(),
                stats: self.scope.stats.clone(),
                local: false,
                generations: self.scope.generations.clone(),
                generation_cells: self.scope.generation_cells.clone(),
            }),
        }
    }

    /// Waits until every change Redis made before this call has reached this instance's
    /// scopes' generations (clear.rs) and its L1 (a barrier on its tracking connections; at
    /// once without an L1 or while it does not serve).
    pub(crate) async fn sync_local_cache(&self) {
        self.sync_generations().await; // clear.rs
        if let Some(local) = self.shared.local.as_deref() {
            own_pushes_applied(&self.shared.backend, local).await;
        }
    }

    pub(crate) fn local_cache_serving(&self) -> bool {
        match &self.shared.local {
            Some(local) if self.scope.local => {
                self.ensure_feed(local);
                local.serving(self.breaker())
            }
            _ => false,
        }
    }

    /// The L1, when reads through this handle use it; starts the feed on first use.
    pub(crate) fn local(&self) -> Option<&Local> {
        let local = self.shared.local.as_deref().filter(|_| self.scope.local)?;
        self.ensure_feed(local);
        Some(local)
    }

    pub(crate) fn ensure_feed(&self, local: &Local) {
        if local.feed_started.load(Ordering::Relaxed)
            || local.feed_started.swap(true, Ordering::SeqCst)
        {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let timeout = self.shared.config.connect_timeout;
                rt.spawn(crate::engine::feed::run(
                    Arc::downgrade(&self.shared),
                    timeout,
                    &L1_FEED,
                ));
            }
            // No runtime here: try again from the next read that has one.
            Err(_) => local.feed_started.store(false, Ordering::SeqCst),
        }
    }

    /// An L1 read: the mark to fill with after a backend read on a miss, or the value.
    pub(crate) fn local_read<T: DeserializeOwned + 'static>(
        &self,
        local: &Local,
        full: &str,
        fingerprint: u64,
        clone: impl Fn(&T) -> Option<T>,
        keep: impl Fn(&T) -> Option<Arc<dyn Any + Send + Sync>>,
    ) -> Result<LocalHit<T>, Mark> {
        // The mark is taken on a miss only, still before the backend read it guards.
        let Some(entry) = local.get(full, self.breaker()) else {
            self.shared.stats.local_miss();
            return Err(local.mark(full));
        };
        // The decoded value is kept for plain entries read by handles without encryption
        // only: an encrypted entry is decrypted with the reading handle's keyring on every
        // hit (a handle with another key, or none, must not get what it cannot decrypt).
        let same_crypto = !entry.encrypted && self.scope.encryption.is_none();
        if let Some((fp, any)) = entry.decoded.get().filter(|_| same_crypto)
            && *fp == fingerprint
            && let Some(value) = any.downcast_ref::<T>().and_then(&clone)
        {
            return Ok(self.local_hit(value, entry.created_at_ms));
        }
        // Through the crypto path, as a Redis read: decrypted with the handle's keyring (an
        // encrypted entry, for a handle that has one), refused otherwise.
        let value = codec::parse(&entry.bytes).ok().and_then(|env| {
            self.open_value::<T>(full, &entry.bytes, &env, fingerprint)
                .ok()
        });
        match value {
            Some(value) => {
                if let Some(copy) = keep(&value).filter(|_| same_crypto) {
                    let _ = entry.decoded.set((fingerprint, copy));
                }
                Ok(self.local_hit(value, entry.created_at_ms))
            }
            // Another type under this key: the backend path decides (and counts).
            None => {
                self.shared.stats.local_miss();
                Err(local.mark(full))
            }
        }
    }

    fn local_hit<T>(&self, value: T, created_at_ms: u64) -> LocalHit<T> {
        self.scope.stats.hit(); // observe.rs: per namespace, adding up to the root's
        self.scope.stats.local_hit();
        self.shared.stats.hit();
        self.shared.stats.local_hit();
        LocalHit {
            value,
            created_at_ms,
        }
    }

    /// Keeps a value just read from the backend (a hit) in the L1.
    pub(crate) fn local_fill<T: Send + Sync + 'static>(
        &self,
        local: &Local,
        full: &str,
        bytes: Option<&Bytes>,
        mark: Mark,
        decoded: Option<(u64, T)>,
    ) {
        if let Some(bytes) = bytes {
            let decoded = decoded.map(|(fp, v)| (fp, Arc::new(v) as Arc<dyn Any + Send + Sync>));
            local.fill(full, bytes, mark, decoded, self.breaker());
        }
    }
}

// ---- what writers do ----------------------------------------------------------------------

const KIND_PATTERN: u8 = b'p';

/// After keys were written, deleted or given a new TTL: drop them here, and ask for a barrier
/// that later reads of them wait for (see [`Barriers`]); the write does not wait. Other
/// instances hear of it from Redis (tracking); nothing is published.
pub(crate) async fn after_keys(cache: &Handle, keys: &[&str]) {
    let Some(local) = cache.shared.local.as_deref() else {
        return;
    };
    if !local.tracking_on.load(Ordering::SeqCst) {
        // Nothing to wait for: the L1 does not serve, and is flushed before it does.
        local.invalidate_keys(keys.iter().copied());
        return;
    }
    if local.drop_written(keys.iter().copied()) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(run_barriers(Arc::downgrade(&cache.shared)));
            }
            // No runtime to run it on: this write waits for its barrier itself.
            Err(_) => run_barriers(Arc::downgrade(&cache.shared)).await,
        }
    }
}

/// Sends barriers until every one asked for is answered (see [`Barriers`]), one at a time.
async fn run_barriers(shared: Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let Some(local) = strong.local.as_deref() else {
            return;
        };
        // Every write that asked for a barrier up to `target` had returned: a PING sent now
        // is answered after their pushes.
        let target = local.barriers.requested.load(Ordering::SeqCst);
        own_pushes_applied(&strong.backend, local).await;
        local.barriers.answered.send_if_modified(|answered| {
            let moved = target > *answered;
            *answered = (*answered).max(target);
            moved
        });
        local.barriers.running.store(false, Ordering::SeqCst);
        // A write that asked after `target` and saw this task running is answered by the next
        // round, unless another task started for it meanwhile.
        if local.barriers.requested.load(Ordering::SeqCst) == target
            || local.barriers.running.swap(true, Ordering::SeqCst)
        {
            return;
        }
    }
}

/// After tags were bumped to `versions`: moved here at once; other instances forget the tags
/// when tracking reports their version keys. Waits for its barrier (unlike `after_keys`): the
/// push of a tag's version key moves the epoch, which every read's mark depends on.
pub(crate) async fn after_tags(cache: &Handle, tag_keys: &[&str], versions: &[u64]) {
    if let Some(local) = cache.shared.local.as_deref() {
        own_pushes_applied(&cache.shared.backend, local).await;
        local.invalidate_tags(tag_keys.iter().copied().zip(versions.iter().copied()));
    }
}

/// Waits until Redis's pushes about this process's own write arrived and were applied (they
/// are applied where they are read, before the barrier's answer), so that none of them,
/// late, drops what a read fills after the write returned (ARCHITECTURE.md §4, "The L1 and
/// server-assisted tracking"). Without tracking on there is nothing to wait for: the L1 does
/// not serve, and is flushed before it does.
async fn own_pushes_applied(backend: &Backend, local: &Local) {
    let tracking = match local.tracking.read() {
        Ok(t) => t.clone(),
        Err(_) => None,
    };
    let (Some(tracking), Backend::Redis(redis)) = (tracking, backend) else {
        return;
    };
    // Bounded by the command timeout: each `PING` is a command of a tracking connection.
    if !redis.tracking_barrier(&tracking).await {
        // Unanswered: the checker will call it a gap and flush; until then, no fills.
        local.bump_epoch();
    }
}

/// After an invalidation by pattern (the full glob). Its tombstones reach other L1s through
/// tracking; the pattern itself is published for their pattern logs (a computation that
/// started before it must not store a key it matches, even one that did not exist).
pub(crate) async fn after_pattern(cache: &Handle, glob: &str) {
    let Some(local) = cache.shared.local.as_deref() else {
        return;
    };
    local.invalidate_glob(glob);
    publish(cache, KIND_PATTERN, glob.to_owned()).await;
}

/// An invalidation by pattern that could not reach Redis (queued for replay): this process's
/// L1 drops what matches; nothing is published (Redis is out of reach).
pub(crate) fn pattern_here(cache: &Handle, glob: &str) {
    if let Some(local) = cache.shared.local.as_deref() {
        local.invalidate_glob(glob);
    }
}

async fn publish(cache: &Handle, kind: u8, body: String) {
    let Some(local) = cache.shared.local.as_deref() else {
        return;
    };
    let Backend::Redis(redis) = &cache.shared.backend else {
        return;
    };
    let mut message = Vec::with_capacity(9 + body.len());
    message.extend_from_slice(&local.instance.to_le_bytes());
    message.push(kind);
    message.extend_from_slice(body.as_bytes());
    let mut cmd = redis::cmd("PUBLISH");
    cmd.arg(&local.channel).arg(message);
    // The tombstones are written, and tracking reports them; only the other instances'
    // pattern logs miss this one.
    if let Err(e) = redis.run::<u64>("PUBLISH", cmd).await {
        cache.shared.stats.backend_error();
        tracing::warn!(error = %e, "pattern invalidation not published; other instances' computations already running may store a key it matches");
    }
}

// ---- the feed (feed.rs runs it) ------------------------------------------------------------

/// The L1's tracking: every key under the root (values, tag versions), and the channel of
/// pattern messages.
pub(crate) static L1_FEED: Feed = Feed {
    name: "L1 near cache",
    refused: "the L1 stays off",
    subscription: |shared| {
        let local = shared.local.as_deref()?;
        Some(Subscription {
            prefix: local.prefix.clone(),
            channel: Some(local.channel.clone()),
        })
    },
    receive,
    live: |shared, tracking, opens| {
        let Some(local) = &shared.local else {
            return;
        };
        // Tracking reports changes from its `OK` on; whatever changed before is unknown:
        // start from nothing (the flush moves the epoch, so no read begun before fills).
        if let Ok(mut slot) = local.tracking.write() {
            *slot = Some(tracking.clone());
        }
        local.tracking_on.store(true, Ordering::SeqCst);
        local.flush();
        local.opens_seen.store(opens, Ordering::Release);
        local.healthy.store(true, Ordering::Release);
        // The root's prefix covers the generation keys: this feed tracks them too.
        shared.generations.tracking_on(tracking);
        tracing::debug!(prefix = %local.prefix, "L1 tracking on");
    },
    gap: |shared| {
        // What changed meanwhile is unknown. Serve nothing until tracking is back.
        let Some(local) = &shared.local else {
            return;
        };
        local.healthy.store(false, Ordering::Release);
        local.tracking_on.store(false, Ordering::SeqCst);
        if let Ok(mut slot) = local.tracking.write() {
            *slot = None;
        }
        shared.generations.tracking_lost();
        local.flush();
        shared.stats.local_flush();
        tracing::warn!(prefix = %local.prefix, "L1 tracking lost, a failover, or redis unreachable; L1 flushed, tracking again");
    },
};

/// One push of a tracking connection (its end is the feed task's).
fn receive(shared: &Shared, push: redis::PushInfo) {
    let Some(local) = &shared.local else {
        return;
    };
    match push.kind {
        redis::PushKind::Invalidate => {
            // `[keys]`, or `[nil]` after `FLUSHDB` / `FLUSHALL`: everything.
            match push.data.into_iter().next() {
                Some(redis::Value::Array(keys)) => {
                    for key in keys {
                        if let redis::Value::BulkString(key) = key
                            && let Ok(key) = std::str::from_utf8(&key)
                        {
                            shared.generations.heard_of(Some(key));
                            local.invalidate_tracked(key);
                        }
                    }
                }
                _ => {
                    shared.generations.heard_of(None);
                    local.flush();
                    shared.stats.local_flush();
                }
            }
        }
        redis::PushKind::Message => {
            if let Some(redis::Value::BulkString(payload)) = push.data.get(1) {
                receive_published(shared, local, payload);
            }
        }
        _ => return,
    }
    // Counted once applied: whoever sees the count (a test, a dashboard) may rely on the L1
    // no longer serving what the message invalidated.
    shared.stats.local_invalidation();
}

/// A message published on the channel: another instance's pattern invalidation.
fn receive_published(shared: &Shared, local: &Local, payload: &[u8]) {
    if payload.len() < 9 {
        return;
    }
    let (sender, rest) = payload.split_at(8);
    if sender == local.instance.to_le_bytes() {
        return; // ours: applied before the call that sent it returned
    }
    let Ok(body) = std::str::from_utf8(&rest[1..]) else {
        return;
    };
    if rest[0] == KIND_PATTERN {
        local.invalidate_glob(body);
        // Computations in this process of keys the pattern matches do not store either.
        shared
            .patterns
            .record(body, shared.config.invalidation_hold);
    }
}
