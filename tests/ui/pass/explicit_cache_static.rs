//! `cache = expr` with a static: deref coercion from `LazyLock<Cache>`.
#![deny(warnings)]

use std::sync::LazyLock;

use cache_core::{cached, Cache};

static CACHE: LazyLock<Cache> = LazyLock::new(Cache::in_memory);

#[cached(cache = CACHE, key = "double:<n>")]
async fn double(n: u64) -> u64 {
    n * 2
}

fn main() {
    let _ = double(3);
}
