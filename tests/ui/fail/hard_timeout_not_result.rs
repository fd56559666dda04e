use cache_core::cached;

#[cached(key = "n:<n>", ttl = "1m", hard_timeout = "2s")]
async fn n(n: u64) -> Option<u64> {
    Some(n)
}

fn main() {}
