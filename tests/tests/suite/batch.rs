//! Issue 22: batch get-or-compute (`Cache::get_or_set_many` and `try_get_or_set_many`,
//! `#[cached_many]`): one read, one load of exactly the missing ids, one write; single-flight
//! per key across batches and single-key calls; everything a single key has, per element.
//! On both backends (and the topology `CACHE_TEST_TOPOLOGY` selects).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::compute::BatchOptions;
use cache_core::{cached, cached_many, Cache};

const TTL: Duration = Duration::from_secs(300);
/// Bound on waiting for a condition of a concurrent test; generous, for a loaded machine.
const LIMIT: Duration = Duration::from_secs(20);

/// Polls `cond` every 5 ms until it holds; fails after [`LIMIT`].
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let started = Instant::now();
    while !cond().await {
        assert!(started.elapsed() < LIMIT, "{what}: not within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn user_key(id: &u64) -> String {
    format!("user:{id}")
}

fn names(ids: &[u64]) -> HashMap<u64, String> {
    ids.iter().map(|id| (*id, format!("user {id}"))).collect()
}

/// The ids every load was called with, in call order.
#[derive(Clone, Default)]
struct Loads(Arc<Mutex<Vec<Vec<u64>>>>);

impl Loads {
    fn record(&self, ids: &[u64]) {
        self.0.lock().expect("not poisoned").push(ids.to_vec());
    }
    fn calls(&self) -> Vec<Vec<u64>> {
        self.0.lock().expect("not poisoned").clone()
    }
    /// How many times each id was loaded.
    fn per_id(&self) -> HashMap<u64, usize> {
        let mut counts = HashMap::new();
        for call in self.calls() {
            for id in call {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        counts
    }
}

async fn batch(cache: &Cache, loads: &Loads, ids: &[u64]) -> HashMap<u64, String> {
    let loads = loads.clone();
    cache
        .get_or_set_many(
            ids.to_vec(),
            user_key,
            TTL,
            |missing: Vec<u64>| async move {
                loads.record(&missing);
                names(&missing)
            },
        )
        .await
}

#[tokio::test]
async fn load_gets_exactly_the_missing_ids_once_deduplicated_in_input_order() {
    for (backend, cache) in tests::backends().await {
        let loads = Loads::default();
        let first = batch(&cache, &loads, &[1, 2]).await;
        assert_eq!(first, names(&[1, 2]), "{backend}");
        let before = cache.stats();
        let found = batch(&cache, &loads, &[5, 2, 3, 2, 1, 5]).await;
        assert_eq!(found, names(&[1, 2, 3, 5]), "{backend}");
        assert_eq!(loads.calls(), vec![vec![1, 2], vec![5, 3]], "{backend}");
        // Per element: 1 and 2 hit, 5 and 3 missed (the duplicates are not counted).
        let after = cache.stats();
        assert_eq!(after.hits - before.hits, 2, "{backend}");
        assert_eq!(after.misses - before.misses, 2, "{backend}");
        assert_eq!(after.computes - before.computes, 2, "{backend}");
        // All cached now: no load at all, and what a single-key read finds is the value.
        let again = batch(&cache, &loads, &[3, 5, 1, 2]).await;
        assert_eq!(again, found, "{backend}");
        assert_eq!(loads.calls().len(), 2, "{backend}");
        let single: Option<String> = cache.get("user:3").await.expect("reads");
        assert_eq!(single.as_deref(), Some("user 3"), "{backend}");
        // An empty batch loads nothing.
        assert!(batch(&cache, &loads, &[]).await.is_empty(), "{backend}");
        assert_eq!(loads.calls().len(), 2, "{backend}");
    }
}

#[tokio::test]
async fn ids_the_load_does_not_return_are_absent_and_cached_only_when_asked() {
    for (backend, cache) in tests::backends().await {
        let loads = Loads::default();
        let only_odd = |loads: Loads| {
            move |missing: Vec<u64>| async move {
                loads.record(&missing);
                names(
                    &missing
                        .into_iter()
                        .filter(|id| id % 2 == 1)
                        .collect::<Vec<_>>(),
                )
            }
        };
        let found = cache
            .get_or_set_many([1, 2, 3, 4], user_key, TTL, only_odd(loads.clone()))
            .await;
        assert_eq!(found, names(&[1, 3]), "{backend}");
        // Not cached: asked for again.
        let found = cache
            .get_or_set_many([1, 2, 3, 4], user_key, TTL, only_odd(loads.clone()))
            .await;
        assert_eq!(found, names(&[1, 3]), "{backend}");
        assert_eq!(
            loads.calls(),
            vec![vec![1, 2, 3, 4], vec![2, 4]],
            "{backend}"
        );

        // Negative caching: remembered as absent for a TTL of its own.
        let options = BatchOptions::new()
            .ttl(TTL)
            .cache_absent(Duration::from_secs(60));
        let negative = Loads::default();
        for _ in 0..2 {
            let found = cache
                .get_or_set_many_with([10, 11, 12], user_key, &options, only_odd(negative.clone()))
                .await;
            assert_eq!(found, names(&[11]), "{backend}");
        }
        assert_eq!(negative.calls(), vec![vec![10, 11, 12]], "{backend}");
        // A single-key read of an absent id finds no value of its type.
        let single: Option<String> = cache.get("user:10").await.unwrap_or(None);
        assert_eq!(single, None, "{backend}");
        let ttl = cache.ttl("user:10").await.expect("reads the TTL");
        match ttl {
            cache_core::KeyTtl::Expires(left) => {
                assert!(left <= Duration::from_secs(60), "{backend}: {left:?}")
            }
            other => panic!("{backend}: the absence is kept for its own TTL, found {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_failing_load_returns_its_error_and_stores_nothing() {
    for (backend, cache) in tests::backends().await {
        let found: Result<HashMap<u64, String>, String> = cache
            .try_get_or_set_many([1, 2], user_key, TTL, |_: Vec<u64>| async move {
                Err("database down".to_owned())
            })
            .await;
        assert_eq!(found, Err("database down".to_owned()), "{backend}");
        for key in ["user:1", "user:2"] {
            assert!(!cache.exists(key).await.expect("reads"), "{backend}: {key}");
        }
        let loads = Loads::default();
        let found = batch(&cache, &loads, &[1, 2]).await;
        assert_eq!(found, names(&[1, 2]), "{backend}");
        assert_eq!(loads.calls(), vec![vec![1, 2]], "{backend}");
    }
}

/// What a gated load returns.
type Loading = std::pin::Pin<Box<dyn std::future::Future<Output = HashMap<u64, String>> + Send>>;

/// A load that waits for `gate` to open, counting its calls in `loads`.
fn gated(
    loads: &Loads,
    gate: &tokio::sync::watch::Receiver<bool>,
) -> impl FnOnce(Vec<u64>) -> Loading + Send + 'static {
    let (loads, mut gate) = (loads.clone(), gate.clone());
    move |missing: Vec<u64>| {
        Box::pin(async move {
            loads.record(&missing);
            let _ = gate.wait_for(|open| *open).await;
            names(&missing)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_concurrent_batches_load_each_id_once() {
    for (backend, cache) in tests::backends().await {
        let loads = Loads::default();
        let (open, gate) = tokio::sync::watch::channel(false);
        // The first batch leads ids 0..20 and holds them until the gate opens.
        let first = {
            let (cache, load) = (cache.clone(), gated(&loads, &gate));
            let ids: Vec<u64> = (0..20).collect();
            tokio::spawn(async move { cache.get_or_set_many(ids, user_key, TTL, load).await })
        };
        until("the first batch to load", || async {
            !loads.calls().is_empty()
        })
        .await;
        let waits_before = cache.stats().flight_waits;
        // Seven more, each overlapping the first and each other.
        let others: Vec<_> = (1..8u64)
            .map(|i| {
                let (cache, load) = (cache.clone(), gated(&loads, &gate));
                let ids: Vec<u64> = (i * 2..i * 2 + 20).rev().collect();
                tokio::spawn(async move {
                    let found = cache
                        .get_or_set_many(ids.clone(), user_key, TTL, load)
                        .await;
                    (ids, found)
                })
            })
            .collect();
        // Each of them reaches an id the first batch holds, and waits for it.
        until("every other batch to wait for a flight", || async {
            cache.stats().flight_waits - waits_before >= 7
        })
        .await;
        open.send_replace(true);
        let first = first.await.expect("joins");
        assert_eq!(first, names(&(0..20).collect::<Vec<_>>()), "{backend}");
        for other in others {
            let (ids, found) = other.await.expect("joins");
            assert_eq!(found, names(&ids), "{backend}");
        }
        let per_id = loads.per_id();
        assert_eq!(per_id.len(), 34, "{backend}: ids 0..34 loaded");
        assert!(
            per_id.values().all(|n| *n == 1),
            "{backend}: an id was loaded twice: {:?}",
            loads.calls()
        );
    }
}

#[cached(key = "user:<id>", cache = cache, skip = [cache, calls])]
async fn single_user(cache: &Cache, calls: &AtomicUsize, id: u64) -> String {
    calls.fetch_add(1, Ordering::SeqCst);
    format!("user {id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_and_a_single_key_call_share_a_flight() {
    for (backend, cache) in tests::backends().await {
        // A single-key call waits for the batch loading its id.
        let loads = Loads::default();
        let (open, gate) = tokio::sync::watch::channel(false);
        let running = {
            let (cache, load) = (cache.clone(), gated(&loads, &gate));
            tokio::spawn(async move { cache.get_or_set_many([1, 2, 3], user_key, TTL, load).await })
        };
        until("the batch to load", || async { !loads.calls().is_empty() }).await;
        let waits = cache.stats().flight_waits;
        let calls = Arc::new(AtomicUsize::new(0));
        let single = {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move { single_user(&cache, &calls, 2).await })
        };
        until("the single-key call to wait", || async {
            cache.stats().flight_waits > waits
        })
        .await;
        open.send_replace(true);
        assert_eq!(single.await.expect("joins"), "user 2", "{backend}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "{backend}: its body did not run"
        );
        assert_eq!(
            running.await.expect("joins"),
            names(&[1, 2, 3]),
            "{backend}"
        );

        // A batch waits for the single-key call computing one of its ids, and does not load it.
        let (open, gate) = tokio::sync::watch::channel(false);
        let started = Arc::new(AtomicUsize::new(0));
        let computing = {
            let (cache, mut gate, started) = (cache.clone(), gate.clone(), started.clone());
            tokio::spawn(async move {
                cache
                    .get_or_set("user:11", TTL, || async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        "user 11 (single)".to_owned()
                    })
                    .await
            })
        };
        until("the single-key computation to start", || async {
            started.load(Ordering::SeqCst) == 1
        })
        .await;
        let waits = cache.stats().flight_waits;
        let loads = Loads::default();
        let batched = {
            let (cache, loads) = (cache.clone(), loads.clone());
            tokio::spawn(async move { batch(&cache, &loads, &[10, 11, 12]).await })
        };
        until("the batch to wait", || async {
            cache.stats().flight_waits > waits
        })
        .await;
        open.send_replace(true);
        let found = batched.await.expect("joins");
        assert_eq!(found[&11], "user 11 (single)", "{backend}");
        assert_eq!(loads.calls(), vec![vec![10, 12]], "{backend}");
        assert_eq!(
            computing.await.expect("joins"),
            "user 11 (single)",
            "{backend}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_load_releases_the_ids_its_waiters_wait_for() {
    for (backend, cache) in tests::backends().await {
        let (open, mut gate) = tokio::sync::watch::channel(false);
        let started = Arc::new(AtomicUsize::new(0));
        let panicking = {
            let (cache, started) = (cache.clone(), started.clone());
            tokio::spawn(async move {
                cache
                    .get_or_set_many([1, 2], user_key, TTL, |_: Vec<u64>| async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        panic!("the load panics");
                        #[allow(unreachable_code)]
                        HashMap::<u64, String>::new()
                    })
                    .await
            })
        };
        until("the panicking load to start", || async {
            started.load(Ordering::SeqCst) == 1
        })
        .await;
        let waits = cache.stats().flight_waits;
        let loads = Loads::default();
        let waiter = {
            let (cache, loads) = (cache.clone(), loads.clone());
            tokio::spawn(async move { batch(&cache, &loads, &[2, 3]).await })
        };
        until("the other batch to wait", || async {
            cache.stats().flight_waits > waits
        })
        .await;
        open.send_replace(true);
        assert!(
            panicking.await.expect_err("panicked").is_panic(),
            "{backend}"
        );
        // The waiter took over id 2.
        assert_eq!(waiter.await.expect("joins"), names(&[2, 3]), "{backend}");
        assert_eq!(loads.per_id(), HashMap::from([(2, 1), (3, 1)]), "{backend}");
        assert!(!cache.exists("user:1").await.expect("reads"), "{backend}");
    }
}

#[cached_many(key = "tagged:<org>:<ids>", ttl = "5m", tags = ["org:<org>", "user:<ids>"], cache = cache, skip = [cache, loads])]
async fn tagged_users(
    cache: &Cache,
    loads: &Loads,
    org: u64,
    ids: Vec<u64>,
) -> HashMap<u64, String> {
    loads.record(&ids);
    ids.into_iter()
        .map(|id| (id, format!("user {id} of {org}")))
        .collect()
}

#[tokio::test]
async fn tags_apply_per_element() {
    for (backend, cache) in tests::backends().await {
        let loads = Loads::default();
        let found = tagged_users(&cache, &loads, 7, vec![1, 2, 3]).await;
        assert_eq!(found[&2], "user 2 of 7", "{backend}");
        tagged_users(&cache, &loads, 7, vec![1, 2, 3]).await;
        assert_eq!(loads.calls().len(), 1, "{backend}: all cached");
        // A tag of one element: only it is loaded again.
        cache.invalidate_tag("user:2").await.expect("invalidates");
        tagged_users(&cache, &loads, 7, vec![1, 2, 3]).await;
        assert_eq!(loads.calls()[1], vec![2], "{backend}");
        // A tag they share: all of them.
        cache.invalidate_tag("org:7").await.expect("invalidates");
        tagged_users(&cache, &loads, 7, vec![3, 1, 2]).await;
        assert_eq!(loads.calls()[2], vec![3, 1, 2], "{backend}");
        // Another org is another key.
        tagged_users(&cache, &loads, 8, vec![1]).await;
        assert_eq!(loads.calls()[3], vec![1], "{backend}");
        // The `_invalidate` companion takes the ids.
        let removed = tagged_users_invalidate(&cache, &loads, 7, vec![1, 2, 9])
            .await
            .expect("invalidates");
        assert_eq!(removed, 2, "{backend}");
        tagged_users(&cache, &loads, 7, vec![1, 2, 3]).await;
        assert_eq!(loads.calls()[4], vec![1, 2], "{backend}");
    }
}

#[tokio::test]
async fn tenants_and_encryption_apply_per_element() {
    for (backend, cache) in tests::backends().await {
        let loads = Loads::default();
        let (a, b) = (cache.tenant(1u64), cache.tenant(2u64));
        let load = |tenant: u64, loads: Loads| {
            move |missing: Vec<u64>| async move {
                loads.record(&missing);
                missing
                    .iter()
                    .map(|id| (*id, format!("{tenant}/{id}")))
                    .collect::<HashMap<_, _>>()
            }
        };
        assert_eq!(
            a.get_or_set_many([1, 2], user_key, TTL, load(1, loads.clone()))
                .await[&1],
            "1/1"
        );
        assert_eq!(
            b.get_or_set_many([1, 2], user_key, TTL, load(2, loads.clone()))
                .await[&1],
            "2/1"
        );
        assert_eq!(
            a.get_or_set_many([1, 2], user_key, TTL, load(9, loads.clone()))
                .await[&2],
            "1/2"
        );
        assert_eq!(loads.calls().len(), 2, "{backend}: one load per tenant");

        let key = cache_core::EncryptionKey::from_bytes([7; 32]);
        let sealed = cache.namespace("sealed").with_encryption(key);
        let first = sealed
            .get_or_set_many([1, 2], user_key, TTL, load(3, loads.clone()))
            .await;
        let again = sealed
            .get_or_set_many([1, 2], user_key, TTL, load(4, loads.clone()))
            .await;
        assert_eq!(first, again, "{backend}");
        assert_eq!(loads.calls().len(), 3, "{backend}");
        // Without the key, the entries are not readable: loaded (and not served) again.
        let plain = cache.namespace("sealed");
        let unsealed = plain
            .get_or_set_many([1], user_key, TTL, load(5, loads.clone()))
            .await;
        assert_eq!(unsealed[&1], "5/1", "{backend}");
    }
}

#[cached_many(key = "slice:<ids>", cache = cache, skip = [cache, loads])]
async fn from_slice(
    cache: &Cache,
    loads: &Loads,
    ids: &[u64],
) -> Result<HashMap<u64, u64>, String> {
    loads.record(ids);
    Ok(ids.iter().map(|id| (*id, id * 10)).collect())
}

#[cached_many(key = "hash:<ids>", cache = cache, skip = [cache, loads])]
async fn from_hash_set(cache: &Cache, loads: &Loads, ids: HashSet<u64>) -> HashMap<u64, u64> {
    loads.record(&ids.iter().copied().collect::<Vec<_>>());
    ids.into_iter().map(|id| (id, id * 10)).collect()
}

#[cached_many(key = "btree:<ids>", cache = cache, skip = [cache, loads], cache_absent = "1m")]
async fn from_btree_set(
    cache: &Cache,
    loads: &Loads,
    ids: BTreeSet<u64>,
) -> Result<HashMap<u64, u64>, String> {
    loads.record(&ids.iter().copied().collect::<Vec<_>>());
    if ids.contains(&0) {
        return Err("zero is not an id".to_owned());
    }
    Ok(ids
        .into_iter()
        .filter(|id| *id != 4)
        .map(|id| (id, id * 10))
        .collect())
}

#[tokio::test]
async fn the_macro_takes_slices_and_sets_and_passes_only_the_missing_ids() {
    for (backend, cache) in tests::backends().await {
        let loads = Loads::default();
        assert_eq!(
            from_slice(&cache, &loads, &[1, 2])
                .await
                .expect("loads")
                .len(),
            2
        );
        assert_eq!(
            from_slice(&cache, &loads, &[2, 3, 1]).await.expect("loads")[&3],
            30
        );
        assert_eq!(loads.calls(), vec![vec![1, 2], vec![3]], "{backend}");

        let loads = Loads::default();
        from_hash_set(&cache, &loads, HashSet::from([1, 2])).await;
        let found = from_hash_set(&cache, &loads, HashSet::from([1, 2, 3])).await;
        assert_eq!(found.len(), 3, "{backend}");
        assert_eq!(loads.calls()[1], vec![3], "{backend}");

        let loads = Loads::default();
        assert_eq!(
            from_btree_set(&cache, &loads, BTreeSet::from([0, 1])).await,
            Err("zero is not an id".to_owned())
        );
        let found = from_btree_set(&cache, &loads, BTreeSet::from([3, 4, 5]))
            .await
            .expect("loads");
        assert_eq!(found, HashMap::from([(3, 30), (5, 50)]), "{backend}");
        let found = from_btree_set(&cache, &loads, BTreeSet::from([1, 3, 4, 5]))
            .await
            .expect("loads");
        assert_eq!(
            found,
            HashMap::from([(1, 10), (3, 30), (5, 50)]),
            "{backend}"
        );
        // 4 is cached as absent (`cache_absent`); the failed call stored nothing, so 1 is loaded.
        assert_eq!(
            loads.calls(),
            vec![vec![0, 1], vec![3, 4, 5], vec![1]],
            "{backend}"
        );
    }
}

/// While the breaker is open, the fallback store answers and keeps what the load returned,
/// per element, as for a single key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_breaker_open_the_fallback_store_serves_the_batch() {
    let mut server = tests::RedisServer::start();
    let cache = tests::quick_failing_builder(&server.url())
        .breaker(1, Duration::from_secs(600))
        .build()
        .expect("builds");
    let loads = Loads::default();
    assert_eq!(batch(&cache, &loads, &[1, 2]).await, names(&[1, 2]));
    server.kill();
    until("the breaker to open", || async {
        let _ = cache.get::<String>("probe").await;
        cache.stats().breaker_opened >= 1
    })
    .await;
    let found = batch(&cache, &loads, &[2, 3, 4]).await;
    assert_eq!(found, names(&[2, 3, 4]));
    let before = cache.stats().fallback_hits;
    let again = batch(&cache, &loads, &[4, 3]).await;
    assert_eq!(again, names(&[3, 4]));
    assert_eq!(
        cache.stats().fallback_hits - before,
        2,
        "both from the fallback store"
    );
    // Redis's values are out of reach: 2 is loaded with the others, once; then from the
    // fallback store.
    assert_eq!(loads.calls(), vec![vec![1, 2], vec![2, 3, 4]]);
}

/// A load that fails with a stale window serves the stale values (fail-safe).
#[tokio::test]
async fn a_failing_load_serves_stale_values_within_their_window() {
    for (backend, cache) in tests::backends().await {
        let ttl = Duration::from_millis(50);
        let options = BatchOptions::new().ttl(ttl).stale(Duration::from_secs(600));
        let found: Result<HashMap<u64, String>, String> = cache
            .try_get_or_set_many_with([1, 2], user_key, &options, |missing: Vec<u64>| async move {
                Ok(names(&missing))
            })
            .await;
        assert_eq!(found.expect("loads"), names(&[1, 2]));
        let stale_before = cache.stats().stale_served;
        // Past the TTL (a real wait: expiry is the condition), the stale values are served
        // when the load fails.
        let expired_at = Instant::now() + ttl;
        tokio::time::sleep_until(expired_at.into()).await;
        until("the values to be stale", || async {
            let r: Result<HashMap<u64, String>, String> = cache
                .try_get_or_set_many_with([1, 2], user_key, &options, |_: Vec<u64>| async move {
                    Err("down".to_owned())
                })
                .await;
            r.is_ok_and(|m| m == names(&[1, 2])) && cache.stats().stale_served > stale_before
        })
        .await;
        // A load with an id that has no stale value fails.
        let r: Result<HashMap<u64, String>, String> = cache
            .try_get_or_set_many_with([1, 9], user_key, &options, |_: Vec<u64>| async move {
                Err("down".to_owned())
            })
            .await;
        assert_eq!(r, Err("down".to_owned()), "{backend}");
    }
}

/// Two ids whose keys are one (a key function that ignores part of the id): the batch does not
/// wait for the flight it leads itself.
#[tokio::test]
async fn ids_sharing_a_key_do_not_wait_for_their_own_flight() {
    for (backend, cache) in tests::backends().await {
        let loads = Loads::default();
        let recorded = loads.clone();
        let found = cache
            .get_or_set_many(
                [1, 2],
                |_: &u64| "one key".to_owned(),
                TTL,
                |missing: Vec<u64>| async move {
                    recorded.record(&missing);
                    names(&missing)
                },
            )
            .await;
        assert_eq!(found, names(&[1, 2]), "{backend}");
        assert_eq!(loads.calls(), vec![vec![1, 2]], "{backend}");
    }
}

/// With the distributed fill lock, a batch in another process (another cache root: its own
/// flights and connections) waits for the ids this one is loading, and takes their values
/// instead of loading them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_distributed_fill_lock_batches_of_two_processes_load_each_id_once() {
    let namespace = tests::unique_namespace();
    let root = || {
        tests::redis_builder()
            .namespace(namespace.as_str())
            .build()
            .expect("builds")
    };
    let (holder, waiter) = (root(), root());
    let options = BatchOptions::new()
        .ttl(TTL)
        .lock(cache_core::compute::FillLock::Distributed)
        .lock_wait(LIMIT);
    let loads = Loads::default();
    let (open, gate) = tokio::sync::watch::channel(false);
    let first = {
        let load = gated(&loads, &gate);
        tokio::spawn(async move {
            holder
                .get_or_set_many_with([1, 2], user_key, &options, load)
                .await
        })
    };
    until("the holder to load", || async { !loads.calls().is_empty() }).await;
    let second = {
        let loads = loads.clone();
        tokio::spawn(async move {
            waiter
                .get_or_set_many_with(
                    [2, 3],
                    user_key,
                    &options,
                    move |missing: Vec<u64>| async move {
                        loads.record(&missing);
                        names(&missing)
                    },
                )
                .await
        })
    };
    let channel = format!("{namespace}*~fill:*");
    until("the other process to wait for the fill lock", || async {
        !tests::subscribed_channels(&channel).await.is_empty()
    })
    .await;
    open.send_replace(true);
    assert_eq!(first.await.expect("joins"), names(&[1, 2]));
    assert_eq!(second.await.expect("joins"), names(&[2, 3]));
    assert_eq!(loads.calls(), vec![vec![1, 2], vec![3]]);
}

/// The L1 near cache answers per element: ids it holds cost no read, and a batch's hits
/// from Redis fill it.
#[tokio::test]
async fn the_near_cache_answers_per_element() {
    let cache = tests::redis_builder()
        .local_cache(10_000)
        .build()
        .expect("builds");
    until("the near cache to serve", || async {
        cache.local_cache_serving()
    })
    .await;
    let loads = Loads::default();
    batch(&cache, &loads, &[1, 2, 3]).await; // loaded and stored
    batch(&cache, &loads, &[1, 2, 3]).await; // read from Redis, kept in the L1
    let before = cache.stats().local_hits;
    let found = batch(&cache, &loads, &[3, 2, 1, 4]).await;
    assert_eq!(found, names(&[1, 2, 3, 4]));
    assert_eq!(
        cache.stats().local_hits - before,
        3,
        "1, 2 and 3 from the L1"
    );
    assert_eq!(loads.calls(), vec![vec![1, 2, 3], vec![4]]);
}
