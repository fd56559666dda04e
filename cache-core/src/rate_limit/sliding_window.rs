//! Sliding-window counter: two fixed windows, the previous one weighted by the part of it
//! the sliding window still covers (`previous * (window - elapsed) / window + current`). An
//! estimate (it assumes the previous window's requests were spread evenly), in constant
//! memory: two counters per key.
//!
//! On Redis: `scripts/rate_limit_sliding_window.lua`, a hash. Here: the same rules, with the
//! same floating-point operations in the same order as the script, so that both backends
//! round alike; for the memory backend and the table tests.

use super::Outcome;

/// What a key holds: the index of the current fixed window, its count, the previous
/// window's count, and the width they were counted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    window_index: u64,
    current: u64,
    previous: u64,
    width: u64,
}

/// True if a request of `cost` fits at `elapsed` into a window whose previous window counted
/// `previous` and which counts `current`.
fn fits(limit: u64, width: u64, cost: u64, previous: u64, current: u64, elapsed: u64) -> bool {
    let w = width as f64;
    previous as f64 * (w - elapsed as f64) / w + current as f64 + cost as f64 <= limit as f64
}

/// `x` rounded up, then moved up (at most three steps) until `ok` holds or `end` is reached:
/// the closed form is computed in floating point and may land one microsecond early.
fn first_fit(x: f64, end: u64, ok: impl Fn(u64) -> bool) -> u64 {
    let mut e = x.ceil().max(0.0) as u64;
    for _ in 0..3 {
        if e < end && !ok(e) {
            e += 1;
        }
    }
    e
}

/// Decides on a request of `cost` at `now` (microseconds); counts it if admitted and
/// `consume`.
pub(crate) fn decide(
    state: &mut Option<Counts>,
    limit: u64,
    width: u64,
    now: u64,
    cost: u64,
    consume: bool,
) -> Outcome {
    let index = now / width;
    let start = index * width;
    let elapsed = now - start;
    let (mut current, previous) = match *state {
        None => (0, 0),
        // The window was changed at run time: what was counted counts as the previous window.
        Some(c) if c.width != width => (0, c.current + c.previous),
        Some(c) if c.window_index >= index => (c.current, c.previous),
        Some(c) if c.window_index + 1 == index => (0, c.current),
        Some(_) => (0, 0),
    };
    let (l, w, k) = (limit as f64, width as f64, cost as f64);
    let mut estimate = previous as f64 * (w - elapsed as f64) / w + current as f64;
    let allowed = estimate + k <= l;
    let mut retry_after = None;
    let mut ttl = None;
    if allowed {
        if consume && cost > 0 {
            current += cost;
            estimate += k;
            *state = Some(Counts {
                window_index: index,
                current,
                previous,
                width,
            });
            ttl = Some(start + 2 * width - now);
        }
    } else {
        // Later in this window, once the previous one weighs little enough ...
        let mut later = None;
        if previous > 0 && current + cost <= limit {
            let x = w - (l - current as f64 - k) * w / previous as f64;
            let e = first_fit(x, width, |e| fits(limit, width, cost, previous, current, e));
            if e < width && fits(limit, width, cost, previous, current, e) {
                later = Some(e);
            }
        }
        retry_after = Some(match later {
            Some(e) => e.saturating_sub(elapsed),
            // ... or in the next window, where this one is the previous.
            None => {
                let f = if current > 0 {
                    let x = w - (l - k) * w / current as f64;
                    first_fit(x, width, |f| fits(limit, width, cost, current, 0, f))
                } else {
                    0
                };
                start + width + f - now
            }
        });
    }
    let reset_after = if current > 0 {
        start + 2 * width - now
    } else if previous > 0 {
        start + width - now
    } else {
        0
    };
    Outcome {
        allowed,
        remaining: (l - estimate).floor().max(0.0) as u64,
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

    /// Limit 10 per 10 s.
    #[test]
    fn table() {
        let steps: &[Step] = &[
            // now, cost, consume -> allowed, remaining, retry_after, reset_after
            (0, 5, true, true, 5, None, 20 * S),
            (5 * S, 5, true, true, 0, None, 15 * S),
            (5 * S, 1, true, false, 0, Some(6 * S), 15 * S),
            (5 * S, 1, false, false, 0, Some(6 * S), 15 * S), // a peek says the same
            // next window: the previous 10 weigh 9.000001 one microsecond before 11 s
            (11 * S - 1, 1, false, false, 0, Some(1), 9 * S + 1),
            (11 * S, 1, true, true, 0, None, 19 * S),
            (15 * S, 3, true, true, 1, None, 15 * S),
            (25 * S, 1, true, true, 7, None, 15 * S), // previous 4 weigh 2
            (100 * S, 10, true, true, 0, None, 20 * S), // long idle: both windows empty
            (100 * S + 1, 1, true, false, 0, Some(11 * S - 1), 20 * S - 1),
            (111 * S - 1, 1, true, false, 0, Some(1), 9 * S + 1),
            (111 * S, 1, true, true, 0, None, 19 * S), // exactly at retry_after: admitted
        ];
        let mut state = None;
        for (i, &(now, cost, consume, allowed, remaining, retry, reset)) in steps.iter().enumerate()
        {
            let o = decide(&mut state, 10, 10 * S, now, cost, consume);
            assert_eq!(
                (o.allowed, o.remaining, o.retry_after, o.reset_after),
                (allowed, remaining, retry, reset),
                "step {i}: {:?}",
                steps[i]
            );
        }
    }

    #[test]
    fn retry_after_is_exact_over_many_shapes() {
        for (limit, width, prev_cost, cur_cost, at) in [
            (7, 3 * S, 7, 0, 0),
            (7, 3 * S, 5, 2, S / 3),
            (100, 60 * S, 99, 1, 59 * S),
            (3, 1_000, 3, 0, 999),
        ] {
            let mut state = None;
            assert!(decide(&mut state, limit, width, 0, prev_cost, true).allowed);
            if cur_cost > 0 {
                assert!(decide(&mut state, limit, width, width, cur_cost, true).allowed);
            }
            let now = width + at;
            let Some(retry) = decide(&mut state, limit, width, now, 1, false).retry_after else {
                continue;
            };
            assert!(retry > 0);
            assert!(!decide(&mut state.clone(), limit, width, now + retry - 1, 1, false).allowed);
            assert!(decide(&mut state, limit, width, now + retry, 1, true).allowed);
        }
    }
}
