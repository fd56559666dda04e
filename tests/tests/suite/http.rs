//! Issue 24: HTTP response caching as a tower layer. A real axum server on a free loopback
//! port, called over TCP by hyper's client; every rule on both backends (and on the cluster
//! with `CACHE_TEST_TOPOLOGY=cluster`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use cache_core::compute::FillLock;
use cache_core::http::ResponseCacheLayer;
use cache_core::Cache;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

/// What the handlers share: a call count per route, a version the tests bump, and a gate
/// the slow route waits at.
#[derive(Clone, Default)]
struct App {
    calls: Arc<std::sync::Mutex<HashMap<&'static str, usize>>>,
    version: Arc<AtomicUsize>,
    gate: Arc<Gate>,
}

struct Gate(Semaphore);

impl Default for Gate {
    fn default() -> Self {
        Gate(Semaphore::new(0))
    }
}

impl App {
    fn called(&self, route: &'static str) {
        *self.calls.lock().expect("calls").entry(route).or_default() += 1;
    }
    fn calls(&self, route: &'static str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .get(route)
            .copied()
            .unwrap_or(0)
    }
}

fn with_cc(cc: &'static str, body: String) -> Response {
    ([("cache-control", cc)], body).into_response()
}

fn router(app: App) -> Router {
    Router::new()
        .route(
            "/plain",
            get(|State(a): State<App>| async move {
                a.called("plain");
                let v = a.version.load(Ordering::SeqCst);
                with_cc("max-age=60", format!("plain v{v}")).into_response()
            })
            .post(|State(a): State<App>| async move {
                a.called("post");
                "posted"
            }),
        )
        .route(
            "/echo",
            get(|State(a): State<App>, uri: Uri| async move {
                a.called("echo");
                with_cc("max-age=60", format!("{} {:?}", uri.path(), uri.query()))
            }),
        )
        .route(
            "/a:",
            get(|State(a): State<App>, uri: Uri| async move {
                a.called("echo");
                with_cc("max-age=60", format!("{} {:?}", uri.path(), uri.query()))
            }),
        )
        .route(
            "/cc/{which}",
            get(
                |State(a): State<App>, Path(which): Path<String>| async move {
                    a.called("cc");
                    let cc = match which.as_str() {
                        "private" => "private, max-age=60",
                        "no-store" => "no-store",
                        "no-cache" => "no-cache, max-age=60",
                        "public" => "public, max-age=60",
                        "s-maxage" => "s-maxage=60",
                        "long" => "max-age=999999",
                        _ => "max-age=60",
                    };
                    with_cc(cc, format!("{which} {}", a.calls("cc")))
                },
            ),
        )
        .route(
            "/cookie",
            get(|State(a): State<App>| async move {
                a.called("cookie");
                (
                    [("cache-control", "max-age=60"), ("set-cookie", "s=1")],
                    "cookie",
                )
            }),
        )
        .route(
            "/silent/{status}",
            get(|State(a): State<App>, Path(status): Path<u16>| async move {
                a.called("silent");
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                (status, format!("status {status}"))
            }),
        )
        .route(
            "/vary",
            get(|State(a): State<App>, headers: HeaderMap| async move {
                a.called("vary");
                let lang = headers
                    .get("accept-language")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                (
                    [("cache-control", "max-age=60"), ("vary", "Accept-Language")],
                    format!("lang {lang}"),
                )
            }),
        )
        .route(
            "/vary-star",
            get(|State(a): State<App>| async move {
                a.called("vary-star");
                ([("cache-control", "max-age=60"), ("vary", "*")], "star")
            }),
        )
        .route(
            "/etag",
            get(|State(a): State<App>| async move {
                a.called("etag");
                (
                    [("cache-control", "max-age=60"), ("etag", "\"v1\"")],
                    "tagged",
                )
            }),
        )
        .route(
            "/hop",
            get(|State(a): State<App>| async move {
                a.called("hop");
                (
                    [
                        ("cache-control", "max-age=60"),
                        ("connection", "x-hop"),
                        ("x-hop", "1"),
                        ("x-kept", "1"),
                    ],
                    "hop",
                )
            }),
        )
        .route(
            "/big",
            get(|State(a): State<App>| async move {
                a.called("big");
                with_cc("max-age=60", "x".repeat(2048))
            }),
        )
        .route(
            "/stream",
            get(|State(a): State<App>| async move {
                a.called("stream");
                let chunks = futures_chunks();
                ([("cache-control", "max-age=60")], Body::from_stream(chunks))
            }),
        )
        .route(
            "/slow",
            get(|State(a): State<App>| async move {
                a.called("slow");
                // Waits until the test lets one handler through.
                a.gate.0.acquire().await.expect("gate").forget();
                with_cc("max-age=60", "slow".to_owned())
            }),
        )
        .route(
            "/flaky",
            get(|State(a): State<App>| async move {
                a.called("flaky");
                match a.version.load(Ordering::SeqCst) {
                    0 => with_cc("max-age=1, stale-if-error=300", "good".to_owned()),
                    _ => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
                }
            }),
        )
        .route(
            "/swr",
            get(|State(a): State<App>| async move {
                a.called("swr");
                let v = a.version.load(Ordering::SeqCst);
                if v > 0 {
                    // A refresh waits for the test: the stale response is served meanwhile.
                    a.gate.0.acquire().await.expect("gate").forget();
                }
                with_cc("max-age=1, stale-while-revalidate=300", format!("swr v{v}"))
            }),
        )
        .route(
            "/users/{id}",
            get(|State(a): State<App>, Path(id): Path<u64>| async move {
                a.called("users");
                let v = a.version.load(Ordering::SeqCst);
                with_cc("max-age=60", format!("user {id} v{v}"))
            }),
        )
        .with_state(app)
}

