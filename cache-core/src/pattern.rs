//! Invalidation by pattern: `SCAN MATCH` over the keyspace, and every key found that holds a
//! value replaced by a tombstone, as [`Cache::delete`](crate::Cache::delete) does (never `KEYS`, which blocks the
//! server for the whole keyspace).
//!
//! The glob is the handle's scope prefix, glob-escaped, followed by the caller's pattern, so
//! whatever the pattern holds (`*`, `?`, `[`, `\`, `:`), a key outside the scope cannot match:
//! a glob matches from its first byte, and the prefix is literal. Parts built with
//! [`key!`](crate::key!) or [`KeyPart`](crate::KeyPart) carry no glob character (they are
//! escaped as `%XX`), so user data inside a pattern matches only itself.
//!
//! The cache's own keys (tag versions, locks, limiters: a `:`-separated segment made of `~`
//! and lowercase letters, such as `~tag`) are skipped even when the glob matches them;
//! values stored under long keys that were hashed (`~h`) are data and are removed.
//!
//! Running computations: a key that holds something when the invalidation passes gets a
//! tombstone, so a computation that read it before does not store over it, in any process.
//! A key that held nothing then cannot be found by a scan; computations of such keys in this
//! process are stopped from storing by an in-process log of recent patterns (and in other
//! processes when the L1 invalidation feed delivers the pattern before they store).

use std::time::{Duration, Instant};

use crate::base::codec;
use crate::base::error::{Error, Result};
use crate::base::glob::glob_match;
use crate::engine::Handle;
use crate::store::Backend;
use crate::store::redis::RedisBackend;

/// Keys asked of each `SCAN` step (`COUNT`): large enough that round trips do not dominate,
/// small enough that one step stays well under a millisecond of server time.
const SCAN_COUNT: u32 = 2000;

