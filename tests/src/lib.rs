//! Test harness for the integration tests: a real `redis-server`, never a mock.
//!
//! - Ordinary tests use one server shared by the test process ([`redis_url`],
//!   [`shared_server`]), started on first use on a free loopback port, and
//!   stay apart from each other by namespace ([`unique_namespace`],
//!   [`backends`], [`redis_cache`], [`memory_cache`]).
//! - Fault tests start a server of their own ([`RedisServer::start`]) and
//!   kill, restart or freeze it.
//!
//! Every server is gone when the test process ends, however it ends: owned
//! servers are killed on drop, all of them by an exit hook, and the kernel
//! kills them if the process dies without running it (see `process.rs`).
//!
//! `redis-server` comes from `REDIS_SERVER_BIN` or `PATH`; `scripts/test`
//! installs it when it is missing.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! for (backend, cache) in tests::backends().await {
//!     // the same assertions run on the memory and the Redis backend
//!     # let _ = (backend, cache);
//! }
//! # }
//! ```

mod cluster;
mod error;
mod process;
mod proxy;
mod server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub use cluster::{find_redis_cli, RedisCluster, SentinelSetup, SENTINEL_MASTER, TOPOLOGY_TIMEOUT};
pub use error::HarnessError;
pub use proxy::{Direction, Fault, FaultProxy};
pub use server::{
    answers_ping, find_redis_server, find_redis_server_in, redis_server_version, RedisServer,
    RedisServerBuilder, READY_TIMEOUT,
};

/// The server shared by the tests of this process, started on first use.
///
/// Panics, with the reason and how to install redis-server, when it cannot
/// be started; the failure is remembered, so later tests fail at once.
///
/// ```
/// let mut con = tests::shared_server().client().get_connection().expect("connects");
/// let pong: String = redis::cmd("PING").query(&mut con).expect("answers");
/// assert_eq!(pong, "PONG");
/// ```
pub fn shared_server() -> &'static RedisServer {
    // Never dropped: the exit hook and the parent-death signal kill it.
    static SHARED: OnceLock<Result<RedisServer, String>> = OnceLock::new();
    match SHARED.get_or_init(|| RedisServer::try_start().map_err(|e| e.to_string())) {
        Ok(server) => server,
        Err(e) => panic!("cannot start the redis-server shared by this test process: {e}"),
    }
}

/// `redis://127.0.0.1:<port>/` of the [`shared_server`].
///
/// ```
/// assert!(tests::redis_url().starts_with("redis://127.0.0.1:"));
/// ```
pub fn redis_url() -> String {
    shared_server().url()
}

/// A namespace no other test of any process uses: `t<counter>_<random>`.
///
/// ```
/// assert_ne!(tests::unique_namespace(), tests::unique_namespace());
/// ```
pub fn unique_namespace() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("t{n}_{}", &random[..10])
}

/// A cache on the in-memory backend, in a fresh namespace.
pub fn memory_cache() -> cache_core::Cache {
    let namespace = unique_namespace();
    cache_core::Cache::builder()
        .in_memory()
        .namespace(namespace.as_str())
        .build()
        .unwrap_or_else(|e| panic!("cannot build an in-memory cache: {e}"))
}

/// The Redis deployment the Redis-backed tests run against, from `CACHE_TEST_TOPOLOGY`:
/// `single` (default: the [`shared_server`]), `cluster` (a [`RedisCluster`] shared by the test
/// process) or `sentinel` (a [`SentinelSetup`] shared likewise). `scripts/test` runs the suite
/// once per topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One redis-server.
    Single,
    /// Three primaries and three replicas in cluster mode.
    Cluster,
    /// A primary and a replica behind three Sentinels.
    Sentinel,
}

/// The topology `CACHE_TEST_TOPOLOGY` selects; panics on an unknown name.
///
/// ```
/// let t = tests::topology();
/// assert!(matches!(t, tests::Topology::Single | tests::Topology::Cluster | tests::Topology::Sentinel));
/// ```
pub fn topology() -> Topology {
    match std::env::var("CACHE_TEST_TOPOLOGY")
        .as_deref()
        .map(str::trim)
    {
        Err(_) | Ok("") | Ok("single") => Topology::Single,
        Ok("cluster") => Topology::Cluster,
        Ok("sentinel") => Topology::Sentinel,
        Ok(other) => panic!("CACHE_TEST_TOPOLOGY=`{other}`: expected single, cluster or sentinel"),
    }
}

/// The cluster shared by the tests of this process, started on first use.
pub fn shared_cluster() -> &'static RedisCluster {
    static SHARED: OnceLock<Result<RedisCluster, String>> = OnceLock::new();
    match SHARED.get_or_init(|| RedisCluster::try_start().map_err(|e| e.to_string())) {
        Ok(cluster) => cluster,
        Err(e) => panic!("cannot start the redis cluster shared by this test process: {e}"),
    }
}

/// The Sentinel setup shared by the tests of this process, started on first use.
pub fn shared_sentinel() -> &'static SentinelSetup {
    static SHARED: OnceLock<Result<SentinelSetup, String>> = OnceLock::new();
    match SHARED.get_or_init(|| SentinelSetup::try_start().map_err(|e| e.to_string())) {
        Ok(setup) => setup,
        Err(e) => panic!("cannot start the sentinel setup shared by this test process: {e}"),
    }
}

/// A builder on the selected [`topology`], in a fresh namespace.
pub fn redis_builder() -> cache_core::CacheBuilder {
    let builder = cache_core::Cache::builder().namespace(unique_namespace());
    match topology() {
        Topology::Single => builder.url(redis_url()),
        Topology::Cluster => builder.cluster_nodes(shared_cluster().urls()),
        Topology::Sentinel => builder.sentinel(shared_sentinel().sentinel_urls(), SENTINEL_MASTER),
    }
}

