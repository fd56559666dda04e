//! Every operation of `Cache`, on both backends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cache_core::{Error, KeyTtl, Lookup, Source};
use serde::{Deserialize, Serialize};

use super::{backends_with, calls, Raw};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    roles: Vec<String>,
}

fn user(id: u64) -> User {
    User {
        id,
        name: format!("user {id}"),
        roles: vec!["admin".into(), "ops".into()],
    }
}

const HOUR: Duration = Duration::from_secs(3600);

fn expires_within(ttl: KeyTtl, low: Duration, high: Duration) -> bool {
    matches!(ttl, KeyTtl::Expires(d) if d > low && d <= high)
}

#[tokio::test]
async fn get_set_delete_and_exists() {
    for (b, cache) in tests::backends().await {
        assert_eq!(
            cache.get::<User>("user:1").await.expect(b),
            None,
            "{b}: a fresh key is a miss"
        );
        assert!(!cache.exists("user:1").await.expect(b), "{b}");

        cache
            .set("user:1", &user(1), Duration::from_secs(60))
            .await
            .expect(b);
        assert_eq!(
            cache.get::<User>("user:1").await.expect(b),
            Some(user(1)),
            "{b}"
        );
        assert!(cache.exists("user:1").await.expect(b), "{b}");

        // Overwrite.
        cache.set("user:1", &user(2), None).await.expect(b);
        assert_eq!(
            cache.get::<User>("user:1").await.expect(b),
            Some(user(2)),
            "{b}: a write replaces the value"
        );

        // Any serde type; `&str` written, `String` read.
        cache.set("s", &"text", None).await.expect(b);
        assert_eq!(
            cache.get::<String>("s").await.expect(b).as_deref(),
            Some("text"),
            "{b}"
        );
        let map: BTreeMap<String, Vec<Option<i32>>> =
            [("a".to_owned(), vec![Some(1), None, Some(-3)])].into();
        cache.set("map", &map, None).await.expect(b);
        assert_eq!(cache.get("map").await.expect(b), Some(map), "{b}");
        cache.set("unit", &(), None).await.expect(b);
        assert_eq!(cache.get::<()>("unit").await.expect(b), Some(()), "{b}");
        cache.set("none", &None::<u8>, None).await.expect(b);
        assert_eq!(
            cache.get::<Option<u8>>("none").await.expect(b),
            Some(None),
            "{b}: a stored `None` is a hit holding `None`"
        );

        assert!(cache.delete("user:1").await.expect(b), "{b}: it existed");
        assert!(!cache.delete("user:1").await.expect(b), "{b}: already gone");
        assert_eq!(cache.get::<User>("user:1").await.expect(b), None, "{b}");
        assert!(!cache.exists("user:1").await.expect(b), "{b}");
    }
}

#[tokio::test]
async fn delete_many_counts_the_keys_that_existed() {
    for (b, cache) in tests::backends().await {
        for k in ["a", "b", "c"] {
            cache.set(k, &k, None).await.expect(b);
        }
        assert_eq!(
            cache.delete_many(&["a", "missing", "c"]).await.expect(b),
            2,
            "{b}"
        );
        assert_eq!(cache.delete_many(&[]).await.expect(b), 0, "{b}");
        assert!(!cache.exists("a").await.expect(b), "{b}");
        assert!(cache.exists("b").await.expect(b), "{b}: not deleted");
        assert!(!cache.exists("c").await.expect(b), "{b}");
    }
}

