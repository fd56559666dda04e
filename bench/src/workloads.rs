//! The systems under test, their data, and the workloads.
//!
//! Adding a workload (an L1 hit, a rate-limit check against a raw `EVALSHA`, a lock
//! acquire+release, ... as those capabilities land) is one `async fn(&'static Ctx) -> Round`
//! below, usually a [`measure`] call around one operation, plus one line in
//! [`workloads`]; a target on it is one more line in [`targets`]. Data a new system reads is
//! written in [`Ctx::populate`].

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use cache_core::rate_limit::Algorithm;
use cache_core::{Cache, RateLimit, RateLimiter};
use serde::{Deserialize, Serialize};
use tests::RawConnection;

use crate::measure::{measure, Plan, Round};

/// Keys each system holds, and hit workloads read.
pub const KEYS: u64 = 10_000;
/// Lifetime of everything the benchmark writes: long enough for a whole run, short enough
/// that a run against a shared `REDIS_URL` cleans up after itself.
pub const TTL: Duration = Duration::from_secs(15 * 60);
/// Distinct tags of the tagged workloads (`org:<id % ORGS>`).
const ORGS: u64 = 100;
/// Miss workloads use ids from here up, never used by the populated data.
const FIRST_MISS_ID: u64 = 1_000_000_000;
/// The computation of the cold-stampede workloads: a slow source.
const SLOW: Duration = Duration::from_millis(50);
/// Concurrent callers of one cold key in the stampede workload.
const STAMPEDE: usize = 1000;
/// Hot keys of the stale-serve workload, whose source fails.
const STALE_KEYS: u64 = 100;

/// The cached value: about 100 bytes of JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub org: u64,
    pub name: String,
    pub email: String,
    pub active: bool,
    pub plan: String,
}

impl User {
    /// The "database": what every system computes on a miss.
    pub fn load(id: u64) -> User {
        COMPUTES.fetch_add(1, Ordering::Relaxed);
        User {
            id,
            org: id % ORGS,
            name: format!("user-{id:010}"),
            email: format!("user-{id:010}@example.com"),
            active: true,
            plan: "team".to_owned(),
        }
    }
}

/// Function bodies run (misses). Hit workloads must leave it unchanged.
static COMPUTES: AtomicU64 = AtomicU64::new(0);

pub fn computes() -> u64 {
    COMPUTES.load(Ordering::Relaxed)
}

/// Every operation checks what it got, so no work can be skipped and a wrong value stops the
/// run.
#[track_caller]
fn check(user: &User, id: u64) {
    if user.id != id || user.org != id % ORGS {
        panic!("expected user {id}, got {user:?}");
    }
}

#[track_caller]
fn ok<T, E: Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Everything a workload needs; leaked once, so operations (spawned tasks) can hold it.
#[derive(Debug)]
pub struct Ctx {
    pub plan: Plan,
    /// Prefix of every key written in this run: `bench<pid>` (ours and raw),
    /// `bench<pid>-cached` (the cached crate).
    pub run: String,
    /// A raw redis-rs connection: multiplexed to the server, or a cluster connection.
    pub raw: RawConnection,
    /// On a Redis Cluster (`--cluster`): the `cached` crate, which speaks to one node, is left
    /// out.
    pub cluster: bool,
    pub ours: Cache,
    /// Ours in a namespace encrypted with a fixed key (the encrypted hit).
    pub ours_encrypted: Cache,
    /// Ours on a port nothing listens on, its circuit breaker opened by `populate` (and kept
    /// open for the run): `#[cached]` calls answered by the fallback store.
    pub down: Cache,
    pub moka: moka::future::Cache<u64, User>,
    /// The L1 rows (local.rs): two instances of ours with the L1 on, on connections of their
    /// own, in ours' namespace, and moka holding `Arc`s, the raw in-process reference.
    pub l1: Cache,
    pub l1_writer: Cache,
    pub moka_arc: moka::future::Cache<u64, std::sync::Arc<User>>,
    next_miss: AtomicU64,
}

impl Ctx {
    pub async fn new(deployment: &Deployment, plan: Plan, pool_size: Option<u32>) -> Ctx {
        let run = format!("bench{}", std::process::id());
        let (raw, builder, url) = match deployment {
            Deployment::Single(url) => {
                let client = ok(redis::Client::open(url.as_str()), "redis url");
                let raw = ok(
                    client.get_multiplexed_async_connection().await,
                    "connecting to redis",
                );
                (
                    RawConnection::Single(raw),
                    Cache::builder().url(url),
                    url.clone(),
                )
            }
            Deployment::Cluster(nodes) => {
                let client = ok(
                    redis::cluster::ClusterClient::new(nodes.clone()),
                    "cluster nodes",
                );
                let raw = ok(
                    client.get_async_connection().await,
                    "connecting to the cluster",
                );
                let first = nodes.first().cloned().unwrap_or_default();
                (
                    RawConnection::Cluster(raw),
                    Cache::builder().cluster_nodes(nodes.clone()),
                    first,
                )
            }
        };
        let mut builder = builder.namespace(run.as_str());
        let l1_base = builder.clone();
        if let Some(n) = pool_size {
            builder = builder.pool_size(n);
        }
        let ours = ok(builder.build(), "building the cache");
        let ours_encrypted = ours
            .namespace("enc")
            .with_encryption(cache_core::EncryptionKey::from_bytes([7; 32]));
        let dead_port = ok(std::net::TcpListener::bind("127.0.0.1:0"), "a free port")
            .local_addr()
            .map_or(1, |a| a.port());
        let down = ok(
            Cache::builder()
                .url(format!("redis://127.0.0.1:{dead_port}/"))
                .namespace(run.as_str())
                .connect_timeout(Duration::from_millis(200))
                .breaker(1, Duration::from_secs(24 * 3600))
                .build(),
            "building the cache on a closed port",
        );
        let with_l1 = || {
            let b = l1_base.clone().local_cache(4 * KEYS).local_ttl(TTL);
            ok(b.build(), "building the L1 cache")
        };
        let (l1, l1_writer) = (with_l1(), with_l1());
        // Its keys are `namespace:prefix:id`: a namespace of its own keeps them off ours.
        let _ = THEIRS.set((url, format!("{run}-cached")));
        Ctx {
            plan,
            run,
            raw,
            cluster: matches!(deployment, Deployment::Cluster(_)),
            ours,
            ours_encrypted,
            down,
            moka: moka::future::Cache::new(2 * KEYS),
            l1,
            l1_writer,
            moka_arc: moka::future::Cache::new(2 * KEYS),
            next_miss: AtomicU64::new(FIRST_MISS_ID),
        }
    }

