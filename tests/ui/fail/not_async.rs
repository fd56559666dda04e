use cache_core::cached;

#[cached(key = "square:<n>")]
fn square(n: u64) -> u64 {
    n * n
}

fn main() {}
