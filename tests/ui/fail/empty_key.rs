use cache_core::cached;

#[cached(key = "")]
async fn answer() -> u64 {
    42
}

fn main() {}
