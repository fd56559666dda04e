//! Issue 21: the embedded backend holds its byte budget for what its entries really keep
//! (allocated capacity, per-entry overhead), whatever the values compress to. A test binary
//! of its own, with one test: resident memory is a process-wide figure that other tests
//! running beside it would disturb.

use std::time::Duration;

const BUDGET: u64 = 16 * 1024 * 1024;
const VALUES: usize = 20_000;
const VALUE_LEN: usize = 8 * 1024;

/// Resident memory of this process, in bytes (`/proc/self/statm`: pages).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm is readable");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field is the resident page count");
    // SAFETY: sysconf only reads a configuration value.
    #[allow(unsafe_code)]
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).expect("a positive page size")
}

/// 8 KiB of letters no compressor shrinks much: xorshift over a 64-letter alphabet.
fn incompressible(seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..VALUE_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Fills `cache` through `put` with 20,000 compressible then 20,000 incompressible values;
/// returns resident memory's growth after each half.
async fn fill<F, Fut>(what: &str, put: F) -> (u64, u64)
where
    F: Fn(String, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let compressible = "a".repeat(VALUE_LEN);
    let before = resident_bytes();
    for i in 0..VALUES {
        put(format!("c{i}"), compressible.clone()).await;
    }
    let after_compressible = resident_bytes().saturating_sub(before);
    for i in 0..VALUES {
        put(format!("r{i}"), incompressible(i as u64)).await;
    }
    let after_both = resident_bytes().saturating_sub(before);
    println!(
        "{what}, budget {:.0} MiB: resident +{:.1} MiB after {VALUES} compressible values of \
         8 KiB, +{:.1} MiB after {VALUES} incompressible ones more",
        mb(BUDGET),
        mb(after_compressible),
        mb(after_both),
    );
    (after_compressible, after_both)
}

/// Gives freed memory back to the system, so that one phase's leftovers do not hide the
/// next one's growth.
fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Both stores in one test, one after the other: resident memory is the process's, and two
/// tests running side by side would count each other's growth.
#[tokio::test(flavor = "current_thread")]
async fn the_embedded_backend_and_the_fallback_store_hold_their_budget() {
    embedded_backend().await;
    trim();
    fallback_store().await;
}

async fn embedded_backend() {
    let cache = cache_core::Cache::builder()
        .in_memory()
        .namespace(tests::unique_namespace().as_str())
        .memory_capacity(BUDGET)
        .build()
        .expect("an in-memory cache builds");
    let (_, growth) = fill("embedded backend", |key, value| {
        let cache = &cache;
        async move {
            cache
                .set(&key, &value, Duration::from_secs(600))
                .await
                .expect("set");
        }
    })
    .await;
    assert!(
        growth < 2 * BUDGET,
        "embedded backend: resident memory grew by {:.1} MiB, 2x the budget is {:.0} MiB",
        mb(growth),
        mb(2 * BUDGET)
    );
    // The budget is used, not avoided by keeping nothing. (Not necessarily the newest
    // value: moka's admission policy may turn a new entry away.)
    let mut kept = 0;
    for i in 0..VALUES {
        for key in [format!("c{i}"), format!("r{i}")] {
            if cache.get::<String>(&key).await.expect("get").is_some() {
                kept += 1;
            }
        }
    }
    println!("embedded backend: {kept} of {} values kept", 2 * VALUES);
    assert!(kept > 0, "the store kept nothing");
}

async fn fallback_store() {
    // Nothing listens on this port: the breaker opens at the first failure, and every
    // `get_or_set` from then on computes into the fallback store.
    let port = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let cache = tests::quick_failing_builder(&format!("redis://127.0.0.1:{port}"))
        .breaker(1, Duration::from_secs(600))
        .memory_capacity(BUDGET)
        .build()
        .expect("builds");
    let opened = cache.get::<u32>("probe").await;
    assert!(opened.is_err(), "no redis there: {opened:?}");
    assert_eq!(cache.stats().breaker_opened, 1, "{:?}", cache.stats());
    let (compressible_growth, growth) = fill("fallback store", |key, value| {
        let cache = &cache;
        async move {
            let got = cache
                .get_or_set(&key, Duration::from_secs(600), || async { value.clone() })
                .await;
            assert_eq!(got.len(), VALUE_LEN);
        }
    })
    .await;
    // The store is the embedded backend's, weighed the same way; beside it, the
    // get-or-compute path keeps landed flights' values a moment for racing callers, at most
    // about 1 MiB of them (pipeline/flight.rs, `LINGER_BYTES`). Both halves are bounded.
    assert!(
        compressible_growth < 2 * BUDGET,
        "fallback store: resident memory grew by {:.1} MiB with compressible values, 2x the \
         budget is {:.0} MiB",
        mb(compressible_growth),
        mb(2 * BUDGET)
    );
    assert!(
        growth < 2 * BUDGET,
        "fallback store: resident memory grew by {:.1} MiB in all, 2x the budget is {:.0} MiB",
        mb(growth),
        mb(2 * BUDGET)
    );
    // Kept: read back from the fallback store, without computing (a miss computes "").
    let hits = cache.stats().fallback_hits;
    for i in (0..VALUES).step_by(10) {
        let key = format!("r{i}");
        let _ = cache
            .get_or_set(&key, Duration::from_secs(600), || async { String::new() })
            .await;
    }
    let kept = cache.stats().fallback_hits - hits;
    println!(
        "fallback store: {kept} of {} sampled values kept",
        VALUES / 10
    );
    assert!(kept > 0, "the fallback store kept nothing");
}
