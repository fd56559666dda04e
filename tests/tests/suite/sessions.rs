//! Sessions (issue #14): ids, sliding and absolute expiry, the per-user index, rotation,
//! concurrent modifications, tenants, the fail-closed policy, and the tower-sessions store;
//! on both backends.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cache_core::{Cache, SessionId, Source};

/// Raw `redis::Cmd` on the test topology, bypassing the cache.
async fn raw<T: redis::FromRedisValue>(cmd: &redis::Cmd) -> T {
    let mut con = tests::raw_connection().await;
    cmd.query_async(&mut con).await.expect("raw command")
}

/// Polls `done` every 20 ms until it holds, for at most `bound`; true if it held.
async fn eventually<F, Fut>(bound: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if done().await {
            return true;
        }
        if start.elapsed() > bound {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_unique_over_100k_creations_and_carry_128_random_bits() {
    for (backend, cache) in tests::backends().await {
        let sessions = cache.sessions();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::with_capacity(100_000 / 32 + 1);
                    for _ in 0..100_000 / 32 + 1 {
                        ids.push(sessions.create(None, &()).await.expect("create"));
                    }
                    ids
                })
            })
            .collect();
        let mut ids = Vec::with_capacity(100_032);
        for t in tasks {
            ids.extend(t.await.expect("task"));
        }
        assert!(ids.len() >= 100_000);
        let unique: HashSet<&SessionId> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "{backend}: an id was handed out twice"
        );
        // Text: 22 characters of URL-safe base64, parsing back to the same id.
        for id in &ids[..1000] {
            let text = id.to_string();
            assert_eq!(text.len(), 22, "{backend}: {text}");
            assert!(
                text.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
                "{backend}: {text} is not URL-safe"
            );
            assert_eq!(text.parse::<SessionId>().expect("parses"), *id);
        }
        // Entropy: each of the 128 bits is set in about half of the ids (at 100k ids, one
        // standard deviation is 0.16%, so 47-53% is a bound no fair generator misses).
        let mut ones = [0u32; 128];
        for id in &ids {
            for (i, byte) in id.as_bytes().iter().enumerate() {
                for bit in 0..8 {
                    ones[i * 8 + bit] += u32::from((byte >> bit) & 1);
                }
            }
        }
        for (bit, &n) in ones.iter().enumerate() {
            let share = f64::from(n) / ids.len() as f64;
            assert!(
                (0.47..0.53).contains(&share),
                "{backend}: bit {bit} is set in {share:.3} of the ids"
            );
        }
    }
}

#[tokio::test]
async fn reads_slide_the_idle_timeout_and_an_idle_session_ends() {
    for (backend, cache) in tests::backends().await {
        let sessions = cache.sessions().idle_timeout(Duration::from_secs(10));
        let id = sessions.create(None, &"data").await.expect("create");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = sessions.ttl(&id).await.expect("ttl").expect("alive");
        assert!(
            before <= Duration::from_secs(8),
            "{backend}: {before:?} left after 2 s of 10"
        );
        assert!(sessions.exists(&id).await.expect("exists"));
        assert!(
            sessions.ttl(&id).await.expect("ttl").expect("alive") <= before,
            "{backend}: exists must not slide"
        );
        assert_eq!(
            sessions.get::<String>(&id).await.expect("get").as_deref(),
            Some("data")
        );
        let after = sessions.ttl(&id).await.expect("ttl").expect("alive");
        assert!(
            after > before,
            "{backend}: get slid nothing ({before:?} -> {after:?})"
        );
        assert!(after <= Duration::from_secs(10), "{backend}: {after:?}");
        if cache.backend() == Source::Redis {
            // The record was not rewritten: still version 1.
            let key = format!("{}~session:{id}", cache.key_prefix());
            let version: String = raw(redis::cmd("HGET").arg(&key).arg("v")).await;
            assert_eq!(version, "1", "{backend}");
        }

        // Without reads, it ends after the idle timeout.
        let short = cache.sessions().idle_timeout(Duration::from_millis(300));
        let id = short.create(None, &"data").await.expect("create");
        assert!(short.touch(&id).await.expect("touch"));
        assert!(
            eventually(Duration::from_secs(10), || async {
                !short.exists(&id).await.expect("exists")
            })
            .await,
            "{backend}: an idle session must end"
        );
        assert_eq!(short.get::<String>(&id).await.expect("get"), None);
        assert!(!short.touch(&id).await.expect("touch"));
        assert!(!short.update(&id, &"back?").await.expect("update"));
        assert!(!short.exists(&id).await.expect("exists"), "{backend}");
    }
}

