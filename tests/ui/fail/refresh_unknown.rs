use cache_core::cached;

#[cached(key = "n:<n>", ttl = "1m", refresh = "late")]
async fn n(n: u64) -> u64 {
    n
}

fn main() {}
