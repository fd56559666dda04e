//! A `Result` alias such as `std::io::Result<T>` is a `Result`.
#![deny(warnings)]

use cache_core::cached;

#[cached(key = "file:<path>")]
async fn read(path: String) -> std::io::Result<String> {
    Ok(path)
}

fn main() {
    let _ = read("a".to_owned());
}