    /// CPU time redis-server has used (`INFO cpu`), to the microsecond.
    pub async fn server_cpu(&self) -> Option<Duration> {
        let mut conn = self.raw.clone();
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut conn)
            .await
            .ok()?;
        let secs = |name: &str| -> Option<f64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name))?
                .trim()
                .parse()
                .ok()
        };
        Some(Duration::from_secs_f64(
            secs("used_cpu_user:")? + secs("used_cpu_sys:")?,
        ))
    }

    fn raw_key(&self, what: &str, id: u64) -> String {
        format!("{}:raw:{what}:{id}", self.run)
    }

    fn miss_id(&self) -> u64 {
        self.next_miss.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes the same `KEYS` users into each system, each in its own format: JSON for raw
    /// redis, our envelope around JSON, the `cached` crate's MessagePack.
    pub async fn populate(&'static self) {
        if self.cluster {
            return self.populate_cluster().await;
        }
        let mut pipe = redis::pipe();
        for id in 0..KEYS {
            let json = ok(serde_json::to_vec(&User::load(id)), "encoding");
            pipe.cmd("SET")
                .arg(self.raw_key("user", id))
                .arg(json)
                .arg("PX")
                .arg(TTL.as_millis() as u64)
                .ignore();
        }
        for org in 0..ORGS {
            pipe.cmd("SET")
                .arg(self.raw_key("tag", org))
                .arg(1)
                .ignore();
        }
        let mut conn = self.raw.clone();
        ok(pipe.query_async::<()>(&mut conn).await, "populating raw");
        // One failed connection opens the breaker of the cache on a closed port; then its
        // fallback store gets every user, as a service computing its hot keys in an outage.
        let failed = self.down.get::<u8>("breaker").await;
        assert!(
            matches!(failed, Err(e) if e.is_unavailable()),
            "nothing listens on the closed port"
        );
        assert_eq!(self.down.stats().breaker_opened, 1, "the breaker opened");
        for_each_id(move |id| async move {
            ours::user_refresh(&self.ours, id).await;
            ours::tagged_user_refresh(&self.ours, id % ORGS, id).await;
            if id < STALE_KEYS {
                ours::stale_user_populate(&self.ours, id).await;
            }
            ours::user_refresh(&self.ours_encrypted, id).await;
            ok(theirs::user(id).await, "populating the cached crate");
            self.moka.insert(id, User::load(id)).await;
            check(&ours::down_user(&self.down, id).await, id);
            self.moka_arc
                .insert(id, std::sync::Arc::new(User::load(id)))
                .await;
        })
        .await;
        self.l1_serving().await;
    }

    /// Waits for the L1 caches to serve, which they do once their invalidation feed is
    /// subscribed.
    async fn l1_serving(&self) {
        for c in [&self.l1, &self.l1_writer] {
            let start = std::time::Instant::now();
            while !c.local_cache_serving() {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the L1 feed did not subscribe"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

impl Ctx {
    /// [`populate`](Ctx::populate) on a cluster: raw keys one command each (a pipeline must
    /// stay in one slot), and no `cached` crate.
    async fn populate_cluster(&'static self) {
        for org in 0..ORGS {
            let mut conn = self.raw.clone();
            ok(
                redis::cmd("SET")
                    .arg(self.raw_key("tag", org))
                    .arg(1)
                    .query_async::<()>(&mut conn)
                    .await,
                "populating raw tags",
            );
        }
        for_each_id(move |id| async move {
            let mut conn = self.raw.clone();
            let json = ok(serde_json::to_vec(&User::load(id)), "encoding");
            ok(
                redis::cmd("SET")
                    .arg(self.raw_key("user", id))
                    .arg(json)
                    .arg("PX")
                    .arg(TTL.as_millis() as u64)
                    .query_async::<()>(&mut conn)
                    .await,
                "populating raw",
            );
            ours::user_refresh(&self.ours, id).await;
            ours::tagged_user_refresh(&self.ours, id % ORGS, id).await;
            ours::stale_user_populate(&self.ours, id).await;
            self.moka.insert(id, User::load(id)).await;
            self.moka_arc
                .insert(id, std::sync::Arc::new(User::load(id)))
                .await;
        })
        .await;
        self.l1_serving().await;
    }
}

/// Where the benchmark's Redis is: one server, or a Redis Cluster's seed nodes.
#[derive(Debug, Clone)]
pub enum Deployment {
    Single(String),
    Cluster(Vec<String>),
}

/// Workloads that need one server (the `cached` crate's store) and are left out on a cluster.
pub fn single_server_only(name: &str) -> bool {
    name.contains("cached crate")
}

/// Runs `f` for every populated id, 32 at a time.
async fn for_each_id<F, Fut>(f: F)
where
    F: Fn(u64) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    const TASKS: u64 = 32;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            tokio::spawn(async move {
                for id in (t..KEYS).step_by(TASKS as usize) {
                    f(id).await;
                }
            })
        })
        .collect();
    for t in tasks {
        ok(t.await, "populating");
    }
}

// ---- the systems under test ------------------------------------------------------------------

/// Ours: `#[cached]`, on the Redis path with `Ctx::ours`, from the L1 with `Ctx::l1`.
mod ours {
    use super::User;
    use cache_core::Cache;

    #[cache_core::cached(key = "user:<id>", ttl = 900, cache = cache, skip = [cache])]
    pub async fn user(cache: &Cache, id: u64) -> User {
        User::load(id)
    }

    fn in_org(user: User, org: u64) -> User {
        assert_eq!(user.org, org, "user {} is not in org {org}", user.id);
        user
    }

    #[cache_core::cached(key = "tuser:<org>:<id>", ttl = 900, tags = ["org:<org>"], cache = cache, skip = [cache])]
    pub async fn tagged_user(cache: &Cache, org: u64, id: u64) -> User {
        in_org(User::load(id), org)
    }

    /// The same function as `user`, called on the cache whose Redis is down.
    #[cache_core::cached(key = "user:<id>", ttl = 900, cache = cache, skip = [cache])]
    pub async fn down_user(cache: &Cache, id: u64) -> User {
        User::load(id)
    }

    #[cache_core::cached(key = "miss:<id>", ttl = 900, cache = cache, skip = [cache])]
    pub async fn miss(cache: &Cache, id: u64) -> User {
        User::load(id)
    }

    #[cache_core::cached(key = "tmiss:<org>:<id>", ttl = 900, tags = ["org:<org>"], cache = cache, skip = [cache])]
    pub async fn tagged_miss(cache: &Cache, org: u64, id: u64) -> User {
        in_org(User::load(id), org)
    }

    /// A slow source, for the stampede of cold callers.
    #[cache_core::cached(key = "slow:<id>", ttl = 900, cache = cache, skip = [cache])]
    pub async fn slow(cache: &Cache, id: u64) -> User {
        tokio::time::sleep(super::SLOW).await;
        User::load(id)
    }

    /// Entries past their TTL inside an hour of stale window; a failed refresh keeps them
    /// stale (a 1 ms fail-safe throttle), so each read serves a stale value.
    pub fn stale_options() -> cache_core::ComputeOptions {
        use std::time::Duration;
        cache_core::ComputeOptions::new()
            .ttl(Duration::from_millis(1))
            .stale(Duration::from_secs(3600))
            .fail_safe_throttle(Duration::from_millis(1))
    }

    pub async fn stale_user_populate(cache: &Cache, id: u64) {
        let user = cache
            .try_get_or_set_with(
                &format!("stale:{id}"),
                &stale_options(),
                move || async move { Ok::<User, String>(User::load(id)) },
            )
            .await;
        super::check(&super::ok(user, "populating stale users"), id);
    }

    /// A stale user, the source failing: it answers an error after a second (a timeout),
    /// so one refresh per key runs at a time while the other reads are served stale.
    pub async fn stale_user(cache: &Cache, id: u64) -> Result<User, String> {
        cache
            .try_get_or_set_with(&format!("stale:{id}"), &stale_options(), || async {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                Err::<User, String>("source down".to_owned())
            })
            .await
    }
}

/// Where the `cached` crate's stores connect, and their namespace: its macro builds each
/// store on first call, from a `create` block that can only reach statics.
static THEIRS: OnceLock<(String, String)> = OnceLock::new();

/// The `cached` crate 4.x: `#[concurrent_cached]` with its `AsyncRedisCache` store (one
/// multiplexed connection per store, values in MessagePack).
mod theirs {
    use super::{User, THEIRS, TTL};
    use cached::AsyncRedisCache;

    #[derive(Debug)]
    pub struct StoreError(String);

    impl std::fmt::Display for StoreError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    pub async fn store(prefix: &str) -> AsyncRedisCache<u64, User> {
        let (url, namespace) = THEIRS
            .get()
            .unwrap_or_else(|| panic!("the cached crate's store used before Ctx::new"));
        AsyncRedisCache::builder(prefix)
            .namespace(namespace)
            .ttl(TTL)
            .connection_string(url)
            .build()
            .await
            .unwrap_or_else(|e| panic!("building the cached crate's store: {e}"))
    }

    #[cached::macros::concurrent_cached(
        map_error = r##"|e| StoreError(format!("{e:?}"))"##,
        ty = "cached::AsyncRedisCache<u64, User>",
        create = r##"{ store("user").await }"##
    )]
    pub async fn user(id: u64) -> Result<User, StoreError> {
        Ok(User::load(id))
    }

    #[cached::macros::concurrent_cached(
        map_error = r##"|e| StoreError(format!("{e:?}"))"##,
        ty = "cached::AsyncRedisCache<u64, User>",
        create = r##"{ store("miss").await }"##
    )]
    pub async fn miss(id: u64) -> Result<User, StoreError> {
        Ok(User::load(id))
    }
}

