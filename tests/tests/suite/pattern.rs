//! Invalidation by pattern (ARCHITECTURE.md §4): exactly the keys matching, inside
//! the handle's scope only, never the cache's own keys, and winning over computations already
//! running. On both backends.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use cache_core::{key, Error};
use tokio::sync::Notify;

/// Parts a user could send: every glob character, escaped by `key!`.
const PARTS: [&str; 4] = ["a*b", "a?b", "a[b", "a\\b"];

#[tokio::test]
async fn removes_exactly_the_matching_keys_among_100k() {
    for (backend, cache) in tests::backends().await {
        let cache = cache.with_default_ttl(std::time::Duration::from_secs(600));
        let n = 100_000usize;
        let all: Vec<String> = (0..n).map(|i| key!("user", PARTS[i % 4], i)).collect();
        for chunk in all.chunks(250) {
            let items: Vec<(&str, u32)> = chunk.iter().map(|k| (k.as_str(), 1u32)).collect();
            cache.mset(&items, None).await.expect("mset");
        }
        cache
            .set_tagged("tagged", &1u8, None, &["org"])
            .await
            .expect("set");
        // `user:a%2Ab:*`: the part `a*b`, and not `a?b`, `a[b` or `a\b`, which a raw glob
        // `user:a*b:*` would match.
        let pattern = format!("{}:*", key!("user", "a*b"));
        let removed = cache
            .invalidate_pattern(&pattern)
            .await
            .expect("invalidate");
        assert_eq!(removed, (n / 4) as u64, "{backend}");
        for (i, chunk) in all.chunks(250).enumerate() {
            let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let found = cache.mget::<u32>(&keys).await.expect("mget");
            for (j, v) in found.iter().enumerate() {
                let expect = (i * 250 + j) % 4 != 0;
                assert_eq!(v.is_some(), expect, "{backend}: {}", keys[j]);
            }
        }
        // Tombstones match too, but count only once, as values.
        assert_eq!(
            cache.invalidate_pattern(&pattern).await.expect("again"),
            0,
            "{backend}"
        );
        // `*` takes every value of the scope, and leaves the tag's version alone.
        assert_eq!(
            cache.invalidate_pattern("*").await.expect("all"),
            (n - n / 4 + 1) as u64,
            "{backend}"
        );
        // Looked at with a raw client on the one-server topology.
        if backend == "redis" && tests::topology() == tests::Topology::Single {
            let mut con = tests::shared_server()
                .client()
                .get_connection()
                .expect("connect");
            let version_key = format!("{}~tag:org", cache.key_prefix());
            let exists: bool = redis::cmd("EXISTS")
                .arg(&version_key)
                .query(&mut con)
                .expect("exists");
            assert!(
                exists,
                "the tag's version key is the cache's own, and survives `*`"
            );
        }
    }
}

#[tokio::test]
async fn a_tenant_pattern_never_reaches_outside_its_tenant() {
    for (backend, root) in tests::backends().await {
        let acme = root.tenant("acme");
        let others = [
            root.tenant("acme2"),
            root.tenant("acm"),
            root.tenant("*"),
            root.namespace("acme"),
        ];
        for pattern in [
            "*",
            "\\",
            "[",
            "*:*",
            ":*",
            "\\*",
            "[^x]*",
            "*]",
            "?*",
            "@*",
            ":@acme2:*",
        ] {
            root.set("user:1", &1u8, None).await.expect("set");
            root.set("@acme2:user:1", &1u8, None).await.expect("set");
            for other in &others {
                other.set("user:1", &1u8, None).await.expect("set");
            }
            acme.set("user:1", &1u8, None).await.expect("set");
            acme.set_tagged("user:2", &1u8, None, &["t"])
                .await
                .expect("set");
            let removed = acme.invalidate_pattern(pattern).await.expect("invalidate");
            assert!(removed <= 2, "{backend}, `{pattern}`");
            assert!(
                root.exists("user:1").await.expect("exists"),
                "{backend}, `{pattern}`: root"
            );
            assert!(
                root.exists("@acme2:user:1").await.expect("exists"),
                "{backend}, `{pattern}`"
            );
            for other in &others {
                assert!(
                    other.exists("user:1").await.expect("exists"),
                    "{backend}, `{pattern}`: {} touched",
                    other.key_prefix()
                );
            }
        }
        acme.invalidate_pattern("*").await.expect("all");
        assert_eq!(
            acme.invalidate_pattern("*").await.expect("all"),
            0,
            "{backend}"
        );
        acme.set("user:1", &1u8, None).await.expect("set");
        assert_eq!(
            acme.invalidate_pattern("*").await.expect("all"),
            1,
            "{backend}"
        );
        for bad in ["", "~tag:*", "user *"] {
            assert!(
                matches!(
                    acme.invalidate_pattern(bad).await,
                    Err(Error::InvalidKey { .. })
                ),
                "{backend}: `{bad}`"
            );
        }
    }
}

