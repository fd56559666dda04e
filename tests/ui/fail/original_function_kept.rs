// The function is still emitted when the attribute is wrong, so its own
// errors and its callers' are reported too.
use cache_core::cached;

#[cached(key = "n:<m>")]
async fn n(n: u64) -> u64 {
    let wrong: String = n;
    wrong.len() as u64
}

async fn caller() -> u64 {
    n(1).await
}

fn main() {
    let _ = caller();
}
