//! `&mut self` works when the cache does not borrow `self`.
#![deny(warnings)]

use cache_core::cached;

struct Counter {
    calls: u64,
}

impl Counter {
    #[cached(key = "count:<step>")]
    async fn count(&mut self, step: u64) -> u64 {
        self.calls += step;
        self.calls
    }
}

fn main() {
    let mut counter = Counter { calls: 0 };
    let _ = counter.count(1);
}
