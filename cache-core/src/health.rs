//! [`Cache::health`](crate::Cache::health): what a readiness route or an operator needs to
//! know, in one bounded call that never fails. The report ([`Health`]) serializes to JSON;
//! the guide's [operations](crate::guide::operations) chapter shows it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use cache_core::health::HealthStatus;
//! let health = cache_core::Cache::in_memory().health().await;
//! assert_eq!(health.status, HealthStatus::Ok);
//! # }
//! ```

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::base::advisor::ServerInfo;
use crate::base::stats::StatsSnapshot;
use crate::engine::Handle;
use crate::store::Backend;
use crate::store::redis::RedisBackend;

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

/// The shape of the Redis deployment, as [`Health::topology`] reports it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // `None` on the embedded backend; `single`, `cluster` or `sentinel` on Redis.
/// assert_eq!(cache_core::Cache::in_memory().health().await.topology, None);
/// let json = serde_json::to_value(cache_core::health::HealthTopology::Cluster).unwrap();
/// assert_eq!(json, "cluster");
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum HealthTopology {
    /// One Redis server.
    Single,
    /// A Redis Cluster: [`Health::nodes`] lists every node.
    Cluster,
    /// A primary resolved through Sentinel: [`Health::sentinel`] says which.
    Sentinel,
}

/// What a node does, as [`NodeHealth::role`] reports it.
///
/// ```
/// let json = serde_json::to_value(cache_core::health::NodeRole::Replica).unwrap();
/// assert_eq!(json, "replica");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NodeRole {
    /// Takes writes (on a cluster: serves hash slots, or is a primary without slots).
    Primary,
    /// Copies a primary, and takes over if it fails.
    Replica,
}

/// One node of a Redis Cluster or Sentinel deployment (see [`Health::nodes`]).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// use cache_core::{Cache, health::NodeRole};
/// let cache = Cache::builder().cluster_nodes(["redis://127.0.0.1:7000"]).build()?;
/// for node in cache.health().await.nodes {
///     if !node.reachable {
///         eprintln!("{} ({:?}) does not answer: {:?}", node.address, node.role, node.error);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct NodeHealth {
    /// `host:port`, as the deployment announces it.
    pub address: String,
    /// Primary or replica.
    pub role: NodeRole,
    /// A replica's primary (`host:port`), when known.
    pub primary: Option<String>,
    /// Hash slots a cluster primary serves (`None` off a cluster and for replicas).
    pub slots: Option<u32>,
    /// The node answered: a `PING` on a cluster; on Sentinel, the primary answered the
    /// cache's `PING` and a replica is not reported down or disconnected by the Sentinels.
    pub reachable: bool,
    /// Round trip of the `PING`, in milliseconds (`None` if not pinged or not reachable).
    pub ping_ms: Option<f64>,
    /// Why the node is not reachable, or flags worth knowing (`fail`, `s_down`, ...).
    pub error: Option<String>,
}

/// One Sentinel (see [`SentinelHealth::sentinels`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SentinelNodeHealth {
    /// The URL configured, password redacted.
    pub address: String,
    /// It answered a `PING`.
    pub reachable: bool,
    /// Round trip of the `PING` (connection included), in milliseconds.
    pub ping_ms: Option<f64>,
    /// Why it is not reachable.
    pub error: Option<String>,
}

/// The Sentinel side of a Sentinel deployment (see [`Health::sentinel`]).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
/// let cache = cache_core::Cache::builder()
///     .sentinel(["redis://127.0.0.1:26379"], "mymaster")
///     .build()?;
/// if let Some(s) = cache.health().await.sentinel {
///     let up = s.sentinels.iter().filter(|s| s.reachable).count();
///     println!("{} is at {:?}; {up} sentinels answer", s.master, s.primary);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SentinelHealth {
    /// The primary's name (`REDIS_SENTINEL_MASTER`).
    pub master: String,
    /// The primary's address (`host:port`) as the first Sentinel that answered names it.
    pub primary: Option<String>,
    /// Each Sentinel configured, and whether it answers.
    pub sentinels: Vec<SentinelNodeHealth>,
}

