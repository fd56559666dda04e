//! `crate = "path"` for crates that re-export cache_core.
#![deny(warnings)]

mod reexport {
    pub use cache_core as cache;
}

use cache_core::{cache_evict, cache_put, cached};

#[cached(crate = "crate::reexport::cache", key = "n:<n>")]
async fn n(n: u64) -> u64 {
    n
}

#[cache_evict(crate = "crate::reexport::cache", key = "n:<n>")]
async fn forget(n: u64) {
    let _ = n;
}

#[cache_put(crate = "crate::reexport::cache", key = "n:<n>")]
async fn put(n: u64) -> u64 {
    n
}

fn main() {
    let _ = n(1);
    let _ = forget(1);
    let _ = put(1);
}
