use cache_core::cached;

#[cached(key = "user:<name>:<org_id>:<user_id>")]
async fn get_user(org_id: u64, user_id: u64) -> u64 {
    org_id + user_id
}

fn main() {}
