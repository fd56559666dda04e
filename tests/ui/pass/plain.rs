//! Any other return type is always cached.
#![deny(warnings)]

use cache_core::cached;

#[cached(key = "square:<n>", ttl = 60)]
async fn square(n: u64) -> u64 {
    n * n
}

fn main() {
    let _ = square(3);
}
