use cache_core::cached;

#[derive(Debug)]
pub struct DbError;

#[cached(key = "n:<n>", cache_err)]
async fn n(n: u64) -> Result<u64, DbError> {
    Ok(n)
}

fn main() {}
