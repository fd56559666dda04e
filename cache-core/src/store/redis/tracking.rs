//! The Redis backend's tracking connections, for the L1 and the scopes' generations
//! (ARCHITECTURE.md §4, "The L1 and server-assisted tracking"): opened per node that holds
//! keys, checked, and used as a barrier after a write. A child of redis.rs: it uses the
//! backend's connector and timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::RedisError;

use super::RedisBackend;
use crate::base::error::{Error, Result};

/// Tracking connections (see [`RedisBackend::track`]); dropping every clone closes them.
#[derive(Clone)]
pub(crate) struct Tracking {
    connections: Vec<redis::aio::MultiplexedConnection>,
    /// On a cluster, the primaries tracked (sorted), to notice a topology change.
    primaries: Vec<(String, u16)>,
    broken: Arc<AtomicBool>,
}

#[cfg(test)]
impl Tracking {
    /// No connection: for the unit tests of what holds one.
    pub(crate) fn none() -> Tracking {
        Tracking {
            connections: Vec::new(),
            primaries: Vec::new(),
            broken: Arc::new(AtomicBool::new(false)),
        }
    }
}

fn is_primary_role(role: &redis::Value) -> bool {
    match role {
        redis::Value::BulkString(b) => b.as_slice() == b"master",
        redis::Value::SimpleString(s) => s == "master",
        _ => false,
    }
}

impl RedisBackend {
    /// Turns server-assisted invalidation on (ARCHITECTURE.md §4, "The L1 and server-assisted
    /// tracking"): one RESP3 connection per node that holds keys (the server, Sentinel's
    /// primary now, every cluster primary), each with `CLIENT TRACKING on BCAST PREFIX
    /// <prefix>` and subscribed to `channel`, if any. Every change of a key under `prefix`
    /// by any client (expiry, eviction and `FLUSHDB` included) then arrives on `pushes` as an
    /// `invalidate` push, the channel's messages as `message` pushes, and a lost connection
    /// as a `Disconnection` push. Around the breaker, bounded by the connect and command
    /// timeouts.
    pub(crate) async fn track(
        &self,
        prefix: &str,
        channel: Option<&str>,
        pushes: impl redis::aio::AsyncPushSender,
    ) -> Result<Tracking> {
        let primaries = if self.cluster {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("NODES");
            let nodes: String = self.run_unguarded("CLUSTER NODES", cmd).await?;
            crate::store::cluster::all_primaries(&nodes)
        } else {
            Vec::new()
        };
        let connect =
            |e: RedisError| Error::from_redis("tracking connection", e, self.connect_timeout);
        let clients = tokio::time::timeout(
            self.connect_timeout,
            self.connector.tracking_clients(&primaries),
        )
        .await
        .map_err(|_| self.no_tracking_within())?
        .map_err(connect)?;
        let config = self.conn_config.clone().set_push_sender(pushes);
        // Raised by Sentinel's `+switch-master` (a demoted primary's connection stays up).
        let broken = Arc::new(AtomicBool::new(false));
        self.connector.track(&broken);
        let mut connections = Vec::with_capacity(clients.len());
        for client in clients {
            let mut conn = tokio::time::timeout(
                self.connect_timeout,
                client.get_multiplexed_async_connection_with_config(&config),
            )
            .await
            .map_err(|_| self.no_tracking_within())?
            .map_err(connect)?;
            let mut tracking = redis::cmd("CLIENT");
            tracking
                .arg("TRACKING")
                .arg("ON")
                .arg("BCAST")
                .arg("PREFIX")
                .arg(prefix);
            tracking.query_async::<()>(&mut conn).await.map_err(|e| {
                let refused = matches!(
                    e.kind(),
                    redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                );
                if !refused {
                    connect(e)
                } else {
                    Error::Config {
                        setting: "client tracking",
                        reason: format!(
                            "the server refused `CLIENT TRACKING` ({e}); the L1 near cache and the generations that make `clear` cheap to check need Redis 6 or newer (RESP3 and client tracking) and, with ACLs, `+client|tracking +subscribe`"
                        ),
                    }
                }
            })?;
            if let Some(channel) = channel {
                conn.subscribe(channel).await.map_err(connect)?;
            }
            connections.push(conn);
        }
        Ok(Tracking {
            connections,
            primaries,
            broken,
        })
    }

    fn no_tracking_within(&self) -> Error {
        Error::Connection {
            message: format!(
                "no tracking connection to {} within {:?}",
                self.display_url, self.connect_timeout
            ),
            source: None,
        }
    }

    /// A `PING` on every tracking connection, answered: Redis queued a change's push before
    /// the reply of the command that made it, so once this returns, the pushes of every
    /// write that returned before it was called have been handed to the push sender.
    pub(crate) async fn tracking_barrier(&self, tracking: &Tracking) -> bool {
        async fn ping(conn: &redis::aio::MultiplexedConnection) -> bool {
            // Answered within the command timeout (the connections' response timeout) or not.
            redis::cmd("PING")
                .query_async::<redis::Value>(&mut conn.clone())
                .await
                .is_ok()
        }
        match tracking.connections.as_slice() {
            // One server or Sentinel's primary: after every write of a lone writer.
            [conn] => ping(conn).await,
            connections => futures_util::future::join_all(connections.iter().map(ping))
                .await
                .into_iter()
                .all(|answered| answered),
        }
    }

    /// True while every tracking connection answers, as a primary, and (on a cluster) the
    /// primaries are still those tracked: otherwise a gap (a failover, a node added or lost).
    pub(crate) async fn tracking_intact(&self, tracking: &Tracking) -> bool {
        if tracking.broken.load(Ordering::Relaxed) {
            return false;
        }
        for conn in &tracking.connections {
            let role = redis::cmd("ROLE")
                .query_async::<redis::Value>(&mut conn.clone())
                .await;
            if !matches!(&role, Ok(redis::Value::Array(items)) if items.first().is_some_and(is_primary_role))
            {
                return false;
            }
        }
        if self.cluster {
            let Some(conn) = tracking.connections.first() else {
                return false;
            };
            let nodes = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut conn.clone())
                .await;
            match nodes {
                Ok(nodes) => {
                    return crate::store::cluster::all_primaries(&nodes) == tracking.primaries;
                }
                Err(_) => return false,
            }
        }
        true
    }
}
