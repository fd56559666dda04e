//! Redis Cluster and Sentinel: the cache on a real local cluster (six redis-servers) and a
//! real Sentinel setup (a primary, a replica, three Sentinels), including failovers under load.
//!
//! The rest of the suite runs on either topology too when `CACHE_TEST_TOPOLOGY` selects it
//! (`scripts/test` does); the tests here start deployments of their own, because they break
//! them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::Cache;

/// Bound on a failover: node timeout (1.5 s) plus election, with room for a loaded machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(30);

/// The failover tests start and break deployments of their own: once per `scripts/test`, in
/// its first pass (the single-server one), not again in the cluster and Sentinel passes.
fn first_pass_only() -> bool {
    tests::topology() == tests::Topology::Single
}

fn cluster_cache(cluster: &tests::RedisCluster) -> Cache {
    Cache::builder()
        .cluster_nodes(cluster.urls())
        .namespace(tests::unique_namespace())
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_millis(500))
        .build()
        .expect("a cluster cache builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_on_a_cluster_with_keys_and_tags_in_different_slots() {
    let cluster = tests::shared_cluster();
    let cache = cluster_cache(cluster);
    // Keys and tags land on different primaries: the writes, the tombstone script and the tag
    // bumps are split by slot, the reads are one MGET per slot.
    let keys: Vec<String> = (0..40).map(|i| format!("user:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        cache
            .set_tagged(k, &i, None, &[&format!("org:{}", i % 7)])
            .await
            .expect("set_tagged");
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let values: Vec<Option<usize>> = cache.mget(&refs).await.expect("mget");
    assert_eq!(values, (0..40).map(Some).collect::<Vec<_>>());
    cache
        .invalidate_tags(&["org:0", "org:3"])
        .await
        .expect("invalidate tags");
    let values: Vec<Option<usize>> = cache.mget(&refs).await.expect("mget");
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v.is_none(), i % 7 == 0 || i % 7 == 3, "entry {i}: {v:?}");
    }
    // Entries invalidated by tag still hold a value until deleted.
    assert_eq!(
        cache.delete_many(&refs[..20]).await.expect("delete_many"),
        20
    );
    assert_eq!(cache.get::<usize>("user:1").await.expect("get"), None);
    let pairs: Vec<(&str, usize)> = refs.iter().map(|k| (*k, 1)).collect();
    cache.mset(&pairs, None).await.expect("mset");
    assert_eq!(cache.get::<usize>("user:5").await.expect("get"), Some(1));
    assert_eq!(cache.incr("visits", 3).await.expect("incr"), 3);
    assert!(cache
        .expire("visits", Duration::from_secs(60))
        .await
        .expect("expire"));
    let computed = cache.get_or_set("answer", None, || async { 42u32 }).await;
    assert_eq!(computed, 42);
    assert_eq!(cache.get::<u32>("answer").await.expect("get"), Some(42));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_calls_see_no_error_while_a_cluster_primary_fails_over() {
    if !first_pass_only() {
        return;
    }
    let mut cluster = tests::RedisCluster::start();
    let cache = cluster_cache(&cluster);
    let key = "hot";
    let computations = Arc::new(AtomicU64::new(0));
    let call = move |cache: Cache, computations: Arc<AtomicU64>| async move {
        cache
            .try_get_or_set(key, Duration::from_secs(600), || async move {
                computations.fetch_add(1, Ordering::Relaxed);
                Ok::<u64, std::io::Error>(7)
            })
            .await
    };
    assert_eq!(
        call(cache.clone(), computations.clone())
            .await
            .expect("computed"),
        7
    );
    let full = cache.full_key(key).expect("a valid key");
    let primary = cluster
        .primary_for(&full)
        .expect("a primary serves the key");

    // 8 tasks call in a loop while the key's primary is killed and its replica takes over.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (cache, computations, stop, calls) = (
            cache.clone(),
            computations.clone(),
            stop.clone(),
            calls.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match call(cache.clone(), computations.clone()).await {
                    Ok(7) => {}
                    _ => errors += 1,
                }
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            errors
        }));
    }
    let killed_at = Instant::now();
    cluster.node_mut(primary).kill();
    // Kept until the end: dropping it stops the servers.
    let (_cluster, promoted) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + FAILOVER_BOUND;
        let promoted = loop {
            match cluster.primary_for(&full) {
                Some(p) if p != primary => break Some(p),
                _ if Instant::now() >= deadline => break None,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        (cluster, promoted)
    })
    .await
    .expect("joined");
    assert!(
        promoted.is_some(),
        "a replica took over within {FAILOVER_BOUND:?}"
    );
    let failed_over = killed_at.elapsed();
    // Hits resume: after the failover a computed value stays (no computation per call).
    let resumed = Instant::now();
    let before = loop {
        let before = computations.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        if computations.load(Ordering::Relaxed) == before {
            break before;
        }
        assert!(
            resumed.elapsed() < FAILOVER_BOUND,
            "hits never resumed after the failover"
        );
    };
    stop.store(true, Ordering::Relaxed);
    let mut errors = 0;
    for t in tasks {
        errors += t.await.expect("no task panicked");
    }
    eprintln!(
        "cluster failover: {} calls, {errors} errors surfaced, replica promoted after {failed_over:?}, {before} computations in all, hits resumed {:?} after promotion",
        calls.load(Ordering::Relaxed),
        resumed.elapsed()
    );
    assert_eq!(errors, 0, "a #[cached]-style caller never sees an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_follows_a_sentinel_failover_without_errors_for_cached_callers() {
    if !first_pass_only() {
        return;
    }
    let setup = tests::SentinelSetup::start();
    let cache = Cache::builder()
        .sentinel(setup.sentinel_urls(), tests::SENTINEL_MASTER)
        .namespace(tests::unique_namespace())
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_millis(500))
        .build()
        .expect("a sentinel cache builds");
    cache
        .set("before", &1u8, None)
        .await
        .expect("set on the first primary");
    let first = setup.current_primary_port().expect("a primary");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (cache, stop) = (cache.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut calls, mut errors) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let v = cache
                    .try_get_or_set(&format!("k{t}"), None, || async move { Ok::<u64, ()>(t) })
                    .await;
                if v != Ok(t) {
                    errors += 1;
                }
                calls += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (calls, errors)
        }));
    }
    let started = Instant::now();
    let second = tokio::task::spawn_blocking(move || {
        let port = setup.failover(FAILOVER_BOUND).expect("sentinel failover");
        (setup, port)
    })
    .await
    .expect("joined");
    let (setup, second) = second;
    let failover_took = started.elapsed();
    assert_ne!(first, second);
    // The cache follows: a write lands on the new primary within the bound.
    let followed = loop {
        let r = cache.set("after", &2u8, None).await;
        if let Err(e) = &r {
            eprintln!("{:?} set: {e}", started.elapsed());
        }
        if r.is_ok() {
            let raw = redis::Client::open(format!("redis://127.0.0.1:{second}/"))
                .expect("client")
                .get_multiplexed_async_connection()
                .await;
            if let Ok(mut raw) = raw {
                let full = cache.full_key("after").expect("key");
                let found: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&full)
                    .query_async(&mut raw)
                    .await
                    .unwrap_or(None);
                if found.is_some() {
                    break started.elapsed();
                }
            }
        }
        assert!(
            started.elapsed() < FAILOVER_BOUND,
            "the cache never wrote to the new primary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let (mut calls, mut errors) = (0, 0);
    for t in tasks {
        let (c, e) = t.await.expect("no task panicked");
        calls += c;
        errors += e;
    }
    eprintln!("sentinel failover: {calls} calls, {errors} errors surfaced, the sentinels reported the new primary {failover_took:?} after SENTINEL FAILOVER, the cache wrote to it {followed:?} after");
    assert_eq!(errors, 0);
    drop(setup);
}

