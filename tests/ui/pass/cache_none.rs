//! `cache_none` also caches `None`.
#![deny(warnings)]

use cache_core::cached;

#[cached(key = "find:<id>", cache_none)]
async fn find(id: u64) -> Option<String> {
    (id > 1).then(|| id.to_string())
}

fn main() {
    let _ = find(1);
}
