//! The stampede and staleness attributes, on a function that owns its arguments (its
//! refreshes can outlive their caller) and on a method that borrows them (driven by its
//! caller).
#![deny(warnings)]

use cache_core::{cached, Cache, Error};

#[cached(
    key = "price:<id>",
    ttl = "1m",
    stale = "1h",
    refresh = "early",
    lock = "distributed",
    soft_timeout = "100ms",
    hard_timeout = "2s"
)]
async fn price(id: u64) -> Result<u64, Error> {
    Ok(id)
}

#[cached(key = "name:<id>", ttl = "1m", stale = "10m", lock = "none")]
async fn name(id: u64) -> String {
    id.to_string()
}

struct Repo {
    cache: Cache,
}

impl Repo {
    #[cached(cache = self.cache, key = "user:<id>", ttl = "1m", stale = "1h", soft_timeout = "50ms", lock = "local")]
    async fn user(&self, id: u64) -> Option<String> {
        Some(id.to_string())
    }
}

async fn all(repo: &Repo) {
    let _: Result<u64, Error> = price(1).await;
    let _: String = name(1).await;
    let _: Option<String> = repo.user(1).await;
}

fn main() {
    let _ = all;
}
