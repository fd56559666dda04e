//! HTTP response caching (issue 24), under a real HTTP load: hyper's client at c=64 over
//! loopback TCP against axum routers served by hyper, one server per system under test.
//!
//! - our cached route against the same route uncached, its handler taking 5 ms (the ratio);
//! - our cached route against a handler returning the same bytes from memory (the limit for
//!   a layer: >= 0.8x), on a cache on Redis alone, and on one with its L1 near cache on
//!   (`CacheBuilder::local_cache`: hits answered from process memory, no round trip);
//! - ours against hitbox-tower 0.2 on hitbox-redis, on the same Redis, with the same
//!   response and client (hits: >= 1.0x; misses reported).
//!
//! Every server gets the same 1 KiB body; hits cycle over [`ITEMS`] warmed paths, misses
//! ask for a new path each time. Servers start on the first round and live for the run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use cache_core::http::ResponseCacheLayer;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::sync::OnceCell;

use crate::measure::{measure, Round};
use crate::workloads::{Bar, Ctx, Expect, Target, Workload};

/// Distinct cached paths the hit rows cycle over.
const ITEMS: u64 = 1000;
const CONCURRENCY: usize = 64;

/// The response every server sends: 1 KiB.
static BODY: [u8; 1024] = [b'x'; 1024];

struct Servers {
    slow_uncached: SocketAddr,
    ours_slow: SocketAddr,
    memory: SocketAddr,
    ours: SocketAddr,
    /// Ours on a cache with the L1 on (the bench's L1 cache, in a namespace of its own).
    ours_local: SocketAddr,
    /// `None` on a cluster: hitbox-redis's cluster mode is a feature left out here.
    hitbox: Option<SocketAddr>,
    client: Client<HttpConnector, Empty<Bytes>>,
    next_miss: AtomicU64,
}

static SERVERS: OnceCell<Servers> = OnceCell::const_new();

/// The rows, each next to what it is compared with.
#[rustfmt::skip]
pub fn workloads() -> Vec<Workload> {
    use Expect::Unchecked;
    let w = |name, reference, run| Workload { name, reference, expect: Unchecked, run };
    vec![
        w("http uncached 5 ms handler c=64", None, |cx| Box::pin(hit(cx, Which::SlowUncached))),
        w("http ours cached 5 ms route c=64", Some("http uncached 5 ms handler c=64"), |cx| Box::pin(hit(cx, Which::OursSlow))),
        w("http handler from memory c=64", None, |cx| Box::pin(hit(cx, Which::Memory))),
        w("http ours hit c=64", Some("http handler from memory c=64"), |cx| Box::pin(hit(cx, Which::Ours))),
        w("http ours hit, L1 on c=64", Some("http handler from memory c=64"), |cx| Box::pin(hit(cx, Which::OursLocal))),
        w("http hitbox-tower hit c=64", None, |cx| Box::pin(hit(cx, Which::Hitbox))),
        w("http ours hit (vs hitbox) c=64", Some("http hitbox-tower hit c=64"), |cx| Box::pin(hit(cx, Which::Ours))),
        w("http hitbox-tower miss c=64", None, |cx| Box::pin(miss(cx, Which::Hitbox))),
        w("http ours miss c=64", Some("http hitbox-tower miss c=64"), |cx| Box::pin(miss(cx, Which::Ours))),
    ]
}

/// The bars.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            ours: "http ours hit c=64",
            reference: "http handler from memory c=64",
            bar: Bar::OpsAtLeast(0.8),
        },
        Target {
            ours: "http ours hit, L1 on c=64",
            reference: "http handler from memory c=64",
            bar: Bar::OpsAtLeast(0.8),
        },
        Target {
            ours: "http ours hit (vs hitbox) c=64",
            reference: "http hitbox-tower hit c=64",
            bar: Bar::OpsAtLeast(1.0),
        },
    ]
}

#[derive(Clone, Copy)]
enum Which {
    SlowUncached,
    OursSlow,
    Memory,
    Ours,
    OursLocal,
    Hitbox,
}

async fn hit(cx: &'static Ctx, which: Which) -> Round {
    let servers = servers(cx).await;
    let Some(addr) = servers.addr(which) else {
        return measure(&cx.plan, 1, |_| async {}).await;
    };
    measure(&cx.plan, CONCURRENCY, move |i| async move {
        servers.get(addr, &format!("/item/{}", i % ITEMS)).await;
    })
    .await
}

async fn miss(cx: &'static Ctx, which: Which) -> Round {
    let servers = servers(cx).await;
    let Some(addr) = servers.addr(which) else {
        return measure(&cx.plan, 1, |_| async {}).await;
    };
    measure(&cx.plan, CONCURRENCY, move |_| async move {
        let n = servers.next_miss.fetch_add(1, Ordering::Relaxed);
        servers.get(addr, &format!("/item/miss-{n}")).await;
    })
    .await
}

