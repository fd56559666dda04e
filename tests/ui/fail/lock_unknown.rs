use cache_core::cached;

#[cached(key = "n:<n>", lock = "global")]
async fn n(n: u64) -> u64 {
    n
}

fn main() {}
