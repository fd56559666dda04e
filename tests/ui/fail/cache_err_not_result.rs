use cache_core::cached;

#[cached(key = "n:<n>", cache_err)]
async fn n(n: u64) -> Option<u64> {
    Some(n)
}

fn main() {}