/// A body of two chunks whose length is not known in advance.
fn futures_chunks(
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::iter([
        Ok(Bytes::from_static(b"str")),
        Ok(Bytes::from_static(b"eam")),
    ])
}

struct Server {
    base: String,
    app: App,
    client: Client<HttpConnector, Empty<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn cache_status(&self) -> String {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }
    fn hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
}

async fn serve(layer: ResponseCacheLayer) -> Server {
    serve_app(layer, App::default()).await
}

async fn serve_app(layer: ResponseCacheLayer, app: App) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local addr");
    let router = router(app.clone()).layer(layer);
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    Server {
        base: format!("http://{addr}"),
        app,
        client: Client::builder(TokioExecutor::new()).build_http(),
        task,
    }
}

impl Server {
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new()).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("a response within 10 s")
            .expect("a response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[]).await
    }

    async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", path, headers).await
    }
}

fn layer(cache: &Cache) -> ResponseCacheLayer {
    ResponseCacheLayer::new(cache.clone()).ttl(Duration::from_secs(60))
}

/// Polls `check` every 20 ms until it holds, for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- what is stored, and how a hit looks ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hit_replays_status_headers_and_body_with_age_and_cache_status() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache)).await;
        let miss = s.get("/plain").await;
        assert_eq!(miss.status, StatusCode::OK, "{backend}");
        assert_eq!(miss.text(), "plain v0");
        assert_eq!(
            miss.cache_status(),
            "cache-rs; fwd=uri-miss; stored",
            "{backend}"
        );
        s.app.version.store(1, Ordering::SeqCst);
        let hit = s.get("/plain").await;
        assert_eq!(hit.text(), "plain v0", "{backend}: served from the cache");
        assert!(hit.hit(), "{backend}: {}", hit.cache_status());
        assert!(
            hit.cache_status().contains("ttl="),
            "{}",
            hit.cache_status()
        );
        assert!(hit.headers.contains_key("age"), "{backend}");
        assert_eq!(hit.headers["cache-control"], "max-age=60");
        assert_eq!(s.app.calls("plain"), 1, "{backend}");
        // A strong ETag from the body's hash, the same on the hit.
        let etag = miss.headers["etag"].to_str().expect("etag").to_owned();
        assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
        assert_eq!(hit.headers["etag"], etag.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_get_and_head_are_cached_and_head_has_no_body() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache)).await;
        for _ in 0..2 {
            let post = s.send("POST", "/plain", &[]).await;
            assert_eq!(post.text(), "posted");
            assert_eq!(post.cache_status(), "cache-rs; fwd=method", "{backend}");
        }
        assert_eq!(s.app.calls("post"), 2, "{backend}");
        let head = s.send("HEAD", "/plain", &[]).await;
        assert!(head.body.is_empty());
        let head = s.send("HEAD", "/plain", &[]).await;
        assert!(head.hit(), "{backend}: {}", head.cache_status());
        assert!(head.body.is_empty(), "{backend}");
        assert_eq!(s.app.calls("plain"), 1, "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_key_sorts_query_parameters_and_escapes_every_part() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache)).await;
        assert_eq!(
            s.get("/echo?b=2&a=1").await.text(),
            "/echo Some(\"b=2&a=1\")"
        );
        let sorted = s.get("/echo?a=1&b=2").await;
        assert!(
            sorted.hit(),
            "{backend}: the same parameters in another order"
        );
        assert_eq!(s.app.calls("echo"), 1);
        assert!(!s.get("/echo?a=1&b=3").await.hit(), "{backend}");
        // Joined naively, path `/a:` + query `b` and path `/a` + query `:b`... would meet.
        let first = s.get("/a:?b").await;
        let second = s.get("/a?:b").await;
        assert!(!second.hit(), "{backend}: {}", second.cache_status());
        assert_ne!(first.text(), second.text(), "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_keep_their_responses_apart() {
    for (backend, cache) in tests::backends().await {
        let a = serve(layer(&cache.tenant("a"))).await;
        let b = serve(layer(&cache.tenant("b"))).await;
        a.get("/plain").await;
        assert!(a.get("/plain").await.hit(), "{backend}");
        assert!(
            !b.get("/plain").await.hit(),
            "{backend}: another tenant's response"
        );
    }
}

// ---- RFC 9111: the response decides ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_store_private_no_cache_and_set_cookie_are_not_stored() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache)).await;
        for (path, detail) in [
            ("/cc/private", "private"),
            ("/cc/no-store", "no-store"),
            ("/cc/no-cache", "no-cache"),
            ("/cookie", "set-cookie"),
            ("/vary-star", "vary-star"),
        ] {
            for _ in 0..2 {
                let r = s.get(path).await;
                assert!(!r.hit(), "{backend} {path}");
                assert!(
                    r.cache_status()
                        .ends_with(&format!("stored=?0; detail=\"{detail}\"")),
                    "{backend} {path}: {}",
                    r.cache_status()
                );
            }
        }
        assert_eq!(s.app.calls("cc"), 6, "{backend}");
        assert_eq!(s.app.calls("cookie"), 2, "{backend}");
        assert_eq!(s.app.calls("vary-star"), 2, "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s_maxage_and_max_age_set_the_ttl_capped_by_the_layer() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache).max_ttl(Duration::from_secs(100))).await;
        s.get("/cc/long").await;
        let hit = s.get("/cc/long").await;
        let status = hit.cache_status();
        let ttl: i64 = status
            .split("ttl=")
            .nth(1)
            .and_then(|t| t.parse().ok())
            .expect("a ttl");
        assert!((0..=100).contains(&ttl), "{backend}: {status}");
        s.get("/cc/s-maxage").await;
        let hit = s.get("/cc/s-maxage").await;
        assert!(hit.hit(), "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_layer_ttl_applies_only_to_heuristically_cacheable_statuses() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache)).await;
        for status in [200, 404, 410] {
            let path = format!("/silent/{status}");
            s.get(&path).await;
            let hit = s.get(&path).await;
            assert!(hit.hit(), "{backend} {status}: {}", hit.cache_status());
            assert_eq!(hit.status.as_u16(), status);
            assert_eq!(hit.text(), format!("status {}", hit.status));
        }
        for status in [201, 302] {
            let path = format!("/silent/{status}");
            let r = s.get(&path).await;
            assert!(
                r.cache_status().contains("detail=\"status\""),
                "{backend} {status}"
            );
            assert!(!s.get(&path).await.hit());
        }
        // Without a layer TTL, a silent response is not stored.
        let bare = serve(ResponseCacheLayer::new(cache.namespace("bare"))).await;
        let r = bare.get("/silent/200").await;
        assert!(r.cache_status().contains("detail=\"no-ttl\""), "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorization_is_answered_only_by_public_or_s_maxage_responses() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache)).await;
        let auth = [("authorization", "Bearer t")];
        // Stored for anonymous requests; not for one with credentials.
        s.get("/plain").await;
        let r = s.get_with("/plain", &auth).await;
        assert!(!r.hit(), "{backend}");
        assert!(
            r.cache_status().contains("detail=\"authorization\""),
            "{}",
            r.cache_status()
        );
        assert_eq!(s.app.calls("plain"), 2);
        // A response to a request with credentials, not public: not stored.
        let r = s.get_with("/cc/max", &auth).await;
        assert!(
            r.cache_status().contains("detail=\"authorization\""),
            "{backend}"
        );
        assert!(!s.get_with("/cc/max", &auth).await.hit());
        // public and s-maxage answer everyone.
        for path in ["/cc/public", "/cc/s-maxage"] {
            s.get_with(path, &auth).await;
            assert!(s.get_with(path, &auth).await.hit(), "{backend} {path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_no_cache_revalidates_and_no_store_bypasses() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache)).await;
        s.get("/plain").await;
        s.app.version.store(1, Ordering::SeqCst);
        let r = s.get_with("/plain", &[("cache-control", "no-store")]).await;
        assert_eq!(r.text(), "plain v1");
        assert_eq!(r.cache_status(), "cache-rs; fwd=bypass", "{backend}");
        assert_eq!(
            s.get("/plain").await.text(),
            "plain v0",
            "{backend}: no-store stored nothing"
        );
        let r = s.get_with("/plain", &[("cache-control", "no-cache")]).await;
        assert_eq!(r.text(), "plain v1");
        assert_eq!(
            r.cache_status(),
            "cache-rs; fwd=request; stored",
            "{backend}"
        );
        let hit = s.get("/plain").await;
        assert_eq!(
            hit.text(),
            "plain v1",
            "{backend}: revalidation replaced the entry"
        );
        assert!(hit.hit());
        assert_eq!(s.app.calls("plain"), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vary_keys_each_variant_by_the_named_request_headers() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache)).await;
        let en = [("accept-language", "en")];
        let fr = [("accept-language", "fr")];
        assert_eq!(s.get_with("/vary", &en).await.text(), "lang en");
        let r = s.get_with("/vary", &fr).await;
        assert_eq!(r.text(), "lang fr", "{backend}: another variant");
        assert_eq!(
            r.cache_status(),
            "cache-rs; fwd=vary-miss; stored",
            "{backend}"
        );
        let en_hit = s.get_with("/vary", &en).await;
        let fr_hit = s.get_with("/vary", &fr).await;
        assert_eq!(
            (en_hit.text().as_str(), fr_hit.text().as_str()),
            ("lang en", "lang fr")
        );
        assert!(en_hit.hit() && fr_hit.hit(), "{backend}");
        assert_eq!(s.app.calls("vary"), 2, "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hop_by_hop_headers_are_not_replayed() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache)).await;
        s.get("/hop").await;
        let hit = s.get("/hop").await;
        assert!(hit.hit(), "{backend}");
        assert!(!hit.headers.contains_key("x-hop"), "{backend}");
        assert_eq!(hit.headers["x-kept"], "1");
    }
}

// ---- ETag revalidation ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn if_none_match_is_a_304_after_a_miss_and_from_the_cache() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache)).await;
        let cond = [("if-none-match", "\"v1\"")];
        let r = s.get_with("/etag", &cond).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_MODIFIED,
            "{backend}: right after a miss"
        );
        assert!(r.body.is_empty());
        assert_eq!(r.headers["etag"], "\"v1\"");
        let r = s.get_with("/etag", &cond).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{backend}");
        assert!(r.hit(), "{backend}: {}", r.cache_status());
        assert_eq!(s.app.calls("etag"), 1, "{backend}: the handler ran once");
        let r = s.get_with("/etag", &[("if-none-match", "\"v0\"")]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "tagged");
        // The generated ETag validates too.
        let etag = s.get("/plain").await.headers["etag"].clone();
        let r = s
            .get_with("/plain", &[("if-none-match", etag.to_str().expect("etag"))])
            .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{backend}");
    }
}

// ---- bodies ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_and_streaming_bodies_pass_through_unstored() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache).max_body_size(1024)).await;
        for (path, detail, len) in [("/big", "too-large", 2048), ("/stream", "streaming", 6)] {
            for _ in 0..2 {
                let r = s.get(path).await;
                assert_eq!(r.body.len(), len, "{backend} {path}");
                assert!(
                    r.cache_status().ends_with(&format!("detail=\"{detail}\"")),
                    "{backend} {path}: {}",
                    r.cache_status()
                );
            }
        }
        assert_eq!(s.app.calls("big") + s.app.calls("stream"), 4);
        // Within the (default) limit, stored.
        let s = serve(layer(&cache.namespace("roomy"))).await;
        s.get("/big").await;
        assert!(s.get("/big").await.hit(), "{backend}");
    }
}

