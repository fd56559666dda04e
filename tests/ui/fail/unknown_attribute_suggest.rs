use cache_core::cached;

#[cached(key = "n:<n>", tll = 60)]
async fn n(n: u64) -> u64 {
    n
}

fn main() {}
