//! `Result<T, E>`: only `Ok` is cached, and `E` needs nothing cache-related.
#![deny(warnings)]

use cache_core::cached;

#[derive(Debug)]
pub struct DbError;

#[cached(key = "row:<id>")]
async fn row(id: u64) -> Result<String, DbError> {
    if id == 0 {
        return Err(DbError);
    }
    let parsed: u64 = "7".parse().map_err(|_| DbError)?;
    Ok(format!("{id}:{parsed}"))
}

fn main() {
    let _ = row(1);
}
