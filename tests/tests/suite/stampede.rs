//! Stampedes and staleness (issue #12): single-flight in the process, the distributed fill
//! lock across processes, stale-while-revalidate and fail-safe, soft and hard timeouts, early
//! refresh. On both backends where the concept applies; real Redis, no mocks.
//!
//! Computations are held until the test sees, through the cache's own counters, that every
//! other caller is waiting for them: the overlap is by construction, not by timing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{cached, compute::FillLock, Cache, ComputeOptions, Error};
use tokio::sync::Notify;

/// Polls `cond` every few milliseconds until it holds; panics with `what` after `limit`.
async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Async [`until`].
async fn until_async<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const LONG: Duration = Duration::from_secs(60);
const CALLERS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_cold_callers_of_get_or_set_compute_once() {
    for (backend, cache) in tests::backends().await {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..CALLERS {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.spawn(async move {
                let waiter = cache.clone();
                cache
                    .get_or_set("cold", None, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Held until every other caller waits for this computation.
                        until("the other callers to wait", LONG, || {
                            waiter.stats().flight_waits >= (CALLERS - 1) as u64
                        })
                        .await;
                        7u64
                    })
                    .await
            });
        }
        while let Some(v) = tasks.join_next().await {
            assert_eq!(v.expect("no task fails"), 7, "{backend}");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{backend}: one computation"
        );
        let stats = cache.stats();
        assert_eq!(
            (stats.computes, stats.writes),
            (1, 1),
            "{backend}: {stats:?}"
        );
        assert_eq!(
            cache.get_or_set("cold", None, || async { 0u64 }).await,
            7,
            "{backend}"
        );
    }
}

