use cache_core::cached;

#[cached(key = "n:<n>", ttl = 60, ttl = "5m")]
async fn n(n: u64) -> u64 {
    n
}

fn main() {}
