//! Issue 21: the fault matrix. Each network fault of the harness's [`tests::FaultProxy`],
//! between the cache and a real redis-server, against each thing a service does with the
//! cache: a `#[cached]` call, get/set, delete, tag invalidation, lock acquire/release, a rate
//! limiter check and a session read. Each cell asserts the outcome the guide documents
//! ("When Redis goes down"): every call returns within a bound (5x the command timeout: a hang
//! detector, not a speed assertion), no wrong value is ever returned, an invalidation issued
//! through the fault is not undone once the fault clears and the breaker recovers, locks and
//! sessions fail closed, and limiters answer as their `OnUnavailable` policy says.
//!
//! A row is one test; its seven cells run concurrently, each with a proxy, a cache and a
//! namespace of its own, on the shared single server (the proxy fronts one server, so the
//! matrix runs in the single-server pass of `scripts/test` only). Each cell prints its
//! figures (`--nocapture` shows them): the guide's table comes from them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cache_core::rate_limit::OnUnavailable;
use cache_core::{cached, Cache, Error, RateLimit};
use tests::{Direction, Fault, FaultProxy};

/// The cache's connect and command timeouts (`tests::quick_failing_builder`).
const COMMAND_TIMEOUT: Duration = Duration::from_millis(300);
/// How long any one call may take under a fault: a hang detector.
const BOUND: Duration = Duration::from_millis(5 * 300);
/// The breaker opens after this many failures, and probes after `OPEN_FOR`.
const FAILURES: u32 = 3;
const OPEN_FOR: Duration = Duration::from_millis(200);
/// How long the breaker may take to close once the fault is gone (a probe every `OPEN_FOR`).
const RECOVERY: Duration = Duration::from_secs(10);
/// The lease of the locks the lock cell takes.
const LEASE: Duration = Duration::from_secs(1);
/// Values big enough that a reply spans many reads, so resets and throttling land inside one.
const VALUE_LEN: usize = 16 * 1024;

/// The proxy fronts one server: the matrix runs once, in the single-server pass.
fn first_pass_only() -> bool {
    tests::topology() == tests::Topology::Single
}

/// What a fault lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Every command completes within the command timeout: calls succeed.
    Passes,
    /// No command completes: calls fail (or fall back) until the fault clears.
    Blocks,
    /// Small commands complete, large replies do not: either outcome is correct.
    Mixed,
}

#[derive(Debug, Clone, Copy)]
struct Row {
    name: &'static str,
    fault: Fault,
    reach: Reach,
}

