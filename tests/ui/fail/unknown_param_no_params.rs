use cache_core::cached;

#[cached(key = "config:<name>")]
async fn config() -> u64 {
    1
}

fn main() {}
