//! The Redis backend: a bb8 pool of multiplexed connections.
//!
//! Two choices keep this as fast as one shared multiplexed connection:
//! - no `PING` on checkout (`test_on_check_out(false)`): a dead connection is noticed by the
//!   command that fails on it, which marks it broken so bb8 replaces it;
//! - requests never wait for an exclusive checkout: bb8 hands out a connection once, its
//!   multiplexed handle is kept in one of `pool_size` slots, and every request clones the
//!   handle of a slot, so concurrent requests pipeline on it. A slot goes back to bb8 only
//!   when its connection broke. Measured here at 64 concurrent requests, Redis reads ~9
//!   commands per socket read with one connection against ~2.5 with a checkout per request
//!   spread over four, which is most of the throughput.
//!
//! bb8-redis's own manager connects without timeouts and never reports a connection as
//! broken, so this module has its own `ManageConnection` with both.
//!
//! Every command passes [`RedisBackend::run`], [`run_pipe`](RedisBackend::run_pipe) or
//! [`run_script`](RedisBackend::run_script), where the circuit breaker (`breaker.rs`) admits
//! it and counts its outcome. This file holds the connections, those runners and the replay
//! of queued invalidations; the cache's commands are in `redis/commands.rs`, the tracking
//! connections in `redis/tracking.rs`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bb8_redis::bb8::{ErrorSink, ManageConnection, Pool, RunError};
use redis::{
    AsyncConnectionConfig, Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, RedisError, Script,
    ScriptInvocation,
};

use super::cluster::{AnyConnection, Connector};
use crate::base::error::{Error, Result};
use crate::base::settings::{Config, RedisTarget};
use crate::store::breaker::{Breaker, Invalidation};

mod commands;
mod tracking;
pub(crate) use tracking::Tracking;

/// A pooled multiplexed connection and the flag its users raise when it dies.
#[derive(Clone)]
pub(crate) struct Conn {
    inner: AnyConnection,
    broken: Arc<AtomicBool>,
}

pub(crate) struct Manager {
    connector: Arc<Connector>,
    config: AsyncConnectionConfig,
    /// Checks the server's settings on the first connection (advisor.rs).
    advisor: Arc<crate::base::advisor::Advisor>,
}

impl ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let mut inner = self.connector.connect(&self.config).await?;
        self.advisor.on_connect(&mut inner).await;
        let broken = Arc::new(AtomicBool::new(false));
        self.connector.track(&broken);
        Ok(Conn { inner, broken })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(&mut conn.inner).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken.load(Ordering::Relaxed)
    }
}

/// Keeps the last connection error so a checkout that times out can say why.
#[derive(Debug, Clone, Default)]
struct LastError(Arc<Mutex<Option<String>>>);

impl ErrorSink<RedisError> for LastError {
    fn sink(&self, error: RedisError) {
        tracing::debug!(%error, "redis connection attempt failed");
        if let Ok(mut last) = self.0.lock() {
            *last = Some(error.to_string());
        }
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<RedisError>> {
        Box::new(self.clone())
    }
}

/// A script of `src/scripts/`; those named with `tombstone` first get the prelude that
/// defines `is_tombstone(key)`.
macro_rules! script {
    ($name:literal) => {
        LazyLock::new(|| Script::new(include_str!(concat!("../scripts/", $name, ".lua"))))
    };
    (tombstone, $name:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("../scripts/tombstone.lua"),
                include_str!(concat!("../scripts/", $name, ".lua"))
            ))
        })
    };
}

static INVALIDATE: LazyLock<Script> = script!(tombstone, "invalidate");
static SET_IF_UNCHANGED: LazyLock<Script> = script!("set_if_unchanged");
const SET_IF_UNCHANGED_LUA: &str = include_str!("../scripts/set_if_unchanged.lua");
static EXISTS: LazyLock<Script> = script!(tombstone, "exists");
static PTTL: LazyLock<Script> = script!(tombstone, "pttl");
static PEXPIRE: LazyLock<Script> = script!(tombstone, "pexpire");
static INCR_OVER_TOMBSTONE: LazyLock<Script> = script!(tombstone, "incr_over_tombstone");
static CLEAR: LazyLock<Script> = script!("clear");

/// Milliseconds for `PX` / `PEXPIRE`, within what Redis accepts (see `limits`).
fn millis(d: Duration) -> u64 {
    crate::base::limits::millis(d)
}

