//! Issue 2, "Tests that must exist": the runtime on both backends (every operation, TTLs,
//! batches, scopes), adversarial keys, values that do not decode, and Redis unreachable or
//! restarted under the cache.
//!
//! Every behaviour runs on the memory and the Redis backend (`tests::backends()`), with the
//! backend's name in each assertion message; checks of what Redis stores (`PTTL`, `STRLEN`,
//! raw bytes, command counts) read the server directly.

use std::time::Duration;

use cache_core::{Cache, CacheBuilder};

/// How long a poll for something time-driven (an expiry, a reconnection) may take.
pub(crate) const POLL_LIMIT: Duration = Duration::from_secs(2);
/// How often such a poll looks.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(10);

/// Polls `$cond` (an expression that may `.await`) every [`POLL_EVERY`] until it is true,
/// failing with `$what` after [`POLL_LIMIT`].
macro_rules! eventually {
    ($what:expr, $cond:expr) => {{
        let deadline = std::time::Instant::now() + $crate::foundation::POLL_LIMIT;
        loop {
            if $cond {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: not within {:?}",
                $what,
                $crate::foundation::POLL_LIMIT
            );
            tokio::time::sleep($crate::foundation::POLL_EVERY).await;
        }
    }};
}

#[path = "foundation_faults.rs"]
mod faults;
#[path = "foundation_keys.rs"]
mod keys;
#[path = "foundation_ops.rs"]
mod ops;
#[path = "foundation_values.rs"]
mod values;

/// Both backends as `tests::backends()` gives them, but built from `configure(builder)`:
/// `("memory", ..)` and `("redis", ..)` on the shared server, each in a fresh namespace.
pub(crate) fn backends_with(
    configure: impl Fn(CacheBuilder) -> CacheBuilder,
) -> Vec<(&'static str, Cache)> {
    let memory = configure(Cache::builder().namespace(tests::unique_namespace()))
        .in_memory()
        .build()
        .expect("an in-memory cache builds");
    let redis = configure(tests::redis_builder())
        .build()
        .expect("a redis cache builds");
    vec![("memory", memory), ("redis", redis)]
}

/// A cache on `url` in a fresh namespace, with short connection bounds (fault tests).
pub(crate) fn cache_at(url: &str, connect_timeout: Duration) -> Cache {
    Cache::builder()
        .url(url)
        .namespace(tests::unique_namespace())
        .connect_timeout(connect_timeout)
        .build()
        .unwrap_or_else(|e| panic!("a cache on {url} builds without connecting: {e}"))
}

/// Raw commands on a Redis server, bypassing the cache.
pub(crate) struct Raw {
    con: tests::RawConnection,
}

impl Raw {
    /// On the test topology (where `tests::backends()` keeps its keys).
    pub(crate) async fn shared() -> Raw {
        Raw {
            con: tests::raw_connection().await,
        }
    }

    pub(crate) async fn on(client: &redis::Client) -> Raw {
        let con = client
            .get_multiplexed_async_connection()
            .await
            .expect("a raw connection to redis-server");
        Raw {
            con: tests::RawConnection::Single(con),
        }
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> T {
        cmd.query_async(&mut self.con)
            .await
            .unwrap_or_else(|e| panic!("raw redis command failed: {e}"))
    }

    pub(crate) async fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    pub(crate) async fn set(&mut self, key: &str, value: &[u8]) {
        self.query::<()>(redis::cmd("SET").arg(key).arg(value))
            .await
    }

    pub(crate) async fn pttl(&mut self, key: &str) -> i64 {
        self.query(redis::cmd("PTTL").arg(key)).await
    }

    pub(crate) async fn strlen(&mut self, key: &str) -> usize {
        self.query(redis::cmd("STRLEN").arg(key)).await
    }

    /// Every key starting with `prefix` (which must hold no glob characters).
    pub(crate) async fn keys_under(&mut self, prefix: &str) -> Vec<String> {
        assert!(
            !prefix.contains(['*', '?', '[', ']', '\\']),
            "prefix `{prefix}` holds glob characters"
        );
        let mut keys: Vec<String> = self
            .query(redis::cmd("KEYS").arg(format!("{prefix}*")))
            .await;
        keys.sort();
        keys
    }

    /// Clears the server's per-command counters.
    pub(crate) async fn reset_command_stats(&mut self) {
        self.query::<()>(redis::cmd("CONFIG").arg("RESETSTAT"))
            .await
    }

    /// Commands the server ran since [`reset_command_stats`](Self::reset_command_stats), as
    /// `(name, calls)`, sorted, leaving out connection bookkeeping and this client's own
    /// `INFO`/`CONFIG`.
    pub(crate) async fn command_calls(&mut self) -> Vec<(String, u64)> {
        let info: String = self.query(redis::cmd("INFO").arg("commandstats")).await;
        let mut calls: Vec<(String, u64)> = info
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let n = rest
                    .split(',')
                    .find_map(|field| field.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), n))
            })
            .filter(|(name, _)| {
                ![
                    "info", "config", "client", "hello", "select", "auth", "ping",
                    // The tracking connections' checks (engine/feed.rs).
                    "role",
                ]
                .iter()
                .any(|skip| name == skip || name.starts_with(&format!("{skip}|")))
            })
            .collect();
        calls.sort();
        calls
    }
}

/// `[(name, calls)]` as owned strings, to compare with [`Raw::command_calls`].
pub(crate) fn calls(expected: &[(&str, u64)]) -> Vec<(String, u64)> {
    expected
        .iter()
        .map(|(n, c)| ((*n).to_owned(), *c))
        .collect()
}
