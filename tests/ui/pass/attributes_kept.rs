//! Doc comments stay on the function, lint attributes and `cfg` apply to
//! every generated function, and the companions are documented.
#![deny(warnings, missing_docs)]

use cache_core::cached;

/// Documented.
#[cached(key = "n:<n>")]
#[allow(clippy::let_and_return)]
#[must_use = "the value is the point"]
pub async fn documented(n: u64) -> u64 {
    #[allow(unused_variables)]
    let unused = 1;
    n
}

/// Only on unix.
#[cfg(unix)]
#[cached(key = "u:<n>")]
pub async fn unix_only(n: u64) -> u64 {
    n
}

/// Never compiled.
#[cfg(any())]
#[cached(key = "never:<n>")]
pub async fn never(n: u64) -> u64 {
    n
}

fn main() {
    let _ = documented(1);
}
