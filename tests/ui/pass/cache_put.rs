//! `#[cache_put]` writes the result through under the cached function's key.
#![deny(warnings)]

use cache_core::{cache_put, cached};
use serde::{Deserialize, Serialize};

#[derive(Debug)]
pub struct DbError;

#[derive(Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
}

#[cached(key = "user:<id>")]
async fn get_user(id: u64) -> Result<User, DbError> {
    Ok(User {
        id,
        name: String::new(),
    })
}

#[cache_put(key = "user:<user.id>", ttl = "10m", tags = ["users"])]
async fn save_user(user: User) -> Result<User, DbError> {
    Ok(user)
}

#[cache_put(key = "name:<id>")]
async fn rename(id: u64, name: String) -> String {
    let _ = id;
    name
}

fn main() {
    let _ = get_user(1);
    let _ = save_user(User {
        id: 1,
        name: "a".to_owned(),
    });
    let _ = rename(1, "b".to_owned());
}
