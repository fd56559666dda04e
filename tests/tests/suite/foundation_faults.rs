//! Redis unreachable at start, unresponsive, stalled, killed and restarted under the cache: typed
//! errors within a bound derived from the connect timeout, `get_or_set` still answering,
//! recovery without a new `Cache`.
//!
//! The time bounds are on failure paths (how long a caller waits for "unavailable"), not
//! speed assertions: 5x the connect timeout.

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use cache_core::{Cache, CacheBuilder, Error, Source};

use super::cache_at;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const BOUND: Duration = Duration::from_millis(5 * 300);

/// A loopback port nothing listens on (bound by the OS, then released).
fn dead_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free loopback port");
    listener.local_addr().expect("its address").port()
}

/// Runs `op`, failing if it takes longer than [`BOUND`].
async fn bounded<T>(what: &str, op: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = op.await;
    let took = started.elapsed();
    assert!(took <= BOUND, "{what} took {took:?}, bound {BOUND:?}");
    out
}

fn assert_unavailable<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(e) => assert!(
            e.is_unavailable(),
            "{what}: expected a connection or timeout error, got {e:?}"
        ),
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
    }
}

/// Every operation of a cache whose Redis does not answer returns an unavailable error
/// within the bound; `get_or_set` and `try_get_or_set` compute.
async fn every_operation_is_unavailable(cache: &Cache, context: &str) {
    assert_eq!(cache.backend(), Source::Redis, "{context}");
    let before = cache.stats();
    let r = bounded(&format!("{context}: get"), cache.get::<u64>("k")).await;
    assert_unavailable(&format!("{context}: get"), r);
    let r = bounded(&format!("{context}: set"), cache.set("k", &1u64, None)).await;
    assert_unavailable(&format!("{context}: set"), r);

    let v: u64 = bounded(
        &format!("{context}: get_or_set"),
        cache.get_or_set("k", None, || async { 42 }),
    )
    .await;
    assert_eq!(v, 42, "{context}: get_or_set computes without the cache");
    let v: Result<u64, String> = bounded(
        &format!("{context}: try_get_or_set"),
        cache.try_get_or_set("k", None, || async { Ok(43) }),
    )
    .await;
    assert_eq!(v, Ok(43), "{context}");

    // The rest, concurrently: each must fail the same way, all within the bound.
    let d = Duration::from_secs(1);
    let (lookup, exists, ttl, delete, delete_many, expire, incr, mget, mset, tagged, invalidate) =
        bounded(&format!("{context}: the other operations"), async {
            tokio::join!(
                cache.lookup::<u64>("k"),
                cache.exists("k"),
                cache.ttl("k"),
                cache.delete("k"),
                cache.delete_many(&["a", "b"]),
                cache.expire("k", d),
                cache.incr("n", 1),
                cache.mget::<u64>(&["a", "b"]),
                cache.mset(&[("a", 1u64)], None),
                cache.set_tagged("k", &1u64, None, &["t"]),
                cache.invalidate_tag("t"),
            )
        })
        .await;
    assert_unavailable(&format!("{context}: lookup"), lookup);
    assert_unavailable(&format!("{context}: exists"), exists);
    assert_unavailable(&format!("{context}: ttl"), ttl);
    assert_unavailable(&format!("{context}: delete"), delete);
    assert_unavailable(&format!("{context}: delete_many"), delete_many);
    assert_unavailable(&format!("{context}: expire"), expire);
    assert_unavailable(&format!("{context}: incr"), incr);
    assert_unavailable(&format!("{context}: mget"), mget);
    assert_unavailable(&format!("{context}: mset"), mset);
    assert_unavailable(&format!("{context}: set_tagged"), tagged);
    assert_unavailable(&format!("{context}: invalidate_tag"), invalidate);

    let s = cache.stats();
    assert!(
        s.backend_errors >= before.backend_errors + 4,
        "{context}: counted: {s:?}, before: {before:?}"
    );
    assert_eq!(
        (s.hits, s.writes),
        (before.hits, before.writes),
        "{context}: {s:?}"
    );
}

#[tokio::test]
async fn redis_unreachable_at_start_gives_typed_errors_quickly() {
    let url = format!("redis://127.0.0.1:{}/", dead_port());
    let cache = cache_at(&url, CONNECT_TIMEOUT);
    every_operation_is_unavailable(&cache, "nothing listening").await;
    // Still so on a second round (no state left behind that hangs).
    let r = bounded("second get", cache.get::<u64>("k")).await;
    assert_unavailable("second get", r);
}

