//! The L1 near cache and its invalidation by client tracking, on a real Redis: two `Cache` instances with
//! their own connections, as two processes would have. Waits are bounded polls on what the
//! instance exposes (its feed being subscribed, its counters), never fixed sleeps.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{cached, Cache, Lookup, Source};

const DEADLINE: Duration = Duration::from_secs(20);

fn instance(ns: &str, local: bool) -> Cache {
    instance_at(&tests::redis_url(), ns, local)
}

fn instance_at(url: &str, ns: &str, local: bool) -> Cache {
    let b = Cache::builder().url(url).namespace(ns);
    let b = if local {
        b.local_cache(10_000).local_ttl(Duration::from_secs(60))
    } else {
        b
    };
    b.build().expect("build")
}

/// Polls `check` until it holds, or panics after the deadline.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < DEADLINE,
            "not within {DEADLINE:?}: {what}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Two instances with the L1 on, their feeds subscribed.
async fn pair() -> (Cache, Cache) {
    let ns = tests::unique_namespace();
    let (a, b) = (instance(&ns, true), instance(&ns, true));
    for c in [&a, &b] {
        eventually("feed subscribed", || async { c.local_cache_serving() }).await;
    }
    (a, b)
}

async fn source<T: serde::de::DeserializeOwned + 'static>(
    c: &Cache,
    key: &str,
) -> Option<(T, Source)> {
    match c.lookup::<T>(key).await.expect("lookup") {
        Lookup::Hit { value, source, .. } => Some((value, source)),
        Lookup::Miss => None,
    }
}

#[tokio::test]
async fn writes_deletes_tags_and_patterns_on_one_instance_reach_the_others_l1() {
    let (a, b) = pair().await;
    // A write.
    a.set("k", &1u32, None).await.expect("set");
    assert_eq!(source::<u32>(&b, "k").await, Some((1, Source::Redis)));
    assert_eq!(source::<u32>(&b, "k").await, Some((1, Source::Local)));
    a.set("k", &2u32, None).await.expect("set");
    eventually("b sees the write", || async {
        b.get::<u32>("k").await.expect("get") == Some(2)
    })
    .await;
    assert_eq!(source::<u32>(&b, "k").await, Some((2, Source::Local)));
    // A delete.
    a.delete("k").await.expect("delete");
    eventually("b sees the delete", || async {
        b.get::<u32>("k").await.expect("get").is_none()
    })
    .await;
    // A tag.
    a.set_tagged("m", &3u32, None, &["org"]).await.expect("set");
    eventually("b reads m from its L1", || async {
        matches!(source::<u32>(&b, "m").await, Some((3, Source::Local)))
    })
    .await;
    a.invalidate_tag("org").await.expect("invalidate");
    eventually("b sees the tag", || async {
        b.get::<u32>("m").await.expect("get").is_none()
    })
    .await;
    // A pattern.
    a.set("user:1", &4u32, None).await.expect("set");
    eventually("b reads user:1 from its L1", || async {
        matches!(source::<u32>(&b, "user:1").await, Some((4, Source::Local)))
    })
    .await;
    assert_eq!(a.invalidate_pattern("user:*").await.expect("pattern"), 1);
    eventually("b sees the pattern", || async {
        b.get::<u32>("user:1").await.expect("get").is_none()
    })
    .await;
    let stats = b.stats();
    assert!(
        stats.local_hits >= 4 && stats.local_invalidations >= 4,
        "{stats:?}"
    );
    // Opted out: reads through this handle never come from the L1.
    let fresh = b.without_local_cache();
    a.set("n", &5u32, None).await.expect("set");
    for _ in 0..3 {
        assert_eq!(source::<u32>(&fresh, "n").await, Some((5, Source::Redis)));
    }
}

