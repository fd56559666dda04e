use cache_core::cached;

#[cached(key = "n:<n>", ttl = 0)]
async fn n(n: u64) -> u64 {
    n
}

fn main() {}
