//! The `Cache` handle: typed operations over a backend, scoped by namespace and tenant.

pub(crate) mod clear;
pub(crate) mod crypto;
pub(crate) mod feed;
pub(crate) mod generations;
pub(crate) mod lease;
pub(crate) mod local;
pub(crate) mod observe;
pub(crate) mod patterns;
pub(crate) mod tags;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::base::codec::{self, Meta};
use crate::base::crypto::Keyring;
use crate::base::error::{Error, Result};
use crate::base::key::{self, KeyBuf, KeyPart};
use crate::base::observe::{MissReason, Operation, Outcome};
use crate::base::settings::{Config, Target};
pub use crate::base::source::{Lookup, Source};
use crate::base::stats::{Stats, StatsSnapshot, WarnThrottle};
use crate::store::breaker::Breaker;
use crate::store::memory::MemoryBackend;
use crate::store::redis::RedisBackend;
use crate::store::{Backend, KeyTtl};

pub(crate) struct Shared {
    backend: Backend,
    config: Config,
    stats: Stats,
    /// Backend failures are logged at most once a second (with how many were held back).
    warnings: WarnThrottle,
    /// Patterns invalidated recently (patterns.rs).
    patterns: patterns::PatternLog,
    /// The L1 near cache, when configured on a Redis backend (local.rs).
    local: Option<Arc<crate::engine::local::Local>>,
    /// The scopes' generations known in this process (generations.rs, clear.rs).
    generations: generations::Generations,
    /// Lease owners, embedded locks and lock wake-ups (lease.rs).
    leases: lease::Leases,
    /// The first-level namespaces' statistics (observe.rs).
    namespaces: crate::base::observe::Namespaces,
    /// Slow operations are logged at most once a second (observe.rs).
    slow_log: WarnThrottle,
}

/// Everything a handle adds to keys: `root:[namespace:...][@tenant:]`.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    prefix: String,
    default_ttl: Option<Duration>,
    /// The keys values are encrypted with (crypto.rs); inherited by scopes made from this one.
    encryption: Option<Arc<crate::base::crypto::Keyring>>,
    /// The statistics of the first-level namespace this handle counts under (observe.rs).
    stats: Arc<crate::base::observe::NsStats>,
    /// Whether reads through this scope use the L1 (local.rs; on unless opted out).
    local: bool,
    /// The generation keys of the root and of every scope down to this one (clear.rs).
    generations: Arc<[String]>,
    /// What this process knows of each of them, in the same order (clear.rs).
    generation_cells: Arc<[Arc<generations::Cell>]>,
}

/// The engine's handle on a cache root: its state and the scope (namespace, tenant, default
/// TTL, keyring) of this handle. The front door's `Cache` wraps one; the layers above the
/// engine receive one (ARCHITECTURE.md).
#[doc(hidden)] // public only because the hidden `Pipeline` derefs to it; not nameable outside
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    scope: Arc<Scope>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.shared.backend)
            .field("prefix", &self.scope.prefix)
            .field("default_ttl", &self.scope.default_ttl)
            .field("encryption", &self.scope.encryption)
            .finish()
    }
}

impl Handle {
    pub(crate) fn in_memory() -> Handle {
        let config = Config::default();
        Handle::with_backend(
            Backend::Memory(MemoryBackend::new(config.memory_capacity)),
            config,
            None,
        )
    }

    pub(crate) fn from_config(config: Config, keyring: Option<Keyring>) -> Result<Handle> {
        let backend = match &config.target {
            Target::Memory => {
                tracing::info!(namespace = %config.namespace, "cache: no REDIS_URL, using the embedded in-memory backend");
                Backend::Memory(MemoryBackend::new(config.memory_capacity))
            }
            Target::Redis(target) => {
                let backend = RedisBackend::new(target, &config)?;
                tracing::info!(namespace = %config.namespace, backend = ?backend, "cache: using redis");
                Backend::Redis(backend)
            }
        };
        Ok(Handle::with_backend(backend, config, keyring))
    }

