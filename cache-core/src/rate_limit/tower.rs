//! A tower [`Layer`] that rate-limits HTTP requests with a [`RateLimiter`] (feature `tower`).
//!
//! ```
//! # fn main() -> Result<(), cache_core::Error> {
//! use std::time::Duration;
//! use cache_core::rate_limit::tower::{ClientIp, KeyExtractor, RateLimitLayer};
//! use cache_core::{Cache, RateLimit};
//!
//! let cache = Cache::in_memory();
//! let limiter = cache.rate_limiter(RateLimit::sliding_window(100, Duration::from_secs(60)).name("api"));
//! let layer = RateLimitLayer::new(limiter)
//!     .key(KeyExtractor::client_ip(ClientIp::new().trust_proxies(["10.0.0.0/8"])?));
//! // axum: Router::new().route(..).layer(layer)
//! # let _ = layer;
//! # Ok(()) }
//! ```
//!
//! A request whose key is found is checked against the limiter: admitted, it goes on to the
//! inner service and its response carries the `RateLimit-Policy` and `RateLimit` fields of
//! the IETF draft (draft-ietf-httpapi-ratelimit-headers), e.g. `RateLimit-Policy:
//! "api";q=100;w=60` and `RateLimit: "api";r=42;t=17`; denied, it is answered `429 Too Many
//! Requests` with `Retry-After` (seconds) and the same fields, without reaching the inner
//! service. The older `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
//! trio is an option ([`RateLimitLayer::legacy_headers`]). A request without a key (no
//! peer address, no such header, a closure that returns `None`) is not limited.
//!
//! `t` is the number of seconds (rounded up) until the quota is back in full for an
//! admitted request, and until the request would be admitted for a denied one (the same
//! value as `Retry-After`). When Redis is down the limiter's [`OnUnavailable`] policy
//! decides (a fail-closed limiter answers 429 with `Retry-After: 1`); any other limiter
//! error is answered `500 Internal Server Error` and logged.
//!
//! [`OnUnavailable`]: super::OnUnavailable

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use tower::{Layer, Service};

use super::{Decision, RateLimiter};
use crate::base::error::{Error, Result};

/// How a request is turned into the id it is limited by.
///
/// ```
/// use cache_core::rate_limit::tower::{ClientIp, KeyExtractor};
/// let by_ip = KeyExtractor::client_ip(ClientIp::new());
/// let by_key = KeyExtractor::header(http::HeaderName::from_static("x-api-key"));
/// let by_path = KeyExtractor::from_fn(|req| Some(req.uri.path().to_owned()));
/// # let _ = (by_ip, by_key, by_path);
/// ```
#[derive(Clone)]
pub struct KeyExtractor(KeyFn);

type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

impl std::fmt::Debug for KeyExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyExtractor")
    }
}

impl KeyExtractor {
    /// The client's address, as [`ClientIp`] finds it.
    ///
    /// ```
    /// use cache_core::rate_limit::tower::{ClientIp, KeyExtractor};
    /// let key = KeyExtractor::client_ip(ClientIp::new());
    /// let (mut parts, ()) = http::Request::new(()).into_parts();
    /// parts.extensions.insert(std::net::SocketAddr::from(([192, 0, 2, 7], 4711)));
    /// assert_eq!(key.extract(&parts).as_deref(), Some("192.0.2.7"));
    /// ```
    pub fn client_ip(client_ip: ClientIp) -> Self {
        KeyExtractor(Arc::new(move |parts| {
            client_ip.client_of(parts).map(|ip| ip.to_string())
        }))
    }

