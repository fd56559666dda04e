//! `mut` parameters stay mutable in the body and do not warn in the wrapper.
#![deny(warnings)]

use cache_core::cached;

#[cached(key = "inc:<n>")]
async fn inc(mut n: u64) -> u64 {
    n += 1;
    n
}

fn main() {
    let _ = inc(1);
}
