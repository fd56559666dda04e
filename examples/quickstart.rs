//! `cargo run --example quickstart`: the main ideas in a minute of reading.
//!
//! Without `REDIS_URL` it runs on the embedded in-memory backend; with
//! `REDIS_URL=redis://127.0.0.1:6379` it runs on Redis.

use std::time::{Duration, Instant};

use cache_core::{cached, Cache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Report {
    id: u64,
    rows: usize,
}

/// A slow computation, cached for a minute under `report:<id>`. The key template is checked
/// against the parameters at compile time: a typo in `<id>` does not compile.
#[cached(key = "report:<id>", ttl = 60)]
async fn build_report(id: u64) -> Report {
    tokio::time::sleep(Duration::from_millis(300)).await; // a database, in real life
    Report { id, rows: 1_000 }
}

#[tokio::main]
async fn main() -> Result<(), cache_core::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .without_time()
        .init();

    // Redis when REDIS_URL is set, the embedded backend otherwise (a log line says which).
    let cache = Cache::from_env()?;
    println!("backend: {:?}", cache.backend());

    // set / get with a TTL
    cache
        .set("greeting", &"hello", Duration::from_secs(30))
        .await?;
    let greeting: Option<String> = cache.get("greeting").await?;
    println!(
        "get greeting -> {greeting:?} (ttl {:?})",
        cache.ttl("greeting").await?
    );

    // get_or_set: the first call computes (slow), the second is served from the cache
    for attempt in 1..=2 {
        let started = Instant::now();
        let total: u64 = cache
            .get_or_set("sum:1..1e6", Duration::from_secs(60), || async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                (1..=1_000_000u64).sum()
            })
            .await;
        println!(
            "get_or_set attempt {attempt}: {total} in {:?}",
            started.elapsed()
        );
    }

    // #[cached] functions use the installed global cache
    let _ = cache_core::install(cache.clone());
    for attempt in 1..=2 {
        let started = Instant::now();
        let report = build_report(7).await;
        println!(
            "build_report(7) attempt {attempt}: {report:?} in {:?}",
            started.elapsed()
        );
    }
    build_report_invalidate(7).await?;
    println!("after build_report_invalidate(7): cached again on next call");

    // tenants: the same key, isolated per tenant
    let acme = cache.tenant("acme");
    let globex = cache.tenant("globex");
    acme.set("plan", &"enterprise", None).await?;
    println!(
        "tenant acme plan -> {:?}, tenant globex plan -> {:?}",
        acme.get::<String>("plan").await?,
        globex.get::<String>("plan").await?
    );

    // namespaces: a per-type cache with its own default TTL
    let screening = cache
        .namespace("screening")
        .with_default_ttl(Duration::from_secs(600));
    screening.set("case:42", &"clear", None).await?;
    println!(
        "namespace screening: key {:?}, ttl {:?}",
        screening.full_key("case:42")?,
        screening.ttl("case:42").await?
    );

    let s = cache.stats();
    println!(
        "stats: {} hits, {} misses, {} writes",
        s.hits, s.misses, s.writes
    );
    Ok(())
}