/// What other clients leave under a key is deleted too, and counted as held: a string of
/// another writer, an empty string, a hash (`SET … GET` refuses it, the script takes over).
/// A tombstone is not held; deleting it again keeps it a tombstone.
#[tokio::test]
async fn delete_replaces_whatever_another_client_left_under_the_key() {
    let cache = tests::redis_cache();
    let mut raw = Raw::shared().await;
    let full = |k: &str| cache.full_key(k).expect("a valid key");
    raw.set(&full("plain"), b"written by someone else").await;
    raw.set(&full("empty"), b"").await;
    raw.query::<()>(redis::cmd("HSET").arg(full("hash")).arg("f").arg("v"))
        .await;
    for key in ["plain", "empty", "hash"] {
        assert!(
            cache.delete(key).await.expect(key),
            "{key}: it held something"
        );
        let kind: String = raw.query(redis::cmd("TYPE").arg(full(key))).await;
        assert_eq!(kind, "string", "{key}: a tombstone replaced it");
        assert_eq!(cache.get::<String>(key).await.expect(key), None, "{key}");
        assert!(!cache.exists(key).await.expect(key), "{key}");
        assert!(
            !cache.delete(key).await.expect(key),
            "{key}: a tombstone is not held"
        );
        assert!(
            raw.pttl(&full(key)).await > 0,
            "{key}: the tombstone expires"
        );
    }
    assert!(!cache.delete("never-written").await.expect("delete"));
    assert_eq!(
        raw.get(&full("never-written")).await.map(|b| b.is_empty()),
        Some(false)
    );
}

#[tokio::test]
async fn set_with_explicit_and_default_ttl() {
    for (b, cache) in tests::backends().await {
        assert_eq!(cache.default_ttl(), Some(HOUR), "{b}: the default");
        cache
            .set("explicit", &1u8, Duration::from_secs(60))
            .await
            .expect(b);
        cache.set("default", &1u8, None).await.expect(b);
        let explicit = cache.ttl("explicit").await.expect(b);
        assert!(
            expires_within(explicit, Duration::from_secs(55), Duration::from_secs(60)),
            "{b}: {explicit:?}"
        );
        let default = cache.ttl("default").await.expect(b);
        assert!(
            expires_within(default, HOUR - Duration::from_secs(5), HOUR),
            "{b}: {default:?}"
        );
        if cache.backend() == Source::Redis {
            let mut raw = Raw::shared().await;
            let pttl = raw.pttl(&cache.full_key("explicit").expect(b)).await;
            assert!((55_000..=60_000).contains(&pttl), "redis PTTL {pttl}");
            let pttl = raw.pttl(&cache.full_key("default").expect(b)).await;
            assert!((3_595_000..=3_600_000).contains(&pttl), "redis PTTL {pttl}");
        }
    }
}

#[tokio::test]
async fn ttl_reports_missing_persistent_and_expires() {
    for (b, cache) in backends_with(|builder| builder.no_default_ttl()) {
        assert_eq!(cache.default_ttl(), None, "{b}");
        assert_eq!(cache.ttl("k").await.expect(b), KeyTtl::Missing, "{b}");
        cache.set("k", &1u8, None).await.expect(b);
        assert_eq!(
            cache.ttl("k").await.expect(b),
            KeyTtl::Persistent,
            "{b}: no TTL given, none by default"
        );
        cache
            .set("k", &1u8, Duration::from_secs(10))
            .await
            .expect(b);
        let ttl = cache.ttl("k").await.expect(b);
        assert!(
            expires_within(ttl, Duration::from_secs(9), Duration::from_secs(10)),
            "{b}: a write sets a new TTL: {ttl:?}"
        );
        if cache.backend() == Source::Redis {
            let pttl = Raw::shared()
                .await
                .pttl(&cache.full_key("k").expect(b))
                .await;
            assert!((9_000..=10_000).contains(&pttl), "redis PTTL {pttl}");
        }
        cache.set("k", &1u8, None).await.expect(b);
        assert_eq!(
            cache.ttl("k").await.expect(b),
            KeyTtl::Persistent,
            "{b}: a write without TTL clears the old one"
        );
    }
}

/// Assertions that a short-lived value is still there hold only while its TTL has not run
/// out: on a loaded machine it may already have, and then they are skipped, not failed.
fn still_young(written: Instant, ttl: Duration) -> bool {
    written.elapsed() < ttl.mul_f32(0.8)
}