    /// The value of a header (the first one, if repeated); requests without it are not
    /// limited.
    ///
    /// ```
    /// use cache_core::rate_limit::tower::KeyExtractor;
    /// let key = KeyExtractor::header(http::HeaderName::from_static("x-api-key"));
    /// let req = http::Request::builder().header("x-api-key", "k-123").body(()).unwrap();
    /// assert_eq!(key.extract(&req.into_parts().0).as_deref(), Some("k-123"));
    /// ```
    pub fn header(name: HeaderName) -> Self {
        KeyExtractor(Arc::new(move |parts| {
            parts
                .headers
                .get(&name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        }))
    }

    /// Any function of the request's head; `None` lets the request through unlimited.
    ///
    /// ```
    /// use cache_core::rate_limit::tower::KeyExtractor;
    /// let key = KeyExtractor::from_fn(|req| req.uri.query().map(str::to_owned));
    /// let req = http::Request::builder().uri("/x?tenant=7").body(()).unwrap();
    /// assert_eq!(key.extract(&req.into_parts().0).as_deref(), Some("tenant=7"));
    /// ```
    pub fn from_fn(f: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        KeyExtractor(Arc::new(f))
    }

    /// The key of a request head.
    ///
    /// ```
    /// use cache_core::rate_limit::tower::KeyExtractor;
    /// let key = KeyExtractor::from_fn(|_| None);
    /// assert_eq!(key.extract(&http::Request::new(()).into_parts().0), None);
    /// ```
    pub fn extract(&self, parts: &Parts) -> Option<String> {
        (self.0)(parts)
    }
}

type PeerFn = Arc<dyn Fn(&Parts) -> Option<IpAddr> + Send + Sync>;

/// Finds the client's address: the peer address of the connection, unless that peer is a
/// configured trusted proxy, in which case `X-Forwarded-For` is walked from right to left
/// (the entries a trusted proxy appended) to the first address that is not a trusted proxy.
/// Entries left of it were written by the client and are ignored, so a spoofed
/// `X-Forwarded-For` changes nothing.
///
/// The peer address is read from the request's extensions: a `SocketAddr` or an `IpAddr`
/// by default; give another lookup with [`peer_addr`](ClientIp::peer_addr) (for axum's
/// `ConnectInfo<SocketAddr>`, say).
///
/// ```
/// # fn main() -> Result<(), cache_core::Error> {
/// use std::net::{IpAddr, SocketAddr};
/// use cache_core::rate_limit::tower::ClientIp;
/// let ip = ClientIp::new().trust_proxies(["10.0.0.0/8", "2001:db8::1"])?;
/// let req = http::Request::builder()
///     .header("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.1.2.3")
///     .extension(SocketAddr::from(([10, 0, 0, 1], 443)))
///     .body(()).unwrap();
/// assert_eq!(ip.client_of(&req.into_parts().0), Some("203.0.113.9".parse::<IpAddr>().unwrap()));
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct ClientIp {
    trusted: Vec<(IpAddr, u8)>,
    peer: Option<PeerFn>,
}

impl std::fmt::Debug for ClientIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIp")
            .field("trusted", &self.trusted)
            .field("custom_peer", &self.peer.is_some())
            .finish()
    }
}