/// A value no other key or version has, incompressible (the cache compresses what it can,
/// and a reply must stay large on the wire).
fn value(key: &str, version: u32) -> String {
    let mut v = format!("{key}@{version}:");
    let mut state = key.bytes().fold(u64::from(version) | 1, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    while v.len() < VALUE_LEN {
        // xorshift64: cheap noise that lz4 cannot shrink.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        v.push(char::from(b'a' + (state % 26) as u8));
    }
    v
}

/// The start of a value, for messages.
fn short<T: std::fmt::Debug>(v: &T) -> String {
    let text = format!("{v:?}");
    match text.char_indices().nth(120) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

/// One cell's proxy and caches: `cache` talks through the proxy; `direct` is a cache on the
/// same server and namespace without it, to see what Redis holds.
struct Bed {
    row: Row,
    proxy: FaultProxy,
    cache: Cache,
    direct: Cache,
    /// The slowest call under the fault, in microseconds.
    slowest: AtomicU64,
}

impl Bed {
    fn new(row: Row) -> Bed {
        let proxy = FaultProxy::start(tests::shared_server().port());
        let namespace = tests::unique_namespace();
        let cache = tests::quick_failing_builder(&proxy.url())
            .namespace(namespace.as_str())
            .breaker(FAILURES, OPEN_FOR)
            .build()
            .expect("a cache through the proxy builds");
        let direct = Cache::builder()
            .url(tests::redis_url())
            .namespace(namespace.as_str())
            .build()
            .expect("a direct cache builds");
        Bed {
            row,
            proxy,
            cache,
            direct,
            slowest: AtomicU64::new(0),
        }
    }

    fn slowest(&self) -> Duration {
        Duration::from_micros(self.slowest.load(Ordering::Relaxed))
    }

    /// Sets the fault, after writing the large value the breaker is driven open with.
    async fn fault(&self) {
        self.cache
            .set("drive", &value("drive", 1), None)
            .await
            .expect("set before the fault");
        self.proxy.set(self.row.fault);
    }

    /// Whether the fault stops some commands: then it is kept until the breaker opens, as an
    /// outage would be, before it clears. (A fault that clears before the breaker opens is
    /// the `transient_*` test's.)
    fn sustained(&self) -> bool {
        self.row.reach != Reach::Passes
    }

    /// Runs a call under the fault, failing if it takes longer than [`BOUND`].
    async fn timed<T>(&self, what: &str, call: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let out = call.await;
        let took = started.elapsed();
        assert!(
            took <= BOUND,
            "{}: {what} took {took:?}, bound {BOUND:?}",
            self.row.name
        );
        self.slowest
            .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        out
    }

    /// Keeps reading the large value until the breaker has opened; each call within the
    /// bound.
    async fn open_breaker(&self) {
        for _ in 0..=FAILURES {
            if self.cache.stats().breaker_opened > 0 {
                return;
            }
            let r = self.timed("a get", self.cache.get::<String>("drive")).await;
            self.unavailable("a get of a large value while the fault lasts", r);
        }
        assert!(
            self.cache.stats().breaker_opened > 0,
            "{}: the breaker never opened: {:?}",
            self.row.name,
            self.cache.stats()
        );
    }

    /// Clears the fault and waits until the breaker lets commands through again.
    async fn recover(&self) {
        self.proxy.clear();
        let started = Instant::now();
        while self.cache.exists("breaker-check").await.is_err() {
            assert!(
                started.elapsed() < RECOVERY,
                "{}: the breaker did not close within {RECOVERY:?} of the fault clearing",
                self.row.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn unavailable<T: std::fmt::Debug>(&self, what: &str, r: Result<T, Error>) {
        match r {
            Err(e) if e.is_unavailable() => {}
            other => panic!(
                "{}: {what}: expected an unavailable error, got {}",
                self.row.name,
                short(&other)
            ),
        }
    }

    /// `r` is `expected` when the fault lets commands through, an unavailable error when it
    /// blocks them, either when it is mixed; anything else fails the cell.
    fn either<T: std::fmt::Debug + PartialEq>(
        &self,
        what: &str,
        r: Result<T, Error>,
        expected: T,
    ) -> &'static str {
        match (self.row.reach, r) {
            (Reach::Passes | Reach::Mixed, Ok(v)) if v == expected => "ok",
            (Reach::Blocks | Reach::Mixed, Err(e)) if e.is_unavailable() => "unavailable",
            (_, other) => panic!(
                "{}: {what}: expected {} (or an unavailable error only if the fault blocks), got {}",
                self.row.name,
                short(&expected),
                short(&other)
            ),
        }
    }
}

/// What a cell reports for the table.
struct Cell {
    operation: &'static str,
    outcome: String,
    slowest: Duration,
}

#[cached(cache = cache, skip = [cache, calls], key = "doc:<id>", ttl = "1h")]
async fn document(cache: &Cache, calls: &AtomicUsize, id: u64) -> String {
    calls.fetch_add(1, Ordering::SeqCst);
    value(&format!("doc:{id}"), 1)
}

async fn cached_call(row: Row) -> Cell {
    let bed = Bed::new(row);
    let calls = AtomicUsize::new(0);
    let expected = value("doc:7", 1);
    assert_eq!(document(&bed.cache, &calls, 7).await, expected);
    bed.fault().await;
    let got = bed
        .timed("a #[cached] call", document(&bed.cache, &calls, 7))
        .await;
    assert_eq!(got, expected, "{}: a #[cached] call", row.name);
    if bed.sustained() {
        bed.open_breaker().await;
        let got = bed
            .timed(
                "a #[cached] call, breaker open",
                document(&bed.cache, &calls, 7),
            )
            .await;
        assert_eq!(got, expected, "{}: breaker open", row.name);
    }
    bed.recover().await;
    assert_eq!(
        document(&bed.cache, &calls, 7).await,
        expected,
        "{}: after",
        row.name
    );
    let bodies = calls.load(Ordering::SeqCst);
    if row.reach == Reach::Passes {
        assert_eq!(bodies, 1, "{}: hits through a slow link", row.name);
    }
    Cell {
        operation: "`#[cached]` call",
        outcome: format!(
            "the right value every call (body run {} time{} after the first)",
            bodies - 1,
            if bodies == 2 { "" } else { "s" }
        ),
        slowest: bed.slowest(),
    }
}

async fn get_set(row: Row) -> Cell {
    let bed = Bed::new(row);
    let (old, new) = (value("k", 1), value("k", 2));
    bed.cache.set("k", &old, None).await.expect("set before");
    bed.fault().await;
    let got = bed.timed("get", bed.cache.get::<String>("k")).await;
    let read = bed.either("get", got, Some(old.clone()));
    let set = bed.timed("set", bed.cache.set("k", &new, None)).await;
    let wrote = bed.either("set", set, ());
    if bed.sustained() {
        bed.open_breaker().await;
        let got = bed
            .timed("get, breaker open", bed.cache.get::<String>("k"))
            .await;
        bed.unavailable("get, breaker open", got);
    }
    bed.recover().await;
    // The write that failed was queued as an invalidation: the old value never comes back.
    for (who, cache) in [("through the proxy", &bed.cache), ("direct", &bed.direct)] {
        let after = cache.get::<String>("k").await.expect("get after");
        assert!(
            after.is_none() || after.as_ref() == Some(&new),
            "{}: read {who} after recovery: {}",
            row.name,
            short(&after)
        );
        if wrote == "ok" {
            assert_eq!(after.as_ref(), Some(&new), "{}: {who}", row.name);
        }
    }
    Cell {
        operation: "get / set",
        outcome: if wrote == "ok" {
            format!("get {read}, set {wrote}")
        } else {
            format!(
                "get {read}, set {wrote}; after recovery the key reads None (the failed set was replayed as a delete), never the old value"
            )
        },
        slowest: bed.slowest(),
    }
}

async fn delete(row: Row) -> Cell {
    let bed = Bed::new(row);
    bed.cache.set("k", &value("k", 1), None).await.expect("set");
    // The delete script loaded before the fault (its first use sends its source).
    bed.cache.delete("other").await.expect("delete before");
    bed.fault().await;
    let deleted = bed.timed("delete", bed.cache.delete("k")).await;
    let outcome = bed.either("delete", deleted, true);
    if bed.sustained() {
        bed.open_breaker().await;
    }
    bed.recover().await;
    for (who, cache) in [("through the proxy", &bed.cache), ("direct", &bed.direct)] {
        let after = cache.get::<String>("k").await.expect("get after");
        assert!(
            after.is_none(),
            "{}: the deleted value is served {who} after recovery: the invalidation was lost",
            row.name
        );
    }
    Cell {
        operation: "delete",
        outcome: format!("{outcome}; the deleted value never served after recovery"),
        slowest: bed.slowest(),
    }
}

async fn tag_invalidation(row: Row) -> Cell {
    let bed = Bed::new(row);
    bed.cache
        .set_tagged("k", &value("k", 1), None, &["team:1"])
        .await
        .expect("set_tagged");
    bed.cache
        .invalidate_tag("team:2")
        .await
        .expect("invalidate before");
    bed.fault().await;
    let bumped = bed
        .timed("invalidate_tag", bed.cache.invalidate_tag("team:1"))
        .await;
    let outcome = bed.either("invalidate_tag", bumped, ());
    if bed.sustained() {
        bed.open_breaker().await;
    }
    bed.recover().await;
    for (who, cache) in [("through the proxy", &bed.cache), ("direct", &bed.direct)] {
        let after = cache.get::<String>("k").await.expect("get after");
        assert!(
            after.is_none(),
            "{}: an entry of the invalidated tag is served {who} after recovery: the invalidation was lost",
            row.name
        );
    }
    Cell {
        operation: "tag invalidation",
        outcome: format!("{outcome}; the tagged entry never served after recovery"),
        slowest: bed.slowest(),
    }
}

async fn lock(row: Row) -> Cell {
    let bed = Bed::new(row);
    let held = bed
        .cache
        .lock("held")
        .ttl(LEASE)
        .acquire()
        .await
        .expect("acquire before");
    let first_token = held.token();
    bed.fault().await;
    let released = bed.timed("release", held.release()).await;
    let release = bed.either("release", released, true);
    let acquired = bed
        .timed(
            "acquire",
            bed.cache
                .lock("free")
                .ttl(LEASE)
                .wait(Duration::ZERO)
                .acquire(),
        )
        .await;
    // Fail closed: a lock is granted only on Redis's word.
    let acquire = match (row.reach, acquired) {
        (Reach::Passes | Reach::Mixed, Ok(guard)) => {
            // Through the fault too: fine either way (a lease not released runs out).
            bed.either("release of the lock granted", guard.release().await, true);
            "granted"
        }
        (Reach::Blocks | Reach::Mixed, Err(e)) if e.is_unavailable() => "refused (unavailable)",
        (_, other) => panic!("{}: acquire: {other:?}", row.name),
    };
    if bed.sustained() {
        bed.open_breaker().await;
        let again = bed
            .timed(
                "acquire, breaker open",
                bed.cache
                    .lock("free")
                    .ttl(LEASE)
                    .wait(Duration::ZERO)
                    .acquire(),
            )
            .await;
        assert!(
            matches!(&again, Err(e) if e.is_unavailable()),
            "{}: acquire with the breaker open: {again:?}",
            row.name
        );
    }
    bed.recover().await;
    // Whatever the fault did, both locks are free again within a lease (one granted to a
    // request whose answer was lost runs out), and tokens still only grow.
    let wait = LEASE + BOUND;
    let next = bed
        .direct
        .lock("held")
        .wait(wait)
        .acquire()
        .await
        .expect("the released (or expired) lock is taken again");
    assert!(next.token() > first_token, "{}: fencing", row.name);
    next.release().await.expect("release");
    let free = bed.direct.lock("free").wait(wait).acquire().await;
    assert!(free.is_ok(), "{}: {free:?}", row.name);
    Cell {
        operation: "lock acquire / release",
        outcome: format!("release {release}; acquire {acquire}; both free within a lease after"),
        slowest: bed.slowest(),
    }
}

/// What a limiter answers without Redis, by its `OnUnavailable` policy.
const POLICY: &str =
    "by policy: `Allow` admits (remaining = limit), `Deny` refuses (retry after 1 s), `Error` returns the error";

async fn rate_limiter(row: Row) -> Cell {
    let bed = Bed::new(row);
    const LIMIT: u64 = 100;
    let config = RateLimit::sliding_window(LIMIT, Duration::from_secs(60));
    let allow = bed.cache.rate_limiter(config.clone().name("allow"));
    let deny = bed
        .cache
        .rate_limiter(config.clone().name("deny").fail_closed());
    let error = bed
        .cache
        .rate_limiter(config.name("error").on_unavailable(OnUnavailable::Error));
    for limiter in [&allow, &deny, &error] {
        let d = limiter.check("client").await.expect("check before");
        assert_eq!(d.remaining, LIMIT - 1);
    }
    bed.fault().await;
    let mut seen = Vec::new();
    for round in ["", ", breaker open"] {
        let a = bed.timed("check (allow)", allow.check("client")).await;
        let d = bed.timed("check (deny)", deny.check("client")).await;
        let e = bed.timed("check (error)", error.check("client")).await;
        let counted = |r: &Result<cache_core::Decision, Error>| matches!(r, Ok(d) if d.allowed && d.remaining < LIMIT - 1);
        let reached = row.reach != Reach::Blocks && counted(&a) && counted(&d) && counted(&e);
        if row.reach == Reach::Passes {
            assert!(reached, "{}: {a:?} {d:?} {e:?}", row.name);
        }
        if !reached {
            // By policy: allowed with the full limit, denied for a second, the error.
            assert!(
                matches!(&a, Ok(d) if d.allowed && d.remaining == LIMIT) || counted(&a),
                "{}: fail open{round}: {a:?}",
                row.name
            );
            assert!(
                matches!(&d, Ok(d) if !d.allowed && d.retry_after == Some(Duration::from_secs(1)))
                    || (row.reach == Reach::Mixed && counted(&d)),
                "{}: fail closed{round}: {d:?}",
                row.name
            );
            assert!(
                matches!(&e, Err(err) if err.is_unavailable())
                    || (row.reach == Reach::Mixed && counted(&e)),
                "{}: error policy{round}: {e:?}",
                row.name
            );
        }
        seen.push(reached);
        if !bed.sustained() {
            break;
        }
        bed.open_breaker().await;
    }
    bed.recover().await;
    for limiter in [&allow, &deny, &error] {
        let d = limiter.check("client").await.expect("check after");
        assert!(
            d.allowed && d.remaining < LIMIT - 1,
            "{}: counted again: {d:?}",
            row.name
        );
    }
    Cell {
        operation: "rate limiter check",
        outcome: format!(
            "{}{}; counted by Redis again after",
            if seen[0] { "counted by Redis" } else { POLICY },
            if seen.len() > 1 {
                format!("; breaker open: {POLICY}")
            } else {
                String::new()
            }
        ),
        slowest: bed.slowest(),
    }
}

async fn session(row: Row) -> Cell {
    let bed = Bed::new(row);
    let sessions = bed.cache.sessions();
    let id = sessions
        .create(Some("ann"), &"cart: 3 items".to_owned())
        .await
        .expect("create before");
    bed.fault().await;
    let got = bed.timed("session get", sessions.get::<String>(&id)).await;
    // Fail closed: an error, never a made-up or missing session.
    let outcome = bed.either("session get", got, Some("cart: 3 items".to_owned()));
    if bed.sustained() {
        bed.open_breaker().await;
        let got = bed
            .timed("session get, breaker open", sessions.get::<String>(&id))
            .await;
        bed.unavailable("session get, breaker open", got);
    }
    bed.recover().await;
    assert_eq!(
        sessions.get::<String>(&id).await.expect("get after"),
        Some("cart: 3 items".to_owned()),
        "{}: the session survives the fault",
        row.name
    );
    Cell {
        operation: "session get",
        outcome: format!("{outcome}; the session intact after"),
        slowest: bed.slowest(),
    }
}

/// Runs the row's seven cells concurrently; fails with every cell's failure.
async fn run_row(row: Row) {
    if !first_pass_only() {
        return;
    }
    let started = Instant::now();
    let cells = vec![
        tokio::spawn(cached_call(row)),
        tokio::spawn(get_set(row)),
        tokio::spawn(delete(row)),
        tokio::spawn(tag_invalidation(row)),
        tokio::spawn(lock(row)),
        tokio::spawn(rate_limiter(row)),
        tokio::spawn(session(row)),
    ];
    let mut failures = Vec::new();
    for cell in cells {
        match cell.await {
            Ok(cell) => eprintln!(
                "| {} | {} | {} | {} ms |",
                row.name,
                cell.operation,
                cell.outcome,
                cell.slowest.as_millis()
            ),
            Err(e) => failures.push(match e.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a cell panicked".into()),
                Err(e) => e.to_string(),
            }),
        }
    }
    eprintln!("row `{}`: {:?}", row.name, started.elapsed());
    assert!(
        failures.is_empty(),
        "{}:\n{}",
        row.name,
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_within_the_command_timeout() {
    run_row(Row {
        name: "latency 50 ms each way",
        fault: Fault::Latency(Direction::Both, Duration::from_millis(50)),
        reach: Reach::Passes,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_beyond_the_command_timeout() {
    run_row(Row {
        name: "replies 400 ms late",
        fault: Fault::Latency(
            Direction::ToClient,
            COMMAND_TIMEOUT + Duration::from_millis(100),
        ),
        reach: Reach::Blocks,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_to_the_server() {
    run_row(Row {
        name: "black hole, commands",
        fault: Fault::BlackHole(Direction::ToServer),
        reach: Reach::Blocks,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_to_the_client() {
    run_row(Row {
        name: "black hole, replies",
        fault: Fault::BlackHole(Direction::ToClient),
        reach: Reach::Blocks,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_both_ways() {
    run_row(Row {
        name: "black hole, both ways",
        fault: Fault::BlackHole(Direction::Both),
        reach: Reach::Blocks,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_reset() {
    run_row(Row {
        name: "every connection reset",
        fault: Fault::Reset,
        reach: Reach::Blocks,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_in_the_middle_of_each_reply() {
    run_row(Row {
        name: "reset 3 bytes into a reply",
        fault: Fault::ResetMidReply { after_bytes: 3 },
        reach: Reach::Blocks,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_throttled() {
    run_row(Row {
        name: "throttled to 4 KiB/s",
        fault: Fault::Throttle(Direction::Both, 4 * 1024),
        reach: Reach::Mixed,
    })
    .await;
}

// ---- a fault that clears before the breaker opens --------------------------------------------

/// One invalidation fails through a brief fault (one failed call: today the breaker, opening
/// after three, stays closed), then the fault clears. No read after the failed call may return
/// the invalidated value (an error, or the breaker's answer, is fine).
///
/// What holds it (store/breaker.rs): an invalidation that fails with the breaker closed is
/// queued, replayed by the retry task, and every read of this process first waits for what is
/// queued to be applied (`settle_before_read`), so the read right after the fault clears
/// cannot find the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_cleared_before_the_breaker_opens_lose_no_invalidation() {
    if !first_pass_only() {
        return;
    }
    let rows = [
        Row {
            name: "black hole, commands (transient)",
            fault: Fault::BlackHole(Direction::ToServer),
            reach: Reach::Blocks,
        },
        Row {
            name: "every connection reset (transient)",
            fault: Fault::Reset,
            reach: Reach::Blocks,
        },
    ];
    let mut cells = Vec::new();
    for row in rows {
        for operation in ["delete", "tag invalidation", "set"] {
            cells.push(tokio::spawn(transient(row, operation)));
        }
    }
    let mut gaps = Vec::new();
    for cell in cells {
        match cell.await.expect("no cell panicked") {
            Ok(line) => eprintln!("{line}"),
            Err(gap) => gaps.push(gap),
        }
    }
    assert!(
        gaps.is_empty(),
        "an invalidation that failed while the breaker was closed was not applied before the \
         next read, which found the old value after the fault cleared:\n{}",
        gaps.join("\n")
    );
}

/// One cell of the transient test: `Ok(figures)`, or `Err(what was served)` when the old value
/// came back.
async fn transient(row: Row, operation: &'static str) -> Result<String, String> {
    let bed = Bed::new(row);
    let old = value("k", 1);
    match operation {
        "delete" | "set" => bed.cache.set("k", &old, None).await.expect("set"),
        _ => bed
            .cache
            .set_tagged("k", &old, None, &["team:1"])
            .await
            .expect("set_tagged"),
    }
    bed.proxy.set(row.fault);
    let failed = match operation {
        "delete" => bed.timed("delete", bed.cache.delete("k")).await.map(|_| ()),
        "set" => {
            bed.timed("set", bed.cache.set("k", &value("k", 2), None))
                .await
        }
        _ => {
            bed.timed("invalidate_tag", bed.cache.invalidate_tag("team:1"))
                .await
        }
    };
    bed.unavailable(operation, failed);
    // Today one failure leaves the breaker closed (it opens after three); a fix may open it.
    let opened = bed.cache.stats().breaker_opened;
    bed.proxy.clear();
    // Reads for a while after: a replay, if one is due, has time to happen; none may serve
    // the old value meanwhile.
    let started = Instant::now();
    let mut reads = 0;
    while started.elapsed() < OPEN_FOR * 5 {
        let read = bed.cache.get::<String>("k").await;
        reads += 1;
        if matches!(&read, Ok(Some(v)) if *v == old) {
            return Err(format!(
                "{} / {operation}: the old value served {:?} after the failed {operation} (which took {:?}), on read {reads} (stats: {:?})",
                row.name,
                started.elapsed(),
                bed.slowest(),
                bed.cache.stats()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(format!(
        "| {} | {operation} | the old value never served after the fault cleared ({reads} reads; breaker opened {opened} times) | {} ms |",
        row.name,
        bed.slowest().as_millis()
    ))
}
