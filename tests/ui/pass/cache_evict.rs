//! `#[cache_evict]` with a key, with tags, with both; `?` and `return` in the
//! body keep their meaning.
#![deny(warnings)]

use cache_core::cache_evict;

#[derive(Debug)]
pub struct DbError;

#[cache_evict(key = "user:<user_id>")]
async fn delete_user(user_id: u64) -> Result<(), DbError> {
    if user_id == 0 {
        return Err(DbError);
    }
    let _: u64 = "1".parse().map_err(|_| DbError)?;
    Ok(())
}

#[cache_evict(tags = ["org:<org_id>"])]
async fn delete_org(org_id: u64) {
    let _ = org_id;
}

#[cache_evict(key = "user:<user_id>", tags = ["org:<org_id>", "users"])]
async fn move_user(org_id: u64, user_id: u64, to: u64) -> u64 {
    let _ = (org_id, user_id);
    to
}

fn main() {
    let _ = delete_user(1);
    let _ = delete_org(1);
    let _ = move_user(1, 2, 3);
}
