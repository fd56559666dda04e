//! The distributed fill lock (`lock = "distributed"`): across processes, one computes a
//! missing key while the others wait for its value.
//!
//! A lease in Redis, `<prefix>~fill:<key>`, taken with `SET NX PX` by a random 128-bit owner
//! and released by compare-and-delete after the value is stored; the release is published on
//! the lock key's channel. A process that does not get it serves its stale value if it has
//! one; otherwise it subscribes to that channel (through the lock module's feed, one pub/sub
//! connection per cache root) and waits for the release, then looks again (a `GET` of the
//! value, then a `SET NX` of the lock: single-key commands, so a cluster routes each by its own
//! slot), until the value arrives, the lock frees (its holder failed, or died and its lease ran
//! out: then this process takes it), or the lock wait passes: then it computes anyway and
//! counts a lock timeout (availability over strictness). A backoff from 10 ms to 500 ms is the
//! safety net for a lost message and for a lease that runs out, which publishes nothing.
//!
//! The memory backend lives in one process, where single-flight already is the whole story.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::Script;

use super::Policy;
use crate::base::codec;
use crate::engine::lease::ReleaseWatch;
use crate::pipeline::Pipeline;
use crate::store::Backend;

static UNLOCK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/fill_unlock.lua")));

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// A fill lock held by this process (nothing to release on the memory backend).
#[derive(Debug)]
pub(crate) struct Guard {
    held: Option<(String, String)>,
}

impl Guard {
    /// Releases the lock if this process still owns it. A failure is left to the lease.
    pub(crate) async fn release(self, cache: &Pipeline) {
        let (Some((key, owner)), Backend::Redis(redis)) = (self.held, cache.backend_ref()) else {
            return;
        };
        let mut invocation = UNLOCK.key(&key);
        invocation.arg(&owner);
        if let Err(e) = redis.run_script::<u8>("fill unlock", &invocation).await {
            tracing::debug!(error = %e, "fill lock not released; its lease will expire");
        }
    }
}

pub(crate) enum Acquired {
    /// This process computes.
    Held(Guard),
    /// Another holds the lock and the caller has a stale value to serve.
    Stale,
    /// The value was stored by another process meanwhile.
    Arrived,
    /// Not had within the lock wait (or Redis failed): compute anyway.
    TimedOut,
}

/// The fill lock of `full`, or what to do instead. `seen` is what the caller's read found.
pub(crate) async fn acquire(
    cache: &Pipeline,
    full: &str,
    seen: Option<&[u8]>,
    policy: &Policy,
    has_stale: bool,
) -> Acquired {
    let Backend::Redis(redis) = cache.backend_ref() else {
        return Acquired::Held(Guard { held: None });
    };
    let prefix = cache.key_prefix();
    let lock_key = format!(
        "{prefix}~fill:{}",
        full.strip_prefix(prefix).unwrap_or(full)
    );
    let owner = owner_token();
    let lease = crate::base::limits::millis(policy.lock_lease);
    let deadline = Instant::now() + policy.lock_wait;
    let mut backoff = FIRST_BACKOFF;
    // Subscribed after the first refusal: an uncontended fill pays no pub/sub round trip.
    let mut watch: Option<ReleaseWatch> = None;
    loop {
        let released = watch.as_ref().map(ReleaseWatch::released);
        if watch.is_some() {
            // Has the value arrived (something else than what the read found, and not a
            // tombstone)?
            let mut get = redis::cmd("GET");
            get.arg(full);
            match redis.run::<Option<Vec<u8>>>("GET", get).await {
                Ok(Some(now)) if !codec::is_tombstone(&now) && seen != Some(&now[..]) => {
                    return Acquired::Arrived;
                }
                Ok(_) => {}
                Err(e) => return unavailable(e),
            }
        }
        let mut set = redis::cmd("SET");
        set.arg(&lock_key)
            .arg(&owner)
            .arg("NX")
            .arg("PX")
            .arg(lease);
        match redis.run::<Option<String>>("SET NX (fill lock)", set).await {
            Ok(Some(_)) => {
                let guard = Guard {
                    held: Some((lock_key, owner)),
                };
                // The holder before us may have stored the value and released the lock
                // between our read and our `SET NX`: look once more before computing it again.
                let mut get = redis::cmd("GET");
                get.arg(full);
                if let Ok(Some(now)) = redis.run::<Option<Vec<u8>>>("GET", get).await
                    && !codec::is_tombstone(&now)
                    && seen != Some(&now[..])
                {
                    guard.release(cache).await;
                    return Acquired::Arrived;
                }
                return Acquired::Held(guard);
            }
            Ok(None) if has_stale => return Acquired::Stale,
            Ok(None) => {}
            Err(e) => return unavailable(e),
        }
        let now = Instant::now();
        if now >= deadline {
            return Acquired::TimedOut;
        }
        let Some(released) = released else {
            // Subscribed now, then straight back to look: the holder may have released
            // before the subscription was live.
            drop(released);
            watch = Some(ReleaseWatch::new(cache, redis, &lock_key).await);
            continue;
        };
        tokio::select! {
            _ = released => {}
            _ = tokio::time::sleep(backoff.min(deadline - now)) => {
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn unavailable(e: crate::base::error::Error) -> Acquired {
    tracing::debug!(error = %e, "fill lock unavailable; computing without it");
    Acquired::TimedOut
}

/// 128 random bits, hex: the owner of one lock acquisition.
fn owner_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut words = [0u64; 2];
    for (i, word) in words.iter_mut().enumerate() {
        let mut h = state.build_hasher();
        h.write_u64(crate::base::codec::now_us());
        h.write_usize(i);
        h.write_u64(std::process::id().into());
        *word = h.finish();
    }
    format!("{:016x}{:016x}", words[0], words[1])
}
