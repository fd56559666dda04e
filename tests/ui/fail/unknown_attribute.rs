use cache_core::cached;

#[cached(key = "n:<n>", expiry = "10m")]
async fn n(n: u64) -> u64 {
    n
}

fn main() {}
