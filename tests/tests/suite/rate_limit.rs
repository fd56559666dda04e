//! Rate limiters (issue #14): the three algorithms on both backends, their math with an
//! injected clock, concurrent clients against one key on a real redis-server, exact
//! retry-after, bursts in one millisecond, expiries, the outage policy, and the tower layer.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use cache_core::rate_limit::{Algorithm, ManualClock, OnUnavailable};
use cache_core::{Cache, Decision, Error, RateLimit, RateLimiter};

const MS: Duration = Duration::from_millis(1);

fn micros(d: &Decision) -> u64 {
    d.decided_at()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn all(limit: u64, window: Duration) -> [RateLimit; 3] {
    [
        RateLimit::sliding_log(limit, window),
        RateLimit::sliding_window(limit, window),
        RateLimit::gcra(limit, window),
    ]
}

/// The server's time, in microseconds.
async fn server_time() -> u64 {
    let mut con = raw().await;
    let (s, us): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut con)
        .await
        .expect("TIME");
    s * 1_000_000 + us
}

/// Waits (bounded) until the server's clock reaches `at` (microseconds).
async fn until_server_time(at: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = server_time().await;
        if now >= at {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server's clock did not reach {at}"
        );
        tokio::time::sleep(Duration::from_micros((at - now).min(50_000))).await;
    }
}

/// A connection to where `tests::redis_cache()` keeps its keys, whatever the topology.
async fn raw() -> tests::RawConnection {
    tests::raw_connection().await
}

/// Keys of the limiters of `cache` (on a cluster, `KEYS` is asked of every primary).
async fn limiter_keys(cache: &Cache) -> Vec<String> {
    let mut con = raw().await;
    let pattern = format!("{}~rl:*", cache.key_prefix());
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut con)
        .await
        .expect("KEYS")
}

// ---- the math, with an injected clock (memory backend) ------------------------------------

/// Each algorithm through the public API with a clock moved by hand: the same steps as the
/// unit tables, so the memory backend answers what the rules say.
#[tokio::test]
async fn table_with_injected_clock_each_algorithm() {
    let s = Duration::from_secs(1);
    // (algorithm, [(advance, cost, consume, allowed, remaining, retry_after, reset_after)])
    type Step = (Duration, u64, bool, bool, u64, Option<Duration>, Duration);
    let cases: Vec<(RateLimit, Vec<Step>)> = vec![
        (
            RateLimit::sliding_log(3, 10 * s),
            vec![
                (Duration::ZERO, 1, true, true, 2, None, 10 * s),
                (Duration::ZERO, 1, true, true, 1, None, 10 * s),
                (s, 1, true, true, 0, None, 10 * s),
                (s, 1, true, false, 0, Some(8 * s), 9 * s),
                (Duration::ZERO, 1, false, false, 0, Some(8 * s), 9 * s),
                (8 * s, 1, true, true, 1, None, 10 * s),
            ],
        ),
        (
            RateLimit::sliding_window(10, 10 * s),
            vec![
                (Duration::ZERO, 5, true, true, 5, None, 20 * s),
                (5 * s, 5, true, true, 0, None, 15 * s),
                (Duration::ZERO, 1, true, false, 0, Some(6 * s), 15 * s),
                (6 * s, 1, true, true, 0, None, 19 * s),
            ],
        ),
        (
            RateLimit::gcra(10, s).burst(3),
            vec![
                (Duration::ZERO, 1, true, true, 2, None, 100 * MS),
                (Duration::ZERO, 2, true, true, 0, None, 300 * MS),
                (Duration::ZERO, 1, true, false, 0, Some(100 * MS), 300 * MS),
                (100 * MS, 1, true, true, 0, None, 300 * MS),
                (s, 3, true, true, 0, None, 300 * MS),
            ],
        ),
    ];
    for (config, steps) in cases {
        let clock = ManualClock::new();
        // Fixed windows start at multiples of the width: start on one.
        clock.set(Duration::from_secs(1_700_000_000));
        let algorithm = config.algorithm();
        let limiter = tests::memory_cache().rate_limiter(config.clock(clock.clone()));
        for (i, &(advance, cost, consume, allowed, remaining, retry, reset)) in
            steps.iter().enumerate()
        {
            clock.advance(advance);
            let d = if consume {
                limiter.check_n("id", cost).await
            } else {
                limiter.peek("id").await
            }
            .expect("decides");
            assert_eq!(
                (d.allowed, d.remaining, d.retry_after, d.reset_after),
                (allowed, remaining, retry, reset),
                "{algorithm:?} step {i}"
            );
            assert_eq!(
                d.decided_at().duration_since(UNIX_EPOCH).ok(),
                Some(clock_now(&clock))
            );
        }
    }
}

