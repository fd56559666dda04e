//! `cache.health()`: what a readiness route or an operator needs to know, in one bounded call
//! that never fails.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::advisor::ServerInfo;
use crate::backend::Backend;
use crate::cache::Cache;
use crate::stats::StatsSnapshot;

/// Overall state of a cache, as [`Health::status`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum HealthStatus {
    /// Redis answered and nothing needs attention (or the embedded backend is in use).
    Ok,
    /// Redis answered, but the circuit breaker is not closed or memory is nearly full.
    Degraded,
    /// Redis did not answer within the bound: cached functions compute without the cache.
    Down,
}

/// Where values are served from, as [`Health::mode`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum HealthMode {
    /// The Redis backend.
    Redis,
    /// Redis is configured but the circuit breaker is open: the in-process fallback serves.
    Fallback,
    /// The embedded in-memory backend.
    Memory,
}

/// Figures of the Redis server (from `INFO`; `None` where the server did not say, e.g. an
/// ACL user without `INFO`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RedisHealth {
    /// `redis_version`.
    pub version: Option<String>,
    /// `used_memory`, in bytes.
    pub used_memory: Option<u64>,
    /// `maxmemory`, in bytes (0: no limit).
    pub maxmemory: Option<u64>,
    /// `maxmemory_policy` (the eviction policy).
    pub maxmemory_policy: Option<String>,
    /// `connected_clients`.
    pub connected_clients: Option<u64>,
}

/// The connection pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolHealth {
    /// Configured size (`CACHE_POOL_SIZE`).
    pub size: u32,
    /// Connections open.
    pub connections: u32,
    /// Of which idle in the pool (requests share the others' multiplexed handles).
    pub idle: u32,
}

/// The embedded backend's occupancy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MemoryHealth {
    /// Entries held.
    pub entries: u64,
    /// Bytes counted against the capacity (keys, values, bookkeeping).
    pub used_bytes: u64,
    /// The capacity (`CACHE_MEMORY_CAPACITY`).
    pub capacity_bytes: u64,
}

/// The circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BreakerHealth {
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// Milliseconds since the state last changed.
    pub since_change_ms: u64,
}

/// A health report: see [`Cache::health`]. Serializes to the JSON of the README's "Health"
/// section.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use cache_core::{HealthMode, HealthStatus};
/// let h = cache_core::Cache::in_memory().health().await;
/// assert_eq!((h.status, h.mode), (HealthStatus::Ok, HealthMode::Memory));
/// assert_eq!(h.http_status(), 200);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// Overall state.
    pub status: HealthStatus,
    /// Where values are served from.
    pub mode: HealthMode,
    /// The cache root's namespace.
    pub namespace: String,
    /// Round trip of a `PING`, in milliseconds (`None` on the embedded backend or when Redis
    /// did not answer).
    pub ping_ms: Option<f64>,
    /// How long the whole check took, in milliseconds.
    pub checked_in_ms: f64,
    /// Why Redis is down or degraded.
    pub error: Option<String>,
    /// The Redis server's figures (Redis backend only).
    pub redis: Option<RedisHealth>,
    /// The connection pool (Redis backend only).
    pub pool: Option<PoolHealth>,
    /// The embedded backend (memory mode only).
    pub memory: Option<MemoryHealth>,
    /// The circuit breaker (Redis backend only).
    pub breaker: Option<BreakerHealth>,
    /// What the startup advisor would change on the server (memory limit, eviction policy,
    /// version).
    pub warnings: Vec<String>,
    /// The cache's counters (the whole root).
    pub stats: StatsSnapshot,
    /// `stats.hits / (stats.hits + stats.misses)`.
    pub hit_ratio: f64,
}

impl Health {
    /// 200 unless down (503): what a readiness route answers. A service that runs fine on
    /// computed values while Redis is away may keep answering 200 instead.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// assert_eq!(cache_core::Cache::in_memory().health().await.http_status(), 200);
    /// # }
    /// ```
    pub fn http_status(&self) -> u16 {
        match self.status {
            HealthStatus::Down => 503,
            _ => 200,
        }
    }
}

/// Used memory from this fraction of `maxmemory` on is `degraded`.
const MEMORY_NEARLY_FULL: f64 = 0.95;

impl Cache {
    /// A health report, within the connect timeout plus the command timeout (see
    /// [`health_within`](Cache::health_within)). Never fails: a Redis that does not answer is
    /// a [`HealthStatus::Down`] report.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let health = cache_core::Cache::in_memory().health().await;
    /// let json = serde_json::to_value(&health).unwrap();
    /// assert_eq!(json["status"], "ok");
    /// assert_eq!(json["mode"], "memory");
    /// # }
    /// ```
    pub async fn health(&self) -> Health {
        let bound = match &self.shared.backend {
            Backend::Redis(r) => {
                let (connect, command) = r.timeouts();
                connect + command * 2
            }
            Backend::Memory(_) => Duration::from_secs(1),
        };
        self.health_within(bound).await
    }