#[cached(cache = cache.clone(), skip = [cache, calls], key = "user:<id>", ttl = "1h")]
async fn user(cache: Cache, calls: Arc<AtomicUsize>, id: u64) -> Result<String, String> {
    calls.fetch_add(1, Ordering::SeqCst);
    until("the other callers to wait", LONG, || {
        cache.stats().flight_waits >= (CALLERS - 1) as u64
    })
    .await;
    Ok(format!("user {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_cold_callers_of_a_cached_function_compute_once() {
    for (backend, cache) in tests::backends().await {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..CALLERS {
            tasks.spawn(user(cache.clone(), calls.clone(), 42));
        }
        while let Some(v) = tasks.join_next().await {
            assert_eq!(
                v.expect("no task fails").as_deref(),
                Ok("user 42"),
                "{backend}"
            );
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{backend}: one computation"
        );
    }
}

/// 50 callers of one cold key whose first computation ends as `first` says; the others
/// take over, one of them computing again. Returns what the other callers got.
async fn first_computation_lost(cache: &Cache, panics: bool) -> (usize, Vec<u64>) {
    const N: usize = 50;
    let calls = Arc::new(AtomicUsize::new(0));
    let make = |cache: Cache, calls: Arc<AtomicUsize>| async move {
        let waiter = cache.clone();
        cache
            .get_or_set("lost", None, || async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    until("the other callers to wait", LONG, || {
                        waiter.stats().flight_waits >= (N - 1) as u64
                    })
                    .await;
                    if panics {
                        panic!("the source exploded");
                    }
                    // Cancelled: never finishes, its task is aborted below.
                    std::future::pending::<()>().await;
                }
                5u64
            })
            .await
    };
    // The first caller leads: it is started alone and the others once it computes.
    let first = tokio::spawn(make(cache.clone(), calls.clone()));
    until("the first computation", LONG, || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut others = tokio::task::JoinSet::new();
    for _ in 1..N {
        others.spawn(make(cache.clone(), calls.clone()));
    }
    if !panics {
        until("the other callers to wait", LONG, || {
            cache.stats().flight_waits >= (N - 1) as u64
        })
        .await;
        first.abort();
    }
    let first = first.await;
    assert!(first.is_err(), "the first caller panicked or was cancelled");
    let mut got = Vec::new();
    while let Some(v) = others.join_next().await {
        got.push(v.expect("the waiters do not fail"));
    }
    (calls.load(Ordering::SeqCst), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_computation_releases_its_waiters() {
    for (backend, cache) in tests::backends().await {
        let (calls, got) = first_computation_lost(&cache, true).await;
        assert_eq!(calls, 2, "{backend}: one waiter took over");
        assert!(got.iter().all(|v| *v == 5), "{backend}: {got:?}");
        assert_eq!(got.len(), 49, "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_computation_releases_its_waiters() {
    for (backend, cache) in tests::backends().await {
        let (calls, got) = first_computation_lost(&cache, false).await;
        assert_eq!(calls, 2, "{backend}: one waiter took over");
        assert!(got.iter().all(|v| *v == 5), "{backend}: {got:?}");
    }
}

#[tokio::test]
async fn a_failed_computation_is_not_remembered() {
    for (backend, cache) in tests::backends().await {
        let down = cache
            .try_get_or_set("flaky", None, || async { Err::<u8, _>("down") })
            .await;
        assert_eq!(down, Err("down"), "{backend}");
        let up = cache
            .try_get_or_set("flaky", None, || async { Ok::<u8, &str>(1) })
            .await;
        assert_eq!(up, Ok(1), "{backend}: the next call computes afresh");
    }
}

// ---- stale-while-revalidate, fail-safe, timeouts ------------------------------------------------

fn stale_options() -> ComputeOptions {
    ComputeOptions::new()
        .ttl(Duration::from_millis(300))
        .stale(Duration::from_secs(3600))
        .fail_safe_throttle(Duration::from_secs(2))
}

/// Stores `value` under `key` with `options`, then waits for it to pass its TTL (a plain
/// `get` no longer sees it; get-or-compute serves it stale).
async fn stored_then_expired(cache: &Cache, key: &str, options: &ComputeOptions, value: u32) {
    let v = cache
        .get_or_set_with(key, options, move || async move { value })
        .await;
    assert_eq!(v, value);
    let cache = cache.clone();
    let key = key.to_owned();
    until_async("the value to expire", LONG, || {
        let (cache, key) = (cache.clone(), key.clone());
        async move { cache.get::<u32>(&key).await.expect("get").is_none() }
    })
    .await;
}

#[tokio::test]
async fn a_stale_value_is_served_at_once_and_refreshed_in_the_background() {
    for (backend, cache) in tests::backends().await {
        let options = stale_options();
        stored_then_expired(&cache, "swr", &options, 1).await;
        let gate = Arc::new(Notify::new());
        let held = gate.clone();
        let v = cache
            .get_or_set_with("swr", &options, move || async move {
                held.notified().await;
                2u32
            })
            .await;
        assert_eq!(v, 1, "{backend}: the stale value, at once");
        // Another caller meanwhile: stale too, and no second refresh.
        let again = cache
            .get_or_set_with("swr", &options, || async { 3u32 })
            .await;
        assert_eq!(again, 1, "{backend}");
        gate.notify_one();
        until_async("the refresh to be stored", LONG, || {
            let cache = cache.clone();
            async move { cache.get::<u32>("swr").await.expect("get") == Some(2) }
        })
        .await;
        let stats = cache.stats();
        assert_eq!(stats.stale_served, 2, "{backend}: {stats:?}");
        assert_eq!(stats.background_refreshes, 1, "{backend}: {stats:?}");
    }
}

#[tokio::test]
async fn a_failing_or_panicking_refresh_serves_the_stale_value() {
    for (backend, cache) in tests::backends().await {
        // The caller waits for the refresh (soft timeout), which fails.
        let options = stale_options().soft_timeout(Duration::from_secs(30));
        let v = cache
            .try_get_or_set_with("failsafe", &options, || async { Ok::<u32, String>(1) })
            .await;
        assert_eq!(v, Ok(1));
        let cache2 = cache.clone();
        until_async("the value to expire", LONG, || {
            let cache = cache2.clone();
            async move { cache.get::<u32>("failsafe").await.expect("get").is_none() }
        })
        .await;
        let failed = cache
            .try_get_or_set_with("failsafe", &options, || async {
                Err::<u32, String>("source down".into())
            })
            .await;
        assert_eq!(failed, Ok(1), "{backend}: an Err serves the stale value");
        assert_eq!(cache.stats().stale_served, 1, "{backend}");
        // The stale value now counts as fresh for the throttle: the source is not called.
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let throttled = cache
            .try_get_or_set_with("failsafe", &options, move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok::<u32, String>(9)
            })
            .await;
        assert_eq!(throttled, Ok(1), "{backend}");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "{backend}: throttled");
        // Past the throttle, a panic serves it too.
        until_async("the throttle to pass", LONG, || {
            let cache = cache2.clone();
            async move { cache.get::<u32>("failsafe").await.expect("get").is_none() }
        })
        .await;
        let panicked = cache
            .try_get_or_set_with("failsafe", &options, || async {
                if true {
                    panic!("the source exploded");
                }
                Ok::<u32, String>(0)
            })
            .await;
        assert_eq!(panicked, Ok(1), "{backend}: a panic serves the stale value");
        assert_eq!(cache.stats().stale_served, 2, "{backend}");
        // And a refresh that works stores its value.
        until_async("the throttle to pass", LONG, || {
            let cache = cache2.clone();
            async move { cache.get::<u32>("failsafe").await.expect("get").is_none() }
        })
        .await;
        let fresh = cache
            .try_get_or_set_with("failsafe", &options, || async { Ok::<u32, String>(2) })
            .await;
        assert_eq!(fresh, Ok(2), "{backend}");
        assert_eq!(cache.get::<u32>("failsafe").await.expect("get"), Some(2));
    }
}

#[tokio::test]
async fn past_the_soft_timeout_the_stale_value_is_served_and_the_refresh_stored_later() {
    for (backend, cache) in tests::backends().await {
        let options = stale_options().soft_timeout(Duration::from_millis(50));
        stored_then_expired(&cache, "soft", &options, 1).await;
        let gate = Arc::new(Notify::new());
        let held = gate.clone();
        let v = cache
            .get_or_set_with("soft", &options, move || async move {
                held.notified().await; // slower than the soft timeout: held until told
                2u32
            })
            .await;
        assert_eq!(v, 1, "{backend}: stale after the soft timeout");
        gate.notify_one();
        until_async("the slow refresh to be stored", LONG, || {
            let cache = cache.clone();
            async move { cache.get::<u32>("soft").await.expect("get") == Some(2) }
        })
        .await;
        assert_eq!(cache.stats().background_refreshes, 1, "{backend}");
    }
}

#[tokio::test]
async fn past_the_hard_timeout_without_a_stale_value_the_error_is_a_timeout() {
    for (backend, cache) in tests::backends().await {
        let options = ComputeOptions::new().hard_timeout(Duration::from_millis(50));
        let gate = Arc::new(Notify::new());
        let held = gate.clone();
        let out = cache
            .try_get_or_set_with("hard", &options, move || async move {
                held.notified().await;
                Ok::<u32, Error>(3)
            })
            .await;
        assert!(
            matches!(out, Err(Error::ComputeTimeout { .. })),
            "{backend}: {out:?}"
        );
        // The computation goes on and stores its value.
        gate.notify_one();
        until_async("the computation to be stored", LONG, || {
            let cache = cache.clone();
            async move { cache.get::<u32>("hard").await.expect("get") == Some(3) }
        })
        .await;
    }
}

#[cached(cache = cache.clone(), skip = [cache, calls], key = "price:<id>", ttl = "300ms", stale = "1h", soft_timeout = "30s", hard_timeout = "30s")]
async fn price(cache: Cache, calls: Arc<AtomicUsize>, id: u64) -> Result<u64, Error> {
    let _ = cache;
    match calls.fetch_add(1, Ordering::SeqCst) {
        0 => Ok(id),
        _ => Err(Error::Config {
            setting: "source",
            reason: "down".into(),
        }),
    }
}

#[tokio::test]
async fn a_cached_function_with_stale_serves_it_when_its_body_fails() {
    for (backend, cache) in tests::backends().await {
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(price(cache.clone(), calls.clone(), 7).await.ok(), Some(7));
        until_async("the value to expire", LONG, || {
            let cache = cache.clone();
            async move { cache.get::<u64>("price:7").await.expect("get").is_none() }
        })
        .await;
        assert_eq!(
            price(cache.clone(), calls.clone(), 7).await.ok(),
            Some(7),
            "{backend}: the body failed, the stale value is served"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{backend}");
        assert_eq!(cache.stats().stale_served, 1, "{backend}");
    }
}

// ---- early refresh ----------------------------------------------------------------------------

#[tokio::test]
async fn early_refresh_recomputes_before_expiry_and_not_on_every_read() {
    for (backend, cache) in tests::backends().await {
        cache.seed_early_refresh(12_345);
        let ttl = Duration::from_millis(1500);
        let options = ComputeOptions::new().ttl(ttl).early_refresh();
        let calls = Arc::new(AtomicUsize::new(0));
        let compute = |calls: Arc<AtomicUsize>| {
            move || async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                // The compute time XFetch weighs: a slow source.
                tokio::time::sleep(Duration::from_millis(200)).await;
                n as u32
            }
        };
        let first = cache
            .get_or_set_with("early", &options, compute(calls.clone()))
            .await;
        let expiry = Instant::now() + ttl;
        assert_eq!(first, 0);
        let mut reads = 0;
        while calls.load(Ordering::SeqCst) < 2 {
            assert!(
                Instant::now() < expiry + ttl,
                "{backend}: no refresh before expiry after {reads} reads"
            );
            let v = cache
                .get_or_set_with("early", &options, compute(calls.clone()))
                .await;
            assert_eq!(v, 0, "{backend}: reads keep getting the value they found");
            reads += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refreshed_at = Instant::now();
        assert!(
            refreshed_at < expiry,
            "{backend}: the refresh started before expiry"
        );
        assert!(reads >= 10, "{backend}: refreshed after only {reads} reads");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "{backend}: one refresh at a time"
        );
        until_async("the refresh to be stored", LONG, || {
            let cache = cache.clone();
            async move { cache.get::<u32>("early").await.expect("get") == Some(1) }
        })
        .await;
        assert_eq!(cache.stats().background_refreshes, 1, "{backend}");
    }
}

// ---- the distributed fill lock --------------------------------------------------------------

/// A process waiting for another's fill sleeps on the lock's release message, not on a hot
/// poll: it subscribes to the fill lock's channel, and when the holder stores the value and
/// releases, it returns that value without computing. Two cache roots (each its own
/// single-flight and connections) stand for two processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_waiter_wakes_on_the_release_and_takes_the_value() {
    let namespace = tests::unique_namespace();
    let holder = tests::redis_builder()
        .namespace(namespace.as_str())
        .build()
        .expect("cache");
    let waiter = tests::redis_builder()
        .namespace(namespace.as_str())
        .build()
        .expect("cache");
    let options = ComputeOptions::new()
        .lock(FillLock::Distributed)
        .lock_wait(LONG);
    let calls = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(Notify::new());
    let compute = |calls: Arc<AtomicUsize>, go: Arc<Notify>, value: &'static str| async move {
        calls.fetch_add(1, Ordering::SeqCst);
        go.notified().await;
        value.to_owned()
    };
    let first = tokio::spawn({
        let (options, calls, go) = (options, calls.clone(), go.clone());
        async move {
            holder
                .get_or_set_with("cold", &options, move || compute(calls, go, "holder's"))
                .await
        }
    });
    until("the holder to compute", LONG, || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let second = tokio::spawn({
        let (options, calls, go) = (options, calls.clone(), go.clone());
        async move {
            waiter
                .get_or_set_with("cold", &options, move || compute(calls, go, "waiter's"))
                .await
        }
    });
    let channel = format!("{namespace}*~fill:*");
    until_async(
        "the waiter to subscribe to the lock's channel",
        LONG,
        || async { !tests::subscribed_channels(&channel).await.is_empty() },
    )
    .await;
    go.notify_one();
    assert_eq!(first.await.expect("joins"), "holder's");
    // A waiter that computed would wait for a `go` that never comes: bounded.
    let second = tokio::time::timeout(LONG, second).await;
    assert_eq!(
        second.expect("the waiter returns").expect("joins"),
        "holder's"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one computation in both roots"
    );
}

const CHILD: &str = "STAMPEDE_FILL_CHILD";
const PROCESSES: usize = 4;

/// Run as a child process by `four_processes_fill_a_cold_key_once`; does nothing in a
/// normal run.
#[tokio::test]
async fn child_fills_a_cold_key() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let (url, namespace) = spec.split_once(' ').expect("url and namespace");
    let cache = Cache::builder()
        .url(url)
        .namespace(namespace)
        .build()
        .expect("cache");
    let client = redis::Client::open(url).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let arrived: u64 = redis::cmd("INCR")
        .arg(format!("{namespace}:test:arrived"))
        .query_async(&mut con)
        .await
        .expect("INCR");
    let options = ComputeOptions::new()
        .lock(FillLock::Distributed)
        .lock_wait(LONG);
    let (url, ns) = (url.to_owned(), namespace.to_owned());
    let v = cache
        .get_or_set_with("cold", &options, move || async move {
            let client = redis::Client::open(url).expect("client");
            let mut con = client
                .get_multiplexed_async_connection()
                .await
                .expect("connects");
            let _: u64 = redis::cmd("INCR")
                .arg(format!("{ns}:test:computations"))
                .query_async(&mut con)
                .await
                .expect("INCR");
            // Held until every process has called.
            let start = Instant::now();
            loop {
                let n: u64 = redis::cmd("GET")
                    .arg(format!("{ns}:test:arrived"))
                    .query_async(&mut con)
                    .await
                    .expect("GET");
                if n >= PROCESSES as u64 {
                    break;
                }
                assert!(start.elapsed() < LONG, "the other processes never came");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            "filled".to_owned()
        })
        .await;
    assert_eq!(v, "filled");
    println!("STAMPEDE_CHILD_DONE arrived={arrived}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_fill_a_cold_key_once() {
    let url = tests::redis_url();
    let namespace = tests::unique_namespace();
    let exe = std::env::current_exe().expect("the test binary's path");
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "stampede::child_fills_a_cold_key",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, format!("{url} {namespace}"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the test binary runs")
        })
        .collect();
    for child in children {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("joins")
            .expect("waits");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("STAMPEDE_CHILD_DONE"),
            "child failed\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut con = tests::shared_server()
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let computations: u64 = redis::cmd("GET")
        .arg(format!("{namespace}:test:computations"))
        .query_async(&mut con)
        .await
        .expect("GET");
    assert_eq!(computations, 1, "one computation in all four processes");
}
