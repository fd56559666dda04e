//! A small HTTP service on axum: a `#[cached]` handler helper, the rate-limit layer, login /
//! logout / "log out everywhere" with the session store, `/health`, and `/catalog/{id}`
//! behind the HTTP response cache layer (`ResponseCacheLayer`: whole responses in the
//! cache, `Age`, `Cache-Status`, `ETag` and 304s, tagged per item).
//!
//! ```text
//! cargo run --example axum_service                        # embedded backend
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example axum_service
//! LISTEN_ADDR=127.0.0.1:8080 cargo run --example axum_service   # or the address as argument
//!
//! curl -i localhost:3000/health
//! curl -i -c jar -X POST 'localhost:3000/login?user=ann'
//! curl -i -b jar localhost:3000/me
//! curl -i -b jar -X POST localhost:3000/logout-everywhere
//! for i in $(seq 40); do curl -s -o /dev/null -w '%{http_code} ' localhost:3000/products/1; done
//! curl -i localhost:3000/catalog/7; curl -i localhost:3000/catalog/7   # a miss, then a hit
//! curl -i -H 'if-none-match: <the etag>' localhost:3000/catalog/7    # 304 from the cache
//! curl -i -X POST localhost:3000/catalog/7/changed                   # invalidates its tag
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use cache_core::http::ResponseCacheLayer;
use cache_core::Cache;

/// A catalog page: slow to render, so whole responses are kept (60 s, or what its
/// `Cache-Control` says), stale for 5 minutes more while one request refreshes it.
async fn catalog_page(Path(id): Path<u64>) -> ([(&'static str, &'static str); 1], String) {
    tokio::time::sleep(Duration::from_millis(50)).await; // a template and a few queries
    (
        [(
            "cache-control",
            "public, max-age=60, stale-while-revalidate=300",
        )],
        format!("<h1>item {id}</h1>"),
    )
}

/// An item changed: every cached response about it goes.
async fn catalog_changed(State(cache): State<Cache>, Path(id): Path<u64>) -> &'static str {
    match cache.invalidate_tag(&format!("item:{id}")).await {
        Ok(()) => "invalidated",
        Err(_) => "the cache is unreachable; responses expire with their max-age",
    }
}

/// The catalog routes, their GETs cached by the response cache layer.
fn catalog(cache: Cache) -> Router {
    // Its own namespace: the tags invalidated below are this scope's.
    let cache = cache.namespace("http");
    let pages = Router::new()
        .route("/catalog/{id}", get(catalog_page))
        .layer(
            ResponseCacheLayer::new(cache.clone())
                .ttl(Duration::from_secs(60))
                .tags(|parts: &axum::http::request::Parts| {
                    let id = parts.uri.path().trim_start_matches("/catalog/");
                    vec![format!("item:{id}")]
                }),
        );
    Router::new()
        .route("/catalog/{id}/changed", post(catalog_changed))
        .with_state(cache)
        .merge(pages)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("LISTEN_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let per_minute = match std::env::var("PRODUCTS_PER_MINUTE") {
        Ok(v) => v.parse()?,
        Err(_) => 30,
    };
    // Redis when REDIS_URL (or REDIS_HOST) is set, the embedded backend otherwise.
    let cache = Cache::from_env()?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    // The test that runs this binary waits for this line.
    println!("listening on http://{}", listener.local_addr()?);
    let app = examples::axum_service::app(cache.clone(), per_minute).merge(catalog(cache));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
