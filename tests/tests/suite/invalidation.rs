//! Invalidation by key against computations already running (ARCHITECTURE.md §4): the
//! invalidation wins, so a value computed from data older than it is returned to its own
//! caller but never stored, and the next call computes again. On both backends.
//!
//! Each computation is held at a gate: it reads the "database" when it starts, says so, and
//! finishes only when the test lets it, so the invalidation lands while it runs by
//! construction, not by timing.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use cache_core::{cached, Cache, KeyTtl};
use tokio::sync::Notify;

/// A computation held between its read of the data and its result.
#[derive(Default)]
struct Gate {
    started: Notify,
    release: Notify,
}

/// A row read by a held computation: the version it saw when it started.
async fn read_row(db: &AtomicU64, calls: &AtomicUsize, gate: Option<&Gate>) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    let seen = db.load(Ordering::SeqCst);
    if let Some(gate) = gate {
        gate.started.notify_one();
        gate.release.notified().await;
    }
    seen
}

impl Gate {
    /// Runs `call` (whose computation waits at this gate) and, once the computation has
    /// started, `meanwhile`; then lets the computation finish. Returns what `call` returned.
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

#[cached(cache = cache, skip = [cache, db, calls, gate], key = "row:<id>", ttl = "1h")]
async fn row(
    cache: &Cache,
    db: &AtomicU64,
    calls: &AtomicUsize,
    gate: Option<&Gate>,
    id: u64,
) -> u64 {
    let _ = id;
    read_row(db, calls, gate).await
}

#[tokio::test]
async fn an_invalidate_companion_landing_during_a_computation_wins() {
    for (backend, cache) in tests::backends().await {
        let (db, calls, gate) = (AtomicU64::new(1), AtomicUsize::new(0), Gate::default());
        let held = gate
            .hold(row(&cache, &db, &calls, Some(&gate), 7), async {
                db.store(2, Ordering::SeqCst); // the update...
                row_invalidate(&cache, &db, &calls, None, 7) // ...and its invalidation
                    .await
                    .expect("invalidate");
            })
            .await;
        assert_eq!(held, 1, "{backend}: the held call returns what it computed");
        assert_eq!(
            cache.stats().superseded,
            1,
            "{backend}: {:?}",
            cache.stats()
        );
        assert_eq!(
            row(&cache, &db, &calls, None, 7).await,
            2,
            "{backend}: the value computed before the invalidation is never served after it"
        );
        assert_eq!(row(&cache, &db, &calls, None, 7).await, 2, "{backend}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "{backend}: the value computed after the invalidation is stored and served"
        );
    }
}

#[cached(cache = cache, skip = [cache, db, calls, gate], key = "member:<id>", tags = ["org:<org>"])]
async fn member(
    cache: &Cache,
    db: &AtomicU64,
    calls: &AtomicUsize,
    gate: Option<&Gate>,
    org: u64,
    id: u64,
) -> u64 {
    let _ = (org, id);
    read_row(db, calls, gate).await
}

/// A tagged entry reads its value and its tags' versions in one command; an invalidation by
/// key (here while the tag's version is also being created) still wins.
#[tokio::test]
async fn an_invalidation_by_key_wins_over_a_tagged_computation() {
    for (backend, cache) in tests::backends().await {
        let (db, calls, gate) = (AtomicU64::new(1), AtomicUsize::new(0), Gate::default());
        let held = gate
            .hold(member(&cache, &db, &calls, Some(&gate), 3, 7), async {
                db.store(2, Ordering::SeqCst);
                member_invalidate(&cache, &db, &calls, None, 3, 7)
                    .await
                    .expect("invalidate");
            })
            .await;
        assert_eq!(held, 1, "{backend}");
        assert_eq!(
            member(&cache, &db, &calls, None, 3, 7).await,
            2,
            "{backend}"
        );
        assert_eq!(
            member(&cache, &db, &calls, None, 3, 7).await,
            2,
            "{backend}"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "{backend}: stored once, then served"
        );
        // And by tag, as before: the versions were read before computing.
        let held = gate
            .hold(member(&cache, &db, &calls, Some(&gate), 3, 8), async {
                db.store(3, Ordering::SeqCst);
                cache.invalidate_tag("org:3").await.expect("invalidate tag");
            })
            .await;
        assert_eq!(held, 2, "{backend}");
        assert_eq!(
            member(&cache, &db, &calls, None, 3, 8).await,
            3,
            "{backend}"
        );
    }
}

#[tokio::test]
async fn a_delete_during_get_or_set_wins_whatever_the_read_found() {
    for (backend, cache) in tests::backends().await {
        // What the read finds before the computation: nothing; an entry its tag invalidated;
        // a value that does not decode; the tombstone of an earlier delete.
        for found in ["nothing", "stale by tag", "undecodable", "deleted"] {
            let key = format!("k:{}", found.replace(' ', "-"));
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
                    assert!(cache.delete(&key).await.expect("delete"), "{backend}");
                }
                _ => {}
            }
            let (db, calls, gate) = (AtomicU64::new(1), AtomicUsize::new(0), Gate::default());
            let compute = || read_row(&db, &calls, Some(&gate));
            let held = gate
                .hold(cache.get_or_set(&key, None, compute), async {
                    db.store(2, Ordering::SeqCst);
                    cache.delete(&key).await.expect("delete");
                })
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
                "{backend}, {found}: a computation nothing interrupted is stored"
            );
        }
        assert_eq!(cache.stats().superseded, 4, "{backend}");
    }
}