// ---- workloads -----------------------------------------------------------------------------

/// What a workload's function bodies may do, checked around the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Only hits: no body runs.
    Hits,
    /// Only misses: a body runs for every operation.
    Misses,
    /// Not counted (raw clients check inline).
    Unchecked,
}

pub type Run = fn(&'static Ctx) -> Pin<Box<dyn Future<Output = Round>>>;

#[derive(Debug)]
pub struct Workload {
    pub name: &'static str,
    /// The workload this one is compared with.
    pub reference: Option<&'static str>,
    pub expect: Expect,
    pub run: Run,
}

const fn w(
    name: &'static str,
    reference: Option<&'static str>,
    expect: Expect,
    run: Run,
) -> Workload {
    Workload {
        name,
        reference,
        expect,
        run,
    }
}

/// Every workload, each next to what it is compared with (its reference, which comes first,
/// and a target's other side): the benchmark runs them in this order, and backwards every
/// other round, so each comparison is between rounds run moments apart (see
/// [`Measurement::paired_ratio`](crate::measure::Measurement::paired_ratio)). One line per
/// workload (kept unwrapped, as a table).
#[rustfmt::skip]
pub fn workloads() -> Vec<Workload> {
    use Expect::*;
    vec![
        w("raw GET c=1", None, Unchecked, |cx| Box::pin(raw_get(cx, 1))),
        w("ours hit c=1", Some("raw GET c=1"), Hits, |cx| Box::pin(ours_hit(cx, 1))),
        w("cached crate hit c=1", None, Hits, |cx| Box::pin(theirs_hit(cx, 1))),
        w("ours stale serve, source failing, c=1", Some("ours hit c=1"), Unchecked, |cx| Box::pin(ours_stale_serve(cx, 1))),
        w("ours encrypted hit c=1", Some("ours hit c=1"), Hits, |cx| Box::pin(ours_encrypted_hit(cx, 1))),
        w("raw GET c=64", None, Unchecked, |cx| Box::pin(raw_get(cx, 64))),
        w("ours hit c=64", Some("raw GET c=64"), Hits, |cx| Box::pin(ours_hit(cx, 64))),
        w("cached crate hit c=64", None, Hits, |cx| Box::pin(theirs_hit(cx, 64))),
        w("raw MGET key+tag c=1", None, Unchecked, |cx| Box::pin(raw_get_mget(cx, 1))),
        w("ours tagged hit c=1", Some("raw MGET key+tag c=1"), Hits, |cx| Box::pin(ours_tagged_hit(cx, 1))),
        w("raw MGET key+tag c=64", None, Unchecked, |cx| Box::pin(raw_get_mget(cx, 64))),
        w("ours tagged hit c=64", Some("raw MGET key+tag c=64"), Hits, |cx| Box::pin(ours_tagged_hit(cx, 64))),
        w("raw miss c=1", None, Unchecked, |cx| Box::pin(raw_miss(cx, 1))),
        w("ours miss c=1", Some("raw miss c=1"), Misses, |cx| Box::pin(ours_miss(cx, 1))),
        w("ours tagged miss c=1", Some("raw miss c=1"), Misses, |cx| Box::pin(ours_tagged_miss(cx, 1))),
        w("cached crate miss c=1", None, Misses, |cx| Box::pin(theirs_miss(cx, 1))),
        w("raw delete+miss c=1", None, Unchecked, |cx| Box::pin(raw_delete_miss(cx, 1))),
        w("ours delete+miss c=1", Some("raw delete+miss c=1"), Misses, |cx| Box::pin(ours_delete_miss(cx, 1))),
        w("raw EVALSHA trivial c=64", None, Unchecked, |cx| Box::pin(raw_evalsha(cx, 64))),
        w("raw EVALSHA sliding log script c=64", None, Unchecked, |cx| Box::pin(raw_limit(cx, 64, Algorithm::SlidingLog))),
        w("ours limit sliding log c=64", Some("raw EVALSHA trivial c=64"), Unchecked, |cx| Box::pin(ours_limit(cx, 64, Algorithm::SlidingLog))),
        w("raw EVALSHA sliding window script c=64", None, Unchecked, |cx| Box::pin(raw_limit(cx, 64, Algorithm::SlidingWindow))),
        w("ours limit sliding window c=64", Some("raw EVALSHA trivial c=64"), Unchecked, |cx| Box::pin(ours_limit(cx, 64, Algorithm::SlidingWindow))),
        w("raw EVALSHA gcra script c=64", None, Unchecked, |cx| Box::pin(raw_limit(cx, 64, Algorithm::Gcra))),
        w("ours limit gcra c=64", Some("raw EVALSHA trivial c=64"), Unchecked, |cx| Box::pin(ours_limit(cx, 64, Algorithm::Gcra))),
        w("raw GET+PEXPIRE c=64", None, Unchecked, |cx| Box::pin(raw_session_get(cx, 64))),
        w("ours session get c=64", Some("raw GET+PEXPIRE c=64"), Unchecked, |cx| Box::pin(ours_session_get(cx, 64))),
        w("raw EVALSHA lock+unlock c=1", None, Unchecked, |cx| Box::pin(raw_lock(cx, 1))),
        w("ours lock+unlock c=1", Some("raw EVALSHA lock+unlock c=1"), Unchecked, |cx| Box::pin(ours_lock(cx, 1))),
        w("raw EVALSHA lock+unlock c=64", None, Unchecked, |cx| Box::pin(raw_lock(cx, 64))),
        w("ours lock+unlock c=64", Some("raw EVALSHA lock+unlock c=64"), Unchecked, |cx| Box::pin(ours_lock(cx, 64))),
        w("body alone c=1", None, Unchecked, |cx| Box::pin(body_alone(cx, 1))),
        w("ours breaker open c=1", Some("body alone c=1"), Hits, |cx| Box::pin(ours_breaker_open(cx, 1))),
        w("moka get c=1", None, Unchecked, |cx| Box::pin(moka_get(cx, 1))),
        w("moka get c=64", None, Unchecked, |cx| Box::pin(moka_get(cx, 64))),
        w("one 50 ms computation", None, Unchecked, |cx| Box::pin(one_slow_computation(cx))),
        w("ours 1000 cold callers of one key", Some("one 50 ms computation"), Misses, |cx| Box::pin(ours_cold_stampede(cx))),
        w("moka Arc get c=1", None, Unchecked, |cx| Box::pin(moka_arc_get(cx, 1))),
        w("ours L1 hit c=1", Some("moka Arc get c=1"), Hits, |cx| Box::pin(ours_l1_hit(cx, 1))),
        w("moka Arc get c=64", None, Unchecked, |cx| Box::pin(moka_arc_get(cx, 64))),
        w("ours L1 hit c=64", Some("moka Arc get c=64"), Hits, |cx| Box::pin(ours_l1_hit(cx, 64))),
        w("L1 invalidation visibility", None, Unchecked, |cx| Box::pin(l1_visibility(cx))),
        w("raw SCAN+UNLINK pattern", None, Unchecked, |cx| Box::pin(raw_pattern(cx))),
        w("ours invalidate_pattern", Some("raw SCAN+UNLINK pattern"), Unchecked, |cx| Box::pin(ours_pattern(cx))),
    ]
}

/// A comparison the issue sets a bar for.
#[derive(Debug)]
pub struct Target {
    pub ours: &'static str,
    pub reference: &'static str,
    pub bar: Bar,
}

#[derive(Debug, Clone, Copy)]
pub enum Bar {
    /// ours ops/s >= x * reference ops/s
    OpsAtLeast(f64),
    /// ours p50 <= x * reference p50
    P50AtMost(f64),
    /// ours p50 - reference p50 <= x microseconds (an overhead over what the reference does)
    P50OverAtMost(f64),
    /// ours ops/s >= this, whatever the reference
    OpsAbove(f64),
    /// ours p50 <= this many µs, whatever the reference
    P50Below(f64),
}

/// The bars of the benchmark's issue for what exists. Still to come with its capability: the
/// rate-limit check (at least 0.8x a raw `EVALSHA` of the same script).
pub fn targets() -> Vec<Target> {
    use Bar::*;
    let t = |ours, reference, bar| Target {
        ours,
        reference,
        bar,
    };
    vec![
        t("ours hit c=64", "raw GET c=64", OpsAtLeast(0.9)),
        t("ours hit c=64", "cached crate hit c=64", OpsAtLeast(1.0)),
        t("ours hit c=1", "raw GET c=1", P50AtMost(1.1)),
        t("ours tagged miss c=1", "raw miss c=1", OpsAtLeast(0.9)),
        t(
            "ours stale serve, source failing, c=1",
            "ours hit c=1",
            P50AtMost(1.2),
        ),
        t(
            "ours 1000 cold callers of one key",
            "one 50 ms computation",
            P50AtMost(1.2),
        ),
        t(
            "ours session get c=64",
            "raw GET+PEXPIRE c=64",
            OpsAtLeast(0.8),
        ),
        t(
            "ours lock+unlock c=1",
            "raw EVALSHA lock+unlock c=1",
            OpsAtLeast(0.8),
        ),
        t(
            "ours lock+unlock c=64",
            "raw EVALSHA lock+unlock c=64",
            OpsAtLeast(0.8),
        ),
        t(
            "ours limit sliding log c=64",
            "raw EVALSHA trivial c=64",
            OpsAtLeast(0.8),
        ),
        t(
            "ours limit sliding log c=64",
            "raw EVALSHA sliding log script c=64",
            OpsAtLeast(0.8),
        ),
        t(
            "ours limit sliding window c=64",
            "raw EVALSHA trivial c=64",
            OpsAtLeast(0.8),
        ),
        t(
            "ours limit sliding window c=64",
            "raw EVALSHA sliding window script c=64",
            OpsAtLeast(0.8),
        ),
        t(
            "ours limit gcra c=64",
            "raw EVALSHA trivial c=64",
            OpsAtLeast(0.8),
        ),
        t(
            "ours limit gcra c=64",
            "raw EVALSHA gcra script c=64",
            OpsAtLeast(0.8),
        ),
        t(
            "ours breaker open c=1",
            "body alone c=1",
            P50OverAtMost(5.0),
        ),
        t("ours L1 hit c=64", "moka Arc get c=64", OpsAtLeast(0.5)),
        t("ours L1 hit c=1", "moka Arc get c=1", P50Below(2.0)),
        t(
            "ours L1 hit c=64",
            "moka Arc get c=64",
            OpsAbove(1_000_000.0),
        ),
        t(
            "ours invalidate_pattern",
            "raw SCAN+UNLINK pattern",
            OpsAtLeast(0.8),
        ),
    ]
}

/// Raw redis-rs: `GET` on a shared multiplexed connection, then `serde_json` decoding.
async fn raw_get(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let id = i % KEYS;
        let mut conn = cx.raw.clone();
        let bytes: Vec<u8> = ok(
            redis::cmd("GET")
                .arg(cx.raw_key("user", id))
                .query_async(&mut conn)
                .await,
            "raw GET",
        );
        check(&ok(serde_json::from_slice(&bytes), "raw decode"), id);
    })
    .await
}

