//! Issue 21: `Cache::clear` (a generation per scope) on both backends and the three
//! topologies, and no invalidation lost however long Redis is out of reach (the recovery
//! queue escalates to a clear) or however a timed-out one ended.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{Cache, Error};

use crate::foundation::{calls, Raw};

/// Polls `cond` every 10 ms until it holds; fails after `limit`.
async fn within<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> F,
) -> Duration {
    let started = Instant::now();
    while !cond().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Both backends, each with the generations known in process (the default: tracked) and
/// fetched by every read (`strict_clear`); the guarantees are the same.
fn both_kinds() -> Vec<(String, Cache)> {
    let mut all = Vec::new();
    for strict in [false, true] {
        let memory = Cache::builder()
            .in_memory()
            .namespace(tests::unique_namespace().as_str())
            .strict_clear(strict)
            .build()
            .expect("builds");
        let redis = tests::redis_builder()
            .strict_clear(strict)
            .build()
            .expect("builds");
        all.push((format!("memory, strict_clear {strict}"), memory));
        all.push((format!("redis, strict_clear {strict}"), redis));
    }
    all
}

async fn get(cache: &Cache, key: &str) -> Option<u32> {
    cache.get::<u32>(key).await.expect("get")
}

#[tokio::test]
async fn a_clear_drops_its_scope_and_nothing_else() {
    for (backend, root) in both_kinds() {
        let users = root.namespace("users");
        let orders = root.namespace("orders");
        let ann = users.tenant("ann");
        root.set("config", &1u32, None).await.expect("set");
        users.set("1", &2u32, None).await.expect("set");
        ann.set("cart", &3u32, None).await.expect("set");
        orders.set("9", &4u32, None).await.expect("set");
        users
            .set_tagged("tagged", &5u32, None, &["t"])
            .await
            .expect("set_tagged");

        users.clear().await.expect("clear users");
        assert_eq!(get(&users, "1").await, None, "{backend}: in the scope");
        assert_eq!(
            get(&users, "tagged").await,
            None,
            "{backend}: tagged, in the scope"
        );
        assert_eq!(
            get(&ann, "cart").await,
            None,
            "{backend}: a tenant of the scope"
        );
        assert_eq!(
            users.mget::<u32>(&["1", "tagged"]).await.expect("mget"),
            vec![None, None],
            "{backend}: mget"
        );
        assert_eq!(
            root.namespace("users").get::<u32>("1").await.expect("get"),
            None,
            "{backend}: another handle on the same scope"
        );
        assert_eq!(
            get(&orders, "9").await,
            Some(4),
            "{backend}: a sibling scope"
        );
        assert_eq!(get(&root, "config").await, Some(1), "{backend}: the parent");

        // Written after the clear: hits, through every path that writes.
        users.set("1", &6u32, None).await.expect("set");
        users
            .mset(&[("m1", 7u32), ("m2", 8u32)], None)
            .await
            .expect("mset");
        let computed = users.get_or_set("c", None, || async { 9u32 }).await;
        assert_eq!(computed, 9);
        let again = users.get_or_set("c", None, || async { 10u32 }).await;
        assert_eq!(
            again, 9,
            "{backend}: get_or_set after a clear stores and hits"
        );
        assert_eq!(
            get(&users, "1").await,
            Some(6),
            "{backend}: set after the clear"
        );
        assert_eq!(
            get(&users, "m2").await,
            Some(8),
            "{backend}: mset after the clear"
        );

        // The root: everything under it.
        root.clear().await.expect("clear root");
        for (scope, key) in [
            (&root, "config"),
            (&orders, "9"),
            (&users, "1"),
            (&users, "c"),
        ] {
            assert_eq!(
                get(scope, key).await,
                None,
                "{backend}: {key} after the root's clear"
            );
        }
        assert_eq!(
            users.get_or_set("c", None, || async { 11u32 }).await,
            11,
            "{backend}: computed again after the root's clear"
        );
    }
}

/// A computation that read before a clear and stores after it stores an entry that misses:
/// the clear wins (ARCHITECTURE.md §4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_computation_running_across_a_clear_does_not_revive_the_old_value() {
    for (backend, cache) in both_kinds() {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let running = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_set("k", None, || async move {
                        let _ = started_tx.send(());
                        let _ = go_rx.await;
                        1u32
                    })
                    .await
            })
        };
        started_rx.await.expect("the computation started");
        cache.clear().await.expect("clear");
        go_tx.send(()).expect("the computation waits");
        assert_eq!(running.await.expect("task"), 1);
        assert_eq!(
            cache.get_or_set("k", None, || async { 2u32 }).await,
            2,
            "{backend}: the value computed before the clear was not kept"
        );
    }
}

