//! Issue 17: the circuit breaker, its fallback store and its recovery queue, on real
//! redis-server processes that the tests kill, restart, pause and put to sleep, and on a TCP
//! listener that never answers.
//!
//! Time bounds here are on failure paths (how long a caller may wait for "unavailable") and
//! generous; speed is measured by the load benchmark's "breaker open" row. Each test prints
//! its figures (`--nocapture` shows them).

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{cached, Cache, Error, StatsSnapshot};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const COMMAND_TIMEOUT: Duration = Duration::from_millis(300);
/// Slack on every bound, for a loaded machine.
const MARGIN: Duration = Duration::from_secs(2);

fn cache_on(url: &str, failures: u32, open_for: Duration) -> Cache {
    Cache::builder()
        .url(url)
        .namespace(tests::unique_namespace())
        .connect_timeout(CONNECT_TIMEOUT)
        .command_timeout(COMMAND_TIMEOUT)
        .breaker(failures, open_for)
        .build()
        .unwrap_or_else(|e| panic!("a cache on {url} builds: {e}"))
}

/// A loopback port nothing listens on (bound by the OS, then released).
fn dead_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free loopback port");
    listener.local_addr().expect("its address").port()
}

/// Polls `cond` every 10 ms until it holds; fails after `limit`. Returns the time it took.
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

/// True once the breaker lets commands through again (a command that reaches Redis).
async fn closed(cache: &Cache) -> bool {
    cache.exists("breaker-check").await.is_ok()
}

/// A redis-server that keeps its data across a kill and restart (append-only file, synced on
/// every write).
fn durable_server() -> tests::RedisServer {
    tests::RedisServer::builder()
        .arg("--appendonly")
        .arg("yes")
        .arg("--appendfsync")
        .arg("always")
        .start()
}

fn redis_hits(s: StatsSnapshot) -> u64 {
    s.hits - s.fallback_hits
}

// ---- fail-safe while the breaker is open (#12) ----------------------------------------------

/// A stale value read before an outage, whose refresh fails during it, is served while the
/// breaker is open (from the fallback store, for the fail-safe throttle) without calling the
/// failing source again; when Redis is back, a refresh stores the new value in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_value_is_served_while_the_breaker_is_open() {
    let mut server = durable_server();
    let cache = cache_on(&server.url(), 3, Duration::from_millis(300));
    let options = cache_core::ComputeOptions::new()
        .ttl(Duration::from_millis(300))
        .stale(Duration::from_secs(3600))
        .fail_safe_throttle(Duration::from_secs(3600))
        // The caller waits for the refresh: when it returns, the refresh has settled.
        .soft_timeout(Duration::from_secs(60));
    let first = cache
        .try_get_or_set_with("price", &options, || async { Ok::<u32, String>(1) })
        .await;
    assert_eq!(first, Ok(1));
    within("the value to pass its TTL", MARGIN * 5, || async {
        cache.get::<u32>("price").await.expect("get").is_none()
    })
    .await;

    // The refresh starts with Redis up (it read the stale value), and fails once the
    // breaker has opened.
    let gate = Arc::new(tokio::sync::Notify::new());
    let refresh = tokio::spawn({
        let (cache, options, gate) = (cache.clone(), options, gate.clone());
        async move {
            cache
                .try_get_or_set_with("price", &options, move || async move {
                    gate.notified().await;
                    Err::<u32, String>("the source is down too".into())
                })
                .await
        }
    });
    within("the refresh to start", MARGIN * 5, || async {
        cache.stats().computes >= 2
    })
    .await;
    server.kill();
    within("the breaker to open", MARGIN * 5, || async {
        let _ = cache.get::<u32>("other").await;
        cache.stats().breaker_opened >= 1
    })
    .await;
    gate.notify_one();
    assert_eq!(
        refresh.await.expect("joins"),
        Ok(1),
        "the stale value, served"
    );

    // During the outage: served again, from the fallback store, the source not called.
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let counted = calls.clone();
        let v = cache
            .try_get_or_set_with("price", &options, move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Err::<u32, String>("down".into())
            })
            .await;
        assert_eq!(v, Ok(1));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the failing source is throttled"
    );
    assert!(cache.stats().fallback_hits >= 10, "{:?}", cache.stats());

    // Redis back: the stale entry there is refreshed, and the new value stored.
    server.restart();
    within("the breaker to close", MARGIN * 5, || closed(&cache)).await;
    let fresh = cache
        .try_get_or_set_with("price", &options, || async { Ok::<u32, String>(2) })
        .await;
    assert_eq!(fresh, Ok(2));
    assert_eq!(cache.get::<u32>("price").await.expect("get"), Some(2));
}

