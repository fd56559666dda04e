//! The three shapes a Redis deployment takes, behind one connection type: one server, a
//! Redis Cluster, or a primary resolved through Sentinel. `RedisBackend` keeps its slots,
//! timeouts and error handling for all three; only making a connection differs.
//!
//! - One server: a multiplexed connection, as before.
//! - Cluster: redis-rs's `cluster_async::ClusterConnection`, itself multiplexed over one
//!   connection per node, routing each command by its key's slot and following `MOVED` and
//!   `ASK`. Its retries are bounded here (the defaults wait minutes) and its timeouts are the
//!   cache's.
//! - Sentinel: redis-rs resolves the primary only when a connection is made and does not
//!   follow `+switch-master`, so a connection is dropped on `READONLY` (a demoted primary) or
//!   on disconnect, and the next one asks the Sentinels again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::base::error::{Error, Result};
use crate::base::settings::{Config, RedisTarget, Topology};

/// Attempts a cluster command gets when a node moved or failed over (the library's default,
/// 16, waits minutes under exponential backoff).
const CLUSTER_RETRIES: u32 = 3;

/// A live connection of any topology; cheap to clone (a handle on a multiplexer).
#[derive(Clone)]
pub(crate) enum AnyConnection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for AnyConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            AnyConnection::Single(c) => c.req_packed_command(cmd),
            AnyConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            AnyConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConnection::Single(c) => c.get_db(),
            AnyConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// Makes connections for one topology. One per cache root, behind an `Arc`: its size does not
/// matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Connector {
    Single(redis::Client),
    Cluster(ClusterClient, Vec<redis::Client>),
    Sentinel(Arc<SentinelConnector>),
}

/// A primary resolved through Sentinel, and a watcher of the Sentinels' `+switch-master`
/// announcements that drops every connection to the old primary as soon as one arrives (a
/// demoted primary keeps accepting writes until Sentinel's next look at it, up to 10 s later,
/// and those writes are lost when it resyncs).
pub(crate) struct SentinelConnector {
    /// The client keeps the Sentinels' addresses and rotates through them; the lock is held
    /// only while a connection is being made.
    client: tokio::sync::Mutex<SentinelClient>,
    sentinels: Vec<String>,
    master: String,
    /// The `broken` flags of the connections made, raised on a switch.
    made: std::sync::Mutex<Vec<Weak<AtomicBool>>>,
    watching: AtomicBool,
}

impl SentinelConnector {
    fn track(self: &Arc<Self>, broken: &Arc<AtomicBool>) {
        if let Ok(mut made) = self.made.lock() {
            made.retain(|w| w.strong_count() > 0);
            made.push(Arc::downgrade(broken));
        }
        if !self.watching.swap(true, Ordering::AcqRel) {
            let watcher = Arc::downgrade(self);
            tokio::spawn(watch_switches(watcher));
        }
    }