#[tokio::test]
async fn a_second_delete_defeats_a_computation_that_started_after_the_first() {
    for (backend, cache) in tests::backends().await {
        cache.set("k", &0u64, None).await.expect("set");
        cache.delete("k").await.expect("first delete");
        let (db, calls, gate) = (AtomicU64::new(1), AtomicUsize::new(0), Gate::default());
        let compute = || read_row(&db, &calls, Some(&gate));
        let held = gate
            .hold(cache.get_or_set("k", None, compute), async {
                db.store(2, Ordering::SeqCst);
                cache.delete("k").await.expect("second delete");
            })
            .await;
        assert_eq!(held, 1, "{backend}");
        assert_eq!(
            cache.get::<u64>("k").await.expect("get"),
            None,
            "{backend}: each delete leaves its own tombstone, so the first one's is not what \
             the computation read"
        );
    }
}

#[tokio::test]
async fn a_write_during_a_computation_is_not_overwritten() {
    for (backend, cache) in tests::backends().await {
        let (db, calls, gate) = (AtomicU64::new(1), AtomicUsize::new(0), Gate::default());
        let compute = || read_row(&db, &calls, Some(&gate));
        let held = gate
            .hold(cache.get_or_set("k", None, compute), async {
                db.store(2, Ordering::SeqCst);
                cache.set("k", &2u64, None).await.expect("write-through");
            })
            .await;
        assert_eq!(held, 1, "{backend}");
        assert_eq!(
            cache.get::<u64>("k").await.expect("get"),
            Some(2),
            "{backend}: the explicit write stays"
        );
        assert_eq!(cache.stats().superseded, 1, "{backend}");
    }
}

#[tokio::test]
async fn a_deleted_key_reads_as_absent_to_every_operation() {
    for (backend, cache) in tests::backends().await {
        cache.set("k", &"v", None).await.expect("set");
        assert!(cache.delete("k").await.expect("delete"), "{backend}");
        let before = cache.stats();
        assert_eq!(cache.get::<String>("k").await.expect("get"), None);
        assert!(!cache.lookup::<String>("k").await.expect("lookup").is_hit());
        assert_eq!(
            cache.stats().decode_errors,
            before.decode_errors,
            "{backend}: a tombstone is a miss, not an undecodable value"
        );
        assert_eq!(
            cache.mget::<String>(&["k"]).await.expect("mget"),
            vec![None]
        );
        assert!(!cache.exists("k").await.expect("exists"), "{backend}");
        assert_eq!(
            cache.ttl("k").await.expect("ttl"),
            KeyTtl::Missing,
            "{backend}"
        );
        assert!(
            !cache
                .expire("k", Duration::from_secs(5))
                .await
                .expect("expire"),
            "{backend}: nothing to expire"
        );
        assert!(!cache.touch("k").await.expect("touch"), "{backend}");
        assert!(
            !cache.delete("k").await.expect("delete"),
            "{backend}: already gone"
        );
        assert_eq!(
            cache.delete_many(&["k", "k"]).await.expect("delete_many"),
            0
        );

        // A counter deleted starts again from zero, without a TTL.
        assert_eq!(cache.incr("n", 5).await.expect("incr"), 5);
        assert!(cache.delete("n").await.expect("delete"), "{backend}");
        assert_eq!(cache.incr("n", 1).await.expect("incr"), 1, "{backend}");
        assert_eq!(cache.ttl("n").await.expect("ttl"), KeyTtl::Persistent);

        // A write after the delete is a plain write.
        cache.set("k", &"again", None).await.expect("set");
        assert_eq!(
            cache.get::<String>("k").await.expect("get").as_deref(),
            Some("again")
        );
        assert!(cache.exists("k").await.expect("exists"), "{backend}");
    }
}

