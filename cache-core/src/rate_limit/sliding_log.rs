//! Sliding-window log: every admitted unit of cost is recorded with its time; a request is
//! admitted if the records of the last `window`, plus its cost, stay within the limit.
//! Exact (no estimate), at the price of one record per admitted unit.
//!
//! On Redis: `scripts/rate_limit_sliding_log.lua`, a sorted set scored by the server's
//! `TIME`. Here: the same rules over a queue of timestamps, for the memory backend and the
//! table tests.

use std::collections::VecDeque;

use super::Outcome;

/// Decides on a request of `cost` at `now` (microseconds); records it if admitted and
/// `consume`. `log` holds the times of admitted units, oldest first.
pub(crate) fn decide(
    log: &mut VecDeque<u64>,
    limit: u64,
    window: u64,
    now: u64,
    cost: u64,
    consume: bool,
) -> Outcome {
    // The window is (now - window, now]: a unit recorded exactly `window` ago has left it.
    if let Some(edge) = now.checked_sub(window) {
        while log.front().is_some_and(|&at| at <= edge) {
            log.pop_front();
        }
    }
    let mut count = log.len() as u64;
    let allowed = count + cost <= limit;
    let mut retry_after = None;
    let mut ttl = None;
    if allowed {
        if consume && cost > 0 {
            // A clock that stepped back records at the newest time seen, so the queue stays
            // ordered (Redis keeps its sorted set ordered by score whatever the order of
            // arrival).
            let at = log.back().map_or(now, |&last| last.max(now));
            log.extend(std::iter::repeat_n(at, cost as usize));
            count += cost;
            ttl = Some(window);
        }
    } else {
        // Admitted once the k oldest units have left, k = count + cost - limit (<= count,
        // as cost <= limit).
        let k = (count + cost - limit) as usize;
        let kth = log.get(k - 1).copied().unwrap_or(now);
        retry_after = Some((kth + window).saturating_sub(now));
    }
    let reset_after = log
        .back()
        .map_or(0, |&newest| (newest + window).saturating_sub(now));
    Outcome {
        allowed,
        remaining: limit.saturating_sub(count),
        retry_after,
        reset_after,
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

    /// (time, cost, consume) -> (allowed, remaining, retry_after, reset_after), limit 3 per 10 s.
    #[test]
    fn table() {
        let steps: &[Step] = &[
            (0, 1, true, true, 2, None, 10 * S),
            (0, 1, true, true, 1, None, 10 * S), // same microsecond: counted
            (S, 1, true, true, 0, None, 10 * S),
            (2 * S, 1, true, false, 0, Some(8 * S), 9 * S),
            (2 * S, 1, false, false, 0, Some(8 * S), 9 * S), // a peek says the same
            (
                10 * S - 1,
                1,
                true,
                false,
                0,
                Some(1),
                11 * S - (10 * S - 1),
            ),
            (10 * S, 1, true, true, 1, None, 10 * S), // exactly at retry_after: admitted
            (10 * S, 2, true, false, 1, Some(S), 10 * S),
            (11 * S, 2, false, true, 2, None, 9 * S), // peek: would be admitted
            (11 * S, 2, true, true, 0, None, 10 * S),
            (30 * S, 3, true, true, 0, None, 10 * S),
        ];
        let mut log = VecDeque::new();
        for (i, &(now, cost, consume, allowed, remaining, retry, reset)) in steps.iter().enumerate()
        {
            let o = decide(&mut log, 3, 10 * S, now, cost, consume);
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
        let mut log = VecDeque::new();
        for now in [0, 7, 7, 13] {
            assert!(decide(&mut log, 4, 100, now, 1, true).allowed);
        }
        let denied = decide(&mut log, 4, 100, 50, 2, true);
        let retry = denied.retry_after.expect("denied");
        assert_eq!(retry, 57); // the two oldest (0 and 7) must leave: at 107
        assert!(!decide(&mut log, 4, 100, 50 + retry - 1, 2, false).allowed);
        assert!(decide(&mut log, 4, 100, 50 + retry, 2, true).allowed);
    }
}
