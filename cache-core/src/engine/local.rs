//! The L1 near cache: decoded values kept in this process, in front of Redis, and an
//! invalidation feed over Redis pub/sub that keeps every instance's L1 consistent.
//!
//! - Off by default; on with [`CacheBuilder::local_cache`](crate::CacheBuilder::local_cache) (entries) and
//!   [`CacheBuilder::local_ttl`](crate::CacheBuilder::local_ttl), or `CACHE_LOCAL_CAPACITY` / `CACHE_LOCAL_TTL`. One L1 per
//!   cache root, on the Redis backend only (the memory backend is already in process).
//! - An entry holds the envelope as read from Redis and, once a reader that can clone the type
//!   asked for it (`#[cached]` functions whose value type is `Clone`), the decoded value,
//!   type-erased and checked by type: such a hit clones, without parsing JSON. Other readers
//!   (`get`, `lookup`, `get_or_set`) decode the envelope, still without a round trip.
//!   Encrypted entries keep no decoded value: each hit goes through the reading handle's
//!   keyring, as a Redis read does (a handle without the key gets a miss).
//! - Lifetime: the shorter of `local_ttl` and what is left of the Redis TTL (by the writer's
//!   clock, from the envelope).
//! - Tags: an entry records the versions of its tags; the L1 keeps the versions of the tags it
//!   has seen, moved forward by the feed, so a tag check on an L1 hit costs no round trip.
//! - Feed: every write, delete, expire, tag invalidation and pattern invalidation made through
//!   a cache with the L1 on publishes a message on the channel `<namespace>:~l1`, after its own
//!   command answered; every instance subscribes on a dedicated connection and drops what the
//!   message names. The instance that writes drops its own entries before its call returns.
//! - Gaps: messages sent while a subscriber is disconnected are lost, so the L1 serves nothing
//!   until the feed is subscribed, and is emptied whenever the subscription is lost (stream
//!   ended, ping unanswered) and again when it is back, before it serves again. An outage
//!   the circuit breaker saw is a gap too: from the moment the breaker opens the L1 neither
//!   serves nor fills (checked on every read, so a reader never gets ahead of the feed task),
//!   it is emptied, and it serves again only once the breaker closed (after the recovery
//!   queue's replay) and the feed subscribed anew.
//! - Reads that race an invalidation: an entry read from Redis is kept only if no invalidation
//!   of its key (or of a tag, pattern, or a flush) arrived between the read and the insert,
//!   checked again after inserting, so an old value is never put back after its invalidation
//!   was received.

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
}

/// What a reader noted before its backend read, to tell whether an invalidation arrived
/// before it inserts what it read.
#[derive(Clone, Copy)]
pub(crate) struct Mark {
    epoch: u64,
    stripe: u64,
}