/// A computation held between its read of the data and its result.
#[derive(Default)]
struct Gate {
    started: Notify,
    release: Notify,
}

impl Gate {
    async fn hold<T>(
        &self,
        call: impl Future<Output = T>,
        meanwhile: impl Future<Output = ()>,
    ) -> T {
        let (out, ()) = tokio::join!(call, async {
            self.started.notified().await;
            meanwhile.await;
            self.release.notify_one();
        });
        out
    }
}

async fn read_row(db: &AtomicU64, calls: &AtomicUsize, gate: Option<&Gate>) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    let seen = db.load(Ordering::SeqCst);
    if let Some(gate) = gate {
        gate.started.notify_one();
        gate.release.notified().await;
    }
    seen
}

/// Whatever the read before the computation found, the value computed from data older than
/// the invalidation is not stored after it returned: by the same handle's root, and (for a
/// key holding something) by another instance.
#[tokio::test]
async fn a_pattern_invalidation_wins_over_a_running_computation() {
    for (backend, cache) in tests::backends().await {
        let other = if backend == "redis" {
            // Another instance on its own connections, same namespace.
            let ns = cache.key_prefix().trim_end_matches(':').to_owned();
            Some(tests::redis_builder().namespace(ns).build().expect("build"))
        } else {
            None
        };
        for found in ["nothing", "stale by tag", "undecodable", "deleted"] {
            for invalidator in [Some(&cache), other.as_ref()] {
                let Some(invalidator) = invalidator else {
                    continue;
                };
                if found == "nothing" && !std::ptr::eq(invalidator, &cache) {
                    continue; // nothing to find for another instance's scan: see the README
                }
                let key = format!("row:{}", found.replace(' ', "-"));
                match found {
                    "stale by tag" => {
                        cache
                            .set_tagged(&key, &0u64, None, &["t"])
                            .await
                            .expect("set");
                        cache.invalidate_tag("t").await.expect("invalidate tag");
                    }
                    "undecodable" => cache.set(&key, &"text", None).await.expect("set"),
                    "deleted" => {
                        cache.set(&key, &0u64, None).await.expect("set");
                        cache.delete(&key).await.expect("delete");
                    }
                    _ => {}
                }
                let (db, calls, gate) = (AtomicU64::new(1), AtomicUsize::new(0), Gate::default());
                let held = gate
                    .hold(
                        cache.get_or_set(&key, None, || read_row(&db, &calls, Some(&gate))),
                        async {
                            db.store(2, Ordering::SeqCst);
                            invalidator
                                .invalidate_pattern("row:*")
                                .await
                                .expect("invalidate");
                        },
                    )
                    .await;
                assert_eq!(held, 1, "{backend}, {found}");
                assert_eq!(
                    cache.get::<u64>(&key).await.expect("get"),
                    None,
                    "{backend}, read found {found}: the older value was not stored"
                );
                let fresh: u64 = cache
                    .get_or_set(&key, None, || read_row(&db, &calls, None))
                    .await;
                assert_eq!(fresh, 2, "{backend}, {found}");
                assert_eq!(
                    cache.get::<u64>(&key).await.expect("get"),
                    Some(2),
                    "{backend}, {found}"
                );
                cache.delete(&key).await.expect("clean");
            }
        }
    }
}

/// Redis killed: an invalidation by pattern made while it is down is queued on the circuit
/// breaker's recovery queue and replayed when it is back (restarted on the same port with its
/// data), before the breaker closes: the keys written before the outage that match are gone,
/// the others are intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_invalidation_made_while_redis_is_down_is_replayed_on_recovery() {
    use std::time::{Duration, Instant};
    let mut server = tests::RedisServer::builder()
        .arg("--appendonly")
        .arg("yes")
        .arg("--appendfsync")
        .arg("always")
        .start();
    let cache = tests::quick_failing_builder(&server.url())
        .breaker(2, Duration::from_millis(300))
        .build()
        .expect("build");
    for i in 0..50u32 {
        cache.set(&key!("user", i), &i, None).await.expect("set");
        cache.set(&key!("order", i), &i, None).await.expect("set");
    }
    server.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache.stats().breaker_opened == 0 {
        let _ = cache.get::<u32>("probe").await;
        assert!(Instant::now() < deadline, "the breaker never opened");
    }
    let err = cache
        .invalidate_pattern("user:*")
        .await
        .expect_err("redis is down");
    assert!(err.is_unavailable(), "{err}");
    server.restart();
    // Closed again once a command reaches Redis; the replay came first.
    while cache.exists("probe").await.is_err() {
        assert!(Instant::now() < deadline, "the breaker never closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..50u32 {
        assert_eq!(
            cache.get::<u32>(&key!("user", i)).await.expect("get"),
            None,
            "user:{i}"
        );
        assert_eq!(
            cache.get::<u32>(&key!("order", i)).await.expect("get"),
            Some(i),
            "order:{i}"
        );
    }
    assert!(
        cache.stats().invalidations_replayed >= 1,
        "{:?}",
        cache.stats()
    );
}