#[tokio::test]
async fn a_tombstone_lives_for_the_invalidation_hold_only() {
    let hold = Duration::from_secs(7);
    let cache = Cache::builder()
        .url(tests::redis_url())
        .namespace(tests::unique_namespace().as_str())
        .invalidation_hold(hold)
        .build()
        .expect("builds");
    cache.delete("never-written").await.expect("delete");
    let mut con = tests::shared_server()
        .client()
        .get_connection()
        .expect("connects");
    let full = cache.full_key("never-written").expect("key");
    let left: i64 = redis::cmd("PTTL").arg(&full).query(&mut con).expect("PTTL");
    assert!(
        left > 0 && left <= hold.as_millis() as i64,
        "the tombstone expires within the hold: {left} ms"
    );
    // Something another client put under a key: a delete still counts and replaces it.
    let _: i64 = redis::cmd("DEL").arg(&full).query(&mut con).expect("DEL");
    let _: i64 = redis::cmd("RPUSH")
        .arg(&full)
        .arg("x")
        .query(&mut con)
        .expect("RPUSH");
    assert!(cache.exists("never-written").await.expect("exists"));
    assert!(cache.delete("never-written").await.expect("delete"));
    assert_eq!(
        cache.get::<String>("never-written").await.expect("get"),
        None
    );
}

/// The README's least-privilege ACL: an ACL user limited to the commands it lists and to the
/// namespace's keys can do everything, including the scripts' work and reloading them after
/// the server forgot them; a wrong password is an error, not a panic.
#[tokio::test]
async fn an_acl_user_with_the_documented_commands_can_do_everything() {
    let namespace = tests::unique_namespace();
    let (user, password) = (format!("app-{namespace}"), "s3cret-pw");
    let mut con = tests::shared_server()
        .client()
        .get_connection()
        .expect("connects");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("reset")
        .arg("on")
        .arg(format!(">{password}"))
        .arg(format!("~{namespace}:*"))
        .arg("-@all")
        .arg(README_ACL_COMMANDS.split(' ').collect::<Vec<_>>())
        .query(&mut con)
        .expect("ACL SETUSER");
    let as_user = |password: &str| {
        Cache::builder()
            .url(tests::redis_url())
            .username(user.as_str())
            .password(password)
            .namespace(namespace.as_str())
            .build()
            .expect("builds")
    };
    let cache = as_user(password);
    // The user is as restricted as it says: other commands and other keys are refused.
    let url = tests::redis_url().replace("redis://", &format!("redis://{user}:{password}@"));
    let mut restricted = redis::Client::open(url)
        .expect("url")
        .get_connection()
        .expect("the user logs in");
    let refused = |r: redis::RedisResult<i64>| r.expect_err("refused").code() == Some("NOPERM");
    assert!(refused(
        redis::cmd("UNLINK")
            .arg(format!("{namespace}:k"))
            .query(&mut restricted)
    ));
    assert!(refused(
        redis::cmd("EXISTS").arg("elsewhere").query(&mut restricted)
    ));

    cache.set("k", &1u64, None).await.expect("set");
    assert_eq!(cache.get::<u64>("k").await.expect("get"), Some(1));
    cache
        .mset(&[("a", 1u64), ("b", 2)], None)
        .await
        .expect("mset");
    assert_eq!(
        cache.mget::<u64>(&["a", "b"]).await.expect("mget"),
        vec![Some(1), Some(2)]
    );
    assert!(cache.exists("k").await.expect("exists"));
    assert!(cache
        .expire("k", Duration::from_secs(60))
        .await
        .expect("expire"));
    assert!(matches!(
        cache.ttl("k").await.expect("ttl"),
        KeyTtl::Expires(_)
    ));
    assert_eq!(cache.incr("n", 2).await.expect("incr"), 2);
    cache
        .set_tagged("t", &1u64, None, &["org"])
        .await
        .expect("set_tagged");
    cache.invalidate_tag("org").await.expect("invalidate_tag");
    assert_eq!(cache.get::<u64>("t").await.expect("get"), None);
    // The miss after a tag invalidation writes with the compare-and-set script.
    let v: u64 = cache.get_or_set("t", None, || async { 5 }).await;
    assert_eq!((v, cache.get::<u64>("t").await.expect("get")), (5, Some(5)));
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut con)
        .expect("SCRIPT FLUSH");
    assert!(cache
        .delete("k")
        .await
        .expect("delete, after the scripts were flushed"));
    assert_eq!(
        cache.delete_many(&["a", "b"]).await.expect("delete_many"),
        2
    );
    assert_eq!(cache.incr("k", 1).await.expect("incr over a tombstone"), 1);
    assert_eq!(cache.stats().backend_errors, 0, "{:?}", cache.stats());

    let wrong = as_user("not-the-password");
    let err = wrong.get::<u64>("k").await.expect_err("refused");
    assert!(err.is_unavailable(), "{err:?}");
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query(&mut con)
        .map(|_: i64| ())
        .expect("ACL DELUSER");
}

/// What the README's configuration section says an ACL user needs, besides its keys.
const README_ACL_COMMANDS: &str = "+get +set +mget +incr +incrby +del +exists +getrange +strlen +pttl +pexpire +evalsha +script|load +ping";
