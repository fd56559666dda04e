//! Without `key`, the key is the function's path and every argument not in
//! `skip`.
#![deny(warnings)]

use cache_core::cached;

#[cached(ttl = "1h 30m")]
async fn sum(a: u64, b: u64) -> u64 {
    a + b
}

#[cached(skip = [verbose])]
async fn name(id: u64, verbose: bool) -> String {
    if verbose {
        format!("id {id}")
    } else {
        id.to_string()
    }
}

#[cached]
async fn constant() -> u64 {
    42
}

fn main() {
    let _ = sum(1, 2);
    let _ = name(1, true);
    let _ = constant();
}
