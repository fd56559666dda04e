//! A small HTTP service on axum: a `#[cached]` handler helper, the rate-limit layer, login /
//! logout / "log out everywhere" with the session store, and `/health`.
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
//! ```

use cache_core::Cache;

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
    examples::axum_service::serve(listener, cache, per_minute).await?;
    Ok(())
}