impl ClientIp {
    /// The peer address only: no proxy trusted, `X-Forwarded-For` ignored.
    ///
    /// ```
    /// use cache_core::rate_limit::tower::ClientIp;
    /// let req = http::Request::builder()
    ///     .header("x-forwarded-for", "1.1.1.1")
    ///     .extension(std::net::SocketAddr::from(([192, 0, 2, 7], 4711)))
    ///     .body(()).unwrap();
    /// assert_eq!(ClientIp::new().client_of(&req.into_parts().0).unwrap().to_string(), "192.0.2.7");
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the proxies at these addresses or networks (`10.0.0.0/8`, `192.0.2.1`,
    /// `2001:db8::/32`) to append the address they received a request from to
    /// `X-Forwarded-For`. Anything else is an [`Error::Config`].
    ///
    /// ```
    /// use cache_core::rate_limit::tower::ClientIp;
    /// assert!(ClientIp::new().trust_proxies(["127.0.0.1", "fd00::/8"]).is_ok());
    /// assert!(ClientIp::new().trust_proxies(["10.0.0.0/33"]).is_err());
    /// ```
    pub fn trust_proxies<I, S>(mut self, proxies: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for proxy in proxies {
            let text = proxy.as_ref().trim();
            let bad = || Error::Config {
                setting: "trusted proxies",
                reason: format!(
                    "`{text}` is not an address or a network (`10.0.0.0/8`, `2001:db8::/32`)"
                ),
            };
            let (addr, bits) = match text.split_once('/') {
                Some((addr, bits)) => (addr, Some(bits)),
                None => (text, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let addr = addr.to_canonical();
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b.parse::<u8>().ok().filter(|&b| b <= max).ok_or_else(bad)?,
                None => max,
            };
            self.trusted.push((addr, bits));
        }
        Ok(self)
    }

    /// How to find the connection's peer address in a request (default: a `SocketAddr` or
    /// `IpAddr` in its extensions).
    ///
    /// ```
    /// use std::net::IpAddr;
    /// use cache_core::rate_limit::tower::ClientIp;
    /// #[derive(Clone)]
    /// struct Peer(IpAddr);
    /// let ip = ClientIp::new().peer_addr(|req| req.extensions.get::<Peer>().map(|p| p.0));
    /// let req = http::Request::builder().extension(Peer([192, 0, 2, 1].into())).body(()).unwrap();
    /// assert_eq!(ip.client_of(&req.into_parts().0), Some(IpAddr::from([192, 0, 2, 1])));
    /// ```
    pub fn peer_addr(
        mut self,
        lookup: impl Fn(&Parts) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        self.peer = Some(Arc::new(lookup));
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted
            .iter()
            .any(|&(net, bits)| in_network(ip, net, bits))
    }

    /// The client's address of a request, or `None` when the peer address is unknown.
    ///
    /// ```
    /// use cache_core::rate_limit::tower::ClientIp;
    /// assert_eq!(ClientIp::new().client_of(&http::Request::new(()).into_parts().0), None);
    /// ```
    pub fn client_of(&self, parts: &Parts) -> Option<IpAddr> {
        let peer = match &self.peer {
            Some(lookup) => lookup(parts),
            None => parts
                .extensions
                .get::<SocketAddr>()
                .map(SocketAddr::ip)
                .or_else(|| parts.extensions.get::<IpAddr>().copied()),
        }?
        .to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let mut client = peer;
        let hops = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            // An entry a trusted proxy wrote that is not an address: stop at that proxy.
            let Some(ip) = parse_hop(hop) else {
                return Some(client);
            };
            client = ip;
            if !self.is_trusted(ip) {
                return Some(ip);
            }
        }
        Some(client)
    }
}

/// One `X-Forwarded-For` entry: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hop).ok()?.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// What the layer's clones share.
#[derive(Debug)]
struct Shared {
    limiter: RateLimiter,
    key: KeyExtractor,
    ietf: bool,
    legacy: bool,
}

/// A tower [`Layer`] limiting requests with a [`RateLimiter`]; see the [module](self) docs.
/// Clones (one per connection, in servers that clone it) share the limiter and settings.
///
/// ```
/// use std::time::Duration;
/// use cache_core::rate_limit::tower::RateLimitLayer;
/// use cache_core::{Cache, RateLimit};
/// let limiter = Cache::in_memory().rate_limiter(RateLimit::gcra(10, Duration::from_secs(1)));
/// let layer = RateLimitLayer::new(limiter).legacy_headers(true);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// Limits requests by client address ([`ClientIp::new`]: the peer address, no proxy
    /// trusted), with the IETF fields and without the legacy ones.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::rate_limit::tower::RateLimitLayer;
    /// use cache_core::{Cache, RateLimit};
    /// let layer = RateLimitLayer::new(Cache::in_memory().rate_limiter(RateLimit::sliding_log(5, Duration::from_secs(1))));
    /// # let _ = layer;
    /// ```
    pub fn new(limiter: RateLimiter) -> Self {
        RateLimitLayer {
            shared: Arc::new(Shared {
                limiter,
                key: KeyExtractor::client_ip(ClientIp::new()),
                ietf: true,
                legacy: false,
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared {
            limiter: self.shared.limiter.clone(),
            key: self.shared.key.clone(),
            ietf: self.shared.ietf,
            legacy: self.shared.legacy,
        };
        f(&mut shared);
        RateLimitLayer {
            shared: Arc::new(shared),
        }
    }

    /// What requests are limited by.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::rate_limit::tower::{KeyExtractor, RateLimitLayer};
    /// use cache_core::{Cache, RateLimit};
    /// let limiter = Cache::in_memory().rate_limiter(RateLimit::sliding_log(5, Duration::from_secs(1)));
    /// let layer = RateLimitLayer::new(limiter).key(KeyExtractor::header(http::HeaderName::from_static("x-api-key")));
    /// # let _ = layer;
    /// ```
    pub fn key(self, key: KeyExtractor) -> Self {
        self.with(|s| s.key = key)
    }

    /// Adds `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds)
    /// to every limited response (default: off).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::rate_limit::tower::RateLimitLayer;
    /// use cache_core::{Cache, RateLimit};
    /// let limiter = Cache::in_memory().rate_limiter(RateLimit::sliding_log(5, Duration::from_secs(1)));
    /// let layer = RateLimitLayer::new(limiter).legacy_headers(true);
    /// # let _ = layer;
    /// ```
    pub fn legacy_headers(self, on: bool) -> Self {
        self.with(|s| s.legacy = on)
    }

    /// Adds the IETF `RateLimit-Policy` and `RateLimit` fields to every limited response
    /// (default: on). `Retry-After` is sent on 429 whatever this says.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_core::rate_limit::tower::RateLimitLayer;
    /// use cache_core::{Cache, RateLimit};
    /// let limiter = Cache::in_memory().rate_limiter(RateLimit::sliding_log(5, Duration::from_secs(1)));
    /// let layer = RateLimitLayer::new(limiter).ietf_headers(false).legacy_headers(true);
    /// # let _ = layer;
    /// ```
    pub fn ietf_headers(self, on: bool) -> Self {
        self.with(|s| s.ietf = on)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The [`Service`] made by [`RateLimitLayer`].
///
/// ```
/// use std::time::Duration;
/// use cache_core::rate_limit::tower::{RateLimitLayer, RateLimitService};
/// use cache_core::{Cache, RateLimit};
/// use tower::Layer;
/// let limiter = Cache::in_memory().rate_limiter(RateLimit::sliding_log(5, Duration::from_secs(1)));
/// #[derive(Clone)]
/// struct App; // the inner service: a router, a handler
/// let service: RateLimitService<App> = RateLimitLayer::new(limiter).layer(App);
/// # let _ = service;
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimitService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The service polled ready is the one that must take the request.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let shared = self.shared.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let key = shared.key.extract(&parts);
            let req = Request::from_parts(parts, body);
            let Some(key) = key else {
                return inner.call(req).await;
            };
            match shared.limiter.check(key.as_str()).await {
                Ok(decision) if decision.allowed => {
                    let mut response = inner.call(req).await?;
                    shared.write_headers(response.headers_mut(), &decision);
                    Ok(response)
                }
                Ok(decision) => {
                    let mut response = Response::new(ResBody::default());
                    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    let retry = secs(decision.retry_after.unwrap_or(Duration::ZERO));
                    response
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from(retry));
                    shared.write_headers(response.headers_mut(), &decision);
                    Ok(response)
                }
                Err(error) => {
                    tracing::error!(%error, "rate limit layer: the limiter failed; answering 500");
                    let mut response = Response::new(ResBody::default());
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    Ok(response)
                }
            }
        })
    }
}

