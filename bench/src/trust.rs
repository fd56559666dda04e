//! Issue 21's rows: `clear()` of a namespace holding 100k keys (one command, whatever the
//! number of keys) against `invalidate_pattern("*")` over the same namespace (a `SCAN` of the
//! keyspace and a tombstone per key). The plain hit with generations read in its `MGET` is
//! the existing `ours hit c=64` row, compared with the run of record.
//!
//! Each round writes the namespace's 100k keys through the cache (untimed), then times the
//! one call; ops/s is keys made unreadable per second, p50 the time of the call.

use std::future::Future;
use std::time::Instant;

use crate::measure::Round;
use crate::workloads::{Ctx, Expect, Workload, TTL};

/// Keys in the namespace each round clears.
const KEYS: usize = 100_000;

const PATTERN: &str = "ours invalidate_pattern * of a 100k-key namespace";

pub fn workloads() -> Vec<Workload> {
    let row = |name, reference, run| Workload {
        name,
        reference,
        expect: Expect::Unchecked,
        run,
    };
    vec![
        row(PATTERN, None, |cx| Box::pin(pattern_namespace(cx))),
        row("ours clear of a 100k-key namespace", Some(PATTERN), |cx| {
            Box::pin(clear_namespace(cx))
        }),
    ]
}

async fn populate(scope: &cache_core::Cache) {
    let keys: Vec<String> = (0..KEYS).map(|i| format!("k:{i}")).collect();
    for chunk in keys.chunks(1_000) {
        let items: Vec<(&str, u32)> = chunk.iter().map(|k| (k.as_str(), 1)).collect();
        scope
            .mset(&items, TTL)
            .await
            .expect("populating the namespace");
    }
}

async fn timed<Fut: Future<Output = ()>>(call: Fut) -> Round {
    let t0 = Instant::now();
    call.await;
    let elapsed = t0.elapsed();
    let us = elapsed.as_secs_f64() * 1e6;
    Round {
        ops: KEYS as u64,
        ops_with_warmup: KEYS as u64,
        ops_per_sec: KEYS as f64 / elapsed.as_secs_f64(),
        p50_us: us,
        p99_us: us,
        client_cpu_us: f64::NAN,
        server_cpu_us: f64::NAN,
    }
}

async fn pattern_namespace(cx: &'static Ctx) -> Round {
    let scope = cx.ours.namespace("trust-pattern");
    populate(&scope).await;
    timed(async {
        let removed = scope
            .invalidate_pattern("*")
            .await
            .expect("invalidate_pattern");
        assert_eq!(removed, KEYS as u64, "keys removed by the pattern");
    })
    .await
}

async fn clear_namespace(cx: &'static Ctx) -> Round {
    let scope = cx.ours.namespace("trust-clear");
    populate(&scope).await;
    let round = timed(async { scope.clear().await.expect("clear") }).await;
    assert_eq!(scope.get::<u32>("k:0").await.expect("get"), None, "cleared");
    round
}
