//! Distributed locks (issue 12): mutual exclusion under
//! contention in one process and across OS processes, leases that run out and the refusals
//! that follow, fencing tokens, the watchdog, a holder killed mid-hold, cancelled acquires,
//! tenant scoping, bad input, Redis down. On both backends where the concept applies.
//!
//! The cross-process tests run this test binary again as children (`child_process`, selected
//! by `LOCK_CHILD`); without that variable `child_process` does nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::{Cache, Error, Lock, LockGuard};

/// How long a test waits for something that should happen at once (a background release):
/// far below every lease involved, far above any scheduling delay.
const SOON: Duration = Duration::from_secs(5);

/// Polls `try_acquire` until the lock is free; `None` if it stays taken for `within`.
async fn taken_within(lock: &Lock, within: Duration) -> Option<LockGuard> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(guard) = lock.try_acquire().await.expect("try_acquire") {
            return Some(guard);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- mutual exclusion in one process ---------------------------------------------------------

/// 64 tasks x 100 iterations of read, yield, write on a counter: with the lock, no update is
/// lost, never more than one task is inside, and tokens grow in the order of the holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_count_exactly_under_the_lock() {
    const TASKS: usize = 64;
    const ITERATIONS: usize = 100;
    // Mutual exclusion is under test, not latency: a command answered late (the machine
    // loaded by the rest of the suite) is no failure here.
    let patient = tests::redis_builder()
        .command_timeout(Duration::from_secs(20))
        .build()
        .expect("cache");
    for (backend, cache) in [("memory", tests::memory_cache()), ("redis", patient)] {
        let counter = Arc::new(AtomicU64::new(0));
        let inside = Arc::new(AtomicUsize::new(0));
        let most_inside = Arc::new(AtomicUsize::new(0));
        let last_token = Arc::new(Mutex::new(0u64));
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let lock = cache
                .lock("counter")
                .ttl(Duration::from_secs(30))
                .wait(Duration::from_secs(120));
            let (counter, inside, most_inside, last_token) = (
                counter.clone(),
                inside.clone(),
                most_inside.clone(),
                last_token.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for _ in 0..ITERATIONS {
                    let guard = lock.acquire().await.expect("acquire");
                    let now_inside = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most_inside.fetch_max(now_inside, Ordering::SeqCst);
                    {
                        let mut last = last_token.lock().expect("not poisoned");
                        assert!(
                            guard.token() > *last,
                            "token {} after {}",
                            guard.token(),
                            *last
                        );
                        *last = guard.token();
                    }
                    let read = counter.load(Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    tokio::task::yield_now().await;
                    counter.store(read + 1, Ordering::SeqCst);
                    inside.fetch_sub(1, Ordering::SeqCst);
                    assert!(guard.release().await.expect("release"), "lease ran out");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(most_inside.load(Ordering::SeqCst), 1, "{backend}");
        assert_eq!(
            counter.load(Ordering::SeqCst),
            (TASKS * ITERATIONS) as u64,
            "{backend}"
        );
    }
}

// ---- mutual exclusion across processes -------------------------------------------------------

/// A child process running `child_process` with `mode`, killed if the test ends first.
struct ChildProcess(Child);

impl ChildProcess {
    fn spawn(mode: &str, url: &str, namespace: &str) -> ChildProcess {
        let exe = std::env::current_exe().expect("the test binary's path");
        let child = Command::new(exe)
            .args([
                "--exact",
                "lock::child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LOCK_CHILD", mode)
            .env("LOCK_CHILD_URL", url)
            .env("LOCK_CHILD_NAMESPACE", namespace)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawns the test binary");
        ChildProcess(child)
    }

    /// Waits for the child to exit, at most `within`; true if it exited successfully.
    fn wait(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            match self.0.try_wait().expect("child status") {
                Some(status) => return status.success(),
                None if Instant::now() >= deadline => return false,
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// What follows `prefix` in the first line of the child's output holding it, within
    /// `within` (the test harness prints its own words before the test's on a line).
    fn after(&mut self, prefix: &str, within: Duration) -> Option<String> {
        let stdout = self.0.stdout.take()?;
        let prefix = prefix.to_owned();
        let (sender, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(at) = line.find(&prefix) {
                    let _ = sender.send(line[at + prefix.len()..].trim().to_owned());
                    return;
                }
            }
        });
        received.recv_timeout(within).ok()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CHILD_ITERATIONS: i64 = 50;
const CHILD_HOLD_TTL: Duration = Duration::from_secs(3);

/// The child side of the cross-process tests; does nothing unless `LOCK_CHILD` says what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process() {
    let Ok(mode) = std::env::var("LOCK_CHILD") else {
        return;
    };
    let url = std::env::var("LOCK_CHILD_URL").expect("LOCK_CHILD_URL");
    let namespace = std::env::var("LOCK_CHILD_NAMESPACE").expect("LOCK_CHILD_NAMESPACE");
    let cache = Cache::builder()
        .url(url.as_str())
        .namespace(namespace.as_str())
        .command_timeout(Duration::from_secs(20))
        .build()
        .expect("cache");
    match mode.as_str() {
        // Read, sleep, write a counter in Redis, CHILD_ITERATIONS times, under the lock; the
        // "inside" gauge is counted up and down in Redis around each hold.
        "contend" => {
            let lock = cache
                .lock("counter")
                .ttl(Duration::from_secs(30))
                .wait(Duration::from_secs(120));
            for _ in 0..CHILD_ITERATIONS {
                let guard = lock.acquire().await.expect("acquire");
                let inside = cache.incr("inside", 1).await.expect("incr");
                assert_eq!(inside, 1, "another process is inside");
                let read = cache.get::<i64>("count").await.expect("get").unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(1)).await;
                cache.set("count", &(read + 1), None).await.expect("set");
                cache.incr("inside", -1).await.expect("incr");
                assert!(guard.release().await.expect("release"), "lease ran out");
            }
        }
        // Take the lock (watchdog on), say so, and hold it until killed.
        "hold" => {
            let guard = cache
                .lock("held")
                .ttl(CHILD_HOLD_TTL)
                .watchdog(true)
                .acquire()
                .await
                .expect("acquire");
            println!("held {}", guard.token());
            tokio::time::sleep(Duration::from_secs(120)).await;
            drop(guard);
        }
        other => panic!("unknown LOCK_CHILD mode {other}"),
    }
}

/// 4 OS processes contend for one lock around a read-sleep-write of a counter in Redis: the
/// count is exact and no process ever finds another inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_count_exactly_under_the_lock() {
    const PROCESSES: usize = 4;
    let url = tests::redis_url();
    let namespace = tests::unique_namespace();
    let mut children: Vec<ChildProcess> = (0..PROCESSES)
        .map(|_| ChildProcess::spawn("contend", &url, &namespace))
        .collect();
    for (i, child) in children.iter_mut().enumerate() {
        assert!(
            child.wait(Duration::from_secs(180)),
            "child {i} failed or did not finish"
        );
    }
    let cache = Cache::builder()
        .url(url.as_str())
        .namespace(namespace.as_str())
        .build()
        .expect("cache");
    assert_eq!(
        cache.get::<i64>("count").await.expect("get"),
        Some(PROCESSES as i64 * CHILD_ITERATIONS)
    );
    assert_eq!(cache.get::<i64>("inside").await.expect("get"), Some(0));
}

/// A holder process killed mid-hold (its watchdog kept the lock past its lease while it
/// lived) frees the lock within one lease.
#[tokio::test]
async fn a_killed_holder_frees_the_lock_within_its_lease() {
    let url = tests::redis_url();
    let namespace = tests::unique_namespace();
    let cache = Cache::builder()
        .url(url.as_str())
        .namespace(namespace.as_str())
        .build()
        .expect("cache");
    let mut child = ChildProcess::spawn("hold", &url, &namespace);
    let child_token: u64 = child
        .after("held ", Duration::from_secs(60))
        .expect("the child takes the lock")
        .parse()
        .expect("a token");
    let lock = cache.lock("held").ttl(Duration::from_secs(10));
    // Past its lease, the live child still holds it (its watchdog extends it).
    tokio::time::sleep(CHILD_HOLD_TTL * 3 / 2).await;
    assert!(lock.try_acquire().await.expect("try").is_none());

    let _ = child.0.kill();
    let _ = child.0.wait();
    let killed_at = Instant::now();
    let guard = lock
        .clone()
        .wait(Duration::from_secs(30))
        .acquire()
        .await
        .expect("taken once the dead holder's lease runs out");
    let took = killed_at.elapsed();
    assert!(
        took <= CHILD_HOLD_TTL + SOON,
        "took {took:?} after the kill, lease {CHILD_HOLD_TTL:?}"
    );
    assert!(guard.token() > child_token);
}

// ---- leases, refusals, tokens ----------------------------------------------------------------

/// A lease that runs out is taken by another holder; the old holder's extend and release are
/// then refused, and it knows it lost the lock.
#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_old_holder_refused() {
    for (backend, cache) in tests::backends().await {
        let old = cache
            .lock("job")
            .ttl(Duration::from_millis(200))
            .acquire()
            .await
            .expect("acquire");
        // Woken when the lease runs out (no release wakes it).
        let new = cache
            .lock("job")
            .ttl(Duration::from_secs(30))
            .wait(Duration::from_secs(30))
            .acquire()
            .await
            .expect("taken after the lease ran out");
        assert!(new.token() > old.token(), "{backend}");
        assert!(old.is_lost(), "{backend}");
        assert!(
            !old.extend(Duration::from_secs(30)).await.expect("extend"),
            "{backend}"
        );
        assert!(!old.release().await.expect("release"), "{backend}");
        // The new holder still holds it.
        assert!(
            cache
                .lock("job")
                .try_acquire()
                .await
                .expect("try")
                .is_none(),
            "{backend}"
        );
        assert!(!new.is_lost(), "{backend}");
        assert!(
            new.extend(Duration::from_secs(30)).await.expect("extend"),
            "{backend}"
        );
        assert!(new.release().await.expect("release"), "{backend}");
    }
}

/// The release script refuses an owner that is not the holder, and leaves the lock held.
#[tokio::test]
async fn a_non_owner_release_is_refused() {
    let cache = tests::redis_cache();
    let guard = cache.lock("job").acquire().await.expect("acquire");
    let mut con = tests::raw_connection().await;
    let key = format!("{}~lock:{{job}}", cache.key_prefix());
    let release = redis::Script::new(include_str!(
        "../../../cache-core/src/scripts/lock_release.lua"
    ));
    let released: u8 = release
        .key(&key)
        .arg("00000000000000000000000000000000")
        .invoke_async(&mut con)
        .await
        .expect("script");
    assert_eq!(released, 0);
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut con)
        .await
        .expect("EXISTS");
    assert!(exists, "the lock key is {key}");
    assert!(cache
        .lock("job")
        .try_acquire()
        .await
        .expect("try")
        .is_none());
    assert!(guard.release().await.expect("release"));
}

/// Tokens strictly increase per lock, on both backends; on Redis, also after the counter was
/// deleted (evicted, flushed).
#[tokio::test]
async fn tokens_strictly_increase() {
    for (backend, cache) in tests::backends().await {
        let mut last = 0;
        for _ in 0..50 {
            let guard = cache.lock("fenced").acquire().await.expect("acquire");
            assert!(
                guard.token() > last,
                "{backend}: {} after {last}",
                guard.token()
            );
            last = guard.token();
            guard.release().await.expect("release");
        }
        // Another lock has tokens of its own, strictly increasing too.
        let other = cache.lock("other").acquire().await.expect("acquire");
        assert!(other.token() > 0);
    }
    let cache = tests::redis_cache();
    let before = cache
        .lock("fenced")
        .acquire()
        .await
        .expect("acquire")
        .token();
    let mut con = tests::raw_connection().await;
    let fence = format!("{}~lock:{{fenced}}:fence", cache.key_prefix());
    let deleted: u64 = redis::cmd("DEL")
        .arg(&fence)
        .query_async(&mut con)
        .await
        .expect("DEL");
    assert_eq!(deleted, 1, "the counter is {fence}");
    // The dropped guard's release runs in the background: wait for it.
    let lock = cache.lock("fenced");
    let after = taken_within(&lock, SOON).await.expect("released").token();
    assert!(
        after > before,
        "{after} after {before}, counter deleted between"
    );
}

// ---- the watchdog ------------------------------------------------------------------------------

/// The watchdog keeps a lock past its lease while the guard lives; after the guard is dropped
/// the lock is free, and nothing keeps extending it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_keeps_the_lock_and_stops_on_drop() {
    // Generous: the watchdog must get the CPU within two thirds of this on a loaded machine.
    const TTL: Duration = Duration::from_secs(2);
    for (backend, cache) in tests::backends().await {
        let guard = cache
            .lock("job")
            .ttl(TTL)
            .watchdog(true)
            .acquire()
            .await
            .expect("acquire");
        let token = guard.token();
        let held_since = Instant::now();
        while held_since.elapsed() < TTL * 5 / 2 {
            assert!(
                cache
                    .lock("job")
                    .try_acquire()
                    .await
                    .expect("try")
                    .is_none(),
                "{backend}: taken {:?} into a hold with a {TTL:?} lease",
                held_since.elapsed()
            );
            tokio::time::sleep(TTL / 4).await;
        }
        assert!(!guard.is_lost(), "{backend}");
        drop(guard);
        let next = taken_within(&cache.lock("job").ttl(TTL), SOON)
            .await
            .expect("free after the drop");
        assert!(next.token() > token, "{backend}");
        // The new holder has no watchdog: its lease runs out, so nothing extends the lock.
        let after = taken_within(&cache.lock("job"), SOON)
            .await
            .expect("the lease without a watchdog ran out");
        assert!(next.is_lost(), "{backend}");
        drop(after);
    }
}