impl Servers {
    fn addr(&self, which: Which) -> Option<SocketAddr> {
        match which {
            Which::SlowUncached => Some(self.slow_uncached),
            Which::OursSlow => Some(self.ours_slow),
            Which::Memory => Some(self.memory),
            Which::Ours => Some(self.ours),
            Which::OursLocal => Some(self.ours_local),
            Which::Hitbox => self.hitbox,
        }
    }

    /// One GET, its body read and checked.
    async fn get(&self, addr: SocketAddr, path: &str) {
        let uri = format!("http://{addr}{path}");
        let response = match self.client.get(uri.parse().expect("uri")).await {
            Ok(r) => r,
            Err(e) => panic!("GET {uri}: {e}"),
        };
        assert!(
            response.status().is_success(),
            "GET {uri}: {}",
            response.status()
        );
        let body = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => panic!("GET {uri}: body: {e}"),
        };
        assert_eq!(body.len(), BODY.len(), "GET {uri}: the body");
    }
}

async fn servers(cx: &'static Ctx) -> &'static Servers {
    SERVERS.get_or_init(|| start(cx)).await
}

fn router(slow: bool) -> Router {
    Router::new().route(
        "/item/{id}",
        get(move || async move {
            if slow {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (
                [("cache-control", "public, max-age=3600")],
                Bytes::from_static(&BODY),
            )
        }),
    )
}

async fn start(cx: &'static Ctx) -> Servers {
    let ours_cache = cx.ours.namespace("http");
    let layer = ResponseCacheLayer::new(ours_cache).ttl(Duration::from_secs(3600));
    let slow_uncached = serve(router(true)).await;
    let ours_slow = serve(tower::Layer::layer(&layer, router(true))).await;
    let memory = serve(router(false)).await;
    let ours = serve(tower::Layer::layer(
        &ResponseCacheLayer::new(cx.ours.namespace("http-fast")).ttl(Duration::from_secs(3600)),
        router(false),
    ))
    .await;
    let local_cache = cx.l1.namespace("http-l1");
    let ours_local = serve(tower::Layer::layer(
        &ResponseCacheLayer::new(local_cache.clone()).ttl(Duration::from_secs(3600)),
        router(false),
    ))
    .await;
    let hitbox = match redis_url(cx).await {
        Some(url) => Some(serve_hitbox(&url, router(false)).await),
        None => None,
    };
    let servers = Servers {
        slow_uncached,
        ours_slow,
        memory,
        ours,
        ours_local,
        hitbox,
        client: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(CONCURRENCY)
            .build_http(),
        next_miss: AtomicU64::new(0),
    };
    // The hit rows find every path cached.
    for addr in [Some(ours_slow), Some(ours), Some(ours_local), hitbox]
        .into_iter()
        .flatten()
    {
        for i in 0..ITEMS {
            servers.get(addr, &format!("/item/{i}")).await;
        }
    }
    // The L1 is filled by hits read from Redis, once its invalidation feed is subscribed.
    let start = std::time::Instant::now();
    while !local_cache.local_cache_serving() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the L1 feed did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 0..ITEMS {
        servers.get(ours_local, &format!("/item/{i}")).await;
    }
    servers
}

/// hitbox-tower over `inner`, on hitbox-redis at `url`, served: the key is the method and
/// the path's id, the TTL an hour, as ours.
async fn serve_hitbox(url: &str, inner: Router) -> SocketAddr {
    use hitbox::policy::PolicyConfig;
    use hitbox_http::extractors::path::PathExtractor;
    use hitbox_http::extractors::Method;
    use hitbox_http::predicates::{NeutralRequestPredicate, NeutralResponsePredicate};
    let backend = hitbox_redis::RedisBackend::builder()
        .connection(hitbox_redis::ConnectionMode::single(url))
        .build()
        .expect("hitbox-redis backend");
    let config = hitbox::Config::builder()
        .request_predicate(NeutralRequestPredicate::new())
        .response_predicate(NeutralResponsePredicate::new())
        .extractor(Method::new().path("/item/{id}"))
        .policy(
            PolicyConfig::builder()
                .ttl(Duration::from_secs(3600))
                .build(),
        )
        .build();
    let layer = hitbox_tower::Cache::builder()
        .backend(backend)
        .config(config)
        .build();
    serve(tower::Layer::layer(&layer, inner)).await
}

/// The bench's Redis as a URL hitbox-redis can open: `REDIS_URL`, or the loopback server the
/// harness started (its port read back with `CONFIG GET port`). `None` on a cluster.
async fn redis_url(cx: &'static Ctx) -> Option<String> {
    if cx.cluster {
        return None;
    }
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => return Some(url),
        _ => {}
    }
    let mut raw = cx.raw.clone();
    let reply: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query_async(&mut raw)
        .await
        .expect("CONFIG GET port");
    Some(format!(
        "redis://127.0.0.1:{}",
        reply.get(1).expect("a port")
    ))
}

/// Serves `service` on a free loopback port with hyper's HTTP/1 server, one task per
/// connection, for the rest of the run.
async fn serve<S, B>(service: S) -> SocketAddr
where
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