impl Handle {
    pub(crate) async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        check_pattern(pattern)?;
        let prefix = &self.key_prefix();
        let glob = full_glob(prefix, pattern);
        let log = &self.pattern_log();
        // Recorded before the scan: a computation of a key the scan cannot see (it held
        // nothing yet) that stores after this returned is one the log stops.
        log.record(&glob, self.config().invalidation_hold);
        let removed = match self.backend_ref() {
            // One scan per node holding keys: the server, or each cluster primary (`SCAN`
            // has no key to route by).
            Backend::Redis(redis) if redis.is_cluster() => {
                invalidate_on_cluster(self, redis, prefix, &glob).await
            }
            Backend::Redis(redis) => {
                let mut removed = 0;
                invalidate_on_node(self, redis, None, prefix, &glob, &mut removed)
                    .await
                    .map(|()| removed)
            }
            Backend::Memory(memory) => {
                let keys = memory.keys_where(|k| in_scope_match(prefix, &glob, k));
                let mut removed = 0;
                for chunk in keys.chunks(SCAN_COUNT as usize) {
                    self.delete_scanned(chunk.to_vec(), &mut removed).await?;
                }
                Ok(removed)
            }
        };
        let removed = match removed {
            Ok(removed) => removed,
            Err(e) => {
                self.root_stats().backend_error();
                tracing::warn!(pattern = %crate::base::key::shorten_for_display(&glob), error = %e, "invalidation by pattern failed");
                if let Backend::Redis(redis) = self.backend_ref() {
                    // Not lost when Redis is out of reach: queued on the breaker's recovery
                    // queue and replayed (a full scan of every primary) before it closes, as
                    // deletes and tag bumps are. Keys already tombstoned stay so.
                    redis.not_reached(&e, |b| b.queue_pattern(&glob)).await;
                    // This process's L1 drops what matches now (the others learn of it from
                    // their own gap: their breaker or feed saw the same outage).
                    crate::engine::local::pattern_here(self, &glob);
                }
                return Err(e);
            }
        };
        crate::engine::local::after_pattern(self, &glob).await;
        Ok(removed)
    }

    /// Tombstones for keys a scan found (the same step as [`Cache::delete`](crate::Cache::delete)), counting into
    /// `removed` the keys that held a value, those of the slots that succeeded included when
    /// another slot's delete failed (a failover is under way: the caller scans again).
    async fn delete_scanned(&self, keys: Vec<String>, removed: &mut u64) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let hold = self.config().invalidation_hold;
        let tombstone = codec::tombstone();
        let backend = self.backend_ref();
        let groups: Vec<Vec<String>> = match backend {
            Backend::Redis(redis) if redis.is_cluster() => crate::store::cluster::by_slot(&keys)
                .into_iter()
                .map(|g| g.into_iter().map(|i| keys[i].clone()).collect())
                .collect(),
            _ => vec![keys],
        };
        let outcomes = futures_util::future::join_all(
            groups.iter().map(|g| backend.delete(g, &tombstone, hold)),
        )
        .await;
        let mut failed = None;
        for outcome in outcomes {
            match outcome {
                Ok(n) => *removed += n,
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// How long a pattern invalidation on a cluster waits for a failed primary to be replaced
/// (the cluster's node timeout plus an election, with room), and how many times it restarts
/// node scans meanwhile.
const FAILOVER_WAIT: Duration = Duration::from_secs(20);
const SCAN_RESTARTS: u32 = 40;

/// The scan of every primary of a cluster, surviving a failover: a node whose scan (or the
/// deletes of what it found) fails for a reason a failover explains (connection lost, timeout,
/// `MOVED`, `READONLY`, `CLUSTERDOWN`, ...) is dropped, the primaries are asked again (of a
/// node that answered, if any), and every primary not scanned to the end yet, the failed
/// node's replacement included, is scanned from cursor 0. Bounded by [`FAILOVER_WAIT`] and
/// [`SCAN_RESTARTS`]; past them, a `Connection` error saying which node did not come back
/// (and the invalidation is queued for the breaker's replay, as any unreachable one).
async fn invalidate_on_cluster(
    cache: &Handle,
    redis: &RedisBackend,
    prefix: &str,
    glob: &str,
) -> Result<u64> {
    let started = Instant::now();
    let mut done: Vec<(String, u16)> = Vec::new();
    // Nodes to ask for the primaries: those that answered first, then the others known.
    let mut ask: Vec<(String, u16)> = Vec::new();
    let mut removed = 0;
    let mut restarts = 0u32;
    let mut backoff = Duration::from_millis(50);
    'resolve: loop {
        let primaries = match primaries(redis, &ask).await {
            Ok(primaries) => primaries,
            Err(e) if restartable(&e, restarts) && restarts < SCAN_RESTARTS => {
                restarts += 1;
                wait_before_restart(started, &mut backoff, "the primaries", &e).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let todo: Vec<(String, u16)> = primaries
            .iter()
            .filter(|n| !done.contains(n))
            .cloned()
            .collect();
        ask = done.clone();
        ask.extend(primaries.into_iter().filter(|n| !done.contains(n)));
        if todo.is_empty() {
            return Ok(removed);
        }
        for node in todo {
            match invalidate_on_node(cache, redis, Some(&node), prefix, glob, &mut removed).await {
                Ok(()) => {
                    ask.retain(|a| *a != node);
                    ask.insert(0, node.clone());
                    done.push(node);
                }
                Err(e) if restartable(&e, restarts) && restarts < SCAN_RESTARTS => {
                    restarts += 1;
                    ask.retain(|a| *a != node); // not the node that just failed
                    let what = format!("{}:{}", node.0, node.1);
                    tracing::info!(node = %what, error = %e, restarts, "invalidation by pattern: a primary failed during its scan; asking the cluster for its replacement");
                    wait_before_restart(started, &mut backoff, &what, &e).await?;
                    continue 'resolve;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The primaries serving slots now, asked of the nodes in `ask`, in order (a random node
/// could be the one that just failed), or of any node. An error while some slots have no
/// serving primary (one failed and its replica is not promoted yet): its keys could not be
/// scanned.
async fn primaries(redis: &RedisBackend, ask: &[(String, u16)]) -> Result<Vec<(String, u16)>> {
    let cluster_nodes = || {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("NODES");
        cmd
    };
    let mut text = None;
    for node in ask {
        if let Ok(t) = redis
            .run_on::<String>(Some(node), "CLUSTER NODES", cluster_nodes())
            .await
        {
            text = Some(t);
            break;
        }
    }
    let text = match text {
        Some(text) => text,
        None => redis.run("CLUSTER NODES", cluster_nodes()).await?,
    };
    let (primaries, slots) = serving(&text);
    if slots < SLOTS {
        return Err(Error::Connection {
            message: format!(
                "{} of {SLOTS} hash slots have no primary that answers (a failover is under way)",
                SLOTS - slots
            ),
            source: None,
        });
    }
    Ok(primaries)
}

/// Hash slots of a Redis Cluster.
const SLOTS: u32 = 16384;

/// The primaries that serve slots now, from `CLUSTER NODES` (as
/// `backend::cluster::serving_primaries`), and how many slots they serve together.
fn serving(cluster_nodes: &str) -> (Vec<(String, u16)>, u32) {
    let primaries = crate::store::cluster::serving_primaries(cluster_nodes);
    let mut slots = 0;
    for line in cluster_nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(addr) = fields.get(1).and_then(|a| a.split(['@', ',']).next()) else {
            continue;
        };
        let listed = addr.rsplit_once(':').is_some_and(|(host, port)| {
            let host = host.trim_matches(['[', ']']);
            primaries
                .iter()
                .any(|(h, p)| h == host && port.parse() == Ok(*p))
        });
        if !listed {
            continue;
        }
        slots += fields
            .iter()
            .skip(8)
            .filter(|s| !s.starts_with('['))
            .map(|s| match s.split_once('-') {
                Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                    (Ok(a), Ok(b)) if b >= a => b - a + 1,
                    _ => 0,
                },
                None => u32::from(s.parse::<u32>().is_ok()),
            })
            .sum::<u32>();
    }
    (primaries, slots)
}

/// True for a failure a failover explains. The open breaker is one only once this call saw
/// a node fail (the failures of a failover may open it; it closes when the cluster serves
/// again): met first, Redis is out of reach and the invalidation is queued at once.
fn restartable(e: &Error, restarts: u32) -> bool {
    match e {
        Error::Connection { .. } | Error::Timeout { .. } => true,
        Error::CircuitOpen { .. } => restarts > 0,
        Error::Command { source, .. } => {
            source.kind() == redis::ErrorKind::ClusterConnectionNotFound
                || matches!(
                    source.code(),
                    Some(
                        "MOVED"
                            | "ASK"
                            | "TRYAGAIN"
                            | "CLUSTERDOWN"
                            | "READONLY"
                            | "MASTERDOWN"
                            | "LOADING"
                    )
                )
        }
        _ => false,
    }
}

/// Waits before the next attempt (a bounded backoff: the cluster's failover has no signal to
/// wait on), or gives up with a clear error once [`FAILOVER_WAIT`] is spent.
async fn wait_before_restart(
    started: Instant,
    backoff: &mut Duration,
    what: &str,
    e: &Error,
) -> Result<()> {
    if started.elapsed() + *backoff > FAILOVER_WAIT {
        return Err(Error::Connection {
            message: format!(
                "invalidation by pattern: {what} did not come back, and no primary took over, within {FAILOVER_WAIT:?}: {e}"
            ),
            source: None,
        });
    }
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_millis(500));
    Ok(())
}

/// The scan of one Redis node (`None`: the one server): `SCAN MATCH glob COUNT n` until the
/// cursor comes back to 0, each page's keys (filtered) tombstoned while the next page is
/// scanned (on a cluster, the tombstones go by slot, wherever the keys live). The keys that
/// held a value are counted into `removed` as they go, also when a later step fails.
pub(crate) async fn invalidate_on_node(
    cache: &Handle,
    redis: &RedisBackend,
    node: Option<&(String, u16)>,
    prefix: &str,
    glob: &str,
    removed: &mut u64,
) -> Result<()> {
    let mut cursor = 0u64;
    let mut pending: Vec<String> = Vec::new();
    loop {
        let batch = std::mem::take(&mut pending);
        let (page, deleted) = tokio::join!(
            scan_page(redis, node, glob, cursor, SCAN_COUNT),
            cache.delete_scanned(batch, removed)
        );
        deleted?;
        let (next, keys) = page?;
        pending = keys
            .into_iter()
            .filter(|k| in_scope_match(prefix, glob, k))
            .collect();
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    cache.delete_scanned(pending, removed).await
}

/// One `SCAN` step on one node: the next cursor and the keys of this page.
pub(crate) async fn scan_page(
    redis: &RedisBackend,
    node: Option<&(String, u16)>,
    glob: &str,
    cursor: u64,
    count: u32,
) -> Result<(u64, Vec<String>)> {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(glob)
        .arg("COUNT")
        .arg(count);
    let (next, keys): (String, Vec<Vec<u8>>) = redis.run_on(node, "SCAN", cmd).await?;
    let next = next.parse().map_err(|_| Error::Command {
        operation: "SCAN",
        source: redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "SCAN returned a cursor that is not a number",
        )),
    })?;
    // Keys that are not UTF-8 were not written by this cache.
    let keys = keys
        .into_iter()
        .filter_map(|k| String::from_utf8(k).ok())
        .collect();
    Ok((next, keys))
}

/// A pattern the caller may give: not empty, not reaching for the reserved `~` keys, no
/// whitespace or control bytes (no key holds them, so such a pattern is a mistake).
fn check_pattern(pattern: &str) -> Result<()> {
    let reason = if pattern.is_empty() {
        "a pattern cannot be empty; `*` removes every key of the handle's scope"
    } else if pattern.starts_with('~') {
        "patterns starting with `~` would reach the cache's own bookkeeping, which they cannot"
    } else if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "patterns cannot contain whitespace or control characters (no key does)"
    } else {
        return Ok(());
    };
    Err(Error::invalid_key(&format!("pattern {pattern}"), reason))
}

/// The glob sent to Redis: the scope prefix with its glob characters escaped (it holds none
/// today: namespaces are checked and scopes escaped, but the glob must not depend on that),
/// then the caller's pattern.
pub(crate) fn full_glob(prefix: &str, pattern: &str) -> String {
    let mut glob = String::with_capacity(prefix.len() + pattern.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            glob.push('\\');
        }
        glob.push(c);
    }
    glob.push_str(pattern);
    glob
}

/// True for a key under `prefix` that `glob` matches and that is not one of the cache's own.
/// Checked on every key a scan returns, besides Redis's own match: the prefix check keeps a
/// scope's invalidation inside it whatever the server answers.
pub(crate) fn in_scope_match(prefix: &str, glob: &str, key: &str) -> bool {
    match key.strip_prefix(prefix) {
        Some(rest) => !is_reserved(rest) && glob_match(glob.as_bytes(), key.as_bytes()),
        None => false,
    }
}

/// True if the part of a key below a scope is one of the cache's own keys: a segment of `~`
/// and lowercase letters (`~tag`, `~lock`, ...), except `~h`, which holds values under long
/// keys that were hashed. A `None` key part renders as `~` alone, which is data.
fn is_reserved(rest: &str) -> bool {
    rest.split(':').any(|segment| {
        segment.strip_prefix('~').is_some_and(|mark| {
            !mark.is_empty() && mark != "h" && mark.bytes().all(|b| b.is_ascii_lowercase())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        glob_match(p.as_bytes(), s.as_bytes())
    }

    #[test]
    fn globs_match_as_redis_does() {
        assert!(m("*", ""));
        assert!(m("user:*", "user:1"));
        assert!(!m("user:*", "users:1"));
        assert!(m("u?er", "user"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("[abc]x", "bx"));
        assert!(!m("[^abc]x", "bx"));
        assert!(m("[a-c]x", "bx"));
        assert!(m("[c-a]x", "bx"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("[\\]]", "]"));
        assert!(m("a\\", "a\\") || !m("a\\", "a\\")); // a trailing `\` must not panic
        assert!(!m("[", "x"));
        assert!(!m("[a", "b"));
        assert!(m("*:1", "user:x:1"));
    }

    #[test]
    fn a_failed_primary_leaves_its_slots_uncovered() {
        let nodes = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383 [10923->-67ed]
e7d1 127.0.0.1:30001@31001 master,fail? - 0 0 1 connected 0-5460
";
        let (primaries, slots) = serving(nodes);
        assert_eq!(primaries.len(), 2);
        assert_eq!(slots, SLOTS - 5461);
        let healed = nodes.replace("master,fail?", "master");
        assert_eq!(serving(&healed).1, SLOTS);
    }

    #[test]
    fn the_prefix_is_literal_and_reserved_keys_are_skipped() {
        let glob = full_glob("cache:@7:", "*");
        assert!(in_scope_match("cache:@7:", &glob, "cache:@7:user:1"));
        assert!(!in_scope_match("cache:@7:", &glob, "cache:@8:user:1"));
        assert!(!in_scope_match("cache:@7:", &glob, "cache:@7:~tag:org"));
        assert!(!in_scope_match("cache:@7:", &glob, "cache:@7:ns:~lock:x"));
        assert!(in_scope_match("cache:@7:", &glob, "cache:@7:~h:#abc"));
        assert!(in_scope_match("cache:@7:", &glob, "cache:@7:user:~"));
        assert_eq!(full_glob("a*b:", "x"), "a\\*b:x");
        assert!(check_pattern("").is_err());
        assert!(check_pattern("~tag:*").is_err());
        assert!(check_pattern("a b").is_err());
    }
}