/// Missing generation key: "never cleared". Lost after a clear (evicted), entries written
/// after the clear still hit rather than all turning into misses.
#[tokio::test]
async fn a_generation_key_lost_after_a_clear_keeps_the_entries_written_after_it() {
    let cache = tests::redis_builder().build().expect("builds");
    let users = cache.namespace("users");
    users.clear().await.expect("clear");
    users.set("after", &1u32, None).await.expect("set");
    let mut con = tests::raw_connection().await;
    let generation = format!("{}~clear:users:", cache.key_prefix());
    let deleted: i64 = redis::cmd("DEL")
        .arg(&generation)
        .query_async(&mut con)
        .await
        .expect("DEL");
    assert_eq!(deleted, 1, "the clear wrote {generation}");
    assert_eq!(get(&users, "after").await, Some(1));
    users.clear().await.expect("clear again");
    assert_eq!(
        get(&users, "after").await,
        None,
        "a clear after the loss still clears"
    );
}

/// Two instances on one Redis, each with its L1: a value both hold in memory is served by
/// neither once one of them cleared (the other within its feed's delivery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_serves_a_cleared_value_from_redis_or_its_l1() {
    let namespace = tests::unique_namespace();
    let build = || {
        tests::redis_builder()
            .namespace(namespace.as_str())
            .local_cache(1_000)
            .build()
            .expect("builds")
    };
    let (a, b) = (build(), build());
    let plain = tests::redis_builder()
        .namespace(namespace.as_str())
        .build()
        .expect("builds");
    for cache in [&a, &b] {
        within("the L1 serves", Duration::from_secs(10), || async {
            cache.local_cache_serving()
        })
        .await;
    }
    let (na, nb, np) = (a.namespace("n"), b.namespace("n"), plain.namespace("n"));
    na.set("k", &1u32, None).await.expect("set");
    for _ in 0..3 {
        assert_eq!(get(&nb, "k").await, Some(1));
        assert_eq!(get(&na, "k").await, Some(1));
    }
    let before = b.stats().local_hits;
    assert_eq!(get(&nb, "k").await, Some(1));
    assert!(b.stats().local_hits > before, "b's L1 holds the value");

    na.clear().await.expect("clear");
    assert_eq!(get(&na, "k").await, None, "the instance that cleared");
    assert_eq!(get(&np, "k").await, None, "an instance reading Redis");
    within(
        "b's L1 drops the scope",
        Duration::from_secs(10),
        || async { get(&nb, "k").await.is_none() },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(get(&nb, "k").await, None, "not served again");
    }
}

/// Two instances on one deployment, neither with an L1: one clears, and the other, which knew
/// the scope's generation (its hits read no generation key), hears of it through tracking. So
/// it does of a generation key changed by any other client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_hears_of_a_clear_through_tracking() {
    let namespace = tests::unique_namespace();
    let build = || {
        tests::redis_builder()
            .namespace(namespace.as_str())
            .build()
            .expect("builds")
    };
    let (a, b) = (build(), build());
    b.sync_local_cache().await; // its generations' tracking is on
    let (na, nb) = (a.namespace("n"), b.namespace("n"));
    na.set("k", &1u32, None).await.expect("set");
    assert_eq!(
        get(&nb, "k").await,
        Some(1),
        "read, and the generations learned"
    );
    assert_eq!(get(&nb, "k").await, Some(1));

    na.clear().await.expect("clear");
    b.sync_local_cache().await; // every push sent before it was applied
    assert_eq!(get(&nb, "k").await, None, "b heard of a's clear");
    na.set("k", &2u32, None).await.expect("set");
    assert_eq!(get(&nb, "k").await, Some(2), "written after the clear");

    // Another client moves the generation on (as a clear from another deployment would).
    let mut raw = tests::raw_connection().await;
    let generation = format!("{}~clear:n:", a.key_prefix());
    let _: i64 = redis::cmd("INCR")
        .arg(&generation)
        .query_async(&mut raw)
        .await
        .expect("INCR");
    b.sync_local_cache().await;
    assert_eq!(
        get(&nb, "k").await,
        None,
        "b heard of the other client's change"
    );
}

/// The point of knowing the generations in process: once known, a hit through a scope three
/// levels deep (root, namespace, tenant) is one `GET`, counted by the server itself (an owned
/// server, so no other test's commands are counted). A clear heard of costs one `MGET` to
/// learn the new generations, then hits are plain `GET`s again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_the_generations_are_known_a_hit_is_one_get() {
    let server = tests::RedisServer::start();
    let cache = tests::redis_cache_at(&server.url());
    let mut raw = Raw::on(&server.client()).await;
    cache.sync_local_cache().await; // the generations' tracking is on
    let cart = cache.namespace("users").tenant(7u64);
    cart.set("k", &1u32, None).await.expect("set");
    assert_eq!(get(&cart, "k").await, Some(1));

    raw.reset_command_stats().await;
    for _ in 0..10 {
        assert_eq!(get(&cart, "k").await, Some(1));
    }
    assert_eq!(raw.command_calls().await, calls(&[("get", 10)]));

    cache
        .namespace("orders")
        .clear()
        .await
        .expect("clear a sibling");
    cache.sync_local_cache().await; // its push heard of: the generations read again
    raw.reset_command_stats().await;
    for _ in 0..10 {
        assert_eq!(get(&cart, "k").await, Some(1), "a sibling's clear");
    }
    assert_eq!(raw.command_calls().await, calls(&[("get", 9), ("mget", 1)]));
}