// ---- the pipeline ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_requests_run_the_handler_once() {
    for (backend, cache) in tests::backends().await {
        let s = Arc::new(serve(layer(&cache)).await);
        let waits_before = cache.stats().flight_waits;
        let requests: Vec<_> = (0..16)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.get("/slow").await.text() })
            })
            .collect();
        // Every request is in: one runs the handler, fifteen wait for its response.
        eventually("15 waiters", || async {
            cache.stats().flight_waits - waits_before >= 15
        })
        .await;
        s.app.gate.0.add_permits(16);
        for r in requests {
            assert_eq!(r.await.expect("request"), "slow");
        }
        assert_eq!(s.app.calls("slow"), 1, "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_distributed_fill_lock_runs_the_handler_once_across_processes() {
    let ns = tests::unique_namespace();
    let a = tests::redis_builder()
        .namespace(&ns)
        .build()
        .expect("cache a");
    let b = tests::redis_builder()
        .namespace(&ns)
        .build()
        .expect("cache b");
    let app = App::default();
    let one = serve_app(layer(&a).lock(FillLock::Distributed), app.clone()).await;
    let two = Arc::new(serve_app(layer(&b).lock(FillLock::Distributed), app.clone()).await);
    let first = {
        let one = Arc::new(one);
        let o = one.clone();
        (
            tokio::spawn(async move { o.get("/slow").await.text() }),
            one,
        )
    };
    eventually("the first handler call", || async {
        app.calls("slow") == 1
    })
    .await;
    let second = {
        let t = two.clone();
        tokio::spawn(async move { t.get("/slow").await.text() })
    };
    // The second process reads a miss and waits on the fill lock the first holds.
    eventually("the second process to wait for the lock", || async {
        b.stats().misses >= 1
    })
    .await;
    app.gate.0.add_permits(2);
    assert_eq!(first.0.await.expect("first"), "slow");
    assert_eq!(second.await.expect("second"), "slow");
    assert_eq!(
        app.calls("slow"),
        1,
        "the second process was served the first's response"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_while_revalidate_serves_stale_and_refreshes_in_the_background() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache)).await;
        assert_eq!(s.get("/swr").await.text(), "swr v0");
        s.app.version.store(1, Ordering::SeqCst);
        // Past max-age=1: the stale response, at once, while one request refreshes it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let stale = loop {
            let r = s.get("/swr").await;
            if r.cache_status().contains("detail=stale") {
                break r;
            }
            assert_eq!(r.text(), "swr v0", "{backend}: fresh until max-age");
            assert!(Instant::now() < deadline, "{backend}: never stale");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(stale.text(), "swr v0", "{backend}");
        assert!(
            stale.cache_status().contains("ttl=-"),
            "{}",
            stale.cache_status()
        );
        // The refresh is held at the gate; every request meanwhile gets the stale response.
        eventually("the refresh to start", || async { s.app.calls("swr") == 2 }).await;
        let again = s.get("/swr").await;
        assert_eq!(again.text(), "swr v0", "{backend}");
        assert!(again.cache_status().contains("detail=stale"), "{backend}");
        s.app.gate.0.add_permits(1);
        eventually("the refreshed response", || async {
            s.get("/swr").await.text() == "swr v1"
        })
        .await;
        assert_eq!(s.app.calls("swr"), 2, "{backend}: one refresh");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_if_error_serves_the_stored_response_when_the_handler_fails() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache)).await;
        assert_eq!(s.get("/flaky").await.text(), "good");
        s.app.version.store(1, Ordering::SeqCst); // the handler answers 503 from now on
        eventually("the entry to go stale", || async {
            let r = s.get("/flaky").await;
            assert_eq!(r.status, StatusCode::OK, "{backend}: never the 503");
            assert_eq!(r.text(), "good");
            r.cache_status().contains("detail=stale")
        })
        .await;
        // The handler ran (and failed) behind the stale response.
        eventually("the failed refresh", || async { s.app.calls("flaky") >= 2 }).await;
        let r = s.get("/flaky").await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (StatusCode::OK, "good"),
            "{backend}"
        );
        // Without a stored response, the error passes through, unstored.
        let fresh = serve(layer(&cache.namespace("cold"))).await;
        fresh.app.version.store(1, Ordering::SeqCst);
        let r = fresh.get("/flaky").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            r.cache_status().ends_with("detail=\"error\""),
            "{}",
            r.cache_status()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tags_from_the_request_are_invalidated_by_the_cache() {
    for (backend, cache) in tests::backends().await {
        let s = serve(layer(&cache).tags(|parts: &http::request::Parts| {
            vec![format!(
                "user:{}",
                parts.uri.path().trim_start_matches("/users/")
            )]
        }))
        .await;
        s.get("/users/7").await;
        s.get("/users/8").await;
        s.app.version.store(1, Ordering::SeqCst);
        assert!(s.get("/users/7").await.hit());
        cache.invalidate_tag("user:7").await.expect("invalidate");
        assert_eq!(s.get("/users/7").await.text(), "user 7 v1", "{backend}");
        assert_eq!(s.get("/users/8").await.text(), "user 8 v0", "{backend}");
        assert_eq!(s.app.calls("users"), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_unreachable_the_handler_answers() {
    // A loopback port nothing listens on (bound by the OS, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let cache = tests::quick_failing_builder(&url)
        .breaker(2, Duration::from_secs(60))
        .build()
        .expect("a cache on a port nothing listens on");
    let s = serve(layer(&cache)).await;
    for _ in 0..5 {
        let r = s.get("/plain").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "plain v0"));
    }
    assert!(cache.stats().breaker_opened >= 1, "the breaker opened");
    let r = s.get("/cc/private").await;
    assert_eq!(r.status, StatusCode::OK);
}

// ---- the L1 near cache -----------------------------------------------------------------------

/// With the cache's L1 on (`CacheBuilder::local_cache`), hits are answered from process memory,
/// byte for byte the response a Redis hit gives, and every invalidation reaches them: a tag
/// invalidated here, and a response replaced by another instance (heard through tracking).
/// Redis only: the L1 sits in front of Redis, the in-memory backend has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_l1_on_hits_come_from_it_and_invalidations_reach_it() {
    let builder = tests::redis_builder().local_cache(1_000);
    let (here, there) = (
        builder.clone().build().expect("build"),
        builder.build().expect("build"),
    );
    for c in [&here, &there] {
        eventually("the L1 feed subscribed", || async {
            c.local_cache_serving()
        })
        .await;
    }
    let tagged = |cache: &Cache| {
        layer(cache).tags(|parts: &http::request::Parts| {
            vec![format!(
                "user:{}",
                parts.uri.path().trim_start_matches("/users/")
            )]
        })
    };
    let app = App::default();
    let s = serve_app(tagged(&here), app.clone()).await;
    let other = serve_app(tagged(&there), app.clone()).await;

    let miss = s.get("/users/7").await;
    assert_eq!(miss.text(), "user 7 v0");
    // The first hit reads Redis and fills the L1 (unless the tracking message of the miss's
    // own write lands after that read began: then a later hit fills it); the ones after are
    // answered from it.
    let from_redis = s.get("/users/7").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let from_l1 = loop {
        let local_before = here.stats().local_hits;
        let reply = s.get("/users/7").await;
        if here.stats().local_hits > local_before {
            break reply;
        }
        assert!(Instant::now() < deadline, "no hit was answered by the L1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for hit in [&from_redis, &from_l1] {
        assert!(hit.hit(), "{}", hit.cache_status());
        assert_eq!(hit.status, StatusCode::OK);
        assert_eq!(hit.text(), "user 7 v0");
        assert_eq!(hit.headers["etag"], miss.headers["etag"]);
        assert_eq!(hit.headers["cache-control"], "max-age=60");
        assert!(hit.headers.contains_key("age"));
    }
    assert_eq!(
        from_l1.headers.len(),
        from_redis.headers.len(),
        "{:?} / {:?}",
        from_l1.headers,
        from_redis.headers
    );
    assert_eq!(app.calls("users"), 1);

    // A tag invalidated through this instance: the L1 does not answer with what it held.
    app.version.store(1, Ordering::SeqCst);
    here.invalidate_tag("user:7").await.expect("invalidate");
    let after = s.get("/users/7").await;
    assert_eq!(after.text(), "user 7 v1", "{}", after.cache_status());
    assert_eq!(app.calls("users"), 2);
    let hit = s.get("/users/7").await;
    assert!(hit.hit(), "{}", hit.cache_status());

    // Another instance replaces the response (request `no-cache`): tracking tells this one's
    // L1, which then answers with the new response.
    app.version.store(2, Ordering::SeqCst);
    let replaced = other
        .get_with("/users/7", &[("cache-control", "no-cache")])
        .await;
    assert_eq!(replaced.text(), "user 7 v2");
    eventually("the other instance's response served here", || async {
        s.get("/users/7").await.text() == "user 7 v2"
    })
    .await;
    assert_eq!(
        app.calls("users"),
        3,
        "every answer after came from the cache"
    );
}
