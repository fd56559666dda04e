//! Issue 21's rows: `clear()` of a namespace holding 100k keys (one command, whatever the
//! number of keys) against `invalidate_pattern("*")` over the same namespace (a `SCAN` of the
//! keyspace and a tombstone per key); and how soon another instance, which knows the scope's
//! generation (its hits read no generation key), sees a clear. The plain hit with the
//! generations known in process is the existing `ours hit c=64` row.
//!
//! The two clear rows write the namespace's 100k keys through the cache (untimed), then time
//! the one call; ops/s is keys made unreadable per second, p50 the time of the call.

use std::future::Future;
use std::time::Instant;

use crate::measure::{delay_round, poll_until, Round};
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
        row("another instance sees a clear", None, |cx| {
            Box::pin(clear_visibility(cx))
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

/// From `clear()` returning on `Ctx::ours` to a read through another instance (`Ctx::l1`'s
/// root, its L1 not used: it reads Redis, trusting the generation it knows) missing the value
/// written before. Per operation: a value written, read by the other instance until it hits
/// (so it knows the generation), the clear, then reads until a miss. p50/p99 are of that
/// delay; ops/s counts whole cycles.
async fn clear_visibility(cx: &'static Ctx) -> Round {
    let writer = cx.ours.namespace("trust-vis");
    let reader = cx.l1.without_local_cache().namespace("trust-vis");
    delay_round(&cx.plan, |_| {
        let (writer, reader) = (writer.clone(), reader.clone());
        async move {
            writer.set("k", &1u32, TTL).await.expect("set");
            let read = || async { reader.get::<u32>("k").await.expect("get") };
            poll_until("never read", || async { read().await.is_some() }).await;
            writer.clear().await.expect("clear");
            poll_until("the clear never reached the other instance", || async {
                read().await.is_none()
            })
            .await
        }
    })
    .await
}
