use cache_core::cached;

#[derive(Debug)]
struct DbError;

#[cached(key = "n:<n>", ttl = "1m", hard_timeout = "2s")]
async fn n(n: u64) -> Result<u64, DbError> {
    Ok(n)
}

fn main() {}