fn clock_now(clock: &ManualClock) -> Duration {
    use cache_core::rate_limit::Clock;
    clock.now()
}

/// With the clock moved by hand: a request at exactly `now + retry_after` is admitted, one a
/// microsecond earlier is not; every algorithm, several costs.
#[tokio::test]
async fn retry_after_is_exact_with_injected_clock() {
    for config in all(5, Duration::from_millis(1_500)) {
        for cost in [1, 2, 5] {
            let clock = ManualClock::new();
            let algorithm = config.algorithm();
            let limiter = tests::memory_cache().rate_limiter(config.clone().clock(clock.clone()));
            for _ in 0..7 {
                clock.advance(Duration::from_micros(123_457));
                limiter.check_n("id", 2).await.expect("decides");
            }
            let denied = limiter.check_n("id", cost).await.expect("decides");
            let Some(retry) = denied.retry_after else {
                continue;
            };
            assert!(!denied.allowed);
            clock.advance(retry - Duration::from_micros(1));
            // A denied check counts nothing, so it can probe the instant before.
            let early = limiter.check_n("id", cost).await.expect("decides");
            assert!(
                !early.allowed,
                "{algorithm:?} cost {cost}: admitted before retry_after"
            );
            clock.advance(Duration::from_micros(1));
            let d = limiter.check_n("id", cost).await.expect("decides");
            assert!(
                d.allowed,
                "{algorithm:?} cost {cost}: denied at retry_after"
            );
        }
    }
}

// ---- live: concurrent clients on one key ---------------------------------------------------

/// 8 clients hammer one id for a bounded time; returns the times of the admitted requests
/// (the limiter's clock: Redis's TIME on Redis), sorted.
async fn hammer(limiter: &RateLimiter, id: &str, for_how_long: Duration) -> Vec<u64> {
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let limiter = limiter.clone();
        let admitted = admitted.clone();
        let stop = stop.clone();
        let id = id.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut checks = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let d = limiter.check(id.as_str()).await.expect("decides");
                checks += 1;
                if d.allowed {
                    admitted.lock().expect("lock").push(micros(&d));
                }
                if checks.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            checks
        }));
    }
    tokio::time::sleep(for_how_long).await;
    stop.store(true, Ordering::Relaxed);
    let mut checks = 0;
    for t in tasks {
        checks += t.await.expect("task");
    }
    let mut times = std::mem::take(&mut *admitted.lock().expect("lock"));
    times.sort_unstable();
    assert!(
        checks > times.len() as u64,
        "the clients never hit the limit ({checks} checks)"
    );
    times
}

/// Sliding log: every window (t - W, t] holds at most `limit` admitted requests.
fn assert_log_windows(times: &[u64], limit: u64, window: u64, what: &str) {
    let mut first = 0;
    for (j, &t) in times.iter().enumerate() {
        while times[first] + window <= t {
            first += 1;
        }
        let n = (j - first + 1) as u64;
        assert!(
            n <= limit,
            "{what}: {n} admitted in the window ending at {t} (limit {limit})"
        );
    }
}

