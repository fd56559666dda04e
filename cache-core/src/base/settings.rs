//! The plain settings of a cache root (`Config`), as the builder (builder.rs, the front door)
//! makes them from code and the environment, and where Redis is (`Target`). Every setting has
//! a builder method and an environment variable; the guide's configuration chapter has the
//! table.

use std::time::Duration;

use crate::base::error::{Error, Result};

/// Where the values live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The embedded, in-process backend.
    Memory,
    /// A Redis server, as a `redis://` or `rediss://` URL.
    Redis(RedisTarget),
}

/// How the Redis servers are laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Topology {
    /// One server, at the target's URL.
    Single,
    /// A Redis Cluster, discovered from these seed nodes (the first is the target's URL).
    Cluster(Vec<String>),
    /// A primary resolved through these Sentinels under the `master` name.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RedisTarget {
    pub(crate) url: String,
    pub(crate) topology: Topology,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    /// PEM certificate(s) to trust instead of the platform's store, for `rediss://`.
    pub(crate) tls_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisTarget {
    // The password must never reach a log line, and URLs may embed one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &redact_url(&self.url))
            .field("topology", &self.topology_for_display())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca.as_ref().map(|pem| pem.len()))
            .finish()
    }
}

impl RedisTarget {
    fn topology_for_display(&self) -> String {
        let list = |urls: &[String]| {
            urls.iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(",")
        };
        match &self.topology {
            Topology::Single => "single".to_owned(),
            Topology::Cluster(nodes) => format!("cluster [{}]", list(nodes)),
            Topology::Sentinel { sentinels, master } => {
                format!("sentinel `{master}` [{}]", list(sentinels))
            }
        }
    }
}

/// The resolved settings of a [`Cache`](crate::Cache).
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) target: Target,
    pub(crate) namespace: String,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) pool_size: u32,
    pub(crate) min_idle: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) compression_threshold: usize,
    pub(crate) memory_capacity: u64,
    pub(crate) invalidation_hold: Duration,
    /// Largest stored value, in bytes (see `limits`).
    pub(crate) max_value_size: usize,
    /// Operations slower than this are logged (`CACHE_SLOW_OP`); see observe.rs.
    pub(crate) slow_op: Option<Duration>,
    /// Consecutive unavailability failures that open the circuit breaker; 0: never opens.
    pub(crate) breaker_failures: u32,
    /// How long the breaker stays open before a probe.
    pub(crate) breaker_open_for: Duration,
    /// Every read fetches its scopes' generations with its value (engine/clear.rs), rather
    /// than trusting those this process learned through tracking: a clear made by another
    /// instance is seen by the next read, not within the tracking's milliseconds.
    pub(crate) strict_clear: bool,
    /// L1 near cache entries per root (0: off); see local.rs.
    pub(crate) local_capacity: u64,
    /// The L1's byte budget (see local.rs: what an entry is weighed by).
    pub(crate) local_max_bytes: u64,
    pub(crate) local_ttl: Duration,
}

impl Config {
    /// The root's key prefix, `<namespace>:`: every key of the cache root starts with it.
    pub(crate) fn root_prefix(&self) -> String {
        format!("{}:", self.namespace)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            target: Target::Memory,
            namespace: "cache".to_owned(),
            default_ttl: Some(Duration::from_secs(3600)),
            // Each connection is multiplexed: requests pipeline on it, and fewer connections
            // mean deeper pipelines (more commands per socket read on the single-threaded
            // server). Measured at 64 concurrent requests on 2 cores: one connection 1.08x raw
            // redis-rs, two 0.84x to 0.98x.
            pool_size: 1,
            min_idle: 1,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(1),
            compression_threshold: 4096,
            memory_capacity: 64 * 1024 * 1024,
            invalidation_hold: Duration::from_secs(60),
            max_value_size: crate::base::limits::DEFAULT_MAX_VALUE_SIZE,
            slow_op: None,
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(1),
            strict_clear: false,
            local_capacity: 0,
            local_max_bytes: 64 * 1024 * 1024,
            local_ttl: Duration::from_secs(30),
        }
    }
}

/// Hides the password of `scheme://user:password@host`, and the `pass=` / `password=` query
/// parameters of `redis+unix:///path?pass=...` URLs.
pub(crate) fn redact_url(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((url, query)) => (url, Some(redact_query(query))),
        None => (url, None),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned() + &query.map(|q| format!("?{q}")).unwrap_or_default();
    };
    let base = match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        None => format!("{scheme}://{rest}"),
    };
    base + &query.map(|q| format!("?{q}")).unwrap_or_default()
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _))
                if name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password") =>
            {
                format!("{name}=<redacted>")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

pub(crate) fn parse_bool(setting: &'static str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(Error::Config {
            setting,
            reason: format!(
                "`{other}` is not a boolean; expected one of `true`, `false`, `1`, `0`, `yes`, `no`"
            ),
        }),
    }
}

pub(crate) fn parse_int(setting: &'static str, v: &str) -> Result<u32> {
    v.trim().parse::<u32>().map_err(|_| Error::Config {
        setting,
        reason: format!("`{v}` is not a non-negative integer"),
    })
}

/// Integer seconds, or a duration such as `500ms`, `30s`, `5m`, `1h 30m`.
pub(crate) fn parse_duration(setting: &'static str, v: &str) -> Result<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(v).map_err(|e| Error::Config {
        setting,
        reason: format!("`{v}` is not a duration ({e}); expected seconds or a duration such as `500ms`, `30s`, `5m`"),
    })
}
