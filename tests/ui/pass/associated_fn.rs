//! An associated function whose signature mentions `Self` calls its
//! companions through `Self::`.
#![deny(warnings)]

use cache_core::cached;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct User {
    id: u64,
}

impl User {
    #[cached(key = "user:<id>")]
    async fn find(id: u64) -> Option<Self> {
        Some(User { id })
    }
}

fn main() {
    let _ = User::find(1);
}
