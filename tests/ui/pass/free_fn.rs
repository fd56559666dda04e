//! A free function with a key template, a ttl and a tag.
#![deny(warnings)]

use cache_core::cached;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct User {
    pub name: String,
}

#[cached(key = "user:<user_id>", ttl = "5m", tags = ["org:<org_id>"])]
async fn get_user(org_id: u64, user_id: u64) -> User {
    User {
        name: format!("{org_id}/{user_id}"),
    }
}

fn main() {
    let _ = get_user(1, 2);
}
