//! The L1's byte budget holds for what it really keeps: 20,000 compressible and 20,000
//! incompressible 8 KiB values through a 16 MiB L1 grow the process's resident memory by
//! less than twice the budget. A test binary of its own, on one thread, so that no other test
//! moves the resident set while it is measured. A tenth of the workload first runs without
//! the L1, so that what it allocates and frees on its own (requests, replies, JSON, LZ4, 16
//! calls at a time) has reached its high-water mark before the L1's growth is measured.

use std::time::{Duration, Instant};

use cache_core::{cached, Cache};

const BUDGET: u64 = 16 * 1024 * 1024;
const VALUES: usize = 20_000;
const SIZE: usize = 8 * 1024;

/// Resident memory of this process, in bytes: `VmRSS` of `/proc/self/status` (the resident
/// field of `/proc/self/statm`, in kB rather than pages, so no page size is needed).
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// 8 KiB of one letter (LZ4 stores it in a few dozen bytes) or of letters from a xorshift
/// generator (nothing LZ4 can shorten).
fn value(compressible: bool, seed: u64) -> String {
    if compressible {
        return "a".repeat(SIZE);
    }
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect()
}

#[cached(cache = cache, skip = [cache], key = "v:<compressible>:<i>", ttl = "10m")]
async fn stored(cache: &Cache, compressible: bool, i: u64) -> String {
    value(compressible, i)
}

/// Each value computed and written, read from Redis (into the L1 when it is on), and read
/// again (from the L1).
/// Each key: a miss, then two hits; keys 16 at a time (the round trips overlap, the memory
/// in flight is 16 values).
async fn workload(cache: &Cache, values: usize) {
    use futures_util::StreamExt;
    for compressible in [true, false] {
        futures_util::stream::iter(0..values as u64)
            .for_each_concurrent(16, |i| async move {
                for _ in 0..3 {
                    assert_eq!(stored(cache, compressible, i).await.len(), SIZE);
                }
            })
            .await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_l1_holds_its_byte_budget_for_compressible_and_incompressible_values() {
    let without_l1 = tests::redis_builder().build().expect("build");
    let before_workload = resident();
    workload(&without_l1, VALUES / 10).await;
    let workload_alone = resident().saturating_sub(before_workload);
    drop(without_l1);

    let cache = tests::redis_builder()
        .local_cache(10_000_000)
        .local_cache_max_bytes(BUDGET)
        .local_ttl(Duration::from_secs(600))
        .build()
        .expect("build");
    let start = Instant::now();
    while !cache.local_cache_serving() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "tracking never came up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Warm up the allocator and the connections on keys of their own.
    for i in 0..200 {
        stored(&cache, true, u64::MAX - i).await;
    }
    let before = resident();
    workload(&cache, VALUES).await;
    let grown = resident().saturating_sub(before);
    let stats = cache.stats();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "L1 budget {} MiB: resident memory grew {:.1} MiB over {} values with the L1 ({} L1 hits), after {:.1} MiB for a tenth of the workload without it",
        BUDGET >> 20,
        mib(grown),
        2 * VALUES,
        stats.local_hits,
        mib(workload_alone),
    );
    assert!(
        stats.local_hits >= VALUES as u64,
        "the L1 kept values: {stats:?}"
    );
    assert!(
        grown < 2 * BUDGET,
        "resident memory grew {grown} bytes, the budget is {BUDGET}"
    );
}
