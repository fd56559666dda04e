use cache_core::cached;

#[cached(key = "n:<n>", cache_none = true)]
async fn n(n: u64) -> Option<u64> {
    Some(n)
}

fn main() {}
