//! The companions have the function's arguments; `_invalidate` returns
//! `Result<bool, cache_core::Error>`.
#![deny(warnings)]

use cache_core::cached;

#[cached(key = "user:<user_id>", tags = ["org:<org_id>"])]
pub async fn get_user(org_id: u64, user_id: u64) -> Option<String> {
    Some(format!("{org_id}:{user_id}"))
}

async fn all() {
    let _: Option<String> = get_user(1, 2).await;
    let _: Option<String> = get_user_uncached(1, 2).await;
    let _: Option<String> = get_user_refresh(1, 2).await;
    let _: Result<bool, cache_core::Error> = get_user_invalidate(1, 2).await;
}

fn main() {
    let _ = all();
}