/// Raw redis-rs doing what a tagged hit needs, as a hand-written client would: the value and
/// its tag's version in one `MGET`, the value decoded, the version checked.
async fn raw_get_mget(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let id = i % KEYS;
        let mut conn = cx.raw.clone();
        let mut cmd = redis::cmd("MGET");
        cmd.arg(cx.raw_key("user", id))
            .arg(cx.raw_key("tag", id % ORGS));
        let (bytes, version): (Vec<u8>, Option<u64>) =
            ok(cmd.query_async(&mut conn).await, "raw MGET key+tag");
        assert_eq!(version, Some(1), "tag version of user {id}");
        check(&ok(serde_json::from_slice(&bytes), "raw decode"), id);
    })
    .await
}

/// Raw redis-rs miss: `GET` (nil), compute, encode, `SET PX`.
async fn raw_miss(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |_| async move {
        let id = cx.miss_id();
        raw_miss_of(&mut cx.raw.clone(), &cx.raw_key("miss", id), id).await;
    })
    .await
}

/// One raw miss of user `id` under `key`.
async fn raw_miss_of(conn: &mut RawConnection, key: &str, id: u64) {
    let found: Option<Vec<u8>> = ok(
        redis::cmd("GET").arg(key).query_async(conn).await,
        "raw GET",
    );
    assert!(found.is_none(), "raw miss found a value under {key}");
    let user = User::load(id);
    let json = ok(serde_json::to_vec(&user), "raw encode");
    ok(
        redis::cmd("SET")
            .arg(key)
            .arg(json)
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .query_async::<()>(conn)
            .await,
        "raw SET",
    );
    check(&user, id);
}