#[tokio::test]
async fn short_ttls_expire() {
    let ttl = Duration::from_millis(150);
    for (b, cache) in tests::backends().await {
        let written = Instant::now();
        cache.set("short", &"soon gone", ttl).await.expect(b);
        let found = cache.get::<String>("short").await.expect(b);
        let remaining = cache.ttl("short").await.expect(b);
        if still_young(written, ttl) {
            assert_eq!(
                found.as_deref(),
                Some("soon gone"),
                "{b}: alive right after the write"
            );
            assert!(
                expires_within(remaining, Duration::ZERO, ttl),
                "{b}: {remaining:?}"
            );
        }
        if cache.backend() == Source::Redis {
            let pttl = Raw::shared()
                .await
                .pttl(&cache.full_key("short").expect(b))
                .await;
            if still_young(written, ttl) {
                assert!(pttl > 0 && pttl <= 150, "redis PTTL {pttl}");
            }
        }
        eventually!(
            format!("{b}: a 150 ms value expires"),
            cache.get::<String>("short").await.expect(b).is_none()
        );
        assert!(
            written.elapsed() >= ttl - Duration::from_millis(5),
            "{b}: gone after {:?}, before its TTL",
            written.elapsed()
        );
        // The envelope's deadline is taken just before the backend's: `exists` may lag
        // `get` by a moment.
        eventually!(
            format!("{b}: the expired key is gone"),
            !cache.exists("short").await.expect(b)
        );
        assert_eq!(cache.ttl("short").await.expect(b), KeyTtl::Missing, "{b}");
        if cache.backend() == Source::Redis {
            let mut raw = Raw::shared().await;
            let full = cache.full_key("short").expect(b);
            assert_eq!(raw.get(&full).await, None, "redis dropped the key");
        }
    }
}

#[tokio::test]
async fn expire_and_touch_set_the_remaining_lifetime() {
    for (b, cache) in tests::backends().await {
        assert!(
            !cache
                .expire("missing", Duration::from_secs(1))
                .await
                .expect(b),
            "{b}: no such key"
        );
        assert!(!cache.touch("missing").await.expect(b), "{b}");

        cache
            .set("k", &"v", Duration::from_secs(10))
            .await
            .expect(b);
        let short = Duration::from_millis(100);
        let shortened = Instant::now();
        assert!(cache.expire("k", short).await.expect(b), "{b}");
        let ttl = cache.ttl("k").await.expect(b);
        if still_young(shortened, short) {
            assert!(
                expires_within(ttl, Duration::ZERO, short),
                "{b}: shortened: {ttl:?}"
            );
        }
        eventually!(
            format!("{b}: a shortened lifetime ends"),
            !cache.exists("k").await.expect(b)
        );
        assert_eq!(cache.get::<String>("k").await.expect(b), None, "{b}");

        // touch: back to the handle's default TTL.
        let scoped = cache.with_default_ttl(Duration::from_secs(30));
        scoped
            .set("t", &"v", Duration::from_secs(2))
            .await
            .expect(b);
        assert!(scoped.touch("t").await.expect(b), "{b}");
        let ttl = scoped.ttl("t").await.expect(b);
        assert!(
            expires_within(ttl, Duration::from_secs(25), Duration::from_secs(30)),
            "{b}: touched to the default: {ttl:?}"
        );
        assert_eq!(
            scoped.get::<String>("t").await.expect(b).as_deref(),
            Some("v"),
            "{b}"
        );
    }
    for (b, cache) in backends_with(|builder| builder.no_default_ttl()) {
        cache.set("k", &1u8, None).await.expect(b);
        assert!(
            !cache.touch("k").await.expect(b),
            "{b}: no default TTL, nothing to touch to"
        );
        assert_eq!(cache.ttl("k").await.expect(b), KeyTtl::Persistent, "{b}");
    }
}

