//! The startup advisor: on the first connection to Redis, one `INFO` tells whether the server
//! suits a cache, and a warning says what to set when it does not: no memory limit (the cache
//! grows until the host runs out of memory), `maxmemory-policy noeviction` (every write fails
//! once the limit is reached), or a server older than [`MIN_REDIS_VERSION`].
//!
//! It runs once per cache root, on the connection being established (no round trip is added
//! to operations), and [`Cache::health`](crate::Cache::health) reports the same findings.

use std::sync::atomic::{AtomicBool, Ordering};

use redis::aio::ConnectionLike;

/// The oldest Redis this runtime supports: ACL users (`AUTH user password`), scripts whose
/// writes are replicated as effects by default (those that read the server's clock before
/// writing), `UNLINK`, `MEMORY USAGE` and `CLIENT TRACKING` all need 6.0; the core operations
/// need `EVALSHA`, `SET .. PX .. NX`, `GETRANGE`, `PEXPIRE` and `PTTL` (2.6.12).
pub(crate) const MIN_REDIS_VERSION: (u32, u32, u32) = (6, 0, 0);

/// The figures of `INFO` the cache looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServerInfo {
    pub(crate) version: Option<String>,
    pub(crate) used_memory: Option<u64>,
    pub(crate) maxmemory: Option<u64>,
    pub(crate) maxmemory_policy: Option<String>,
    pub(crate) connected_clients: Option<u64>,
}

impl ServerInfo {
    pub(crate) fn parse(info: &str) -> ServerInfo {
        let mut out = ServerInfo::default();
        for line in info.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            match k {
                "redis_version" => out.version = Some(v.to_owned()),
                "used_memory" => out.used_memory = v.parse().ok(),
                "maxmemory" => out.maxmemory = v.parse().ok(),
                "maxmemory_policy" => out.maxmemory_policy = Some(v.to_owned()),
                "connected_clients" => out.connected_clients = v.parse().ok(),
                _ => {}
            }
        }
        out
    }

    /// What to change on this server, one sentence each.
    pub(crate) fn advice(&self) -> Vec<String> {
        let mut out = Vec::new();
        let noeviction = self.maxmemory_policy.as_deref() == Some("noeviction");
        match self.maxmemory {
            Some(0) => out.push(format!(
                "redis has no memory limit (maxmemory 0): the cache grows until the host runs out of memory; set `maxmemory` (e.g. `CONFIG SET maxmemory 1gb`){}",
                if noeviction {
                    " and an evicting `maxmemory-policy` (`CONFIG SET maxmemory-policy allkeys-lru`)"
                } else {
                    ""
                }
            )),
            Some(_) if noeviction => out.push(
                "redis evicts nothing (maxmemory-policy noeviction): once maxmemory is reached every cache write fails; set `CONFIG SET maxmemory-policy allkeys-lru` (or allkeys-lfu)".to_owned(),
            ),
            _ => {}
        }
        if let Some(v) = &self.version
            && parse_version(v).is_some_and(|v| v < MIN_REDIS_VERSION)
        {
            let (a, b, c) = MIN_REDIS_VERSION;
            out.push(format!(
                    "redis {v} is older than {a}.{b}.{c}, the oldest this cache supports (ACL users, scripts replicated as effects, UNLINK, MEMORY USAGE, CLIENT TRACKING); upgrade the server"
                ));
        }
        out
    }
}

/// The text of an `INFO` reply: one, or one per node when a cluster connection asked every
/// node.
pub(crate) fn info_texts(reply: redis::Value) -> Vec<String> {
    use redis::Value;
    match reply {
        Value::BulkString(b) => vec![String::from_utf8_lossy(&b).into_owned()],
        Value::SimpleString(s) => vec![s],
        Value::VerbatimString { text, .. } => vec![text],
        Value::Map(entries) => entries
            .into_iter()
            .flat_map(|(_, v)| info_texts(v))
            .collect(),
        Value::Array(items) => items.into_iter().flat_map(info_texts).collect(),
        _ => Vec::new(),
    }
}

/// `"7.0.15"` -> `(7, 0, 15)`.
pub(crate) fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Checks once per cache root, on the first connection.
#[derive(Debug)]
pub(crate) struct Advisor {
    done: AtomicBool,
    url: String,
}

impl Advisor {
    pub(crate) fn new(url: String) -> Advisor {
        Advisor {
            done: AtomicBool::new(false),
            url,
        }
    }

    /// On a connection just established: the first time, one `INFO` (bounded by the command
    /// timeout of the connection) and a warning per finding. A server that refuses `INFO`
    /// (an ACL user without it) is left alone.
    pub(crate) async fn on_connect(&self, conn: &mut (impl ConnectionLike + Send)) {
        if self.done.swap(true, Ordering::Relaxed) {
            return;
        }
        let info: redis::Value = match redis::cmd("INFO").query_async(conn).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, url = %self.url, "cache advisor: INFO refused, server settings not checked");
                return;
            }
        };
        let mut said = Vec::new();
        for text in info_texts(info) {
            for advice in ServerInfo::parse(&text).advice() {
                if !said.contains(&advice) {
                    tracing::warn!(url = %self.url, "cache advisor: {advice}");
                    said.push(advice);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_advice() {
        assert_eq!(parse_version("7.0.15"), Some((7, 0, 15)));
        assert_eq!(parse_version("6.2"), Some((6, 2, 0)));
        assert_eq!(parse_version("x"), None);
        let info = "# Server\r\nredis_version:5.0.7\r\n# Memory\r\nused_memory:1000\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\nconnected_clients:3\r\n";
        let s = ServerInfo::parse(info);
        assert_eq!(s.version.as_deref(), Some("5.0.7"));
        assert_eq!(
            (s.used_memory, s.maxmemory, s.connected_clients),
            (Some(1000), Some(0), Some(3))
        );
        let advice = s.advice();
        assert_eq!(advice.len(), 2, "{advice:?}");
        assert!(advice[0].contains("maxmemory") && advice[0].contains("allkeys-lru"));
        assert!(advice[1].contains("older than 6.0.0"));
        let fine =
            ServerInfo::parse("redis_version:7.2.0\nmaxmemory:100\nmaxmemory_policy:allkeys-lru\n");
        assert!(fine.advice().is_empty());
        let full =
            ServerInfo::parse("redis_version:7.2.0\nmaxmemory:100\nmaxmemory_policy:noeviction\n");
        assert!(full.advice()[0].contains("noeviction"));
    }
}