    /// Marks every connection made so far broken: the next request makes a new one, which
    /// asks the Sentinels where the primary is.
    fn drop_connections(&self) {
        if let Ok(made) = self.made.lock() {
            for flag in made.iter().filter_map(Weak::upgrade) {
                flag.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Subscribes to `+switch-master` on one Sentinel after another for as long as the connector
/// lives. A gap in the subscription may hide a switch, so every (re)subscription drops the
/// connections too; the `READONLY` check stays the safety net.
async fn watch_switches(connector: Weak<SentinelConnector>) {
    use futures_util::StreamExt;
    let mut turn = 0usize;
    loop {
        let Some(this) = connector.upgrade() else {
            return;
        };
        let url = this.sentinels[turn % this.sentinels.len()].clone();
        let master = this.master.clone();
        drop(this);
        turn += 1;
        let subscribed = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
            Ok(Ok(pubsub)) => {
                if turn > 1
                    && let Some(this) = connector.upgrade()
                {
                    this.drop_connections();
                }
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    // "<master name> <old ip> <old port> <new ip> <new port>"
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if payload.split(' ').next() == Some(master.as_str()) {
                        let Some(this) = connector.upgrade() else {
                            return;
                        };
                        tracing::info!(master = %master, switch = %payload, "sentinel: the primary changed; reconnecting");
                        this.drop_connections();
                    }
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "sentinel watcher: cannot subscribe"),
            Err(_) => tracing::debug!("sentinel watcher: subscription timed out"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Connector {
    /// `client` is the single-server client built from the target's URL (credentials and TLS
    /// applied); the other topologies build their own from the target.
    pub(crate) fn new(
        client: redis::Client,
        target: &RedisTarget,
        config: &Config,
    ) -> Result<Self> {
        let invalid = |setting: &'static str, e: redis::RedisError| Error::Config {
            setting,
            reason: format!("cannot use these nodes: {e}"),
        };
        match &target.topology {
            Topology::Single => Ok(Connector::Single(client)),
            Topology::Cluster(nodes) => {
                let mut builder = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(10)
                    .max_retry_wait(200)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.command_timeout);
                if let Some(u) = &target.username {
                    builder = builder.username(u);
                }
                if let Some(p) = &target.password {
                    builder = builder.password(p);
                }
                #[cfg(feature = "tls")]
                if let Some(pem) = &target.tls_ca {
                    builder = builder.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.clone()),
                    });
                }
                let cluster = builder
                    .build()
                    .map_err(|e| invalid("REDIS_CLUSTER_NODES", e))?;
                // Pub/sub goes to one node: a client per seed, with the credentials applied.
                let settings = client.get_connection_info().redis_settings().clone();
                let seeds = nodes
                    .iter()
                    .filter_map(|n| {
                        redis::IntoConnectionInfo::into_connection_info(n.as_str()).ok()
                    })
                    .filter_map(|info| {
                        redis::Client::open(info.set_redis_settings(settings.clone())).ok()
                    })
                    .collect();
                Ok(Connector::Cluster(cluster, seeds))
            }
            Topology::Sentinel { sentinels, master } => {
                let data_nodes = client.get_connection_info().redis_settings().clone();
                let tls = target
                    .url
                    .starts_with("rediss://")
                    .then_some(redis::TlsMode::Secure);
                let mut node_info =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(data_nodes);
                if let Some(tls) = tls {
                    node_info = node_info.set_tls_mode(tls);
                }
                SentinelClient::build(
                    sentinels.iter().map(String::as_str).collect(),
                    master.clone(),
                    Some(node_info),
                    SentinelServerType::Master,
                )
                .map(|client| {
                    Connector::Sentinel(Arc::new(SentinelConnector {
                        client: tokio::sync::Mutex::new(client),
                        sentinels: sentinels.clone(),
                        master: master.clone(),
                        made: std::sync::Mutex::new(Vec::new()),
                        watching: AtomicBool::new(false),
                    }))
                })
                .map_err(|e| invalid("REDIS_SENTINEL_URLS", e))
            }
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Connector::Cluster(..))
    }

    /// A client of one cluster node by address, with the seeds' credentials and TLS mode,
    /// for `health()`: the cluster connection holds no connection to replicas.
    pub(crate) fn node_client(&self, host: &str, port: u16) -> Option<redis::Client> {
        let Connector::Cluster(_, seeds) = self else {
            return None;
        };
        let info = seeds.first()?.get_connection_info().clone();
        let addr = match info.addr().clone() {
            redis::ConnectionAddr::Tcp(..) => redis::ConnectionAddr::Tcp(host.to_owned(), port),
            redis::ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => redis::ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure,
                tls_params,
            },
            _ => return None,
        };
        redis::Client::open(info.set_addr(addr)).ok()
    }

    /// The Sentinels' URLs and the primary's name (Sentinel topology only), for `health()`.
    pub(crate) fn sentinels(&self) -> Option<(&[String], &str)> {
        match self {
            Connector::Sentinel(s) => Some((&s.sentinels, &s.master)),
            _ => None,
        }
    }

    pub(crate) async fn connect(
        &self,
        config: &AsyncConnectionConfig,
    ) -> RedisResult<AnyConnection> {
        match self {
            Connector::Single(client) => client
                .get_multiplexed_async_connection_with_config(config)
                .await
                .map(AnyConnection::Single),
            Connector::Cluster(client, _) => client
                .get_async_connection()
                .await
                .map(AnyConnection::Cluster),
            Connector::Sentinel(sentinel) => sentinel
                .client
                .lock()
                .await
                .get_async_connection_with_config(config)
                .await
                .map(AnyConnection::Single),
        }
    }

    /// A pub/sub connection for feeds between instances (the L1's invalidations): to the
    /// server, to the primary Sentinel names, or to the first cluster seed that answers (a
    /// plain `PUBLISH` on a cluster reaches the subscribers of every node).
    pub(crate) async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        match self {
            Connector::Single(client) => client.get_async_pubsub().await,
            Connector::Sentinel(sentinel) => {
                let client = sentinel.client.lock().await.async_get_client().await?;
                client.get_async_pubsub().await
            }
            Connector::Cluster(_, seeds) => {
                let mut last = None;
                for seed in seeds {
                    match seed.get_async_pubsub().await {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "no cluster seed node",
                    ))
                }))
            }
        }
    }

    /// Clients for the L1's tracking connections (ARCHITECTURE.md §4, "The L1 and server-assisted
    /// tracking"), speaking RESP3 so that invalidations arrive as push messages: the server,
    /// the primary Sentinel names now, or each cluster primary in `primaries` (every node
    /// reports only the keys it holds).
    pub(crate) async fn tracking_clients(
        &self,
        primaries: &[(String, u16)],
    ) -> RedisResult<Vec<redis::Client>> {
        let resp3 = |client: &redis::Client| {
            let info = client.get_connection_info().clone();
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            redis::Client::open(info.set_redis_settings(settings))
        };
        match self {
            Connector::Single(client) => Ok(vec![resp3(client)?]),
            Connector::Sentinel(sentinel) => {
                let client = sentinel.client.lock().await.async_get_client().await?;
                Ok(vec![resp3(&client)?])
            }
            Connector::Cluster(..) => primaries
                .iter()
                .map(|(host, port)| {
                    let client = self.node_client(host, *port).ok_or_else(|| {
                        redis::RedisError::from((
                            redis::ErrorKind::InvalidClientConfig,
                            "cannot address a cluster primary",
                        ))
                    })?;
                    resp3(&client)
                })
                .collect(),
        }
    }

    /// Called with each new connection's `broken` flag, which a topology change may raise.
    pub(crate) fn track(&self, broken: &Arc<AtomicBool>) {
        if let Connector::Sentinel(sentinel) = self {
            sentinel.track(broken);
        }
    }
}