    fn with_backend(backend: Backend, config: Config, keyring: Option<Keyring>) -> Handle {
        let prefix = config.root_prefix();
        let generations = generations::Generations::new(&backend, config.strict_clear);
        let generation = crate::store::breaker::generation_key(&prefix, &prefix);
        let scope = Scope {
            generation_cells: Arc::from([generations.cell(&generation)]),
            generations: Arc::from([generation]),
            prefix,
            default_ttl: config.default_ttl,
            encryption: keyring.map(Arc::new),
            stats: Arc::new(crate::base::observe::NsStats::new(&config.namespace)),
            local: true,
        };
        let local = crate::engine::local::Local::for_backend(&backend, &config);
        let shared = Arc::new(Shared {
            backend,
            config,
            stats: Stats::default(),
            warnings: WarnThrottle::default(),
            patterns: Default::default(),
            local,
            generations,
            leases: Default::default(),
            namespaces: Default::default(),
            slow_log: Default::default(),
        });
        let cache = Handle {
            shared,
            scope: Arc::new(scope),
        };
        crate::engine::observe::register_root(&cache);
        cache.ensure_generations_feed(); // clear.rs: on now, when built in a runtime
        cache
    }

    // ---- scopes -----------------------------------------------------------------------------

    pub(crate) fn namespace(&self, name: &str) -> Handle {
        let escaped = key::escape(name);
        let stats = crate::engine::observe::namespace_stats(self, &escaped);
        self.scoped_with(
            format!("{}{}:", self.scope.prefix, escaped),
            self.scope.default_ttl,
            stats,
        )
    }

    pub(crate) fn tenant(&self, id: impl KeyPart) -> Handle {
        let mut k = KeyBuf::new();
        k.part(&id);
        self.scoped(
            format!("{}@{}:", self.scope.prefix, k.as_str()),
            self.scope.default_ttl,
        )
    }

    pub(crate) fn with_default_ttl(&self, ttl: Duration) -> Handle {
        self.scoped(self.scope.prefix.clone(), Some(ttl))
    }

    fn scoped(&self, prefix: String, default_ttl: Option<Duration>) -> Handle {
        self.scoped_with(prefix, default_ttl, self.scope.stats.clone())
    }

    fn scoped_with(
        &self,
        prefix: String,
        default_ttl: Option<Duration>,
        stats: Arc<crate::base::observe::NsStats>,
    ) -> Handle {
        let (generations, generation_cells) = if prefix == self.scope.prefix {
            (
                self.scope.generations.clone(),
                self.scope.generation_cells.clone(),
            )
        } else {
            let root = self.shared.config.root_prefix();
            let own = crate::store::breaker::generation_key(&root, &prefix);
            let cell = self.shared.generations.cell(&own);
            (
                self.scope
                    .generations
                    .iter()
                    .cloned()
                    .chain([own])
                    .collect(),
                self.scope
                    .generation_cells
                    .iter()
                    .cloned()
                    .chain([cell])
                    .collect(),
            )
        };
        Handle {
            shared: self.shared.clone(),
            scope: Arc::new(Scope {
                generations,
                generation_cells,
                prefix,
                default_ttl,
                encryption: self.scope.encryption.clone(),
                stats,
                local: self.scope.local,
            }),
        }
    }

    pub(crate) fn key_prefix(&self) -> &str {
        &self.scope.prefix
    }

    pub(crate) fn default_ttl(&self) -> Option<Duration> {
        self.scope.default_ttl
    }

    pub(crate) fn backend(&self) -> Source {
        self.shared.backend.kind()
    }

    pub(crate) fn stats(&self) -> StatsSnapshot {
        let mut stats = self.shared.stats.snapshot();
        self.add_breaker_stats(&mut stats);
        stats
    }

    pub(crate) fn full_key(&self, key: &str) -> Result<String> {
        key::validate_user_key(key)?;
        Ok(key::full_key(&self.scope.prefix, key))
    }

    pub(crate) fn full_key_of(&self, key: KeyBuf) -> String {
        key::full_key_owned(&self.scope.prefix, key.into_string())
    }

    pub(crate) fn tag_key(&self, tag: &str) -> String {
        tags::version_key(&self.scope.prefix, tag)
    }

