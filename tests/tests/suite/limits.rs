//! Durations and sizes a caller can pass, at their extremes, on both backends: the same typed
//! outcome, never a panic (README, "Durations and sizes").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_core::{cached, limits::MAX_TTL, Cache, CacheBuilder, Error, KeyTtl};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

/// What an operation answered, reduced to what must match across backends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    InvalidDuration,
    TooLarge,
    Other(String),
}

fn outcome<T>(r: &Result<T, Error>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(Error::InvalidDuration { .. }) => Outcome::InvalidDuration,
        Err(Error::TooLarge { .. }) => Outcome::TooLarge,
        Err(e) => Outcome::Other(e.to_string()),
    }
}

/// Rounded up to whole milliseconds and clamped to `MAX_TTL`, as the README says.
fn normalized(d: Duration) -> Duration {
    let ms = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(ms.min(MAX_TTL.as_millis()) as u64)
}

fn durations() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_nanos(999_999)),
        Just(Duration::from_millis(1)),
        Just(Duration::from_micros(1500)),
        Just(MAX_TTL),
        Just(MAX_TTL + Duration::from_millis(1)),
        Just(Duration::from_secs(u64::MAX)),
        Just(Duration::MAX),
        Just(Duration::from_millis(i64::MAX as u64)),
        (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (1u64..=100_000_000).prop_map(Duration::from_millis),
    ]
}

/// Checks what `ttl` reports after a write or `expire` with `given` (which succeeded).
fn check_ttl(b: &str, given: Duration, found: KeyTtl) -> Result<(), TestCaseError> {
    let expected = normalized(given);
    match found {
        KeyTtl::Expires(left) => {
            prop_assert!(left <= expected, "{b}: {left:?} left of {given:?}");
            // Generous: the machine is shared, and only sub-second TTLs may run out here.
            prop_assert!(
                expected < Duration::from_secs(60) || left + Duration::from_secs(60) > expected,
                "{b}: {left:?} left of {given:?}"
            );
        }
        // A TTL of a few milliseconds may be over before it is read.
        KeyTtl::Missing => prop_assert!(expected < Duration::from_secs(60), "{b}: {given:?}"),
        KeyTtl::Persistent => prop_assert!(false, "{b}: {given:?} made the key persistent"),
    }
    Ok(())
}

/// Every entry point taking a TTL, with `d`, on `cache`: the outcomes, in order.
async fn ttl_entry_points(
    b: &str,
    cache: &Cache,
    d: Duration,
) -> Result<Vec<Outcome>, TestCaseError> {
    let mut outcomes = Vec::new();
    let r = cache.set("set", &1u8, d).await;
    outcomes.push(outcome(&r));
    if r.is_ok() {
        check_ttl(b, d, cache.ttl("set").await.expect("ttl"))?;
        if normalized(d) >= Duration::from_secs(60) {
            // The envelope's expiry did not wrap around: the value reads back.
            prop_assert_eq!(cache.get::<u8>("set").await.expect("get"), Some(1), "{}", b);
        }
    }
    let r = cache.set_tagged("tagged", &1u8, d, &["t"]).await;
    outcomes.push(outcome(&r));
    let r = cache.mset(&[("m1", 1u8), ("m2", 2u8)], d).await;
    outcomes.push(outcome(&r));
    cache
        .set("expiring", &1u8, Duration::from_secs(600))
        .await
        .expect("set");
    let r = cache.expire("expiring", d).await;
    outcomes.push(outcome(&r));
    match r {
        Ok(existed) => {
            prop_assert!(existed, "{b}");
            check_ttl(b, d, cache.ttl("expiring").await.expect("ttl"))?;
        }
        // A refused TTL leaves the key as it was.
        Err(_) => prop_assert!(
            matches!(cache.ttl("expiring").await.expect("ttl"), KeyTtl::Expires(l) if l > Duration::from_secs(500)),
            "{b}"
        ),
    }
    let r = cache.with_default_ttl(d).set("default", &1u8, None).await;
    outcomes.push(outcome(&r));
    let r = cache.with_default_ttl(d).touch("expiring").await;
    outcomes.push(outcome(&r));
    // The get-or-compute path returns the value whatever the TTL.
    let v: u8 = cache.get_or_set("computed", d, || async { 7 }).await;
    prop_assert_eq!(v, 7);
    Ok(outcomes)
}

#[test]
fn extreme_ttls_have_the_same_outcome_on_both_backends() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&durations(), |d| {
            rt.block_on(async {
                let mut seen = Vec::new();
                for (b, cache) in tests::backends().await {
                    let outcomes = ttl_entry_points(b, &cache, d).await?;
                    let expected = if d.is_zero() {
                        Outcome::InvalidDuration
                    } else {
                        Outcome::Ok
                    };
                    for o in &outcomes {
                        prop_assert_eq!(o, &expected, "{}: {:?} gave {:?}", b, d, outcomes);
                    }
                    seen.push(outcomes);
                }
                prop_assert_eq!(&seen[0], &seen[1]);
                Ok(())
            })
        })
        .expect("same outcome on both backends, no panic");
}