/// Raw redis-rs invalidation then read: `UNLINK`, then a raw miss (`GET` nil, compute,
/// `SET PX`), which is how a hand-written client invalidates and refills.
async fn raw_delete_miss(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |_| async move {
        let id = cx.miss_id();
        let key = cx.raw_key("dmiss", id);
        let mut conn = cx.raw.clone();
        let unlinked: u64 = ok(
            redis::cmd("UNLINK").arg(&key).query_async(&mut conn).await,
            "raw UNLINK",
        );
        assert_eq!(unlinked, 0, "raw delete+miss found {key}");
        raw_miss_of(&mut conn, &key, id).await;
    })
    .await
}

async fn theirs_hit(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, |i| async move {
        let id = i % KEYS;
        check(&ok(theirs::user(id).await, "cached crate"), id);
    })
    .await
}

async fn theirs_miss(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |_| async move {
        let id = cx.miss_id();
        check(&ok(theirs::miss(id).await, "cached crate"), id);
    })
    .await
}

/// moka's async cache: the in-process ceiling (a clone of the stored value per get).
async fn moka_get(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let id = i % KEYS;
        match cx.moka.get(&id).await {
            Some(user) => check(&user, id),
            None => panic!("moka lost user {id}"),
        }
    })
    .await
}

async fn ours_hit(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let id = i % KEYS;
        check(&ours::user(&cx.ours, id).await, id);
    })
    .await
}

/// A hit in a namespace encrypted with XChaCha20-Poly1305: the same `GET`, then the
/// decryption before the decode. Reported against the plain hit.
async fn ours_encrypted_hit(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let id = i % KEYS;
        check(&ours::user(&cx.ours_encrypted, id).await, id);
    })
    .await
}

async fn ours_tagged_hit(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let id = i % KEYS;
        check(&ours::tagged_user(&cx.ours, id % ORGS, id).await, id);
    })
    .await
}

async fn ours_miss(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |_| async move {
        let id = cx.miss_id();
        check(&ours::miss(&cx.ours, id).await, id);
    })
    .await
}

/// The `_invalidate` companion, then a call: the delete leaves a tombstone, and the miss
/// writes over it with the compare-and-set script (what keeps an invalidation winning over
/// computations already running), against the raw client's `UNLINK` and plain `SET`.
async fn ours_delete_miss(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |_| async move {
        let id = cx.miss_id();
        let existed = ok(ours::miss_invalidate(&cx.ours, id).await, "invalidate");
        assert!(!existed, "ours delete+miss found user {id}");
        check(&ours::miss(&cx.ours, id).await, id);
    })
    .await
}

async fn ours_tagged_miss(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |_| async move {
        let id = cx.miss_id();
        check(&ours::tagged_miss(&cx.ours, id % ORGS, id).await, id);
    })
    .await
}

/// Reads of 100 hot users past their TTL while their source fails (after a second): the
/// stale value is served at once; one refresh per key runs in the background, fails, and
/// leaves the value stale (a 1 ms fail-safe throttle, so the reads stay stale serves).
async fn ours_stale_serve(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let id = i % STALE_KEYS;
        check(&ok(ours::stale_user(&cx.ours, id).await, "stale serve"), id);
    })
    .await
}

/// What a `#[cached]` call costs at least: its body (`User::load`, ~100 bytes of strings).
async fn body_alone(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let id = i % KEYS;
        check(&std::hint::black_box(User::load(id)), id);
    })
    .await
}