/// Something accepts TCP connections but never answers: the connect timeout still bounds
/// every operation.
#[tokio::test]
async fn redis_that_never_answers_gives_typed_errors_quickly() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free loopback port");
    let port = listener.local_addr().expect("its address").port();
    let cache = cache_at(&format!("redis://127.0.0.1:{port}/"), CONNECT_TIMEOUT);
    every_operation_is_unavailable(&cache, "a silent listener").await;
    drop(listener);
}

#[tokio::test]
async fn configuration_from_the_environment_builds_without_redis() {
    let port = dead_port().to_string();
    let namespace = tests::unique_namespace();
    let url = format!("redis://127.0.0.1:{port}/0");
    let by_url = CacheBuilder::from_lookup(|name| match name {
        "REDIS_URL" => Some(url.clone()),
        "CACHE_CONNECT_TIMEOUT" => Some("300ms".into()),
        "CACHE_NAMESPACE" => Some(namespace.clone()),
        _ => None,
    })
    .expect("settings parse")
    .build()
    .expect("builds without connecting");
    assert_eq!(by_url.key_prefix(), format!("{namespace}:"));
    every_operation_is_unavailable(&by_url, "REDIS_URL").await;

    let by_host = CacheBuilder::from_lookup(|name| match name {
        "REDIS_HOST" => Some("127.0.0.1".into()),
        "REDIS_PORT" => Some(port.clone()),
        "CACHE_CONNECT_TIMEOUT" => Some("300ms".into()),
        _ => None,
    })
    .expect("settings parse")
    .build()
    .expect("builds without connecting");
    let r = bounded("REDIS_HOST: get", by_host.get::<u64>("k")).await;
    assert_unavailable("REDIS_HOST: get", r);

    // No REDIS_URL: the embedded backend.
    let memory = CacheBuilder::from_lookup(|_| None)
        .expect("no settings")
        .build()
        .expect("builds");
    assert_eq!(memory.backend(), Source::Memory);
}

