//! The cache can be a parameter, left out of the key with `skip`.
#![deny(warnings)]

use cache_core::{cached, Cache};

#[cached(cache = cache, skip = [cache], key = "double:<n>")]
async fn double(cache: &Cache, n: u64) -> u64 {
    n * 2
}

#[cached(cache = cache, skip = [cache])]
async fn triple(cache: &Cache, n: u64) -> u64 {
    n * 3
}

fn main() {
    let cache = Cache::in_memory();
    let _ = double(&cache, 3);
    let _ = triple(&cache, 3);
}