/// Whole seconds, rounded up (a client waiting the rounded-down value would be early).
fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Shared {
    fn write_headers(&self, headers: &mut HeaderMap, decision: &Decision) {
        let config = self.limiter.config();
        let t = secs(match decision.retry_after {
            Some(retry) if !decision.allowed => retry,
            _ => decision.reset_after,
        });
        if self.ietf {
            // The name is checked (`A-Z a-z 0-9 - _ .`), so it is a valid sf-string as is.
            let policy = policy_field(config.name_str(), config.limit(), secs(config.window()));
            let current = ratelimit_field(config.name_str(), decision.remaining, t);
            for (name, value) in [("ratelimit-policy", policy), ("ratelimit", current)] {
                if let Ok(value) = HeaderValue::try_from(value) {
                    headers.insert(HeaderName::from_static(name), value);
                }
            }
        }
        if self.legacy {
            for (name, value) in [
                ("x-ratelimit-limit", decision.limit),
                ("x-ratelimit-remaining", decision.remaining),
                ("x-ratelimit-reset", t),
            ] {
                headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
            }
        }
    }
}

/// `RateLimit-Policy: "name";q=<quota>;w=<window seconds>`.
///
/// ```
/// use cache_core::rate_limit::tower::policy_field;
/// assert_eq!(policy_field("default", 100, 10), r#""default";q=100;w=10"#);
/// ```
pub fn policy_field(name: &str, quota: u64, window_secs: u64) -> String {
    format!("\"{name}\";q={quota};w={window_secs}")
}

/// `RateLimit: "name";r=<remaining>;t=<seconds>`.
///
/// ```
/// use cache_core::rate_limit::tower::ratelimit_field;
/// assert_eq!(ratelimit_field("default", 50, 30), r#""default";r=50;t=30"#);
/// ```
pub fn ratelimit_field(name: &str, remaining: u64, reset_secs: u64) -> String {
    format!("\"{name}\";r={remaining};t={reset_secs}")
}