/// The trivial script the limiters are measured against: one key, one argument, `return 1`.
static TRIVIAL: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new("return 1"));

/// Raw redis-rs: `EVALSHA` of a trivial script, on ids spread as the limiter rows spread them.
async fn raw_evalsha(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let mut conn = cx.raw.clone();
        let mut invocation = TRIVIAL.key(cx.raw_key("rl", i % KEYS));
        invocation.arg(1);
        let one: i64 = ok(invocation.invoke_async(&mut conn).await, "raw EVALSHA");
        assert_eq!(one, 1);
    })
    .await
}

/// What one caller of a cold key waits at best: the source's time.
async fn one_slow_computation(cx: &'static Ctx) -> Round {
    measure(&cx.plan, 1, move |_| async move {
        let id = cx.miss_id();
        tokio::time::sleep(SLOW).await;
        check(&User::load(id), id);
    })
    .await
}

/// 1,000 concurrent callers of one cold key (each its own task): single-flight runs the
/// 50 ms computation once and hands its value to the 999 others; the operation ends when all
/// have their value.
async fn ours_cold_stampede(cx: &'static Ctx) -> Round {
    measure(&cx.plan, 1, move |_| async move {
        let id = cx.miss_id();
        let callers: Vec<_> = (0..STAMPEDE)
            .map(|_| tokio::spawn(async move { ours::slow(&cx.ours, id).await }))
            .collect();
        for caller in callers {
            check(&ok(caller.await, "a cold caller"), id);
        }
    })
    .await
}

/// The limiters' own scripts, run by raw redis-rs with the arguments the limiters pass: what
/// a hand-written client of the same algorithm would do, so the ratio is what the library adds.
static LIMIT_SCRIPTS: std::sync::LazyLock<[redis::Script; 3]> = std::sync::LazyLock::new(|| {
    [
        redis::Script::new(include_str!(
            "../../cache-core/src/scripts/rate_limit_sliding_log.lua"
        )),
        redis::Script::new(include_str!(
            "../../cache-core/src/scripts/rate_limit_sliding_window.lua"
        )),
        redis::Script::new(include_str!(
            "../../cache-core/src/scripts/rate_limit_gcra.lua"
        )),
    ]
});

/// Raw redis-rs: `EVALSHA` of a limiter's script for 1,000 per second per id (as
/// [`limiter`]), over `KEYS` ids, the reply read as the five integers it is.
async fn raw_limit(cx: &'static Ctx, concurrency: usize, algorithm: Algorithm) -> Round {
    let (script, first, second, name) = match algorithm {
        Algorithm::SlidingLog => (&LIMIT_SCRIPTS[0], 1_000u64, 1_000_000u64, "rl-log"),
        Algorithm::SlidingWindow => (&LIMIT_SCRIPTS[1], 1_000, 1_000_000, "rl-win"),
        _ => (&LIMIT_SCRIPTS[2], 1_000, 1_000, "rl-gcra"),
    };
    measure(&cx.plan, concurrency, move |i| async move {
        let mut conn = cx.raw.clone();
        let mut invocation = script.key(cx.raw_key(name, i % KEYS));
        invocation.arg(first).arg(second).arg(1).arg("1");
        let reply: Vec<i64> = ok(
            invocation.invoke_async(&mut conn).await,
            "raw limiter EVALSHA",
        );
        assert!(reply.len() == 5 && reply[0] == 1, "{reply:?}");
    })
    .await
}

/// One limiter per algorithm, made once: 1,000 per second per id, over `KEYS` ids, so every
/// check is decided by the script in full (admitted, counted, expiry set).
fn limiter(cx: &'static Ctx, algorithm: Algorithm) -> &'static RateLimiter {
    static LIMITERS: OnceLock<[RateLimiter; 3]> = OnceLock::new();
    let [log, window, gcra] = LIMITERS.get_or_init(|| {
        let second = Duration::from_secs(1);
        [
            cx.ours
                .rate_limiter(RateLimit::sliding_log(1_000, second).name("bench")),
            cx.ours
                .rate_limiter(RateLimit::sliding_window(1_000, second).name("bench")),
            cx.ours
                .rate_limiter(RateLimit::gcra(1_000, second).name("bench")),
        ]
    });
    match algorithm {
        Algorithm::SlidingLog => log,
        Algorithm::SlidingWindow => window,
        _ => gcra,
    }
}

/// `RateLimiter::check`: one `EVALSHA` of the algorithm's script.
async fn ours_limit(cx: &'static Ctx, concurrency: usize, algorithm: Algorithm) -> Round {
    let limiter = limiter(cx, algorithm);
    measure(&cx.plan, concurrency, move |i| async move {
        let d = ok(limiter.check(i % KEYS).await, "rate limit check");
        assert!(d.allowed && d.limit == 1_000, "{d:?}");
    })
    .await
}

/// A `#[cached]` call while the circuit breaker is open (Redis down): the breaker turns the
/// read away at once and the fallback store answers.
async fn ours_breaker_open(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let id = i % KEYS;
        check(&ours::down_user(&cx.down, id).await, id);
    })
    .await
}

// ---- the L1 near cache and invalidation by pattern (local.rs, pattern.rs) -----------------

/// moka's async cache holding `Arc<User>`: the raw in-process reference of an L1 hit.
async fn moka_arc_get(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let id = i % KEYS;
        match cx.moka_arc.get(&id).await {
            Some(user) => check(&user, id),
            None => panic!("moka lost user {id}"),
        }
    })
    .await
}

/// `#[cached]` answered by the L1: the key built, the entry found, its decoded value cloned.
async fn ours_l1_hit(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let id = i % KEYS;
        check(&ours::user(&cx.l1, id).await, id);
    })
    .await
}

/// From `invalidate_tag` returning on one instance to the other's L1 missing the entry: per
/// operation, the entry is read into the second instance's L1, the first invalidates its
/// tag, and the second polls its L1 until the feed's message arrived. p50/p99 are of that
/// delay; ops/s counts whole cycles.
async fn l1_visibility(cx: &'static Ctx) -> Round {
    use cache_core::{Lookup, Source};
    let (a, b) = (&cx.l1_writer, &cx.l1);
    crate::measure::delay_round(&cx.plan, |i| async move {
        let id = FIRST_MISS_ID / 2 + (i % 64);
        let key = format!("vis:{id}");
        let tag = format!("vis-org:{id}");
        ok(
            b.set_tagged(&key, &User::load(id), TTL, &[tag.as_str()])
                .await,
            "set",
        );
        // Once from Redis (kept in the L1), then from the L1.
        let _ = ok(b.lookup::<User>(&key).await, "lookup");
        match ok(b.lookup::<User>(&key).await, "lookup") {
            Lookup::Hit {
                source: Source::Local,
                value,
                ..
            } => check(&value, id),
            other => panic!("expected an L1 hit, got {other:?}"),
        }
        ok(a.invalidate_tag(&tag).await, "invalidate");
        crate::measure::poll_until("the invalidation never arrived", || async {
            !matches!(
                ok(b.lookup::<User>(&key).await, "lookup"),
                Lookup::Hit {
                    source: Source::Local,
                    ..
                }
            )
        })
        .await
    })
    .await
}

