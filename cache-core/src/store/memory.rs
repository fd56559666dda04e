//! The embedded backend: a bounded moka cache of encoded entries with per-entry expiry.
//!
//! It stores the same envelope bytes as Redis, so every behaviour above the backend
//! (decode failures, fingerprints, tags) is the same on both.

use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::Expiry;
use moka::ops::compute::Op;
use moka::sync::Cache as Moka;

use super::{KeyTtl, TagKey, Write};
use crate::base::codec;
use crate::base::error::{Error, Result};

#[derive(Clone, Debug)]
struct Entry {
    data: Bytes,
    expires_at: Option<Instant>,
}

impl Entry {
    /// The entry, unless it expired.
    fn live(self, now: Instant) -> Option<Self> {
        match self.expires_at {
            Some(at) if at <= now => None,
            _ => Some(self),
        }
    }

    /// The entry, unless it expired or is a tombstone: what `exists` and friends see.
    fn holding(self, now: Instant) -> Option<Self> {
        self.live(now).filter(|e| !codec::is_tombstone(&e.data))
    }
}

struct ByDeadline;

impl ByDeadline {
    fn remaining(value: &Entry, now: Instant) -> Option<Duration> {
        value.expires_at.map(|at| at.saturating_duration_since(now))
    }
}

impl Expiry<String, Entry> for ByDeadline {
    fn expire_after_create(&self, _: &String, value: &Entry, now: Instant) -> Option<Duration> {
        Self::remaining(value, now)
    }

    // moka's default keeps the old deadline on update; a write sets a new one.
    fn expire_after_update(
        &self,
        _: &String,
        value: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Self::remaining(value, now)
    }
}

pub(crate) struct MemoryBackend {
    entries: Moka<String, Entry>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .finish()
    }
}

/// Bookkeeping bytes per entry counted against the capacity besides the key's and the
/// value's own allocations: moka's entry (its `Arc`ed value entry, the key's `Arc`, the
/// access-order deque node, the hash table slot, the timer wheel node of per-entry expiry)
/// and this store's `Entry`, with the allocator's headers of each, measured at about 300
/// bytes; rounded up, since the budget is a promise about resident memory.
const ENTRY_OVERHEAD: usize = 384;

/// What an entry really holds in memory: the allocations of its key and value (capacities,
/// rounded to the allocator's 16-byte granules with their 8-byte header) and the overhead.
fn weight(key: &str, data: &Bytes) -> usize {
    let allocated = |n: usize| if n == 0 { 0 } else { (n + 8).div_ceil(16) * 16 };
    allocated(key.len()) + allocated(data.len()) + ENTRY_OVERHEAD
}

/// The value's bytes in an allocation of exactly their size: an encoded value may carry
/// spare capacity (a compressed payload written over the buffer that held it uncompressed,
/// a vector grown by doubling), which the budget would otherwise not see.
fn exact(mut value: Vec<u8>) -> Bytes {
    value.shrink_to_fit();
    Bytes::from(value)
}