/// `expire`/`touch` move the backend's TTL but not the logical expiry recorded in the
/// envelope, so a value whose lifetime was extended still turns into a miss at its original
/// deadline, while `exists` and `ttl` say it is alive.
#[tokio::test]
async fn extending_a_lifetime_keeps_the_value_readable() {
    let short = Duration::from_millis(100);
    for (b, cache) in tests::backends().await {
        let started = Instant::now();
        cache.set("extended", &"v", short).await.expect(b);
        assert!(
            cache
                .expire("extended", Duration::from_secs(30))
                .await
                .expect(b),
            "{b}"
        );
        let scoped = cache.with_default_ttl(Duration::from_secs(30));
        scoped.set("touched", &"v", short).await.expect(b);
        assert!(scoped.touch("touched").await.expect(b), "{b}");

        // Time passing is what is tested: wait out the original lifetime.
        tokio::time::sleep((short + Duration::from_millis(50)).saturating_sub(started.elapsed()))
            .await;
        for key in ["extended", "touched"] {
            assert!(cache.exists(key).await.expect(b), "{b}: {key} exists");
            let ttl = cache.ttl(key).await.expect(b);
            assert!(
                expires_within(ttl, Duration::from_secs(25), Duration::from_secs(30)),
                "{b}: {key}: {ttl:?}"
            );
            assert_eq!(
                cache.get::<String>(key).await.expect(b).as_deref(),
                Some("v"),
                "{b}: {key}: the key lives 30 s more, its value must still read"
            );
        }
    }
}

#[tokio::test]
async fn incr_counts_and_get_reads_the_counter() {
    for (b, cache) in tests::backends().await {
        assert_eq!(cache.incr("hits", 5).await.expect(b), 5, "{b}: from 0");
        assert_eq!(cache.incr("hits", -2).await.expect(b), 3, "{b}");
        assert_eq!(cache.incr("hits", 1).await.expect(b), 4, "{b}");
        assert_eq!(
            cache.get::<i64>("hits").await.expect(b),
            Some(4),
            "{b}: a counter reads as a number"
        );
        assert_eq!(cache.get::<u64>("hits").await.expect(b), Some(4), "{b}");
        assert!(
            matches!(
                cache.lookup::<i64>("hits").await.expect(b),
                Lookup::Hit { value: 4, .. }
            ),
            "{b}"
        );
        assert_eq!(
            cache.ttl("hits").await.expect(b),
            KeyTtl::Persistent,
            "{b}: INCRBY creates counters without TTL"
        );

        // The TTL is kept across increments.
        assert!(
            cache
                .expire("hits", Duration::from_secs(60))
                .await
                .expect(b),
            "{b}"
        );
        assert_eq!(cache.incr("hits", 1).await.expect(b), 5, "{b}");
        let ttl = cache.ttl("hits").await.expect(b);
        assert!(
            expires_within(ttl, Duration::from_secs(55), Duration::from_secs(60)),
            "{b}: {ttl:?}"
        );

        // A key holding a cached value is not a counter.
        cache.set("obj", &user(1), None).await.expect(b);
        let err = cache.incr("obj", 1).await.expect_err(b);
        assert!(
            matches!(err, Error::WrongKind { .. }),
            "{b}: expected WrongKind, got {err:?}"
        );
        assert!(!err.is_unavailable(), "{b}");
        assert_eq!(
            cache.get::<User>("obj").await.expect(b),
            Some(user(1)),
            "{b}: the value is untouched"
        );
        cache.set("number", &7u64, None).await.expect(b);
        assert!(
            matches!(cache.incr("number", 1).await, Err(Error::WrongKind { .. })),
            "{b}: a cached number is a cached value, not a counter"
        );
        cache.incr("big", i64::MAX).await.expect(b);
        assert!(
            matches!(cache.incr("big", 1).await, Err(Error::WrongKind { .. })),
            "{b}: a counter that would overflow"
        );
        assert_eq!(cache.incr("big", -1).await.expect(b), i64::MAX - 1, "{b}");
    }
}

