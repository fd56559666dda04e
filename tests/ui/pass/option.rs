//! `Option<T>`: only `Some` is cached.
#![deny(warnings)]

use cache_core::cached;

#[cached(key = "find:<name>")]
async fn find(name: String) -> Option<u64> {
    name.parse().ok()
}

fn main() {
    let _ = find("1".to_owned());
}
