use cache_core::cached;

#[cached(key = "n:<n>", ttl = "1m", soft_timeout = "100ms")]
async fn n(n: u64) -> u64 {
    n
}

fn main() {}