// ---- Redis down: the fallback store --------------------------------------------------------

#[cached(cache = cache, skip = [cache, calls], key = "double:<n>", ttl = "1h")]
async fn double(cache: &Cache, calls: &AtomicUsize, n: u64) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    n * 2
}

/// While the breaker is open, 200 concurrent callers of one cold key run its computation
/// once (single-flight, as on Redis), and a failed computation is taken over by a waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_breaker_open_concurrent_callers_of_a_key_compute_once() {
    let url = format!("redis://127.0.0.1:{}/", dead_port());
    let cache = cache_on(&url, 1, Duration::from_secs(600));
    while cache.stats().breaker_opened == 0 {
        let _ = cache.get::<u64>("k").await;
    }
    const CALLERS: usize = 200;
    for (round, fails) in [(0u64, false), (1, true)] {
        let key = format!("hot:{round}");
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let waits_before = cache.stats().flight_waits;
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (cache, key, calls, gate) =
                    (cache.clone(), key.clone(), calls.clone(), gate.clone());
                tokio::spawn(async move {
                    cache
                        .try_get_or_set(&key, None, move || async move {
                            let n = calls.fetch_add(1, Ordering::SeqCst);
                            if n == 0 {
                                gate.notified().await;
                                if fails {
                                    return Err("the first computation fails".to_owned());
                                }
                            }
                            Ok::<u64, String>(7)
                        })
                        .await
                })
            })
            .collect();
        within(
            "every other caller to wait for the computation",
            MARGIN * 5,
            || async { cache.stats().flight_waits - waits_before >= (CALLERS - 1) as u64 },
        )
        .await;
        gate.notify_one();
        let mut errors = 0;
        for caller in callers {
            match caller.await.expect("joins") {
                Ok(v) => assert_eq!(v, 7),
                Err(_) => errors += 1,
            }
        }
        let expected = if fails { 2 } else { 1 };
        assert_eq!(calls.load(Ordering::SeqCst), expected, "round {round}");
        assert_eq!(
            errors,
            usize::from(fails),
            "only the failed caller sees its error"
        );
    }
}

/// Nothing listens: the first calls each wait for a connection attempt (bounded by the
/// connect timeout), then the breaker opens and 1,000 `#[cached]` calls over ten keys run the
/// body once per key, none waiting for the network.
#[tokio::test]
async fn with_redis_down_cached_calls_are_answered_by_the_fallback_store() {
    let url = format!("redis://127.0.0.1:{}/", dead_port());
    let cache = cache_on(&url, 5, Duration::from_secs(60));
    let started = Instant::now();
    let mut failed = 0;
    while cache.stats().breaker_opened == 0 {
        let r = cache.get::<u64>("k").await;
        assert!(
            matches!(&r, Err(e) if e.is_unavailable()),
            "call {failed}: {r:?}"
        );
        failed += 1;
        assert!(failed <= 5, "the breaker opens after five failures");
    }
    let time_to_open = started.elapsed();
    assert!(
        time_to_open <= 5 * CONNECT_TIMEOUT + MARGIN,
        "five calls bounded by the connect timeout took {time_to_open:?}"
    );
    let started = Instant::now();
    let r = cache.get::<u64>("k").await;
    let rejected_in = started.elapsed();
    assert!(matches!(r, Err(Error::CircuitOpen { .. })), "{r:?}");

    let calls = AtomicUsize::new(0);
    let started = Instant::now();
    for i in 0..1_000u64 {
        assert_eq!(double(&cache, &calls, i % 10).await, (i % 10) * 2);
    }
    let took = started.elapsed();
    // The body alone, for the overhead per call.
    let body_started = Instant::now();
    for i in 0..1_000u64 {
        std::hint::black_box(std::hint::black_box(i % 10) * 2);
    }
    let body = body_started.elapsed();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        10,
        "the body ran once per key, not once per call"
    );
    let s = cache.stats();
    assert!(s.fallback_hits >= 990, "{s:?}");
    eprintln!(
        "redis down: breaker open after {failed} failed calls in {time_to_open:?}; a direct call \
         rejected in {rejected_in:?}; 1000 #[cached] calls in {took:?}, mean overhead {:?} per \
         call over the body; bodies run: 10; fallback hits: {}",
        took.saturating_sub(body) / 1_000,
        s.fallback_hits
    );
    // Without the breaker each call waited for the connect timeout: 1000 x 300 ms.
    assert!(
        took < Duration::from_secs(10),
        "1000 calls took {took:?}: calls still wait for the network"
    );
}