/// Keys of each side of the pattern rows (10% of them match): `BENCH_PATTERN_KEYS`, default
/// 100k; `BENCH_PATTERN_KEYS=1000000` is the issue's row (1M keys, 100k removed), which takes
/// a few minutes with the default rounds.
fn pattern_keys() -> u64 {
    std::env::var("BENCH_PATTERN_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Writes one side's keys: the 90% that stay once, and the 10% that match each round.
async fn pattern_populate(cx: &'static Ctx, prefix: &str, with_rest: bool) {
    let n = pattern_keys();
    let mut conn = cx.raw.clone();
    let mut pipe = redis::pipe();
    let mut queued = 0;
    let mut cluster_sets = Vec::new();
    for i in 0..n {
        let matching = i % 10 == 0;
        if !matching && !with_rest {
            continue;
        }
        let key = if matching {
            format!("{prefix}:m:{i}")
        } else {
            format!("{prefix}:o:{i}")
        };
        if cx.cluster {
            // A pipeline must stay in one slot: one command each, 10,000 in flight.
            cluster_sets.push(key);
            if cluster_sets.len() == 10_000 {
                set_each(cx, std::mem::take(&mut cluster_sets)).await;
            }
            continue;
        }
        pipe.cmd("SET")
            .arg(key)
            .arg("1")
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .ignore();
        queued += 1;
        if queued == 10_000 {
            ok(pipe.query_async::<()>(&mut conn).await, "populating");
            pipe = redis::pipe();
            queued = 0;
        }
    }
    if queued > 0 {
        ok(pipe.query_async::<()>(&mut conn).await, "populating");
    }
    set_each(cx, cluster_sets).await;
}

/// `SET key 1 PX ..` of each key, all in flight at once (a cluster connection routes each).
async fn set_each(cx: &'static Ctx, keys: Vec<String>) {
    let mut sets = tokio::task::JoinSet::new();
    for key in keys {
        let mut conn = cx.raw.clone();
        sets.spawn(async move {
            redis::cmd("SET")
                .arg(key)
                .arg("1")
                .arg("PX")
                .arg(TTL.as_millis() as u64)
                .query_async::<()>(&mut conn)
                .await
        });
    }
    while let Some(set) = sets.join_next().await {
        ok(ok(set, "a SET task"), "populating the cluster");
    }
}

/// A connection to each node holding keys: the server, or each cluster primary (from
/// `CLUSTER NODES`), for the raw scan.
async fn scan_nodes(cx: &'static Ctx) -> Vec<redis::aio::MultiplexedConnection> {
    let mut conn = cx.raw.clone();
    match conn {
        RawConnection::Single(single) => vec![single],
        RawConnection::Cluster(_) => {
            let nodes: String = ok(
                redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut conn)
                    .await,
                "CLUSTER NODES",
            );
            let mut primaries = Vec::new();
            for line in nodes.lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                if fields.len() < 3 || !fields[2].contains("master") {
                    continue;
                }
                let addr = fields[1].split('@').next().unwrap_or_default();
                let client = ok(redis::Client::open(format!("redis://{addr}/")), "node url");
                primaries.push(ok(
                    client.get_multiplexed_async_connection().await,
                    "connecting to a primary",
                ));
            }
            primaries
        }
    }
}

/// One pattern round: populate (untimed), then `remove` timed; ops/s is keys removed per
/// second, p50 the time of the whole removal.
async fn pattern_round<F, Fut>(
    cx: &'static Ctx,
    prefix: &str,
    populated: &'static std::sync::atomic::AtomicBool,
    remove: F,
) -> Round
where
    F: Fn() -> Fut,
    Fut: Future<Output = u64>,
{
    let first = !populated.swap(true, Ordering::SeqCst);
    pattern_populate(cx, prefix, first).await;
    let t0 = std::time::Instant::now();
    let removed = remove().await;
    let elapsed = t0.elapsed();
    assert_eq!(
        removed,
        pattern_keys().div_ceil(10),
        "keys removed by {prefix}"
    );
    let us = elapsed.as_secs_f64() * 1e6;
    Round {
        ops: removed,
        ops_with_warmup: removed,
        ops_per_sec: removed as f64 / elapsed.as_secs_f64(),
        p50_us: us,
        p99_us: us,
        client_cpu_us: f64::NAN,
        server_cpu_us: f64::NAN,
    }
}

/// A hand-written pattern delete: `SCAN MATCH .. COUNT 2000` to the end, each page's keys
/// `UNLINK`ed in the same pipeline as the next `SCAN`.
async fn raw_pattern(cx: &'static Ctx) -> Round {
    static POPULATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let prefix = format!("{}:rawpat", cx.run);
    let glob = format!("{prefix}:m:*");
    pattern_round(cx, &prefix, &POPULATED, || async {
        let mut removed = 0;
        // One node after the other, as `invalidate_pattern` visits them.
        for mut conn in scan_nodes(cx).await {
            removed += scan_unlink(&mut conn, &glob, cx.cluster).await;
        }
        removed
    })
    .await
}