pub(crate) struct RedisBackend {
    // Built on first use: bb8 spawns its reaper and connectors on the tokio runtime, and a
    // `Cache` may be built before one exists (in a `static`, say).
    pool: OnceLock<Pool<Manager>>,
    /// Handles in use, one per slot; `None` until first use or after a break.
    slots: Box<[RwLock<Option<Conn>>]>,
    next_slot: AtomicUsize,
    /// Makes connections for the target's topology (one server, cluster, Sentinel).
    connector: Arc<Connector>,
    /// Multi-key scripts and pipelines are split by hash slot on a cluster.
    cluster: bool,
    conn_config: AsyncConnectionConfig,
    last_error: LastError,
    pool_size: u32,
    min_idle: u32,
    connect_timeout: Duration,
    command_timeout: Duration,
    display_url: String,
    pub(crate) advisor: Arc<crate::base::advisor::Advisor>,
    breaker: Breaker,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.display_url)
            .field("pool_size", &self.pool_size)
            .field("state", &self.pool.get().map(|p| p.state()))
            .field("breaker", &self.breaker.state())
            .finish()
    }
}

impl RedisBackend {
    /// The backend of `target`, in an `Arc` whose `Weak` its breaker's recovery task holds.
    pub(crate) fn new(target: &RedisTarget, config: &Config) -> Result<Arc<Self>> {
        let info = target
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| Error::Config {
                setting: "REDIS_URL",
                reason: format!(
                    "`{}` is not a valid redis URL: {e}",
                    crate::base::settings::redact_url(&target.url)
                ),
            })?;
        let mut redis_settings = info.redis_settings().clone();
        if let Some(u) = &target.username {
            redis_settings = redis_settings.set_username(u);
        }
        if let Some(p) = &target.password {
            redis_settings = redis_settings.set_password(p);
        }
        let info = info.set_redis_settings(redis_settings);
        let client = open_client(info, target)?;
        let connector = Arc::new(Connector::new(client, target, config)?);
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout));
        Ok(Arc::new_cyclic(|home| RedisBackend {
            pool: OnceLock::new(),
            slots: (0..config.pool_size.max(1))
                .map(|_| RwLock::new(None))
                .collect(),
            next_slot: AtomicUsize::new(0),
            cluster: connector.is_cluster(),
            connector,
            conn_config,
            last_error: LastError::default(),
            pool_size: config.pool_size,
            min_idle: config.min_idle,
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
            advisor: Arc::new(crate::base::advisor::Advisor::new(
                crate::base::settings::redact_url(&target.url),
            )),
            display_url: crate::base::settings::redact_url(&target.url),
            breaker: Breaker::new(config, home.clone()),
        }))
    }

    /// The circuit breaker in front of every command.
    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    fn pool(&self) -> &Pool<Manager> {
        self.pool.get_or_init(|| {
            Pool::builder()
                .max_size(self.pool_size)
                .min_idle(Some(self.min_idle))
                .test_on_check_out(false)
                // The slots keep handles beyond bb8's sight: it must not retire them as idle.
                .idle_timeout(None)
                .max_lifetime(None)
                .connection_timeout(self.connect_timeout)
                .error_sink(Box::new(self.last_error.clone()))
                .build_unchecked(Manager {
                    connector: self.connector.clone(),
                    config: self.conn_config.clone(),
                    advisor: self.advisor.clone(),
                })
        })
    }

    /// A handle on a live multiplexed connection, from a slot; bb8 is asked only when the
    /// slot is empty or its connection broke.
    async fn conn(&self) -> Result<Conn> {
        let index = if self.slots.len() == 1 {
            0
        } else {
            self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len()
        };
        let slot = &self.slots[index];
        if let Ok(guard) = slot.read()
            && let Some(conn) = guard.as_ref().filter(|c| !c.broken.load(Ordering::Relaxed))
        {
            return Ok(conn.clone());
        }
        // Boxed: a checkout (bb8's wait for a connection) is rare, and its state would
        // otherwise be part of every command's future.
        let conn = Box::pin(self.checkout()).await?;
        if let Ok(mut guard) = slot.write() {
            *guard = Some(conn.clone());
        }
        Ok(conn)
    }

    /// A connection from bb8; the checkout ends before this returns.
    async fn checkout(&self) -> Result<Conn> {
        let pool = self.pool();
        // Each round discards one broken connection, so this ends within pool_size + 1 rounds.
        for _ in 0..=self.pool_size {
            let pooled = pool.get().await.map_err(|e| match e {
                RunError::User(e) => Error::from_redis("connect", e, self.connect_timeout),
                RunError::TimedOut => {
                    let last = self.last_error.0.lock().ok().and_then(|l| l.clone());
                    Error::Connection {
                        message: match last {
                            Some(reason) => format!("{} ({reason})", self.display_url),
                            None => format!(
                                "no connection to {} within {:?}",
                                self.display_url, self.connect_timeout
                            ),
                        },
                        source: None,
                    }
                }
            })?;
            if !pooled.broken.load(Ordering::Relaxed) {
                return Ok((*pooled).clone());
            }
        }
        Err(Error::Connection {
            message: format!("every pooled connection to {} is broken", self.display_url),
            source: None,
        })
    }

    /// Classifies a failure; a connection that died under a request is marked broken, so
    /// its slot refills and bb8 replaces it.
    fn failed(&self, conn: &Conn, operation: &'static str, e: RedisError) -> Error {
        // READONLY: a primary demoted by a failover; the next connection asks Sentinel again.
        if e.is_unrecoverable_error()
            || e.is_connection_dropped()
            || e.is_io_error()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        {
            conn.broken.store(true, Ordering::Relaxed);
        }
        Error::from_redis(operation, e, self.command_timeout)
    }

    /// Runs a command, if the circuit breaker lets it through ([`Error::CircuitOpen`] at once
    /// otherwise); its outcome counts for the breaker.
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        operation: &'static str,
        cmd: Cmd,
    ) -> Result<T> {
        if let Err(e) = self.breaker.admit(operation) {
            return Err(turned_away(e).await);
        }
        let result = self.run_unguarded(operation, cmd).await;
        self.breaker.record(&result);
        result
    }

    /// As [`run`](Self::run), for a pipeline.
    pub(crate) async fn run_pipe<T: FromRedisValue>(
        &self,
        operation: &'static str,
        pipe: Pipeline,
    ) -> Result<T> {
        if let Err(e) = self.breaker.admit(operation) {
            return Err(turned_away(e).await);
        }
        let result = self.pipe_unguarded(operation, pipe).await;
        self.breaker.record(&result);
        result
    }

    /// Runs a script (`EVALSHA`, loading it first if the server does not know it), as
    /// [`run`](Self::run).
    pub(crate) async fn run_script<T: FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T> {
        if let Err(e) = self.breaker.admit(operation) {
            return Err(turned_away(e).await);
        }
        let result = self.script_unguarded(operation, invocation).await;
        self.breaker.record(&result);
        result
    }

    // The recovery path (probe and replay) bypasses the breaker: it runs while it is open.

    async fn run_unguarded<T: FromRedisValue>(
        &self,
        operation: &'static str,
        cmd: Cmd,
    ) -> Result<T> {
        let mut conn = self.conn().await?;
        let result = cmd.query_async(&mut conn.inner).await;
        result.map_err(|e| self.failed(&conn, operation, e))
    }

    async fn pipe_unguarded<T: FromRedisValue>(
        &self,
        operation: &'static str,
        pipe: Pipeline,
    ) -> Result<T> {
        let mut conn = self.conn().await?;
        let result = pipe.query_async(&mut conn.inner).await;
        result.map_err(|e| self.failed(&conn, operation, e))
    }

    async fn script_unguarded<T: FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut conn = self.conn().await?;
        let result = invocation.invoke_async(&mut conn.inner).await;
        result.map_err(|e| self.failed(&conn, operation, e))
    }

    /// Where a keyspace-wide command (`SCAN`) must run to see every key: the one server
    /// (`None`), or each cluster primary that serves slots now, by address (`SCAN` has no key
    /// to route by, and a cluster connection would send it to one random node).
    pub(crate) async fn keyspace_nodes(&self) -> Result<Vec<Option<(String, u16)>>> {
        self.keyspace_nodes_via(true).await
    }

    /// [`keyspace_nodes`](Self::keyspace_nodes), through the breaker (`guarded`) or around
    /// it (its recovery task).
    async fn keyspace_nodes_via(&self, guarded: bool) -> Result<Vec<Option<(String, u16)>>> {
        if !self.cluster {
            return Ok(vec![None]);
        }
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("NODES");
        let nodes: String = if guarded {
            self.run("CLUSTER NODES", cmd).await?
        } else {
            self.run_unguarded("CLUSTER NODES", cmd).await?
        };
        Ok(super::cluster::serving_primaries(&nodes)
            .into_iter()
            .map(Some)
            .collect())
    }

    /// `cmd` on one node of [`keyspace_nodes`](Self::keyspace_nodes) (`None`: wherever
    /// commands go).
    pub(crate) async fn run_on<T: FromRedisValue>(
        &self,
        node: Option<&(String, u16)>,
        operation: &'static str,
        cmd: Cmd,
    ) -> Result<T> {
        let Some(node) = node else {
            return self.run(operation, cmd).await;
        };
        if let Err(e) = self.breaker.admit(operation) {
            return Err(turned_away(e).await);
        }
        let result = self.run_on_unguarded(node, operation, cmd).await;
        self.breaker.record(&result);
        result
    }

    async fn run_on_unguarded<T: FromRedisValue>(
        &self,
        (host, port): &(String, u16),
        operation: &'static str,
        cmd: Cmd,
    ) -> Result<T> {
        let conn = self.conn().await?;
        let AnyConnection::Cluster(mut cluster) = conn.inner.clone() else {
            return self.run_unguarded(operation, cmd).await;
        };
        let routing = redis::cluster_routing::RoutingInfo::SingleNode(
            redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            },
        );
        let result = cluster
            .route_command(cmd, routing)
            .await
            .and_then(|v| T::from_redis_value(v).map_err(Into::into));
        result.map_err(|e| self.failed(&conn, operation, e))
    }

    /// For `health()`: true on a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// For `health()`: the Sentinels' URLs and the primary's name, on a Sentinel topology.
    pub(crate) fn sentinels(&self) -> Option<(&[String], &str)> {
        self.connector.sentinels()
    }

    /// For `health()`: a `PING` to one cluster node by address on a connection of its own
    /// (connected within the connect timeout, answered within the command timeout), around
    /// the breaker (a dead replica must not open it). The `PING`'s round trip.
    pub(crate) async fn ping_node(&self, (host, port): &(String, u16)) -> Result<Duration> {
        let Some(client) = self.connector.node_client(host, *port) else {
            return Err(Error::Config {
                setting: "REDIS_CLUSTER_NODES",
                reason: format!("cannot address the node {host}:{port}"),
            });
        };
        let mut con = client
            .get_multiplexed_async_connection_with_config(&self.conn_config)
            .await
            .map_err(|e| Error::from_redis("connect", e, self.connect_timeout))?;
        let started = std::time::Instant::now();
        redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .map_err(|e| Error::from_redis("PING", e, self.command_timeout))?;
        Ok(started.elapsed())
    }

    /// The bound on one command's answer.
    pub(crate) fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// A dedicated pub/sub connection on this topology (see `Connector::pubsub`), bounded by
    /// the connect timeout. Not pooled: a feed keeps it for its lifetime.
    pub(crate) async fn pubsub(&self) -> Result<redis::aio::PubSub> {
        match tokio::time::timeout(self.connect_timeout, self.connector.pubsub()).await {
            Ok(result) => {
                result.map_err(|e| Error::from_redis("subscribe", e, self.connect_timeout))
            }
            Err(_) => Err(Error::Connection {
                message: format!(
                    "no pub/sub connection to {} within {:?}",
                    self.display_url, self.connect_timeout
                ),
                source: None,
            }),
        }
    }

    /// `(size, connections, idle)` of the pool, for health reports; no connection before the
    /// first use.
    pub(crate) fn pool_state(&self) -> (u32, u32, u32) {
        match self.pool.get().map(|p| p.state()) {
            Some(s) => (self.pool_size, s.connections, s.idle_connections),
            None => (self.pool_size, 0, 0),
        }
    }

    /// The bounds of connecting and of each command.
    pub(crate) fn timeouts(&self) -> (Duration, Duration) {
        (self.connect_timeout, self.command_timeout)
    }

    /// An invalidation (or a write) that failed with `e`: if Redis was unreachable, `queue`
    /// puts it in the breaker's recovery queue (and applies it to the fallback store). One
    /// the open breaker turned away, but queued after the breaker closed, missed the replay
    /// that preceded the closing: it is replayed here, before its caller hears back, so that
    /// the caller's next operation comes after it.
    pub(crate) async fn not_reached(&self, e: &Error, queue: impl FnOnce(&Breaker) -> bool) {
        if !e.is_unavailable() {
            return;
        }
        let closed_meanwhile = queue(&self.breaker);
        if closed_meanwhile && matches!(e, Error::CircuitOpen { .. }) {
            let _ = self.breaker.replay(self, true).await;
        } else if closed_meanwhile {
            // Failed with the breaker closed (a timeout: done or not, nobody knows):
            // replayed by the retry task, not left for a recovery that may never come.
            self.breaker.ensure_retry();
        }
    }

    /// The breaker's probe: a `PING` on a pooled connection (bb8 connects if it has none).
    pub(crate) async fn probe(&self) -> Result<()> {
        self.run_unguarded("PING", redis::cmd("PING")).await
    }

    /// Applies queued invalidations: through the breaker (`guarded`), or around it (the
    /// recovery task, while it is half-open).
    pub(crate) async fn replay(
        &self,
        items: &[(Invalidation, Duration)],
        guarded: bool,
    ) -> Result<()> {
        let mut tags = Vec::new();
        for (item, hold) in items {
            match item {
                Invalidation::Key(key) => {
                    self.replay_delete(std::slice::from_ref(key), *hold, guarded)
                        .await?
                }
                Invalidation::Tag(key) => tags.push(key.as_str()),
                Invalidation::Clear(key) => {
                    self.clear_via(key, guarded).await?;
                }
                Invalidation::Pattern(glob) => {
                    for node in self.keyspace_nodes_via(guarded).await? {
                        self.replay_pattern(node.as_ref(), glob, *hold, guarded)
                            .await?;
                    }
                }
            }
        }
        if tags.is_empty() {
            return Ok(());
        }
        for group in self.split(&tags) {
            let mut pipe = redis::pipe();
            for i in group {
                pipe.cmd("INCR").arg(tags[i]).ignore();
            }
            if guarded {
                self.run_pipe::<()>("INCR (tags)", pipe).await?;
            } else {
                self.pipe_unguarded::<()>("INCR (tags)", pipe).await?;
            }
        }
        Ok(())
    }

    /// Tombstones every key `SCAN MATCH glob` finds on `node` (`None`: the one server).
    async fn replay_pattern(
        &self,
        node: Option<&(String, u16)>,
        glob: &str,
        hold: Duration,
        guarded: bool,
    ) -> Result<()> {
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(glob)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = match (guarded, node) {
                (true, node) => self.run_on(node, "SCAN", scan).await?,
                (false, None) => self.run_unguarded("SCAN", scan).await?,
                (false, Some(node)) => self.run_on_unguarded(node, "SCAN", scan).await?,
            };
            for group in self.split(&keys).into_iter().filter(|g| !g.is_empty()) {
                let keys: Vec<String> = group.iter().map(|&i| keys[i].clone()).collect();
                self.replay_delete(&keys, hold, guarded).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn replay_delete(&self, keys: &[String], hold: Duration, guarded: bool) -> Result<()> {
        let mut invocation = INVALIDATE.prepare_invoke();
        invocation
            .key(keys)
            .arg(crate::base::codec::tombstone())
            .arg(millis(hold));
        if guarded {
            self.run_script::<u64>("delete", &invocation).await?;
        } else {
            self.script_unguarded::<u64>("delete", &invocation).await?;
        }
        Ok(())
    }
}

/// An operation the open breaker turned away. Nothing here awaits anything that is pending,
/// so a task looping over such calls (or over `#[cached]` calls the fallback store answers)
/// would never yield to the scheduler: each spends a unit of tokio's cooperative budget.
#[cold]
async fn turned_away(e: Error) -> Error {
    tokio::task::coop::consume_budget().await;
    e
}

#[cfg(feature = "tls")]
fn open_client(info: redis::ConnectionInfo, target: &RedisTarget) -> Result<redis::Client> {
    // rustls needs a process-wide crypto provider; keep the application's if it chose one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match &target.tls_ca {
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        ),
        None => redis::Client::open(info),
    };
    client.map_err(|e| Error::Config {
        setting: "REDIS_URL",
        reason: format!(
            "cannot use `{}`: {e}",
            crate::base::settings::redact_url(&target.url)
        ),
    })
}

#[cfg(not(feature = "tls"))]
fn open_client(info: redis::ConnectionInfo, target: &RedisTarget) -> Result<redis::Client> {
    if target.url.starts_with("rediss://") || target.tls_ca.is_some() {
        return Err(Error::Config {
            setting: "REDIS_URL",
            reason: format!(
                "`{}` asks for TLS, and cache-core was built without its `tls` feature",
                crate::base::settings::redact_url(&target.url)
            ),
        });
    }
    redis::Client::open(info).map_err(|e| Error::Config {
        setting: "REDIS_URL",
        reason: format!(
            "cannot use `{}`: {e}",
            crate::base::settings::redact_url(&target.url)
        ),
    })
}