#[tokio::test]
async fn a_zero_ttl_is_refused_the_same_on_both_backends() {
    for (b, cache) in tests::backends().await {
        let zero = cache.set("k", &1u8, Duration::ZERO).await;
        assert!(
            matches!(zero, Err(Error::InvalidDuration { name: "ttl", .. })),
            "{b}: {zero:?}"
        );
        assert_eq!(
            cache.get::<u8>("k").await.expect(b),
            None,
            "{b}: not stored"
        );
        cache.set("k", &1u8, None).await.expect(b);
        let zero = cache.expire("k", Duration::ZERO).await;
        assert!(matches!(zero, Err(Error::InvalidDuration { .. })), "{b}");
        assert_eq!(
            cache.get::<u8>("k").await.expect(b),
            Some(1),
            "{b}: untouched"
        );
        // The shortest TTL is one millisecond on both, and then the key is gone.
        cache
            .set("short", &1u8, Duration::from_nanos(1))
            .await
            .expect(b);
        let mut gone = false;
        for _ in 0..200 {
            if cache.get::<u8>("short").await.expect(b).is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(gone, "{b}: a 1 ms TTL expires");
        let s = cache.stats();
        assert_eq!(
            s.backend_errors, 0,
            "{b}: a caller's mistake, not the backend's"
        );
    }
}

#[tokio::test]
async fn the_longest_ttls_are_clamped_and_the_value_is_served() {
    for (b, cache) in tests::backends().await {
        for d in [Duration::MAX, Duration::from_secs(u64::MAX), MAX_TTL * 2] {
            cache.set("k", &"v", d).await.expect(b);
            assert_eq!(
                cache.get::<String>("k").await.expect(b).as_deref(),
                Some("v"),
                "{b}"
            );
            match cache.ttl("k").await.expect(b) {
                KeyTtl::Expires(left) => assert!(
                    left <= MAX_TTL && left > MAX_TTL - Duration::from_secs(60),
                    "{b}: {left:?}"
                ),
                other => panic!("{b}: {other:?}"),
            }
            assert!(cache.expire("k", d).await.expect(b), "{b}");
        }
        let long = cache.with_default_ttl(Duration::MAX);
        long.set("d", &1u8, None).await.expect(b);
        assert!(long.touch("d").await.expect(b), "{b}");
    }
}

#[tokio::test]
async fn builder_durations_and_sizes_at_their_extremes() {
    type Base = fn() -> CacheBuilder;
    let targets: [(&str, Base); 2] = [
        ("memory", || {
            Cache::builder()
                .namespace(tests::unique_namespace())
                .in_memory()
        }),
        ("redis", tests::redis_builder),
    ];
    for (b, base) in targets {
        // Zero is refused, naming the setting.
        for (setting, builder) in [
            ("connect_timeout", base().connect_timeout(Duration::ZERO)),
            ("command_timeout", base().command_timeout(Duration::ZERO)),
            (
                "invalidation_hold",
                base().invalidation_hold(Duration::ZERO),
            ),
            ("default_ttl", base().default_ttl(Duration::ZERO)),
            ("pool_size", base().pool_size(0)),
            ("pool_size", base().pool_size(u32::MAX)),
            ("memory_capacity", base().memory_capacity(0)),
            ("max_value_size", base().max_value_size(0)),
            ("max_value_size", base().max_value_size(usize::MAX)),
        ] {
            match builder.build() {
                Err(Error::Config { setting: s, .. }) => assert_eq!(s, setting, "{b}"),
                other => panic!("{b}: {setting}: expected a config error, got {other:?}"),
            }
        }
        // The largest are clamped, and the cache works.
        let cache = base()
            .connect_timeout(Duration::MAX)
            .command_timeout(Duration::MAX)
            .invalidation_hold(Duration::MAX)
            .default_ttl(Duration::MAX)
            .memory_capacity(u64::MAX)
            .compression_threshold(usize::MAX)
            .max_value_size(cache_core::limits::MAX_VALUE_SIZE_LIMIT)
            .build()
            .expect(b);
        assert_eq!(cache.default_ttl(), Some(MAX_TTL), "{b}");
        cache.set("k", &1u8, None).await.expect(b);
        assert_eq!(cache.get::<u8>("k").await.expect(b), Some(1), "{b}");
        assert!(cache.delete("k").await.expect(b), "{b}");
        assert_eq!(cache.get::<u8>("k").await.expect(b), None, "{b}");
        // Sub-millisecond settings round up to a millisecond.
        let fine = base()
            .default_ttl(Duration::from_nanos(1))
            .build()
            .expect(b);
        assert_eq!(fine.default_ttl(), Some(Duration::from_millis(1)), "{b}");
    }
    // From the environment too.
    let vars = |name: &str| match name {
        "CACHE_MAX_VALUE_SIZE" => Some("1024".to_owned()),
        "CACHE_DEFAULT_TTL" => Some("18446744073709551615".to_owned()),
        _ => None,
    };
    let cache = CacheBuilder::from_lookup(vars)
        .expect("parses")
        .build()
        .expect("builds");
    assert_eq!(cache.default_ttl(), Some(MAX_TTL));
    let big: Vec<u8> = noise(2048);
    assert!(matches!(
        cache.set("big", &big, None).await,
        Err(Error::TooLarge { limit: 1024, .. })
    ));
    let zero = |name: &str| (name == "CACHE_MAX_VALUE_SIZE").then(|| "0".to_owned());
    assert!(matches!(
        CacheBuilder::from_lookup(zero).expect("parses").build(),
        Err(Error::Config {
            setting: "max_value_size",
            ..
        })
    ));
}

/// Bytes LZ4 cannot shrink (xorshift), so the stored size is about their length.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

#[tokio::test]
async fn values_above_the_size_limit_are_refused_before_the_backend() {
    let caches = [
        (
            "memory",
            Cache::builder()
                .namespace(tests::unique_namespace())
                .in_memory(),
        ),
        ("redis", tests::redis_builder()),
    ];
    let mut raw = crate::foundation::Raw::shared().await;
    for (b, builder) in caches {
        let cache = builder.max_value_size(4096).build().expect(b);
        // At the limit (as stored: the envelope's header counts), fine; above, refused.
        cache.set("fits", &noise(1000), None).await.expect(b);
        let r = cache.set("big", &noise(5000), None).await;
        match &r {
            Err(Error::TooLarge { key, size, limit }) => {
                assert!(key.ends_with("big"), "{b}: {key}");
                assert!(*size > 5000 && *limit == 4096, "{b}: {size} {limit}");
            }
            other => panic!("{b}: {other:?}"),
        }
        assert!(!r.as_ref().is_err_and(Error::is_unavailable), "{b}");
        assert!(!cache.exists("big").await.expect(b), "{b}: nothing stored");
        if b == "redis" {
            let full = cache.full_key("big").expect("key");
            assert_eq!(raw.get(&full).await, None, "never reached redis");
        }
        // A batch with one value too large writes none of them.
        let r = cache
            .mset(&[("a", noise(10)), ("b", noise(9000))], None)
            .await;
        assert!(matches!(r, Err(Error::TooLarge { .. })), "{b}: {r:?}");
        assert!(!cache.exists("a").await.expect(b), "{b}");
        // get_or_set computes and returns, does not store, counts.
        let before = cache.stats();
        for _ in 0..2 {
            let v: Vec<u8> = cache
                .get_or_set("computed", None, || async { noise(9000) })
                .await;
            assert_eq!(v.len(), 9000, "{b}");
        }
        let after = cache.stats();
        assert_eq!(
            after.computes - before.computes,
            2,
            "{b}: computed each time"
        );
        assert_eq!(after.encode_errors - before.encode_errors, 2, "{b}");
        assert_eq!(after.backend_errors, 0, "{b}");
        assert!(!cache.exists("computed").await.expect(b), "{b}");
    }
}

#[cached(cache = cache, skip = [cache, calls], key = "blob:<n>")]
async fn blob(cache: &Cache, calls: &AtomicUsize, n: usize) -> Vec<u8> {
    calls.fetch_add(1, Ordering::SeqCst);
    noise(n)
}

#[tokio::test]
async fn cached_functions_return_oversized_values_without_storing_them() {
    for (b, builder) in [
        (
            "memory",
            Cache::builder()
                .namespace(tests::unique_namespace())
                .in_memory(),
        ),
        ("redis", tests::redis_builder()),
    ] {
        let cache = builder.max_value_size(4096).build().expect(b);
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            assert_eq!(blob(&cache, &calls, 8000).await, noise(8000), "{b}");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "{b}: never stored, computed each call"
        );
        assert_eq!(cache.stats().encode_errors, 3, "{b}");
        // Small values of the same function are cached as usual.
        for _ in 0..3 {
            assert_eq!(blob(&cache, &calls, 100).await.len(), 100, "{b}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4, "{b}");
    }
}

#[tokio::test]
async fn the_default_limit_is_16_mib() {
    for (b, cache) in tests::backends().await {
        let r = cache.set("huge", &noise(17 << 20), None).await;
        assert!(
            matches!(r, Err(Error::TooLarge { limit, .. }) if limit == 16 << 20),
            "{b}: {r:?}"
        );
        cache.set("large", &noise(1 << 20), None).await.expect(b);
    }
}