/// A cache on the selected [`topology`] (the [`shared_server`] by default), in a fresh
/// namespace.
pub fn redis_cache() -> cache_core::Cache {
    redis_builder()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a cache on the test topology: {e}"))
}

/// A cache on the single server at `url` (such as [`RedisServer::url`]), in a fresh namespace.
pub fn redis_cache_at(url: &str) -> cache_core::Cache {
    let namespace = unique_namespace();
    cache_core::Cache::builder()
        .url(url)
        .namespace(namespace.as_str())
        .build()
        .unwrap_or_else(|e| panic!("cannot build a cache on `{url}`: {e}"))
}

/// A builder on the single server at `url` (which may be down, or a port nothing listens
/// on), in a fresh namespace, that gives up quickly: 300 ms connect and command timeouts,
/// for the outage tests.
pub fn quick_failing_builder(url: &str) -> cache_core::CacheBuilder {
    cache_core::Cache::builder()
        .url(url)
        .namespace(unique_namespace())
        .connect_timeout(std::time::Duration::from_millis(300))
        .command_timeout(std::time::Duration::from_millis(300))
}

/// A raw connection to where [`redis_cache`] keeps its keys, bypassing the cache: a
/// multiplexed connection to the server (or the Sentinels' primary), or a cluster connection
/// that routes each command by its key.
pub async fn raw_connection() -> RawConnection {
    match topology() {
        Topology::Single => RawConnection::Single(
            shared_server()
                .client()
                .get_multiplexed_async_connection()
                .await
                .unwrap_or_else(|e| panic!("a raw connection to redis-server: {e}")),
        ),
        Topology::Cluster => RawConnection::Cluster(
            redis::cluster::ClusterClient::new(shared_cluster().urls())
                .unwrap_or_else(|e| panic!("a cluster client: {e}"))
                .get_async_connection()
                .await
                .unwrap_or_else(|e| panic!("a raw connection to the cluster: {e}")),
        ),
        Topology::Sentinel => {
            let port = shared_sentinel()
                .current_primary_port()
                .unwrap_or_else(|| panic!("the sentinels name no primary"));
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                .unwrap_or_else(|e| panic!("a client of the primary: {e}"));
            RawConnection::Single(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap_or_else(|e| panic!("a raw connection to the primary: {e}")),
            )
        }
    }
}

/// A client with `CLIENT TRACKING` on, as `CLIENT LIST` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackingClient {
    pub id: String,
    /// Subscribed to a channel: an L1's tracking connection (the scopes' generations' is not).
    pub subscribed: bool,
}

/// The clients with tracking on at the server on `port`.
pub fn tracking_clients(port: u16) -> Vec<TrackingClient> {
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("a connection to port {port}: {e}"));
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut con)
        .unwrap_or_else(|e| panic!("CLIENT LIST: {e}"));
    clients
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('t')))
        })
        .filter_map(|l| {
            let id = l.split(' ').find_map(|f| f.strip_prefix("id="))?;
            Some(TrackingClient {
                id: id.to_owned(),
                subscribed: l.split(' ').any(|f| f == "sub=1"),
            })
        })
        .collect()
}

/// `CLIENT KILL`s the clients `ids` at the server on `port`; how many were killed.
pub fn kill_clients(port: u16, ids: &[String]) -> u64 {
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("a connection to port {port}: {e}"));
    ids.iter()
        .map(|id| {
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query::<u64>(&mut con)
                .unwrap_or_else(|e| panic!("CLIENT KILL ID {id}: {e}"))
        })
        .sum()
}

/// The pub/sub channels matching `pattern` that have a subscriber, on every server of the
/// selected [`topology`] (a cluster's classic pub/sub subscriptions live on the node the
/// subscriber connected to, so each node is asked).
pub async fn subscribed_channels(pattern: &str) -> Vec<String> {
    let urls = match topology() {
        Topology::Single => vec![redis_url()],
        Topology::Cluster => shared_cluster().urls(),
        Topology::Sentinel => {
            let port = shared_sentinel()
                .current_primary_port()
                .unwrap_or_else(|| panic!("the sentinels name no primary"));
            vec![format!("redis://127.0.0.1:{port}/")]
        }
    };
    let mut channels = Vec::new();
    for url in urls {
        let mut con = redis::Client::open(url.as_str())
            .and_then(|client| client.get_connection())
            .unwrap_or_else(|e| panic!("a connection to {url}: {e}"));
        let found: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(pattern)
            .query(&mut con)
            .unwrap_or_else(|e| panic!("PUBSUB CHANNELS on {url}: {e}"));
        channels.extend(found);
    }
    channels
}

/// What [`raw_connection`] returns: use it with `redis::cmd(..).query_async(&mut con)`.
#[derive(Clone)]
pub enum RawConnection {
    /// One server.
    Single(redis::aio::MultiplexedConnection),
    /// A cluster.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for RawConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RawConnection::Single(_) => "RawConnection::Single",
            RawConnection::Cluster(_) => "RawConnection::Cluster",
        })
    }
}

impl redis::aio::ConnectionLike for RawConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RawConnection::Single(c) => c.req_packed_command(cmd),
            RawConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RawConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RawConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RawConnection::Single(c) => c.get_db(),
            RawConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// One cache per backend, each in a fresh namespace: `("memory", ..)` and
/// `("redis", ..)` on the [`shared_server`]. Loop over them so that every
/// behaviour is checked on both.
pub async fn backends() -> Vec<(&'static str, cache_core::Cache)> {
    vec![("memory", memory_cache()), ("redis", redis_cache())]
}
