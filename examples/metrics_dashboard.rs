//! `cargo run --example metrics_dashboard --features metrics`: the cache's metrics as Prometheus scrapes them,
//! while a bounded load runs.
//!
//! Serves `http://127.0.0.1:9898/metrics` (the Prometheus exposition, through
//! `metrics-exporter-prometheus`) and `/health` (the `cache.health()` JSON a readiness route
//! would answer) on loopback for `DASHBOARD_SECS` seconds (default 10), while four tasks read
//! through `get_or_set` in two namespaces; then prints the cache's lines of the exposition and
//! exits. `METRICS_PORT` changes the port; `REDIS_URL=redis://127.0.0.1:6379` runs on Redis.
//! Point a Prometheus at it (`scrape_configs: [{job_name: cache, static_configs:
//! [{targets: ["127.0.0.1:9898"]}]}]`) to see what Grafana will show.

use std::time::{Duration, Instant};

use cache_core::Cache;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Histogram buckets (seconds) for cache operations: 50 µs to 1 s.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
        .install_recorder()?;
    cache_core::stats::describe_metrics();

    let cache = Cache::from_env()?;
    let secs: u64 = std::env::var("DASHBOARD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let port: u16 = std::env::var("METRICS_PORT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9898);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("serving http://127.0.0.1:{port}/metrics and /health for {secs} s");
    tokio::spawn(serve(listener, prometheus.clone(), cache.clone()));

    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut load = Vec::new();
    for task in 0..4u64 {
        let cache = cache.clone();
        load.push(tokio::spawn(async move {
            run_load(&cache, task, deadline).await
        }));
    }
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let health = cache.health().await; // also sets the cache_up, cache_ping_seconds... gauges
        prometheus.run_upkeep();
        println!(
            "status {:?}, hits {}, misses {}, hit ratio {:.2}",
            health.status, health.stats.hits, health.stats.misses, health.hit_ratio
        );
    }
    let mut operations = 0;
    for task in load {
        operations += task.await?;
    }
    println!("{operations} operations; the cache's lines of /metrics:");
    let exposition = http_get(port, "/metrics").await?;
    for line in exposition.lines().filter(|l| l.contains("cache_")) {
        if !line.contains("_bucket{") {
            println!("{line}");
        }
    }
    Ok(())
}

/// Reads in two namespaces with a skewed key choice (a few hot keys), computing on misses;
/// invalidates a tag now and then. Bounded by the deadline and by a count.
async fn run_load(cache: &Cache, task: u64, deadline: Instant) -> u64 {
    let users = cache.namespace("users");
    let search = cache.namespace("search");
    let mut state = task.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut n = 0;
    while Instant::now() < deadline && n < 2_000_000 {
        // xorshift: no rand dependency for an example
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let hot = state % 100 < 80;
        let id = if hot { state % 50 } else { state % 5_000 };
        if n % 3 == 0 {
            let _: Vec<u64> = search
                .get_or_set(&format!("q:{id}"), Duration::from_secs(5), || async move {
                    tokio::time::sleep(Duration::from_millis(2)).await; // the search backend
                    vec![id, id + 1]
                })
                .await;
        } else {
            let _: String = users
                .get_or_set(
                    &format!("user:{id}"),
                    Duration::from_secs(30),
                    || async move {
                        tokio::time::sleep(Duration::from_micros(500)).await; // the database
                        format!("user {id}")
                    },
                )
                .await;
        }
        if n % 5_000 == 4_999 {
            let _ = users.delete(&format!("user:{}", state % 50)).await;
        }
        n += 1;
    }
    n
}

/// A minimal HTTP/1.1 responder: `GET /metrics` and `GET /health`, one request per connection.
async fn serve(listener: TcpListener, prometheus: PrometheusHandle, cache: Cache) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let prometheus = prometheus.clone();
        let cache = cache.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 2048];
            let Ok(n) = stream.read(&mut request).await else {
                return;
            };
            let head = String::from_utf8_lossy(&request[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = match path {
                "/metrics" => (200, "text/plain; version=0.0.4", prometheus.render()),
                "/health" => {
                    let health = cache.health().await;
                    let body = serde_json::to_string_pretty(&health).unwrap_or_default();
                    (health.http_status(), "application/json", body)
                }
                _ => (404, "text/plain", "try /metrics or /health\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                if status == 200 { "OK" } else { "Error" },
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

async fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}