    pub(crate) fn ttl_or_default(&self, ttl: Option<Duration>) -> Option<Duration> {
        ttl.or(self.scope.default_ttl)
    }

    fn backend_err(&self, operation: &str, key: &str, e: &Error) {
        self.shared.stats.backend_error();
        self.scope.stats.error();
        if let Some(held) = self.shared.warnings.admit(codec::now_ms()) {
            tracing::warn!(operation, key = %key::shorten_for_display(key), error = %e, held_back = held, "cache backend error");
        }
    }

    /// A failure on the get-or-compute path, where the caller gets its computed value anyway:
    /// counted (encode errors are, where they happen) and logged with the function served, so
    /// a value that never gets cached (one serde_json cannot write, say) shows up in the logs.
    pub(crate) fn compute_err(
        &self,
        function: &'static str,
        operation: &str,
        key: &str,
        e: &Error,
    ) {
        if !e.is_caller_side() {
            self.shared.stats.backend_error();
            self.scope.stats.error();
        }
        if let Some(held) = self.shared.warnings.admit(codec::now_ms()) {
            tracing::warn!(function, operation, key = %key::shorten_for_display(key), error = %e, held_back = held, "cache failure; value computed without the cache");
        }
    }

    // ---- reads ------------------------------------------------------------------------------