// ---- killed and restarted under load ------------------------------------------------------

#[cached(
    cache = cache,
    skip = [cache, generation, calls],
    key = "item:<id>",
    tags = ["group:<group>"],
    ttl = "1h"
)]
async fn item(
    cache: &Cache,
    generation: &AtomicU64,
    calls: &AtomicUsize,
    id: u64,
    group: u64,
) -> Result<u64, String> {
    calls.fetch_add(1, Ordering::SeqCst);
    assert_eq!(group, id % GROUPS, "item {id} is in group {group}");
    Ok(generation.load(Ordering::SeqCst) * 1_000 + id)
}

const ITEMS: u64 = 64;
const GROUPS: u64 = 8;

/// Kill redis-server under 32 tasks of `#[cached]` calls, invalidate a key and a tag while it
/// is down, restart it on the same port with its data (append-only file): no caller sees an
/// error or a wrong value, the breaker opens and closes again, hits come from Redis again, and the two invalidations were replayed into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load_callers_see_no_error_and_invalidations_are_replayed() {
    let mut server = durable_server();
    let open_for = Duration::from_millis(500);
    let cache = cache_on(&server.url(), 5, open_for);
    let generation = Arc::new(AtomicU64::new(0));
    let bodies = Arc::new(AtomicUsize::new(0));
    for id in 0..ITEMS {
        let v = item(&cache, &generation, &bodies, id, id % GROUPS).await;
        assert_eq!(v, Ok(id));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..32u64)
        .map(|task| {
            let (cache, generation, bodies) = (cache.clone(), generation.clone(), bodies.clone());
            let (stop, made, wrong) = (stop.clone(), made.clone(), wrong.clone());
            tokio::spawn(async move {
                let mut i = task * 7;
                while !stop.load(Ordering::Relaxed) {
                    let id = i % ITEMS;
                    let got = item(&cache, &generation, &bodies, id, id % GROUPS).await;
                    let current = generation.load(Ordering::SeqCst);
                    match got {
                        Ok(v) if v % 1_000 == id && v / 1_000 <= current => {}
                        _ => {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    made.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let load = Duration::from_secs(10);
    let start_hits = redis_hits(cache.stats());
    within("hits from redis under load", load, || async {
        redis_hits(cache.stats()) >= start_hits + 500
    })
    .await;

    server.kill();
    let time_to_open = within("the breaker opens", load, || async {
        cache.stats().breaker_opened >= 1
    })
    .await;
    // What the outage changes: values computed from now on differ, and one key and one tag
    // are invalidated while Redis cannot hear it.
    generation.store(1, Ordering::SeqCst);
    let deleted = cache.delete("item:5").await;
    assert!(
        matches!(deleted, Err(Error::CircuitOpen { .. })),
        "{deleted:?}"
    );
    let bumped = cache.invalidate_tag("group:3").await;
    assert!(
        matches!(bumped, Err(Error::CircuitOpen { .. })),
        "{bumped:?}"
    );
    let during = made.load(Ordering::Relaxed);
    within("calls go on while redis is down", load, || async {
        made.load(Ordering::Relaxed) >= during + 1_000
    })
    .await;

    server.restart();
    let time_to_close = within("the breaker closes", 3 * load, || closed(&cache)).await;
    let after = redis_hits(cache.stats());
    within("hits from redis again", load, || async {
        redis_hits(cache.stats()) >= after + 500
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("no call panicked");
    }

    let s = cache.stats();
    eprintln!(
        "killed under load: {} calls by 32 tasks, {} errors or wrong values surfaced, {} bodies \
         run; breaker open {time_to_open:?} after the kill, closed {time_to_close:?} after the \
         restart (open_for {open_for:?}); {} calls answered by the breaker, {} from the fallback \
         store; invalidations replayed: {}, dropped: {}",
        made.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
        bodies.load(Ordering::SeqCst),
        s.breaker_rejected,
        s.fallback_hits,
        s.invalidations_replayed,
        s.invalidations_dropped,
    );
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "errors or wrong values");
    // How soon it closed is reported above, not asserted: after a restart it takes a probe
    // that finds the server loaded and a replay, whose time a loaded machine stretches
    // (measured 1.4 s alone, up to 10 s beside other builds). `within` above bounds it as a
    // hang detector.
    assert!(s.invalidations_replayed >= 2, "{s:?}");
    assert_eq!(s.invalidations_dropped, 0, "{s:?}");
    // Redis kept its data through the restart: an entry nothing invalidated is the one from
    // before the outage (the fallback store's values were dropped, not written)...
    let v = item(&cache, &generation, &bodies, 6, 6).await;
    assert_eq!(v, Ok(6), "item 6: the value stored before the outage");
    // ...and the key deleted and the tag invalidated during the outage are not.
    for (id, what) in [
        (5, "deleted key"),
        (3, "invalidated tag"),
        (11, "invalidated tag"),
    ] {
        let v = item(&cache, &generation, &bodies, id, id % GROUPS).await;
        assert_eq!(
            v,
            Ok(1_000 + id),
            "item {id} ({what}) recomputed after recovery"
        );
    }
}

// ---- unresponsive servers -----------------------------------------------------------------

/// Calls until the breaker opens, each bounded by the command timeout plus the margin, then
/// one turned away at once. Returns (failures, time to open).
async fn opens_within_the_command_timeout(cache: &Cache, what: &str) -> (u32, Duration) {
    let started = Instant::now();
    let mut failures = 0;
    loop {
        let call = Instant::now();
        let r = cache.get::<u64>("k").await;
        let took = call.elapsed();
        match r {
            Err(Error::CircuitOpen { .. }) => break,
            Err(e) if e.is_unavailable() => {
                assert!(
                    took <= COMMAND_TIMEOUT.max(CONNECT_TIMEOUT) + MARGIN,
                    "{what}: a call took {took:?}"
                );
                failures += 1;
                assert!(
                    failures <= 3,
                    "{what}: the breaker opens after three failures"
                );
            }
            other => panic!("{what}: expected unavailable, got {other:?}"),
        }
    }
    (failures, started.elapsed())
}

#[tokio::test]
async fn a_paused_redis_bounds_calls_by_the_command_timeout_then_opens_the_breaker() {
    let server = tests::RedisServer::start();
    let open_for = Duration::from_millis(300);
    let cache = cache_on(&server.url(), 3, open_for);
    cache.set("k", &1u64, None).await.expect("write while up");
    let mut raw = server.client().get_connection().expect("connects");
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3_000)
        .arg("ALL")
        .exec(&mut raw)
        .expect("CLIENT PAUSE");
    let paused = Instant::now();
    let (failures, time_to_open) = opens_within_the_command_timeout(&cache, "CLIENT PAUSE").await;
    // The pause ends by itself after 3 s; then the next probe closes the breaker.
    within(
        "the breaker closes after the pause",
        Duration::from_secs(10),
        || closed(&cache),
    )
    .await;
    let closed_at = paused.elapsed();
    assert_eq!(cache.get::<u64>("k").await.expect("read after"), Some(1));
    eprintln!(
        "CLIENT PAUSE 3 s: breaker open after {failures} timed-out calls in {time_to_open:?}, \
         closed {:?} after the pause ended",
        closed_at.saturating_sub(Duration::from_secs(3))
    );
    assert!(
        closed_at <= Duration::from_secs(3) + open_for + COMMAND_TIMEOUT + MARGIN,
        "closed {closed_at:?} after a pause of 3 s"
    );
}

#[tokio::test]
async fn a_redis_in_debug_sleep_bounds_calls_by_the_command_timeout_then_opens_the_breaker() {
    let server = tests::RedisServer::start();
    let cache = cache_on(&server.url(), 3, Duration::from_millis(300));
    cache.set("k", &1u64, None).await.expect("write while up");
    let client = server.client();
    let sleeper = std::thread::spawn(move || {
        let mut raw = client.get_connection().expect("connects");
        redis::cmd("DEBUG").arg("SLEEP").arg(3).exec(&mut raw)
    });
    let port = server.port();
    within("the server sleeps", Duration::from_secs(5), || async move {
        !tests::answers_ping(port)
    })
    .await;
    let (failures, time_to_open) = opens_within_the_command_timeout(&cache, "DEBUG SLEEP").await;
    sleeper
        .join()
        .expect("the sleeper thread")
        .expect("DEBUG SLEEP answers once over");
    let time_to_close = within(
        "the breaker closes after the sleep",
        Duration::from_secs(10),
        || closed(&cache),
    )
    .await;
    assert_eq!(cache.get::<u64>("k").await.expect("read after"), Some(1));
    eprintln!(
        "DEBUG SLEEP 3: breaker open after {failures} timed-out calls in {time_to_open:?}, closed \
         {time_to_close:?} after the server woke"
    );
}

/// A TCP listener that accepts connections and never answers, counting connections and the
/// most it held open at once.
struct BlackHole {
    port: u16,
    accepted: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlackHole {
    fn start() -> BlackHole {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free loopback port");
        let port = listener.local_addr().expect("its address").port();
        listener.set_nonblocking(true).expect("non-blocking");
        let (accepted, most_open, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = {
            let (accepted, most_open, stop) = (accepted.clone(), most_open.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut open: Vec<TcpStream> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((socket, _)) = listener.accept() {
                        let _ = socket.set_nonblocking(true);
                        open.push(socket);
                        accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    // Read and drop what clients send; a closed one reads 0.
                    open.retain_mut(|s| {
                        let mut buf = [0u8; 1024];
                        loop {
                            match s.read(&mut buf) {
                                Ok(0) => return false,
                                Ok(_) => continue,
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                    return true
                                }
                                Err(_) => return false,
                            }
                        }
                    });
                    most_open.fetch_max(open.len(), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        BlackHole {
            port,
            accepted,
            most_open,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Something accepts connections and never answers: each call is bounded by the connect
/// timeout until the breaker opens; then 32 tasks calling in a loop for two seconds cause
/// one connection attempt at a time (the probes), not one per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_opens_the_breaker_and_probes_one_at_a_time() {
    let hole = BlackHole::start();
    let open_for = Duration::from_millis(200);
    let cache = cache_on(&format!("redis://127.0.0.1:{}/", hole.port), 3, open_for);
    let (failures, time_to_open) = opens_within_the_command_timeout(&cache, "black hole").await;

    // Half-open: the probes are the only connection attempts, one at a time.
    let accepted_before = hole.accepted.load(Ordering::SeqCst);
    within(
        "the first connections are given up",
        Duration::from_secs(5),
        || async {
            hole.most_open.store(0, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            hole.most_open.load(Ordering::SeqCst) <= 1
        },
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (cache, stop, calls) = (cache.clone(), stop.clone(), calls.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = cache.get::<u64>("k").await;
                    assert!(matches!(&r, Err(e) if e.is_unavailable()), "{r:?}");
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("no call panicked");
    }
    let attempts = hole.accepted.load(Ordering::SeqCst) - accepted_before;
    let most_open = hole.most_open.load(Ordering::SeqCst);
    let calls = calls.load(Ordering::Relaxed);
    eprintln!(
        "black hole: breaker open after {failures} calls in {time_to_open:?}; then {calls} calls \
         by 32 tasks in {window:?} caused {attempts} connection attempts (probes), at most \
         {most_open} open at once"
    );
    assert!(most_open <= 1, "{most_open} connection attempts at once");
    assert!(
        (attempts as u128) <= window.as_millis() / open_for.as_millis() + 2,
        "{attempts} connection attempts in {window:?}"
    );
    assert!(calls >= 1_000, "calls are answered at once: {calls}");
}