#[tokio::test]
async fn the_maximum_lifetime_is_not_extended_by_activity() {
    for (backend, cache) in tests::backends().await {
        let sessions = cache
            .sessions()
            .idle_timeout(Duration::from_secs(60))
            .max_lifetime(Duration::from_millis(1500))
            .slide_threshold(Duration::ZERO);
        let start = Instant::now();
        let id = sessions.create(Some("ann"), &1u32).await.expect("create");
        assert!(
            sessions.ttl(&id).await.expect("ttl").expect("alive") <= Duration::from_millis(1500),
            "{backend}: the TTL is min(idle, deadline - now)"
        );
        // Kept busy: every read and touch slides, but not past the deadline.
        let mut reads = 0;
        let ended = eventually(Duration::from_secs(15), || {
            reads += 1;
            let sessions = sessions.clone();
            async move {
                let alive = sessions.get::<u32>(&id).await.expect("get").is_some();
                let touched = sessions.touch(&id).await.expect("touch");
                if alive {
                    let left = sessions.ttl(&id).await.expect("ttl");
                    assert!(left.is_none_or(|l| l <= Duration::from_millis(1500)));
                }
                !alive && !touched
            }
        })
        .await;
        assert!(ended, "{backend}: the session outlived its lifetime");
        assert!(
            start.elapsed() >= Duration::from_millis(1400),
            "{backend}: it ended too early, after {:?}",
            start.elapsed()
        );
        assert!(reads > 1);
        assert!(sessions
            .list_for_user("ann")
            .await
            .expect("list")
            .is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_for_user_ends_1000_sessions_and_nobody_elses() {
    for (backend, cache) in tests::backends().await {
        let sessions = cache.sessions();
        let mut mine = Vec::new();
        for i in 0..1000u32 {
            mine.push(sessions.create(Some("user-7"), &i).await.expect("create"));
        }
        let other = sessions
            .create(Some("user-8"), &0u32)
            .await
            .expect("create");
        let anonymous = sessions.create(None, &0u32).await.expect("create");

        let listed: HashSet<SessionId> = sessions
            .list_for_user("user-7")
            .await
            .expect("list")
            .into_iter()
            .collect();
        assert_eq!(listed, mine.iter().copied().collect(), "{backend}");

        assert_eq!(
            sessions.delete_for_user("user-7").await.expect("delete"),
            1000,
            "{backend}"
        );
        for id in &mine {
            assert!(!sessions.exists(id).await.expect("exists"), "{backend}");
        }
        assert!(sessions
            .list_for_user("user-7")
            .await
            .expect("list")
            .is_empty());
        assert_eq!(sessions.delete_for_user("user-7").await.expect("delete"), 0);
        assert_eq!(sessions.get::<u32>(&other).await.expect("get"), Some(0));
        assert_eq!(sessions.get::<u32>(&anonymous).await.expect("get"), Some(0));
        if cache.backend() == Source::Redis {
            let index = format!("{}~session-user:user-7", cache.key_prefix());
            let left: u64 = raw(redis::cmd("ZCARD").arg(&index)).await;
            assert_eq!(left, 0, "{backend}: the index keeps no entry");
        }
    }
}

#[tokio::test]
async fn unknown_malformed_and_huge_ids_are_clean_misses() {
    for (backend, cache) in tests::backends().await {
        let sessions = cache.sessions();
        let huge = "A".repeat(1 << 20);
        let unknown = SessionId::from_bytes([9; 16]).to_string();
        for id in [
            unknown.as_str(),
            "",
            "short",
            "AAAAAAAAAAAAAAAAAAAA*A",
            "AAAAAAAAAAAAAAAAAAAA A",
            "AAAAAAAAAAAAAAAAAAAAAB",
            "../../../../etc/passwd",
            "\u{0}\u{1}\r\n",
            huge.as_str(),
        ] {
            let shown = &id[..id.len().min(30)];
            assert_eq!(
                sessions.get::<u8>(id).await.expect("get"),
                None,
                "{backend}: {shown}"
            );
            assert!(
                !sessions.exists(id).await.expect("exists"),
                "{backend}: {shown}"
            );
            assert!(
                !sessions.touch(id).await.expect("touch"),
                "{backend}: {shown}"
            );
            assert!(
                !sessions.update(id, &1u8).await.expect("update"),
                "{backend}: {shown}"
            );
            assert!(
                !sessions.delete(id).await.expect("delete"),
                "{backend}: {shown}"
            );
            assert_eq!(
                sessions.rotate(id).await.expect("rotate"),
                None,
                "{backend}"
            );
            assert_eq!(sessions.ttl(id).await.expect("ttl"), None, "{backend}");
            assert_eq!(
                sessions
                    .modify(id, |n: &mut u8| *n += 1)
                    .await
                    .expect("modify"),
                None
            );
        }
        assert!(huge.parse::<SessionId>().is_err());
    }
}

#[tokio::test]
async fn malformed_ids_make_no_redis_call_and_unreachable_redis_fails_closed() {
    // A port nothing listens on: any command would fail.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let cache = Cache::builder()
        .url(format!("redis://127.0.0.1:{port}"))
        .namespace(tests::unique_namespace())
        .connect_timeout(Duration::from_millis(300))
        .build()
        .expect("builds without connecting");
    let sessions = cache.sessions();
    let huge = "x".repeat(1 << 20);
    for id in ["not-an-id", huge.as_str()] {
        assert_eq!(sessions.get::<u8>(id).await.expect("no call made"), None);
        assert!(!sessions.exists(id).await.expect("no call made"));
        assert!(!sessions.delete(id).await.expect("no call made"));
    }
    // A well-formed id needs Redis: the error, never a guess.
    let id = SessionId::from_bytes([1; 16]);
    let err = sessions.get::<u8>(&id).await.expect_err("fails closed");
    assert!(err.is_unavailable(), "{err}");
    assert!(sessions
        .exists(&id)
        .await
        .expect_err("fails closed")
        .is_unavailable());
    assert!(sessions.create(Some("ann"), &1u8).await.is_err());
    assert!(sessions.delete_for_user("ann").await.is_err());
}

#[tokio::test]
async fn the_user_index_does_not_grow_with_expired_sessions() {
    let cache = tests::redis_cache();
    let index = format!("{}~session-user:ann", cache.key_prefix());
    let card = || async { raw::<u64>(redis::cmd("ZCARD").arg(&index)).await };

    // Sessions that end by idling out, long before their deadline.
    let short = cache.sessions().idle_timeout(Duration::from_millis(200));
    let mut last = None;
    for _ in 0..50 {
        last = Some(short.create(Some("ann"), &()).await.expect("create"));
    }
    let last = last.expect("created");
    assert!(
        eventually(Duration::from_secs(10), || async {
            !short.exists(&last).await.expect("exists")
        })
        .await
    );
    // Gone sessions are found by later writes (the later creations here may already have
    // dropped some that idled out meanwhile), not by a timer.
    assert!(card().await <= 50);

    // Each new session checks a sample of the index: the dead entries go.
    let long = cache.sessions();
    for _ in 0..60 {
        long.create(Some("ann"), &()).await.expect("create");
    }
    let size = card().await;
    assert!(
        size <= 62,
        "the index holds {size} entries for 60 live sessions"
    );
    let pttl: i64 = raw(redis::cmd("PTTL").arg(&index)).await;
    assert!(pttl > 0, "the index expires ({pttl})");
    assert_eq!(long.list_for_user("ann").await.expect("list").len(), 60);
    assert_eq!(card().await, 60, "listing drops the rest");

    // Entries past their deadline go on the next write, whatever the sample.
    let brief = cache
        .sessions()
        .idle_timeout(Duration::from_secs(60))
        .max_lifetime(Duration::from_millis(200));
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(brief.create(Some("bob"), &()).await.expect("create"));
    }
    let bob = format!("{}~session-user:bob", cache.key_prefix());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fresh = cache
        .sessions()
        .create(Some("bob"), &())
        .await
        .expect("create");
    let left: Vec<String> = raw(redis::cmd("ZRANGE").arg(&bob).arg(0).arg(-1)).await;
    assert_eq!(left, vec![fresh.to_string()]);
    // And the index ends with its last session's deadline.
    let pttl: i64 = raw(redis::cmd("PTTL").arg(&bob)).await;
    assert!(pttl > 0 && pttl <= 86_400_000, "{pttl}");
}

#[tokio::test]
async fn rotate_keeps_the_data_and_kills_the_old_id() {
    for (backend, cache) in tests::backends().await {
        let sessions = cache.sessions();
        let old = sessions
            .create(Some("ann"), &vec!["cart", "items"])
            .await
            .expect("create");
        let new = sessions
            .rotate(&old)
            .await
            .expect("rotate")
            .expect("exists");
        assert_ne!(old, new);
        assert_eq!(
            sessions.get::<Vec<String>>(&new).await.expect("get"),
            Some(vec!["cart".to_owned(), "items".to_owned()]),
            "{backend}"
        );
        assert_eq!(sessions.get::<Vec<String>>(&old).await.expect("get"), None);
        assert!(!sessions.update(&old, &vec!["x"]).await.expect("update"));
        assert_eq!(sessions.rotate(&old).await.expect("rotate"), None);
        assert_eq!(
            sessions.list_for_user("ann").await.expect("list"),
            vec![new],
            "{backend}: the index follows the rotation"
        );
        // The lifetime goes with it: a rotation does not restart the maximum lifetime.
        let brief = cache
            .sessions()
            .max_lifetime(Duration::from_millis(800))
            .idle_timeout(Duration::from_secs(60));
        let id = brief.create(None, &1u8).await.expect("create");
        let rotated = brief.rotate(&id).await.expect("rotate").expect("exists");
        assert!(
            brief.ttl(&rotated).await.expect("ttl").expect("alive") <= Duration::from_millis(800)
        );
        assert_eq!(brief.delete_for_user("ann").await.expect("delete"), 1); // `new`
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_modifications_of_different_fields_are_all_kept() {
    #[derive(serde::Serialize, serde::Deserialize, Default, Debug)]
    struct Counters {
        a: u32,
        b: u32,
        c: u32,
        d: u32,
    }
    for (backend, cache) in tests::backends().await {
        let sessions = cache.sessions();
        let id = sessions
            .create(None, &Counters::default())
            .await
            .expect("create");
        let tasks: Vec<_> = (0..4)
            .map(|field| {
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    for _ in 0..25 {
                        sessions
                            .modify(&id, |c: &mut Counters| match field {
                                0 => c.a += 1,
                                1 => c.b += 1,
                                2 => c.c += 1,
                                _ => c.d += 1,
                            })
                            .await
                            .expect("modify")
                            .expect("exists");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let c: Counters = sessions.get(&id).await.expect("get").expect("exists");
        assert_eq!((c.a, c.b, c.c, c.d), (25, 25, 25, 25), "{backend}: {c:?}");
    }
}

#[tokio::test]
async fn tenants_do_not_see_each_others_sessions() {
    for (backend, cache) in tests::backends().await {
        let acme = cache.tenant("acme").sessions();
        let globex = cache.tenant("globex").sessions();
        let id = acme
            .create(Some("ann"), &"acme data")
            .await
            .expect("create");
        assert_eq!(
            globex.get::<String>(&id).await.expect("get"),
            None,
            "{backend}"
        );
        assert!(!globex.exists(&id).await.expect("exists"));
        assert!(!globex.update(&id, &"stolen").await.expect("update"));
        assert!(!globex.delete(&id).await.expect("delete"));
        assert_eq!(globex.rotate(&id).await.expect("rotate"), None);
        assert!(globex.list_for_user("ann").await.expect("list").is_empty());
        assert_eq!(globex.delete_for_user("ann").await.expect("delete"), 0);
        assert_eq!(
            cache.sessions().get::<String>(&id).await.expect("get"),
            None
        );
        assert_eq!(
            acme.get::<String>(&id).await.expect("get").as_deref(),
            Some("acme data"),
            "{backend}"
        );
        assert_eq!(acme.list_for_user("ann").await.expect("list"), vec![id]);
    }
}

#[tokio::test]
async fn invalid_settings_and_users_are_errors() {
    let cache = Cache::in_memory();
    let zero = cache.sessions().idle_timeout(Duration::ZERO);
    assert!(matches!(
        zero.create(None, &()).await,
        Err(cache_core::Error::Config { .. })
    ));
    let zero = cache.sessions().max_lifetime(Duration::ZERO);
    assert!(matches!(
        zero.create(None, &()).await,
        Err(cache_core::Error::Config { .. })
    ));
    // Longer than MAX_TTL: clamped, not an overflow.
    let forever = cache
        .sessions()
        .max_lifetime(Duration::MAX)
        .idle_timeout(Duration::MAX);
    let id = forever.create(None, &()).await.expect("create");
    assert!(forever.ttl(&id).await.expect("ttl").expect("alive") <= cache_core::limits::MAX_TTL);
    assert!(matches!(
        cache.sessions().create(Some(""), &()).await,
        Err(cache_core::Error::InvalidKey { .. })
    ));
    // A user id of any text is fine (escaped, long ones digested).
    let odd = "ann:*{x}\n".repeat(100);
    let id = cache
        .sessions()
        .create(Some(&odd), &())
        .await
        .expect("create");
    assert_eq!(
        cache.sessions().list_for_user(&odd).await.expect("list"),
        vec![id]
    );
}

mod tower {
    use std::collections::HashMap;

    use cache_core::session::TowerSessionStore;
    use time::{Duration, OffsetDateTime};
    use tower_sessions_core::session::{Id, Record};
    use tower_sessions_core::SessionStore;

    fn record(user: Option<&str>, expiry: Duration) -> Record {
        let mut data = HashMap::new();
        data.insert("cart".to_owned(), serde_json::json!([1, 2, 3]));
        if let Some(user) = user {
            data.insert("user".to_owned(), serde_json::json!(user));
        }
        Record {
            id: Id::default(),
            data,
            expiry_date: OffsetDateTime::now_utc() + expiry,
        }
    }

    #[tokio::test]
    async fn the_tower_sessions_store_round_trips() {
        for (backend, cache) in tests::backends().await {
            let store = TowerSessionStore::new(cache.sessions()).user_field("user");
            let mut rec = record(None, Duration::hours(1));
            let proposed = rec.id;
            store.create(&mut rec).await.expect("create");
            assert_ne!(rec.id, proposed, "{backend}: the store draws its own id");
            let loaded = store.load(&rec.id).await.expect("load").expect("stored");
            assert_eq!(loaded.data, rec.data, "{backend}");
            assert_eq!(loaded.id, rec.id);
            assert_eq!(
                loaded.expiry_date.unix_timestamp(),
                rec.expiry_date.unix_timestamp()
            );
            // The cookie text is the session id's text.
            let id = TowerSessionStore::session_id(&rec.id);
            assert_eq!(id.to_string(), rec.id.to_string());
            assert!(cache.sessions().exists(&id).await.expect("exists"));

            // A save that sets the user indexes the session.
            rec.data.insert("user".to_owned(), serde_json::json!("ann"));
            store.save(&rec).await.expect("save");
            assert_eq!(
                cache.sessions().list_for_user("ann").await.expect("list"),
                vec![id],
                "{backend}"
            );
            let loaded = store.load(&rec.id).await.expect("load").expect("stored");
            assert_eq!(loaded.data["user"], "ann");

            // Log out everywhere, then a late save of the same session: it stays gone.
            assert_eq!(
                cache
                    .sessions()
                    .delete_for_user("ann")
                    .await
                    .expect("delete"),
                1
            );
            store.save(&rec).await.expect("save");
            assert!(
                store.load(&rec.id).await.expect("load").is_none(),
                "{backend}"
            );

            // Created with a user: indexed at once; deleted through the store.
            let mut bob = record(Some("bob"), Duration::hours(1));
            store.create(&mut bob).await.expect("create");
            assert_eq!(
                cache
                    .sessions()
                    .list_for_user("bob")
                    .await
                    .expect("list")
                    .len(),
                1
            );
            store.delete(&bob.id).await.expect("delete");
            assert!(store.load(&bob.id).await.expect("load").is_none());
            assert!(cache
                .sessions()
                .list_for_user("bob")
                .await
                .expect("list")
                .is_empty());

            // A record past its expiry date is not loaded; an unknown id is none.
            let mut old = record(None, Duration::seconds(-1));
            store.create(&mut old).await.expect("create");
            assert!(
                store.load(&old.id).await.expect("load").is_none(),
                "{backend}"
            );
            assert!(store.load(&Id(7)).await.expect("load").is_none());
        }
    }
}

/// Calls of `command` since the last `CONFIG RESETSTAT`, from `INFO commandstats`.
async fn calls(con: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .expect("INFO");
    let head = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(head.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count"))
}

#[tokio::test]
async fn a_get_is_one_round_trip_and_runs_the_slide_script_only_when_it_slides() {
    // A private server, so that its command counts are this test's alone.
    let server = tests::RedisServer::start();
    let cache = tests::redis_cache_at(&server.url());
    let mut con = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let sessions = cache
        .sessions()
        .idle_timeout(Duration::from_secs(60))
        .slide_threshold(Duration::from_secs(20));
    let id = sessions.create(Some("ann"), &"data").await.expect("create");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .expect("RESETSTAT");
    for _ in 0..50 {
        let data = sessions.get::<String>(&id).await.expect("get");
        assert_eq!(data.as_deref(), Some("data"));
    }
    // Reads within the 20 s threshold: no slide, no script; one HMGET + PTTL each.
    let (hmget, pttl, evalsha) = (
        calls(&mut con, "hmget").await,
        calls(&mut con, "pttl").await,
        calls(&mut con, "evalsha").await + calls(&mut con, "eval").await,
    );
    assert_eq!((hmget, pttl, evalsha), (50, 50, 0));

    // Once the TTL has fallen by the threshold, a read slides it back up (by the script).
    let sessions = sessions.slide_threshold(Duration::from_millis(300));
    let before = sessions.ttl(&id).await.expect("ttl").expect("alive");
    let slid = eventually(Duration::from_secs(10), || async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let data = sessions.get::<String>(&id).await.expect("get");
        assert_eq!(data.as_deref(), Some("data"));
        sessions.ttl(&id).await.expect("ttl").expect("alive") > before
    })
    .await;
    assert!(slid, "no read slid the idle timeout");
    let slides = calls(&mut con, "evalsha").await + calls(&mut con, "eval").await;
    assert!(slides > evalsha, "the slide ran no script");

    // A read after the record is gone is a miss.
    assert!(sessions.delete(&id).await.expect("delete"));
    assert_eq!(sessions.get::<String>(&id).await.expect("get"), None);
    assert!(!sessions.exists(&id).await.expect("exists"));
}

#[tokio::test]
async fn session_data_is_encrypted_at_rest_with_the_caches_key() {
    use cache_core::EncryptionKey;
    let (old_key, new_key) = (
        EncryptionKey::generate().expect("key"),
        EncryptionKey::generate().expect("key"),
    );
    let plain = tests::redis_cache();
    let cache = plain.with_encryption(old_key.clone());
    let sessions = cache.sessions();
    let secret = "card 4111-1111-1111-1111".to_owned();
    let id = sessions.create(Some("ann"), &secret).await.expect("create");
    let record = format!("{}~session:{id}", cache.key_prefix());
    let stored: Vec<u8> = raw(redis::cmd("HGET").arg(&record).arg("d")).await;
    assert!(!stored.is_empty());
    let needle = b"4111-1111";
    assert!(
        !stored.windows(needle.len()).any(|w| w == needle),
        "the stored data holds the plaintext"
    );
    assert_eq!(
        sessions.get::<String>(&id).await.expect("get"),
        Some(secret.clone())
    );

    // Another key, or no key: a miss, not an error.
    let stranger = plain.with_encryption(new_key.clone()).sessions();
    assert_eq!(stranger.get::<String>(&id).await.expect("get"), None);
    assert_eq!(
        plain.sessions().get::<String>(&id).await.expect("get"),
        None
    );
    assert_eq!(
        stranger
            .modify(&id, |s: &mut String| s.push('!'))
            .await
            .expect("modify"),
        None
    );

    // A key rotation: the new key with the old one listed reads, and writes with the new one.
    let rotated = plain
        .with_encryption(new_key.clone())
        .with_old_encryption_keys([old_key.clone()])
        .sessions();
    assert_eq!(
        rotated.get::<String>(&id).await.expect("get"),
        Some(secret.clone())
    );
    assert!(rotated
        .update(&id, &"updated".to_owned())
        .await
        .expect("update"));
    assert_eq!(
        stranger.get::<String>(&id).await.expect("get").as_deref(),
        Some("updated")
    );
    assert_eq!(
        sessions.get::<String>(&id).await.expect("get"),
        None,
        "the old key alone"
    );

    // The ciphertext is bound to its record: copied under another session, it does not open.
    let other = rotated
        .create(None, &"other".to_owned())
        .await
        .expect("create");
    let sealed: Vec<u8> = raw(redis::cmd("HGET").arg(&record).arg("d")).await;
    let other_record = format!("{}~session:{other}", cache.key_prefix());
    let _: i64 = raw(redis::cmd("HSET").arg(&other_record).arg("d").arg(sealed)).await;
    assert_eq!(rotated.get::<String>(&other).await.expect("get"), None);

    // A rotation of the id opens the data under the old record and seals it for the new.
    let moved = rotated.rotate(&id).await.expect("rotate").expect("exists");
    assert_eq!(
        rotated.get::<String>(&moved).await.expect("get").as_deref(),
        Some("updated")
    );
    assert_eq!(
        rotated.list_for_user("ann").await.expect("list"),
        vec![moved]
    );
    // One that does not open under this handle's keys is gone (and leaves the index).
    let foreign = sessions.create(Some("bob"), &1u8).await.expect("create");
    assert_eq!(stranger.rotate(&foreign).await.expect("rotate"), None);
    assert!(stranger
        .list_for_user("bob")
        .await
        .expect("list")
        .is_empty());
    assert!(rotated.touch(&moved).await.expect("touch"));
    assert!(rotated.delete(&moved).await.expect("delete"));
}