    /// A health report within `bound` (`PING` and `INFO` together).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::HealthStatus;
    /// // nothing listens on port 1
    /// let cache = cache_core::Cache::builder().url("redis://127.0.0.1:1").build()?;
    /// let h = cache.health_within(Duration::from_millis(500)).await;
    /// assert_eq!(h.status, HealthStatus::Down);
    /// assert!(h.error.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn health_within(&self, bound: Duration) -> Health {
        let started = Instant::now();
        let stats = self.stats();
        let mut h = Health {
            status: HealthStatus::Ok,
            mode: HealthMode::Memory,
            namespace: self.shared.config.namespace.clone(),
            ping_ms: None,
            checked_in_ms: 0.0,
            error: None,
            redis: None,
            pool: None,
            memory: None,
            breaker: None,
            warnings: Vec::new(),
            stats,
            hit_ratio: stats.hit_ratio(),
        };
        match &self.shared.backend {
            Backend::Memory(m) => {
                let (entries, used_bytes) = m.usage();
                h.memory = Some(MemoryHealth {
                    entries,
                    used_bytes,
                    capacity_bytes: self.shared.config.memory_capacity,
                });
            }
            Backend::Redis(r) => {
                h.mode = HealthMode::Redis;
                h.breaker = self.breaker_health();
                if h.breaker.as_ref().is_some_and(|b| b.state == "open") {
                    h.mode = HealthMode::Fallback;
                }
                let probe = async {
                    let ping_started = Instant::now();
                    r.run::<String>("PING", redis::cmd("PING")).await?;
                    let ping = ping_started.elapsed();
                    // INFO may be refused (ACL) without the server being down.
                    let info = r.run::<redis::Value>("INFO", redis::cmd("INFO")).await;
                    crate::error::Result::Ok((ping, info))
                };
                match tokio::time::timeout(bound, probe).await {
                    Ok(Ok((ping, info))) => {
                        h.ping_ms = Some(ping.as_secs_f64() * 1e3);
                        let info = match info {
                            // a cluster answers for each node: the first one speaks here
                            Ok(reply) => crate::advisor::info_texts(reply)
                                .first()
                                .map(|text| ServerInfo::parse(text))
                                .unwrap_or_default(),
                            Err(e) => {
                                h.error = Some(format!("INFO: {e}"));
                                ServerInfo::default()
                            }
                        };
                        h.warnings = info.advice();
                        if let (Some(used), Some(max)) = (info.used_memory, info.maxmemory) {
                            if max > 0 && used as f64 >= max as f64 * MEMORY_NEARLY_FULL {
                                h.status = HealthStatus::Degraded;
                                h.error = Some(format!(
                                    "redis memory nearly full: used_memory {used} of maxmemory {max}"
                                ));
                            }
                        }
                        if h.breaker.as_ref().is_some_and(|b| b.state != "closed") {
                            h.status = HealthStatus::Degraded;
                        }
                        h.redis = Some(RedisHealth {
                            version: info.version,
                            used_memory: info.used_memory,
                            maxmemory: info.maxmemory,
                            maxmemory_policy: info.maxmemory_policy,
                            connected_clients: info.connected_clients,
                        });
                    }
                    Ok(Err(e)) => {
                        let e: crate::Error = e;
                        h.status = HealthStatus::Down;
                        h.error = Some(e.to_string());
                    }
                    Err(_) => {
                        h.status = HealthStatus::Down;
                        h.error = Some(format!("no answer from redis within {bound:?}"));
                    }
                }
                let (size, connections, idle) = r.pool_state();
                h.pool = Some(PoolHealth {
                    size,
                    connections,
                    idle,
                });
            }
        }
        h.checked_in_ms = started.elapsed().as_secs_f64() * 1e3;
        self.health_gauges(&h);
        h
    }

    /// The breaker's state (Redis backend only).
    fn breaker_health(&self) -> Option<BreakerHealth> {
        let breaker = self.breaker()?;
        Some(BreakerHealth {
            state: breaker.state().as_str().to_owned(),
            since_change_ms: u64::try_from(breaker.since_change().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// The report's figures as `metrics` gauges (feature `metrics`).
    fn health_gauges(&self, h: &Health) {
        let name = &self.shared.config.namespace;
        let set = |metric: &'static str, v: Option<f64>| {
            if let Some(v) = v {
                crate::metrics::gauge_set(metric, name, v);
            }
        };
        set(
            "cache_up",
            Some(if h.status == HealthStatus::Down {
                0.0
            } else {
                1.0
            }),
        );
        set("cache_ping_seconds", h.ping_ms.map(|ms| ms / 1e3));
        if let Some(r) = &h.redis {
            set(
                "cache_redis_used_memory_bytes",
                r.used_memory.map(|v| v as f64),
            );
            set("cache_redis_maxmemory_bytes", r.maxmemory.map(|v| v as f64));
            set(
                "cache_redis_connected_clients",
                r.connected_clients.map(|v| v as f64),
            );
        }
        if let Some(p) = &h.pool {
            set("cache_pool_connections", Some(p.connections.into()));
            set("cache_pool_idle_connections", Some(p.idle.into()));
        }
        if let Some(b) = &h.breaker {
            set(
                "cache_breaker_open",
                Some(if b.state == "open" { 1.0 } else { 0.0 }),
            );
        }
    }
}
