use cache_core::cached;

#[cached(key = "n:<n>", stale = "10m")]
async fn n(n: u64) -> u64 {
    n
}

fn main() {}