    pub(crate) async fn get<T: DeserializeOwned + 'static>(&self, key: &str) -> Result<Option<T>> {
        Ok(self.lookup(key).await?.into_value())
    }

    pub(crate) async fn lookup<T: DeserializeOwned + 'static>(
        &self,
        key: &str,
    ) -> Result<Lookup<T>> {
        let mut op = self.op(Operation::Get);
        let full = self.full_key(key)?;
        // local.rs: the L1 answers first, when on.
        let local = self.local();
        let mark = match local.map(|l| self.local_read::<T>(l, &full, 0, |_| None, |_| None)) {
            Some(Ok(hit)) => {
                op.hit(Source::Local); // ops: an L1 hit
                return Ok(hit.into_lookup());
            }
            Some(Err(mark)) => match local {
                Some(local) => Some(local.settle(&full, mark).await),
                None => None,
            },
            None => None,
        };
        let (generation_keys, heard) = self.generations_to_read(); // clear.rs
        let (bytes, generations) = self
            .shared
            .backend
            .get_with_scope(&full, &[] as &[&str], generation_keys)
            .await
            .inspect_err(|e| self.backend_err("get", &full, e))?;
        self.learn_generations(heard, &generations);
        let found = self
            .decode_hit(&full, bytes.as_deref(), Some((&[], &generations)), 0)
            .await;
        op.lookup(&found);
        if let (Some(local), Some(mark), Ok(true)) =
            (local, mark, found.as_ref().map(|f| f.is_hit()))
        {
            self.local_fill::<()>(local, &full, bytes.as_ref(), mark, None);
        }
        found
    }

    /// Decodes what a read found; `known_versions` are the current versions of tags the
    /// caller already fetched in the same round trip.
    pub(crate) async fn decode_hit<T: DeserializeOwned + 'static>(
        &self,
        full: &str,
        bytes: Option<&[u8]>,
        known_versions: Option<(&[String], &[Option<u64>])>,
        fingerprint: u64,
    ) -> Result<Lookup<T>> {
        let stats = &self.shared.stats;
        let Some(bytes) = bytes.filter(|b| !codec::is_tombstone(b)) else {
            self.count_miss(MissReason::Absent);
            stats.miss();
            return Ok(Lookup::Miss);
        };
        let now = codec::now_ms();
        let decoded = match codec::parse(bytes) {
            Ok(env) => {
                // The backend's TTL is authoritative (`expire` and `touch` change only it); the
                // logical expiry matters for entries kept past it to be served stale.
                if env.stale_until_ms > env.expires_at_ms && env.expires_at_ms <= now {
                    self.count_miss(MissReason::Expired);
                    stats.miss();
                    return Ok(Lookup::Miss);
                }
                // Tags, and the generations of the scopes (clear.rs): every read checks those.
                // An entry without tags read through scopes known never to have been cleared
                // (the common case) has nothing to check.
                let unchecked = env.tags().next().is_none() && self.never_cleared();
                if !unchecked && !tags::still_valid(self, env.tags(), known_versions).await? {
                    self.count_miss(MissReason::TagInvalidated);
                    stats.miss();
                    return Ok(Lookup::Miss);
                }
                self.open_value::<T>(full, bytes, &env, fingerprint)
                    .map(|v| {
                        (
                            v,
                            Duration::from_millis(now.saturating_sub(env.created_at_ms)),
                        )
                    })
            }
            Err(reason) => codec::decode_plain::<T>(bytes)
                .map(|v| (v, Duration::ZERO))
                .map_err(|_| reason.to_owned()),
        };
        match decoded {
            Ok((value, age)) => {
                self.scope.stats.hit();
                stats.hit();
                Ok(Lookup::Hit {
                    value,
                    source: self.shared.backend.kind(),
                    age,
                })
            }
            Err(reason) => {
                self.count_miss(MissReason::Undecodable);
                stats.decode_error();
                stats.miss();
                tracing::debug!(key = %key::shorten_for_display(full), %reason, "cache value not decodable, treated as a miss");
                Ok(Lookup::Miss)
            }
        }
    }

    pub(crate) async fn mget<T: DeserializeOwned + 'static>(
        &self,
        keys: &[&str],
    ) -> Result<Vec<Option<T>>> {
        let mut op = self.op(Operation::Mget);
        let full: Vec<String> = keys
            .iter()
            .map(|k| self.full_key(k))
            .collect::<Result<_>>()?;
        // The scopes' generations (clear.rs), when not known here, in the same `MGET` as the
        // values.
        let generations = self.generation_keys();
        let (to_read, heard) = self.generations_to_read();
        let asked: Vec<String> = full.iter().chain(to_read).cloned().collect();
        let mut found = self
            .shared
            .backend
            .get_many(&asked)
            .await
            .inspect_err(|e| self.backend_err("mget", &full.join(" "), e))?;
        let generation_versions: Vec<Option<u64>> = found
            .split_off(full.len())
            .iter()
            .map(|g| g.as_deref().and_then(codec::decode_version))
            .collect();
        self.learn_generations(heard, &generation_versions);
        // The versions of every tag the entries record, read together: one more round trip
        // in all, not one per tagged entry.
        let mut tag_keys: Vec<String> = found
            .iter()
            .flatten()
            .filter_map(|bytes| codec::parse(bytes).ok())
            .flat_map(|env| env.tags().map(|(k, _)| k.to_owned()))
            .filter(|k| !generations.contains(k))
            .collect();
        tag_keys.sort_unstable();
        tag_keys.dedup();
        let mut versions = if tag_keys.is_empty() {
            Vec::new()
        } else {
            self.shared
                .backend
                .versions(&tag_keys)
                .await
                .inspect_err(|e| self.backend_err("mget (tag versions)", &tag_keys[0], e))?
        };
        versions.extend(generation_versions); // after the tags, as `still_valid` expects
        let mut out = Vec::with_capacity(found.len());
        for (k, bytes) in full.iter().zip(&found) {
            let known = Some((tag_keys.as_slice(), versions.as_slice()));
            out.push(
                self.decode_hit(k, bytes.as_deref(), known, 0)
                    .await?
                    .into_value(),
            );
        }
        op.outcome(Outcome::Ok);
        Ok(out)
    }

    pub(crate) async fn exists(&self, key: &str) -> Result<bool> {
        let mut op = self.op(Operation::Exists);
        let full = self.full_key(key)?;
        let r = self.shared.backend.exists(&full).await;
        op.result(&r);
        r.inspect_err(|e| self.backend_err("exists", &full, e))
    }

    pub(crate) async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        let mut op = self.op(Operation::Ttl);
        let full = self.full_key(key)?;
        let r = self.shared.backend.ttl(&full).await;
        op.result(&r);
        r.inspect_err(|e| self.backend_err("ttl", &full, e))
    }

    // ---- writes -----------------------------------------------------------------------------

    pub(crate) async fn set<T: Serialize + 'static>(
        &self,
        key: &str,
        value: &T,
        ttl: impl Into<Option<Duration>>,
    ) -> Result<()> {
        self.set_tagged(key, value, ttl, &[]).await
    }

    pub(crate) async fn set_tagged<T: Serialize + 'static>(
        &self,
        key: &str,
        value: &T,
        ttl: impl Into<Option<Duration>>,
        tags: &[&str],
    ) -> Result<()> {
        let full = self.full_key(key)?;
        let ttl = crate::base::limits::ttl(self.ttl_or_default(ttl.into()))?;
        let tag_keys = tags
            .iter()
            .map(|t| tags::checked_tag(t).map(|t| self.tag_key(t)))
            .collect::<Result<Vec<_>>>()?;
        let versions = match tags::current_versions(self, &tag_keys, None).await {
            Ok(versions) => versions,
            Err(e) => {
                self.shared.backend.write_failed(&[full], &e).await;
                return Err(e);
            }
        };
        self.store(&full, value, ttl, (&tag_keys, &versions), 0, 0)
            .await
    }

    /// Writes an encoded value; `tags` are the tag version keys and the versions read before
    /// the value was computed.
    pub(crate) async fn store<T: Serialize + 'static>(
        &self,
        full: &str,
        value: &T,
        ttl: Option<Duration>,
        tags: (&[String], &[u64]),
        compute_us: u32,
        fingerprint: u64,
    ) -> Result<()> {
        self.write(
            full,
            value,
            ttl,
            tags,
            compute_us,
            fingerprint,
            WriteIf::Always,
        )
        .await
        .map(drop)
        .inspect_err(|e| {
            if !e.is_caller_side() {
                self.backend_err("set", full, e)
            }
        })
    }

    /// [`store`](Self::store) without logging: the get-or-compute path logs with its function.
    /// False if `condition` kept the value from being written.
    #[allow(clippy::too_many_arguments)] // one private step, called from two places
    pub(crate) async fn write<T: Serialize + 'static>(
        &self,
        full: &str,
        value: &T,
        ttl: Option<Duration>,
        tags: (&[String], &[u64]),
        compute_us: u32,
        fingerprint: u64,
        condition: WriteIf,
    ) -> Result<bool> {
        let encoded = crate::base::limits::ttl(ttl).and_then(|ttl| {
            let bytes = self.encode(full, value, ttl, tags, compute_us, fingerprint)?;
            Ok((ttl, bytes))
        });
        match encoded {
            Ok((ttl, bytes)) => self.write_encoded(full, bytes, ttl, condition).await,
            Err(e) => {
                drop(self.op(Operation::Set)); // reported as a failed `set`
                Err(e)
            }
        }
    }

    /// Writes what [`encode_entry`](Self::encode_entry) made, if `condition` holds (counted
    /// as a write, or as superseded).
    pub(crate) async fn write_encoded(
        &self,
        full: &str,
        bytes: Vec<u8>,
        ttl: Option<Duration>,
        condition: WriteIf,
    ) -> Result<bool> {
        let mut op = self.op(Operation::Set);
        let backend = &self.shared.backend;
        let written = match condition {
            WriteIf::Always => backend.set(full, bytes, ttl).await.map(|()| true)?,
            // pattern.rs: a pattern invalidated since the read matches the key.
            WriteIf::Unchanged(_, mark) if self.pattern_superseded(full, mark) => false,
            WriteIf::Unchanged(seen, _) => {
                backend
                    .set_if_unchanged(full, bytes, ttl, seen.as_deref())
                    .await?
            }
        };
        if written {
            self.scope.stats.write(1);
            self.shared.stats.write(1);
            crate::engine::local::after_keys(self, &[full]).await; // local.rs: the L1s drop the key
        } else {
            self.shared.stats.superseded();
        }
        op.outcome(Outcome::Ok);
        Ok(written)
    }

    fn encode<T: Serialize + 'static>(
        &self,
        full: &str,
        value: &T,
        ttl: Option<Duration>,
        tags: (&[String], &[u64]),
        compute_us: u32,
        fingerprint: u64,
    ) -> Result<Vec<u8>> {
        self.encode_entry(full, value, ttl, None, tags, compute_us, fingerprint)
    }

    /// [`encode`](Self::encode) with a stale window: the entry is logically expired after
    /// `ttl` and kept (to be served stale) for `stale` more (the pipeline's `stale` option).
    #[allow(clippy::too_many_arguments)] // one private step
    pub(crate) fn encode_entry<T: Serialize + 'static>(
        &self,
        full: &str,
        value: &T,
        ttl: Option<Duration>,
        stale: Option<Duration>,
        (tag_keys, tag_versions): (&[String], &[u64]),
        compute_us: u32,
        fingerprint: u64,
    ) -> Result<Vec<u8>> {
        // Zero is refused here too, for the paths that encode before they write (the pipeline's);
        // the backends round and clamp the same way (limits::deadline, limits::millis).
        let ttl = crate::base::limits::ttl(ttl)?;
        let now = codec::now_ms();
        let expires_at_ms = ttl.map_or(0, |t| crate::base::limits::expires_at_ms(now, t));
        let meta = Meta {
            created_at_ms: now,
            expires_at_ms,
            stale_until_ms: match (ttl, stale) {
                (Some(_), Some(stale)) => crate::base::limits::expires_at_ms(expires_at_ms, stale),
                _ => 0,
            },
            compute_us,
            fingerprint,
            tag_keys,
            tag_versions,
            generation_keys: &self.scope.generations,
        };
        let bytes = codec::encode(value, &meta, self.shared.config.compression_threshold)
            .map_err(|source| Error::Encode {
                key: key::shorten_for_display(full),
                source,
            })
            .and_then(|bytes| self.seal(full, bytes))
            .and_then(|bytes| {
                crate::base::limits::value_size(
                    full,
                    bytes.len(),
                    self.shared.config.max_value_size,
                )?;
                Ok(bytes)
            });
        if bytes.is_err() {
            self.scope.stats.error();
            self.shared.stats.encode_error();
        }
        bytes
    }

    pub(crate) async fn mset<T: Serialize + 'static>(
        &self,
        items: &[(&str, T)],
        ttl: impl Into<Option<Duration>>,
    ) -> Result<()> {
        let mut op = self.op(Operation::Mset);
        let ttl = crate::base::limits::ttl(self.ttl_or_default(ttl.into()))?;
        let full: Vec<String> = items
            .iter()
            .map(|(k, _)| self.full_key(k))
            .collect::<Result<_>>()?;
        let generations = match tags::current_versions(self, &[], None).await {
            Ok(generations) => generations, // clear.rs
            Err(e) => {
                self.shared.backend.write_failed(&full, &e).await;
                return Err(e);
            }
        };
        let mut writes = Vec::with_capacity(items.len());
        for ((_, v), full) in items.iter().zip(full) {
            let bytes = self.encode(&full, v, ttl, (&[], &generations), 0, 0)?;
            writes.push((full, bytes, ttl));
        }
        let n = writes.len() as u64;
        self.shared
            .backend
            .set_many(writes)
            .await
            .inspect_err(|e| self.backend_err("mset", "", e))?;
        self.scope.stats.write(n);
        self.shared.stats.write(n);
        op.outcome(Outcome::Ok);
        let keys: Vec<&str> = items.iter().map(|(k, _)| *k).collect();
        let full: Vec<String> = keys
            .iter()
            .map(|k| key::full_key(&self.scope.prefix, k))
            .collect();
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        crate::engine::local::after_keys(self, &full).await; // local.rs
        Ok(())
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<bool> {
        let full = self.full_key(key)?;
        self.delete_full(vec![full]).await.map(|n| n > 0)
    }

    pub(crate) async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let full = keys
            .iter()
            .map(|k| self.full_key(k))
            .collect::<Result<Vec<_>>>()?;
        self.delete_full(full).await
    }

    pub(crate) async fn delete_full(&self, full: Vec<String>) -> Result<u64> {
        let mut op = self.op(Operation::Delete);
        let hold = self.shared.config.invalidation_hold;
        let r = self
            .shared
            .backend
            .delete(&full, &codec::tombstone(), hold)
            .await
            .inspect_err(|e| {
                self.backend_err("delete", full.first().map_or("", |k| k.as_str()), e)
            });
        op.result(&r);
        let removed = r?;
        let keys: Vec<&str> = full.iter().map(String::as_str).collect();
        crate::engine::local::after_keys(self, &keys).await; // local.rs: the L1s drop the keys
        Ok(removed)
    }

    pub(crate) async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        let mut op = self.op(Operation::Expire);
        let full = self.full_key(key)?;
        let ttl = crate::base::limits::duration("ttl", ttl)?;
        let r = self.shared.backend.expire(&full, ttl).await;
        op.result(&r);
        if let Ok(true) = r {
            crate::engine::local::after_keys(self, &[&full]).await; // local.rs: lifetimes follow Redis
        }
        r.inspect_err(|e| self.backend_err("expire", &full, e))
    }

    pub(crate) async fn touch(&self, key: &str) -> Result<bool> {
        match self.scope.default_ttl {
            Some(ttl) => self.expire(key, ttl).await,
            None => Ok(false),
        }
    }

    pub(crate) async fn incr(&self, key: &str, by: i64) -> Result<i64> {
        let mut op = self.op(Operation::Incr);
        let full = self.full_key(key)?;
        let r = self.shared.backend.incr(&full, by).await;
        op.result(&r);
        r.inspect_err(|e| {
            if e.is_unavailable() || matches!(e, Error::Command { .. }) {
                self.backend_err("incr", &full, e)
            }
        })
    }

    pub(crate) async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        self.invalidate_tags(&[tag]).await
    }

    pub(crate) async fn invalidate_tags(&self, tags: &[&str]) -> Result<()> {
        let mut op = self.op(Operation::InvalidateTags);
        let keys = tags
            .iter()
            .map(|t| tags::checked_tag(t).map(|t| self.tag_key(t)))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let r = self.shared.backend.bump(&refs).await;
        op.result(&r);
        let versions = r.inspect_err(|e| {
            self.backend_err("invalidate tags", refs.first().copied().unwrap_or(""), e)
        })?;
        crate::engine::local::after_tags(self, &refs, &versions).await; // local.rs
        Ok(())
    }

    /// The root's counters.
    pub(crate) fn root_stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The root's settings.
    pub(crate) fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The counters of the namespace this handle counts under.
    pub(crate) fn ns_stats(&self) -> &crate::base::observe::NsStats {
        &self.scope.stats
    }

    /// The log of recent pattern invalidations (patterns.rs).
    pub(crate) fn pattern_log(&self) -> &patterns::PatternLog {
        &self.shared.patterns
    }

    pub(crate) fn backend_ref(&self) -> &Backend {
        &self.shared.backend
    }

    /// The lease primitives of this root (lease.rs).
    pub(crate) fn leases(&self) -> &lease::Leases {
        &self.shared.leases
    }
}

/// When a computed value is written.
#[derive(Debug)]
pub(crate) enum WriteIf {
    /// Explicit writes (`set`, `_refresh`, `#[cache_put]`): the newest word on the key.
    Always,
    /// A value computed after a read that found this (`None`: nothing): written only if the
    /// key still holds it, so that nothing that changed the key meanwhile is overwritten;
    /// nor if a pattern invalidated after the read matches the key (the
    /// [`pattern_mark`](Handle::pattern_mark) taken before it).
    Unchanged(Option<Bytes>, u64),
}

// ---- the Redis backend's circuit breaker, for the layers above -------------------------------

impl Handle {
    /// The circuit breaker of this cache's root; `None` on the memory backend.
    pub(crate) fn breaker(&self) -> Option<&Breaker> {
        match &self.shared.backend {
            Backend::Redis(redis) => Some(redis.breaker()),
            Backend::Memory(_) => None,
        }
    }

    /// Adds the breaker's counters to a snapshot.
    pub(crate) fn add_breaker_stats(&self, s: &mut StatsSnapshot) {
        if let Backend::Redis(redis) = &self.shared.backend {
            redis.breaker().add_stats(s);
        }
    }
}