/// A watchdog whose extension is refused marks its guard lost.
#[tokio::test]
async fn the_watchdog_marks_a_stolen_lock_lost() {
    let cache = tests::redis_cache();
    let guard = cache
        .lock("job")
        .ttl(Duration::from_secs(3))
        .watchdog(true)
        .acquire()
        .await
        .expect("acquire");
    // Someone deletes the lock behind the holder's back (an operator, a failover).
    let mut con = tests::raw_connection().await;
    let key = format!("{}~lock:{{job}}", cache.key_prefix());
    let _: u64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .expect("DEL");
    let deadline = Instant::now() + Duration::from_secs(3) + SOON;
    while !guard.is_lost() {
        assert!(Instant::now() < deadline, "never marked lost");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!guard.release().await.expect("release"));
}

// ---- cancellation ------------------------------------------------------------------------------

/// An acquire cancelled while it waits, or at any point of its request, leaves no lock behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_acquire_leaves_no_lock_behind() {
    for (backend, cache) in tests::backends().await {
        let lock = cache
            .lock("job")
            .ttl(Duration::from_secs(60))
            .wait(Duration::from_secs(60));
        // Cancelled while waiting for a held lock.
        let holder = lock.acquire().await.expect("acquire");
        let waiter = {
            let lock = lock.clone();
            tokio::spawn(async move { lock.acquire().await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        waiter.abort();
        let _ = waiter.await;
        assert!(holder.release().await.expect("release"), "{backend}");
        let free = taken_within(&lock, SOON).await;
        assert!(
            free.is_some(),
            "{backend}: lock left behind by a cancelled waiter"
        );
        drop(free);

        // Cancelled at every point of a request on a free lock: sometimes before it is sent,
        // sometimes while the grant is on its way back.
        for i in 0..300u64 {
            let cut = Duration::from_micros(i % 40 * 10);
            let _ = tokio::time::timeout(cut, lock.acquire()).await;
        }
        // Only the background clean-ups can free it within SOON; the lease is a minute.
        let free = taken_within(&lock, SOON).await;
        assert!(
            free.is_some(),
            "{backend}: lock left behind by a cancelled acquire"
        );
    }
}

// ---- scopes, bad input, Redis down -------------------------------------------------------------

/// A tenant's locks are its own: the same name in two tenants (and the root) is three locks.
#[tokio::test]
async fn tenants_do_not_share_locks() {
    for (backend, cache) in tests::backends().await {
        let a = cache.tenant("a");
        let held = a.lock("x").acquire().await.expect("acquire");
        assert!(
            a.lock("x").try_acquire().await.expect("try").is_none(),
            "{backend}"
        );
        let b = cache
            .tenant("b")
            .lock("x")
            .try_acquire()
            .await
            .expect("try");
        assert!(b.is_some(), "{backend}");
        let root = cache.lock("x").try_acquire().await.expect("try");
        assert!(root.is_some(), "{backend}");
        let ns = cache
            .namespace("a")
            .lock("x")
            .try_acquire()
            .await
            .expect("try");
        assert!(ns.is_some(), "{backend}");
        drop(held);
    }
}

/// Bad names and durations are typed errors, never panics; long names and names with braces
/// work and stay distinct.
#[tokio::test]
async fn bad_input_is_a_typed_error() {
    for (backend, cache) in tests::backends().await {
        // Durations follow the cache's rule (limits.rs): zero refused, fractions of a
        // millisecond rounded up, anything above MAX_TTL clamped.
        let r = cache.lock("x").ttl(Duration::ZERO).try_acquire().await;
        assert!(
            matches!(r, Err(Error::InvalidDuration { .. })),
            "{backend}: {r:?}"
        );
        let r = cache.lock("x").ttl(Duration::ZERO).acquire().await;
        assert!(
            matches!(r, Err(Error::InvalidDuration { .. })),
            "{backend}: {r:?}"
        );
        for (i, ttl) in [
            Duration::from_micros(500),
            cache_core::limits::MAX_TTL + Duration::from_secs(1),
            Duration::MAX,
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("odd-ttl-{i}");
            let guard = cache.lock(&name).ttl(ttl).try_acquire().await;
            assert!(
                matches!(guard, Ok(Some(_))),
                "{backend}: ttl {ttl:?}: {guard:?}"
            );
            if let Ok(Some(guard)) = guard {
                assert!(guard.extend(ttl).await.is_ok(), "{backend}: extend {ttl:?}");
                guard.release().await.expect("release");
            }
        }
        for name in ["", "a b", "~x", "tab\there", "nl\n"] {
            let r = cache.lock(name).try_acquire().await;
            assert!(
                matches!(r, Err(Error::InvalidKey { .. })),
                "{backend}: {name:?}: {r:?}"
            );
        }
        let guard = cache.lock("x").acquire().await.expect("acquire");
        let r = guard.extend(Duration::ZERO).await;
        assert!(
            matches!(r, Err(Error::InvalidDuration { .. })),
            "{backend}: {r:?}"
        );
        // A wait too long for the clock is no deadline, not an overflow.
        let forever = cache.lock("free").wait(Duration::MAX).acquire().await;
        assert!(forever.is_ok(), "{backend}");
        let long = "n".repeat(cache_core::key::MAX_KEY_LEN * 2);
        let long_guard = cache.lock(&long).try_acquire().await.expect("long name");
        assert!(long_guard.is_some(), "{backend}");
        assert!(
            cache
                .lock(&long)
                .try_acquire()
                .await
                .expect("try")
                .is_none(),
            "{backend}"
        );
        let braced = cache.lock("a{b}").try_acquire().await.expect("braces");
        assert!(braced.is_some(), "{backend}");
        let other = cache.lock("a{c}").try_acquire().await.expect("braces");
        assert!(
            other.is_some(),
            "{backend}: a{{b}} and a{{c}} are two locks"
        );
        // Waiting longer than allowed is LockBusy.
        let busy = cache
            .lock("x")
            .wait(Duration::from_millis(30))
            .acquire()
            .await;
        assert!(
            matches!(busy, Err(Error::LockBusy { .. })),
            "{backend}: {busy:?}"
        );
        drop(guard);
    }
}

/// With Redis unreachable, taking a lock fails (fail closed) within a bound, and works again
/// once it is back.
#[tokio::test]
async fn redis_down_fails_closed() {
    let mut server = tests::RedisServer::start();
    let cache = tests::quick_failing_builder(&server.url())
        .build()
        .expect("cache");
    let guard = cache.lock("job").acquire().await.expect("acquire");
    drop(guard);
    server.kill();
    let started = Instant::now();
    for _ in 0..3 {
        let r = cache
            .lock("job")
            .wait(Duration::from_secs(1))
            .acquire()
            .await;
        match r {
            Err(Error::LockBusy { .. }) | Ok(_) => {
                panic!("granted or waited with redis down: {r:?}")
            }
            Err(_) => {}
        }
        let r = cache.lock("job").try_acquire().await;
        assert!(r.is_err(), "try_acquire with redis down: {r:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cache.lock("job").try_acquire().await {
            Ok(Some(_)) => break,
            Ok(None) => panic!("held after a restart without persistence"),
            Err(e) => assert!(Instant::now() < deadline, "still failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A waiter on Redis subscribes to its lock's channel (woken by the release, not polling),
/// and unsubscribes once it holds the lock. Its pub/sub connection goes to the server, the
/// primary Sentinel names, or a cluster's first seed node.
#[tokio::test]
async fn a_waiter_is_woken_by_pub_sub() {
    let con = match tests::topology() {
        tests::Topology::Cluster => redis::Client::open(tests::shared_cluster().urls()[0].as_str())
            .expect("a client")
            .get_multiplexed_async_connection()
            .await
            .expect("connects"),
        _ => match tests::raw_connection().await {
            tests::RawConnection::Single(con) => con,
            tests::RawConnection::Cluster(_) => unreachable!("not a cluster"),
        },
    };
    // Two roots: two processes, as far as wake-ups go.
    let builder = tests::redis_builder();
    let holder_side = builder.clone().build().expect("cache");
    let waiter_side = builder.build().expect("cache");
    let holder = holder_side.lock("job").acquire().await.expect("acquire");
    let channel = format!("{}~lock:{{job}}", holder_side.key_prefix());
    let waiting = tokio::spawn(async move {
        waiter_side
            .lock("job")
            .wait(Duration::from_secs(60))
            .acquire()
            .await
            .map(|g| g.token())
    });
    let subscribers = |con: &redis::aio::MultiplexedConnection| {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB").arg(&channel);
        let mut con = con.clone();
        async move {
            let (_, n): (String, u64) = cmd.query_async(&mut con).await.expect("NUMSUB");
            n
        }
    };
    let deadline = Instant::now() + SOON;
    while subscribers(&con).await != 1 {
        assert!(Instant::now() < deadline, "the waiter never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let token = holder.token();
    assert!(holder.release().await.expect("release"));
    let taken = waiting.await.expect("task").expect("acquired");
    assert!(taken > token);
    let deadline = Instant::now() + SOON;
    while subscribers(&con).await != 0 {
        assert!(Instant::now() < deadline, "the waiter never unsubscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The README's ACL for locks: a user with the documented commands and the namespace's
/// channels takes, waits for and releases locks; one without the channels still does (the
/// release's publish is skipped, waiters poll).
#[tokio::test]
async fn an_acl_user_with_the_documented_rights_uses_locks() {
    if tests::topology() != tests::Topology::Single {
        return; // the ACL is set on the single shared server
    }
    const COMMANDS: &str = "+get +set +mget +incr +incrby +del +exists +getrange +strlen +pttl +pexpire +evalsha +script|load +ping +time +publish +subscribe +unsubscribe";
    let mut admin = tests::shared_server()
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    for with_channels in [true, false] {
        let namespace = tests::unique_namespace();
        let user = format!("locker-{namespace}");
        let mut setuser = redis::cmd("ACL");
        setuser
            .arg("SETUSER")
            .arg(&user)
            .arg("reset")
            .arg("on")
            .arg(">pw")
            .arg(format!("~{namespace}:*"))
            .arg("-@all")
            .arg(COMMANDS.split(' ').collect::<Vec<_>>());
        if with_channels {
            setuser.arg(format!("&{namespace}:*"));
        }
        let _: () = setuser.query_async(&mut admin).await.expect("ACL SETUSER");
        let cache = Cache::builder()
            .url(tests::redis_url())
            .username(user.as_str())
            .password("pw")
            .namespace(namespace.as_str())
            .build()
            .expect("builds");
        let lock = cache
            .lock("job")
            .ttl(Duration::from_secs(30))
            .wait(Duration::from_secs(30));
        let first = lock.acquire().await.expect("acquire");
        assert!(first.extend(Duration::from_secs(30)).await.expect("extend"));
        // Another root waits (pub/sub or polling) while the first holds it.
        let other = Cache::builder()
            .url(tests::redis_url())
            .username(user.as_str())
            .password("pw")
            .namespace(namespace.as_str())
            .build()
            .expect("builds");
        let waiting = tokio::spawn(async move {
            other
                .lock("job")
                .wait(Duration::from_secs(30))
                .acquire()
                .await
                .map(|g| g.token())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let token = first.token();
        assert!(
            first.release().await.expect("release"),
            "channels: {with_channels}"
        );
        let next = waiting.await.expect("task").expect("acquired");
        assert!(next > token, "channels: {with_channels}");
    }
}