/// Sliding-window counter: each admitted request fitted the weighted estimate of the
/// requests admitted before it (the previous fixed window weighted, the current one whole),
/// recomputed from the recorded times; so no fixed window holds more than the limit.
fn assert_counter_windows(times: &[u64], limit: u64, width: u64, what: &str) {
    use std::collections::HashMap;
    let mut per_window: HashMap<u64, u64> = HashMap::new();
    for &t in times {
        let index = t / width;
        let elapsed = t - index * width;
        let previous = per_window
            .get(&(index.wrapping_sub(1)))
            .copied()
            .unwrap_or(0);
        let current = per_window.entry(index).or_default();
        let w = width as f64;
        let estimate = previous as f64 * (w - elapsed as f64) / w + *current as f64;
        assert!(
            estimate + 1.0 <= limit as f64,
            "{what}: admitted at {t} over an estimate of {estimate} (limit {limit})"
        );
        *current += 1;
        assert!(
            *current <= limit,
            "{what}: fixed window {index} holds {current}"
        );
    }
}

/// GCRA: any run of admitted requests i..=j fits the burst plus the rate:
/// j - i + 1 <= burst + (t_j - t_i) / T.
fn assert_gcra_rate(times: &[u64], burst: u64, interval: u64, what: &str) {
    for i in 0..times.len() {
        for j in i..times.len() {
            let n = (j - i + 1) as u64;
            let allowed = burst + (times[j] - times[i]) / interval;
            assert!(
                n <= allowed,
                "{what}: {n} admitted between {} and {} (at most {allowed})",
                times[i],
                times[j]
            );
        }
    }
}