/// A cluster primary frozen (SIGSTOP) as an invalidation by pattern starts: its scan times
/// out, the pattern waits for its replica to be promoted (the harness's 1.5 s node timeout)
/// and scans the replacement from the start. Every matching key on every primary is gone and
/// nothing else is removed; `health()` then shows the frozen node as unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_invalidation_survives_a_primary_failing_over_during_its_scan() {
    if !first_pass_only() {
        return;
    }
    let mut cluster = tests::RedisCluster::start();
    let cache = cluster_cache(&cluster);
    let users: Vec<String> = (0..3000).map(|i| format!("user:{i}")).collect();
    let orders: Vec<String> = (0..300).map(|i| format!("order:{i}")).collect();
    for chunk in users.chunks(500).chain(orders.chunks(300)) {
        let items: Vec<(&str, u32)> = chunk.iter().map(|k| (k.as_str(), 1u32)).collect();
        cache.mset(&items, None).await.expect("mset");
    }
    // Every write replicated, so the promoted replica holds what its primary held.
    for &p in &cluster.primaries() {
        let client = redis::Client::open(cluster.nodes()[p].url()).expect("client");
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let acked: u64 = redis::cmd("WAIT")
            .arg(1)
            .arg(10_000)
            .query_async(&mut con)
            .await
            .expect("WAIT");
        assert_eq!(acked, 1, "the replica of node {p} acknowledged");
    }
    let full = cache.full_key("user:0").expect("key");
    let victim = cluster.primary_for(&full).expect("a primary");
    let victim_addr = format!("127.0.0.1:{}", cluster.nodes()[victim].port());
    cluster.node_mut(victim).freeze();
    let started = Instant::now();
    let removed = cache
        .invalidate_pattern("user:*")
        .await
        .expect("the invalidation survives the failover");
    let took = started.elapsed();
    // Each key counts once at most; a delete applied whose answer the failover held past the
    // command timeout is not counted (the key is found again as a tombstone, which does not
    // count), so the count may fall short. What matters is below.
    assert!(
        removed > 0 && removed <= users.len() as u64,
        "{removed} removed"
    );
    // Gone on every primary, the promoted one included; nothing else removed. The cluster
    // connection may still be settling on the new topology: reads are retried while
    // unavailable, within the failover bound.
    let read = |keys: &[String]| {
        let cache = cache.clone();
        let keys = keys.to_vec();
        async move {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let since = Instant::now();
            loop {
                match cache.mget::<u32>(&refs).await {
                    Ok(found) => break found,
                    Err(e) if e.is_unavailable() && since.elapsed() < FAILOVER_BOUND => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("mget: {e}"),
                }
            }
        }
    };
    assert!(
        read(&users).await.iter().all(Option::is_none),
        "a user key survived"
    );
    assert!(
        read(&orders).await.iter().all(Option::is_some),
        "an order key was removed"
    );
    assert_ne!(
        cluster.primary_for(&full),
        Some(victim),
        "the replica took over"
    );
    // `health()` lists the frozen node as unreachable (polled: its `CLUSTER NODES` goes to a
    // random node, which may be the frozen one while the connection settles).
    let since = Instant::now();
    let h = loop {
        let h = cache.health().await;
        if h.nodes.iter().any(|n| n.address == victim_addr) || since.elapsed() > FAILOVER_BOUND {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let node = h
        .nodes
        .iter()
        .find(|n| n.address == victim_addr)
        .unwrap_or_else(|| panic!("the frozen node is listed: {h:#?}"));
    assert!(!node.reachable && node.error.is_some(), "{node:?}");
    assert_eq!(h.status, cache_core::HealthStatus::Degraded, "{h:#?}");
    eprintln!(
        "pattern across a failover: {removed} keys removed in {took:?} (the frozen primary's replica promoted meanwhile)"
    );
    cluster.node_mut(victim).kill();
}