#[tokio::test]
async fn a_killed_tracking_connection_flushes_the_l1_before_it_serves_again() {
    // A server of its own: killing every tracking client would cut the other tests' too.
    let server = tests::RedisServer::start();
    let ns = tests::unique_namespace();
    let (b, quiet) = (
        instance_at(&server.url(), &ns, true),
        instance_at(&server.url(), &ns, false),
    );
    eventually("feed subscribed", || async { b.local_cache_serving() }).await;
    quiet.set("k", &1u32, None).await.expect("set");
    assert_eq!(source::<u32>(&b, "k").await, Some((1, Source::Redis)));
    assert_eq!(source::<u32>(&b, "k").await, Some((1, Source::Local)));
    // A writer without the L1 invalidates b's copy too: Redis tracks the key for b.
    quiet.set("k", &2u32, None).await.expect("set");
    eventually("b sees the write of a writer without L1", || async {
        b.get::<u32>("k").await.expect("get") == Some(2)
    })
    .await;
    // Its tracking connection killed: a gap, which empties the L1. b's is the one subscribed
    // to the L1's channel (`quiet`, without an L1, tracks its scopes' generations only).
    let tracking: Vec<String> = tests::tracking_clients(server.port())
        .into_iter()
        .filter(|c| c.subscribed)
        .map(|c| c.id)
        .collect();
    assert_eq!(tracking.len(), 1, "{tracking:?}");
    let killed = tests::kill_clients(server.port(), &tracking);
    assert_eq!(killed, 1);
    eventually("the gap is noticed", || async {
        b.stats().local_flushes >= 1
    })
    .await;
    assert_eq!(
        b.get::<u32>("k").await.expect("get"),
        Some(2),
        "flushed before serving again"
    );
    eventually("feed subscribed again", || async {
        b.local_cache_serving()
    })
    .await;
    assert_eq!(b.get::<u32>("k").await.expect("get"), Some(2));
    eventually("served from the L1 again", || async {
        matches!(source::<u32>(&b, "k").await, Some((2, Source::Local)))
    })
    .await;
    // Tracking is back: a write by anyone reaches b again.
    quiet.set("k", &3u32, None).await.expect("set");
    eventually("b sees the write after the gap", || async {
        b.get::<u32>("k").await.expect("get") == Some(3)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_flushes_the_l1_and_it_serves_again_only_after_recovery() {
    // A server of its own, paused (SIGSTOP) while b's breaker opens. b's feed connection
    // survives the pause (its ping waits for the 10 s connect timeout), so only the breaker
    // can tell b that it was out of reach.
    let mut server = tests::RedisServer::start();
    let ns = tests::unique_namespace();
    let b = Cache::builder()
        .url(server.url())
        .namespace(ns.as_str())
        .local_cache(1000)
        .local_ttl(Duration::from_secs(600))
        .connect_timeout(Duration::from_secs(10))
        .command_timeout(Duration::from_millis(300))
        .breaker(2, Duration::from_millis(300))
        .build()
        .expect("build");
    let a = instance_at(&server.url(), &ns, true);
    let quiet = instance_at(&server.url(), &ns, false);
    for c in [&a, &b] {
        eventually("feed subscribed", || async { c.local_cache_serving() }).await;
    }
    a.set("k", &1u32, None).await.expect("set");
    eventually("b reads k from its L1", || async {
        matches!(source::<u32>(&b, "k").await, Some((1, Source::Local)))
    })
    .await;
    // A writer without the L1: b drops its copy (Redis tracks the key for it).
    quiet.set("k", &2u32, None).await.expect("set");
    eventually("b reads the new k from its L1", || async {
        matches!(source::<u32>(&b, "k").await, Some((2, Source::Local)))
    })
    .await;

    server.freeze();
    let flushes = b.stats().local_flushes;
    let mut i = 0u32;
    eventually("b's breaker opens", || {
        i += 1;
        let b = b.clone();
        async move {
            let _ = b.get::<u32>(&format!("other:{i}")).await;
            b.stats().breaker_opened >= 1
        }
    })
    .await;
    // From the moment the breaker is open the L1 does not serve, before the feed task ran.
    assert!(!b.local_cache_serving());
    match b.lookup::<u32>("k").await {
        Ok(Lookup::Hit {
            source: Source::Local,
            value,
            ..
        }) => panic!("the L1 served {value} while the breaker was open"),
        other => assert!(other.is_err(), "{other:?}"),
    }
    eventually("the L1 is flushed", || async {
        b.stats().local_flushes > flushes
    })
    .await;
    server.thaw();

    // Invalidated by a while b's breaker may still be open: b never serves an older value.
    a.set("k", &3u32, None).await.expect("set after the thaw");
    eventually("b recovers and serves k from its L1", || async {
        match b.lookup::<u32>("k").await {
            Ok(Lookup::Hit { value, source, .. }) => {
                assert_eq!(value, 3, "an old value served after the outage");
                source == Source::Local
            }
            Ok(Lookup::Miss) => panic!("k is in redis"),
            Err(_) => false, // the breaker is still open
        }
    })
    .await;
    assert!(b.local_cache_serving());
    let stats = b.stats();
    assert!(
        stats.breaker_opened >= 1 && stats.local_flushes > flushes,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_racing_an_invalidation_never_brings_the_old_value_back() {
    let (a, b) = pair().await;
    a.set("k", &0u64, None).await.expect("set");
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (b, stop, reads) = (b.clone(), stop.clone(), reads.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = b.get::<u64>("k").await;
                    reads.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for i in 1..=100u64 {
        a.set("k", &i, None).await.expect("set");
        // a's write returned: once b synced its L1 (its tracking connections answered a
        // PING, so the push of a's write, queued before, has been applied), b never serves
        // older. (A count of pushes is no such signal: a lost tracking connection, flushed
        // and replaced, can miss a push or hand over one twice.)
        b.sync_local_cache().await;
        for _ in 0..5 {
            let seen = b.get::<u64>("k").await.expect("get");
            assert_eq!(seen, Some(i), "round {i}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.expect("reader");
    }
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert!(b.stats().local_hits > 0, "{:?}", b.stats());
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// Not `Clone`: its L1 hits decode the envelope instead.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Opaque(u64);

#[cached(cache = cache, skip = [cache], key = "user:<id>")]
async fn user(cache: &Cache, id: u64) -> User {
    User {
        id,
        name: format!("user {id}"),
    }
}

#[cached(cache = cache, skip = [cache], key = "maybe:<id>")]
async fn maybe(cache: &Cache, id: u64) -> Option<User> {
    id.is_multiple_of(2).then(|| User {
        id,
        name: "even".into(),
    })
}

#[cached(cache = cache, skip = [cache], key = "fallible:<id>")]
async fn fallible(cache: &Cache, id: u64) -> Result<User, String> {
    if id == 0 {
        Err("zero".into())
    } else {
        Ok(User {
            id,
            name: "ok".into(),
        })
    }
}

#[cached(cache = cache, skip = [cache], key = "opaque:<id>")]
async fn opaque(cache: &Cache, id: u64) -> Opaque {
    Opaque(id)
}

#[cached(cache = cache, skip = [cache], key = "never:<id>", local = false)]
async fn never_local(cache: &Cache, id: u64) -> u64 {
    id
}

#[tokio::test]
async fn l1_hits_return_what_the_redis_path_returns_in_every_return_mode() {
    let (a, b) = pair().await;
    for id in [1u64, 2] {
        let from_redis = (
            user(&a, id).await,
            maybe(&a, id).await,
            fallible(&a, id).await,
            opaque(&a, id).await,
        );
        let before = b.stats().local_hits;
        let first = (
            user(&b, id).await,
            maybe(&b, id).await,
            fallible(&b, id).await,
            opaque(&b, id).await,
        );
        let local = (
            user(&b, id).await,
            maybe(&b, id).await,
            fallible(&b, id).await,
            opaque(&b, id).await,
        );
        assert_eq!(first, from_redis);
        assert_eq!(local, from_redis);
        let hits = if id.is_multiple_of(2) { 4 } else { 3 }; // `None` is not cached
        assert_eq!(b.stats().local_hits - before, hits, "{:?}", b.stats());
    }
    assert_eq!(fallible(&b, 0).await, Err("zero".into()));
    let before = b.stats().local_hits;
    for _ in 0..3 {
        assert_eq!(never_local(&b, 7).await, 7);
    }
    assert_eq!(b.stats().local_hits, before, "`local = false` reads Redis");
}

#[tokio::test]
async fn the_memory_backend_has_no_l1() {
    let cache = Cache::builder()
        .in_memory()
        .local_cache(100)
        .build()
        .expect("build");
    cache.set("k", &1u8, None).await.expect("set");
    assert!(!cache.local_cache_serving());
    assert!(matches!(
        cache.lookup::<u8>("k").await.expect("lookup"),
        Lookup::Hit {
            source: Source::Memory,
            ..
        }
    ));
}

#[cached(cache = cache, skip = [cache], key = "counted:<id>")]
async fn counted(cache: &Cache, id: u64) -> User {
    User {
        id,
        name: "counted".into(),
    }
}

#[tokio::test]
async fn l1_hits_count_per_namespace_and_the_namespaces_add_up_to_the_whole() {
    let (a, b) = pair().await;
    let (b_users, b_orders) = (b.namespace("users"), b.namespace("orders").tenant(7u32));
    a.namespace("users")
        .set("1", &1u32, None)
        .await
        .expect("set");
    a.namespace("orders")
        .tenant(7u32)
        .set("1", &2u32, None)
        .await
        .expect("set");
    a.set("root", &3u32, None).await.expect("set");
    // One Redis read each, then L1 hits: 3 on users, 2 on orders (tenants count with their
    // namespace), 3 on the root (two `get`s; the `#[cached]` calls compute, read Redis, then
    // hit the L1).
    for (handle, key, reads) in [(&b_users, "1", 4), (&b_orders, "1", 3), (&b, "root", 3)] {
        for _ in 0..reads {
            assert!(handle.get::<u32>(key).await.expect("get").is_some());
        }
    }
    for _ in 0..3 {
        counted(&b, 9).await;
    }
    let by_ns = |name: &str| {
        b.namespace_stats()
            .into_iter()
            .find(|s| s.namespace.ends_with(name))
            .unwrap_or_else(|| panic!("no namespace {name}"))
    };
    let (users, orders) = (by_ns(":users"), by_ns(":orders"));
    assert_eq!((users.hits, users.local_hits), (4, 3), "{users:?}");
    assert_eq!((orders.hits, orders.local_hits), (3, 2), "{orders:?}");
    let root = b.scope_stats();
    assert_eq!((root.hits, root.local_hits), (5, 3), "{root:?}");
    let all = b.stats();
    let sum = |f: fn(&cache_core::stats::NamespaceStats) -> u64| {
        b.namespace_stats().iter().map(f).sum::<u64>()
    };
    assert_eq!(sum(|s| s.hits), all.hits, "{all:?}");
    assert_eq!(sum(|s| s.local_hits), all.local_hits, "{all:?}");
    assert_eq!(all.local_hits, 8);
    assert_eq!(sum(|s| s.misses.total()), all.misses, "{all:?}");
}

#[tokio::test]
async fn the_l1_serves_encrypted_values_decrypted_through_the_readers_keyring() {
    let key = cache_core::EncryptionKey::generate().expect("a key");
    let (a, b) = pair().await;
    let (a, b) = (a.with_encryption(key.clone()), b.with_encryption(key));
    let secret = User {
        id: 1,
        name: "a secret name".into(),
    };
    a.set("pii", &secret, None).await.expect("set");
    // Encrypted at rest.
    let mut raw = tests::shared_server()
        .client()
        .get_connection()
        .expect("connect");
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(b.full_key("pii").expect("key"))
        .query(&mut raw)
        .expect("get");
    assert!(!String::from_utf8_lossy(&stored).contains("a secret name"));
    assert_eq!(
        source::<User>(&b, "pii").await,
        Some((secret.clone(), Source::Redis))
    );
    assert_eq!(
        source::<User>(&b, "pii").await,
        Some((secret.clone(), Source::Local))
    );
    // `#[cached]` of a `Clone` type: Redis, then the L1, plaintext both times.
    let first = user(&a, 5).await;
    assert_eq!(user(&b, 5).await, first);
    let before = b.stats().local_hits;
    assert_eq!(user(&b, 5).await, first);
    assert_eq!(b.stats().local_hits, before + 1);
    // A handle without the key gets nothing from the L1 it cannot decrypt, as from Redis.
    let plain = b.without_encryption();
    assert_eq!(plain.get::<User>("pii").await.expect("get"), None);
    let other = b.with_encryption(cache_core::EncryptionKey::generate().expect("a key"));
    assert_eq!(other.get::<User>("pii").await.expect("get"), None);
    // Invalidations still reach the L1.
    a.delete("pii").await.expect("delete");
    eventually("b sees the delete", || async {
        b.get::<User>("pii").await.expect("get").is_none()
    })
    .await;
}

#[tokio::test]
async fn an_l1_hit_says_how_old_its_value_is() {
    let (a, b) = pair().await;
    let heard = b.stats().local_invalidations;
    let written = Instant::now();
    a.set("aged", &7u32, None).await.expect("set");
    // Once b applied Redis's message about the write, nothing drops the copy it reads next.
    eventually("b hears of the write", || async {
        b.stats().local_invalidations > heard
    })
    .await;
    assert_eq!(source::<u32>(&b, "aged").await, Some((7, Source::Redis)));
    // Time passing is what is measured here: the age of the L1's copy grows with it.
    tokio::time::sleep(Duration::from_millis(40)).await;
    let found = b.lookup::<u32>("aged").await.expect("lookup");
    let since_written = written.elapsed(); // after the lookup: an upper bound of the age
    match found {
        Lookup::Hit { value, source, age } => {
            assert_eq!((value, source), (7, Source::Local));
            // The writer's wall clock against a monotonic one: allow rounding either way.
            assert!(
                age + Duration::from_millis(5) >= Duration::from_millis(40)
                    && age <= since_written + Duration::from_millis(50),
                "an L1 hit {age:?} old, written {since_written:?} ago"
            );
        }
        Lookup::Miss => panic!("expected an L1 hit"),
    }
}