/// `SCAN MATCH glob COUNT 2000` of one node to the end, each page's keys `UNLINK`ed in the
/// same pipeline as the next `SCAN`; the keys removed. On a cluster node a multi-key command
/// must stay in one slot, so there each key is its own `UNLINK` (`per_key`), in the pipeline.
async fn scan_unlink(
    conn: &mut redis::aio::MultiplexedConnection,
    glob: &str,
    per_key: bool,
) -> u64 {
    let unlink = |pipe: &mut redis::Pipeline, keys: &[String]| {
        if per_key {
            for key in keys {
                pipe.cmd("UNLINK").arg(key);
            }
        } else if !keys.is_empty() {
            pipe.cmd("UNLINK").arg(keys);
        }
    };
    let (mut cursor, mut removed, mut pending) = (0u64, 0u64, Vec::<String>::new());
    loop {
        let mut pipe = redis::pipe();
        pipe.cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(glob)
            .arg("COUNT")
            .arg(2000);
        unlink(&mut pipe, &pending);
        let reply: Vec<redis::Value> = ok(pipe.query_async(conn).await, "raw SCAN");
        let mut reply = reply.into_iter();
        let (next, keys): (u64, Vec<String>) = ok(
            redis::from_redis_value(reply.next().expect("SCAN reply")),
            "SCAN reply",
        );
        for n in reply {
            removed += ok(redis::from_redis_value::<u64>(n), "UNLINK reply");
        }
        pending = keys;
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut pipe = redis::pipe();
    unlink(&mut pipe, &pending);
    if !pending.is_empty() {
        let replies: Vec<u64> = ok(pipe.query_async(conn).await, "UNLINK");
        removed += replies.iter().sum::<u64>();
    }
    removed
}

/// `invalidate_pattern` over the same shape of keyspace (tombstones, not plain `UNLINK`).
async fn ours_pattern(cx: &'static Ctx) -> Round {
    static POPULATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let scope = cx.ours.namespace("pat");
    let prefix = scope.key_prefix().trim_end_matches(':').to_owned();
    pattern_round(cx, &prefix, &POPULATED, || async {
        ok(scope.invalidate_pattern("m:*").await, "invalidate_pattern")
    })
    .await
}

// ---- sessions --------------------------------------------------------------------------------

/// Sessions the session rows read: one per user of the first `SESSIONS`, created on first use
/// (before the first round's timing starts), in each system's format.
const SESSIONS: u64 = 1000;
/// The session rows' idle timeout, which the raw client's `PEXPIRE` sets on every read.
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
static SESSION_IDS: tokio::sync::OnceCell<Vec<cache_core::SessionId>> =
    tokio::sync::OnceCell::const_new();
static RAW_SESSIONS: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

async fn session_ids(cx: &'static Ctx) -> &'static [cache_core::SessionId] {
    SESSION_IDS
        .get_or_init(|| async {
            let sessions = cx.ours.sessions().idle_timeout(SESSION_IDLE);
            let mut ids = Vec::with_capacity(SESSIONS as usize);
            for id in 0..SESSIONS {
                ids.push(ok(
                    sessions.create(None, &User::load(id)).await,
                    "session create",
                ));
            }
            ids
        })
        .await
}

/// Raw redis-rs sliding a session as a hand-written store would: `GET` + `PEXPIRE` in one
/// pipeline (a write on every read), then `serde_json` decoding.
async fn raw_session_get(cx: &'static Ctx, concurrency: usize) -> Round {
    RAW_SESSIONS
        .get_or_init(|| async {
            let mut pipe = redis::pipe();
            for id in 0..SESSIONS {
                let json = ok(serde_json::to_vec(&User::load(id)), "encoding");
                pipe.cmd("SET")
                    .arg(cx.raw_key("session", id))
                    .arg(json)
                    .arg("PX")
                    .arg(SESSION_IDLE.as_millis() as u64)
                    .ignore();
            }
            ok(
                pipe.query_async::<()>(&mut cx.raw.clone()).await,
                "raw sessions",
            );
        })
        .await;
    measure(&cx.plan, concurrency, move |i| async move {
        let id = i % SESSIONS;
        let key = cx.raw_key("session", id);
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(&key)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(SESSION_IDLE.as_millis() as u64)
            .ignore();
        let (bytes,): (Vec<u8>,) = ok(
            pipe.query_async(&mut cx.raw.clone()).await,
            "raw GET+PEXPIRE",
        );
        check(&ok(serde_json::from_slice(&bytes), "raw decode"), id);
    })
    .await
}

/// `sessions.get`: one pipeline of `HMGET` (deadline, data) and `PTTL` on the
/// record, then `serde_json` decoding; the slide script (a second round trip) runs only when
/// the TTL has fallen by the slide threshold (a minute here), so not within a run's rounds.
async fn ours_session_get(cx: &'static Ctx, concurrency: usize) -> Round {
    static SESSIONS_OF_RUN: OnceLock<cache_core::Sessions> = OnceLock::new();
    let ids = session_ids(cx).await;
    let sessions = SESSIONS_OF_RUN.get_or_init(|| cx.ours.sessions().idle_timeout(SESSION_IDLE));
    measure(&cx.plan, concurrency, move |i| async move {
        let n = i % SESSIONS;
        let user: Option<User> = ok(sessions.get(&ids[n as usize]).await, "session get");
        check(&user.unwrap_or_else(|| panic!("session {n} is gone")), n);
    })
    .await
}

/// The lock's own scripts, run by hand: what a client writing its lock on redis-rs would do.
static RAW_LOCK_ACQUIRE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(include_str!(
        "../../cache-core/src/scripts/lock_acquire.lua"
    ))
});
static RAW_LOCK_RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(include_str!(
        "../../cache-core/src/scripts/lock_release.lua"
    ))
});

/// Raw redis-rs lock: `EVALSHA` of the acquire script (`SET NX PX` + fencing `INCR`), then
/// `EVALSHA` of the compare-and-delete release; a free lock per operation (ids cycle over
/// `KEYS`, far more than the concurrency), an owner made from the operation's index.
async fn raw_lock(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let key = format!("{}:raw:~lock:{{lock:{}}}", cx.run, i % KEYS);
        let owner = format!("{i:032x}");
        let mut conn = cx.raw.clone();
        let mut acquire = RAW_LOCK_ACQUIRE.key(&key);
        acquire
            .key(format!("{key}:fence"))
            .arg(&owner)
            .arg(10_000)
            .arg(7 * 24 * 3_600_000u64);
        let (token, _): (u64, i64) = ok(acquire.invoke_async(&mut conn).await, "raw lock");
        assert!(token > 0, "raw lock {key} was held");
        let mut release = RAW_LOCK_RELEASE.key(&key);
        release.arg(&owner);
        let released: u8 = ok(release.invoke_async(&mut conn).await, "raw unlock");
        assert_eq!(released, 1, "raw unlock of {key}");
    })
    .await
}

/// `cache.lock(name).acquire()` then `guard.release()`, on a free lock per operation.
async fn ours_lock(cx: &'static Ctx, concurrency: usize) -> Round {
    measure(&cx.plan, concurrency, move |i| async move {
        let name = format!("lock:{}", i % KEYS);
        let lock = cx.ours.lock(&name).ttl(Duration::from_secs(10));
        let guard = ok(lock.acquire().await, "lock");
        assert!(ok(guard.release().await, "unlock"), "lock {name} lost");
    })
    .await
}