/// Only what the key holds makes `incr` a `WrongKind`; a server that refuses the command (out
/// of memory here) is a command error, so callers do not mistake it for bad data.
#[tokio::test]
async fn incr_tells_a_wrong_key_from_a_failing_server_on_redis() {
    let server = tests::RedisServer::start();
    let cache = tests::redis_cache_at(&server.url());
    let mut raw = Raw::on(&server.client()).await;
    let list = cache.full_key("list").expect("key");
    raw.query::<i64>(redis::cmd("RPUSH").arg(&list).arg("x"))
        .await;
    let err = cache
        .incr("list", 1)
        .await
        .expect_err("a list is no counter");
    assert!(matches!(err, Error::WrongKind { .. }), "{err:?}");

    raw.query::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1"))
        .await;
    let err = cache.incr("fresh", 1).await.expect_err("out of memory");
    assert!(matches!(err, Error::Command { .. }), "{err:?}");
    assert!(err.to_string().contains("OOM"), "{err}");
    raw.query::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0"))
        .await;
    assert_eq!(cache.incr("fresh", 1).await.expect("memory again"), 1);
}

#[tokio::test]
async fn get_or_set_computes_once() {
    for (b, cache) in tests::backends().await {
        let calls = AtomicUsize::new(0);
        let compute = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            user(9)
        };
        let first: User = cache.get_or_set("u9", None, compute).await;
        let second: User = cache.get_or_set("u9", None, compute).await;
        assert_eq!((first, second), (user(9), user(9)), "{b}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{b}: the second call is a hit"
        );
        assert_eq!(
            cache.get::<User>("u9").await.expect(b),
            Some(user(9)),
            "{b}: stored"
        );

        // With an explicit TTL.
        let v: u64 = cache
            .get_or_set("ttl", Duration::from_secs(60), || async { 1 })
            .await;
        assert_eq!(v, 1, "{b}");
        let ttl = cache.ttl("ttl").await.expect(b);
        assert!(
            expires_within(ttl, Duration::from_secs(55), Duration::from_secs(60)),
            "{b}: {ttl:?}"
        );

        // An unusable key computes without the cache, without panicking.
        let v: u64 = cache.get_or_set("bad key", None, || async { 3 }).await;
        assert_eq!(v, 3, "{b}");
    }
}

#[tokio::test]
async fn try_get_or_set_stores_ok_and_not_err() {
    for (b, cache) in tests::backends().await {
        let calls = AtomicUsize::new(0);
        let failing = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<u64, String>("db down".into())
        };
        assert_eq!(
            cache.try_get_or_set("k", None, failing).await,
            Err("db down".to_owned()),
            "{b}"
        );
        assert!(
            !cache.exists("k").await.expect(b),
            "{b}: an error is not stored"
        );
        assert!(cache.try_get_or_set("k", None, failing).await.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "{b}: recomputed after an error"
        );

        let ok = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<u64, String>(11)
        };
        assert_eq!(cache.try_get_or_set("k", None, ok).await, Ok(11), "{b}");
        assert_eq!(cache.try_get_or_set("k", None, ok).await, Ok(11), "{b}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "{b}: Ok stored, then a hit"
        );
        assert_eq!(cache.get::<u64>("k").await.expect(b), Some(11), "{b}");
    }
}

