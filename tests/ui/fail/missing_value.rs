use cache_core::cached;

#[cached(key)]
async fn n(n: u64) -> u64 {
    n
}

fn main() {}