async fn hammer_each_algorithm(backend: &str, cache: &Cache) {
    let window = Duration::from_millis(250);
    let w = window.as_micros() as u64;
    let limit = 20;
    let run = Duration::from_millis(1_200);

    let log = cache.rate_limiter(RateLimit::sliding_log(limit, window));
    let times = hammer(&log, "hot", run).await;
    assert!(
        times.len() as u64 >= limit,
        "{backend}: {} admitted",
        times.len()
    );
    assert_log_windows(&times, limit, w, &format!("{backend} sliding log"));

    let counter = cache.rate_limiter(RateLimit::sliding_window(limit, window));
    let times = hammer(&counter, "hot", run).await;
    assert!(
        times.len() as u64 >= limit,
        "{backend}: {} admitted",
        times.len()
    );
    assert_counter_windows(&times, limit, w, &format!("{backend} sliding window"));

    let burst = 5;
    let gcra = cache.rate_limiter(RateLimit::gcra(limit, window).burst(burst));
    let times = hammer(&gcra, "hot", run).await;
    assert!(
        times.len() as u64 >= burst,
        "{backend}: {} admitted",
        times.len()
    );
    assert_gcra_rate(&times, burst, w.div_ceil(limit), &format!("{backend} gcra"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_clients_never_exceed_the_limit_on_redis() {
    hammer_each_algorithm("redis", &tests::redis_cache()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_clients_never_exceed_the_limit_in_memory() {
    hammer_each_algorithm("memory", &tests::memory_cache()).await;
}

// ---- live: exact retry-after, bursts, expiries ----------------------------------------------

/// On Redis, the retry-after of the log is exact to the microsecond of the server's clock
/// (the oldest admission + window - now); GCRA's is the TAT's; and for every algorithm a
/// request once the server's clock has reached `now + retry_after` is admitted.
#[tokio::test]
async fn retry_after_is_exact_on_redis() {
    let window = Duration::from_millis(400);
    let w = window.as_micros() as u64;
    for config in all(3, window) {
        let algorithm = config.algorithm();
        let cache = tests::redis_cache();
        let limiter = cache.rate_limiter(config);
        let mut admitted = Vec::new();
        let denied = loop {
            let d = limiter.check("id").await.expect("decides");
            if !d.allowed {
                break d;
            }
            admitted.push(micros(&d));
            assert!(
                admitted.len() <= 3,
                "{algorithm:?}: more than the limit admitted"
            );
        };
        let retry = denied.retry_after.expect("a denial says when").as_micros() as u64;
        let now = micros(&denied);
        match algorithm {
            Algorithm::SlidingLog => assert_eq!(retry, admitted[0] + w - now),
            Algorithm::Gcra => {
                let interval = w.div_ceil(3);
                let tat = admitted
                    .iter()
                    .fold(0, |tat: u64, &t| tat.max(t) + interval);
                assert_eq!(retry, tat.max(now) + interval - 3 * interval - now);
            }
            _ => assert!(retry > 0 && retry <= 2 * w),
        }
        until_server_time(now + retry).await;
        let d = limiter.check("id").await.expect("decides");
        assert!(d.allowed, "{algorithm:?}: denied after retry_after ({d:?})");
    }
}

/// Many requests in the same millisecond (often the same microsecond) are each counted:
/// exactly `limit` of 3 x limit concurrent requests are admitted, on both backends; on Redis
/// the log holds one member per admitted request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bursts_in_the_same_millisecond_are_counted() {
    for (backend, cache) in tests::backends().await {
        for config in all(16, Duration::from_secs(60)) {
            let algorithm = config.algorithm();
            let limiter = cache.rate_limiter(config);
            let tasks: Vec<_> = (0..48)
                .map(|_| {
                    let limiter = limiter.clone();
                    tokio::spawn(async move { limiter.check("burst").await.expect("decides") })
                })
                .collect();
            let mut decisions = Vec::new();
            for t in tasks {
                decisions.push(t.await.expect("task"));
            }
            let admitted: Vec<_> = decisions.iter().filter(|d| d.allowed).collect();
            assert_eq!(admitted.len(), 16, "{backend} {algorithm:?}");
            let millis: HashSet<u64> = admitted.iter().map(|d| micros(d) / 1_000).collect();
            assert!(millis.len() <= admitted.len());
            if backend == "redis" && algorithm == Algorithm::SlidingLog {
                let keys = limiter_keys(&cache).await;
                let key = keys
                    .iter()
                    .find(|k| k.contains("~rl:log:"))
                    .expect("the log's key");
                let mut con = raw().await;
                let members: u64 = redis::cmd("ZCARD")
                    .arg(key)
                    .query_async(&mut con)
                    .await
                    .expect("ZCARD");
                assert_eq!(members, 16);
            }
        }
    }
}

/// Same-microsecond requests on the memory backend with a frozen clock: all counted.
#[tokio::test]
async fn requests_at_one_instant_are_all_counted() {
    for config in all(7, Duration::from_secs(1)) {
        let clock = ManualClock::new();
        let limiter = tests::memory_cache().rate_limiter(config.clock(clock));
        let mut admitted = 0;
        for _ in 0..20 {
            admitted += u64::from(limiter.check("x").await.expect("decides").allowed);
        }
        assert_eq!(admitted, 7);
    }
}

/// After any use every limiter key has an expiry (PTTL > 0), a peek of an unknown id stores
/// nothing, and the keys live in the reserved part of the scope with the id as hash tag.
#[tokio::test]
async fn every_key_has_a_ttl() {
    let cache = tests::redis_cache().tenant("acme");
    for config in all(5, Duration::from_secs(30)) {
        let limiter = cache.rate_limiter(config.name("ttl"));
        limiter.peek("peeked").await.expect("peeks");
        for _ in 0..7 {
            limiter.check("user:7").await.expect("decides");
        }
        limiter.check_n("other", 3).await.expect("decides");
    }
    let keys = limiter_keys(&cache).await;
    assert_eq!(keys.len(), 6, "{keys:?}");
    let mut con = raw().await;
    for key in &keys {
        assert!(key.starts_with(cache.key_prefix()), "{key}");
        assert!(
            key.contains("~rl:") && key.contains(":ttl:{") && key.ends_with('}'),
            "{key}"
        );
        assert!(!key.contains("peeked"), "a peek stored {key}");
        let pttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut con)
            .await
            .expect("PTTL");
        assert!(pttl > 0 && pttl <= 60_000, "{key}: PTTL {pttl}");
    }
}

/// Each check is one round trip: on a server of its own, after `CONFIG RESETSTAT`, 50 checks
/// of an algorithm show as 50 `EVALSHA` calls in `INFO commandstats`, and the client sent no
/// other command (the script's own calls, `TIME`, `ZADD`, ..., are counted apart, as
/// executed inside it).
#[tokio::test]
async fn one_round_trip_each_per_commandstats() {
    let server = tests::RedisServer::start();
    let cache = tests::redis_cache_at(&server.url());
    let mut con = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    for config in all(1_000, Duration::from_secs(60)) {
        let algorithm = config.algorithm();
        let limiter = cache.rate_limiter(config);
        limiter.check("warm").await.expect("loads the script");
        let () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut con)
            .await
            .expect("RESETSTAT");
        for i in 0..50u32 {
            limiter.check(i % 7).await.expect("decides");
        }
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut con)
            .await
            .expect("INFO");
        let calls = |command: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        assert_eq!(calls("evalsha"), 50, "{algorithm:?}: {info}");
        for other in [
            "eval",
            "script|load",
            "get",
            "set",
            "del",
            "unlink",
            "multi",
        ] {
            let inside = match (algorithm, other) {
                (Algorithm::Gcra | Algorithm::SlidingWindow, "get" | "set") => 50,
                _ => 0,
            };
            assert_eq!(calls(other), inside, "{algorithm:?} `{other}`: {info}");
        }
    }
}

// ---- behaviour on both backends ----------------------------------------------------------------

#[tokio::test]
async fn cost_above_the_limit_is_an_error_not_a_denial() {
    for (backend, cache) in tests::backends().await {
        for config in all(10, Duration::from_secs(1)) {
            let limiter = cache.rate_limiter(config);
            let e = limiter.check_n("a", 11).await.expect_err("above the limit");
            assert!(
                matches!(
                    e,
                    Error::CostAboveLimit {
                        cost: 11,
                        limit: 10
                    }
                ),
                "{backend}: {e}"
            );
            assert!(
                limiter.check_n("a", 10).await.expect("decides").allowed,
                "{backend}"
            );
            assert!(
                limiter.check_n("a", 0).await.expect("decides").allowed,
                "{backend}: cost 0"
            );
        }
        let gcra = cache.rate_limiter(RateLimit::gcra(10, Duration::from_secs(1)).burst(4));
        assert!(matches!(
            gcra.check_n("a", 5).await,
            Err(Error::CostAboveLimit { cost: 5, limit: 4 })
        ));
    }
}

#[tokio::test]
async fn bad_configurations_are_typed_errors() {
    let cache = Cache::in_memory();
    for config in [
        RateLimit::sliding_log(0, Duration::from_secs(1)),
        RateLimit::sliding_log(10_000_000, Duration::from_secs(1)),
        RateLimit::sliding_window(10, Duration::ZERO),
        RateLimit::gcra(10, Duration::from_secs(1)).burst(0),
        RateLimit::gcra(1, Duration::from_secs(365 * 86_400)).burst(1 << 40),
        RateLimit::sliding_log(10, Duration::from_secs(1)).name("has space"),
        RateLimit::sliding_log(10, Duration::from_secs(1)).name(""),
    ] {
        let limiter = cache.rate_limiter(config.clone());
        let e = limiter.check("a").await.expect_err("refused");
        assert!(matches!(e, Error::Config { .. }), "{config:?}: {e}");
        assert!(limiter.reconfigure(config).is_err());
    }
}

/// Windows follow the cache's rule for durations: a fraction of a millisecond rounds up,
/// `Duration::MAX` is clamped to `MAX_TTL`, neither is an error.
#[tokio::test]
async fn windows_round_up_and_clamp() {
    for (backend, cache) in tests::backends().await {
        for config in all(2, Duration::from_micros(1))
            .into_iter()
            .chain(all(2, Duration::MAX))
        {
            let limiter = cache.rate_limiter(config.clone());
            let d = limiter.check("a").await.expect("a usable window");
            assert!(d.allowed, "{backend} {config:?}");
        }
    }
}

#[tokio::test]
async fn peek_and_reset() {
    for (backend, cache) in tests::backends().await {
        for config in all(2, Duration::from_secs(60)) {
            let limiter = cache.rate_limiter(config);
            assert_eq!(
                limiter.peek("p").await.expect("peeks").remaining,
                2,
                "{backend}"
            );
            limiter.check("p").await.expect("decides");
            assert_eq!(
                limiter.peek("p").await.expect("peeks").remaining,
                1,
                "{backend}"
            );
            assert_eq!(
                limiter.peek("p").await.expect("peeks").remaining,
                1,
                "{backend}"
            );
            limiter.check("p").await.expect("decides");
            assert!(
                !limiter.peek("p").await.expect("peeks").allowed,
                "{backend}"
            );
            assert!(limiter.reset("p").await.expect("resets"), "{backend}");
            assert!(!limiter.reset("p").await.expect("resets"), "{backend}");
            assert_eq!(
                limiter.check("p").await.expect("decides").remaining,
                1,
                "{backend}"
            );
        }
    }
}

/// Limits change at run time without losing what was counted, through `set_limit` and
/// through a new limiter of the same name; tenants and names keep separate counts.
#[tokio::test]
async fn limits_change_at_run_time_keeping_state() {
    for (backend, cache) in tests::backends().await {
        for config in all(10, Duration::from_secs(60)) {
            let algorithm = config.algorithm();
            let limiter = cache.rate_limiter(config.clone().name("api"));
            limiter.check_n("c", 6).await.expect("decides");
            limiter.set_limit(8).expect("a valid limit");
            let d = limiter.peek("c").await.expect("peeks");
            assert_eq!(d.limit, 8, "{backend} {algorithm:?}");
            // GCRA keeps a time, which a new rate reads as 3.2 requests left.
            assert!(d.remaining <= 3, "{backend} {algorithm:?}: {d:?}");
            limiter.set_limit(20).expect("a valid limit");
            assert!(
                limiter.check_n("c", 8).await.expect("decides").allowed,
                "{backend} {algorithm:?}"
            );
            // A new limiter with the same name and algorithm sees the same counts.
            let again = cache.rate_limiter(config.clone().name("api"));
            assert!(
                !again.check_n("c", 10).await.expect("decides").allowed,
                "{backend} {algorithm:?}"
            );
            // Another name, another tenant: fresh counts.
            let other = cache.rate_limiter(config.clone().name("other"));
            assert!(
                other.check_n("c", 10).await.expect("decides").allowed,
                "{backend} {algorithm:?}"
            );
            let tenant = cache.tenant("t2").rate_limiter(config.clone().name("api"));
            assert!(
                tenant.check_n("c", 10).await.expect("decides").allowed,
                "{backend} {algorithm:?}"
            );
            assert!(limiter.set_limit(0).is_err());
        }
    }
}

/// Redis down: a fail-open limiter allows, a fail-closed one denies (retry after a second),
/// one that asks for the error gets an unavailable error; a configuration error is an error
/// whatever the policy.
#[tokio::test]
async fn outage_policy() {
    let mut server = tests::RedisServer::start();
    let cache = tests::quick_failing_builder(&server.url())
        .build()
        .expect("builds");
    let open = cache.rate_limiter(RateLimit::sliding_log(5, Duration::from_secs(1)));
    let closed = cache.rate_limiter(RateLimit::gcra(5, Duration::from_secs(1)).fail_closed());
    let error = cache.rate_limiter(
        RateLimit::sliding_window(5, Duration::from_secs(1)).on_unavailable(OnUnavailable::Error),
    );
    assert!(open.check("a").await.expect("up").allowed);
    server.kill();
    let d = open.check("a").await.expect("fail open");
    assert!(d.allowed && d.remaining == 5, "{d:?}");
    let d = closed.check("a").await.expect("fail closed");
    assert!(
        !d.allowed && d.retry_after == Some(Duration::from_secs(1)),
        "{d:?}"
    );
    let e = error.check("a").await.expect_err("the error");
    assert!(e.is_unavailable(), "{e}");
    let bad = cache.rate_limiter(RateLimit::sliding_log(0, Duration::from_secs(1)));
    assert!(matches!(bad.check("a").await, Err(Error::Config { .. })));
}

// ---- the tower layer ---------------------------------------------------------------------------

mod layer {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Duration;

    use cache_core::rate_limit::tower::{ClientIp, KeyExtractor, RateLimitLayer};
    use cache_core::{Cache, RateLimit};
    use http::{Request, Response, StatusCode};
    use tower::{Layer, Service, ServiceExt};

    type Svc = tower::util::BoxCloneService<Request<()>, Response<String>, Infallible>;

    fn service(layer: &RateLimitLayer) -> Svc {
        let inner = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new("ok".to_owned()))
        });
        tower::util::BoxCloneService::new(layer.layer(inner))
    }

    fn from(peer: [u8; 4], xff: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri("/");
        if let Some(xff) = xff {
            b = b.header("x-forwarded-for", xff);
        }
        b.extension(SocketAddr::from((peer, 50_000)))
            .body(())
            .expect("a request")
    }

    async fn send(svc: &mut Svc, req: Request<()>) -> Response<String> {
        svc.ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("infallible")
    }

    fn header<'a>(res: &'a Response<String>, name: &str) -> Option<&'a str> {
        res.headers().get(name).and_then(|v| v.to_str().ok())
    }

    /// The draft's examples: `RateLimit-Policy: "default";q=100;w=10` and
    /// `RateLimit: "default";r=50;t=...` after 50 of 100 requests; 429 after the limit.
    #[tokio::test]
    async fn headers_follow_the_ietf_draft() {
        for (backend, cache) in tests::backends().await {
            let limiter = cache.rate_limiter(RateLimit::sliding_log(100, Duration::from_secs(10)));
            let mut svc = service(&RateLimitLayer::new(limiter));
            let mut last = None;
            for _ in 0..50 {
                last = Some(send(&mut svc, from([192, 0, 2, 1], None)).await);
            }
            let res = last.expect("sent");
            assert_eq!(res.status(), StatusCode::OK, "{backend}");
            assert_eq!(
                header(&res, "ratelimit-policy"),
                Some(r#""default";q=100;w=10"#)
            );
            assert_eq!(
                header(&res, "ratelimit"),
                Some(r#""default";r=50;t=10"#),
                "{backend}"
            );
            assert_eq!(header(&res, "retry-after"), None);
            assert_eq!(
                header(&res, "x-ratelimit-limit"),
                None,
                "legacy fields are off by default"
            );
            for _ in 0..50 {
                send(&mut svc, from([192, 0, 2, 1], None)).await;
            }
            let res = send(&mut svc, from([192, 0, 2, 1], None)).await;
            assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "{backend}");
            let retry: u64 = header(&res, "retry-after")
                .expect("Retry-After")
                .parse()
                .expect("seconds");
            assert!((1..=10).contains(&retry), "{backend}: {retry}");
            assert_eq!(
                header(&res, "ratelimit"),
                Some(format!(r#""default";r=0;t={retry}"#).as_str())
            );
            assert_eq!(res.body(), "", "the inner service was not called");
            // Another client is not limited.
            assert_eq!(
                send(&mut svc, from([192, 0, 2, 2], None)).await.status(),
                StatusCode::OK
            );
        }
    }

    #[tokio::test]
    async fn legacy_trio_as_an_option() {
        let limiter = Cache::in_memory()
            .rate_limiter(RateLimit::sliding_window(2, Duration::from_secs(60)).name("api"));
        let mut svc = service(
            &RateLimitLayer::new(limiter)
                .legacy_headers(true)
                .ietf_headers(false),
        );
        let res = send(&mut svc, from([192, 0, 2, 1], None)).await;
        assert_eq!(header(&res, "x-ratelimit-limit"), Some("2"));
        assert_eq!(header(&res, "x-ratelimit-remaining"), Some("1"));
        let reset: u64 = header(&res, "x-ratelimit-reset")
            .expect("reset")
            .parse()
            .expect("seconds");
        assert!((60..=120).contains(&reset), "{reset}");
        assert_eq!(header(&res, "ratelimit"), None);
        send(&mut svc, from([192, 0, 2, 1], None)).await;
        let res = send(&mut svc, from([192, 0, 2, 1], None)).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&res, "x-ratelimit-remaining"), Some("0"));
        assert!(header(&res, "retry-after").is_some());
    }

    /// An untrusted peer cannot choose its key with X-Forwarded-For; a trusted proxy's
    /// X-Forwarded-For is walked right to left to the first untrusted address.
    #[tokio::test]
    async fn spoofed_forwarded_for_does_not_change_the_key() {
        let limiter =
            Cache::in_memory().rate_limiter(RateLimit::sliding_log(1, Duration::from_secs(60)));
        let ip = ClientIp::new()
            .trust_proxies(["10.0.0.0/8"])
            .expect("valid");
        let mut svc = service(&RateLimitLayer::new(limiter).key(KeyExtractor::client_ip(ip)));
        let attacker = [203, 0, 113, 66];
        assert_eq!(
            send(&mut svc, from(attacker, Some("1.1.1.1")))
                .await
                .status(),
            StatusCode::OK
        );
        for spoof in ["2.2.2.2", "3.3.3.3, 10.0.0.1", "garbage", "10.9.9.9"] {
            let res = send(&mut svc, from(attacker, Some(spoof))).await;
            assert_eq!(
                res.status(),
                StatusCode::TOO_MANY_REQUESTS,
                "spoofed {spoof}"
            );
        }
        // Through the trusted proxy: the client is the rightmost untrusted address, whatever
        // the client wrote left of it.
        let proxy = [10, 0, 0, 1];
        assert_eq!(
            send(
                &mut svc,
                from(proxy, Some("9.9.9.9, 198.51.100.1, 10.2.2.2"))
            )
            .await
            .status(),
            StatusCode::OK
        );
        let res = send(&mut svc, from(proxy, Some("8.8.8.8, 198.51.100.1"))).await;
        assert_eq!(
            res.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "same client behind the proxy"
        );
        // The attacker's own address, forwarded by the proxy, is the attacker's key.
        let res = send(&mut svc, from(proxy, Some("203.0.113.66"))).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            send(&mut svc, from(proxy, Some("198.51.100.2")))
                .await
                .status(),
            StatusCode::OK
        );
    }

    /// Redis down: a fail-open limiter's layer lets requests through, a fail-closed one answers
    /// 429 with `Retry-After: 1`.
    #[tokio::test]
    async fn outage_policy_at_the_layer() {
        let mut server = tests::RedisServer::start();
        let cache = tests::quick_failing_builder(&server.url())
            .build()
            .expect("builds");
        let window = Duration::from_secs(60);
        let mut open = service(&RateLimitLayer::new(
            cache.rate_limiter(RateLimit::sliding_log(5, window).name("open")),
        ));
        let mut closed = service(&RateLimitLayer::new(
            cache.rate_limiter(
                RateLimit::sliding_log(5, window)
                    .name("closed")
                    .fail_closed(),
            ),
        ));
        assert_eq!(
            send(&mut closed, from([192, 0, 2, 1], None)).await.status(),
            StatusCode::OK
        );
        server.kill();
        let res = send(&mut open, from([192, 0, 2, 1], None)).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.body(), "ok");
        let res = send(&mut closed, from([192, 0, 2, 1], None)).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&res, "retry-after"), Some("1"));
    }

    /// Clones of the layer (and of its services) share one limiter state; requests without a
    /// key pass unlimited; the header extractor limits by header.
    #[tokio::test]
    async fn clones_share_state_and_other_keys() {
        let limiter = Cache::in_memory().rate_limiter(RateLimit::gcra(2, Duration::from_secs(60)));
        let layer = RateLimitLayer::new(limiter).key(KeyExtractor::header(
            http::HeaderName::from_static("x-api-key"),
        ));
        let mut a = service(&layer.clone());
        let mut b = service(&layer);
        let keyed = || {
            Request::builder()
                .header("x-api-key", "k1")
                .body(())
                .expect("request")
        };
        assert_eq!(send(&mut a, keyed()).await.status(), StatusCode::OK);
        assert_eq!(send(&mut b, keyed()).await.status(), StatusCode::OK);
        assert_eq!(
            send(&mut a, keyed()).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        for _ in 0..5 {
            let res = send(&mut b, Request::new(())).await;
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(header(&res, "ratelimit"), None, "no key: not limited");
        }
    }
}
