//! `<param.field.field>` and tuple indices.
#![deny(warnings)]

use cache_core::cached;

pub struct Org {
    pub id: u64,
}

pub struct User {
    pub id: u64,
    pub org: Org,
}

#[cached(key = "user:<user.org.id>:<user.id>:<pair.0>")]
async fn describe(user: User, pair: (u64, String)) -> String {
    format!("{}:{}", user.id, pair.1)
}

fn main() {
    let _ = describe(
        User {
            id: 1,
            org: Org { id: 2 },
        },
        (3, "x".to_owned()),
    );
}