/// Sets `key` until it works: the first attempts after a restart may fail (the pooled
/// connections died with the server, or the circuit breaker is open until its next probe),
/// each with an unavailable error, and within the breaker's `open_for` (1 s) plus a probe
/// the pool has a live connection again.
async fn recovers(cache: &Cache, key: &str, value: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 1.. {
        match bounded(
            &format!("set attempt {attempt}"),
            cache.set(key, &value, None),
        )
        .await
        {
            Ok(()) => return attempt,
            Err(e) => assert!(
                e.is_unavailable(),
                "attempt {attempt}: expected unavailable, got {e:?}"
            ),
        }
        assert!(
            Instant::now() < deadline,
            "no successful write within 10 s after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!("the loop returns or fails")
}

#[tokio::test]
async fn operations_recover_after_redis_restarts() {
    let mut server = tests::RedisServer::start();
    let cache = cache_at(&server.url(), CONNECT_TIMEOUT);
    // Several live connections in the pool, so that several die at once.
    let (a, b, c, d) = tokio::join!(
        cache.set("a", &1u64, None),
        cache.set("b", &2u64, None),
        cache.set("c", &3u64, None),
        cache.get::<u64>("a"),
    );
    a.and(b).and(c).expect("writes before the restart");
    let _ = d.expect("read before the restart");

    server.restart();
    let attempts = recovers(&cache, "after", 7).await;
    for i in 0..20 {
        assert_eq!(
            cache
                .get::<u64>("after")
                .await
                .expect("reads after recovery"),
            Some(7),
            "read {i} after recovering in {attempts} attempts"
        );
    }
    assert_eq!(
        cache.get::<u64>("a").await.expect("get"),
        None,
        "a restarted server is empty (no persistence)"
    );
    assert_eq!(cache.incr("n", 2).await.expect("incr"), 2);
    assert_eq!(
        cache.mget::<u64>(&["after", "a"]).await.expect("mget"),
        vec![Some(7), None]
    );
}

#[tokio::test]
async fn operations_fail_fast_while_redis_is_down_and_recover_when_it_is_back() {
    let mut server = tests::RedisServer::start();
    let cache = cache_at(&server.url(), CONNECT_TIMEOUT);
    cache.set("k", &1u64, None).await.expect("write while up");

    server.kill();
    for attempt in 0..3 {
        let r = bounded("get while down", cache.get::<u64>("k")).await;
        assert_unavailable(&format!("get {attempt} while down"), r);
        let r = bounded("set while down", cache.set("k", &2u64, None)).await;
        assert_unavailable(&format!("set {attempt} while down"), r);
    }
    let v: u64 = bounded(
        "get_or_set while down",
        cache.get_or_set("k", None, || async { 9 }),
    )
    .await;
    assert_eq!(v, 9, "computed while Redis is down");

    server.restart();
    recovers(&cache, "k", 3).await;
    assert_eq!(cache.get::<u64>("k").await.expect("get"), Some(3));
    let v: u64 = cache.get_or_set("k", None, || async { 10 }).await;
    assert_eq!(v, 3, "a hit again once Redis is back");
}

/// Faults for real (ARCHITECTURE.md §6): the server killed and restarted under load. Sixteen tasks keep calling
/// `get_or_set` on fifty keys throughout: every call returns its key's own value within the
/// bound (computed while Redis is gone, from the cache before and after), errors are counted
/// while it is down, and hits come back once it is up again, with no new `Cache`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_under_load_every_call_answers_with_its_own_value() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let mut server = tests::RedisServer::start();
    let cache = cache_at(&server.url(), CONNECT_TIMEOUT);
    let (stop, calls) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let value_of = |key: usize| key as u64 * 1_000 + 7;
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let (cache, stop, calls) = (cache.clone(), stop.clone(), calls.clone());
            tokio::spawn(async move {
                let mut i = task * 7;
                while !stop.load(Ordering::Relaxed) {
                    let key = i % 50;
                    let v: u64 = bounded(
                        "get_or_set under load",
                        cache.get_or_set(&format!("k{key}"), None, || async move { value_of(key) }),
                    )
                    .await;
                    assert_eq!(v, value_of(key), "k{key}: another key's value");
                    calls.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let calls_now = || calls.load(Ordering::Relaxed);

    eventually!("hits under load", cache.stats().hits >= 200);
    let before = cache.stats();
    server.kill();
    // Failures until the circuit breaker opens, then calls it answers at once.
    let turned_away = |s: cache_core::StatsSnapshot| s.backend_errors + s.breaker_rejected;
    eventually!(
        "errors counted while down",
        turned_away(cache.stats()) >= turned_away(before) + 16
    );
    let during = calls_now();
    eventually!("calls go on while down", calls_now() >= during + 16);

    server.restart();
    // Hits from Redis, not from the breaker's fallback store: once the breaker closed (within
    // its `open_for`, 1 s, and a probe).
    let redis_hits = |s: cache_core::StatsSnapshot| s.hits - s.fallback_hits;
    let after_restart = cache.stats();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while redis_hits(cache.stats()) < redis_hits(after_restart) + 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "no hits from redis within 10 s of the restart: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("no call panicked or saw a wrong value");
    }
    for key in 0..50 {
        let stored = cache.get::<u64>(&format!("k{key}")).await.expect("get");
        assert!(
            stored.is_none() || stored == Some(value_of(key)),
            "k{key}: {stored:?}"
        );
    }
}

/// A server that stops answering on live connections (SIGSTOP: the kernel keeps the sockets,
/// nothing replies), as one stuck in a long command or a fork would: every command ends with
/// an unavailable error within the bound, `get_or_set` computes, and once the server answers
/// again the late replies to the abandoned commands are not taken for the answers of new
/// ones.
#[tokio::test]
async fn a_stalled_redis_times_out_commands_and_answers_correctly_after() {
    let mut server = tests::RedisServer::start();
    let cache = Cache::builder()
        .url(server.url())
        .namespace(tests::unique_namespace())
        .connect_timeout(CONNECT_TIMEOUT)
        .command_timeout(Duration::from_millis(200))
        .build()
        .expect("builds");
    for i in 0..10u64 {
        cache
            .set(&format!("k{i}"), &i, None)
            .await
            .expect("write while answering");
    }

    server.freeze();
    every_operation_is_unavailable(&cache, "a stalled server").await;
    server.thaw();
    // The first command after the stall may still fail (a connection given up on is
    // replaced); after that, every key reads its own value.
    let attempts = recovers(&cache, "after", 99).await;
    for round in 0..3 {
        // Concurrent, so the replies share the connection as they did before the stall.
        let mut reads = tokio::task::JoinSet::new();
        for i in 0..10u64 {
            let cache = cache.clone();
            reads.spawn(async move { (i, cache.get::<u64>(&format!("k{i}")).await) });
        }
        for (i, read) in reads.join_all().await {
            assert_eq!(
                read.expect("reads after the stall"),
                Some(i),
                "k{i}, round {round}, after recovering in {attempts} attempts"
            );
        }
    }
    assert_eq!(cache.get::<u64>("after").await.expect("get"), Some(99));
}
