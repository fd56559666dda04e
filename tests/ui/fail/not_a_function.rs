use cache_core::cached;

#[cached(key = "x")]
struct User;

fn main() {}
