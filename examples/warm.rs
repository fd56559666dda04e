//! `cargo run --example warm`: warms 10,000 entries ahead of traffic, with a progress bar.
//!
//! Without `REDIS_URL` it runs on the embedded backend; with `REDIS_URL=redis://127.0.0.1:6379`
//! on Redis. Ctrl-C cancels: loads already running finish, no new one starts, and the summary
//! says how many were skipped.

use std::time::Duration;

use cache_core::{warm::WarmCancel, Cache};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: u64,
}

/// A database read, in real life; one product in a thousand is missing.
async fn load_product(key: &str) -> Result<Product, String> {
    let id: u64 = key
        .strip_prefix("product:")
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| format!("not a product key: {key}"))?;
    tokio::time::sleep(Duration::from_millis(2)).await;
    if id % 1000 == 999 {
        return Err(format!("product {id} not found"));
    }
    Ok(Product {
        id,
        name: format!("product {id}"),
        price_cents: 100 + id % 900,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = Cache::from_env()?.namespace("catalog");
    let keys: Vec<String> = (0..10_000).map(|i| format!("product:{i}")).collect();

    let bar = ProgressBar::new(keys.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta}) {msg}",
    )?);
    let cancel = WarmCancel::new();
    let on_ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });

    let summary = cache
        .warm(keys, |key: String| async move { load_product(&key).await })
        .concurrency(64)
        .ttl(Duration::from_secs(600))
        .cancel_on(cancel)
        .on_progress(|p| {
            bar.set_position(p.done);
            if p.errors > 0 {
                bar.set_message(format!("{} errors", p.errors));
            }
        })
        .run()
        .await;
    bar.finish();

    println!("{}", serde_json::to_string_pretty(&summary)?);
    let stats = cache.scope_stats();
    println!(
        "writes {} in namespace {}, write p50 {:.0} µs, p99 {:.0} µs",
        stats.writes, stats.namespace, stats.write_latency.p50_us, stats.write_latency.p99_us
    );
    let product: Option<Product> = cache.get("product:42").await?;
    println!("product:42 is now cached: {product:?}");
    Ok(())
}
