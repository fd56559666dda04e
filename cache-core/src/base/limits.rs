//! The rules every duration and size a caller hands the cache follows, in one place, so that
//! both backends (and every capability built on them: locks, rate limiters, sessions) give the
//! same answer to the same input, and none panics or overflows.
//!
//! Durations:
//! - the cache counts in whole milliseconds: a duration with a fraction of a millisecond is
//!   rounded **up** (1 ns is 1 ms), on both backends;
//! - zero is refused: [`Error::InvalidDuration`] for a duration given to an operation (a TTL,
//!   `expire`), [`Error::Config`] for a setting. Zero means "never" to some stores and "now"
//!   to others, so the cache asks the caller to say which (`None` for the default TTL or no
//!   TTL, [`Cache::delete`](crate::Cache::delete) for now);
//! - anything above [`MAX_TTL`] (about ten years) is clamped to it: `Duration::MAX` is a
//!   common way of saying "as long as possible", and ten years is that, for a cache, while
//!   `now + Duration::MAX` overflows an `Instant`, a unix timestamp in milliseconds and
//!   Redis's `PX` alike.
//!
//! Sizes: a stored value (the envelope, after compression and encryption) above
//! [`max_value_size`](crate::CacheBuilder::max_value_size) is [`Error::TooLarge`], refused
//! before it reaches the backend.
//!
//! The `pub(crate)` helpers here are what capability modules call for their own durations
//! (lock TTLs, windows, idle timeouts): [`duration`] for one given per call, [`setting`] for a
//! configured one, then [`millis`], [`deadline`] or [`expires_at_ms`] for the arithmetic.

// Some helpers are there for the capability modules that land next.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use crate::base::error::{Error, Result};

/// The longest duration the cache uses: longer TTLs (and other durations) are clamped to this,
/// 3,650 days. See [the guide](crate::guide::configuration#durations-and-sizes).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// use std::time::Duration;
/// use cache_core::{KeyTtl, limits::MAX_TTL};
/// let cache = cache_core::Cache::in_memory();
/// cache.set("k", &1u8, Duration::MAX).await?; // clamped, not an overflow
/// assert!(matches!(cache.ttl("k").await?, KeyTtl::Expires(left) if left <= MAX_TTL));
/// # Ok(()) }
/// ```
pub const MAX_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

/// The default of [`max_value_size`](crate::CacheBuilder::max_value_size): 16 MiB.
///
/// ```
/// assert_eq!(cache_core::limits::DEFAULT_MAX_VALUE_SIZE, 16 * 1024 * 1024);
/// ```
pub const DEFAULT_MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;

/// The largest accepted [`max_value_size`](crate::CacheBuilder::max_value_size): 512 MiB,
/// the largest string Redis stores by default (`proto-max-bulk-len`).
///
/// ```
/// assert_eq!(cache_core::limits::MAX_VALUE_SIZE_LIMIT, 512 * 1024 * 1024);
/// ```
pub const MAX_VALUE_SIZE_LIMIT: usize = 512 * 1024 * 1024;

/// The largest accepted [`pool_size`](crate::CacheBuilder::pool_size): one slot is kept per
/// connection, and a server serves a few thousand clients at most.
pub(crate) const MAX_POOL_SIZE: u32 = 1024;

const MAX_TTL_MS: u64 = MAX_TTL.as_secs() * 1000;

/// Rounds `d` up to whole milliseconds and clamps it to [`MAX_TTL`]; `None` for zero.
fn normalized(d: Duration) -> Option<Duration> {
    if d.is_zero() {
        return None;
    }
    let ms = d.as_nanos().div_ceil(1_000_000).min(u128::from(MAX_TTL_MS)) as u64;
    Some(Duration::from_millis(ms))
}

/// A duration given to an operation (`name`: what it is, for the error: `"ttl"`, `"lock ttl"`,
/// `"window"`, ...): rounded up to whole milliseconds, clamped to [`MAX_TTL`]; zero is
/// [`Error::InvalidDuration`].
pub(crate) fn duration(name: &'static str, d: Duration) -> Result<Duration> {
    normalized(d).ok_or(Error::InvalidDuration {
        name,
        duration: d,
        reason: "must be at least one millisecond",
    })
}