#[tokio::test]
async fn mget_and_mset_keep_order_and_report_misses() {
    for (b, cache) in tests::backends().await {
        cache
            .mset(&[("a", 1u32), ("b", 2), ("c", 3)], None)
            .await
            .expect(b);
        assert_eq!(
            cache
                .mget::<u32>(&["c", "missing", "a", "b", "a"])
                .await
                .expect(b),
            vec![Some(3), None, Some(1), Some(2), Some(1)],
            "{b}"
        );
        assert_eq!(
            cache.mget::<u32>(&[]).await.expect(b),
            Vec::<Option<u32>>::new(),
            "{b}"
        );
        cache.mset::<u32>(&[], None).await.expect(b);

        // TTLs: explicit, and the default.
        cache
            .mset(&[("x", "1"), ("y", "2")], Duration::from_secs(20))
            .await
            .expect(b);
        for k in ["x", "y"] {
            let ttl = cache.ttl(k).await.expect(b);
            assert!(
                expires_within(ttl, Duration::from_secs(15), Duration::from_secs(20)),
                "{b}: {k}: {ttl:?}"
            );
        }
        let ttl = cache.ttl("a").await.expect(b);
        assert!(
            expires_within(ttl, HOUR - Duration::from_secs(5), HOUR),
            "{b}: default TTL: {ttl:?}"
        );

        // A value of another type reads as a miss in its slot.
        cache.set("obj", &user(1), None).await.expect(b);
        assert_eq!(
            cache.mget::<u32>(&["a", "obj", "b"]).await.expect(b),
            vec![Some(1), None, Some(2)],
            "{b}"
        );
        // Invalid keys are refused before anything is sent.
        assert!(
            matches!(
                cache.mget::<u32>(&["a", "bad key"]).await,
                Err(Error::InvalidKey { .. })
            ),
            "{b}"
        );
        assert!(
            matches!(
                cache.mset(&[("ok", 1u8), ("", 2)], None).await,
                Err(Error::InvalidKey { .. })
            ),
            "{b}"
        );
        assert!(!cache.exists("ok").await.expect(b), "{b}: nothing written");
    }
}

/// `mget` is one `MGET` (two with tagged entries), `mset` one pipeline of `SET`s, counted by
/// the server itself (an owned server, so no other test's commands are counted). Once the
/// scope's generation is known (tracked, engine/clear.rs), nothing else is read.
#[tokio::test]
async fn mget_and_mset_are_one_round_trip_on_redis() {
    let server = tests::RedisServer::start();
    let cache = tests::redis_cache_at(&server.url());
    let mut raw = Raw::on(&server.client()).await;
    cache.sync_local_cache().await; // the generations' tracking is on
    cache.set("warm", &0u8, None).await.expect("warm-up write");

    raw.reset_command_stats().await;
    let items: Vec<(String, u32)> = (0..50).map(|i| (format!("k{i}"), i)).collect();
    let refs: Vec<(&str, u32)> = items.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    cache.mset(&refs, None).await.expect("mset");
    assert_eq!(raw.command_calls().await, calls(&[("set", 50)]));

    raw.reset_command_stats().await;
    let keys: Vec<&str> = refs.iter().map(|(k, _)| *k).collect();
    let values = cache.mget::<u32>(&keys).await.expect("mget");
    assert_eq!(values, (0..50).map(Some).collect::<Vec<_>>());
    assert_eq!(raw.command_calls().await, calls(&[("mget", 1)]));

    // Tagged entries: their tags' versions are read together, in one more MGET, however many
    // entries and tags there are.
    for (i, (k, v)) in refs.iter().enumerate() {
        let tags = [format!("org:{}", i % 5), format!("team:{}", i % 7)];
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        cache
            .set_tagged(k, v, None, &tags)
            .await
            .expect("set_tagged");
    }
    cache.invalidate_tag("org:3").await.expect("invalidate");
    raw.reset_command_stats().await;
    let values = cache.mget::<u32>(&keys).await.expect("mget");
    let expected: Vec<Option<u32>> = (0..50).map(|i| (i % 5 != 3).then_some(i)).collect();
    assert_eq!(values, expected, "entries tagged org:3 are misses");
    assert_eq!(raw.command_calls().await, calls(&[("mget", 2)]));
}

