//! `cache_err` also caches `Err`, which then must be serializable.
#![deny(warnings)]

use cache_core::cached;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum LookupError {
    NotFound,
}

#[cached(key = "lookup:<id>", cache_err)]
async fn lookup(id: u64) -> Result<String, LookupError> {
    if id == 0 {
        Err(LookupError::NotFound)
    } else {
        Ok(id.to_string())
    }
}

fn main() {
    let _ = lookup(1);
}