/// A TTL given to a write (`None`: none); see [`duration`].
pub(crate) fn ttl(ttl: Option<Duration>) -> Result<Option<Duration>> {
    ttl.map(|d| duration("ttl", d)).transpose()
}

/// A configured duration (builder or environment): as [`duration`], zero being
/// [`Error::Config`] naming `setting`.
pub(crate) fn setting(setting: &'static str, d: Duration) -> Result<Duration> {
    normalized(d).ok_or_else(|| Error::Config {
        setting,
        reason: "must be at least one millisecond".into(),
    })
}

/// `d` in milliseconds, within 1 ..= [`MAX_TTL`] (what Redis's `PX` and `PEXPIRE` accept
/// whatever the clock), for durations already checked (and for any other, clamped).
pub(crate) fn millis(d: Duration) -> u64 {
    normalized(d).map_or(1, |d| d.as_millis() as u64)
}

/// `now + d` as an `Instant`, never panicking: `d` is rounded up to whole milliseconds and
/// clamped to [`MAX_TTL`] first (as [`millis`] does for Redis; zero stays zero), and a
/// platform whose `Instant` cannot reach that far gets the furthest it can.
pub(crate) fn deadline(now: Instant, d: Duration) -> Instant {
    let d = normalized(d).unwrap_or(Duration::ZERO);
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// `now_ms + d` in unix milliseconds (the envelope's expiry), saturating.
pub(crate) fn expires_at_ms(now_ms: u64, d: Duration) -> u64 {
    now_ms.saturating_add(millis(d))
}

/// `size` bytes stored under `key` (shown shortened), against `limit`.
pub(crate) fn value_size(key: &str, size: usize, limit: usize) -> Result<()> {
    if size > limit {
        return Err(Error::TooLarge {
            key: crate::base::key::shorten_for_display(key),
            size,
            limit,
        });
    }
    Ok(())
}

/// A configured value size limit: 1 ..= [`MAX_VALUE_SIZE_LIMIT`].
pub(crate) fn value_size_setting(bytes: usize) -> Result<usize> {
    if bytes == 0 || bytes > MAX_VALUE_SIZE_LIMIT {
        return Err(Error::Config {
            setting: "max_value_size",
            reason: format!(
                "`{bytes}` is outside 1 ..= {MAX_VALUE_SIZE_LIMIT} bytes (512 MiB, Redis's largest string)"
            ),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_milliseconds_and_clamp() {
        assert_eq!(
            duration("ttl", Duration::from_nanos(1)).ok(),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            duration("ttl", Duration::from_micros(1500)).ok(),
            Some(Duration::from_millis(2))
        );
        assert_eq!(
            duration("ttl", Duration::from_secs(60)).ok(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(duration("ttl", Duration::MAX).ok(), Some(MAX_TTL));
        assert_eq!(
            duration("ttl", Duration::from_secs(u64::MAX)).ok(),
            Some(MAX_TTL)
        );
        assert!(matches!(
            duration("ttl", Duration::ZERO),
            Err(Error::InvalidDuration { name: "ttl", .. })
        ));
        assert!(matches!(
            setting("command_timeout", Duration::ZERO),
            Err(Error::Config {
                setting: "command_timeout",
                ..
            })
        ));
        assert_eq!(ttl(None).ok(), Some(None));
    }

    #[test]
    fn arithmetic_saturates() {
        let now = Instant::now();
        assert!(deadline(now, Duration::MAX) >= now);
        assert_eq!(
            deadline(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(millis(Duration::MAX), MAX_TTL_MS);
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(expires_at_ms(u64::MAX - 1, Duration::MAX), u64::MAX);
        assert_eq!(expires_at_ms(1000, Duration::from_secs(1)), 2000);
        // Redis's PX takes a signed 64-bit count of milliseconds added to its clock.
        assert!(MAX_TTL_MS < (i64::MAX as u64) / 2);
    }

    #[test]
    fn sizes() {
        assert!(value_size("k", 10, 10).is_ok());
        assert!(matches!(
            value_size("k", 11, 10),
            Err(Error::TooLarge {
                size: 11,
                limit: 10,
                ..
            })
        ));
        assert!(value_size_setting(0).is_err());
        assert!(value_size_setting(MAX_VALUE_SIZE_LIMIT + 1).is_err());
        assert_eq!(value_size_setting(1).ok(), Some(1));
    }
}