/// The primaries that serve slots now, from `CLUSTER NODES` (one line a node:
/// `id host:port@bus[,hostname] flags master ping pong epoch link slot...`), skipping failed
/// ones and primaries without slots.
pub(crate) fn serving_primaries(cluster_nodes: &str) -> Vec<(String, u16)> {
    cluster_nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let is_primary = flags.split(',').any(|f| f == "master");
            let failed = flags
                .split(',')
                .any(|f| f == "fail" || f == "fail?" || f == "noaddr");
            if !is_primary || failed || fields.len() <= 8 || fields.get(7) != Some(&"connected") {
                return None;
            }
            let addr = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// Every reachable primary in `CLUSTER NODES`, with or without slots: the nodes the L1 tracks
/// (a primary given slots later already reports the writes it takes).
pub(crate) fn all_primaries(cluster_nodes: &str) -> Vec<(String, u16)> {
    let mut primaries: Vec<(String, u16)> = cluster_nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let is_primary = flags.split(',').any(|f| f == "master");
            let failed = flags
                .split(',')
                .any(|f| f == "fail" || f == "fail?" || f == "noaddr");
            if !is_primary || failed || fields.get(7) != Some(&"connected") {
                return None;
            }
            let addr = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
        })
        .collect();
    primaries.sort();
    primaries
}

/// Indexes of `keys` grouped by hash slot, in first-seen order: what a multi-key script or a
/// pipeline must be split into on a cluster.
pub(crate) fn by_slot<K: AsRef<str>>(keys: &[K]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(redis::cluster_routing::Slot, Vec<usize>)> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let slot = redis::cluster_routing::Slot::for_key(k.as_ref().as_bytes());
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, group)) => group.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

#[cfg(test)]
mod tests {
    use super::{by_slot, serving_primaries};

    #[test]
    fn serving_primaries_are_read_from_cluster_nodes() {
        let nodes = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002,host2 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@31005 master,fail - 1426238316232 1426238315000 5 disconnected 0-5460
824f 127.0.0.1:30006@31006 master - 0 1426238317741 6 connected
e7d1 [::1]:30001@31001 myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(
            serving_primaries(nodes),
            vec![
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30003),
                ("::1".to_owned(), 30001)
            ]
        );
    }

    #[test]
    fn keys_sharing_a_hash_tag_share_a_group() {
        let keys = ["{a}:1", "b", "{a}:2", "c", "{a}"];
        let groups = by_slot(&keys);
        let with_a = groups.iter().find(|g| g.contains(&0)).expect("grouped");
        assert_eq!(with_a, &vec![0, 2, 4]);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), keys.len());
    }
}