pub(crate) struct Local {
    entries: Moka<String, Arc<Entry>>,
    /// Current version of each tag seen here.
    tags: Moka<String, Arc<AtomicU64>>,
    /// Moved by invalidations of more than one key: tags, patterns, flushes.
    epoch: AtomicU64,
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    /// True while the feed is subscribed and the circuit breaker is closed: only then does
    /// the L1 serve and fill.
    healthy: AtomicBool,
    /// The breaker's open count when the L1 last became healthy: an outage since (even one
    /// already over, that the feed task did not see yet) stops the L1 from serving.
    opens_seen: AtomicU64,
    feed_started: AtomicBool,
    ttl: Duration,
    /// Tells this instance's messages from others'.
    instance: u64,
    channel: String,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("entries", &self.entries.entry_count())
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
        Some(Arc::new(Local {
            entries: Moka::builder()
                .max_capacity(config.local_capacity)
                .time_to_live(config.local_ttl)
                .build(),
            tags: Moka::builder()
                .max_capacity(config.local_capacity.saturating_mul(2).max(1024))
                .build(),
            epoch: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            instance: hasher.hash_one(codec::now_us()) | 1,
            hasher,
            healthy: AtomicBool::new(false),
            opens_seen: AtomicU64::new(0),
            feed_started: AtomicBool::new(false),
            ttl: config.local_ttl,
            channel: format!("{}:~l1", config.namespace),
        }))
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        &self.stripes[(self.hasher.hash_one(key) as usize) % STRIPES]
    }

    fn mark(&self, key: &str) -> Mark {
        Mark {
            epoch: self.epoch.load(Ordering::SeqCst),
            stripe: self.stripe(key).load(Ordering::SeqCst),
        }
    }

    fn unchanged(&self, key: &str, mark: Mark) -> bool {
        self.epoch.load(Ordering::SeqCst) == mark.epoch
            && self.stripe(key).load(Ordering::SeqCst) == mark.stripe
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
        if !self.serving(breaker) || !self.unchanged(key, mark) {
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
        for (tag, version) in tags.iter() {
            let current = self
                .tags
                .get_with_by_ref(tag.as_str(), || Arc::new(AtomicU64::new(0)));
            current.fetch_max(*version, Ordering::SeqCst);
        }
        let entry = Entry {
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
        self.entries.insert(key.to_owned(), Arc::new(entry));
        // An invalidation that arrived while inserting may have missed the entry: drop it.
        if !self.unchanged(key, mark) {
            self.entries.invalidate(key);
        }
    }

    /// Drops keys (this instance's writes, and the feed's messages).
    fn invalidate_keys<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        for key in keys {
            self.stripe(key).fetch_add(1, Ordering::SeqCst);
            self.entries.invalidate(key);
        }
    }

    /// Moves tags to (at least) the versions given.
    fn invalidate_tags<'k>(&self, tags: impl IntoIterator<Item = (&'k str, u64)>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for (tag, version) in tags {
            let current = self
                .tags
                .get_with_by_ref(tag, || Arc::new(AtomicU64::new(0)));
            current.fetch_max(version, Ordering::SeqCst);
        }
    }

    /// Drops every entry under `prefix` that `glob` matches.
    fn invalidate_glob(&self, glob: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
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

    fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
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
            }),
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

    fn ensure_feed(&self, local: &Local) {
        if local.feed_started.load(Ordering::Relaxed)
            || local.feed_started.swap(true, Ordering::SeqCst)
        {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let timeout = self.shared.config.connect_timeout;
                rt.spawn(feed(Arc::downgrade(&self.shared), timeout));
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
    ) -> Result<Lookup<T>, Mark> {
        // The mark is taken on a miss only, still before the backend read it guards.
        let Some(entry) = local.get(full, self.breaker()) else {
            self.shared.stats.local_miss();
            return Err(local.mark(full));
        };
        let age = Duration::from_millis(codec::now_ms().saturating_sub(entry.created_at_ms));
        // The decoded value is kept for plain entries read by handles without encryption
        // only: an encrypted entry is decrypted with the reading handle's keyring on every
        // hit (a handle with another key, or none, must not get what it cannot decrypt).
        let same_crypto = !entry.encrypted && self.scope.encryption.is_none();
        if let Some((fp, any)) = entry.decoded.get().filter(|_| same_crypto)
            && *fp == fingerprint
            && let Some(value) = any.downcast_ref::<T>().and_then(&clone)
        {
            return Ok(self.local_hit(value, age));
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
                Ok(self.local_hit(value, age))
            }
            // Another type under this key: the backend path decides (and counts).
            None => {
                self.shared.stats.local_miss();
                Err(local.mark(full))
            }
        }
    }

    fn local_hit<T>(&self, value: T, age: Duration) -> Lookup<T> {
        self.scope.stats.hit(); // observe.rs: per namespace, adding up to the root's
        self.scope.stats.local_hit();
        self.shared.stats.hit();
        self.shared.stats.local_hit();
        Lookup::Hit {
            value,
            source: Source::Local,
            age,
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

const KIND_KEYS: u8 = b'k';
const KIND_TAGS: u8 = b't';
const KIND_PATTERN: u8 = b'p';

/// After keys were written, deleted or given a new TTL: drop them here, then tell the others.
pub(crate) async fn after_keys(cache: &Handle, keys: &[&str]) {
    let Some(local) = cache.shared.local.as_deref() else {
        return;
    };
    local.invalidate_keys(keys.iter().copied());
    publish(cache, KIND_KEYS, keys.join("\n")).await;
}

/// After tags were bumped to `versions`.
pub(crate) async fn after_tags(cache: &Handle, tag_keys: &[&str], versions: &[u64]) {
    let Some(local) = cache.shared.local.as_deref() else {
        return;
    };
    local.invalidate_tags(tag_keys.iter().copied().zip(versions.iter().copied()));
    let mut body = String::new();
    for (k, v) in tag_keys.iter().zip(versions) {
        body.push_str(k);
        body.push('\n');
        body.push_str(itoa::Buffer::new().format(*v));
        body.push('\n');
    }
    publish(cache, KIND_TAGS, body).await;
}

/// After an invalidation by pattern (the full glob).
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
    // The change itself is made; other instances keep their copy until their L1 TTL, or
    // until their feed notices the outage and flushes.
    if let Err(e) = redis.run::<u64>("PUBLISH", cmd).await {
        cache.shared.stats.backend_error();
        tracing::warn!(error = %e, "L1 invalidation not published; other instances may serve their copy until their local TTL");
    }
}

// ---- the feed -------------------------------------------------------------------------------

/// How often the subscription is pinged: a connection that died without closing is noticed
/// within about this (plus the connect timeout).
const FEED_PING: Duration = Duration::from_secs(1);

async fn feed(shared: Weak<Shared>, timeout: Duration) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let (Some(local), Backend::Redis(redis)) = (strong.local.clone(), &strong.backend) else {
            return;
        };
        let channel = local.channel.clone();
        // The circuit breaker's changes: an outage is a gap too (see below).
        let mut breaker = redis.breaker().subscribe();
        // The backend's pub/sub connection: the server, Sentinel's primary, or a cluster node
        // (a plain PUBLISH reaches the subscribers of every node).
        let subscribed = async {
            let mut pubsub = redis.pubsub().await?;
            tokio::time::timeout(timeout, pubsub.subscribe(&channel))
                .await
                .map_err(|_| crate::base::error::Error::Connection {
                    message: format!("SUBSCRIBE unanswered within {timeout:?}"),
                    source: None,
                })?
                .map_err(|e| crate::base::error::Error::from_redis("subscribe", e, timeout))?;
            Ok::<_, crate::base::error::Error>(pubsub)
        }
        .await;
        drop(strong);
        let pubsub = match subscribed {
            Ok(pubsub) => pubsub,
            Err(e) => {
                let reason = e.to_string();
                tracing::debug!(%reason, "L1 invalidation feed: cannot subscribe, retrying");
                drop(local);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(20);
        drop(local);
        // Not before the breaker is closed: while it is open, this instance's invalidations
        // wait in its recovery queue and other instances' writes are out of its sight.
        let opens = loop {
            let status = *breaker.borrow_and_update();
            if status.state == BreakerState::Closed {
                break status.opens;
            }
            if breaker.changed().await.is_err() {
                return; // the cache is gone
            }
        };
        let Some(local) = shared.upgrade().and_then(|s| s.local.clone()) else {
            return;
        };
        // Whatever was published before the subscription is lost: start from nothing.
        local.flush();
        local.opens_seen.store(opens, Ordering::Release);
        local.healthy.store(true, Ordering::Release);
        tracing::debug!(%channel, "L1 invalidation feed subscribed");
        drop(local);
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(FEED_PING);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = futures_util::StreamExt::next(&mut stream);
            tokio::select! {
                msg = next => {
                    let Some(msg) = msg else { break };
                    let Some(shared) = shared.upgrade() else { return };
                    receive(&shared, msg.get_payload_bytes());
                }
                changed = breaker.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let status = *breaker.borrow_and_update();
                    if status.state != BreakerState::Closed || status.opens != opens {
                        // The breaker opened: a gap. Resubscribe once it has closed again.
                        break;
                    }
                }
                _ = ping.tick() => {
                    if shared.strong_count() == 0 {
                        return;
                    }
                    let pong = tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        // A gap: what was published meanwhile is lost. Serve nothing until subscribed again.
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Some(local) = &shared.local {
            local.healthy.store(false, Ordering::Release);
            local.flush();
            shared.stats.local_flush();
            tracing::warn!(channel = %local.channel, "L1 invalidation feed lost or redis unreachable; L1 flushed, resubscribing");
        }
    }
}

/// One message of the feed.
fn receive(shared: &Shared, payload: &[u8]) {
    let Some(local) = &shared.local else { return };
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
    match rest[0] {
        KIND_KEYS => local.invalidate_keys(body.split('\n')),
        KIND_TAGS => {
            let mut lines = body.split('\n');
            let mut tags = Vec::new();
            while let (Some(k), Some(v)) = (lines.next(), lines.next()) {
                if let Ok(v) = v.parse::<u64>() {
                    tags.push((k, v));
                }
            }
            local.invalidate_tags(tags);
        }
        KIND_PATTERN => {
            local.invalidate_glob(body);
            // Computations in this process of keys the pattern matches do not store either.
            shared
                .patterns
                .record(body, shared.config.invalidation_hold);
        }
        _ => local.flush(),
    }
    // Counted once applied: whoever sees the count (a test, a dashboard) may rely on the L1
    // no longer serving what the message invalidated.
    shared.stats.local_invalidation();
}