/// Generations not known here (with `strict_clear`, never) are read in the same `MGET` as a
/// batch's values: one round trip for the batch, not one more per element.
#[tokio::test]
async fn a_batch_reads_the_generations_it_does_not_know_with_its_values() {
    let server = tests::RedisServer::start();
    let cache = Cache::builder()
        .url(server.url())
        .namespace(tests::unique_namespace().as_str())
        .strict_clear(true)
        .build()
        .expect("builds");
    let users = cache.namespace("users");
    let mut raw = Raw::on(&server.client()).await;
    let load = |ids: Vec<u32>| async move {
        ids.into_iter()
            .map(|id| (id, id * 2))
            .collect::<std::collections::HashMap<u32, u32>>()
    };
    let key = |id: &u32| format!("u:{id}");
    let first = users.get_or_set_many(0..10u32, key, None, load).await;
    assert_eq!(first.len(), 10);

    let all_cached = async |raw: &mut Raw, why: &str| {
        raw.reset_command_stats().await;
        let cached = users
            .get_or_set_many(0..10u32, key, None, |_| async { panic!("{why}") })
            .await;
        assert_eq!(cached, first, "{why}");
        assert_eq!(raw.command_calls().await, calls(&[("mget", 1)]), "{why}");
    };
    all_cached(&mut raw, "all ten are cached").await;

    users.clear().await.expect("clear");
    let after = users.get_or_set_many(0..10u32, key, None, load).await;
    assert_eq!(after, first, "loaded again after the clear");
    all_cached(&mut raw, "written after the clear, all ten are hits").await;
}

/// The generations' tracking connection killed: a gap. The instance forgets what it knew
/// (its reads fetch the generations meanwhile), tracks again, and hears of the next clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_generation_tracking_connection_is_a_gap() {
    let server = tests::RedisServer::start();
    let namespace = tests::unique_namespace();
    let build = || {
        Cache::builder()
            .url(server.url())
            .namespace(namespace.as_str())
            .build()
            .expect("builds")
    };
    let (a, b) = (build(), build());
    a.sync_local_cache().await;
    b.sync_local_cache().await;
    a.set("k", &1u32, None).await.expect("set");
    assert_eq!(get(&b, "k").await, Some(1));
    let tracking_ids = || -> Vec<String> {
        tests::tracking_clients(server.port())
            .into_iter()
            .map(|c| c.id)
            .collect()
    };
    let before = tracking_ids();
    assert_eq!(before.len(), 2, "one tracking connection per instance");
    assert_eq!(tests::kill_clients(server.port(), &before), 2);
    a.clear().await.expect("clear");
    // Whether b noticed the gap yet or not, it trusts nothing it cannot confirm.
    b.sync_local_cache().await;
    assert_eq!(get(&b, "k").await, None, "the clear made during the gap");
    a.set("k", &2u32, None).await.expect("set");
    assert_eq!(get(&b, "k").await, Some(2));
    within("both track again", Duration::from_secs(10), || async {
        let now = tracking_ids();
        now.len() == 2 && now.iter().all(|id| !before.contains(id))
    })
    .await;
    b.sync_local_cache().await;
    assert_eq!(get(&b, "k").await, Some(2), "learned again");
    a.clear().await.expect("clear");
    b.sync_local_cache().await;
    assert_eq!(get(&b, "k").await, None, "heard through the new connection");
}

// ---- no invalidation lost ------------------------------------------------------------------

/// A dedicated server (these tests freeze and pause it), a cache on it that gives up quickly.
fn outage_cache(server: &tests::RedisServer) -> Cache {
    tests::quick_failing_builder(&server.url())
        .breaker(3, Duration::from_millis(500))
        .build()
        .expect("builds")
}