impl MemoryBackend {
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        MemoryBackend {
            entries: Moka::builder()
                .max_capacity(capacity_bytes)
                .weigher(|k: &String, v: &Entry| {
                    u32::try_from(weight(k, &v.data)).unwrap_or(u32::MAX)
                })
                .expire_after(ByDeadline)
                .build(),
        }
    }

    /// `(entries, bytes counted against the capacity)`, for health reports.
    pub(crate) fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    /// Up to `limit` live keys starting with `prefix`, with their size as counted against the
    /// capacity, for key reports; visits every entry.
    pub(crate) fn keys_with_prefix(&self, prefix: &str, limit: usize) -> Vec<(String, u64)> {
        let now = Instant::now();
        self.entries
            .iter()
            .filter(|(k, e)| k.starts_with(prefix) && e.clone().live(now).is_some())
            .take(limit)
            .map(|(k, e)| {
                let size = weight(&k, &e.data) as u64;
                (k.as_ref().clone(), size)
            })
            .collect()
    }

    fn live(&self, key: &str) -> Option<Entry> {
        self.entries.get(key).and_then(|e| e.live(Instant::now()))
    }

    fn holding(&self, key: &str) -> Option<Entry> {
        self.entries
            .get(key)
            .and_then(|e| e.holding(Instant::now()))
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.live(key).map(|e| e.data))
    }

    pub(crate) fn get_with_versions<K: TagKey>(
        &self,
        key: &str,
        tag_keys: &[K],
    ) -> Result<(Option<Bytes>, Vec<Option<u64>>)> {
        Ok((self.get(key)?, self.versions(tag_keys)?))
    }

    /// The value and the versions of `tag_keys` then of `generation_keys`.
    pub(crate) fn get_with_scope<K: TagKey, G: TagKey>(
        &self,
        key: &str,
        tag_keys: &[K],
        generation_keys: &[G],
    ) -> Result<(Option<Bytes>, Vec<Option<u64>>)> {
        let mut versions = self.versions(tag_keys)?;
        versions.extend(self.versions(generation_keys)?);
        Ok((self.get(key)?, versions))
    }

    /// Moves a scope's generation past every value it held, as the Redis script does
    /// (scripts/clear.lua): the larger of the current one plus one and the clock.
    pub(crate) fn clear_generation(&self, key: &str) -> Result<u64> {
        let now = Instant::now();
        let mut next = 0;
        self.entries
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let current = current
                    .and_then(|e| e.into_value().live(now))
                    .and_then(|e| codec::decode_version(&e.data))
                    .unwrap_or(0);
                next = current.saturating_add(1).max(codec::now_us());
                Op::Put(Entry {
                    data: Bytes::from(next.to_string()),
                    expires_at: None,
                })
            });
        Ok(next)
    }

    pub(crate) fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        Ok(keys.iter().map(|k| self.live(k).map(|e| e.data)).collect())
    }

    pub(crate) fn get_many_with_versions<K: AsRef<str>>(
        &self,
        keys: &[K],
        tag_keys: &[String],
    ) -> Result<super::ValuesAndVersions> {
        let values = keys
            .iter()
            .map(|k| self.live(k.as_ref()).map(|e| e.data))
            .collect();
        Ok((values, self.versions(tag_keys)?))
    }

    pub(crate) fn set_many_if_unchanged(
        &self,
        writes: &[super::ConditionalWrite],
    ) -> Result<Vec<bool>> {
        writes
            .iter()
            .map(|(key, value, ttl, seen)| {
                self.set_if_unchanged(key, value.clone(), *ttl, seen.as_deref())
            })
            .collect()
    }

    pub(crate) fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<()> {
        let entry = Entry {
            data: exact(value),
            expires_at: ttl.map(|t| crate::base::limits::deadline(Instant::now(), t)),
        };
        self.entries.insert(key.to_owned(), entry);
        Ok(())
    }

    /// Writes `value` only if `key` still holds what a read found (`seen`; `None`: nothing).
    pub(crate) fn set_if_unchanged(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        seen: Option<&[u8]>,
    ) -> Result<bool> {
        Ok(self.keep_if_unchanged(key, value, ttl, seen).is_some())
    }

    /// [`set_if_unchanged`](Self::set_if_unchanged), returning the bytes kept (the store's
    /// own allocation, shared) when it wrote.
    pub(crate) fn keep_if_unchanged(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        seen: Option<&[u8]>,
    ) -> Option<Bytes> {
        let now = Instant::now();
        let result = self
            .entries
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let current = current.and_then(|e| e.into_value().live(now));
                if current.as_ref().map(|e| &e.data[..]) == seen {
                    Op::Put(Entry {
                        data: exact(value),
                        expires_at: ttl.map(|t| crate::base::limits::deadline(now, t)),
                    })
                } else {
                    Op::Nop
                }
            });
        match result {
            moka::ops::compute::CompResult::Inserted(entry)
            | moka::ops::compute::CompResult::ReplacedWith(entry) => Some(entry.into_value().data),
            _ => None,
        }
    }

    pub(crate) fn set_many(&self, writes: Vec<Write>) -> Result<()> {
        for (key, value, ttl) in writes {
            self.set(&key, value, ttl)?;
        }
        Ok(())
    }

    /// Replaces each key's entry with `tombstone` for `hold`; returns how many held a value.
    pub(crate) fn delete(&self, keys: &[String], tombstone: &[u8], hold: Duration) -> Result<u64> {
        let now = Instant::now();
        let tombstone = Bytes::copy_from_slice(tombstone);
        let mut removed = 0;
        for key in keys {
            self.entries.entry(key.clone()).and_compute_with(|current| {
                if current.and_then(|e| e.into_value().holding(now)).is_some() {
                    removed += 1;
                }
                Op::Put(Entry {
                    data: tombstone.clone(),
                    expires_at: Some(crate::base::limits::deadline(now, hold)),
                })
            });
        }
        Ok(removed)
    }

    pub(crate) fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.holding(key).is_some())
    }

    pub(crate) fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let result = self
            .entries
            .entry(key.to_owned())
            .and_compute_with(
                |current| match current.and_then(|e| e.into_value().holding(now)) {
                    Some(e) => Op::Put(Entry {
                        expires_at: Some(crate::base::limits::deadline(now, ttl)),
                        ..e
                    }),
                    None => Op::Nop,
                },
            );
        Ok(matches!(
            result,
            moka::ops::compute::CompResult::ReplacedWith(_)
        ))
    }

    pub(crate) fn ttl(&self, key: &str) -> Result<KeyTtl> {
        let now = Instant::now();
        Ok(match self.holding(key) {
            None => KeyTtl::Missing,
            Some(Entry {
                expires_at: None, ..
            }) => KeyTtl::Persistent,
            Some(Entry {
                expires_at: Some(at),
                ..
            }) => KeyTtl::Expires(at.saturating_duration_since(now)),
        })
    }

    /// As Redis `INCRBY`: a missing key (or a tombstone) counts from zero, the TTL is kept, a
    /// value that is not an integer is an error.
    pub(crate) fn incr(&self, key: &str, by: i64) -> Result<i64> {
        let now = Instant::now();
        let mut outcome: Result<i64> = Err(Error::WrongKind {
            operation: "incr",
            key: key.to_owned(),
        });
        self.entries
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let current = current.and_then(|e| e.into_value().holding(now));
                let (base, expires_at) = match &current {
                    None => (Some(0), None),
                    Some(e) => (codec::decode_plain::<i64>(&e.data).ok(), e.expires_at),
                };
                match base.and_then(|b| b.checked_add(by)) {
                    Some(n) => {
                        outcome = Ok(n);
                        Op::Put(Entry {
                            data: Bytes::from(n.to_string()),
                            expires_at,
                        })
                    }
                    None => Op::Nop,
                }
            });
        outcome
    }

    /// Live keys for which `matches` holds (pattern invalidation: moka is iterated, as
    /// Redis is scanned).
    pub(crate) fn keys_where(&self, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let now = Instant::now();
        self.entries
            .iter()
            .filter(|(k, e)| e.expires_at.is_none_or(|at| at > now) && matches(k))
            .map(|(k, _)| String::clone(&k))
            .collect()
    }

    pub(crate) fn versions<K: TagKey>(&self, tag_keys: &[K]) -> Result<Vec<Option<u64>>> {
        Ok(tag_keys
            .iter()
            .map(|k| {
                self.live(k.as_ref())
                    .and_then(|e| codec::decode_version(&e.data))
            })
            .collect())
    }

    pub(crate) fn create_versions<K: TagKey>(
        &self,
        tag_keys: &[K],
        initial: u64,
    ) -> Result<Vec<Option<u64>>> {
        let now = Instant::now();
        Ok(tag_keys
            .iter()
            .map(|k| {
                let entry = self
                    .entries
                    .entry(k.as_ref().to_owned())
                    .and_compute_with(|current| {
                        match current.and_then(|e| e.into_value().live(now)) {
                            Some(_) => Op::Nop,
                            None => Op::Put(Entry {
                                data: Bytes::from(initial.to_string()),
                                expires_at: None,
                            }),
                        }
                    });
                let data = match entry {
                    moka::ops::compute::CompResult::Inserted(e)
                    | moka::ops::compute::CompResult::ReplacedWith(e)
                    | moka::ops::compute::CompResult::Unchanged(e) => Some(e.into_value().data),
                    _ => None,
                };
                data.and_then(|d| codec::decode_version(&d))
            })
            .collect())
    }

    pub(crate) fn bump<K: TagKey>(&self, tag_keys: &[K]) -> Result<Vec<u64>> {
        tag_keys
            .iter()
            .map(|k| self.incr(k.as_ref(), 1).map(|v| v.max(0) as u64))
            .collect()
    }
}
