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

mod error;
mod process;
mod server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub use error::HarnessError;
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

/// A cache on the [`shared_server`], in a fresh namespace.
pub fn redis_cache() -> cache_core::Cache {
    redis_cache_at(&redis_url())
}

/// A cache on the server at `url` (such as [`RedisServer::url`]), in a fresh namespace.
pub fn redis_cache_at(url: &str) -> cache_core::Cache {
    let namespace = unique_namespace();
    cache_core::Cache::builder()
        .url(url)
        .namespace(namespace.as_str())
        .build()
        .unwrap_or_else(|e| panic!("cannot build a cache on `{url}`: {e}"))
}

/// One cache per backend, each in a fresh namespace: `("memory", ..)` and
/// `("redis", ..)` on the [`shared_server`]. Loop over them so that every
/// behaviour is checked on both.
pub async fn backends() -> Vec<(&'static str, cache_core::Cache)> {
    vec![("memory", memory_cache()), ("redis", redis_cache())]
}