/// 12,000 distinct keys deleted while Redis is frozen: 10,000 wait in the recovery queue, the
/// rest escalate to a clear of the root. Once Redis answers, none of the deleted values is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_beyond_the_recovery_queue_escalate_and_none_is_served_again() {
    const KEYS: u32 = 12_000;
    let mut server = tests::RedisServer::start();
    let cache = outage_cache(&server);
    let keys: Vec<String> = (0..KEYS).map(|i| format!("item:{i}")).collect();
    let items: Vec<(&str, u32)> = keys.iter().map(|k| (k.as_str(), 1u32)).collect();
    for chunk in items.chunks(1_000) {
        cache.mset(chunk, None).await.expect("mset");
    }
    assert_eq!(get(&cache, "item:11999").await, Some(1));

    server.freeze();
    let mut outcomes = (0u32, 0u32);
    for key in &keys {
        match cache.delete(key).await {
            Err(Error::CircuitOpen { .. }) => outcomes.0 += 1,
            Err(e) if e.is_unavailable() => outcomes.1 += 1,
            other => panic!("a delete while redis is frozen: {other:?}"),
        }
    }
    assert_eq!(outcomes.0 + outcomes.1, KEYS);
    let escalated = cache.stats().invalidations_escalated;
    assert!(
        escalated > 0,
        "some deletes did not fit: {:?}",
        cache.stats()
    );
    server.thaw();

    within("the breaker closes", Duration::from_secs(30), || async {
        cache.exists("probe").await.is_ok()
    })
    .await;
    let mut served = 0;
    for key in &keys {
        if get(&cache, key).await.is_some() {
            served += 1;
        }
    }
    let s = cache.stats();
    eprintln!(
        "{KEYS} deletes while frozen ({} turned away by the open breaker, {} timed out): {} \
         escalated, {} replayed, {served} deleted values served after recovery",
        outcomes.0, outcomes.1, s.invalidations_escalated, s.invalidations_replayed
    );
    assert_eq!(served, 0, "deleted values served after recovery");
    assert_eq!(s.invalidations_dropped, 0, "{s:?}");
    // The cache works on: written after the replay, read back.
    cache.set("after", &2u32, None).await.expect("set");
    assert_eq!(get(&cache, "after").await, Some(2));
}

/// A delete that times out while the breaker stays closed, its command never applied (the
/// connection it waited on is killed): replayed, not assumed done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_that_timed_out_with_the_breaker_closed_is_replayed() {
    let server = tests::RedisServer::start();
    let cache = tests::quick_failing_builder(&server.url())
        .breaker(100, Duration::from_millis(500))
        .build()
        .expect("builds");
    cache.set("k", &1u32, None).await.expect("set");
    cache
        .set_tagged("t", &1u32, None, &["tag"])
        .await
        .expect("set");
    let mut admin = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("an admin connection");
    // Writes (and scripts that may write) wait while clients are paused for writes.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .expect("CLIENT PAUSE");
    let deleted = cache.delete("k").await;
    assert!(
        matches!(&deleted, Err(e) if e.is_unavailable()),
        "timed out: {deleted:?}"
    );
    let bumped = cache.invalidate_tag("tag").await;
    assert!(
        matches!(&bumped, Err(e) if e.is_unavailable()),
        "{bumped:?}"
    );
    // Their commands die with the connections that carried them, unapplied.
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .expect("CLIENT KILL");
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut admin)
        .await
        .expect("CLIENT UNPAUSE");
    within(
        "the delete and the tag bump are replayed",
        Duration::from_secs(10),
        || async {
            matches!(cache.get::<u32>("k").await, Ok(None))
                && matches!(cache.get::<u32>("t").await, Ok(None))
        },
    )
    .await;
    assert!(
        cache.stats().invalidations_replayed >= 2,
        "{:?}",
        cache.stats()
    );
}

/// A clear while Redis is frozen: the fallback store forgets what it held, and the clear is
/// replayed before anything is read from Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_while_redis_is_out_of_reach_is_replayed() {
    let mut server = tests::RedisServer::start();
    let cache = outage_cache(&server);
    let users = cache.namespace("users");
    users.set("1", &1u32, None).await.expect("set");
    let computed = Arc::new(AtomicU64::new(0));
    let compute = |value: u32| {
        let computed = computed.clone();
        move || async move {
            computed.fetch_add(1, Ordering::SeqCst);
            value
        }
    };
    server.freeze();
    within("the breaker opens", Duration::from_secs(10), || async {
        users
            .get::<u32>("probe")
            .await
            .err()
            .is_some_and(|e| matches!(e, Error::CircuitOpen { .. }))
    })
    .await;
    // The fallback store holds a value computed during the outage...
    assert_eq!(users.get_or_set("f", None, compute(5)).await, 5);
    assert_eq!(users.get_or_set("f", None, compute(6)).await, 5);
    let cleared = users.clear().await;
    assert!(
        matches!(cleared, Err(Error::CircuitOpen { .. })),
        "{cleared:?}"
    );
    // ...and forgets it on the clear.
    assert_eq!(users.get_or_set("f", None, compute(7)).await, 7);
    server.thaw();
    within("the breaker closes", Duration::from_secs(30), || async {
        users.exists("probe").await.is_ok()
    })
    .await;
    assert_eq!(get(&users, "1").await, None, "the clear was replayed");
}
