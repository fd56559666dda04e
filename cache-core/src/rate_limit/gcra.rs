//! GCRA, the generic cell rate algorithm (a token bucket without a refill task): one
//! timestamp per key, the theoretical arrival time (TAT) of the next request. Each unit of
//! cost moves the TAT one emission interval (`period / limit`) ahead; a request is admitted
//! while the TAT stays within `burst` intervals of now. So `burst` requests pass at once
//! from idle, then `limit` per `period`.
//!
//! On Redis: `scripts/rate_limit_gcra.lua`. Here: the same rules for the memory backend
//! and the table tests.

use super::Outcome;

/// Decides on a request of `cost` at `now` (microseconds) against the stored TAT (`tat`,
/// updated if admitted and `consume`). `interval` is the emission interval in microseconds.
pub(crate) fn decide(
    tat: &mut Option<u64>,
    interval: u64,
    burst: u64,
    now: u64,
    cost: u64,
    consume: bool,
) -> Outcome {
    let tolerance = burst * interval;
    let mut at = tat.unwrap_or(0).max(now);
    let new_tat = at + cost * interval;
    let allow_at = new_tat.saturating_sub(tolerance);
    let allowed = now >= allow_at;
    let mut retry_after = None;
    let mut ttl = None;
    if allowed {
        if consume && cost > 0 {
            at = new_tat;
            *tat = Some(at);
            // Rounded up to the millisecond as PEXPIRE is.
            ttl = Some((at - now).div_ceil(1000) * 1000);
        }
    } else {
        retry_after = Some(allow_at - now);
    }
    Outcome {
        allowed,
        remaining: tolerance.saturating_sub(at - now) / interval,
        retry_after,
        reset_after: at - now,
        now,
        ttl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    /// now, cost, consume -> allowed, remaining, retry_after, reset_after
    type Step = (u64, u64, bool, bool, u64, Option<u64>, u64);

    /// 10 per second (T = 100 ms), burst 3.
    #[test]
    fn table() {
        let ms = 1_000;
        let steps: &[Step] = &[
            // now, cost, consume -> allowed, remaining, retry_after, reset_after
            (0, 1, true, true, 2, None, 100 * ms),
            (0, 1, true, true, 1, None, 200 * ms), // same microsecond: counted
            (0, 1, true, true, 0, None, 300 * ms),
            (0, 1, true, false, 0, Some(100 * ms), 300 * ms),
            (0, 1, false, false, 0, Some(100 * ms), 300 * ms), // a peek says the same
            (100 * ms - 1, 1, true, false, 0, Some(1), 200 * ms + 1),
            (100 * ms, 1, true, true, 0, None, 300 * ms), // exactly at retry_after
            (100 * ms, 2, true, false, 0, Some(200 * ms), 300 * ms),
            (S, 3, true, true, 0, None, 300 * ms), // idle long enough: the whole burst again
            (S + 250 * ms, 2, true, true, 0, None, 250 * ms),
        ];
        let mut tat = None;
        for (i, &(now, cost, consume, allowed, remaining, retry, reset)) in steps.iter().enumerate()
        {
            let o = decide(&mut tat, 100 * ms, 3, now, cost, consume);
            assert_eq!(
                (o.allowed, o.remaining, o.retry_after, o.reset_after),
                (allowed, remaining, retry, reset),
                "step {i}: {:?}",
                steps[i]
            );
        }
    }

    #[test]
    fn retry_after_is_exact() {
        let mut tat = None;
        assert!(decide(&mut tat, 333_334, 2, 5, 2, true).allowed);
        let denied = decide(&mut tat, 333_334, 2, 1_000, 1, true);
        let retry = denied.retry_after.expect("denied");
        assert!(!decide(&mut tat, 333_334, 2, 1_000 + retry - 1, 1, false).allowed);
        assert!(decide(&mut tat, 333_334, 2, 1_000 + retry, 1, true).allowed);
    }
}