/// A health report: see [`Cache::health`](crate::Cache::health). Serializes to the JSON shown in [the guide](crate::guide::operations#health) ("Health"
/// section.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use cache_core::{HealthStatus, health::HealthMode};
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
    /// The deployment's shape (Redis backend only).
    pub topology: Option<HealthTopology>,
    /// Every node of a Redis Cluster (primaries and replicas) or of a Sentinel deployment
    /// (the primary and its replicas), with its role and whether it answers; empty on one
    /// server and the embedded backend.
    pub nodes: Vec<NodeHealth>,
    /// The Sentinels and the primary they name (Sentinel topology only).
    pub sentinel: Option<SentinelHealth>,
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

impl Handle {
    pub(crate) async fn health(&self) -> Health {
        let bound = match self.backend_ref() {
            Backend::Redis(r) => {
                let (connect, command) = r.timeouts();
                connect + command * 2
            }
            Backend::Memory(_) => Duration::from_secs(1),
        };
        self.health_within(bound).await
    }

    pub(crate) async fn health_within(&self, bound: Duration) -> Health {
        let started = Instant::now();
        let stats = self.stats();
        let mut h = Health {
            status: HealthStatus::Ok,
            mode: HealthMode::Memory,
            namespace: self.config().namespace.clone(),
            ping_ms: None,
            checked_in_ms: 0.0,
            error: None,
            redis: None,
            pool: None,
            memory: None,
            breaker: None,
            topology: None,
            nodes: Vec::new(),
            sentinel: None,
            warnings: Vec::new(),
            stats,
            hit_ratio: stats.hit_ratio(),
        };
        match self.backend_ref() {
            Backend::Memory(m) => {
                let (entries, used_bytes) = m.usage();
                h.memory = Some(MemoryHealth {
                    entries,
                    used_bytes,
                    capacity_bytes: self.config().memory_capacity,
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
                    crate::base::error::Result::Ok((ping, info))
                };
                match tokio::time::timeout(bound, probe).await {
                    Ok(Ok((ping, info))) => {
                        h.ping_ms = Some(ping.as_secs_f64() * 1e3);
                        let info = match info {
                            // a cluster answers for each node: the first one speaks here
                            Ok(reply) => crate::base::advisor::info_texts(reply)
                                .first()
                                .map(|text| ServerInfo::parse(text))
                                .unwrap_or_default(),
                            Err(e) => {
                                h.error = Some(format!("INFO: {e}"));
                                ServerInfo::default()
                            }
                        };
                        h.warnings = info.advice();
                        if let (Some(used), Some(max)) = (info.used_memory, info.maxmemory)
                            && max > 0
                            && used as f64 >= max as f64 * MEMORY_NEARLY_FULL
                        {
                            h.status = HealthStatus::Degraded;
                            h.error = Some(format!(
                                "redis memory nearly full: used_memory {used} of maxmemory {max}"
                            ));
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
                        let e: crate::base::error::Error = e;
                        h.status = HealthStatus::Down;
                        h.error = Some(e.to_string());
                    }
                    Err(_) => {
                        h.status = HealthStatus::Down;
                        h.error = Some(format!("no answer from redis within {bound:?}"));
                    }
                }
                // The deployment's nodes, within what is left of the bound.
                let left = bound.saturating_sub(started.elapsed());
                let primary_ping = h.ping_ms;
                h.topology = Some(if r.is_cluster() {
                    HealthTopology::Cluster
                } else if r.sentinels().is_some() {
                    HealthTopology::Sentinel
                } else {
                    HealthTopology::Single
                });
                if r.is_cluster() {
                    match tokio::time::timeout(left, cluster_nodes(r)).await {
                        Ok(Ok(nodes)) => h.nodes = nodes,
                        Ok(Err(e)) => note(&mut h.error, format!("CLUSTER NODES: {e}")),
                        Err(_) => note(&mut h.error, "the cluster's nodes not listed in time"),
                    }
                    if h.nodes.iter().any(|n| !n.reachable) && h.status == HealthStatus::Ok {
                        h.status = HealthStatus::Degraded;
                        note(&mut h.error, "a cluster node does not answer");
                    }
                } else if let Some((urls, master)) = r.sentinels() {
                    let (sentinel, nodes) =
                        sentinel_view(urls, master, primary_ping, left.min(r.timeouts().0)).await;
                    h.sentinel = Some(sentinel);
                    h.nodes = nodes;
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
        let name = &self.config().namespace;
        let set = |metric: &'static str, v: Option<f64>| {
            if let Some(v) = v {
                crate::base::metrics::gauge_set(metric, name, v);
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

/// Appends `what` to a report's `error`.
fn note(error: &mut Option<String>, what: impl Into<String>) {
    let what = what.into();
    *error = Some(match error.take() {
        Some(before) => format!("{before}; {what}"),
        None => what,
    });
}

/// Every node of the cluster, from `CLUSTER NODES` (any node's view), each pinged by address
/// at the same time.
async fn cluster_nodes(r: &RedisBackend) -> crate::base::error::Result<Vec<NodeHealth>> {
    // No key to route by: a random node answers, maybe one that just failed; another try
    // goes elsewhere.
    let mut tries = 0;
    let text: String = loop {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("NODES");
        match r.run("CLUSTER NODES", cmd).await {
            Ok(text) => break text,
            Err(e) if tries < 2 && !matches!(e, crate::base::error::Error::CircuitOpen { .. }) => {
                tries += 1
            }
            Err(e) => return Err(e),
        }
    };
    let mut nodes = parse_cluster_nodes(&text);
    let pings = nodes.iter().map(|(_, addr, _)| async move {
        match addr {
            Some(addr) => r.ping_node(addr).await.map(Some),
            None => Ok(None),
        }
    });
    let pings = futures_util::future::join_all(pings).await;
    for ((node, _, flagged), ping) in nodes.iter_mut().zip(pings) {
        match ping {
            Ok(Some(took)) => {
                node.reachable = true;
                node.ping_ms = Some(took.as_secs_f64() * 1e3);
            }
            Ok(None) => {}
            Err(e) => node.error = Some(e.to_string()),
        }
        if let Some(flags) = flagged {
            note(&mut node.error, format!("flagged {flags}"));
        }
    }
    Ok(nodes.into_iter().map(|(n, _, _)| n).collect())
}

/// A node as `CLUSTER NODES` lists it: its report (not pinged yet), the address to ping, and
/// its worrying flags.
type ListedNode = (NodeHealth, Option<(String, u16)>, Option<String>);

/// The nodes of `CLUSTER NODES` (one line a node: `id host:port@bus[,hostname] flags primary
/// ping pong epoch link slot...`): each with its address to ping (none for a node without
/// one) and its worrying flags (`fail`, `fail?`, `noaddr`, `handshake`), primaries first.
fn parse_cluster_nodes(text: &str) -> Vec<ListedNode> {
    let mut by_id = std::collections::HashMap::new();
    let mut rows = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            continue;
        }
        let address = fields[1].split(['@', ',']).next().unwrap_or_default();
        let ping_addr = address.rsplit_once(':').and_then(|(host, port)| {
            let host = host.trim_matches(['[', ']']);
            (!host.is_empty()).then(|| (host.to_owned(), port.parse::<u16>().ok()))
        });
        let ping_addr = match ping_addr {
            Some((host, Some(port))) if port != 0 => Some((host, port)),
            _ => None,
        };
        let flags: Vec<&str> = fields[2].split(',').collect();
        let primary = flags.contains(&"master");
        let worrying: Vec<&str> = flags
            .iter()
            .copied()
            .filter(|f| matches!(*f, "fail" | "fail?" | "noaddr" | "handshake"))
            .collect();
        let slots: u32 = fields[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .map(|s| match s.split_once('-') {
                Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                    (Ok(a), Ok(b)) if b >= a => b - a + 1,
                    _ => 0,
                },
                None => u32::from(s.parse::<u32>().is_ok()),
            })
            .sum();
        by_id.insert(fields[0].to_owned(), address.to_owned());
        rows.push((
            NodeHealth {
                address: address.to_owned(),
                role: if primary {
                    NodeRole::Primary
                } else {
                    NodeRole::Replica
                },
                primary: (!primary && fields[3] != "-").then(|| fields[3].to_owned()),
                slots: primary.then_some(slots),
                reachable: false,
                ping_ms: None,
                error: None,
            },
            ping_addr,
            (!worrying.is_empty()).then(|| worrying.join(",")),
        ));
    }
    for (node, _, _) in rows.iter_mut() {
        // The primary's id becomes its address.
        node.primary = node.primary.take().and_then(|id| by_id.get(&id).cloned());
    }
    rows.sort_by(|a, b| {
        (a.0.role != NodeRole::Primary, &a.0.address)
            .cmp(&(b.0.role != NodeRole::Primary, &b.0.address))
    });
    rows
}

/// The Sentinels (each pinged, at the same time), the primary the first that answers names,
/// and its replicas as the Sentinels see them. The primary's reachability is the cache's own
/// `PING` (`primary_ping`).
async fn sentinel_view(
    urls: &[String],
    master: &str,
    primary_ping: Option<f64>,
    bound: Duration,
) -> (SentinelHealth, Vec<NodeHealth>) {
    let pings = urls.iter().map(|url| async move {
        let started = Instant::now();
        let connected = tokio::time::timeout(bound, async {
            let client = redis::Client::open(url.as_str())?;
            let mut con = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut con).await?;
            Ok::<_, redis::RedisError>(con)
        })
        .await;
        let took = started.elapsed().as_secs_f64() * 1e3;
        let address = crate::base::settings::redact_url(url);
        match connected {
            Ok(Ok(con)) => (
                SentinelNodeHealth {
                    address,
                    reachable: true,
                    ping_ms: Some(took),
                    error: None,
                },
                Some(con),
            ),
            Ok(Err(e)) => (
                SentinelNodeHealth {
                    address,
                    reachable: false,
                    ping_ms: None,
                    error: Some(e.to_string()),
                },
                None,
            ),
            Err(_) => (
                SentinelNodeHealth {
                    address,
                    reachable: false,
                    ping_ms: None,
                    error: Some(format!("no answer within {bound:?}")),
                },
                None,
            ),
        }
    });
    let answered = futures_util::future::join_all(pings).await;
    let mut primary = None;
    let mut nodes = Vec::new();
    if let Some(mut con) = answered.iter().find_map(|(_, con)| con.clone()) {
        let asked = tokio::time::timeout(bound, async {
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(master)
                .query_async(&mut con)
                .await?;
            let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg(master)
                .query_async(&mut con)
                .await?;
            Ok::<_, redis::RedisError>((addr, replicas))
        })
        .await;
        if let Ok(Ok((addr, replicas))) = asked {
            primary = addr.map(|(host, port)| format!("{host}:{port}"));
            if let Some(address) = &primary {
                nodes.push(NodeHealth {
                    address: address.clone(),
                    role: NodeRole::Primary,
                    primary: None,
                    slots: None,
                    reachable: primary_ping.is_some(),
                    ping_ms: primary_ping,
                    error: None,
                });
            }
            for r in replicas {
                let address = match (r.get("ip"), r.get("port")) {
                    (Some(ip), Some(port)) => format!("{ip}:{port}"),
                    _ => r.get("name").cloned().unwrap_or_default(),
                };
                let flags = r.get("flags").cloned().unwrap_or_default();
                let down = flags
                    .split(',')
                    .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
                nodes.push(NodeHealth {
                    address,
                    role: NodeRole::Replica,
                    primary: primary.clone(),
                    slots: None,
                    reachable: !down,
                    ping_ms: None,
                    error: down.then(|| format!("flagged {flags} by the sentinels")),
                });
            }
        }
    }
    let sentinel = SentinelHealth {
        master: master.to_owned(),
        primary,
        sentinels: answered.into_iter().map(|(s, _)| s).collect(),
    };
    (sentinel, nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_listed_with_roles_slots_and_primaries() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002,host2 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383 [10923->-67ed]
6ec2 127.0.0.1:30005@31005 master,fail - 1426238316232 1426238315000 5 disconnected
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 7
";
        let rows = parse_cluster_nodes(text);
        let got: Vec<_> = rows
            .iter()
            .map(|(n, _, f)| {
                (
                    n.address.as_str(),
                    n.role,
                    n.slots,
                    n.primary.as_deref(),
                    f.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("127.0.0.1:30001", NodeRole::Primary, Some(5462), None, None),
                ("127.0.0.1:30002", NodeRole::Primary, Some(5462), None, None),
                ("127.0.0.1:30003", NodeRole::Primary, Some(5461), None, None),
                (
                    "127.0.0.1:30005",
                    NodeRole::Primary,
                    Some(0),
                    None,
                    Some("fail")
                ),
                (
                    "127.0.0.1:30004",
                    NodeRole::Replica,
                    None,
                    Some("127.0.0.1:30001"),
                    None
                ),
            ]
        );
        assert_eq!(rows[0].1, Some(("127.0.0.1".to_owned(), 30001)));
    }
}