#[tokio::test]
async fn lookup_says_where_and_how_old() {
    for (b, cache) in tests::backends().await {
        assert_eq!(
            cache.lookup::<User>("u").await.expect(b),
            Lookup::Miss,
            "{b}"
        );
        let before = Instant::now();
        cache.set("u", &user(3), None).await.expect(b);
        let found = cache.lookup::<User>("u").await.expect(b);
        let expected_source = if b == "redis" {
            Source::Redis
        } else {
            Source::Memory
        };
        assert_eq!(cache.backend(), expected_source, "{b}");
        match found {
            Lookup::Hit { value, source, age } => {
                assert_eq!(value, user(3), "{b}");
                assert_eq!(source, expected_source, "{b}");
                // Wall-clock milliseconds against a monotonic clock: allow rounding.
                assert!(
                    age <= before.elapsed() + Duration::from_millis(50),
                    "{b}: age {age:?} older than the value"
                );
            }
            Lookup::Miss => panic!("{b}: expected a hit"),
        }
        assert!(cache.lookup::<User>("u").await.expect(b).is_hit(), "{b}");
        assert_eq!(
            cache.lookup::<u64>("u").await.expect(b),
            Lookup::Miss,
            "{b}: another type is a miss"
        );
        assert_eq!(
            cache
                .lookup::<User>("u")
                .await
                .expect(b)
                .into_value()
                .map(|u| u.id),
            Some(3),
            "{b}"
        );
    }
}

#[tokio::test]
async fn tags_invalidate_their_entries_only() {
    for (b, cache) in tests::backends().await {
        cache
            .set_tagged("u1", &user(1), None, &["org:1"])
            .await
            .expect(b);
        cache
            .set_tagged("u2", &user(2), None, &["org:2"])
            .await
            .expect(b);
        cache
            .set_tagged("u3", &user(3), None, &["org:1", "team:x"])
            .await
            .expect(b);
        cache
            .set_tagged("u4", &user(4), None, &["team:x"])
            .await
            .expect(b);
        cache.set("plain", &user(5), None).await.expect(b);

        cache.invalidate_tag("org:1").await.expect(b);
        let got = cache
            .mget::<User>(&["u1", "u2", "u3", "u4", "plain"])
            .await
            .expect(b);
        assert_eq!(
            got,
            vec![None, Some(user(2)), None, Some(user(4)), Some(user(5))],
            "{b}: only entries tagged org:1 are gone"
        );
        assert_eq!(cache.get::<User>("u1").await.expect(b), None, "{b}");

        // A new write after the invalidation is valid again.
        cache
            .set_tagged("u1", &user(1), None, &["org:1"])
            .await
            .expect(b);
        assert_eq!(
            cache.get::<User>("u1").await.expect(b),
            Some(user(1)),
            "{b}"
        );

        cache.invalidate_tags(&["org:2", "team:x"]).await.expect(b);
        for (k, alive) in [("u1", true), ("u2", false), ("u4", false), ("plain", true)] {
            assert_eq!(
                cache.get::<User>(k).await.expect(b).is_some(),
                alive,
                "{b}: {k}"
            );
        }
        // Invalidating a tag nobody used is fine.
        cache.invalidate_tag("never-used").await.expect(b);
        cache.invalidate_tags(&[]).await.expect(b);
        assert!(
            matches!(
                cache.invalidate_tag("bad tag").await,
                Err(Error::InvalidKey { .. })
            ),
            "{b}"
        );
        assert!(
            matches!(
                cache.set_tagged("k", &1u8, None, &["~x"]).await,
                Err(Error::InvalidKey { .. })
            ),
            "{b}"
        );

        // Tags are scoped: a tenant's invalidation does not reach the root or other tenants.
        let t1 = cache.tenant("t1");
        let t2 = cache.tenant("t2");
        for c in [&cache, &t1, &t2] {
            c.set_tagged("scoped", &1u8, None, &["org:9"])
                .await
                .expect(b);
        }
        t1.invalidate_tag("org:9").await.expect(b);
        assert_eq!(t1.get::<u8>("scoped").await.expect(b), None, "{b}");
        assert_eq!(t2.get::<u8>("scoped").await.expect(b), Some(1), "{b}");
        assert_eq!(cache.get::<u8>("scoped").await.expect(b), Some(1), "{b}");
    }
}

