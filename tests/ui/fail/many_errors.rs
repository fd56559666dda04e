use cache_core::cached;

#[cached(key = "user:<usr_id>", ttl = "5 parsecs", lock = "global", tags = ["org:<>"])]
async fn get_user(user_id: u64, include_deleted: bool) -> u64 {
    let _ = include_deleted;
    user_id
}

fn main() {}
