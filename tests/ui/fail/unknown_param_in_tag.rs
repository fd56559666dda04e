use cache_core::cached;

#[cached(key = "user:<user_id>", tags = ["org:<orgid>"])]
async fn get_user(org_id: u64, user_id: u64) -> u64 {
    org_id + user_id
}

fn main() {}
