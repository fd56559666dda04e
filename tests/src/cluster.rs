//! A real Redis Cluster on loopback: six `redis-server`s in cluster mode (three primaries,
//! three replicas), joined with `redis-cli --cluster create`, and a Sentinel setup (a primary,
//! a replica, three `redis-sentinel`s). Torn down on drop like every harness server.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::HarnessError;
use crate::server::{find_redis_server, free_port, RedisServer};

/// How long a cluster or Sentinel setup gets to become healthy.
pub const TOPOLOGY_TIMEOUT: Duration = Duration::from_secs(30);

/// The name Sentinel setups monitor their primary under.
pub const SENTINEL_MASTER: &str = "mymaster";

/// `redis-cli`, next to `redis-server` or on `PATH`.
///
/// ```
/// let cli = tests::find_redis_cli().expect("redis-cli is installed");
/// assert!(cli.is_file());
/// ```
pub fn find_redis_cli() -> Result<PathBuf, HarnessError> {
    let server = find_redis_server()?;
    let beside = server.with_file_name("redis-cli");
    if beside.is_file() {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-cli"))
        .find(|c| c.is_file())
        .ok_or_else(|| HarnessError::Topology {
            what:
                "redis-cli not found beside redis-server or on PATH (apt-get install redis-tools)"
                    .into(),
        })
}

/// One command on a node, over a fresh synchronous connection with short timeouts.
fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(1))?;
    con.set_read_timeout(Some(Duration::from_secs(2)))?;
    con.set_write_timeout(Some(Duration::from_secs(2)))?;
    cmd.query(&mut con)
}

fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// Polls `check` every 50 ms until it is true or `timeout` passes; the error says `what`,
/// with the last thing `check` reported.
fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool, String>,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Topology {
                what: format!("{what} within {timeout:?}; last: {last}"),
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Six cluster-mode servers: three primaries with one replica each.
///
/// ```no_run
/// let cluster = tests::RedisCluster::start();
/// assert_eq!(cluster.urls().len(), 6);
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the cluster and waits until every node reports `cluster_state:ok` and every
    /// replica is in sync; panics with the reason when it cannot.
    pub fn start() -> RedisCluster {
        Self::try_start().unwrap_or_else(|e| panic!("cannot start a redis cluster: {e}"))
    }

    /// [`start`](Self::start), returning why it could not.
    pub fn try_start() -> Result<RedisCluster, HarnessError> {
        let cli = find_redis_cli()?;
        let mut nodes = Vec::with_capacity(6);
        for _ in 0..6 {
            // The bus port defaults to port + 10000, past 65535 for high ephemeral ports.
            let bus = free_port()?;
            nodes.push(
                RedisServer::builder()
                    .arg("--cluster-enabled")
                    .arg("yes")
                    .arg("--cluster-config-file")
                    .arg("nodes.conf")
                    .arg("--cluster-node-timeout")
                    .arg("1500")
                    .arg("--cluster-port")
                    .arg(bus.to_string())
                    // A replica takes over even when it lost touch with its primary for a while.
                    .arg("--cluster-replica-validity-factor")
                    .arg("0")
                    .try_start()?,
            );
        }
        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null());
        let output = create
            .output()
            .map_err(|e| HarnessError::io("cannot run redis-cli --cluster create", e))?;
        if !output.status.success() {
            return Err(HarnessError::Topology {
                what: format!(
                    "redis-cli --cluster create failed ({}):\n{}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        let cluster = RedisCluster { nodes };
        cluster.wait_healthy(TOPOLOGY_TIMEOUT)?;
        Ok(cluster)
    }

    /// Waits until every running node says `cluster_state:ok` with all 16384 slots served,
    /// three primaries answer, and each has a replica whose link is up.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), HarnessError> {
        let ports: Vec<u16> = self.nodes.iter().map(RedisServer::port).collect();
        wait_until(timeout, "the cluster did not become healthy", || {
            let mut primaries_with_replica = 0;
            for &port in &ports {
                let info: String = query(port, &redis::cmd("CLUSTER").arg("INFO").to_owned())
                    .map_err(|e| format!("{port}: {e}"))?;
                if info_field(&info, "cluster_state").as_deref() != Some("ok")
                    || info_field(&info, "cluster_slots_ok").as_deref() != Some("16384")
                {
                    return Err(format!("{port}: {}", info.replace("\r\n", " ")));
                }
                let replication: String = query(port, redis::cmd("INFO").arg("replication"))
                    .map_err(|e| format!("{port}: {e}"))?;
                match info_field(&replication, "role").as_deref() {
                    Some("master") => {
                        if info_field(&replication, "connected_slaves").as_deref() == Some("1") {
                            primaries_with_replica += 1;
                        }
                    }
                    Some("slave") => {
                        if info_field(&replication, "master_link_status").as_deref() != Some("up") {
                            return Err(format!("{port}: replica link down"));
                        }
                    }
                    other => return Err(format!("{port}: role {other:?}")),
                }
            }
            Ok(primaries_with_replica == 3)
        })
    }

    /// `redis://127.0.0.1:<port>/` of every node, the seeds a client starts from.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One node, to kill, freeze or restart.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// Indexes of the nodes that are primaries now (by `ROLE`).
    pub fn primaries(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                query::<redis::Value>(n.port(), &redis::cmd("ROLE"))
                    .is_ok_and(|v| matches!(v, redis::Value::Array(items) if matches!(items.first(), Some(redis::Value::BulkString(r)) if r == b"master")))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Index of the primary serving `key`'s slot (asked of the nodes with `CLUSTER SHARDS`-free
    /// means: the node that answers `GET` without `MOVED`).
    pub fn primary_for(&self, key: &str) -> Option<usize> {
        self.primaries().into_iter().find(|&i| {
            query::<Option<Vec<u8>>>(self.nodes[i].port(), redis::cmd("GET").arg(key)).is_ok()
        })
    }
}

/// A Sentinel-managed primary: one primary, one replica, three Sentinels monitoring it as
/// [`SENTINEL_MASTER`] (quorum 2, down after 1 s).
///
/// ```no_run
/// let setup = tests::SentinelSetup::start();
/// assert_eq!(setup.sentinel_urls().len(), 3);
/// ```
#[derive(Debug)]
pub struct SentinelSetup {
    primary: RedisServer,
    replica: RedisServer,
    sentinels: Vec<RedisServer>,
}

impl SentinelSetup {
    /// Starts the servers and Sentinels and waits until every Sentinel knows the primary and
    /// the replica; panics with the reason when it cannot.
    pub fn start() -> SentinelSetup {
        Self::try_start().unwrap_or_else(|e| panic!("cannot start a sentinel setup: {e}"))
    }

    /// [`start`](Self::start), returning why it could not.
    pub fn try_start() -> Result<SentinelSetup, HarnessError> {
        let primary = RedisServer::try_start()?;
        let replica = RedisServer::builder()
            .arg("--replicaof")
            .arg("127.0.0.1")
            .arg(primary.port().to_string())
            .try_start()?;
        let config = format!(
            "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
             sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
             sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
            primary.port()
        );
        let mut sentinels = Vec::with_capacity(3);
        for _ in 0..3 {
            sentinels.push(
                RedisServer::builder()
                    .config_file(config.clone())
                    .sentinel()
                    .try_start()?,
            );
        }
        let setup = SentinelSetup {
            primary,
            replica,
            sentinels,
        };
        setup.wait_healthy(TOPOLOGY_TIMEOUT)?;
        Ok(setup)
    }

    /// Waits until every Sentinel sees the current primary with one replica and the other
    /// two Sentinels, and the replica's link is up.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), HarnessError> {
        wait_until(timeout, "the sentinel setup did not become healthy", || {
            for s in &self.sentinels {
                let master: Vec<(String, String)> = query::<redis::Value>(
                    s.port(),
                    redis::cmd("SENTINEL").arg("MASTER").arg(SENTINEL_MASTER),
                )
                .and_then(|v| redis::FromRedisValue::from_redis_value(v).map_err(Into::into))
                .map_err(|e| format!("sentinel {}: {e}", s.port()))?;
                let field = |name: &str| {
                    master
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str())
                };
                if field("num-slaves") != Some("1")
                    || field("num-other-sentinels") != Some("2")
                    || field("flags") != Some("master")
                {
                    return Err(format!("sentinel {}: {master:?}", s.port()));
                }
            }
            Ok(true)
        })
    }

    /// `redis://127.0.0.1:<port>/` of each Sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The server started as the primary (after a failover, the replica may be the primary).
    pub fn primary(&mut self) -> &mut RedisServer {
        &mut self.primary
    }

    /// The server started as the replica.
    pub fn replica(&mut self) -> &mut RedisServer {
        &mut self.replica
    }

    /// The port of the primary the Sentinels report now.
    pub fn current_primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let addr: Vec<String> = query(
                s.port(),
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(SENTINEL_MASTER),
            )
            .ok()?;
            addr.get(1)?.parse().ok()
        })
    }

    /// `SENTINEL FAILOVER` on the first Sentinel, then waits until the Sentinels report the
    /// other server as primary; returns its port.
    pub fn failover(&self, timeout: Duration) -> Result<u16, HarnessError> {
        let before = self.current_primary_port();
        query::<redis::Value>(
            self.sentinels[0].port(),
            redis::cmd("SENTINEL").arg("FAILOVER").arg(SENTINEL_MASTER),
        )
        .map_err(|e| HarnessError::Topology {
            what: format!("SENTINEL FAILOVER refused: {e}"),
        })?;
        let mut after = None;
        wait_until(
            timeout,
            "the sentinels did not report a new primary",
            || {
                after = self.current_primary_port().filter(|p| Some(*p) != before);
                let Some(port) = after else {
                    return Ok(false);
                };
                let role: redis::Value =
                    query(port, &redis::cmd("ROLE")).map_err(|e| e.to_string())?;
                Ok(
                    matches!(role, redis::Value::Array(items) if matches!(items.first(), Some(redis::Value::BulkString(r)) if r == b"master")),
                )
            },
        )?;
        after.ok_or_else(|| HarnessError::Topology {
            what: "no primary after failover".into(),
        })
    }
}