/// An invalidation is one `INCR` per tag, whatever the number of entries: no scan, no
/// delete, counted by the server (an owned one).
#[tokio::test]
async fn tag_invalidation_is_one_counter_bump_on_redis() {
    let server = tests::RedisServer::start();
    let cache = tests::redis_cache_at(&server.url());
    let mut raw = Raw::on(&server.client()).await;
    for i in 0..200 {
        cache
            .set_tagged(&format!("e{i}"), &i, None, &["big"])
            .await
            .expect("tagged write");
    }
    cache
        .set_tagged("small", &0, None, &["small"])
        .await
        .expect("tagged write");
    let keys_before = raw.keys_under(cache.key_prefix()).await.len();

    for tag in ["big", "small"] {
        raw.reset_command_stats().await;
        cache.invalidate_tag(tag).await.expect("invalidate");
        assert_eq!(
            raw.command_calls().await,
            calls(&[("incr", 1)]),
            "invalidating `{tag}`"
        );
    }
    raw.reset_command_stats().await;
    cache
        .invalidate_tags(&["big", "small", "other"])
        .await
        .expect("invalidate");
    assert_eq!(raw.command_calls().await, calls(&[("incr", 3)]));
    assert_eq!(
        raw.keys_under(cache.key_prefix()).await.len(),
        keys_before + 1,
        "no entry deleted; one new version counter (`other`)"
    );
    assert_eq!(cache.get::<i32>("e7").await.expect("get"), None);
    assert_eq!(cache.get::<i32>("small").await.expect("get"), None);
}

#[tokio::test]
async fn stats_count_hits_misses_writes_and_decode_errors() {
    for (b, cache) in tests::backends().await {
        let s = cache.stats();
        assert_eq!(
            (s.hits, s.misses, s.writes, s.decode_errors, s.computes),
            (0, 0, 0, 0, 0),
            "{b}: a fresh cache"
        );
        assert_eq!(s.hit_ratio(), 0.0, "{b}");

        let _ = cache.get::<u8>("nothing").await.expect(b);
        cache.set("n", &1u8, None).await.expect(b);
        let _ = cache.get::<u8>("n").await.expect(b);
        let _ = cache.get::<u8>("n").await.expect(b);
        let _ = cache.get::<User>("n").await.expect(b); // wrong type
        cache.mset(&[("m1", 1u8), ("m2", 2)], None).await.expect(b);
        let _ = cache.mget::<u8>(&["m1", "m2", "m3"]).await.expect(b);
        let _: u8 = cache.get_or_set("g", None, || async { 1 }).await;
        let _: u8 = cache.get_or_set("g", None, || async { 1 }).await;

        let s = cache.stats();
        assert_eq!(s.hits, 2 + 2 + 1, "{b}: {s:?}");
        assert_eq!(s.misses, 1 + 1 + 1 + 1, "{b}: {s:?}");
        assert_eq!(s.decode_errors, 1, "{b}: {s:?}");
        assert_eq!(s.writes, 1 + 2 + 1, "{b}: {s:?}");
        assert_eq!(s.computes, 1, "{b}: {s:?}");
        assert_eq!(s.backend_errors, 0, "{b}: {s:?}");
        assert!((s.hit_ratio() - 5.0 / 9.0).abs() < 1e-9, "{b}: {s:?}");

        // Scoped handles share the root's counters.
        let _ = cache.tenant("t").get::<u8>("n").await.expect(b);
        let _ = cache.namespace("x").get::<u8>("n").await.expect(b);
        assert_eq!(cache.stats().misses, s.misses + 2, "{b}");
    }
}
